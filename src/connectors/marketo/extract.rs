//! The bulk-extract runner: a date range split into `createdAt` windows of at most 31 days, one
//! export job per window driven through Marketo's queue within its limits, each file
//! downloaded, checked and handed to the caller in window order, read one record at a time.
//!
//! # The limits it keeps (Adobe, "Bulk Extract")
//! - At most 10 jobs queued or processing per instance, shared with every other integration,
//!   and only 2 processing at once. The runner keeps [`ExtractSettings::jobs_in_flight`]
//!   jobs (4: two processing, two queued behind them) and enqueues the next as soon as one is
//!   handed out. A full queue (1029 "Too many jobs") is waited out, up to
//!   [`ExtractSettings::queue_wait_max_secs`].
//! - A job's status changes at most once a minute: it polls every
//!   [`ExtractSettings::poll_interval_secs`] (60), doubling up to
//!   [`ExtractSettings::max_poll_interval_secs`] (300) while the status stays the same. Only
//!   the job of the next window to hand out is polled: jobs leave the queue in order, and a
//!   later job's file waits on Marketo (seven days) until its turn.
//! - 500 MB of files a day, shared by every export: "1029 Export daily quota exceeded" on a
//!   create or enqueue stops the making of jobs; the windows already queued run to the end and
//!   are handed out, then [`ExtractError::Checkpoint`] names the window to resume from and
//!   when (midnight US Central). Any other spent daily quota (607, our own reserve) stops at
//!   once the same way.
//!
//! # Files
//! Each file goes to a temporary file in the caller's directory, streamed, with its SHA-256
//! compared to the job's `fileChecksum` and its length to `fileSize`; a mismatch or a
//! "Completed but 404" file is downloaded again (a few times, a poll interval apart). The
//! rows are read from disk by [`WindowFile`], so memory holds one record whatever the size.
//!
//! # Creating without duplicates
//! A create whose answer is lost may or may not have made a job. Before its first create the
//! runner lists this API user's jobs in state `Created` (one call a run); after a lost answer
//! it lists them again, and a Created job it did not know is the one it made. None: the create
//! did not happen and is sent again. Several: another client with the same API user is
//! exporting, and the runner stops rather than guess.
//!
//! # Resuming
//! Windows are numbered from 0 in [`ExportPlan::windows`]. A window is done when the caller
//! has read its rows; it checkpoints the window's index (or end), and a later run starts at
//! the next with [`BulkExtract::starting_at`]. Delivery is at-least-once per window: a window
//! read but not checkpointed is exported and handed out again.
//!
//! It waits through [`Pause`] (tokio time; tests move the sandbox clock instead). Vendor-level:
//! it must not know MQL semantics or engine types.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};

use super::MarketoClient;
use super::bulk::{ExportJob, ExportKind, MAX_EXPORT_DAYS, check_window, created_at};
use super::export_file::{ACTIVITY_COLUMNS, LEAD_WINDOW_FIELD, WindowFile};
use crate::connectors::error::{ConnectorError, ErrorClass};

/// Most `primaryAttributeValueIds` one activity export takes.
pub const MAX_PRIMARY_ATTRIBUTE_VALUE_IDS: usize = 50;
/// Most jobs queued or processing on one instance.
pub const MAX_QUEUED_JOBS: usize = 10;

/// One `createdAt` window `[start, end)` of an export; `index` counts from 0 in its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub index: usize,
    pub start: Timestamp,
    pub end: Timestamp,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "window {} ({} to {})",
            self.index,
            super::format_datetime(self.start),
            super::format_datetime(self.end)
        )
    }
}

/// `[start, end)` cut into windows of at most 31 days, in order. The bounds are taken to whole
/// seconds (start down, end up), as Marketo takes dates without milliseconds.
pub fn windows(start: Timestamp, end: Timestamp) -> Vec<Window> {
    windows_of(start, end, MAX_EXPORT_DAYS as u32)
}

/// [`windows`] of at most `days` days (1 to 31).
pub fn windows_of(start: Timestamp, end: Timestamp, days: u32) -> Vec<Window> {
    let days = i64::from(days.clamp(1, MAX_EXPORT_DAYS as u32));
    let start = Timestamp::from_second(start.as_second()).unwrap_or(start);
    let end = match end.subsec_nanosecond() {
        0 => end,
        _ => Timestamp::from_second(end.as_second() + 1).unwrap_or(end),
    };
    let step = SignedDuration::from_hours(24 * days);
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let next = (at + step).min(end);
        out.push(Window {
            index: out.len(),
            start: at,
            end: next,
        });
        at = next;
    }
    out
}

/// What one export job of a window asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportFilter {
    /// Activities of these types (every type when empty), optionally only those whose primary
    /// attribute is one of `primary_attribute_value_ids` (for Change Score: the score fields'
    /// ids).
    Activities {
        type_ids: Vec<u32>,
        primary_attribute_value_ids: Vec<i64>,
    },
    /// These lead fields of the leads created in the window.
    Leads { fields: Vec<String> },
}

/// The export of `[start, end)`: what to ask for and the windows to ask for it in.
#[derive(Debug, Clone)]
pub struct ExportPlan {
    filter: ExportFilter,
    windows: Vec<Window>,
}

impl ExportPlan {
    /// Activities of `type_ids` (optionally only with these primary attribute ids).
    pub fn activities(
        type_ids: &[u32],
        primary_attribute_value_ids: &[i64],
        start: Timestamp,
        end: Timestamp,
    ) -> Result<ExportPlan, ExtractError> {
        if primary_attribute_value_ids.len() > MAX_PRIMARY_ATTRIBUTE_VALUE_IDS {
            return Err(ExtractError::Settings(format!(
                "an activity export takes at most {MAX_PRIMARY_ATTRIBUTE_VALUE_IDS} primaryAttributeValueIds, got {}",
                primary_attribute_value_ids.len()
            )));
        }
        if !primary_attribute_value_ids.is_empty() && type_ids.is_empty() {
            return Err(ExtractError::Settings(
                "primaryAttributeValueIds need the activityTypeIds they belong to".into(),
            ));
        }
        Self::new(
            ExportFilter::Activities {
                type_ids: type_ids.to_vec(),
                primary_attribute_value_ids: primary_attribute_value_ids.to_vec(),
            },
            start,
            end,
        )
    }

    /// Lead `fields` of the leads created in `[start, end)`.
    pub fn leads(
        fields: &[&str],
        start: Timestamp,
        end: Timestamp,
    ) -> Result<ExportPlan, ExtractError> {
        if fields.is_empty() {
            return Err(ExtractError::Settings(
                "a lead export needs at least one field".into(),
            ));
        }
        Self::new(
            ExportFilter::Leads {
                fields: fields.iter().map(|f| f.to_string()).collect(),
            },
            start,
            end,
        )
    }

    fn new(
        filter: ExportFilter,
        start: Timestamp,
        end: Timestamp,
    ) -> Result<ExportPlan, ExtractError> {
        if end <= start {
            return Err(ExtractError::Settings(format!(
                "an export range must end after it starts: {start} to {end}"
            )));
        }
        Ok(ExportPlan {
            filter,
            windows: windows(start, end),
        })
    }

    /// The same export in windows of at most `days` days (1 to 31; Marketo allows 31).
    pub fn with_window_days(mut self, days: u32) -> ExportPlan {
        let (start, end) = (
            self.windows[0].start,
            self.windows[self.windows.len() - 1].end,
        );
        self.windows = windows_of(start, end, days);
        self
    }

    pub fn kind(&self) -> ExportKind {
        match self.filter {
            ExportFilter::Activities { .. } => ExportKind::Activities,
            ExportFilter::Leads { .. } => ExportKind::Leads,
        }
    }

    pub fn filter(&self) -> &ExportFilter {
        &self.filter
    }

    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// The create request of one window. Lead exports always carry `createdAt`, so rows can
    /// be kept to the window.
    pub fn request(&self, window: &Window) -> Result<Value, ExtractError> {
        check_window(window.start, window.end)
            .map_err(|e| ExtractError::Settings(e.to_string()))?;
        let mut filter = json!({"createdAt": created_at(window.start, window.end)});
        Ok(match &self.filter {
            ExportFilter::Activities {
                type_ids,
                primary_attribute_value_ids,
            } => {
                if !type_ids.is_empty() {
                    filter["activityTypeIds"] = json!(type_ids);
                }
                if !primary_attribute_value_ids.is_empty() {
                    filter["primaryAttributeValueIds"] = json!(primary_attribute_value_ids);
                }
                json!({"format": "CSV", "fields": ACTIVITY_COLUMNS, "filter": filter})
            }
            ExportFilter::Leads { fields } => {
                let mut asked: Vec<&str> = fields.iter().map(String::as_str).collect();
                if !asked.contains(&LEAD_WINDOW_FIELD) {
                    asked.push(LEAD_WINDOW_FIELD);
                }
                json!({"format": "CSV", "fields": asked, "filter": filter})
            }
        })
    }

    fn fields(&self) -> Vec<String> {
        match &self.filter {
            ExportFilter::Leads { fields } => fields.clone(),
            ExportFilter::Activities { .. } => Vec::new(),
        }
    }
}

/// How the runner paces itself (TOML `[marketo.bulk]` when the caller exposes it).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtractSettings {
    /// First wait between status polls. Marketo updates a job's status at most once a
    /// minute and suggests polling every 5 minutes.
    pub poll_interval_secs: u64,
    /// The wait doubles while a status stays the same, up to this.
    pub max_poll_interval_secs: u64,
    /// Jobs made and not yet handed out (1 to 10: the instance's queue holds 10, shared
    /// with other integrations; 2 process at once).
    pub jobs_in_flight: usize,
    /// Downloads of one file before giving up (a 404 after Completed, a checksum mismatch).
    pub file_attempts: u32,
    /// Longest total wait for room in a full queue before giving up.
    pub queue_wait_max_secs: u64,
}

impl Default for ExtractSettings {
    fn default() -> Self {
        ExtractSettings {
            poll_interval_secs: 60,
            max_poll_interval_secs: 300,
            jobs_in_flight: 4,
            file_attempts: 3,
            queue_wait_max_secs: 6 * 3600,
        }
    }
}

impl ExtractSettings {
    fn check(&self) -> Result<(), ExtractError> {
        let bad = |m: String| Err(ExtractError::Settings(m));
        if !(1..=MAX_QUEUED_JOBS).contains(&self.jobs_in_flight) {
            return bad(format!(
                "jobs_in_flight must be 1 to {MAX_QUEUED_JOBS}, got {}",
                self.jobs_in_flight
            ));
        }
        if self.poll_interval_secs == 0 || self.max_poll_interval_secs < self.poll_interval_secs {
            return bad(format!(
                "poll_interval_secs must be at least 1 and at most max_poll_interval_secs, got {} and {}",
                self.poll_interval_secs, self.max_poll_interval_secs
            ));
        }
        if self.file_attempts == 0 {
            return bad("file_attempts must be at least 1".into());
        }
        Ok(())
    }
}

/// How the runner waits between polls.
pub trait Pause: Send + Sync {
    fn pause(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

/// Waits on tokio's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioPause;

impl Pause for TokioPause {
    async fn pause(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// A pause chosen at run time: tokio's clock, or a hook (a test moves the sandbox's clock, so
/// that Marketo's minutes pass at once). What a caller that cannot be generic hands the runner.
#[derive(Clone, Default)]
pub enum PauseBy {
    #[default]
    Tokio,
    Hook(std::sync::Arc<dyn Fn(Duration) + Send + Sync>),
}

impl std::fmt::Debug for PauseBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PauseBy::Tokio => "PauseBy::Tokio",
            PauseBy::Hook(_) => "PauseBy::Hook",
        })
    }
}

impl Pause for PauseBy {
    async fn pause(&self, duration: Duration) {
        match self {
            PauseBy::Tokio => tokio::time::sleep(duration).await,
            PauseBy::Hook(hook) => {
                hook(duration);
                tokio::task::yield_now().await;
            }
        }
    }
}

/// What went wrong in a bulk extract, naming the window.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("bulk extract: {0}; fix the export plan or the bulk settings")]
    Settings(String),

    #[error("Marketo bulk {what} for export {window}: {cause}")]
    Call {
        window: Window,
        /// `create`, `enqueue`, `status`, `download`, `list`.
        what: &'static str,
        cause: Box<ConnectorError>,
    },

    #[error(
        "Marketo: a daily allowance is spent ({reason}); the windows before {window} are done: run again after {resume_at} to go on from {window}"
    )]
    Checkpoint {
        /// The first window not handed out: resume from it.
        window: Window,
        resume_at: Timestamp,
        reason: String,
    },

    #[error(
        "Marketo reports export job {export_id} for {window} Failed{}; a failed job cannot be restarted: run again to create it anew (the windows before it are done)",
        message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
    )]
    JobFailed {
        window: Window,
        export_id: String,
        message: Option<String>,
    },

    #[error(
        "Marketo export job {export_id} for {window} was cancelled by another client signed in as the same API user: run again when it is done"
    )]
    JobCancelled { window: Window, export_id: String },

    #[error(
        "the file of Marketo export job {export_id} for {window} was still not found (HTTP 404) after {attempts} downloads, though the job is Completed: run again later"
    )]
    FileUnavailable {
        window: Window,
        export_id: String,
        attempts: u32,
    },

    #[error(
        "the file of Marketo export job {export_id} for {window} does not match its job after {attempts} downloads ({detail}): run again later"
    )]
    Checksum {
        window: Window,
        export_id: String,
        attempts: u32,
        detail: String,
    },

    #[error(
        "{}: line {line}: {detail} (Marketo export job {export_id}, {window})",
        path.display()
    )]
    Row {
        window: Window,
        export_id: String,
        path: PathBuf,
        line: u64,
        detail: String,
    },

    #[error(
        "the file of Marketo export job {export_id} for {window} holds {read} records where the job counted {expected}: run again to export the window anew"
    )]
    RecordCount {
        window: Window,
        export_id: String,
        expected: u64,
        read: u64,
    },

    #[error(
        "Marketo's bulk export queue (10 jobs, shared by every integration of the instance) stayed full for {waited_secs} s while {window} waited for room: other integrations hold it; run again later"
    )]
    QueueFull { window: Window, waited_secs: u64 },

    #[error(
        "after a lost answer to the export create for {window}, {} new jobs in state Created appeared ({}): another client signed in as the same API user is exporting; cancel the jobs that are not this run's, then run again",
        export_ids.len(),
        export_ids.join(", ")
    )]
    Ambiguous {
        window: Window,
        export_ids: Vec<String>,
    },

    #[error("cannot {what} export file {}: {error}; check the directory given for export files", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
}

impl ExtractError {
    /// The reaction this error calls for.
    pub fn class(&self) -> ErrorClass {
        match self {
            ExtractError::Call { cause, .. } => cause.class(),
            ExtractError::Checkpoint { resume_at, .. } => ErrorClass::Checkpoint {
                resume_at: *resume_at,
            },
            ExtractError::JobFailed { .. }
            | ExtractError::FileUnavailable { .. }
            | ExtractError::Checksum { .. }
            | ExtractError::RecordCount { .. } => ErrorClass::Retry,
            ExtractError::QueueFull { .. } => ErrorClass::BackOff,
            ExtractError::Settings(_)
            | ExtractError::JobCancelled { .. }
            | ExtractError::Row { .. }
            | ExtractError::Ambiguous { .. }
            | ExtractError::Io { .. } => ErrorClass::Fatal,
        }
    }

    /// When to run again, for a spent daily allowance.
    pub fn resume_at(&self) -> Option<Timestamp> {
        match self.class() {
            ErrorClass::Checkpoint { resume_at } => Some(resume_at),
            _ => None,
        }
    }
}

/// What a runner did, for logs and for counting calls against the minimum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Windows whose file was handed out.
    pub windows: usize,
    /// Jobs created (or found after a lost create answer).
    pub created: u64,
    /// Jobs found after a lost create answer.
    pub adopted: u64,
    pub enqueued: u64,
    /// Enqueues refused by a full queue.
    pub queue_full: u64,
    pub status_polls: u64,
    pub downloads: u64,
    pub lists: u64,
    pub cancels: u64,
    pub bytes: u64,
    /// Total of the pauses between polls.
    pub waited: Duration,
}

/// A job made for a window and not yet handed out.
#[derive(Debug)]
struct Job {
    window: Window,
    export_id: String,
    queued: bool,
    status: String,
    /// Made or queued since the last pause: not worth a poll yet.
    fresh: bool,
}

/// Where the making of jobs stopped on a spent export allowance.
#[derive(Debug)]
struct Stop {
    window: Window,
    resume_at: Timestamp,
    reason: String,
}

/// Runs one [`ExportPlan`]'s jobs and hands out their files in window order.
///
/// ```no_run
/// # async fn example(mkto: mqlsync::connectors::marketo::MarketoClient) -> Result<(), Box<dyn std::error::Error>> {
/// use mqlsync::connectors::marketo::extract::{BulkExtract, ExportPlan, ExtractSettings};
/// let plan = ExportPlan::activities(&[22], &[], "2025-11-01T00:00:00Z".parse()?, "2026-11-01T00:00:00Z".parse()?)?;
/// let mut run = BulkExtract::new(mkto, plan, ExtractSettings::default(), std::env::temp_dir())?;
/// while let Some(file) = run.next_window().await? {
///     for activity in file.activities()? {
///         let _activity = activity?; // one record in memory at a time
///     }
///     // checkpoint file.window.index + 1 here
/// }
/// # Ok(()) }
/// ```
pub struct BulkExtract<P: Pause = TokioPause> {
    client: MarketoClient,
    plan: ExportPlan,
    settings: ExtractSettings,
    dir: PathBuf,
    pause: P,
    /// The next window to make a job for.
    next_create: usize,
    /// Jobs made and not yet handed out, in window order; a job is queued only when every
    /// job before it is.
    jobs: VecDeque<Job>,
    /// The Created jobs found before the first create, and every job this runner made: after
    /// a lost create answer, a Created job outside this set is the one it made.
    known: Option<HashSet<String>>,
    stop: Option<Stop>,
    interval: Duration,
    queue_waited: Duration,
    stats: ExtractStats,
}

impl BulkExtract<TokioPause> {
    /// A runner of `plan` from its first window, writing files into `dir`.
    pub fn new(
        client: MarketoClient,
        plan: ExportPlan,
        settings: ExtractSettings,
        dir: impl Into<PathBuf>,
    ) -> Result<Self, ExtractError> {
        settings.check()?;
        Ok(BulkExtract {
            client,
            plan,
            interval: Duration::from_secs(settings.poll_interval_secs),
            settings,
            dir: dir.into(),
            pause: TokioPause,
            next_create: 0,
            jobs: VecDeque::new(),
            known: None,
            stop: None,
            queue_waited: Duration::ZERO,
            stats: ExtractStats::default(),
        })
    }
}

impl<P: Pause> BulkExtract<P> {
    /// The same runner waiting through `pause`.
    pub fn with_pause<Q: Pause>(self, pause: Q) -> BulkExtract<Q> {
        BulkExtract {
            client: self.client,
            plan: self.plan,
            settings: self.settings,
            dir: self.dir,
            pause,
            next_create: self.next_create,
            jobs: self.jobs,
            known: self.known,
            stop: self.stop,
            interval: self.interval,
            queue_waited: self.queue_waited,
            stats: self.stats,
        }
    }

    /// Start at window `index` (the windows before it are done). Before the first
    /// [`Self::next_window`] only.
    pub fn starting_at(mut self, index: usize) -> Self {
        if self.jobs.is_empty() {
            self.next_create = index.min(self.plan.windows.len());
        }
        self
    }

    pub fn plan(&self) -> &ExportPlan {
        &self.plan
    }

    pub fn stats(&self) -> &ExtractStats {
        &self.stats
    }

    fn kind(&self) -> ExportKind {
        self.plan.kind()
    }

    fn base_interval(&self) -> Duration {
        Duration::from_secs(self.settings.poll_interval_secs)
    }

    /// The file of the next window, once its job is Completed and the file downloaded and
    /// checked; `None` after the last window. After an error, start a new runner at the
    /// first window not handed out.
    pub async fn next_window(&mut self) -> Result<Option<WindowFile>, ExtractError> {
        loop {
            self.top_up().await?;
            let Some(head) = self.jobs.front() else {
                return match self.stop.take() {
                    Some(stop) => Err(ExtractError::Checkpoint {
                        window: stop.window,
                        resume_at: stop.resume_at,
                        reason: stop.reason,
                    }),
                    None => Ok(None),
                };
            };
            if head.queued && !head.fresh {
                let (window, id) = (head.window.clone(), head.export_id.clone());
                self.stats.status_polls += 1;
                let job = self.client.export_status(self.kind(), &id).await;
                let job = job.map_err(|e| self.fail(&window, "status", e))?;
                tracing::debug!(window = window.index, export_id = %id, status = %job.status, "bulk export status");
                match job.status.as_str() {
                    "Completed" => {
                        let file = self.fetch(&window, &job).await?;
                        self.jobs.pop_front();
                        self.interval = self.base_interval();
                        self.stats.windows += 1;
                        self.stats.bytes += file.bytes;
                        tracing::info!(
                            window = window.index,
                            export_id = %id,
                            bytes = file.bytes,
                            records = file.number_of_records,
                            "bulk export window ready"
                        );
                        return Ok(Some(file));
                    }
                    "Failed" => {
                        self.jobs.pop_front(); // ended: nothing to cancel
                        self.abandon().await;
                        return Err(ExtractError::JobFailed {
                            window,
                            export_id: id,
                            message: job.error_msg,
                        });
                    }
                    "Cancelled" | "Canceled" => {
                        self.jobs.pop_front();
                        self.abandon().await;
                        return Err(ExtractError::JobCancelled {
                            window,
                            export_id: id,
                        });
                    }
                    status => {
                        let head = self.jobs.front_mut().expect("the job just polled");
                        if head.status == status {
                            let longest = Duration::from_secs(self.settings.max_poll_interval_secs);
                            self.interval = (self.interval * 2).min(longest);
                        } else {
                            head.status = status.to_string();
                            self.interval = self.base_interval();
                        }
                    }
                }
            }
            self.wait().await?;
        }
    }

    /// Cancels the jobs made and not handed out (best effort), e.g. when the caller gives up.
    pub async fn cancel(&mut self) {
        self.abandon().await;
    }

    /// Queues the jobs a full queue refused, then makes and queues jobs up to
    /// `jobs_in_flight`; stops at the first refusal.
    async fn top_up(&mut self) -> Result<(), ExtractError> {
        for i in 0..self.jobs.len() {
            if !self.jobs[i].queued && !self.enqueue(i).await? {
                return Ok(());
            }
        }
        while self.stop.is_none()
            && self.jobs.len() < self.settings.jobs_in_flight
            && self.next_create < self.plan.windows.len()
        {
            let window = self.plan.windows[self.next_create].clone();
            let Some(export_id) = self.create(&window).await? else {
                return Ok(());
            };
            self.next_create += 1;
            self.jobs.push_back(Job {
                window,
                export_id,
                queued: false,
                status: "Created".into(),
                fresh: true,
            });
            if !self.enqueue(self.jobs.len() - 1).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Enqueues job `i`: `Ok(false)` when the queue is full or the export allowance spent.
    async fn enqueue(&mut self, i: usize) -> Result<bool, ExtractError> {
        let (window, id) = (self.jobs[i].window.clone(), self.jobs[i].export_id.clone());
        match self.client.export_enqueue(self.kind(), &id).await {
            Ok(job) => {
                self.stats.enqueued += 1;
                self.queue_waited = Duration::ZERO;
                let job_state = &mut self.jobs[i];
                job_state.queued = true;
                job_state.fresh = true;
                job_state.status = job.status;
                Ok(true)
            }
            Err(e) if queue_full(&e) => {
                self.stats.queue_full += 1;
                tracing::info!(window = window.index, export_id = %id, error = %e, "bulk export queue full; waiting");
                Ok(false)
            }
            Err(e) if export_allowance_spent(&e) => {
                // This job and the ones after it are not queued: drop them; the ones before
                // it run to the end and are handed out first.
                let dropped: Vec<Job> = self.jobs.drain(i..).collect();
                for job in dropped {
                    self.cancel_job(&job.export_id).await;
                }
                self.next_create = window.index;
                self.stop_at(window, &e);
                Ok(false)
            }
            Err(e) => Err(self.fail(&window, "enqueue", e)),
        }
    }

    /// Creates the job of `window`; `Ok(None)` when the export allowance is spent.
    async fn create(&mut self, window: &Window) -> Result<Option<String>, ExtractError> {
        let request = self.plan.request(window)?;
        if self.known.is_none() {
            let before = self.created_jobs(window).await?;
            self.known = Some(before.into_iter().collect());
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let made = self.client.export_create(self.kind(), &request).await;
            let e = match made {
                Ok(job) => {
                    self.remember(&job.export_id);
                    self.stats.created += 1;
                    return Ok(Some(job.export_id));
                }
                Err(e) if export_allowance_spent(&e) => {
                    self.stop_at(window.clone(), &e);
                    return Ok(None);
                }
                Err(e) if e.class() == ErrorClass::Retry => e,
                Err(e) => return Err(self.fail(window, "create", e)),
            };
            // The answer is lost, or the server failed: was a job made?
            tracing::warn!(window = window.index, error = %e, "bulk export create unanswered; looking for the job it may have made");
            let listed = self.created_jobs(window).await?;
            let known = self.known.as_ref().expect("listed before the first create");
            let new: Vec<String> = listed
                .into_iter()
                .filter(|id| !known.contains(id))
                .collect();
            match new.as_slice() {
                [id] => {
                    tracing::info!(window = window.index, export_id = %id, "bulk export job found after a lost create answer");
                    self.remember(id);
                    self.stats.created += 1;
                    self.stats.adopted += 1;
                    return Ok(Some(id.clone()));
                }
                [] if attempts < 3 => continue,
                [] => return Err(self.fail(window, "create", e)),
                _ => {
                    return Err(ExtractError::Ambiguous {
                        window: window.clone(),
                        export_ids: new,
                    });
                }
            }
        }
    }

    /// The ids of this API user's jobs in state Created.
    async fn created_jobs(&mut self, window: &Window) -> Result<Vec<String>, ExtractError> {
        self.stats.lists += 1;
        let listed = self.client.export_list(self.kind(), &["Created"]).await;
        let listed = listed.map_err(|e| self.fail(window, "list", e))?;
        Ok(listed
            .into_iter()
            .filter(|j| j.status == "Created")
            .map(|j| j.export_id)
            .collect())
    }

    fn remember(&mut self, id: &str) {
        self.known
            .get_or_insert_with(HashSet::new)
            .insert(id.to_string());
    }

    fn stop_at(&mut self, window: Window, e: &ConnectorError) {
        let resume_at = e.resume_at().unwrap_or_else(Timestamp::now);
        tracing::warn!(window = window.index, %resume_at, error = %e, "bulk export allowance spent; finishing the windows already queued");
        self.stop = Some(Stop {
            window,
            resume_at,
            reason: spent(e),
        });
    }

    /// A failed call: a spent daily quota becomes a checkpoint at the first window not handed
    /// out; anything else names the window it was for.
    fn fail(&self, window: &Window, what: &'static str, cause: ConnectorError) -> ExtractError {
        match cause.class() {
            ErrorClass::Checkpoint { resume_at } => ExtractError::Checkpoint {
                window: self.resume_window().unwrap_or_else(|| window.clone()),
                resume_at,
                reason: spent(&cause),
            },
            _ => ExtractError::Call {
                window: window.clone(),
                what,
                cause: Box::new(cause),
            },
        }
    }

    /// The first window not handed out.
    fn resume_window(&self) -> Option<Window> {
        match self.jobs.front() {
            Some(job) => Some(job.window.clone()),
            None => self.plan.windows.get(self.next_create).cloned(),
        }
    }

    async fn wait(&mut self) -> Result<(), ExtractError> {
        let interval = self.interval;
        self.pause.pause(interval).await;
        self.stats.waited += interval;
        for job in &mut self.jobs {
            job.fresh = false;
        }
        if let Some(waiting) = self.jobs.iter().find(|j| !j.queued) {
            self.queue_waited += interval;
            if self.queue_waited.as_secs() > self.settings.queue_wait_max_secs {
                let error = ExtractError::QueueFull {
                    window: waiting.window.clone(),
                    waited_secs: self.queue_waited.as_secs(),
                };
                self.abandon().await;
                return Err(error);
            }
        }
        Ok(())
    }

    /// Downloads and checks the file of a Completed job, a few times if need be.
    async fn fetch(
        &mut self,
        window: &Window,
        job: &ExportJob,
    ) -> Result<WindowFile, ExtractError> {
        let path = self.dir.join(format!(
            "marketo-{}-{:04}-{}.csv",
            self.kind().segment(),
            window.index,
            job.export_id
        ));
        let expected = (job.file_checksum.as_deref())
            .map(|c| c.strip_prefix("sha256:").unwrap_or(c).to_ascii_lowercase());
        if expected.is_none() {
            tracing::warn!(window = window.index, export_id = %job.export_id, "export job gave no fileChecksum; the file is checked by its size and record count only");
        }
        let attempts = self.settings.file_attempts;
        let mut last = None;
        for attempt in 1..=attempts {
            self.stats.downloads += 1;
            let got = self
                .client
                .export_download(self.kind(), &job.export_id, &path)
                .await;
            match got {
                Ok(got) => {
                    let mut wrong = Vec::new();
                    if let Some(size) = job.file_size.filter(|s| *s != got.bytes) {
                        wrong.push(format!("{} bytes where fileSize says {size}", got.bytes));
                    }
                    if let Some(sum) = expected.as_ref().filter(|s| **s != got.sha256) {
                        wrong.push(format!(
                            "sha256 {} where fileChecksum says {sum}",
                            got.sha256
                        ));
                    }
                    if wrong.is_empty() {
                        return Ok(WindowFile::new(
                            window.clone(),
                            job.export_id.clone(),
                            path,
                            got.bytes,
                            job.number_of_records,
                            self.kind(),
                            self.plan.fields(),
                        ));
                    }
                    tracing::warn!(window = window.index, export_id = %job.export_id, attempt, mismatch = %wrong.join("; "), "bulk export file does not match its job");
                    last = Some(ExtractError::Checksum {
                        window: window.clone(),
                        export_id: job.export_id.clone(),
                        attempts,
                        detail: wrong.join("; "),
                    });
                }
                Err(ConnectorError::Server { status: 404, .. }) => {
                    tracing::warn!(window = window.index, export_id = %job.export_id, attempt, "bulk export file not found though the job is Completed");
                    last = Some(ExtractError::FileUnavailable {
                        window: window.clone(),
                        export_id: job.export_id.clone(),
                        attempts,
                    });
                }
                Err(e) => {
                    remove(&path);
                    return Err(self.fail(window, "download", e));
                }
            }
            if attempt < attempts {
                let interval = self.base_interval();
                self.pause.pause(interval).await;
                self.stats.waited += interval;
            }
        }
        remove(&path);
        self.jobs.retain(|j| j.export_id != job.export_id); // Completed: nothing to cancel
        self.abandon().await;
        Err(last.expect("at least one attempt"))
    }

    /// Cancels every job made and not handed out (best effort: errors are logged).
    async fn abandon(&mut self) {
        let jobs: Vec<Job> = self.jobs.drain(..).collect();
        for job in jobs {
            self.cancel_job(&job.export_id).await;
        }
    }

    async fn cancel_job(&mut self, id: &str) {
        self.stats.cancels += 1;
        if let Err(e) = self.client.export_cancel(self.kind(), id).await {
            tracing::warn!(export_id = %id, error = %e, "could not cancel a bulk export job");
        }
    }
}

/// 1029 "Too many jobs in queue": wait for room.
fn queue_full(e: &ConnectorError) -> bool {
    matches!(e, ConnectorError::RateLimited { code, .. } if code == "1029")
}

/// 1029 "Export daily quota exceeded" (other spent quotas stop at once, see `fail`).
fn export_allowance_spent(e: &ConnectorError) -> bool {
    matches!(e, ConnectorError::DailyLimit { code, .. } if code == "1029")
}

/// What was spent, in the vendor's words when it gave them.
fn spent(e: &ConnectorError) -> String {
    match e {
        ConnectorError::DailyLimit { code, message, .. } => format!("{code} {message}"),
        other => other.to_string(),
    }
}

fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_year_is_twelve_windows_of_31_days_and_a_short_one() {
        let w = windows(t("2025-11-01T00:00:00Z"), t("2026-11-01T00:00:00Z"));
        assert_eq!(w.len(), 12);
        assert_eq!(w[0].end, t("2025-12-02T00:00:00Z"));
        assert_eq!(w[11].start, t("2026-10-08T00:00:00Z"));
        assert_eq!(w[11].end, t("2026-11-01T00:00:00Z"));
        assert_eq!(
            w[0].to_string(),
            "window 0 (2025-11-01T00:00:00Z to 2025-12-02T00:00:00Z)"
        );
        assert!(windows(t("2026-01-01T00:00:00Z"), t("2026-01-01T00:00:00Z")).is_empty());
        // Milliseconds are not sent: the range widens to whole seconds.
        let w = windows(t("2026-01-01T00:00:00.5Z"), t("2026-01-02T00:00:00.5Z"));
        assert_eq!(
            (w[0].start, w[0].end),
            (t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:01Z"))
        );
    }

    proptest! {
        #[test]
        fn windows_cover_the_range_exactly_each_at_most_31_days(
            start in 1_500_000_000i64..1_900_000_000,
            length in 1i64..(3 * 366 * 86_400),
            days in 1u32..=31,
        ) {
            let (start, end) = (Timestamp::from_second(start).unwrap(), Timestamp::from_second(start + length).unwrap());
            let w = windows_of(start, end, days);
            prop_assert_eq!(w.first().unwrap().start, start);
            prop_assert_eq!(w.last().unwrap().end, end);
            for (i, pair) in w.windows(2).enumerate() {
                prop_assert_eq!(pair[0].end, pair[1].start, "window {} and the next meet", i);
            }
            for (i, window) in w.iter().enumerate() {
                prop_assert_eq!(window.index, i);
                prop_assert!(window.start < window.end);
                prop_assert!(window.end.duration_since(window.start) <= SignedDuration::from_hours(24 * i64::from(days)));
                prop_assert!(check_window(window.start, window.end).is_ok());
            }
        }
    }

    #[test]
    fn requests_carry_the_window_and_the_filter() {
        let plan = ExportPlan::activities(
            &[22],
            &[58],
            t("2026-10-01T00:00:00Z"),
            t("2026-10-05T00:00:00Z"),
        )
        .unwrap();
        let body = plan.request(&plan.windows()[0]).unwrap();
        assert_eq!(
            body["filter"],
            json!({"createdAt": {"startAt": "2026-10-01T00:00:00Z", "endAt": "2026-10-05T00:00:00Z"},
                   "activityTypeIds": [22], "primaryAttributeValueIds": [58]})
        );
        assert_eq!(body["fields"], json!(ACTIVITY_COLUMNS));
        let leads = ExportPlan::leads(
            &["id", "leadScore"],
            t("2026-10-01T00:00:00Z"),
            t("2026-10-05T00:00:00Z"),
        )
        .unwrap();
        let body = leads.request(&leads.windows()[0]).unwrap();
        assert_eq!(body["fields"], json!(["id", "leadScore", "createdAt"]));
        assert!(
            ExportPlan::activities(
                &[],
                &[58],
                t("2026-10-01T00:00:00Z"),
                t("2026-10-05T00:00:00Z")
            )
            .is_err()
        );
        assert!(
            ExportPlan::leads(&[], t("2026-10-01T00:00:00Z"), t("2026-10-05T00:00:00Z")).is_err()
        );
        let weekly = plan.with_window_days(1);
        assert_eq!(weekly.windows().len(), 4);
    }

    #[test]
    fn a_checkpoint_says_what_is_spent_what_is_done_and_when_to_go_on() {
        let window = windows(t("2026-01-01T00:00:00Z"), t("2026-06-01T00:00:00Z"))[4].clone();
        let cause = crate::connectors::marketo::classify_code(
            "1029",
            "Export daily quota 500MB exceeded",
            t("2026-05-01T12:00:00Z"),
        );
        let error = ExtractError::Checkpoint {
            window,
            resume_at: cause.resume_at().unwrap(),
            reason: spent(&cause),
        };
        assert_eq!(
            error.to_string(),
            "Marketo: a daily allowance is spent (1029 Export daily quota 500MB exceeded); \
             the windows before window 4 (2026-05-05T00:00:00Z to 2026-06-01T00:00:00Z) are \
             done: run again after 2026-05-02T05:00:00Z to go on from window 4 \
             (2026-05-05T00:00:00Z to 2026-06-01T00:00:00Z)"
        );
        assert_eq!(error.resume_at(), Some(t("2026-05-02T05:00:00Z")));
    }

    #[test]
    fn settings_outside_the_vendor_limits_are_refused() {
        let s = ExtractSettings {
            jobs_in_flight: 11,
            ..Default::default()
        };
        assert!(
            s.check()
                .unwrap_err()
                .to_string()
                .contains("jobs_in_flight")
        );
        assert!(ExtractSettings::default().check().is_ok());
    }
}
