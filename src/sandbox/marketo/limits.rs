//! Marketo's API limits: 100 calls in any 20 s (606), 10 calls in flight (615), and a daily
//! quota that resets at midnight US Central time (607). Counted per instance, from the
//! sandbox clock. Identity calls and calls refused with 601/602 are not counted.
//!
//! This module decides and counts; it must not answer HTTP itself.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

use super::envelope::ApiError;

pub const RATE_CALLS: usize = 100;
pub const RATE_WINDOW_SECS: i64 = 20;
pub const MAX_IN_FLIGHT: usize = 10;

#[derive(Debug)]
pub struct Limits {
    enabled: bool,
    daily_quota: u64,
    window: Mutex<Counters>,
    in_flight: AtomicUsize,
    in_flight_watch: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct Counters {
    recent: VecDeque<Timestamp>,
    /// Calls per Central-time day.
    daily: BTreeMap<Date, u64>,
}

/// Holds one in-flight slot until dropped.
pub struct InFlight<'a> {
    limits: &'a Limits,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let now = self.limits.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        self.limits.in_flight_watch.send_replace(now);
    }
}

/// The Central-time date a quota day is counted on.
pub fn quota_day(at: Timestamp) -> Date {
    let tz = jiff::tz::TimeZone::get("America/Chicago").unwrap_or(jiff::tz::TimeZone::UTC);
    at.to_zoned(tz).date()
}

impl Limits {
    pub fn new(enabled: bool, daily_quota: u64) -> Self {
        Self {
            enabled,
            daily_quota,
            window: Mutex::new(Counters::default()),
            in_flight: AtomicUsize::new(0),
            in_flight_watch: watch::channel(0).0,
        }
    }

    /// Counts one call and takes an in-flight slot, or says which limit it broke.
    pub fn admit(&self, now: Timestamp) -> Result<InFlight<'_>, ApiError> {
        let day = quota_day(now);
        {
            let mut counters = self.window.lock().expect("limits lock");
            if self.enabled {
                let used = counters.daily.get(&day).copied().unwrap_or(0);
                if used >= self.daily_quota {
                    return Err(ApiError::standard("607"));
                }
                let since = now - SignedDuration::from_secs(RATE_WINDOW_SECS);
                while counters.recent.front().is_some_and(|t| *t <= since) {
                    counters.recent.pop_front();
                }
                if counters.recent.len() >= RATE_CALLS {
                    return Err(ApiError::standard("606"));
                }
            }
            let taken = self.in_flight.fetch_add(1, Ordering::SeqCst);
            if self.enabled && taken >= MAX_IN_FLIGHT {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                return Err(ApiError::standard("615"));
            }
            if self.enabled {
                counters.recent.push_back(now);
            }
            *counters.daily.entry(day).or_insert(0) += 1;
        }
        self.in_flight_watch
            .send_replace(self.in_flight.load(Ordering::SeqCst));
        Ok(InFlight { limits: self })
    }

    /// Calls counted on the quota day of `at`.
    pub fn used_on(&self, day: Date) -> u64 {
        self.window
            .lock()
            .expect("limits lock")
            .daily
            .get(&day)
            .copied()
            .unwrap_or(0)
    }

    #[cfg(test)]
    /// Watches the number of calls in flight (tests wait on it instead of sleeping).
    pub fn watch_in_flight(&self) -> watch::Receiver<usize> {
        self.in_flight_watch.subscribe()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}
