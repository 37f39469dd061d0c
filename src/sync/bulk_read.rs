//! Reading the MAP by Marketo's bulk extract instead of its REST pages: a backfill's score
//! history over a long range (activity export, 31-day windows), and the current scores of a
//! large instance (lead export of every lead created since `sync.leads_since`).
//!
//! Both read each window's file from disk one record at a time and commit as they go, each
//! commit carrying a cursor that names the window (and, for activities, the instant reached),
//! so a killed read resumes at the window it was in: the windows before it are not exported
//! again. The next window's file downloads while one is replayed ([`Prefetch`]). The runner
//! ([`crate::connectors::marketo::extract`]) keeps Marketo's queue, polling and daily-quota
//! rules; its files go to a directory beside the store.
//!
//! # Time order
//! The engine decides score changes in time order, merged with the threshold versions. An
//! activity file is read twice: once to check that its rows are in time order (Marketo's files
//! are, in practice), then streamed. A file out of order is sorted in memory by (instant,
//! change key), the order the engine itself gives equal instants, so memory then holds one
//! window's changes, never the whole history. The stream is parsed on a thread of its own
//! ([`Parsing`]), a few chunks ahead of the replay.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;
use tracing_indicatif::span_ext::IndicatifSpanExt;

use crate::connectors::marketo::export_file::WindowFile;
use crate::connectors::marketo::extract::{BulkExtract, ExportPlan, ExtractError, PauseBy};
use crate::connectors::{Crm, Map};
use crate::engine::model::{Event, ScoreChange};
use crate::engine::score::change_key;

use super::current;
use super::once::{ActivityRead, Intake, Run, SyncError};
use super::records::{self, RecordError, ScoreFields};

/// Score changes committed at a time from an export file. A commit writes every page it
/// dirtied to the log, and many pages (the history's and the audit's last ones, the
/// indexes of the audit, the outbox and the cycles, the people a knob turn re-decided) come
/// back commit after commit: 100,000 changes (about 10 MB held) log a fourth of the bytes a
/// change that 20,000 did (measured over 1,000,000 leads: 61 MB a commit against 45 MB a
/// commit of 20,000), and a killed backfill replays at most that many again.
const CHANGES_A_COMMIT: usize = 100_000;
/// Lead rows committed at a time from an export file (as many as score changes, for the
/// same reason).
const LEADS_A_COMMIT: usize = 20_000;

/// What a runner's next window came to (its file, and whether its rows are in time order),
/// with the runner.
type Fetched = (
    BulkExtract<PauseBy>,
    Result<Option<(WindowFile, bool)>, ExtractError>,
);

/// A runner getting its next window in a task of its own, so that the vendor's export, the
/// download of window n+1 and the pass over its file that checks its order go on while
/// window n is replayed (the replay holds a core; the download waits on the network, and
/// the check reads the file on another). Dropped before it is taken (the replay failed), it
/// stops the task; the jobs it queued are Marketo's to expire, as after a killed run.
struct Prefetch(AbortOnDropHandle<Fetched>);

impl Prefetch {
    fn start(mut run: BulkExtract<PauseBy>) -> Prefetch {
        let task = async move {
            let next = match run.next_window().await {
                Ok(Some(file)) => tokio::task::spawn_blocking(move || {
                    in_time_order(&file).map(|ordered| Some((file, ordered)))
                })
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            (run, next)
        };
        let task = task.instrument(tracing::Span::current());
        Prefetch(AbortOnDropHandle::new(tokio::spawn(task)))
    }

    async fn take(self) -> Fetched {
        self.0
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// Score changes parsed at a time by [`Parsing`] and handed over.
const PARSED_A_CHUNK: usize = 10_000;
/// Parsed chunks that may wait for the replay (about 1 MB each).
const PARSED_CHUNKS_WAITING: usize = 4;

/// What the parse of a window's file handed over: activities read, the score changes among
/// them, the rows that could not be read as one, and the error that ended the file early.
#[derive(Default)]
struct ParsedChunk {
    read: usize,
    changes: Vec<ScoreChange>,
    unreadable: Vec<RecordError>,
    error: Option<ExtractError>,
}

/// A window's file parsed into score changes on a thread of its own, a chunk at a time,
/// while the replay decides and commits the chunks before: the parse (CSV, attributes,
/// instants) was an eighth of the replay's one busy core, and the machine has another.
/// At most [`PARSED_CHUNKS_WAITING`] chunks wait, so memory holds tens of thousands of
/// changes, not the window. Dropped early (the replay failed), the thread stops at its next
/// chunk.
struct Parsing {
    chunks: tokio::sync::mpsc::Receiver<ParsedChunk>,
    task: AbortOnDropHandle<()>,
    /// The file is read and the task joined.
    ended: bool,
}

impl Parsing {
    /// Parses `file`'s activities, leaving out those before `after` (a resumed window).
    fn start(file: Arc<WindowFile>, fields: ScoreFields, after: Option<Timestamp>) -> Parsing {
        let (send, chunks) = tokio::sync::mpsc::channel(PARSED_CHUNKS_WAITING);
        let task = tokio::task::spawn_blocking(move || {
            let mut chunk = ParsedChunk::default();
            let rows = match file.activities() {
                Ok(rows) => rows,
                Err(e) => {
                    chunk.error = Some(e);
                    let _ = send.blocking_send(chunk);
                    return;
                }
            };
            for activity in rows {
                let activity = match activity {
                    Ok(a) => a,
                    Err(e) => {
                        chunk.error = Some(e);
                        break;
                    }
                };
                chunk.read += 1;
                if after.is_some_and(|t| activity.activity_date < t) {
                    continue;
                }
                match records::score_change_of(&fields, &activity) {
                    Ok(Some(change)) => chunk.changes.push(change),
                    Ok(None) => {}
                    Err(e) => chunk.unreadable.push(e),
                }
                if chunk.changes.len() >= PARSED_A_CHUNK
                    && send.blocking_send(std::mem::take(&mut chunk)).is_err()
                {
                    return;
                }
            }
            let _ = send.blocking_send(chunk);
        });
        Parsing {
            chunks,
            task: AbortOnDropHandle::new(task),
            ended: false,
        }
    }

    /// The next chunk, in file order; `None` once the file is read. A panic of the parse is
    /// raised here, not taken for the file's end.
    async fn next(&mut self) -> Option<ParsedChunk> {
        if self.ended {
            return None;
        }
        let chunk = self.chunks.recv().await;
        if chunk.is_none() {
            self.ended = true;
            if let Err(e) = (&mut self.task).await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        chunk
    }
}

/// Where a bulk activity read stands: the first window not finished, and within it the
/// instant reached (changes before it are committed; those at it are read again, which the
/// engine takes as replays).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BulkCursor {
    pub window: usize,
    #[serde(default)]
    pub after: Option<Timestamp>,
}

/// Whether an activity read over `[start, until)` goes through the bulk extract: a range of
/// more than `above_days` days.
pub fn activities_in_bulk(start: Timestamp, until: Timestamp, above_days: u32) -> bool {
    let days = until.duration_since(start).as_hours() as f64 / 24.0;
    days > f64::from(above_days)
}

impl<C: Crm, M: Map> Run<'_, C, M> {
    /// The runner of `plan`, its files in the export directory beside the store.
    fn extract(&self, plan: ExportPlan) -> Result<BulkExtract<PauseBy>, SyncError> {
        let dir = self.export_dir()?;
        let bulk = &self.settings.bulk_reads;
        Ok(self
            .map
            .bulk_extract(plan, bulk.extract.clone(), &dir, bulk.pause.clone())?)
    }

    /// `<store>.exports/`, made when missing.
    fn export_dir(&self) -> Result<PathBuf, SyncError> {
        let dir = PathBuf::from(format!("{}.exports", self.store.path()));
        std::fs::create_dir_all(&dir).map_err(|error| ExtractError::Io {
            what: "make the directory of",
            path: dir.clone(),
            error,
        })?;
        Ok(dir)
    }

    /// The Change Score history of `[read.start, read.until)` by bulk activity extract, in
    /// windows of at most 31 days, committed through the same intake as the activities API
    /// (links looked up, threshold versions in `also` merged in time order).
    pub(super) async fn read_activities_in_bulk(
        &mut self,
        read: ActivityRead,
        also: &mut VecDeque<Event>,
    ) -> Result<(), SyncError> {
        let fields = self.score_fields().await?;
        let until = read.until.unwrap_or(self.now);
        let name = format!("{}.bulk", read.cursor);
        let cursor: BulkCursor = self.cursor(&name)?;
        let type_id = u32::try_from(self.mapping.map.score_activity_type).unwrap_or(22);
        let plan = ExportPlan::activities(&[type_id], &fields.ids(), read.start, until)?;
        let windows = plan.windows().len();
        // Progress in hours of history: the ETA of a replay whose record count is unknown.
        let span = tracing::Span::current();
        let hours = |at: Timestamp| at.duration_since(read.start).as_hours().max(0) as u64;
        span.pb_set_style(&crate::logging::bar_with_eta("hours of history"));
        span.pb_set_length(hours(until));
        self.progress_by_time = true;
        let mut fetching = Prefetch::start(self.extract(plan)?.starting_at(cursor.window));
        let mut intake = Intake::new(&name);
        let run = loop {
            let (run, next) = fetching.take().await;
            let Some((file, in_order)) = next? else {
                break run;
            };
            // The next window's file downloads while this one is replayed.
            fetching = Prefetch::start(run);
            let index = file.window.index;
            let after = if cursor.window == index {
                cursor.after
            } else {
                None
            };
            intake.pages += 1;
            let file = Arc::new(file);
            let mut parsed = Parsing::start(file.clone(), fields.clone(), after);
            let mut changes = Vec::new();
            while let Some(chunk) = parsed.next().await {
                intake.read += chunk.read;
                for e in chunk.unreadable {
                    self.unreadable(e);
                }
                for change in chunk.changes {
                    changes.push(change);
                    if in_order && changes.len() >= CHANGES_A_COMMIT {
                        let page = std::mem::take(&mut changes);
                        self.take_window_page(&mut intake, page, index, also)
                            .await?;
                    }
                }
                if let Some(e) = chunk.error {
                    return Err(e.into());
                }
            }
            if !in_order {
                tracing::info!(
                    window = index,
                    changes = changes.len(),
                    "export file out of time order: sorting the window"
                );
                changes.sort_by_key(|c| (c.at, change_key(&c.change_id)));
                let mut rest = changes.as_slice();
                while rest.len() > CHANGES_A_COMMIT {
                    let (page, later) = rest.split_at(CHANGES_A_COMMIT);
                    self.take_window_page(&mut intake, page.to_vec(), index, also)
                        .await?;
                    rest = later;
                }
                changes = rest.to_vec();
            }
            // The window's last page moves the cursor to the next window.
            let next = BulkCursor {
                window: index + 1,
                after: None,
            };
            let text = serde_json::to_string(&next).expect("cursors serialise");
            self.take_changes(&mut intake, changes, text, also).await?;
            // Each window commits whole before the next is read: a killed backfill does not
            // export it again (at the cost of a look-up of fewer than 300 ids a window).
            self.flush_intake(&mut intake, also).await?;
            span.pb_set_position(hours(file.window.end));
            tracing::info!(window = index, windows, "score history window replayed");
        };
        self.progress_by_time = false;
        self.count_extract(&run, windows);
        self.finish_intake(intake, also).await
    }

    /// The activities of `[start, until)` that a hand-raiser rule names, by a bulk activity
    /// export of the rules' types alone, in the same windows as the score history's (none
    /// asked for without rules), in the files' order: the caller's stable sort of its time
    /// line puts them in time order, those of one instant as the files (and the activities
    /// API's pages) give them. A backfill merges them into its time line as it does the
    /// threshold versions: the Change Score export cannot carry them, as its
    /// `primaryAttributeValueIds` filter (the score fields) takes types of one asset group
    /// only. Read whole before the replay, and again by a resumed backfill (a hand-raise
    /// older than its lead's latest applied one is a replay): the rules' activities are a
    /// small part of an instance's. Activities no rule names are dropped as they are read.
    pub(super) async fn hand_raises_in_bulk(
        &mut self,
        start: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<Event>, SyncError> {
        let types = self.policy.hand_raiser_type_ids();
        if types.is_empty() {
            return Ok(Vec::new());
        }
        let plan = ExportPlan::activities(&types, &[], start, until)?;
        let windows = plan.windows().len();
        let mut run = self.extract(plan)?;
        let (mut read, mut raised) = (0usize, Vec::new());
        while let Some(file) = run.next_window().await? {
            for activity in file.activities()? {
                let activity = records::map_activity_of(&activity?);
                read += 1;
                if self.policy.hand_raiser_naming(&activity).is_some() {
                    raised.push(activity);
                }
            }
        }
        self.count_extract(&run, windows);
        tracing::info!(
            activities = read,
            named = raised.len(),
            windows,
            "hand-raiser activities read by bulk extract"
        );
        Ok(raised.into_iter().map(Event::Activity).collect())
    }

    /// A full page of window `index`: its cursor is the instant of its last change.
    async fn take_window_page(
        &mut self,
        intake: &mut Intake,
        page: Vec<ScoreChange>,
        index: usize,
        also: &mut VecDeque<Event>,
    ) -> Result<(), SyncError> {
        let cursor = BulkCursor {
            window: index,
            after: page.last().map(|c| c.at),
        };
        if let Some(at) = cursor.after {
            let start = self.settings.backfill.as_ref().map(|b| b.since);
            if let Some(start) = start {
                let hours = at.duration_since(start).as_hours().max(0) as u64;
                tracing::Span::current().pb_set_position(hours);
            }
        }
        let text = serde_json::to_string(&cursor).expect("cursors serialise");
        self.take_changes(intake, page, text, also).await
    }

    /// Every MAP lead created since `since` and linked to a CRM person the engine knows (its
    /// link, and with [`current::Take::LinksAndScores`] its current score), by bulk lead
    /// extract, each window committed as it is read under `cursor_name`.
    pub(super) async fn linked_leads_in_bulk(
        &mut self,
        mut progress: current::Progress,
        since: Timestamp,
        cursor_name: &str,
        take: current::Take,
    ) -> Result<(), SyncError> {
        let m = self.mapping;
        let source = &self.policy.score;
        let fields = current::lead_fields(m, source, take);
        let asked: Vec<&str> = fields.iter().map(String::as_str).collect();
        let plan = ExportPlan::leads(&asked, since, self.now)?;
        let windows = plan.windows().len();
        let span = tracing::Span::current();
        span.pb_set_style(&crate::logging::bar_with_eta("windows"));
        span.pb_set_length(windows as u64);
        self.progress_by_time = true;
        let start = progress.bulk_window.unwrap_or(0);
        span.pb_set_position(start as u64);
        let mut run = self.extract(plan)?.starting_at(start);
        let (mut read, mut linked) = (0usize, 0usize);
        while let Some(file) = run.next_window().await? {
            let index = file.window.index;
            let mut rows = Vec::new();
            for lead in file.leads()? {
                read += 1;
                let row = current::export_row(lead?);
                if current::linked_to_known(m, self.state, &row) {
                    rows.push(row);
                }
                if rows.len() >= LEADS_A_COMMIT {
                    linked += rows.len();
                    let rows = std::mem::take(&mut rows);
                    self.commit_lead_rows(&rows, (cursor_name, &progress), take, &file)?;
                }
            }
            linked += rows.len();
            progress.bulk_window = Some(index + 1);
            self.commit_lead_rows(&rows, (cursor_name, &progress), take, &file)?;
            span.pb_set_position((index + 1) as u64);
        }
        self.progress_by_time = false;
        progress = current::Progress {
            read_at: Some(self.now),
            ..current::Progress::default()
        };
        let cursor = serde_json::to_string(&progress).expect("cursors serialise");
        self.commit(Vec::new(), (cursor_name.to_string(), cursor))?;
        self.count_extract(&run, windows);
        *self.summary.read.entry(take.what().into()).or_default() += linked;
        tracing::info!(
            leads = read,
            linked,
            windows,
            "{} read by bulk lead extract",
            take.what()
        );
        self.log_phase_done(linked, windows as u64);
        Ok(())
    }

    /// One batch of lead rows of `file` as events, committed with `progress` as the cursor
    /// named.
    fn commit_lead_rows(
        &mut self,
        rows: &[Value],
        (cursor_name, progress): (&str, &current::Progress),
        take: current::Take,
        file: &WindowFile,
    ) -> Result<(), SyncError> {
        let mut unreadable = Vec::new();
        let events = current::events(
            self.mapping,
            &self.policy.score,
            self.state,
            rows,
            self.now,
            take,
            &mut unreadable,
        )
        .map_err(|e| SyncError::Unkeyed {
            call: format!(
                "bulk lead export {} ({})",
                file.export_id,
                file.path.display()
            ),
            detail: format!("a lead row without `id` ({})", e.message),
        })?;
        for e in unreadable {
            self.unreadable(e);
        }
        let cursor = serde_json::to_string(progress).expect("cursors serialise");
        self.commit(events, (cursor_name.to_string(), cursor.clone()))?;
        self.log_page(take.what(), rows.len(), &cursor);
        Ok(())
    }

    /// Counts an extract's calls against the fewest: per window a create, an enqueue, one
    /// status and one download; one list of Created jobs before the first create.
    fn count_extract(&mut self, run: &BulkExtract<PauseBy>, windows: usize) {
        let stats = run.stats();
        self.mkto_min += 4 * stats.windows as u64 + u64::from(stats.windows > 0);
        tracing::info!(
            windows = stats.windows,
            of = windows,
            created = stats.created,
            status_polls = stats.status_polls,
            bytes = stats.bytes,
            waited_secs = stats.waited.as_secs(),
            "bulk extract done"
        );
    }
}

/// Whether an activity file's rows are in time order (one pass over the file on disk).
fn in_time_order(file: &WindowFile) -> Result<bool, ExtractError> {
    let mut last: Option<Timestamp> = None;
    let mut rows = file.activities()?;
    while let Some(at) = rows.next_date() {
        let at = at?;
        if last.is_some_and(|l| at < l) {
            return Ok(false);
        }
        last = Some(at);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_longer_than_the_setting_goes_to_the_bulk_extract() {
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let day = jiff::SignedDuration::from_hours(24);
        assert!(!activities_in_bulk(start, start + day * 31, 31));
        assert!(activities_in_bulk(start, start + day * 32, 31));
        assert!(!activities_in_bulk(start, start + day * 365, 400));
    }

    #[test]
    fn a_cursor_without_an_instant_reads_the_window_whole() {
        let c: BulkCursor = serde_json::from_str(r#"{"window":3}"#).unwrap();
        assert_eq!(
            c,
            BulkCursor {
                window: 3,
                after: None
            }
        );
    }
}
