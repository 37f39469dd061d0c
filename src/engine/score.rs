//! The score a threshold is compared with, kept per MAP lead: the total, the behaviour and
//! demographic parts, and a time-decayed behaviour part.
//!
//! The decayed part needs no history: every change fades by the same factor per unit of
//! time, so the sum of faded changes is one value anchored at one instant
//! (`S(t) = S(t0) * 0.5^((t - t0) / half_life)`).

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::model::{Campaign, ScorePart};
use super::policy::ScoreSource;

/// An optional instant in 8 bytes: nanoseconds since 1970, `i64::MIN` for none. An
/// `Option<Timestamp>` takes 24, and a MAP lead holds five (its link and four score
/// instants): with a million leads, 80 MB. Instants outside 1677..2262 saturate, as the
/// store's nanosecond columns do. Saved and shown as the `Option<Timestamp>` it stands for.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MaybeInstant(i64);

impl MaybeInstant {
    pub const NONE: MaybeInstant = MaybeInstant(i64::MIN);

    pub fn of(t: Option<Timestamp>) -> MaybeInstant {
        match t {
            None => MaybeInstant::NONE,
            Some(t) => MaybeInstant(
                i64::try_from(t.as_nanosecond())
                    .unwrap_or(if t.as_second() < 0 {
                        i64::MIN
                    } else {
                        i64::MAX
                    })
                    .max(i64::MIN + 1),
            ),
        }
    }

    pub fn get(self) -> Option<Timestamp> {
        (self != MaybeInstant::NONE)
            .then(|| Timestamp::from_nanosecond(i128::from(self.0)).expect("within jiff's range"))
    }

    pub fn is_none(self) -> bool {
        self == MaybeInstant::NONE
    }

    pub fn is_some(self) -> bool {
        !self.is_none()
    }
}

impl Default for MaybeInstant {
    fn default() -> Self {
        MaybeInstant::NONE
    }
}

impl From<Option<Timestamp>> for MaybeInstant {
    fn from(t: Option<Timestamp>) -> Self {
        MaybeInstant::of(t)
    }
}

impl std::fmt::Debug for MaybeInstant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

impl Serialize for MaybeInstant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl<'de> Deserialize<'de> for MaybeInstant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<Timestamp>::deserialize(d).map(MaybeInstant::of)
    }
}

/// The version of the last change applied to one score part: its instant, and a 64-bit
/// FNV-1a hash of the MAP's change id as the tie-breaker between changes of one instant.
/// A hash, not the id itself, so that applying a change allocates nothing; FNV-1a, not
/// std's hasher, so that the order is the same in every process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartVersion {
    pub at: MaybeInstant,
    pub change: u64,
}

/// FNV-1a, 64 bits.
pub fn change_key(change_id: &str) -> u64 {
    change_id.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl PartVersion {
    /// Whether a change `(at, key)` (`key` being the [`change_key`] of its id) is newer than
    /// the one applied.
    pub fn is_newer(&self, at: Timestamp, key: u64) -> bool {
        match self.at.get() {
            None => true,
            Some(seen) => (at, key) > (seen, self.change),
        }
    }
}

/// What the engine knows of one MAP lead's scores. `repr(C)`, total first: a Total change
/// touches the first 64 bytes and the first version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[repr(C)]
pub struct Scores {
    pub total: Option<f64>,
    /// The campaign of the most recent change: the MQL's campaign when the crossing change
    /// names none.
    pub last_campaign: Option<Campaign>,
    pub versions: [PartVersion; 3],
    pub behavior: Option<f64>,
    pub demographic: Option<f64>,
    /// The decayed behaviour sum, valid at `decay_anchor`.
    pub decayed: f64,
    pub decay_anchor: MaybeInstant,
}

fn fade(value: f64, from: Timestamp, to: Timestamp, half_life: SignedDuration) -> f64 {
    let elapsed = to.duration_since(from).as_secs_f64();
    value * 0.5f64.powf(elapsed / half_life.as_secs_f64().max(1.0))
}

impl Scores {
    /// Applies one change if it is newer than the last one of its part; `half_life` is the
    /// policy's when the source is time-decayed. Returns whether it was applied.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        part: ScorePart,
        new_value: f64,
        old_value: Option<f64>,
        change_id: &str,
        at: Timestamp,
        campaign: Option<&Campaign>,
        half_life: Option<SignedDuration>,
    ) -> bool {
        let version = &mut self.versions[part.index()];
        let key = change_key(change_id);
        if !version.is_newer(at, key) {
            return false;
        }
        version.at = MaybeInstant::of(Some(at));
        version.change = key;
        let value = match part {
            ScorePart::Total => &mut self.total,
            ScorePart::Behavior => &mut self.behavior,
            ScorePart::Demographic => &mut self.demographic,
        };
        let before = old_value.or(*value).unwrap_or(0.0);
        *value = Some(new_value);
        if part == ScorePart::Behavior
            && let Some(half_life) = half_life
        {
            let delta = new_value - before;
            match self.decay_anchor.get() {
                None => {
                    self.decayed = delta;
                    self.decay_anchor = MaybeInstant::of(Some(at));
                }
                // Versions only move forward, so `at` is never before the anchor.
                Some(anchor) => {
                    self.decayed = fade(self.decayed, anchor, at.max(anchor), half_life) + delta;
                    self.decay_anchor = MaybeInstant::of(Some(at.max(anchor)));
                }
            }
        }
        // Reuse the buffers of the last campaign: a fresh allocation per change is the
        // largest cost of the hot path (and feeds allocator consolidation).
        match (&mut self.last_campaign, campaign) {
            (Some(mine), Some(theirs)) => {
                mine.id.clone_from(&theirs.id);
                mine.name.clone_from(&theirs.name);
            }
            (slot, Some(theirs)) => *slot = Some(theirs.clone()),
            (_, None) => {}
        }
        true
    }

    /// The score at `t`; `None` until a part the source needs has arrived.
    pub fn value(&self, source: &ScoreSource, t: Timestamp) -> Option<f64> {
        match source {
            ScoreSource::Total | ScoreSource::Account { .. } => self.total,
            ScoreSource::BehaviorPlusDemographic => match (self.behavior, self.demographic) {
                (None, None) => None,
                (b, d) => Some(b.unwrap_or(0.0) + d.unwrap_or(0.0)),
            },
            ScoreSource::TimeDecayed { half_life } => {
                if self.decay_anchor.is_none() && self.demographic.is_none() {
                    return None;
                }
                let faded = self.decay_anchor.get().map_or(0.0, |anchor| {
                    fade(self.decayed, anchor, t.max(anchor), *half_life)
                });
                Some(faded + self.demographic.unwrap_or(0.0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_maybe_instant_is_the_option_it_packs() {
        let t = ts("2026-03-04T05:06:07.123456789Z");
        for v in [None, Some(t), Some(ts("1970-01-01T00:00:00Z"))] {
            let packed = MaybeInstant::of(v);
            assert_eq!(packed.get(), v);
            assert_eq!(
                serde_json::to_string(&packed).unwrap(),
                serde_json::to_string(&v).unwrap()
            );
            let back: MaybeInstant =
                serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
            assert_eq!(back, packed);
        }
        // None first, then by instant, as `Option<Timestamp>` orders.
        assert!(MaybeInstant::NONE < MaybeInstant::of(Some(ts("1900-01-01T00:00:00Z"))));
        assert!(
            MaybeInstant::of(Some(t)) < MaybeInstant::of(Some(t + SignedDuration::from_nanos(1)))
        );
        // Out of the 8 bytes' range: saturated, never read back as none.
        assert!(MaybeInstant::of(Some(ts("1200-01-01T00:00:00Z"))).is_some());
        assert_eq!(std::mem::size_of::<MaybeInstant>(), 8);
    }

    #[test]
    fn a_replayed_or_older_change_is_not_applied() {
        let mut s = Scores::default();
        assert!(s.apply(
            ScorePart::Total,
            50.0,
            None,
            "b",
            ts("2026-01-02T00:00:00Z"),
            None,
            None
        ));
        assert!(!s.apply(
            ScorePart::Total,
            50.0,
            None,
            "b",
            ts("2026-01-02T00:00:00Z"),
            None,
            None
        ));
        assert!(!s.apply(
            ScorePart::Total,
            10.0,
            None,
            "a",
            ts("2026-01-01T00:00:00Z"),
            None,
            None
        ));
        assert_eq!(
            s.value(&ScoreSource::Total, ts("2026-01-03T00:00:00Z")),
            Some(50.0)
        );
    }

    #[test]
    fn behaviour_plus_demographic_adds_the_parts() {
        let mut s = Scores::default();
        let t = ts("2026-01-02T00:00:00Z");
        s.apply(ScorePart::Behavior, 30.0, None, "1", t, None, None);
        assert_eq!(
            s.value(&ScoreSource::BehaviorPlusDemographic, t),
            Some(30.0)
        );
        s.apply(ScorePart::Demographic, 25.0, None, "2", t, None, None);
        assert_eq!(
            s.value(&ScoreSource::BehaviorPlusDemographic, t),
            Some(55.0)
        );
    }

    #[test]
    fn decayed_behaviour_halves_every_half_life_and_late_changes_count() {
        let week = SignedDuration::from_hours(24 * 7);
        let source = ScoreSource::TimeDecayed { half_life: week };
        let t0 = ts("2026-01-01T00:00:00Z");
        let mut s = Scores::default();
        s.apply(
            ScorePart::Demographic,
            20.0,
            None,
            "d",
            t0,
            None,
            Some(week),
        );
        s.apply(
            ScorePart::Behavior,
            80.0,
            Some(0.0),
            "b1",
            t0,
            None,
            Some(week),
        );
        let v = s.value(&source, t0 + week).unwrap();
        assert!((v - 60.0).abs() < 1e-9, "{v}");
        // 40 more points a week later: 40 (faded) + 40 + 20.
        s.apply(
            ScorePart::Behavior,
            120.0,
            Some(80.0),
            "b2",
            t0 + week,
            None,
            Some(week),
        );
        let v = s.value(&source, t0 + week).unwrap();
        assert!((v - 100.0).abs() < 1e-9, "{v}");
    }
}
