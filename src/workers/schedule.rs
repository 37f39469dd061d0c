//! When the daemon does what: the pure parts of its loop, kept apart from the I/O so that
//! each rule has a unit test on tokio's paused time.
//!
//! - [`SourceSchedule`]: one poller source's next poll. A poll that finds something keeps
//!   the source at its interval; one that finds nothing doubles the wait, up to the idle
//!   ceiling; a webhook's wake-up makes it due at once; a failed poll backs off; a spent
//!   daily limit pauses it until the limit's resume time.
//! - [`WriterSchedule`]: when the outbox writer runs: at once when a batch of new writes is
//!   full or no step that could add to it is due inside the write window, else at the
//!   window's end after the first new write (so that writes decided close together share
//!   calls), and writes refused for now are tried again after a backoff.
//! - [`held_back`]: back-pressure: the sources that add the most writes (MAP activities and
//!   people) wait while the outbox holds more than its bound.
//! - [`failure`]: what a failed pass means for the daemon: back off, pause a system until a
//!   daily limit resets, or stop (the store).
//!
//! Must not: read a clock (every function takes `now`), sleep, or call anything.

use std::time::Duration;

use jiff::Timestamp;
use tokio::time::Instant;

use crate::config::DaemonSchedule;
use crate::connectors::error::System;
use crate::connectors::{ConnectorError, ErrorClass};
use crate::sync::once::{Source, SyncError};

/// Writes per call of sObject Collections: a batch the writer does not wait to fill further.
pub const FULL_BATCH: usize = 200;

/// Each source's interval and the idle ceiling, from `[daemon]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intervals {
    pub thresholds: Duration,
    pub people: Duration,
    pub mql_edits: Duration,
    pub opportunities: Duration,
    pub activities: Duration,
    pub idle_ceiling: Duration,
}

impl Intervals {
    pub fn of(config: &DaemonSchedule) -> Self {
        let secs = Duration::from_secs;
        Intervals {
            thresholds: secs(config.poll_thresholds_secs),
            people: secs(config.poll_people_secs),
            mql_edits: secs(config.poll_mql_edits_secs),
            opportunities: secs(config.poll_opportunities_secs),
            activities: secs(config.poll_activities_secs),
            idle_ceiling: secs(config.poll_idle_ceiling_secs),
        }
    }

    pub fn interval(&self, source: Source) -> Duration {
        match source {
            Source::Thresholds => self.thresholds,
            Source::People => self.people,
            Source::MqlEdits => self.mql_edits,
            Source::Opportunities => self.opportunities,
            Source::Activities => self.activities,
        }
    }
}

/// One poller source's schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSchedule {
    interval: Duration,
    ceiling: Duration,
    /// The wait after the next poll that finds nothing; doubles up to `ceiling`.
    idle_wait: Duration,
    /// Failed polls in a row.
    failures: u32,
    /// When the next poll is due.
    next: Instant,
    /// A daily limit of the source's system is spent: no poll before this, woken or not.
    paused_until: Option<Instant>,
}

impl SourceSchedule {
    /// A source polled every `interval` while it finds something, due first at `first`.
    pub fn new(interval: Duration, ceiling: Duration, first: Instant) -> Self {
        SourceSchedule {
            interval,
            ceiling: ceiling.max(interval),
            idle_wait: interval,
            failures: 0,
            next: first,
            paused_until: None,
        }
    }

    /// When the next poll may run.
    pub fn next(&self) -> Instant {
        self.paused_until.map_or(self.next, |p| p.max(self.next))
    }

    pub fn due(&self, now: Instant) -> bool {
        self.next() <= now
    }

    /// A poll ended at `now`; `found`: it read something new.
    pub fn polled(&mut self, now: Instant, found: bool) {
        self.failures = 0;
        self.paused_until = None;
        if found {
            self.idle_wait = self.interval;
            self.next = now + self.interval;
        } else {
            self.next = now + self.idle_wait;
            self.idle_wait = (self.idle_wait * 2).min(self.ceiling);
        }
    }

    /// A webhook (or an inbound event) says the source changed: poll at once, and at the
    /// interval again. A daily-limit pause still holds.
    pub fn woken(&mut self, now: Instant) {
        self.idle_wait = self.interval;
        self.next = self.next.min(now);
    }

    /// A poll failed for now (a network error, a 5xx after the connector's own retries, a
    /// refused sign-in): try again after twice the interval, four times, ... up to the
    /// ceiling; `retry_after` (a rate limit's) when longer.
    pub fn failed(&mut self, now: Instant, retry_after: Option<Duration>) {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(self.interval, self.ceiling, self.failures);
        self.next = now + wait.max(retry_after.unwrap_or_default());
    }

    /// The source's system has spent its daily limit: nothing until `until`, then a poll.
    pub fn pause_until(&mut self, until: Instant) {
        self.paused_until = Some(until);
        self.next = self.next.min(until);
    }

    /// The wait after the next idle poll (tests and logs).
    pub fn idle_wait(&self) -> Duration {
        self.idle_wait
    }
}

/// `base` doubled `n` times, at most `ceiling`.
fn backoff(base: Duration, ceiling: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32 << n.min(16))
        .min(ceiling.max(base))
}

/// When the outbox writer runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterSchedule {
    window: Duration,
    retry_base: Duration,
    ceiling: Duration,
    /// Rows left pending by the last drain (refused for now, or not reached): they wait for
    /// `retry_at` or ride along with the next new rows.
    leftover: usize,
    /// When the first write decided since the last drain was committed.
    new_since: Option<Instant>,
    /// When the rows left pending are tried again.
    retry_at: Option<Instant>,
    failures: u32,
    paused_until: Option<Instant>,
}

impl WriterSchedule {
    /// `window`: the longest a new write waits for others to share its batch;
    /// `retry_base`..`ceiling`: the backoff of writes refused for now.
    pub fn new(window: Duration, retry_base: Duration, ceiling: Duration) -> Self {
        WriterSchedule {
            window,
            retry_base,
            ceiling,
            leftover: 0,
            new_since: None,
            retry_at: None,
            failures: 0,
            paused_until: None,
        }
    }

    /// A pass committed at `now`; the outbox now holds `pending` rows.
    pub fn committed(&mut self, now: Instant, pending: usize) {
        if pending > self.leftover && self.new_since.is_none() {
            self.new_since = Some(now);
        }
        if pending < self.leftover {
            self.leftover = pending;
        }
    }

    /// When the writer should run, with `pending` rows in the outbox; `None`: nothing to do.
    /// `next_work`: when the loop's next step that could add writes is due (a source's poll,
    /// the engine's clock; `None`: none is scheduled). The window is for writes that such a
    /// step adds; when none falls inside it, waiting would only delay the writes that wait
    /// (a webhook can still wake a source meanwhile, but cannot be foreseen), so the writer
    /// goes at once. A busy loop (a backlog read page after page) keeps its batches.
    pub fn due_at(&self, pending: usize, next_work: Option<Instant>) -> Option<Instant> {
        let new = pending.saturating_sub(self.leftover);
        let due = match self.new_since {
            Some(since) if new >= FULL_BATCH => Some(since),
            Some(since) if next_work.is_none_or(|w| w >= since + self.window) => Some(since),
            Some(since) => Some(since + self.window),
            None if pending > 0 => self.retry_at,
            None => None,
        };
        match (due, self.paused_until) {
            (Some(d), Some(p)) => Some(d.max(p)),
            (d, _) => d,
        }
    }

    pub fn due(&self, now: Instant, pending: usize, next_work: Option<Instant>) -> bool {
        self.due_at(pending, next_work).is_some_and(|at| at <= now)
    }

    /// A drain ended at `now`, leaving `pending` rows (refused for now): they are tried
    /// again after a backoff that doubles while the drains leave rows behind.
    pub fn drained(&mut self, now: Instant, pending: usize) {
        self.new_since = None;
        self.paused_until = None;
        self.leftover = pending;
        if pending == 0 {
            self.failures = 0;
            self.retry_at = None;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.retry_at = Some(now + backoff(self.retry_base, self.ceiling, self.failures - 1));
        }
    }

    /// A step wrote one group of writes and left others (see `Syncer::write_step`): they are
    /// due at once, unless a step that could add writes (a poll) comes within the window, which
    /// then goes first.
    pub fn stepped(&mut self, now: Instant) {
        self.new_since = Some(now);
        self.paused_until = None;
        self.leftover = 0;
        self.retry_at = None;
    }

    /// A drain failed as a whole (the CRM out of reach after the connector's retries): the
    /// same backoff, every row still pending.
    pub fn failed(&mut self, now: Instant, pending: usize) {
        self.drained(now, pending);
    }

    /// Salesforce's daily limit is spent: no write before `until`.
    pub fn pause_until(&mut self, until: Instant) {
        self.paused_until = Some(until);
    }

    /// Whether new writes wait (the shutdown drains them).
    pub fn has_new(&self) -> bool {
        self.new_since.is_some()
    }
}

/// Back-pressure: whether `source` waits because the outbox holds more than `bound` writes.
/// Only the sources that make writes in bulk wait (a score burst, a mass update of leads);
/// the knob, reps' edits and opportunities stay live, and the writer drains meanwhile.
pub fn held_back(source: Source, pending: usize, bound: usize) -> bool {
    matches!(source, Source::Activities | Source::People) && pending > bound
}

/// What a failed pass means for the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Try the source again after its backoff (`retry_after`: a rate limit's wait).
    BackOff { retry_after: Option<Duration> },
    /// A daily limit (or mqlsync's reserve of it) is spent: pause everything that calls
    /// `system` until `resume_at`.
    Pause {
        system: System,
        resume_at: Timestamp,
    },
    /// The store failed or holds what cannot be read: stop the daemon with the message.
    Stop,
}

/// The class a failure is counted and logged under, and what it means.
pub fn failure(e: &SyncError) -> (&'static str, Failure) {
    match e {
        SyncError::Store(_) => ("store", Failure::Stop),
        SyncError::Cursor { .. } => ("store", Failure::Stop),
        SyncError::AlreadyLive { .. } | SyncError::OtherBackfill { .. } => ("store", Failure::Stop),
        SyncError::Unkeyed { .. } => ("unkeyed", Failure::BackOff { retry_after: None }),
        SyncError::Extract(x) => match x.resume_at() {
            Some(resume_at) => (
                "checkpoint",
                Failure::Pause {
                    system: System::Marketo,
                    resume_at,
                },
            ),
            None => ("extract", Failure::BackOff { retry_after: None }),
        },
        SyncError::Remote(r) => remote(r),
    }
}

fn remote(e: &ConnectorError) -> (&'static str, Failure) {
    let back_off = Failure::BackOff {
        retry_after: e.retry_after(),
    };
    match e.class() {
        ErrorClass::Checkpoint { resume_at } => {
            let system = match e {
                ConnectorError::DailyLimit { system, .. }
                | ConnectorError::BudgetReserve { system, .. } => *system,
                _ => System::Salesforce,
            };
            ("checkpoint", Failure::Pause { system, resume_at })
        }
        ErrorClass::Retry => ("retry", back_off),
        ErrorClass::RenewToken => ("renew_token", back_off),
        ErrorClass::BackOff => ("back_off", back_off),
        ErrorClass::FailRecord => ("fail_record", back_off),
        ErrorClass::Fatal => ("fatal", back_off),
    }
}

/// When the loop's next step that could add writes is due: the earliest poll of a source not
/// held back (`sources`: each source with the instant it may poll, its schedule's and its
/// system's pacer's), or the engine's next timer (`clock`).
pub fn next_work(
    sources: &[(Source, Instant)],
    pending: usize,
    bound: usize,
    clock: Option<Instant>,
) -> Option<Instant> {
    sources
        .iter()
        .filter(|(s, _)| !held_back(*s, pending, bound))
        .map(|(_, at)| *at)
        .chain(clock)
        .min()
}

/// The earliest of the instants something is due by the schedules: a source not held back,
/// or the writer (the engine's clock is waited for apart, on its own clock). `None`: only a
/// wake-up, an inbound event or the engine's clock can start work.
pub fn next_due(
    sources: &[(Source, Instant)],
    writer: &WriterSchedule,
    pending: usize,
    bound: usize,
    clock: Option<Instant>,
) -> Option<Instant> {
    let polls = next_work(sources, pending, bound, None);
    let work = next_work(sources, pending, bound, clock);
    polls.into_iter().chain(writer.due_at(pending, work)).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// Issue 13 point 2: an idle source backs off up to the ceiling, a wake-up resets it.
    #[tokio::test(start_paused = true)]
    async fn an_idle_source_backs_off_to_the_ceiling_and_a_wake_resets_it() {
        let start = Instant::now();
        let mut s = SourceSchedule::new(5 * S, 60 * S, start);
        assert!(s.due(start), "due at once when the daemon starts");
        let mut waits = Vec::new();
        for _ in 0..6 {
            let now = s.next();
            tokio::time::advance(now - Instant::now()).await;
            assert!(s.due(Instant::now()));
            s.polled(Instant::now(), false);
            waits.push((s.next() - Instant::now()).as_secs());
        }
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        assert!(!s.due(Instant::now()));

        // A webhook rings: due at once, and at the interval again afterwards.
        tokio::time::advance(7 * S).await;
        s.woken(Instant::now());
        assert!(s.due(Instant::now()));
        s.polled(Instant::now(), true);
        assert_eq!(s.next() - Instant::now(), 5 * S);
        s.polled(Instant::now(), false);
        assert_eq!(s.next() - Instant::now(), 5 * S);
        s.polled(Instant::now(), false);
        assert_eq!(s.next() - Instant::now(), 10 * S);
        // A poll that finds something resets the backoff.
        s.polled(Instant::now(), true);
        assert_eq!((s.next() - Instant::now(), s.idle_wait()), (5 * S, 5 * S));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_poll_backs_off_and_a_daily_limit_pauses_even_a_woken_source() {
        let now = Instant::now();
        let mut s = SourceSchedule::new(5 * S, 60 * S, now);
        s.failed(now, None);
        assert_eq!(s.next() - now, 10 * S);
        s.failed(now, None);
        assert_eq!(s.next() - now, 20 * S);
        s.failed(now, Some(45 * S));
        assert_eq!(
            s.next() - now,
            45 * S,
            "a rate limit's Retry-After when longer"
        );
        for _ in 0..10 {
            s.failed(now, None);
        }
        assert_eq!(s.next() - now, 60 * S);
        s.polled(now, true);
        assert_eq!(s.next() - now, 5 * S, "a good poll forgets the failures");

        s.pause_until(now + 3_600 * S);
        s.woken(now);
        assert!(
            !s.due(now + 60 * S),
            "a wake-up does not lift a daily-limit pause"
        );
        assert_eq!(s.next(), now + 3_600 * S);
        s.polled(now + 3_600 * S, false);
        assert_eq!(s.next(), now + 3_605 * S);
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_waits_the_window_for_a_batch_unless_one_is_full() {
        let t0 = Instant::now();
        let window = Duration::from_millis(200);
        let mut w = WriterSchedule::new(window, 5 * S, 300 * S);
        // A poll is due at once all along: the window is worth waiting.
        let busy = Some(t0);
        assert_eq!(w.due_at(0, busy), None, "nothing to write");
        w.committed(t0, 3);
        assert_eq!(w.due_at(3, busy), Some(t0 + window));
        // More rows within the window ride along; the window runs from the first.
        w.committed(t0 + Duration::from_millis(150), 120);
        assert_eq!(w.due_at(120, busy), Some(t0 + window));
        assert!(!w.due(t0 + Duration::from_millis(199), 120, busy));
        // A full batch goes at once.
        w.committed(t0 + Duration::from_millis(160), 250);
        assert!(w.due(t0 + Duration::from_millis(160), 250, busy));
        w.drained(t0 + S, 0);
        assert_eq!(w.due_at(0, busy), None);

        // Rows refused for now are tried again after a backoff, not in a loop; new rows take
        // them along earlier.
        w.committed(t0 + S, 10);
        w.drained(t0 + 2 * S, 4);
        assert_eq!(w.due_at(4, busy), Some(t0 + 7 * S));
        w.drained(t0 + 7 * S, 4);
        assert_eq!(w.due_at(4, busy), Some(t0 + 17 * S));
        w.committed(t0 + 8 * S, 6);
        assert_eq!(w.due_at(6, busy), Some(t0 + 8 * S + window));
        // A daily limit holds everything back.
        w.pause_until(t0 + 3_600 * S);
        assert_eq!(w.due_at(6, busy), Some(t0 + 3_600 * S));
    }

    /// The window waits for writes another step could add; when no step falls inside it (the
    /// next poll is later, held by its interval or its system's pacer), the writes go at once.
    #[tokio::test(start_paused = true)]
    async fn the_writer_does_not_wait_for_writes_that_cannot_come() {
        let t0 = Instant::now();
        let window = Duration::from_millis(200);
        let mut w = WriterSchedule::new(window, 5 * S, 300 * S);
        w.committed(t0, 3);
        assert_eq!(w.due_at(3, None), Some(t0), "nothing else scheduled");
        assert_eq!(
            w.due_at(3, Some(t0 + Duration::from_millis(208))),
            Some(t0),
            "the next activity poll waits for Marketo's pacer past the window"
        );
        assert_eq!(
            w.due_at(3, Some(t0 + window)),
            Some(t0),
            "a poll at the window's end would only join the next batch"
        );
        assert_eq!(
            w.due_at(3, Some(t0 + Duration::from_millis(50))),
            Some(t0 + window),
            "a poll inside the window may add to the batch"
        );
        // A daily limit still holds it back.
        w.pause_until(t0 + 60 * S);
        assert_eq!(w.due_at(3, None), Some(t0 + 60 * S));
        // Retries keep their backoff.
        let mut w = WriterSchedule::new(window, 5 * S, 300 * S);
        w.committed(t0, 3);
        w.drained(t0, 2);
        assert_eq!(w.due_at(2, None), Some(t0 + 5 * S));
    }

    /// A writer step that handed back to the loop for a poll leaves the rest of its writes due
    /// at once, after the poll if one is due inside the window; not at a retry's backoff.
    #[tokio::test(start_paused = true)]
    async fn writes_a_step_left_for_a_poll_are_due_at_once_after_it() {
        let t0 = Instant::now();
        let window = Duration::from_millis(50);
        let mut w = WriterSchedule::new(window, 5 * S, 300 * S);
        w.committed(t0, 40);
        w.stepped(t0);
        assert_eq!(w.due_at(20, None), Some(t0));
        assert_eq!(
            w.due_at(20, Some(t0 + Duration::from_millis(10))),
            Some(t0 + window),
            "the due poll first"
        );
        assert!(w.has_new(), "a shutdown writes them too");
    }

    /// Issue 13 point 5: with a tiny bound, activities and people wait until the writer has
    /// drained the outbox below it; the other sources and the writer go on.
    #[tokio::test(start_paused = true)]
    async fn back_pressure_holds_activities_and_people_until_the_outbox_drains() {
        let now = Instant::now();
        let bound = 5;
        for source in Source::ALL {
            let held = held_back(source, 6, bound);
            assert_eq!(
                held,
                matches!(source, Source::Activities | Source::People),
                "{source:?}"
            );
            assert!(!held_back(source, 5, bound), "{source:?} at the bound");
        }
        let activities = SourceSchedule::new(5 * S, 60 * S, now);
        let thresholds = SourceSchedule::new(5 * S, 60 * S, now + 30 * S);
        let mut writer = WriterSchedule::new(Duration::from_millis(200), 5 * S, 60 * S);
        writer.committed(now, 6);
        let sources = [
            (Source::Activities, activities.next()),
            (Source::Thresholds, thresholds.next()),
        ];
        // Over the bound: the writer is what comes next, not the activities poll; and at
        // once, since the held poll cannot add to its batch.
        assert_eq!(next_due(&sources, &writer, 6, bound, None), Some(now));
        // An engine timer inside the window is worth waiting for.
        assert_eq!(
            next_due(
                &sources,
                &writer,
                6,
                bound,
                Some(now + Duration::from_millis(10))
            ),
            Some(now + Duration::from_millis(200))
        );
        writer.drained(now + S, 0);
        // Drained: the activities poll is due (it was due all along).
        assert_eq!(next_due(&sources, &writer, 0, bound, None), Some(now));
        // Nothing due by time when every source is held back and the writer is idle.
        assert_eq!(
            next_due(
                &[(Source::Activities, activities.next())],
                &writer,
                6,
                bound,
                None
            ),
            None
        );
    }

    #[test]
    fn failures_back_off_pause_their_system_or_stop() {
        let at: Timestamp = "2026-11-03T06:00:00Z".parse().unwrap();
        let daily = SyncError::Remote(ConnectorError::DailyLimit {
            system: System::Marketo,
            code: "607".into(),
            message: "Daily quota reached".into(),
            resume_at: at,
        });
        assert_eq!(
            failure(&daily),
            (
                "checkpoint",
                Failure::Pause {
                    system: System::Marketo,
                    resume_at: at
                }
            )
        );
        let network = SyncError::Remote(ConnectorError::Transport {
            system: System::Salesforce,
            detail: "connection reset".into(),
            timeout: false,
        });
        assert_eq!(
            failure(&network),
            ("retry", Failure::BackOff { retry_after: None })
        );
        let refused = SyncError::Remote(ConnectorError::Config("bad".into()));
        assert_eq!(failure(&refused).0, "fatal");
        assert!(matches!(failure(&refused).1, Failure::BackOff { .. }));
        let store = SyncError::Cursor {
            name: "crm.Lead".into(),
            detail: "x".into(),
        };
        assert_eq!(failure(&store), ("store", Failure::Stop));
    }
}
