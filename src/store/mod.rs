//! The SQLite checkpoint store: what mqlsync has seen (cursors, threshold versions, lead and
//! contact snapshots, scores and score history, opportunities), what it decided (cycles, the
//! audit log) and what it still has to write (the outbox).
//!
//! A batch of events, its decisions, its outbox rows and the cursors that produced them
//! commit in one transaction ([`Store::commit_batch`]): after a crash the store holds either
//! all of a batch or none of it, and the poller re-reads from the saved cursor. rusqlite is
//! synchronous; async callers give the store its own thread or use `spawn_blocking`.
//!
//! MAP-lead scores are saved as a snapshot (`map_leads`) plus the score history after it:
//! a batch appends its score changes, and only every [`SCORE_SNAPSHOT_ROWS`] history rows
//! (or on [`Store::save_scores`]) are the changed leads' rows rewritten. Loading replays
//! the rest in arrival order ([`Store::load_engine`]). A daemon should call `save_scores`
//! when it stops, so that its next start replays nothing.
//!
//! One writer per store file: [`Store::open`] (the writers: a run, `simulate`, `requeue`)
//! takes the writer lock on the file's real path before it creates or migrates anything, and
//! writers hold it for their work ([`Store::lock_writer`]); [`Store::open_existing`] (the
//! readers: `status`, `explain`) needs no lock and writes nothing. Opening says what the user
//! can fix when the file cannot be used (`open.rs`).

pub mod blocks;
mod checkpoint;
pub use checkpoint::{CHECKPOINT_EVERY, Checkpointed, Checkpointer};
mod facts;
mod open;
mod schema;

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

use crate::engine::model::{
    AccountFacts, Action, Campaign, CrmKind, CrmRef, Cycle, Decision, Event, Opportunity, Reason,
    ScorePart, Threshold,
};
use crate::engine::policy::{Policy, ScoreSource};
use crate::engine::score::{PartVersion, Scores};
use crate::engine::state::{
    AccountScore, EngineMeta, EngineState, HandRaiseSeen, MapLeadState, PersonState,
};

pub use open::{ReadOnlyPlace, WriterLock};
pub use schema::{APPLICATION_ID, MIGRATIONS};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Why the store cannot be used, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{path} is not an mqlsync store ({detail}); point `store` at a new file or at an mqlsync store"
    )]
    NotAStore { path: String, detail: String },
    #[error(
        "{path} was written by a newer mqlsync (schema {found}, this build knows up to {supported}); upgrade mqlsync, or restore a backup of the store"
    )]
    NewerSchema {
        path: String,
        found: i64,
        supported: i64,
    },
    /// Never "start a new store": against an org already synced, a new store numbers MQL
    /// cycles from 1 again, and its writes would overwrite the MQL records in the CRM.
    #[error(
        "store {path} is damaged (SQLite integrity check: {detail}); mqlsync will not use it: move it and any {path}-wal and {path}-shm aside, then copy your last backup of the store to {path}"
    )]
    Corrupt { path: String, detail: String },
    #[error("store {path}: {error}")]
    Sqlite {
        path: String,
        /// Not a `source`: its text is already in this message.
        error: rusqlite::Error,
    },
    #[error(
        "store {path}: a saved record cannot be read ({detail}); the store may have been edited by hand"
    )]
    Decode { path: String, detail: String },
    #[error(
        "store {path} is being written by another mqlsync process{} (it holds {lock}); wait for that run to end, or stop it",
        holder.map_or_else(String::new, |pid| format!(" (pid {pid})"))
    )]
    Busy {
        path: String,
        lock: String,
        /// The process id the holder wrote into the lock file, when it could be read.
        holder: Option<u32>,
    },
    #[error(
        "permission denied: cannot create the store at {path} ({detail}); make the directory writable or set `store` / MQLSYNC_STORE"
    )]
    PermissionDenied { path: String, detail: String },
    #[error("the store at {path} is {place}")]
    ReadOnly { path: String, place: ReadOnlyPlace },
}

/// Attempts after which a write the CRM keeps refusing for now (a locked row) is failed.
pub const OUTBOX_MAX_ATTEMPTS: i64 = 5;

/// How the write of an outbox row ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Settlement {
    /// Written, or found written (or no longer needed).
    Done,
    /// Written as this payload, which the row keeps as what the CRM record now holds: the
    /// writer completed the row's value (an MQL record's first write carries the SLA that
    /// starts with it).
    DoneAs(String),
    /// Refused for good (a validation rule, a bad value), or not sent by mqlsync: kept as
    /// failed with the error until `mqlsync requeue`.
    Failed(String),
    /// Refused for now (a locked row): stays pending for the next run, and is failed after
    /// [`OUTBOX_MAX_ATTEMPTS`] attempts.
    Retry(String),
}

/// One remote write waiting in the outbox.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutboxRow {
    /// `MQL:{external id}`, `Lead:{id}`, `Contact:{id}` or `Notify:{external id}:{owner}:{instant}`.
    pub key: String,
    /// `cycle`, `stamps` or `notify`.
    pub kind: String,
    /// The engine's value to write (a cycle, stamps, a notification), as JSON.
    pub payload: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

impl OutboxRow {
    /// A row of `SELECT key, kind, payload, attempts, last_error FROM outbox`.
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
        Ok(OutboxRow {
            key: r.get(0)?,
            kind: r.get(1)?,
            payload: r.get(2)?,
            attempts: r.get(3)?,
            last_error: r.get(4)?,
        })
    }
}

/// One row of the CRM's field history of a threshold record.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThresholdFieldChange {
    /// The history row's own id.
    pub id: String,
    pub threshold_id: String,
    pub field: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    pub changed_at: Timestamp,
    pub changed_by: Option<String>,
}

/// Counts for `mqlsync status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StoreSummary {
    pub schema_version: i64,
    pub cursors: Vec<SavedCursor>,
    pub cycles_by_status: Vec<(String, i64)>,
    pub outbox_pending: i64,
    pub outbox_failed: i64,
    /// The commonest errors of failed outbox rows (at most five), with how many rows have each.
    pub outbox_failures: Vec<(String, i64)>,
    /// The first [`SUMMARY_ROWS`] pending writes, oldest first: which records wait.
    pub pending_writes: Vec<OutboxEntry>,
    /// The first [`SUMMARY_ROWS`] failed writes, oldest first, with their errors.
    pub failed_writes: Vec<OutboxEntry>,
    pub persons: i64,
    pub map_leads: i64,
    pub thresholds: i64,
    pub threshold_versions: i64,
    pub threshold_field_changes: i64,
    pub score_changes: i64,
    pub audit_entries: i64,
}

/// Pending and failed writes [`Store::summary`] lists, of each (the counts say how many more).
pub const SUMMARY_ROWS: usize = 20;

/// A cursor as saved. In JSON its value is the cursor itself when it is a JSON object or list
/// (a paging token with the ids it saw), not a string of JSON; any other value stays the text
/// it was saved as (`"20"`, an instant), so that a value never changes type with its content.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SavedCursor {
    pub name: String,
    pub value: String,
    pub saved_at: String,
}

impl Serialize for SavedCursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let structured = serde_json::from_str::<serde_json::Value>(&self.value)
            .ok()
            .filter(|v| v.is_object() || v.is_array());
        let mut out = s.serialize_struct("SavedCursor", 3)?;
        out.serialize_field("name", &self.name)?;
        match structured {
            Some(v) => out.serialize_field("value", &v)?,
            None => out.serialize_field("value", &self.value)?,
        }
        out.serialize_field("saved_at", &self.saved_at)?;
        out.end()
    }
}

/// One outbox row as `status` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutboxEntry {
    /// The record it writes (see [`OutboxRow::key`]).
    pub key: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// What one batch commits.
pub struct Batch<'a> {
    /// The events of the batch (score changes go to the history, thresholds to the versions).
    pub events: &'a [Event],
    pub decisions: &'a [Decision],
    /// Cursor name -> value, saved only if the whole batch commits.
    pub cursors: &'a [(String, String)],
    /// When mqlsync saw the batch (the audit log's clock).
    pub seen_at: Timestamp,
}

/// A pending write of one remote record: the latest desired state wins, and a row already
/// written stays done while its payload is the one written.
const OUTBOX_UPSERT: &str =
    "INSERT INTO outbox (key, kind, payload, state, attempts, created_at, updated_at)
     VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?4)
     ON CONFLICT (key) DO UPDATE SET payload = excluded.payload, state = 'pending',
         attempts = 0, last_error = NULL, updated_at = excluded.updated_at
     WHERE outbox.payload <> excluded.payload OR outbox.state <> 'done'";

/// A cursor saved: `(name, value, updated_at)`.
const CURSOR_UPSERT: &str = "INSERT INTO cursors (name, value, updated_at) VALUES (?1, ?2, ?3)
     ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at";

/// The engine's meta (its clock, round-robin positions, go-live) as saved.
const ENGINE_META: &str = "SELECT value FROM engine_meta WHERE key = 'engine'";

/// Score-history rows after which a batch also saves a snapshot of the MAP-lead scores:
/// loading a store replays at most this many rows (about half a second per 500,000), and a
/// batch rewrites a lead's row once per snapshot instead of once per batch.
pub const SCORE_SNAPSHOT_ROWS: i64 = 500_000;
/// The writer's log pages between checkpoints (see [`Store::open`]), and while replaying
/// history (see [`Store::replaying`]).
const CHECKPOINT_PAGES: i64 = 8_192;
const REPLAY_CHECKPOINT_PAGES: i64 = 65_536;
/// The size a write-ahead log file is cut back to when it starts again.
const JOURNAL_SIZE_LIMIT: i64 = 128 << 20;
/// The bytes of the store a replaying writer maps (SQLite's own ceiling is 2 GiB).
const REPLAY_MMAP_BYTES: i64 = 1 << 31;
/// The page cache's limit in KiB (see [`Store::open`]), and while replaying history.
const CACHE_KIB: i64 = 65_536;
const REPLAY_CACHE_KIB: i64 = 524_288;

/// An open store.
pub struct Store {
    conn: Connection,
    /// The path as the user named it, for messages.
    path: String,
    /// The writer lock's file ([`Store::lock_writer`]); `None` in memory.
    lock: Option<PathBuf>,
    score_snapshot_rows: i64,
    /// Changes a block of the packed score history holds ([`blocks::BLOCK_CHANGES`]).
    history_block_changes: usize,
    /// While a long replay runs ([`Store::replaying`]): its checkpoints in a thread of
    /// their own.
    replay_checkpoints: Option<checkpoint::Beside>,
}

/// What the checks on opening found.
struct Opened {
    version: i64,
    tables: i64,
}

fn ts(t: Timestamp) -> String {
    t.to_string()
}

fn opt_ts(t: Option<Timestamp>) -> Option<String> {
    t.map(ts)
}

/// An instant as integer nanoseconds since 1970 (saturating outside 1677..2262).
fn ns(t: Timestamp) -> i64 {
    i64::try_from(t.as_nanosecond()).unwrap_or(if t.as_second() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn from_ns(v: Option<i64>, what: &str) -> Result<Option<Timestamp>, LoadError> {
    v.map(|n| {
        Timestamp::from_nanosecond(i128::from(n))
            .map_err(|e| LoadError::Decode(format!("{what}: {e}")))
    })
    .transpose()
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("engine values serialise")
}

/// How much of a store a reader maps: the most SQLite allows as built here
/// (`SQLITE_MAX_MMAP_SIZE`, 0x7fff0000 on 64-bit Linux); a larger setting is cut to it. An
/// address range, not memory: the pages read are the system's file cache, given back under
/// pressure. The score history's blocks are written at the end of the file, past the
/// gigabyte mapped before (the benchmark's store is 1.9 GB).
const READER_MMAP_BYTES: i64 = 0x7fff_0000;

impl Store {
    /// Opens (creating if missing) the store at `path` to write it: checks it and runs the
    /// migrations it lacks, holding the writer lock meanwhile, so that two first runs on a
    /// fresh store do not both create its tables (the second is refused with
    /// [`StoreError::Busy`]). The lock is released on return: a writer takes it again for its
    /// work with [`Store::lock_writer`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open::io_failure(&shown, path, &e, "create its folder"))?;
        }
        let real = open::real_path(path)
            .map_err(|e| open::io_failure(&shown, path, &e, "find its folder"))?;
        let lock = open::lock_path(&real);
        let _writer = WriterLock::acquire(&lock, &shown, &real)?;
        let conn = Connection::open(&real).map_err(|e| {
            open::sqlite_failure(&shown, &real, &e).unwrap_or(StoreError::Sqlite {
                path: shown.clone(),
                error: e,
            })
        })?;
        // SQLite opens a file it may not write read-only, without a word.
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Err(
                open::access_problem(&shown, &real).unwrap_or(StoreError::ReadOnly {
                    path: shown,
                    place: ReadOnlyPlace::File,
                }),
            );
        }
        let opened = Self::check(&conn, &shown, &real, true)?;
        Self::ready(conn, shown, Some(lock), opened)
    }

    /// Opens an existing store to read it (`status`, `explain`): never creates, migrates or
    /// writes it, and needs no lock, so it works while a run writes the store. A store of an
    /// older schema is migrated first, as [`Store::open`] does.
    pub fn open_existing(path: &Path) -> Result<Store, StoreError> {
        Self::open_reading(path, true)
    }

    /// [`Store::open_existing`] for a command that reads much of a large store (`report`,
    /// `whatif`, the daemon's `/report`): no `quick_check` (it reads every page, seconds on a
    /// store of millions of cycles; a damaged page still fails the query that reaches it),
    /// and the file memory-mapped for reading instead of copied page by page (its first
    /// [`READER_MMAP_BYTES`]; the pages past them are copied).
    pub fn open_reader(path: &Path) -> Result<Store, StoreError> {
        let store = Self::open_reading(path, false)?;
        store
            .conn
            .pragma_update(None, "mmap_size", READER_MMAP_BYTES)
            .map_err(|e| store.sql_err(e))?;
        Ok(store)
    }

    fn open_reading(path: &Path, quick_check: bool) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        let real =
            open::real_path(path).map_err(|e| open::io_failure(&shown, path, &e, "find it"))?;
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&real, flags).map_err(|e| {
            open::sqlite_failure(&shown, &real, &e).unwrap_or(StoreError::Sqlite {
                path: shown.clone(),
                error: e,
            })
        })?;
        let opened = Self::check(&conn, &shown, &real, quick_check)?;
        if opened.version < SCHEMA_VERSION {
            drop(conn);
            return Store::open(path);
        }
        let sql = |error| StoreError::Sqlite {
            path: shown.clone(),
            error,
        };
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(sql)?;
        Ok(Store {
            conn,
            lock: Some(open::lock_path(&real)),
            path: shown,
            score_snapshot_rows: SCORE_SNAPSHOT_ROWS,
            history_block_changes: blocks::BLOCK_CHANGES,
            replay_checkpoints: None,
        })
    }

    /// Copies the store at `source` into a new file `dest` (SQLite's `VACUUM INTO`: a
    /// consistent snapshot, even while a run writes the source), for a dry run to work on.
    /// The source is opened read-only and left as it is.
    pub fn copy_to(source: &Path, dest: &Path) -> Result<(), StoreError> {
        let shown = source.display().to_string();
        let err = |error| StoreError::Sqlite {
            path: shown.clone(),
            error,
        };
        let conn = Connection::open_with_flags(
            source,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.execute("VACUUM INTO ?1", [dest.to_string_lossy()])
            .map_err(err)?;
        Ok(())
    }

    /// A store in memory, for tests and `simulate` without `--store`.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let shown = ":memory:".to_string();
        let conn = Connection::open_in_memory().map_err(|error| StoreError::Sqlite {
            path: shown.clone(),
            error,
        })?;
        let opened = Self::check(&conn, &shown, Path::new(":memory:"), true)?;
        Self::ready(conn, shown, None, opened)
    }

    /// Where the store lives.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A store on disk, which another connection can open (not one in memory).
    pub fn is_file(&self) -> bool {
        self.lock.is_some()
    }

    /// Takes the store for writing (see [`WriterLock`]); a store in memory is this process's
    /// alone.
    pub fn lock_writer(&self) -> Result<WriterLock, StoreError> {
        match &self.lock {
            None => Ok(WriterLock::private()),
            Some(lock) => WriterLock::acquire(lock, &self.path, Path::new(&self.path)),
        }
    }

    /// Tells an mqlsync store from anything else, refuses a newer schema or (with
    /// `quick_check`) a damaged file.
    fn check(
        conn: &Connection,
        path: &str,
        real: &Path,
        quick_check: bool,
    ) -> Result<Opened, StoreError> {
        let sql = |error| StoreError::Sqlite {
            path: path.to_string(),
            error,
        };
        // The first read tells a SQLite file from anything else, and a file this user cannot
        // use from one that is not a store.
        let app_id: i32 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| {
                open::sqlite_failure(path, real, &e).unwrap_or(StoreError::NotAStore {
                    path: path.to_string(),
                    detail: e.to_string(),
                })
            })?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(sql)?;
        if app_id != APPLICATION_ID && !(app_id == 0 && tables == 0) {
            return Err(StoreError::NotAStore {
                path: path.to_string(),
                detail: format!(
                    "a SQLite database of another application (application_id {app_id}, {tables} schema objects)"
                ),
            });
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_string(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if !quick_check {
            return Ok(Opened { version, tables });
        }
        let damaged =
            |e: rusqlite::Error| open::sqlite_failure(path, real, &e).unwrap_or_else(|| sql(e));
        let mut stmt = conn.prepare("PRAGMA quick_check").map_err(damaged)?;
        let report: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(damaged)?
            .collect::<Result<_, _>>()
            .map_err(damaged)?;
        if report != ["ok"] {
            return Err(StoreError::Corrupt {
                path: path.to_string(),
                detail: open::integrity_summary(&report),
            });
        }
        Ok(Opened { version, tables })
    }

    /// Sets the connection up for writing and runs the migrations the store lacks.
    fn ready(
        conn: Connection,
        path: String,
        lock: Option<PathBuf>,
        opened: Opened,
    ) -> Result<Store, StoreError> {
        let sql = |error| StoreError::Sqlite {
            path: path.clone(),
            error,
        };
        if opened.tables == 0 {
            // Only a new file takes a page size (before WAL mode writes its header). 16 KiB
            // pages: a batch rewrites most lead pages anyway, and bigger pages mean fewer
            // B-tree levels, WAL frames and write calls for the same bytes.
            conn.pragma_update(None, "page_size", 16_384).map_err(sql)?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        // A batch touches most MAP-lead pages: with SQLite's 2 MiB default the cache spills
        // dirty pages to the WAL mid-transaction and re-reads them. 64 MiB (a limit, not an
        // allocation) holds the lead table of a 100,000-lead org.
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(sql)?;
        // Checkpoint every 8,192 pages (128 MiB at 16 KiB) rather than every 1,000: a batch
        // rewrites many of the same lead pages, and a checkpoint copies each page once.
        conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)
            .map_err(sql)?;
        let mut store = Store {
            conn,
            path,
            lock,
            score_snapshot_rows: SCORE_SNAPSHOT_ROWS,
            history_block_changes: blocks::BLOCK_CHANGES,
            replay_checkpoints: None,
        };
        store.migrate(opened.version)?;
        Ok(store)
    }

    /// A SQLite failure on this store, as the store's error.
    pub(crate) fn sql_err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            error: source,
        }
    }

    fn migrate(&mut self, from: i64) -> Result<(), StoreError> {
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let path = self.path.clone();
            let err = |source| StoreError::Sqlite {
                path: path.clone(),
                error: source,
            };
            let tx = self.conn.transaction().map_err(err)?;
            tx.execute_batch(migration).map_err(err)?;
            // Migration 7 adds the reports' row of each cycle: filled from the cycles here.
            if i == 6 {
                facts::rebuild(&tx).map_err(err)?;
            }
            // Migration 9 adds the score history's blocks: the history stored is packed here.
            if i == 8 {
                blocks::pack(&tx, self.history_block_changes).map_err(err)?;
            }
            tx.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(err)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(())
    }

    /// The engine's clock as last saved (the latest instant it was advanced to), without
    /// loading the engine: the "now" of a report.
    pub fn clock(&self) -> Result<Option<Timestamp>, StoreError> {
        let meta: Option<String> = self
            .conn
            .query_row(ENGINE_META, [], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql_err(e))?;
        let Some(meta) = meta else {
            return Ok(None);
        };
        let meta: EngineMeta = serde_json::from_str(&meta).map_err(|e| StoreError::Decode {
            path: self.path.clone(),
            detail: format!("engine meta: {e}"),
        })?;
        Ok(meta.clock)
    }

    /// Puts writes no engine decision made (the knob's feedback on threshold records) in the
    /// outbox as `(key, kind, payload)`, with the cursor that records them computed, in one
    /// transaction. A row whose payload is the one already written stays done.
    pub fn enqueue(
        &mut self,
        rows: &[(String, String, String)],
        cursor: (&str, &str),
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            error: source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut upsert = tx.prepare_cached(OUTBOX_UPSERT).map_err(err)?;
            for (key, kind, payload) in rows {
                upsert
                    .execute(params![key, kind, payload, ts(at)])
                    .map_err(err)?;
            }
            tx.execute(CURSOR_UPSERT, params![cursor.0, cursor.1, ts(at)])
                .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// The open connection, for `report`'s read-only queries.
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The schema version of the open store.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.sql_err(e))
    }

    /// A saved cursor.
    pub fn cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM cursors WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.sql_err(e))
    }

    /// Tunes the writer for a long replay of history (a backfill's score history), or back
    /// to the defaults. A replay of millions of changes over a million leads touches a store
    /// of gigabytes, far past the 64 MiB page cache:
    /// - the file is memory-mapped for reading (up to 2 GiB: pages are read in place rather
    ///   than copied, and the OS can drop them);
    /// - the page cache may grow to 512 MiB (a limit, not an allocation), so that a commit
    ///   of 100,000 changes, some 4,000 pages of 16 KiB, stays in it rather than spilling;
    /// - the log is copied back by checkpoints in a thread beside the writer
    ///   ([`checkpoint::Beside`]), and the writer's own checkpoint comes only every 65,536
    ///   pages (1 GiB) rather than 8,192 and finds little left to copy: the writer no longer
    ///   waits in `fsync` for the disk.
    ///
    /// None of it changes what is written or when it commits. Off, it waits for the
    /// checkpoint in flight. Either way the log file is cut back to 128 MiB when it starts
    /// again.
    pub fn replaying(&mut self, on: bool) -> Result<(), StoreError> {
        self.replay_checkpoints = match (on, self.database_file()) {
            (true, Some(file)) => Some(checkpoint::Beside::new(file, self.path.clone())),
            _ => None,
        };
        let (mmap, checkpoint_pages, cache) = if on {
            (REPLAY_MMAP_BYTES, REPLAY_CHECKPOINT_PAGES, REPLAY_CACHE_KIB)
        } else {
            (0, CHECKPOINT_PAGES, CACHE_KIB)
        };
        let set = |name: &str, value: i64| {
            self.conn
                .pragma_update(None, name, value)
                .map_err(|e| self.sql_err(e))
        };
        set("mmap_size", mmap)?;
        set("cache_size", -cache)?;
        set("wal_autocheckpoint", checkpoint_pages)?;
        // Once the long log has been copied back and starts again, its file is cut back to
        // 128 MiB rather than keeping the gigabyte on disk.
        set("journal_size_limit", JOURNAL_SIZE_LIMIT)
    }

    /// Sets after how many score-history rows a batch saves a score snapshot
    /// ([`SCORE_SNAPSHOT_ROWS`] by default; tests use small values to exercise both paths).
    pub fn set_score_snapshot_rows(&mut self, rows: i64) {
        self.score_snapshot_rows = rows.max(1);
    }

    /// How many changes a block of the packed score history holds
    /// ([`blocks::BLOCK_CHANGES`] by default; tests use small values).
    pub fn set_history_block_changes(&mut self, changes: usize) {
        self.history_block_changes = changes.max(1);
    }

    /// The last score-history `seq` the packed blocks hold (0: none): a reader of the whole
    /// history takes the blocks up to it ([`Store::for_each_packed_change`]), then the rows.
    pub fn score_history_packed_through(&self) -> Result<i64, StoreError> {
        blocks::packed_through(&self.conn).map_err(|e| self.sql_err(e))
    }

    /// Hands each change of the packed blocks that start at a `seq` in `range` (inclusive) to
    /// `each`, in arrival order.
    pub fn for_each_packed_change(
        &self,
        range: (i64, i64),
        each: impl FnMut(blocks::PackedChange<'_>),
    ) -> Result<(), StoreError> {
        blocks::for_each(&self.conn, range, each).map_err(|e| match e {
            blocks::BlockError::Sql(e) => self.sql_err(e),
            blocks::BlockError::Decode(detail) => StoreError::Decode {
                path: self.path.clone(),
                detail,
            },
        })
    }

    /// Packs the score history's full blocks not yet packed (a commit does it as it goes; a
    /// history written by other means, as the benchmarks and tests do, needs this). Returns
    /// how many changes were packed.
    pub fn pack_score_history(&mut self) -> Result<u64, StoreError> {
        let changes = self.history_block_changes;
        let packed = self.conn.transaction().and_then(|tx| {
            let packed = blocks::pack(&tx, changes)?;
            tx.commit().map(|()| packed)
        });
        packed.map_err(|e| self.sql_err(e))
    }

    /// Commits a batch: its history, the engine's changed state, its decisions (audit log and
    /// outbox) and its cursors, in one transaction. Takes the engine's dirty set. When the
    /// score history has grown by [`SCORE_SNAPSHOT_ROWS`] since the last score snapshot, the
    /// same transaction saves a new one; when it holds a full block of changes past the last
    /// packed one, the same transaction packs it ([`blocks`]).
    pub fn commit_batch(
        &mut self,
        batch: Batch<'_>,
        state: &mut EngineState,
    ) -> Result<(), StoreError> {
        let dirty = state.take_dirty();
        let path = self.path.clone();
        let every = self.score_snapshot_rows;
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            error: source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        write_batch(&tx, &batch, state, &dirty).map_err(err)?;
        let (last, saved) = history_marks(&tx).map_err(err)?;
        if last - saved >= every {
            save_scores(&tx, state, last).map_err(err)?;
        }
        if last - blocks::packed_through(&tx).map_err(err)? >= self.history_block_changes as i64 {
            blocks::pack(&tx, self.history_block_changes).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        if let Some(checkpoints) = &mut self.replay_checkpoints {
            checkpoints.after_commit();
        }
        Ok(())
    }

    /// Saves a snapshot of every MAP lead's scores changed since the last one, so that the
    /// next load replays no score history (the end of `run --once` and `simulate`).
    pub fn save_scores(&mut self, state: &mut EngineState) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            error: source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let (last, saved) = history_marks(&tx).map_err(err)?;
        if last > saved || !state.unsaved_scores.is_empty() {
            save_scores(&tx, state, last).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(())
    }

    /// Loads the engine state saved by earlier batches: the saved rows, then the score
    /// history after the last score snapshot, applied in arrival order as the engine applied
    /// it (the policy says how: a decayed score needs its half-life).
    pub fn load_engine(&self, policy: &Policy) -> Result<EngineState, StoreError> {
        load_engine(&self.conn, policy).map_err(|e| match e {
            LoadError::Sql(source) => self.sql_err(source),
            LoadError::Decode(detail) => StoreError::Decode {
                path: self.path.clone(),
                detail,
            },
        })
    }

    /// Records field-history rows of threshold records (a row seen again is ignored) and the
    /// cursor that read them, in one transaction. Returns how many rows were new.
    pub fn record_threshold_history(
        &mut self,
        rows: &[ThresholdFieldChange],
        cursor: (&str, &str),
        at: Timestamp,
    ) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            error: source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let mut new = 0;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO threshold_field_history (id, threshold_id, field, old_value, new_value, changed_at, changed_by)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(err)?;
            for r in rows {
                new += insert
                    .execute(params![
                        r.id,
                        r.threshold_id,
                        r.field,
                        r.old_value,
                        r.new_value,
                        ts(r.changed_at),
                        r.changed_by
                    ])
                    .map_err(err)?;
            }
            tx.execute(CURSOR_UPSERT, params![cursor.0, cursor.1, ts(at)])
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(new)
    }

    /// The field history of one threshold record, oldest first.
    pub fn threshold_history(
        &self,
        threshold_id: &str,
    ) -> Result<Vec<ThresholdFieldChange>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, threshold_id, field, old_value, new_value, changed_at, changed_by FROM threshold_field_history
                 WHERE threshold_id = ?1 ORDER BY changed_at, id",
            )
            .map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map([threshold_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get::<_, String>(5)?,
                    r.get(6)?,
                ))
            })
            .map_err(|e| self.sql_err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, threshold_id, field, old_value, new_value, at, changed_by) =
                row.map_err(|e| self.sql_err(e))?;
            let changed_at = at.parse().map_err(|e: jiff::Error| StoreError::Decode {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
            out.push(ThresholdFieldChange {
                id,
                threshold_id,
                field,
                old_value,
                new_value,
                changed_at,
                changed_by,
            });
        }
        Ok(out)
    }

    /// Every cycle, by CRM id and number.
    pub fn cycles(&self) -> Result<Vec<Cycle>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT body FROM cycles ORDER BY crm_id, number")
            .map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.sql_err(e))?;
        let mut cycles = Vec::new();
        for body in rows {
            let body = body.map_err(|e| self.sql_err(e))?;
            cycles.push(serde_json::from_str(&body).map_err(|e| StoreError::Decode {
                path: self.path.clone(),
                detail: e.to_string(),
            })?);
        }
        Ok(cycles)
    }

    /// Pending outbox rows, oldest first.
    pub fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key, kind, payload, attempts, last_error FROM outbox
                 WHERE state = 'pending' ORDER BY updated_at, key LIMIT ?1",
            )
            .map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map([limit as i64], OutboxRow::read)
            .map_err(|e| self.sql_err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql_err(e))
    }

    /// The keys of every row waiting to be written, in the order [`Store::outbox_pending`]
    /// gives them: a writer with many rows loads them a chunk at a time
    /// ([`Store::outbox_rows`]) instead of holding every payload at once.
    pub fn outbox_pending_keys(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key FROM outbox WHERE state = 'pending' ORDER BY updated_at, key")
            .map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.sql_err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql_err(e))
    }

    /// The rows of `keys` still waiting to be written, in the order of `keys`.
    pub fn outbox_rows(&self, keys: &[String]) -> Result<Vec<OutboxRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT key, kind, payload, attempts, last_error FROM outbox
                 WHERE key = ?1 AND state = 'pending'",
            )
            .map_err(|e| self.sql_err(e))?;
        let mut rows = Vec::with_capacity(keys.len());
        for key in keys {
            let mut found = stmt
                .query_map([key], OutboxRow::read)
                .map_err(|e| self.sql_err(e))?;
            if let Some(row) = found.next() {
                rows.push(row.map_err(|e| self.sql_err(e))?);
            }
        }
        Ok(rows)
    }

    /// Gives the memory SQLite's page cache holds back to the system, and keeps the cache at
    /// 8 MiB from then on: the 64 MiB limit of `open` is for a first pass or a backfill, whose
    /// batches rewrite most lead pages; a load or a first pass fills it, and a daemon between
    /// polls does not need it. `PRAGMA shrink_memory` frees the connection's cached pages; on
    /// glibc, `malloc_trim` then returns the freed heap to the kernel (SQLite allocates with
    /// the C allocator, not the binary's). Pages are read again when a pass needs them.
    pub fn release_memory(&self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("PRAGMA cache_size = -8192; PRAGMA shrink_memory")
            .map_err(|e| self.sql_err(e))?;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only walks glibc's own free lists.
        unsafe {
            libc::malloc_trim(0);
        }
        Ok(())
    }

    /// Outbox rows waiting to be written, and rows parked (failed): the daemon's outbox
    /// depth.
    pub fn outbox_depth(&self) -> Result<(usize, usize), StoreError> {
        let count = |state: &str| -> Result<usize, StoreError> {
            self.conn
                .query_row(
                    "SELECT count(*) FROM outbox WHERE state = ?1",
                    [state],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as usize)
                .map_err(|e| self.sql_err(e))
        };
        Ok((count("pending")?, count("failed")?))
    }

    /// Records how the writes of outbox rows ended (see [`Settlement`]), in one transaction.
    /// A row whose payload changed since it was read stays pending for its new payload.
    pub fn outbox_settle(
        &mut self,
        results: &[(OutboxRow, Settlement)],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            error: source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        settle_rows(&tx, results, at).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Settles outbox rows ([`Store::outbox_settle`], at the batch's `seen_at`) and commits
    /// what the engine made of the writes (a batch of [`Event::CycleWritten`] reports and
    /// their decisions) in one transaction: a crash leaves the rows pending and the cycles
    /// unwritten together, never a record settled whose cycle does not know it was written.
    pub fn settle_writes(
        &mut self,
        results: &[(OutboxRow, Settlement)],
        batch: Batch<'_>,
        state: &mut EngineState,
    ) -> Result<(), StoreError> {
        let dirty = state.take_dirty();
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            error: source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        settle_rows(&tx, results, batch.seen_at).map_err(err)?;
        write_batch(&tx, &batch, state, &dirty).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Puts failed outbox rows back to pending, with a fresh count of attempts, after the
    /// cause was fixed in the CRM (a validation rule, an inactive owner): all of them, or those
    /// whose error contains `error`. Returns how many.
    pub fn outbox_requeue(&mut self, error: Option<&str>) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "UPDATE outbox SET state = 'pending', attempts = 0
                 WHERE state = 'failed' AND (?1 IS NULL OR instr(last_error, ?1) > 0)",
                params![error],
            )
            .map_err(|e| self.sql_err(e))
    }

    /// The outbox row of `key` as last written to the CRM, if it was (its payload is what the
    /// CRM record holds from mqlsync).
    pub fn outbox_written(&self, key: &str) -> Result<Option<OutboxRow>, StoreError> {
        self.conn
            .query_row(
                "SELECT key, kind, payload, attempts, last_error FROM outbox
                 WHERE key = ?1 AND state = 'done'",
                [key],
                OutboxRow::read,
            )
            .optional()
            .map_err(|e| self.sql_err(e))
    }

    /// The writes parked in the outbox (refused for good, or refused for now too many times):
    /// how many, and the first `limit` as `(key, error)` in key order.
    pub fn outbox_parked(
        &self,
        limit: usize,
    ) -> Result<(usize, Vec<(String, String)>), StoreError> {
        let e = |source| self.sql_err(source);
        let count: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM outbox WHERE state = 'failed'",
                [],
                |r| r.get(0),
            )
            .map_err(e)?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key, coalesce(last_error, '') FROM outbox WHERE state = 'failed'
                 ORDER BY key LIMIT ?1",
            )
            .map_err(e)?;
        let first = stmt
            .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(e)?
            .collect::<Result<Vec<(String, String)>, _>>()
            .map_err(e)?;
        Ok((count as usize, first))
    }

    /// Summary counts for `mqlsync status`.
    pub fn summary(&self) -> Result<StoreSummary, StoreError> {
        let e = |source| self.sql_err(source);
        let count = |sql: &str| -> Result<i64, StoreError> {
            self.conn.query_row(sql, [], |r| r.get(0)).map_err(e)
        };
        let pairs = |sql: &str| -> Result<Vec<(String, i64)>, StoreError> {
            let mut stmt = self.conn.prepare(sql).map_err(e)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(e)?;
            rows.collect::<Result<_, _>>().map_err(e)
        };
        let mut stmt = self
            .conn
            .prepare("SELECT name, value, updated_at FROM cursors ORDER BY name")
            .map_err(e)?;
        let cursors = stmt
            .query_map([], |r| {
                Ok(SavedCursor {
                    name: r.get(0)?,
                    value: r.get(1)?,
                    saved_at: r.get(2)?,
                })
            })
            .map_err(e)?
            .collect::<Result<_, _>>()
            .map_err(e)?;
        let entries = |state: &str| -> Result<Vec<OutboxEntry>, StoreError> {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT key, attempts, last_error FROM outbox WHERE state = ?1
                     ORDER BY updated_at, key LIMIT ?2",
                )
                .map_err(e)?;
            let rows = stmt
                .query_map(params![state, SUMMARY_ROWS as i64], |r| {
                    Ok(OutboxEntry {
                        key: r.get(0)?,
                        attempts: r.get(1)?,
                        last_error: r.get(2)?,
                    })
                })
                .map_err(e)?;
            rows.collect::<Result<_, _>>().map_err(e)
        };
        let by_status =
            pairs("SELECT status, count(*) FROM cycles GROUP BY status ORDER BY status")?;
        let failures = pairs(
            "SELECT coalesce(last_error, ''), count(*) AS n FROM outbox WHERE state = 'failed'
             GROUP BY last_error ORDER BY n DESC, last_error LIMIT 5",
        )?;
        Ok(StoreSummary {
            schema_version: self.schema_version()?,
            cursors,
            cycles_by_status: by_status,
            outbox_pending: count("SELECT count(*) FROM outbox WHERE state = 'pending'")?,
            outbox_failed: count("SELECT count(*) FROM outbox WHERE state = 'failed'")?,
            outbox_failures: failures,
            pending_writes: entries("pending")?,
            failed_writes: entries("failed")?,
            persons: count("SELECT count(*) FROM persons")?,
            map_leads: count("SELECT count(*) FROM map_leads")?,
            thresholds: count("SELECT count(*) FROM thresholds")?,
            threshold_versions: count("SELECT count(*) FROM threshold_versions")?,
            threshold_field_changes: count("SELECT count(*) FROM threshold_field_history")?,
            score_changes: count("SELECT count(*) FROM score_history")?,
            audit_entries: count("SELECT count(*) FROM audit")?,
        })
    }

    /// The audit log of one subject (CRM id, `map:{id}` or threshold id), oldest first.
    pub fn audit_of(&self, subject: &str) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT at, action, reason FROM audit WHERE subject = ?1 ORDER BY seq")
            .map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map([subject], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| self.sql_err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql_err(e))
    }

    /// Where the file is, for messages.
    pub fn file(&self) -> PathBuf {
        PathBuf::from(&self.path)
    }
}

fn part_name(part: ScorePart) -> &'static str {
    match part {
        ScorePart::Total => "total",
        ScorePart::Behavior => "behavior",
        ScorePart::Demographic => "demographic",
    }
}

/// The inverse of [`part_name`].
pub(crate) fn part_of(name: &str) -> Option<ScorePart> {
    ScorePart::ALL.into_iter().find(|p| part_name(*p) == name)
}

/// The `code` tag of a reason, as its JSON carries it (kept equal by a test).
fn reason_code(reason: &Reason) -> &'static str {
    match reason {
        Reason::Qualified { .. } => "qualified",
        Reason::BelowThreshold { .. } => "below_threshold",
        Reason::HandRaised { .. } => "hand_raised",
        Reason::HandRaiseHeld { .. } => "hand_raise_held",
        Reason::HandRaiseExpired { .. } => "hand_raise_expired",
        Reason::NoThreshold => "no_threshold",
        Reason::NotLinked { .. } => "not_linked",
        Reason::NoScore => "no_score",
        Reason::Excluded { .. } => "excluded",
        Reason::OpenCycle { .. } => "open_cycle",
        Reason::CoolingDown { .. } => "cooling_down",
        Reason::StatusChanged { .. } => "status_changed",
        Reason::HistoricStatus { .. } => "historic_status",
        Reason::OwnerChanged { .. } => "owner_changed",
        Reason::Converted { .. } => "converted",
        Reason::SlaOverdue { .. } => "sla_overdue",
        Reason::SlaStarted { .. } => "sla_started",
        Reason::Reassigned { .. } => "reassigned",
        Reason::EditRefused { .. } => "edit_refused",
        Reason::ThresholdInvalid { .. } => "threshold_invalid",
        Reason::ThresholdSeen { .. } => "threshold_seen",
        Reason::RejectionReasonUnmapped { .. } => "rejection_reason_unmapped",
        Reason::EditUnknownCycle { .. } => "edit_unknown_cycle",
        Reason::EditStale { .. } => "edit_stale",
        Reason::NotSeen => "not_seen",
        Reason::AtGoLive { .. } => "at_go_live",
        Reason::AccountQualified { .. } => "account_qualified",
    }
}

/// Marks outbox rows done, failed or pending again (see [`Settlement`]); a row whose payload
/// changed since it was read is left alone.
fn settle_rows(
    tx: &Transaction<'_>,
    results: &[(OutboxRow, Settlement)],
    at: Timestamp,
) -> rusqlite::Result<()> {
    let mut done = tx.prepare_cached(
        "UPDATE outbox SET state = 'done', attempts = attempts + 1, last_error = NULL, updated_at = ?3 WHERE key = ?1 AND payload = ?2",
    )?;
    let mut done_as = tx.prepare_cached(
        "UPDATE outbox SET state = 'done', payload = ?4, attempts = attempts + 1, last_error = NULL, updated_at = ?3 WHERE key = ?1 AND payload = ?2",
    )?;
    let mut failed = tx.prepare_cached(
        "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ?3, updated_at = ?4 WHERE key = ?1 AND payload = ?2",
    )?;
    let mut retry = tx.prepare_cached(
        "UPDATE outbox SET state = CASE WHEN attempts + 1 >= ?5 THEN 'failed' ELSE 'pending' END,
         attempts = attempts + 1, last_error = ?3, updated_at = ?4 WHERE key = ?1 AND payload = ?2",
    )?;
    for (row, settlement) in results {
        match settlement {
            Settlement::Done => done.execute(params![row.key, row.payload, ts(at)]),
            Settlement::DoneAs(payload) => {
                done_as.execute(params![row.key, row.payload, ts(at), payload])
            }
            Settlement::Failed(e) => failed.execute(params![row.key, row.payload, e, ts(at)]),
            Settlement::Retry(e) => retry.execute(params![
                row.key,
                row.payload,
                e,
                ts(at),
                OUTBOX_MAX_ATTEMPTS
            ]),
        }?;
    }
    Ok(())
}

fn write_batch(
    tx: &Transaction<'_>,
    batch: &Batch<'_>,
    state: &EngineState,
    dirty: &crate::engine::state::Dirty,
) -> rusqlite::Result<()> {
    let seen = ts(batch.seen_at);
    {
        let mut history = tx.prepare_cached(
            "INSERT OR IGNORE INTO score_history (change_id, map_lead_id, part, new_value, old_value, campaign_id, campaign_name, at_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut versions = tx.prepare_cached(
            "INSERT OR IGNORE INTO threshold_versions (threshold_id, modified_at, score, segment, effective_from, effective_to, active, deleted, set_by, seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for event in batch.events {
            match event {
                Event::Score(s) | Event::CurrentScore(s) => {
                    let (cid, cname) = s.campaign.as_ref().map_or((None, None), |c: &Campaign| {
                        (Some(c.id.as_str()), c.name.as_deref())
                    });
                    history.execute(params![
                        s.change_id,
                        s.map_lead_id,
                        part_name(s.part),
                        s.new_value,
                        s.old_value,
                        cid,
                        cname,
                        ns(s.at)
                    ])?;
                }
                Event::Threshold(t) => {
                    versions.execute(params![
                        t.id,
                        ts(t.modified_at),
                        t.score,
                        json(&t.segment),
                        opt_ts(t.effective_from),
                        opt_ts(t.effective_to),
                        t.active,
                        t.deleted,
                        t.set_by,
                        seen
                    ])?;
                }
                _ => {}
            }
        }
    }
    // The cycles go-live opened: only their deciding reason says so.
    let go_live: Vec<&str> = batch
        .decisions
        .iter()
        .filter_map(|d| match (&d.action, &d.reason) {
            (Action::OpenCycle { cycle }, Reason::AtGoLive { .. }) => {
                Some(cycle.external_id.as_str())
            }
            _ => None,
        })
        .collect();
    write_state(tx, state, dirty, &go_live)?;
    {
        let mut audit = tx.prepare_cached(
            "INSERT INTO audit (at, subject, action, reason_code, reason, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut upsert = tx.prepare_cached(OUTBOX_UPSERT)?;
        let mut notify = tx.prepare_cached(
            "INSERT OR IGNORE INTO outbox (key, kind, payload, state, attempts, created_at, updated_at)
             VALUES (?1, 'notify', ?2, 'pending', 0, ?3, ?3)",
        )?;
        for d in batch.decisions {
            let reason = json(&d.reason);
            let code = reason_code(&d.reason);
            audit.execute(params![
                ts(d.at),
                d.subject,
                d.action.name(),
                code,
                reason,
                seen
            ])?;
            match &d.action {
                Action::OpenCycle { cycle } | Action::UpdateCycle { cycle } => {
                    upsert.execute(params![
                        format!("MQL:{}", cycle.external_id),
                        "cycle",
                        json(cycle),
                        seen
                    ])?;
                }
                Action::StampPerson { crm, stamps } => {
                    let payload = json(&(crm, stamps));
                    upsert.execute(params![
                        format!("{}:{}", crm.kind.as_str(), crm.id),
                        "stamps",
                        payload,
                        seen
                    ])?;
                }
                Action::Notify {
                    owner_id,
                    external_id,
                    ..
                } => {
                    let key = format!("Notify:{external_id}:{owner_id}:{}", ts(d.at));
                    notify.execute(params![key, json(&d.action), seen])?;
                }
                Action::Record => {}
            }
        }
    }
    {
        let mut cursor = tx.prepare_cached(CURSOR_UPSERT)?;
        for (name, value) in batch.cursors {
            cursor.execute(params![name, value, seen])?;
        }
    }
    Ok(())
}

fn write_state(
    tx: &Transaction<'_>,
    state: &EngineState,
    dirty: &crate::engine::state::Dirty,
    go_live: &[&str],
) -> rusqlite::Result<()> {
    let mut threshold = tx.prepare_cached(
        "INSERT INTO thresholds (id, body, modified_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET body = excluded.body, modified_at = excluded.modified_at",
    )?;
    for id in &dirty.thresholds {
        if let Some(t) = state.thresholds.get(id) {
            threshold.execute(params![id, json(t), ts(t.modified_at)])?;
        }
    }
    // Facts change only with a CRM edit of the person; stamps, holds and cool-downs with
    // most decisions. So a person whose facts did not change keeps its saved facts (a new
    // row without facts has none to keep).
    let mut with_facts = tx.prepare_cached(
        "INSERT INTO persons (crm_id, kind, map_lead_id, facts, stamps, cooldown, last_hold) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (crm_id) DO UPDATE SET kind = excluded.kind, map_lead_id = excluded.map_lead_id, facts = excluded.facts,
             stamps = excluded.stamps, cooldown = excluded.cooldown, last_hold = excluded.last_hold",
    )?;
    let mut without_facts = tx.prepare_cached(
        "INSERT INTO persons (crm_id, map_lead_id, stamps, cooldown, last_hold) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (crm_id) DO UPDATE SET map_lead_id = excluded.map_lead_id,
             stamps = excluded.stamps, cooldown = excluded.cooldown, last_hold = excluded.last_hold",
    )?;
    let mut facts_changed = dirty.facts.clone();
    facts_changed.sort_unstable();
    let mut person_slots = dirty.persons.clone();
    person_slots.sort_unstable_by(|a, b| state.persons.id(*a).cmp(state.persons.id(*b)));
    for slot in person_slots {
        let (id, p) = (state.persons.id(slot), state.persons.at(slot));
        let stamps = json(&p.stamps);
        let cooldown = p.cooldown.as_ref().map(json);
        let last_hold = p.last_hold.as_ref().map(json);
        if facts_changed.binary_search(&slot).is_ok() {
            let kind = p.facts.as_ref().map(|f| f.crm.kind.as_str());
            let facts = p.facts.as_ref().map(json);
            with_facts.execute(params![
                id, kind, p.map_lead, facts, stamps, cooldown, last_hold
            ])?;
        } else {
            without_facts.execute(params![id, p.map_lead, stamps, cooldown, last_hold])?;
        }
    }
    let mut cycle = tx.prepare_cached(
        "INSERT INTO cycles (external_id, crm_id, number, status, owner_id, team, segment, mql_at, backfilled, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (external_id) DO UPDATE SET status = excluded.status, owner_id = excluded.owner_id, body = excluded.body",
    )?;
    let mut cycle_ids: Vec<&String> = dirty.cycles.iter().collect();
    cycle_ids.sort_unstable();
    cycle_ids.dedup();
    for id in cycle_ids {
        if let Some(c) = state.cycle(id) {
            let facts = state
                .persons
                .get(c.crm.id.as_str())
                .and_then(|p| p.facts.as_deref());
            facts::upsert(tx, c, facts, go_live.contains(&id.as_str()))?;
            cycle.execute(params![
                c.external_id,
                c.crm.id.as_str(),
                c.number,
                c.status.as_str(),
                c.owner_id,
                c.team,
                c.segment,
                ts(c.mql_at),
                c.backfilled,
                json(c)
            ])?;
        }
    }
    write_leads(tx, state, dirty.map_leads.clone())?;
    let mut opp = tx.prepare_cached(
        "INSERT INTO opportunities (id, account_id, body) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET account_id = excluded.account_id, body = excluded.body",
    )?;
    for id in &dirty.opportunities {
        if let Some(o) = state.opportunities.get(id) {
            opp.execute(params![id, o.account_id, json(o)])?;
        }
    }
    let mut account = tx.prepare_cached(
        "INSERT INTO accounts (id, body) VALUES (?1, ?2)
         ON CONFLICT (id) DO UPDATE SET body = excluded.body",
    )?;
    for id in &dirty.accounts {
        if let Some(a) = state.accounts.get(id) {
            account.execute(params![id.as_str(), json(a)])?;
        }
    }
    let mut account_score = tx.prepare_cached(
        "INSERT INTO account_scores (account_id, body) VALUES (?1, ?2)
         ON CONFLICT (account_id) DO UPDATE SET body = excluded.body",
    )?;
    let mut scored: Vec<&crate::engine::model::CrmId> = dirty.account_scores.iter().collect();
    scored.sort_unstable();
    scored.dedup();
    for id in scored {
        if let Some(score) = state.account_scores.get(id) {
            account_score.execute(params![id.as_str(), json(score)])?;
        }
    }
    if dirty.meta {
        tx.prepare_cached(
            "INSERT INTO engine_meta (key, value) VALUES ('engine', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )?
        .execute([json(&state.meta)])?;
    }
    Ok(())
}

/// Writes the rows of these MAP leads (link and scores) as the state has them.
fn write_leads(
    tx: &Transaction<'_>,
    state: &EngineState,
    mut lead_ids: Vec<i64>,
) -> rusqlite::Result<()> {
    let mut lead = tx.prepare_cached(
        "INSERT INTO map_leads (id, crm_kind, crm_id, link_at_ns, total, behavior, demographic, decayed, decay_anchor_ns,
             total_at_ns, total_key, behavior_at_ns, behavior_key, demographic_at_ns, demographic_key, campaign_id, campaign_name, unlinked_recorded)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
         ON CONFLICT (id) DO UPDATE SET crm_kind = excluded.crm_kind, crm_id = excluded.crm_id, link_at_ns = excluded.link_at_ns,
             total = excluded.total, behavior = excluded.behavior, demographic = excluded.demographic, decayed = excluded.decayed,
             decay_anchor_ns = excluded.decay_anchor_ns, total_at_ns = excluded.total_at_ns, total_key = excluded.total_key,
             behavior_at_ns = excluded.behavior_at_ns, behavior_key = excluded.behavior_key,
             demographic_at_ns = excluded.demographic_at_ns, demographic_key = excluded.demographic_key,
             campaign_id = excluded.campaign_id, campaign_name = excluded.campaign_name, unlinked_recorded = excluded.unlinked_recorded",
    )?;
    // In id order: neighbouring rows share B-tree pages, so each page is found, changed
    // and logged once rather than once per lead.
    lead_ids.sort_unstable();
    for id in &lead_ids {
        if let Some(l) = state.map_leads.get(id) {
            let s = &l.scores;
            let [t, b, d] = &s.versions;
            let campaign = s.last_campaign.as_ref();
            lead.execute(params![
                id,
                l.crm.as_ref().map(|c| c.kind.as_str()),
                l.crm.as_ref().map(|c| c.id.as_str()),
                l.link_at.get().map(ns),
                s.total,
                s.behavior,
                s.demographic,
                s.decayed,
                s.decay_anchor.get().map(ns),
                t.at.get().map(ns),
                t.change as i64,
                b.at.get().map(ns),
                b.change as i64,
                d.at.get().map(ns),
                d.change as i64,
                campaign.map(|c| c.id.as_str()),
                campaign.and_then(|c| c.name.as_deref()),
                l.unlinked_recorded
            ])?;
            if let Some(seen) = &l.hand_raise {
                tx.prepare_cached(
                    "INSERT INTO hand_raises (map_lead_id, body) VALUES (?1, ?2)
                     ON CONFLICT (map_lead_id) DO UPDATE SET body = excluded.body",
                )?
                .execute(params![id, json(seen)])?;
            }
        }
    }
    Ok(())
}

/// The last score-history row and the last one the score snapshot covers.
fn history_marks(tx: &Transaction<'_>) -> rusqlite::Result<(i64, i64)> {
    let last: i64 = tx.query_row("SELECT coalesce(max(seq), 0) FROM score_history", [], |r| {
        r.get(0)
    })?;
    Ok((last, scores_saved_through(tx)?))
}

/// The last score-history row the score snapshot covers (0: none).
fn scores_saved_through(conn: &Connection) -> rusqlite::Result<i64> {
    let saved: Option<String> = conn
        .query_row(
            "SELECT value FROM engine_meta WHERE key = 'scores_saved_through'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(saved.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Saves the rows of every lead whose scores changed since the last snapshot, and marks the
/// history through `last` as covered.
fn save_scores(tx: &Transaction<'_>, state: &mut EngineState, last: i64) -> rusqlite::Result<()> {
    let unsaved = std::mem::take(&mut state.unsaved_scores);
    for id in &unsaved {
        if let Some(lead) = state.map_leads.get_mut(id) {
            lead.unsaved = false;
        }
    }
    write_leads(tx, state, unsaved)?;
    tx.prepare_cached(
        "INSERT INTO engine_meta (key, value) VALUES ('scores_saved_through', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([last.to_string()])?;
    Ok(())
}

enum LoadError {
    Sql(rusqlite::Error),
    Decode(String),
}

impl From<rusqlite::Error> for LoadError {
    fn from(e: rusqlite::Error) -> Self {
        LoadError::Sql(e)
    }
}

fn decode<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, LoadError> {
    serde_json::from_str(text).map_err(|e| LoadError::Decode(format!("{what}: {e}")))
}

fn kind_of(text: &str) -> CrmKind {
    if text == "Contact" {
        CrmKind::Contact
    } else {
        CrmKind::Lead
    }
}

fn load_engine(conn: &Connection, policy: &Policy) -> Result<EngineState, LoadError> {
    let mut state = EngineState::new();
    let mut stmt = conn.prepare("SELECT id, body FROM thresholds")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        let t: Threshold = decode(&r.get::<_, String>(1)?, &format!("threshold {id}"))?;
        state.thresholds.insert(id, t);
    }
    let mut stmt = conn
        .prepare("SELECT crm_id, map_lead_id, facts, stamps, cooldown, last_hold FROM persons")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        let what = format!("person {id}");
        let person = PersonState {
            facts: r
                .get::<_, Option<String>>(2)?
                .map(|f| decode(&f, &what))
                .transpose()?,
            map_lead: r.get(1)?,
            cycles: Vec::new(),
            stamps: decode(&r.get::<_, String>(3)?, &what)?,
            cooldown: r
                .get::<_, Option<String>>(4)?
                .map(|c| decode(&c, &what))
                .transpose()?,
            last_hold: r
                .get::<_, Option<String>>(5)?
                .map(|c| decode(&c, &what))
                .transpose()?,
            ..PersonState::default()
        };
        state.persons.insert(&id, person);
    }
    let mut stmt = conn.prepare("SELECT crm_id, body FROM cycles ORDER BY crm_id, number")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let crm_id: String = r.get(0)?;
        let cycle: Cycle = decode(&r.get::<_, String>(1)?, &format!("cycle of {crm_id}"))?;
        state.persons.get_or_default(&crm_id).cycles.push(cycle);
    }
    let mut stmt = conn.prepare(
        "SELECT id, crm_kind, crm_id, link_at_ns, total, behavior, demographic, decayed, decay_anchor_ns,
                total_at_ns, total_key, behavior_at_ns, behavior_key, demographic_at_ns, demographic_key,
                campaign_id, campaign_name, unlinked_recorded FROM map_leads",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let what = format!("MAP lead {id}");
        let crm = match (
            r.get::<_, Option<String>>(1)?,
            r.get::<_, Option<String>>(2)?,
        ) {
            (Some(kind), Some(crm_id)) => Some(CrmRef {
                kind: kind_of(&kind),
                id: crm_id.into(),
            }),
            _ => None,
        };
        let version = |at: usize, key: usize| -> Result<PartVersion, LoadError> {
            Ok(PartVersion {
                at: from_ns(r.get(at)?, &what)?.into(),
                change: r.get::<_, i64>(key)? as u64,
            })
        };
        let lead = MapLeadState {
            crm,
            link_at: from_ns(r.get(3)?, &what)?.into(),
            scores: Scores {
                total: r.get(4)?,
                behavior: r.get(5)?,
                demographic: r.get(6)?,
                decayed: r.get(7)?,
                decay_anchor: from_ns(r.get(8)?, &what)?.into(),
                versions: [version(9, 10)?, version(11, 12)?, version(13, 14)?],
                last_campaign: r
                    .get::<_, Option<String>>(15)?
                    .map(|id| {
                        r.get::<_, Option<String>>(16).map(|name| Campaign {
                            id: id.into(),
                            name: name.map(Into::into),
                        })
                    })
                    .transpose()?,
            },
            unlinked_recorded: r.get(17)?,
            ..MapLeadState::default()
        };
        state.map_leads.insert(id, lead);
    }
    let mut stmt = conn.prepare("SELECT map_lead_id, body FROM hand_raises")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let seen: HandRaiseSeen = decode(
            &r.get::<_, String>(1)?,
            &format!("hand-raises of MAP lead {id}"),
        )?;
        state.map_leads.get_or_default(id).hand_raise = Some(Box::new(seen));
    }
    replay_scores(conn, policy, &mut state)?;
    let mut stmt = conn.prepare("SELECT id, body FROM accounts")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        let a: AccountFacts = decode(&r.get::<_, String>(1)?, &format!("account {id}"))?;
        state.accounts.insert(a.id.clone(), a);
    }
    let mut stmt = conn.prepare("SELECT account_id, body FROM account_scores")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        let score: AccountScore =
            decode(&r.get::<_, String>(1)?, &format!("score of account {id}"))?;
        state.account_scores.insert(id.into(), score);
    }
    let mut stmt = conn.prepare("SELECT id, body FROM opportunities")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        let o: Opportunity = decode(&r.get::<_, String>(1)?, &format!("opportunity {id}"))?;
        state.opportunities.insert(id, o);
    }
    let meta: Option<String> = conn.query_row(ENGINE_META, [], |r| r.get(0)).optional()?;
    state.meta = meta
        .map(|m| decode::<EngineMeta>(&m, "engine meta"))
        .transpose()?
        .unwrap_or_default();
    state.rebuild_indexes();
    Ok(state)
}

/// Applies the score history after the last snapshot, in arrival order, as the engine did.
/// Each change is versioned, so one the snapshot already holds changes nothing.
fn replay_scores(
    conn: &Connection,
    policy: &Policy,
    state: &mut EngineState,
) -> Result<(), LoadError> {
    let saved = scores_saved_through(conn)?;
    let half_life = match policy.score {
        ScoreSource::TimeDecayed { half_life } => Some(half_life),
        _ => None,
    };
    let mut stmt = conn.prepare(
        "SELECT map_lead_id, change_id, part, new_value, old_value, campaign_id, campaign_name, at_ns
         FROM score_history WHERE seq > ?1 ORDER BY seq",
    )?;
    let mut rows = stmt.query([saved])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let change_id: String = r.get(1)?;
        let what = format!("score change {change_id}");
        let part = r.get::<_, String>(2)?;
        let Some(part) = part_of(&part) else {
            return Err(LoadError::Decode(format!("{what}: unknown part {part:?}")));
        };
        let campaign = r
            .get::<_, Option<String>>(5)?
            .map(|cid| {
                r.get::<_, Option<String>>(6).map(|name| Campaign {
                    id: cid.into(),
                    name: name.map(Into::into),
                })
            })
            .transpose()?;
        let at = from_ns(Some(r.get(7)?), &what)?.expect("an instant");
        let lead = state.map_leads.get_or_default(id);
        lead.scores.apply(
            part,
            r.get(3)?,
            r.get(4)?,
            &change_id,
            at,
            campaign.as_ref(),
            half_life,
        );
        lead.mark_unsaved(id, &mut state.unsaved_scores);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
