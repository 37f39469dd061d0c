//! The sandbox clock: wall time plus an offset that tests and the admin API move forward,
//! or a frozen instant. Both emulators read time only from here, so "advance the clock by a
//! day" expires tokens, resets daily quotas and ages records on both sides at once.

use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};

/// A cheaply cloned handle on one shared clock.
#[derive(Clone, Debug)]
pub struct SandboxClock {
    inner: Arc<Mutex<ClockMode>>,
}

#[derive(Clone, Copy, Debug)]
enum ClockMode {
    /// Follows the machine's clock, shifted by the offset that `advance` accumulates.
    Running { offset: SignedDuration },
    /// Stands still at one instant until moved; tests use it so windows do not drift.
    Frozen { at: Timestamp },
}

impl SandboxClock {
    /// A clock that follows the machine's time.
    pub fn running() -> Self {
        Self::with(ClockMode::Running {
            offset: SignedDuration::ZERO,
        })
    }

    /// A clock that stands still at `at` until advanced or set.
    pub fn frozen(at: Timestamp) -> Self {
        Self::with(ClockMode::Frozen { at })
    }

    fn with(mode: ClockMode) -> Self {
        Self {
            inner: Arc::new(Mutex::new(mode)),
        }
    }

    /// The sandbox's present instant.
    pub fn now(&self) -> Timestamp {
        match *self.inner.lock().expect("clock lock") {
            ClockMode::Running { offset } => Timestamp::now() + offset,
            ClockMode::Frozen { at } => at,
        }
    }

    /// Moves the clock forward (or back, with a negative duration).
    pub fn advance(&self, by: SignedDuration) {
        let mut mode = self.inner.lock().expect("clock lock");
        *mode = match *mode {
            ClockMode::Running { offset } => ClockMode::Running {
                offset: offset + by,
            },
            ClockMode::Frozen { at } => ClockMode::Frozen { at: at + by },
        };
    }

    /// Sets the present instant; a running clock keeps running from there.
    pub fn set(&self, at: Timestamp) {
        let mut mode = self.inner.lock().expect("clock lock");
        *mode = match *mode {
            ClockMode::Running { .. } => ClockMode::Running {
                offset: at.duration_since(Timestamp::now()),
            },
            ClockMode::Frozen { .. } => ClockMode::Frozen { at },
        };
    }

    /// Whether the clock stands still.
    pub fn is_frozen(&self) -> bool {
        matches!(
            *self.inner.lock().expect("clock lock"),
            ClockMode::Frozen { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_clock_moves_only_when_advanced() {
        let start: Timestamp = "2026-03-02T09:00:00Z".parse().unwrap();
        let clock = SandboxClock::frozen(start);
        assert_eq!(clock.now(), start);
        clock.advance(SignedDuration::from_hours(25));
        assert_eq!(
            clock.now(),
            "2026-03-03T10:00:00Z".parse::<Timestamp>().unwrap()
        );
        let shared = clock.clone();
        shared.set(start);
        assert_eq!(clock.now(), start);
    }

    #[test]
    fn running_clock_carries_its_offset() {
        let clock = SandboxClock::running();
        clock.advance(SignedDuration::from_hours(48));
        let ahead = clock.now().duration_since(Timestamp::now());
        assert!(ahead > SignedDuration::from_hours(47), "{ahead:?}");
    }
}
