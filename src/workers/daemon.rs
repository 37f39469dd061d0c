//! `mqlsync run`: the daemon's loop. One task owns the store and the engine state and runs
//! one pass at a time on them; everything else (the HTTP port, the signals, the clocks) only
//! tells it when, and the CRM reads' task only hands it pages.
//!
//! # Why one loop and not one task per source
//! The store has one writer (a transaction per page) and the engine state lives in memory:
//! two pollers deciding at once would need a lock around both, held for the whole of each
//! page, which is one loop with extra steps. So the daemon loads the state once, keeps one
//! [`Syncer`] for its whole life and gives each source its own schedule
//! ([`SourceSchedule`]: an interval from the config, doubled while the source is idle up to a
//! ceiling, due at once when its webhook rings). One `tokio::select!` waits for whichever
//! comes first: shutdown, a bell ([`super::http::Wake`]), an inbound webhook event, the next
//! due source or writer batch, or the engine's next timer ([`Clock`]). Reads go through the
//! same clients as `run --once`, whose pacers and daily budgets are shared by every call, so
//! the daemon can never spend more than `run --once` may.
//!
//! # Why the CRM reads run beside the loop
//! A Salesforce page of 2,000 records takes from a tenth of a second (the sandbox) to a
//! second (a busy org), and the people poller reads back every lead the writer stamped: read
//! in the loop, such a page held back the Marketo poll and the writes of a score push behind
//! it. So the CRM sources (people, MQL edits, accounts and opportunities; not the thresholds)
//! read in a task of their own ([`crate::sync::crm_read`]) and hand each page to the loop,
//! which decides and commits it between its other steps: the store and the engine state
//! still have one user. One CRM read is in flight at a time, one page ahead at most; the
//! writer's calls may go beside it (two Salesforce requests at once, of the 25 long-running
//! ones an org allows).
//!
//! # What happens when
//! - **Start**: the caller has signed in, opened the store and bound the port. The first pass
//!   is a full one (every source, the current scores and go-live on a store's first run, the
//!   clock, the writes): what `run --once` does. It is retried with a backoff until it
//!   succeeds; the per-source schedules start after it.
//! - **A source's pass** reads since its cursors and commits each page with its decisions;
//!   the writes they make wait in the outbox for the writer.
//! - **Clock**: after every step the loop asks the engine for its next timer (a scheduled
//!   threshold's `effective_from` or `effective_to`, an open cycle's SLA due time or
//!   reassignment trigger) and sleeps until then at most; at that instant a clock pass lets
//!   the engine's time run to `now` ([`Syncer::tick`]) and commits what it decided.
//! - **Writer**: new writes wait at most `daemon.write_window_ms` for others to fill a batch
//!   (200 records a call), and only while a step that could add to it is due inside the window
//!   (a poll, the clock); at once when a batch is full or none is. A Marketo source is due no
//!   earlier than Marketo's pacer admits its call, so the loop never sits in the pacer's wait
//!   while writes could go out; the outbox's rules are `run
//!   --once`'s (retry for now, fail for good, lost answers looked up). Writes refused for now
//!   are tried again after a backoff. While more than `daemon.max_pending_writes` wait, the
//!   activity and people pollers pause.
//! - **Errors**: a failed poll logs one line with its class, counts it, and backs that source
//!   off; a spent daily limit pauses every source of that system (and, for Salesforce, the
//!   writer) until it resets. A remote error never stops the daemon; a store error does
//!   ([`DaemonError`]).
//! - **Shutdown**: the first signal lets the pass in flight finish and commit, sends the
//!   writes waiting for their window, saves the score snapshot and stops the HTTP port,
//!   within `daemon.grace_secs`; past it, the pass is dropped at its next `await` (every
//!   commit is a transaction: the store stays consistent). The second signal is the
//!   caller's: `main` exits at once.
//!
//! Must not: decide anything itself (the engine does), exit the process, or read the wall
//! clock other than through its [`Clock`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Inbound;
use super::http::{self, HttpState};
use super::metrics::{Family, Metrics};
use super::schedule::{self, Failure, Intervals, SourceSchedule, WriterSchedule};
use crate::config::DaemonSchedule;
use crate::connectors::ConnectorError;
use crate::connectors::error::System;
use crate::connectors::http::Sent;
use crate::connectors::marketo::MarketoClient;
use crate::connectors::salesforce::SalesforceClient;
use crate::connectors::salesforce::incremental::ChangePage;
use crate::engine::Policy;
use crate::mapping::Mapping;
use crate::store::{Checkpointer, Store};
use crate::sync::crm_read::{CrmRead, CrmReadKind, ReadCount};
use crate::sync::once::{RunSettings, RunSummary, Source, SyncError, Syncer};

/// The daemon's idea of the present, and a way to wait for an instant of it. The engine's
/// timers are instants of this clock; tests drive it by hand (the sandbox's clock), the
/// product uses [`SystemClock`].
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
    /// Completes when [`Clock::now`] has reached `at`, or earlier (the loop looks again).
    fn wait_until(&self, at: Timestamp) -> BoxFuture<'static, ()>;
}

/// The machine's clock; waits on tokio's timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// The longest single wait on the machine's clock: a wall clock can be stepped (NTP, a
/// suspended VM), so a long wait is re-measured at least this often.
const MAX_CLOCK_WAIT: Duration = Duration::from_secs(60);

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn wait_until(&self, at: Timestamp) -> BoxFuture<'static, ()> {
        let wait = Duration::try_from(at.duration_since(Timestamp::now()))
            .unwrap_or(Duration::ZERO)
            .min(MAX_CLOCK_WAIT);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// Why the daemon stopped with an error: its store failed (the message says how), or its
/// HTTP port did.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Not a `#[source]`: the message names the cause once (`{:#}` would print it twice).
    #[error(
        "the daemon stopped: {0}; everything committed before stays committed, and the next start continues from there"
    )]
    Sync(SyncError),
    #[error(transparent)]
    Bind(#[from] http::BindError),
    #[error("the daemon's HTTP port failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// How the daemon ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The pass in flight finished, and the writes waiting were sent, within the grace
    /// period.
    Gracefully,
    /// The grace period ran out: the pass in flight was dropped after its last commit.
    GraceOver,
}

/// What the daemon has done so far, for tests and the logs: wait on it with
/// [`watch::Receiver::wait_for`].
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// The first (full) pass ended: the store is live and the sources poll on their own.
    pub live: bool,
    /// Polls that ended well, by source.
    pub polls: BTreeMap<Source, u64>,
    /// Clock passes (the engine's time run to a timer's instant).
    pub ticks: u64,
    /// Writer drains that ended well (the first pass's included).
    pub drains: u64,
    /// The first (full) pass's summary, once it ended well: what `run --once` would have
    /// said (`mqlsync demo` prints it).
    pub first_pass: Option<Arc<RunSummary>>,
    /// Records read, by source, every step's added up.
    pub read: BTreeMap<String, usize>,
    /// Events decided on, every step's added up.
    pub events: usize,
    /// Records written to the CRM, by call (`mql_upsert`, `lead_update`, ...).
    pub written: BTreeMap<String, usize>,
    /// Outbox rows settled without a write, by why.
    pub settled: BTreeMap<String, usize>,
    /// Decisions made, by kind.
    pub decisions: BTreeMap<String, usize>,
    /// The calls the clients sent since the loop started, by system, and the fewest the
    /// steps' work could take (see [`RunSummary::minimum_calls`]): the difference between two
    /// snapshots is what the steps between them cost against their minimum. Counted from the
    /// clients rather than added up by step, since a CRM read runs beside the other steps.
    pub calls: BTreeMap<String, u64>,
    pub minimum_calls: BTreeMap<String, u64>,
    /// Failed passes.
    pub errors: u64,
    /// The engine's next timer, the instant the clock wakes the daemon.
    pub next_deadline: Option<Timestamp>,
    /// Writes waiting in the outbox after the last step.
    pub pending_writes: usize,
    /// Passes and drains of any kind that ended, well or not.
    pub steps: u64,
}

impl Progress {
    /// Every record written, of any call.
    pub fn records_written(&self) -> usize {
        self.written.values().sum()
    }
}

/// Everything the daemon runs on. The caller signs both clients in (see [`sign_in`]),
/// opens the store and binds the port: a failure there stops `mqlsync run` before it starts.
pub struct Daemon {
    pub salesforce: SalesforceClient,
    pub marketo: MarketoClient,
    pub mapping: Mapping,
    pub policy: Policy,
    pub store: Store,
    pub settings: RunSettings,
    pub schedule: DaemonSchedule,
    pub clock: Arc<dyn Clock>,
    pub http: HttpState,
    pub inbound: mpsc::Receiver<Inbound>,
    /// The port to serve [`http::router`] on; `None`: no HTTP port (the loop alone).
    pub listener: Option<TcpListener>,
    progress: watch::Sender<Progress>,
}

/// Signs in to Salesforce and Marketo (wrong credentials or a server out of reach stop the
/// start, as for `run --once`), then tells the HTTP port which org's Outbound Messages to take
/// (the org id of the token's identity URL) and that both systems are authenticated.
pub async fn sign_in(
    sf: &SalesforceClient,
    mk: &MarketoClient,
    http: &HttpState,
) -> Result<(), crate::connectors::ConnectorError> {
    crate::sync::connect::sign_in(sf, mk).await?;
    match sf
        .identity_url()
        .as_deref()
        .and_then(super::webhook::org_id_from_identity_url)
    {
        Some(org) => http.set_salesforce_org_id(org),
        None => tracing::warn!(
            "the Salesforce token response named no identity URL (`id`): Outbound Messages are refused with 503 until it does; the pollers still read every change"
        ),
    }
    http.update_readiness(|r| {
        r.salesforce.authenticated = true;
        r.marketo.authenticated = true;
    });
    Ok(())
}

/// How long `/readyz` accepts since a system's last good poll: an idle source polls at the
/// ceiling, so twice that and a minute for the poll itself.
pub fn max_poll_age(schedule: &DaemonSchedule) -> Duration {
    Duration::from_secs(2 * schedule.poll_idle_ceiling_secs + 60)
}

impl Daemon {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        salesforce: SalesforceClient,
        marketo: MarketoClient,
        mapping: Mapping,
        policy: Policy,
        store: Store,
        settings: RunSettings,
        schedule: DaemonSchedule,
        clock: Arc<dyn Clock>,
        http: HttpState,
        inbound: mpsc::Receiver<Inbound>,
        listener: Option<TcpListener>,
    ) -> Self {
        Daemon {
            salesforce,
            marketo,
            mapping,
            policy,
            store,
            settings,
            schedule,
            clock,
            http,
            inbound,
            listener,
            progress: watch::Sender::new(Progress::default()),
        }
    }

    /// What the daemon has done so far, updated after every step.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Runs until `shutdown` is cancelled (then stops within the grace period) or the store
    /// fails. Holds the store's writer lock throughout.
    pub async fn run(self, shutdown: CancellationToken) -> Result<Stopped, DaemonError> {
        let Daemon {
            salesforce: sf,
            marketo: mk,
            mapping,
            policy,
            mut store,
            settings,
            schedule: config,
            clock,
            http,
            mut inbound,
            listener,
            progress,
        } = self;
        let writer_lock = store
            .lock_writer()
            .map_err(|e| DaemonError::Sync(e.into()))?;
        // A commit that checkpoints waits for it: a score push's MQL record would too. The
        // loop starts them elsewhere after its steps instead.
        let checkpointer = store
            .checkpoint_elsewhere(crate::store::CHECKPOINT_EVERY)
            .map_err(|e| DaemonError::Sync(e.into()))?;
        let server_stop = CancellationToken::new();
        let server = listener.map(|listener| {
            let stop = server_stop.clone();
            tokio::spawn(http::serve(listener, http.clone(), async move {
                stop.cancelled().await;
            }))
        });
        let (sf_sent, mk_sent) = (sf.clone(), mk.clone());
        let sent = move || (sf_sent.sent(), mk_sent.sent());
        let syncer = match Syncer::load(&sf, &mk, &mapping, &policy, &mut store, &settings, &sent) {
            Ok(s) => s,
            Err(e) => {
                let _ = stop_server(server_stop, server).await;
                return Err(DaemonError::Sync(e));
            }
        };
        http.update_readiness(|r| r.store_open = true);
        let now = Instant::now();
        let intervals = Intervals::of(&config);
        let mut lp = Loop {
            syncer,
            sf: &sf,
            mk: &mk,
            clock: clock.as_ref(),
            http: &http,
            metrics: http.metrics(),
            sources: Source::ALL
                .into_iter()
                .map(|s| {
                    let schedule =
                        SourceSchedule::new(intervals.interval(s), intervals.idle_ceiling, now);
                    (s, schedule)
                })
                .collect(),
            full: SourceSchedule::new(intervals.thresholds, intervals.idle_ceiling, now),
            writer: WriterSchedule::new(
                Duration::from_millis(config.write_window_ms),
                intervals.activities.min(intervals.thresholds),
                intervals.idle_ceiling,
            ),
            last_ok: BTreeMap::new(),
            pending: 0,
            fetch: None,
            calls_from: (sf.sent(), mk.sent()),
            checkpointer,
            config,
            progress,
        };
        // Loading the state read every row of the store: the page cache is full of pages the
        // polls will not need.
        lp.release_memory(usize::MAX);
        // Marketo's count of today's calls (every integration's), so that the reserve holds
        // across processes; a failure leaves the local count, which the calls keep.
        if let Err(e) = lp.syncer.refresh_usage().await {
            tracing::warn!(error = %e, "could not read Marketo's usage of today; counting from zero");
        }
        let grace = Duration::from_secs(lp.config.grace_secs);
        let ended = {
            let work = lp.serve(&shutdown, &mut inbound);
            tokio::pin!(work);
            tokio::select! {
                result = &mut work => result.map(|()| Stopped::Gracefully),
                () = async {
                    shutdown.cancelled().await;
                    tokio::time::sleep(grace).await;
                } => {
                    tracing::warn!(
                        grace_secs = grace.as_secs(),
                        "the grace period is over: stopping the pass in flight after its last commit (the next start continues from there)"
                    );
                    Ok(Stopped::GraceOver)
                }
            }
        };
        // The state equals the store unless the store failed (see `Syncer`): snapshot it.
        let ended = match ended {
            Ok(how) => match lp.syncer.save_scores() {
                Ok(()) => Ok(how),
                Err(e) => Err(DaemonError::Sync(e)),
            },
            Err(e) => Err(e),
        };
        lp.checkpointer.finish().await;
        drop(lp);
        drop(writer_lock);
        stop_server(server_stop, server).await?;
        if ended.is_ok() {
            tracing::info!("stopped");
        }
        ended
    }
}

/// Stops the HTTP port: the requests in flight finish (webhooks answer at once).
async fn stop_server(
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
) -> Result<(), DaemonError> {
    stop.cancel();
    let Some(server) = server else { return Ok(()) };
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) | Err(_) => Ok(()),
        Ok(Ok(Err(e))) => Err(DaemonError::Serve(e)),
        Ok(Err(join)) => Err(DaemonError::Serve(std::io::Error::other(join))),
    }
}

/// A step of the loop, for logs and errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Full,
    Poll(Source),
    Clock,
    Write,
}

impl Step {
    fn label(self) -> &'static str {
        match self {
            Step::Full => "full",
            Step::Poll(s) => s.label(),
            Step::Clock => "clock",
            Step::Write => "writes",
        }
    }
}

/// A pass that read at least this many events has likely filled SQLite's page cache: the
/// daemon gives it back afterwards ([`Loop::release_memory`]). Polls of a few changes do not
/// pay for reading their pages again.
const RELEASE_AFTER_EVENTS: usize = 10_000;

/// The loop's state: the syncer and the schedules.
struct Loop<'a> {
    syncer: Syncer<'a, SalesforceClient, MarketoClient>,
    sf: &'a SalesforceClient,
    mk: &'a MarketoClient,
    clock: &'a dyn Clock,
    http: &'a HttpState,
    metrics: Arc<Metrics>,
    config: DaemonSchedule,
    sources: BTreeMap<Source, SourceSchedule>,
    /// The first (full) pass, until it has succeeded.
    full: SourceSchedule,
    writer: WriterSchedule,
    /// When each source last read up to date.
    last_ok: BTreeMap<Source, Instant>,
    /// Writes waiting in the outbox.
    pending: usize,
    /// The CRM reads of a source running in their own task, if any.
    fetch: Option<Fetch>,
    /// What the clients had sent when the loop started: [`Progress::calls`] counts from
    /// there.
    calls_from: (Sent, Sent),
    /// Checkpoints the store's log off the loop (see [`crate::store::Checkpointer`]).
    checkpointer: Checkpointer,
    progress: watch::Sender<Progress>,
}

/// A source's CRM reads running in a task of their own (see [`crate::sync::crm_read`]): the
/// loop applies their pages as they arrive, one page ahead at most, and goes on with the
/// Marketo polls and the writer meanwhile. One at a time: a CRM source due while another
/// reads waits for it.
struct Fetch {
    source: Source,
    pages: mpsc::Receiver<Fetched>,
    task: tokio::task::JoinHandle<()>,
    /// The read in progress so far.
    count: ReadCount,
    /// Some read brought records (the source stays at its interval).
    found: bool,
    /// A webhook woke the source while it read: it polls again at once after.
    woken_again: bool,
}

/// What a fetch task hands the loop.
enum Fetched {
    Page(CrmReadKind, ChangePage),
    /// A read is exhausted (the next, if any, follows).
    End(CrmReadKind),
    /// Every read is exhausted.
    Done,
    Failed(ConnectorError),
}

/// Runs `reads` one after the other, handing each page to the loop (which commits it): a
/// page waits in the channel until the loop takes it, so at most one is read ahead.
async fn fetch(reads: Vec<CrmRead<SalesforceClient>>, pages: mpsc::Sender<Fetched>) {
    for mut read in reads {
        loop {
            let next = match read.reader.next_page().await {
                Ok(Some(page)) => Fetched::Page(read.kind.clone(), page),
                Ok(None) => break,
                Err(e) => {
                    let _ = pages.send(Fetched::Failed(e)).await;
                    return;
                }
            };
            if pages.send(next).await.is_err() {
                return; // the loop stopped
            }
        }
        if pages.send(Fetched::End(read.kind)).await.is_err() {
            return;
        }
    }
    let _ = pages.send(Fetched::Done).await;
}

/// The next thing the fetch in flight hands over; pending while none is.
async fn next_fetched(fetch: &mut Option<Fetch>) -> Option<Fetched> {
    match fetch {
        Some(f) => f.pages.recv().await,
        None => std::future::pending().await,
    }
}

impl Loop<'_> {
    async fn serve(
        &mut self,
        shutdown: &CancellationToken,
        inbound: &mut mpsc::Receiver<Inbound>,
    ) -> Result<(), DaemonError> {
        let wake = self.http.wake();
        loop {
            self.run_due(shutdown).await?;
            self.publish();
            if shutdown.is_cancelled() {
                break;
            }
            let next = self.next_due();
            let deadline = self.deadline();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = wake.thresholds.notified() => self.woken(Source::Thresholds),
                () = wake.mql_records.notified() => self.woken(Source::MqlEdits),
                () = wake.people.notified() => self.woken(Source::People),
                () = wake.score_activities.notified() => self.woken(Source::Activities),
                Some(event) = inbound.recv() => self.inbound(event, inbound),
                fetched = next_fetched(&mut self.fetch) => self.fetched(fetched)?,
                () = sleep_until(next) => {}
                () = wait_for_clock(self.clock, deadline) => {}
            }
        }
        // A read in flight stops here: what it committed stays, the rest is read again.
        if let Some(f) = self.fetch.take() {
            f.task.abort();
        }
        // Writes decided but waiting for their window go now: they would wait for the next
        // start otherwise (they are safe in the outbox either way).
        if self.syncer.live() && self.writer.has_new() {
            while self.write().await? {}
            self.publish();
        }
        Ok(())
    }

    /// Runs every step that is due: the first pass until it succeeds; then the clock, each
    /// due source not held back, and the writer.
    async fn run_due(&mut self, shutdown: &CancellationToken) -> Result<(), DaemonError> {
        if !self.syncer.live() {
            if self.full.due(Instant::now()) {
                self.full_pass().await?;
            }
            return Ok(());
        }
        if self
            .syncer
            .next_deadline()
            .is_some_and(|at| at <= self.clock.now())
        {
            self.tick().await?;
        }
        for source in Source::ALL {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let due = self.poll_at(source) <= Instant::now();
            let held = schedule::held_back(source, self.pending, self.config.max_pending_writes);
            if due && held {
                tracing::debug!(
                    source = source.label(),
                    pending_writes = self.pending,
                    "held back until the writer drains the outbox"
                );
            }
            if due && !held {
                if self.fetched_off_loop(source) {
                    if self.fetch.is_none() {
                        self.start_fetch(source)?;
                    }
                } else {
                    self.poll(source).await?;
                }
            }
        }
        if self
            .writer
            .due(Instant::now(), self.pending, self.next_work())
        {
            self.write().await?;
        }
        // The knob's consequence beside the knob, once the outbox is empty: a knob turn's MQL
        // records go first. Off unless mapped; nothing due (the usual case) is one cursor read.
        if self.pending == 0 && !shutdown.is_cancelled() {
            self.knob_feedback().await?;
        }
        Ok(())
    }

    async fn knob_feedback(&mut self) -> Result<(), DaemonError> {
        match self.syncer.knob_feedback(self.clock.now()).await {
            Ok(None) => Ok(()),
            Ok(Some(summary)) => {
                self.account(&summary);
                self.refresh_pending()?;
                self.writer.committed(Instant::now(), self.pending);
                Ok(())
            }
            Err(e) => self.failed(Step::Poll(Source::Thresholds), e),
        }
    }

    /// When `source` may poll: its schedule's instant, and for a Marketo source not before
    /// Marketo's pacer admits the call. A poll started earlier would sit in the pacer's wait
    /// (up to 208 ms a call), with the loop blocked behind it and the writes of the last
    /// poll waiting; so the loop waits in its `select!` instead, where the writer can run.
    fn poll_at(&self, source: Source) -> Instant {
        let at = self.sources[&source].next();
        match source.system() {
            System::Marketo => at.max(self.mk.ready_at()),
            System::Salesforce => at,
        }
    }

    /// Each source with the instant it may poll; while a CRM read is in flight, the
    /// sources read that way wait for it and have none.
    fn poll_times(&self) -> Vec<(Source, Instant)> {
        Source::ALL
            .iter()
            .filter(|s| !(self.fetch.is_some() && self.fetched_off_loop(**s)))
            .map(|s| (*s, self.poll_at(*s)))
            .collect()
    }

    fn fetched_off_loop(&self, source: Source) -> bool {
        crate::sync::crm_read::CrmObject::of_source(source).is_some()
    }

    /// The sources the loop reads itself (the thresholds, the MAP's activities) with the
    /// instant each may poll: the writer waits for these, not for a CRM read, whose pages
    /// come from its own task at no instant the loop knows.
    fn loop_poll_times(&self) -> Vec<(Source, Instant)> {
        let mut times = self.poll_times();
        times.retain(|(s, _)| !self.fetched_off_loop(*s));
        times
    }

    /// When the next step that could add writes is due (see [`WriterSchedule::due_at`]).
    fn next_work(&self) -> Option<Instant> {
        schedule::next_work(
            &self.loop_poll_times(),
            self.pending,
            self.config.max_pending_writes,
            self.next_work_clock(),
        )
    }

    /// The engine's next timer as a tokio instant (an estimate on a clock that is not the
    /// wall's, as in tests: only the writer's window asks it).
    fn next_work_clock(&self) -> Option<Instant> {
        self.deadline().map(|at| {
            let ahead = at.duration_since(self.clock.now());
            Instant::now() + Duration::try_from(ahead).unwrap_or_default()
        })
    }

    /// The next instant a step is due by the schedules alone.
    fn next_due(&self) -> Option<Instant> {
        if !self.syncer.live() {
            return Some(self.full.next());
        }
        let clock = self.next_work_clock();
        schedule::next_due(
            &self.poll_times(),
            &self.writer,
            self.pending,
            self.config.max_pending_writes,
            clock,
        )
    }

    /// The engine's next timer, once live.
    fn deadline(&self) -> Option<Timestamp> {
        self.syncer.live().then(|| self.syncer.next_deadline())?
    }

    fn woken(&mut self, source: Source) {
        let now = Instant::now();
        if self.syncer.live() {
            tracing::debug!(source = source.label(), "woken");
            if let Some(s) = self.sources.get_mut(&source) {
                s.woken(now);
            }
            if let Some(f) = self.fetch.as_mut().filter(|f| f.source == source) {
                f.woken_again = true;
            }
        } else {
            self.full.woken(now);
        }
    }

    /// Inbound webhook events (this one and any others queued): counted. Their sources were
    /// woken by the bells the webhooks rang with them (for a dropped event too), so they do
    /// not wake them twice; the polls read the changes. An event is not applied itself, so
    /// that no change is applied twice under two ids (Marketo's webhook carries no activity
    /// id), and a forged one cannot decide anything.
    fn inbound(&mut self, event: Inbound, queue: &mut mpsc::Receiver<Inbound>) {
        for event in std::iter::once(event).chain(std::iter::from_fn(|| queue.try_recv().ok())) {
            let kind = match &event {
                Inbound::MarketoScore(_) => "webhook_score",
                Inbound::Threshold(_) => "webhook_threshold",
                Inbound::MqlRecord(_) => "webhook_mql_record",
                Inbound::Person(_) => "webhook_person",
            };
            self.metrics.count_event(kind);
        }
    }

    async fn full_pass(&mut self) -> Result<(), DaemonError> {
        let result = self.syncer.full_pass(self.clock.now(), None).await;
        let now = Instant::now();
        match result {
            Ok(summary) => {
                tracing::info!(
                    events = summary.events,
                    written = summary.written.values().sum::<usize>(),
                    salesforce_calls = summary.calls.get("salesforce").copied().unwrap_or(0),
                    marketo_calls = summary.calls.get("marketo").copied().unwrap_or(0),
                    "first pass done: live; the sources now poll on their own"
                );
                self.account(&summary);
                self.release_memory(usize::MAX);
                let first = Arc::new(summary);
                self.progress
                    .send_modify(|p| p.first_pass = Some(first.clone()));
                for source in Source::ALL {
                    self.mark_polled(source, now);
                    self.sources
                        .get_mut(&source)
                        .expect("every source")
                        .polled(now, true);
                }
                self.refresh_pending()?;
                self.writer.drained(now, self.pending);
                self.progress.send_modify(|p| {
                    p.live = true;
                    p.drains += 1;
                });
                Ok(())
            }
            Err(e) => self.failed(Step::Full, e),
        }
    }

    async fn poll(&mut self, source: Source) -> Result<(), DaemonError> {
        let result = self.syncer.poll(self.clock.now(), source).await;
        let now = Instant::now();
        match result {
            Ok(summary) => {
                let found = summary.events > 0 || summary.read.values().any(|n| *n > 0);
                if found {
                    tracing::info!(
                        source = source.label(),
                        events = summary.events,
                        decisions = summary.decisions.values().sum::<usize>(),
                        "polled"
                    );
                }
                self.account(&summary);
                self.release_memory(summary.events);
                self.mark_polled(source, now);
                self.sources
                    .get_mut(&source)
                    .expect("every source")
                    .polled(now, found);
                self.refresh_pending()?;
                self.writer.committed(now, self.pending);
                self.progress
                    .send_modify(|p| *p.polls.entry(source).or_default() += 1);
                Ok(())
            }
            Err(e) => self.failed(Step::Poll(source), e),
        }
    }

    /// Starts `source`'s CRM reads in a task of their own, from the cursors committed now.
    fn start_fetch(&mut self, source: Source) -> Result<(), DaemonError> {
        let reads = match self.syncer.crm_reads(source) {
            Ok(reads) => reads.unwrap_or_default(),
            Err(e) => return self.failed(Step::Poll(source), e),
        };
        let (tx, rx) = mpsc::channel(1);
        self.fetch = Some(Fetch {
            source,
            pages: rx,
            task: tokio::spawn(fetch(reads, tx)),
            count: ReadCount::default(),
            found: false,
            woken_again: false,
        });
        Ok(())
    }

    /// What the fetch in flight handed over: a page applied and committed, a read ended, or
    /// the whole poll done (or failed, as a poll in the loop fails).
    fn fetched(&mut self, fetched: Option<Fetched>) -> Result<(), DaemonError> {
        let Some(f) = self.fetch.as_mut() else {
            return Ok(());
        };
        let source = f.source;
        let now = self.clock.now();
        match fetched {
            Some(Fetched::Page(kind, page)) => {
                let result = self.syncer.apply_crm_page(now, &kind, page, &mut f.count);
                match result {
                    Ok(summary) => {
                        f.found |= summary.events > 0;
                        self.account(&summary);
                        self.release_memory(summary.events);
                        self.refresh_pending()?;
                        self.writer.committed(Instant::now(), self.pending);
                        Ok(())
                    }
                    Err(e) => {
                        self.stop_fetch();
                        self.failed(Step::Poll(source), e)
                    }
                }
            }
            Some(Fetched::End(kind)) => {
                let count = std::mem::take(&mut f.count);
                f.found |= count.records > 0;
                let summary = self.syncer.end_crm_read(now, &kind, count);
                if count.records > 0 {
                    tracing::info!(source = source.label(), object = %kind.object, records = count.records, "polled");
                }
                self.account(&summary);
                Ok(())
            }
            Some(Fetched::Done) => {
                let f = self.fetch.take().expect("a fetch in flight");
                let at = Instant::now();
                self.mark_polled(source, at);
                let schedule = self.sources.get_mut(&source).expect("every source");
                schedule.polled(at, f.found);
                if f.woken_again {
                    schedule.woken(at);
                }
                self.progress
                    .send_modify(|p| *p.polls.entry(source).or_default() += 1);
                Ok(())
            }
            Some(Fetched::Failed(e)) => {
                self.stop_fetch();
                self.failed(Step::Poll(source), e.into())
            }
            None => {
                // The task ended without a word: it panicked. Its committed pages stay.
                self.stop_fetch();
                tracing::error!(
                    source = source.label(),
                    "a CRM read stopped unexpectedly; trying again later"
                );
                self.metrics.count_error("internal");
                self.sources
                    .get_mut(&source)
                    .expect("every source")
                    .failed(Instant::now(), None);
                Ok(())
            }
        }
    }

    fn stop_fetch(&mut self) {
        if let Some(f) = self.fetch.take() {
            f.task.abort();
        }
    }

    async fn tick(&mut self) -> Result<(), DaemonError> {
        let result = self.syncer.tick(self.clock.now()).await;
        match result {
            Ok(summary) => {
                self.account(&summary);
                self.refresh_pending()?;
                self.writer.committed(Instant::now(), self.pending);
                self.progress.send_modify(|p| p.ticks += 1);
                Ok(())
            }
            Err(e) => self.failed(Step::Clock, e),
        }
    }

    /// One writer step (see [`Syncer::write_step`]), handing back to the loop between groups
    /// of writes once a poll is due; true when it left writes for the next step.
    async fn write(&mut self) -> Result<bool, DaemonError> {
        let polls = schedule::next_work(
            &self.loop_poll_times(),
            self.pending,
            self.config.max_pending_writes,
            None,
        );
        let result = self.syncer.write_step(self.clock.now(), polls).await;
        let now = Instant::now();
        match result {
            Ok(summary) => {
                self.account(&summary);
                self.refresh_pending()?;
                if summary.writes_left {
                    self.writer.stepped(now);
                } else {
                    self.writer.drained(now, self.pending);
                    self.progress.send_modify(|p| p.drains += 1);
                }
                Ok(summary.writes_left)
            }
            Err(e) => {
                self.refresh_pending()?;
                self.failed(Step::Write, e).map(|()| false)
            }
        }
    }

    /// After a pass that read `events` (the first pass: `usize::MAX`), gives SQLite's page
    /// cache back to the system when the pass was big enough to have filled it: a sidecar's
    /// memory between polls is then the engine state's, not the cache's (64 MiB at most).
    /// Failing to is not worth stopping for.
    fn release_memory(&mut self, events: usize) {
        if events < RELEASE_AFTER_EVENTS {
            return;
        }
        if let Err(e) = self.syncer.release_memory() {
            tracing::warn!(error = %e, "could not give the store's page cache back; going on");
        }
    }

    /// A failed step: one log line with its class, counted; then back off, pause the
    /// system, or (the store) stop.
    fn failed(&mut self, step: Step, e: SyncError) -> Result<(), DaemonError> {
        let (class, failure) = schedule::failure(&e);
        self.metrics.count_error(class);
        self.progress.send_modify(|p| {
            p.errors += 1;
            p.steps += 1;
        });
        let now = Instant::now();
        match failure {
            Failure::Stop => return Err(DaemonError::Sync(e)),
            Failure::BackOff { retry_after } => {
                tracing::warn!(step = step.label(), class, error = %e, "pass failed; trying again later");
                match step {
                    Step::Full => self.full.failed(now, retry_after),
                    Step::Poll(source) => self
                        .sources
                        .get_mut(&source)
                        .expect("every source")
                        .failed(now, retry_after),
                    Step::Write => self.writer.failed(now, self.pending),
                    Step::Clock => {}
                }
            }
            Failure::Pause { system, resume_at } => {
                tracing::warn!(step = step.label(), class, %system, %resume_at, error = %e, "daily limit spent: pausing what calls it until then");
                let wait = Duration::try_from(resume_at.duration_since(self.clock.now()))
                    .unwrap_or(Duration::ZERO);
                let until = now + wait;
                for (source, schedule) in &mut self.sources {
                    if source.system() == system {
                        schedule.pause_until(until);
                    }
                }
                if step == Step::Full {
                    self.full.pause_until(until);
                }
                if system == System::Salesforce {
                    self.writer.pause_until(until);
                }
            }
        }
        Ok(())
    }

    fn refresh_pending(&mut self) -> Result<(), DaemonError> {
        let (pending, _parked) = self.syncer.outbox_depth().map_err(DaemonError::Sync)?;
        self.pending = pending;
        self.metrics.set_outbox_depth(pending as u64);
        self.progress.send_modify(|p| p.pending_writes = pending);
        Ok(())
    }

    fn mark_polled(&mut self, source: Source, now: Instant) {
        self.last_ok.insert(source, now);
        self.http.update_readiness(|r| match source.system() {
            System::Salesforce => r.salesforce.last_ok_poll = Some(now),
            System::Marketo => r.marketo.last_ok_poll = Some(now),
        });
    }

    /// Counts what a step did into the metrics and the progress.
    fn account(&mut self, summary: &RunSummary) {
        let (sf, mk) = (
            self.sf.sent() - self.calls_from.0,
            self.mk.sent() - self.calls_from.1,
        );
        let calls = BTreeMap::from([
            ("salesforce".to_string(), sf.requests),
            ("marketo".to_string(), mk.requests),
        ]);
        let m = &self.metrics;
        for (kind, n) in &summary.read {
            m.add(Family::Events, &[kind], *n as f64);
        }
        for (kind, n) in &summary.decisions {
            m.add(Family::Decisions, &[kind], *n as f64);
        }
        for (segment, n) in &summary.opened_by_segment {
            m.add(Family::MqlsOpened, &[segment], *n as f64);
        }
        for (how, n) in &summary.qualified_by {
            m.add(Family::MqlsQualified, &[how], *n as f64);
        }
        for record in &summary.records {
            match record.outcome.as_str() {
                "retry" | "no_result" => m.count_outbox_failure("retry"),
                "parked" => m.count_outbox_failure("permanent"),
                _ => {}
            }
        }
        self.progress.send_modify(|p| {
            p.steps += 1;
            p.events += summary.events;
            add(&mut p.read, &summary.read);
            add(&mut p.written, &summary.written);
            add(&mut p.settled, &summary.settled);
            add(&mut p.decisions, &summary.decisions);
            p.calls = calls.clone();
            add(&mut p.minimum_calls, &summary.minimum_calls);
        });
    }

    /// The gauges and the progress's view of now.
    fn publish(&mut self) {
        self.checkpointer
            .after_step(self.syncer.store(), Instant::now());
        let m = &self.metrics;
        m.set_api_calls_total(System::Salesforce, self.sf.sent().requests);
        m.set_api_calls_total(System::Marketo, self.mk.sent().requests);
        for (system, budget) in [
            (System::Salesforce, self.sf.budget()),
            (System::Marketo, self.mk.budget()),
        ] {
            let (used, limit) = budget.usage();
            if limit > 0 {
                let left = limit.saturating_sub(used).saturating_sub(budget.reserve());
                m.set_daily_budget_remaining(system, left);
            }
        }
        let now = Instant::now();
        for source in Source::ALL {
            let lag = self
                .last_ok
                .get(&source)
                .map_or(f64::INFINITY, |at| (now - *at).as_secs_f64());
            m.set_poll_lag(source.label(), lag);
        }
        m.set(
            Family::People,
            &[],
            self.syncer.state().persons.len() as f64,
        );
        let deadline = self.deadline();
        let pending = self.pending;
        self.progress.send_modify(|p| {
            p.next_deadline = deadline;
            p.pending_writes = pending;
        });
    }
}

/// Adds `more`'s counts into `total`'s.
fn add<N: Copy + std::ops::AddAssign + Default>(
    total: &mut BTreeMap<String, N>,
    more: &BTreeMap<String, N>,
) {
    for (key, n) in more {
        *total.entry(key.clone()).or_default() += *n;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn wait_for_clock(clock: &dyn Clock, at: Option<Timestamp>) {
    match at {
        Some(at) => clock.wait_until(at).await,
        None => std::future::pending().await,
    }
}

/// The daemon can run as a spawned task (tests spawn it; `main` blocks on it).
#[allow(dead_code)]
fn run_is_send(
    daemon: Daemon,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = Result<Stopped, DaemonError>> + Send {
    daemon.run(shutdown)
}
