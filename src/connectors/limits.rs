//! Call pacing and quota budgets shared by every task that calls one system.
//!
//! - [`Pacer`]: a rate quota (governor GCRA) plus an in-flight cap (semaphore). governor's own
//!   `until_ready` sleeps on the wall clock and ignores tokio's paused time, so the limiter runs on
//!   [`TokioClock`] (time read from `tokio::time::Instant`) and waits with `tokio::time::sleep`.
//! - [`DailyBudget`]: the daily allocation, fed by `Sforce-Limit-Info` (Salesforce) or counted
//!   locally (Marketo), with a reserve below which only essential calls run.
//!
//! This file must not know vendor wire formats beyond parsing the `Sforce-Limit-Info` value.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use jiff::{Timestamp, ToSpan, Zoned, civil::Time, tz::TimeZone};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{ConnectorError, Result, System};

/// A governor clock that reads tokio's clock, so paused-time tests step the limiter too.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// Something that admits one call at a time under a quota. Held permits end the in-flight slot.
pub trait Admit: Send + Sync {
    /// Wait until a call may start; the returned permit must live until the response is read.
    fn admit(&self) -> impl Future<Output = Permit> + Send;
}

/// Held for the duration of one HTTP call (counts toward the in-flight cap).
pub struct Permit {
    _slot: Option<OwnedSemaphorePermit>,
}

/// Rate quota + in-flight cap. Clone shares the same quota.
#[derive(Clone)]
pub struct Pacer {
    limiter: Option<Arc<Limiter>>,
    clock: TokioClock,
    in_flight: Arc<Semaphore>,
    /// The limiter's arithmetic, kept beside it to answer "when may the next call start?"
    /// without spending a cell (governor has no peek): see [`Pacer::ready_at`].
    shadow: Option<Arc<std::sync::Mutex<Shadow>>>,
}

/// A copy of the GCRA state: the theoretical arrival time of the next cell.
#[derive(Debug)]
struct Shadow {
    period: Duration,
    burst: u32,
    tat: Duration,
}

impl Shadow {
    /// A call was admitted at `now` (the limiter's clock).
    fn admitted(&mut self, now: Duration) {
        self.tat = self.tat.max(now) + self.period;
    }

    /// The earliest instant (the limiter's clock) the next call conforms.
    fn ready_at(&self) -> Duration {
        self.tat
            .saturating_sub(self.period * self.burst.saturating_sub(1))
    }
}

impl Pacer {
    /// At most `calls` calls in any window of `window`, and at most `max_in_flight` at once.
    ///
    /// GCRA with burst `b` and one cell per `p` admits `b + T/p` calls in any span `T`. To keep
    /// every sliding window under `calls` (Marketo counts a sliding 20 s window) while using
    /// the allowance: a burst of a fiftieth of it, and a slack of another fiftieth for calls
    /// that network jitter bunches up at the server. 100/20 s gives a burst of 2, then one call
    /// per 208 ms: 96 calls a window sustained (0.96 of the allowance), 98 at the most.
    pub fn new(calls: u32, window: Duration, max_in_flight: usize) -> Self {
        let calls = calls.max(4);
        let burst = (calls / 50).max(1);
        let slack = (calls / 50).max(1);
        let period = window / (calls - burst - slack);
        let quota = Quota::with_period(period)
            .expect("window is non-zero")
            .allow_burst(NonZeroU32::new(burst).expect("burst >= 1"));
        let clock = TokioClock::default();
        Pacer {
            limiter: Some(Arc::new(RateLimiter::direct_with_clock(
                quota,
                clock.clone(),
            ))),
            clock,
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            shadow: Some(Arc::new(std::sync::Mutex::new(Shadow {
                period,
                burst,
                tat: Duration::ZERO,
            }))),
        }
    }

    /// When the next call may start by the rate quota (now or earlier: at once). The daemon
    /// asks this before a poll, so that it does not sit in the pacer's wait while a write
    /// could go out (the in-flight cap is not counted: the daemon makes one call at a time).
    pub fn ready_at(&self) -> tokio::time::Instant {
        let at = self.shadow.as_ref().map_or(Duration::ZERO, |s| {
            s.lock().expect("pacer shadow").ready_at()
        });
        self.clock.start + at
    }

    /// No rate quota, only an in-flight cap.
    pub fn in_flight_only(max_in_flight: usize) -> Self {
        Pacer {
            limiter: None,
            clock: TokioClock::default(),
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            shadow: None,
        }
    }
}

impl Admit for Pacer {
    async fn admit(&self) -> Permit {
        let slot = self.in_flight.clone().acquire_owned().await.ok();
        if let Some(limiter) = &self.limiter {
            // Bounded: each wait is the GCRA's own earliest-allowed time.
            loop {
                match limiter.check() {
                    Ok(()) => {
                        if let Some(shadow) = &self.shadow {
                            shadow
                                .lock()
                                .expect("pacer shadow")
                                .admitted(self.clock.now());
                        }
                        break;
                    }
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(self.clock.now());
                        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                    }
                }
            }
        }
        Permit { _slot: slot }
    }
}

/// Whether a call may dip into the reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Writes of decided MQLs, checkpoints: allowed down to zero.
    Essential,
    /// Polls, backfills: refused once the remaining allocation is at or below the reserve.
    Routine,
}

/// A daily call allocation shared by all tasks (clone shares it).
#[derive(Debug, Clone)]
pub struct DailyBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    system: System,
    used: AtomicU64,
    limit: AtomicU64,
    reserve_pct: f64,
    /// Marketo: the US-Central day the local count belongs to (yyyymmdd), 0 for Salesforce.
    day: AtomicU64,
}

impl DailyBudget {
    pub fn new(system: System, limit: u64, reserve_pct: f64) -> Self {
        DailyBudget {
            inner: Arc::new(BudgetInner {
                system,
                used: AtomicU64::new(0),
                limit: AtomicU64::new(limit),
                reserve_pct: reserve_pct.clamp(0.0, 100.0),
                day: AtomicU64::new(0),
            }),
        }
    }

    /// Calls used and the allocation, as last known.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.inner.used.load(Ordering::Relaxed),
            self.inner.limit.load(Ordering::Relaxed),
        )
    }

    /// The number of calls kept back for essential work.
    pub fn reserve(&self) -> u64 {
        let limit = self.inner.limit.load(Ordering::Relaxed) as f64;
        (limit * self.inner.reserve_pct / 100.0).ceil() as u64
    }

    /// Record what the server said (`Sforce-Limit-Info`, `/limits`): it is the truth.
    pub fn observe(&self, used: u64, limit: u64) {
        self.inner.used.store(used, Ordering::Relaxed);
        self.inner.limit.store(limit, Ordering::Relaxed);
    }

    /// Record the instance's count for today (Marketo `stats/usage.json`): every integration's
    /// calls since midnight US Central, so that the reserve holds across runs and processes.
    pub fn observe_today(&self, used: u64, now: Timestamp) {
        self.inner.day.store(chicago_day(now), Ordering::Relaxed);
        self.inner.used.store(used, Ordering::Relaxed);
    }

    /// Count one call locally (Marketo has no usage header); resets at midnight US Central.
    pub fn count_call(&self, now: Timestamp) {
        let day = chicago_day(now);
        if self.inner.day.swap(day, Ordering::Relaxed) != day {
            self.inner.used.store(0, Ordering::Relaxed);
        }
        self.inner.used.fetch_add(1, Ordering::Relaxed);
    }

    /// Take back one locally counted call (Marketo does not count 601, 602, 604, 605, 608, 611).
    pub fn uncount_call(&self) {
        let _ = self
            .inner
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| u.checked_sub(1));
    }

    /// Refuse a routine call once the remaining allocation is at or below the reserve, and any
    /// call once nothing is left.
    pub fn check(&self, priority: Priority, now: Timestamp) -> Result<()> {
        if self.inner.system == System::Marketo
            && self.inner.day.load(Ordering::Relaxed) != chicago_day(now)
        {
            return Ok(()); // a new day: the count will reset on the next call
        }
        let (used, limit) = self.usage();
        let remaining = limit.saturating_sub(used);
        let reserve = self.reserve();
        let blocked = match priority {
            Priority::Routine => remaining <= reserve,
            Priority::Essential => remaining == 0,
        };
        if blocked && limit > 0 {
            return Err(ConnectorError::BudgetReserve {
                system: self.inner.system,
                remaining,
                limit,
                reserve,
                resume_at: resume_after_daily_limit(self.inner.system, now),
            });
        }
        Ok(())
    }
}

fn chicago_day(now: Timestamp) -> u64 {
    let z = now.to_zoned(chicago());
    (z.year() as u64) * 10_000 + (z.month() as u64) * 100 + z.day() as u64
}

fn chicago() -> TimeZone {
    TimeZone::get("America/Chicago").unwrap_or(TimeZone::UTC)
}

/// When a spent daily quota can be used again.
///
/// Marketo resets at 00:00 America/Chicago. Salesforce counts a rolling 24 h, which a client cannot
/// see; one hour is a conservative first retry (the caller reads `/limits` before resuming).
pub fn resume_after_daily_limit(system: System, now: Timestamp) -> Timestamp {
    match system {
        System::Marketo => {
            let z: Zoned = now.to_zoned(chicago());
            z.date()
                .tomorrow()
                .ok()
                .and_then(|d| d.to_datetime(Time::midnight()).to_zoned(chicago()).ok())
                .map(|z| z.timestamp())
                .unwrap_or_else(|| now + 24.hours())
        }
        System::Salesforce => now + 1.hours(),
    }
}

/// Parse `Sforce-Limit-Info: api-usage=10018/100000[; per-app-api-usage=17/250(appName=x)]`
/// into (used, limit) of the org-wide allocation.
pub fn parse_limit_info(value: &str) -> Option<(u64, u64)> {
    value.split(';').map(str::trim).find_map(|part| {
        let rest = part.strip_prefix("api-usage=")?;
        let (used, limit) = rest.split_once('/')?;
        Some((used.trim().parse().ok()?, limit.trim().parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_info_org_wide_and_per_app() {
        assert_eq!(
            parse_limit_info("api-usage=10018/100000"),
            Some((10018, 100000))
        );
        assert_eq!(
            parse_limit_info(
                "api-usage=25/5000; per-app-api-usage=17/250(appName=sample-connected-app)"
            ),
            Some((25, 5000))
        );
        assert_eq!(
            parse_limit_info("per-app-api-usage=17/250(appName=x)"),
            None
        );
        assert_eq!(parse_limit_info("garbage"), None);
    }

    #[test]
    fn reserve_blocks_routine_calls_but_not_essential_ones() {
        let now: Timestamp = "2026-11-23T00:00:00Z".parse().unwrap();
        let b = DailyBudget::new(System::Salesforce, 0, 10.0);
        b.observe(89_000, 100_000);
        assert!(b.check(Priority::Routine, now).is_ok());
        b.observe(90_000, 100_000);
        let err = b.check(Priority::Routine, now).unwrap_err();
        assert!(matches!(
            err.class(),
            super::super::error::ErrorClass::Checkpoint { .. }
        ));
        assert!(b.check(Priority::Essential, now).is_ok());
        b.observe(100_000, 100_000);
        assert!(b.check(Priority::Essential, now).is_err());
    }

    #[test]
    fn marketo_quota_resumes_at_midnight_central() {
        // 2026-11-23T05:30Z is 23:30 on the 22nd in Chicago (CST, UTC-6).
        let now: Timestamp = "2026-11-23T05:30:00Z".parse().unwrap();
        let resume = resume_after_daily_limit(System::Marketo, now);
        assert_eq!(resume.to_string(), "2026-11-23T06:00:00Z");
    }

    #[test]
    fn marketo_local_count_resets_on_a_new_central_day() {
        let b = DailyBudget::new(System::Marketo, 2, 0.0);
        let t1: Timestamp = "2026-11-23T05:00:00Z".parse().unwrap();
        b.count_call(t1);
        b.count_call(t1);
        assert!(b.check(Priority::Essential, t1).is_err());
        let t2: Timestamp = "2026-11-23T06:00:01Z".parse().unwrap();
        assert!(b.check(Priority::Essential, t2).is_ok());
        b.count_call(t2);
        assert_eq!(b.usage().0, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_keeps_every_window_under_the_quota() {
        let pacer = Pacer::new(100, Duration::from_secs(20), 10);
        let start = tokio::time::Instant::now();
        let mut times = Vec::new();
        for _ in 0..250 {
            let _p = pacer.admit().await;
            times.push(start.elapsed());
        }
        // Any 20 s window holds at most 100 admissions.
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(20))
                .count();
            assert!(in_window <= 100, "{in_window} calls in the 20 s from {t:?}");
        }
        // And the pacer is not needlessly slow: 10 at once, then 90 per 20 s.
        assert!(
            times.last().unwrap() < &Duration::from_secs(55),
            "{:?}",
            times.last()
        );
    }

    /// `ready_at` says when the limiter admits the next call: never earlier than it does
    /// (the daemon would then sit in the pacer's wait), and not later either.
    #[tokio::test(start_paused = true)]
    async fn ready_at_is_when_the_limiter_admits_the_next_call() {
        let pacer = Pacer::new(100, Duration::from_secs(20), 10);
        let limiter = pacer.limiter.clone().unwrap();
        // Bursts and pauses of varied lengths.
        for (round, calls) in [1usize, 2, 5, 3, 1, 7].into_iter().enumerate() {
            for _ in 0..calls {
                let ready = pacer.ready_at();
                let now = tokio::time::Instant::now();
                if ready > now {
                    assert!(
                        limiter.check().is_err(),
                        "round {round}: ready at {ready:?}, yet admitted at {now:?}"
                    );
                    tokio::time::sleep_until(ready).await;
                }
                // At `ready_at` the call goes through without a wait.
                let before = tokio::time::Instant::now();
                let _p = pacer.admit().await;
                assert_eq!(
                    tokio::time::Instant::now(),
                    before,
                    "round {round}: waited past ready_at"
                );
            }
            tokio::time::sleep(Duration::from_millis(150 * round as u64)).await;
        }
        assert!(Pacer::in_flight_only(1).ready_at() <= tokio::time::Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_cap_holds() {
        let pacer = Pacer::in_flight_only(2);
        let a = pacer.admit().await;
        let _b = pacer.admit().await;
        let third = tokio::time::timeout(Duration::from_secs(1), pacer.admit()).await;
        assert!(
            third.is_err(),
            "a third call started while two were in flight"
        );
        drop(a);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), pacer.admit())
                .await
                .is_ok()
        );
    }

    #[test]
    fn governor_fake_clock_agrees_with_the_quota_arithmetic() {
        use governor::clock::FakeRelativeClock;
        let clock = FakeRelativeClock::default();
        let quota = Quota::with_period(Duration::from_millis(400))
            .unwrap()
            .allow_burst(NonZeroU32::new(50).unwrap());
        let lim = RateLimiter::direct_with_clock(quota, clock.clone());
        for _ in 0..50 {
            assert!(lim.check().is_ok());
        }
        assert!(lim.check().is_err());
        clock.advance(Duration::from_millis(400));
        assert!(lim.check().is_ok());
    }
}
