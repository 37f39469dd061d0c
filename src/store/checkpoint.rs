//! WAL checkpoints off the writer's path, for the daemon. SQLite copies the write-ahead log
//! back into the database file (a checkpoint) in the connection that commits once the log
//! passes `wal_autocheckpoint` pages: that commit then waits for up to 128 MiB of copying and
//! two `fsync`s, a tenth of a second and more, which a score push waiting for its MQL record
//! sees. [`Store::checkpoint_elsewhere`] turns that off for the store's connection; the
//! daemon then asks its [`Checkpointer`] after each step, which starts a checkpoint on
//! tokio's blocking pool, from a connection of its own, when the store was written since the
//! last one and a second has passed.
//!
//! A `PASSIVE` checkpoint never waits for the writer or a reader, and a crash during one is
//! SQLite's ordinary recovery: the log is replayed at the next open. Once a checkpoint has
//! copied the whole log, the writer's next transaction starts the log again from its
//! beginning, so the file stays the size of a second's writes. The connection is opened for
//! each checkpoint and closed after it (a millisecond), and an idle daemon starts none: no
//! thread is kept for them (the blocking pool lets an idle one go after 10 s) and no second
//! page cache sits in a sidecar's memory.
//!
//! Must not: write anything but the checkpoint, or run two checkpoints at once.

use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Store, StoreError};

/// The least time between two checkpoints.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// What a checkpoint did: frames in the log, and frames copied into the database so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpointed {
    pub log_frames: i64,
    pub copied_frames: i64,
}

/// Checkpoints `path`'s log from a connection of its own.
fn checkpoint(path: &str) -> Result<Checkpointed, rusqlite::Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(Checkpointed {
            log_frames: row.get(1)?,
            copied_frames: row.get(2)?,
        })
    })
}

/// [`checkpoint`], a failure logged: the next one tries again.
fn checkpoint_logged(path: &str, shown: &str) {
    if let Err(e) = checkpoint(path) {
        tracing::warn!(error = %e, store = %shown, "a checkpoint of the store failed; the next one tries again");
    }
}

/// Starts the store's checkpoints when they are due (see the module doc).
#[derive(Debug)]
pub struct Checkpointer {
    /// The database file; `None` for a store in memory (no log).
    path: Option<String>,
    /// The store as the user named it, for the log.
    shown: String,
    every: Duration,
    /// The writer connection's row changes at the last checkpoint's start.
    changes_at_last: u64,
    last: Option<Instant>,
    running: Option<JoinHandle<()>>,
}

impl Store {
    /// Stops this connection's commits from checkpointing the log: the returned
    /// [`Checkpointer`] does it elsewhere, at least `every` apart (see the module doc).
    pub fn checkpoint_elsewhere(&self, every: Duration) -> Result<Checkpointer, StoreError> {
        let path = self.database_file();
        if path.is_some() {
            self.conn
                .pragma_update(None, "wal_autocheckpoint", 0)
                .map_err(|e| self.sql_err(e))?;
        }
        Ok(Checkpointer {
            path,
            shown: self.path.clone(),
            every,
            changes_at_last: self.conn.total_changes(),
            last: None,
            running: None,
        })
    }

    /// The database file the connection has open; `None` for a store in memory (no log).
    pub(super) fn database_file(&self) -> Option<String> {
        self.conn
            .path()
            .filter(|p| !p.is_empty())
            .map(str::to_string)
    }

    /// Row changes this connection has committed or made since it opened.
    pub(crate) fn total_changes(&self) -> u64 {
        self.conn.total_changes()
    }
}

impl Checkpointer {
    /// After a step of the daemon at `now`: starts a checkpoint on the blocking pool if
    /// `store` was written since the last one, `every` has passed, and none is running.
    /// True when one started.
    pub fn after_step(&mut self, store: &Store, now: Instant) -> bool {
        let Some(path) = &self.path else { return false };
        if self.running.as_ref().is_some_and(|r| !r.is_finished()) {
            return false;
        }
        if self.last.is_some_and(|at| now < at + self.every) {
            return false;
        }
        let changes = store.total_changes();
        if changes == self.changes_at_last {
            return false;
        }
        self.changes_at_last = changes;
        self.last = Some(now);
        let (path, shown) = (path.clone(), self.shown.clone());
        self.running = Some(tokio::task::spawn_blocking(move || {
            checkpoint_logged(&path, &shown);
        }));
        true
    }

    /// Waits for the checkpoint in flight, if any (a stop: the last one ends before the
    /// store closes).
    pub async fn finish(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.await;
        }
    }

    /// Checkpoints now, here, and says what it did (tests); `None` for a store in memory.
    pub fn checkpoint_now(&self) -> Option<Result<Checkpointed, rusqlite::Error>> {
        self.path.as_deref().map(checkpoint)
    }
}

/// A long replay's checkpoints, each started in a thread of its own as soon as the last has
/// ended and the writer has committed since. A replay's commits write gigabytes of log; the
/// writer's own checkpoint of each 1 GiB of it waited, in `fsync`, for the disk to take the
/// copy, a third of the replay's time. Here the copy and its `fsync`s go on beside the next
/// commits. The writer keeps its own `wal_autocheckpoint` as the bound of the log: past it,
/// its commits copy what the last checkpoint here left (little) and start the log again.
/// Dropped, it waits for the checkpoint in flight.
#[derive(Debug)]
pub struct Beside {
    path: String,
    shown: String,
    running: Option<std::thread::JoinHandle<()>>,
}

impl Beside {
    pub fn new(path: String, shown: String) -> Beside {
        Beside {
            path,
            shown,
            running: None,
        }
    }

    /// After a commit: starts a checkpoint unless one is running.
    pub fn after_commit(&mut self) {
        if self.running.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        if let Some(done) = self.running.take() {
            let _ = done.join();
        }
        let (path, shown) = (self.path.clone(), self.shown.clone());
        let spawned = std::thread::Builder::new()
            .name("mqlsync-checkpoint".into())
            .spawn(move || checkpoint_logged(&path, &shown));
        match spawned {
            Ok(handle) => self.running = Some(handle),
            // No thread to be had: the writer's own checkpoints still bound the log.
            Err(e) => tracing::warn!(error = %e, "no thread for the store's checkpoints"),
        }
    }
}

impl Drop for Beside {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.join();
        }
    }
}
