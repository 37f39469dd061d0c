//! WAL checkpoints off the writer's path, for the daemon. SQLite copies the write-ahead log
//! back into the database file (a checkpoint) in the connection that commits once the log
//! passes `wal_autocheckpoint` pages: that commit then waits for up to 128 MiB of copying and
//! two `fsync`s, a tenth of a second and more, which a score push waiting for its MQL record
//! sees. [`Store::checkpoint_in_background`] turns that off for the store's connection and
//! checkpoints from a connection of its own, on a thread of its own, every second.
//!
//! A `PASSIVE` checkpoint never waits for the writer or a reader, and a crash during one is
//! SQLite's ordinary recovery: the log is replayed at the next open. Once a checkpoint has
//! copied the whole log, the writer's next transaction starts the log again from its
//! beginning, so the file stays the size of a second's writes.
//!
//! Must not: write anything but the checkpoint, or outlive the store it was made from
//! (dropping the guard stops and joins the thread).

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{Store, StoreError};

/// How often the background thread checkpoints.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The checkpointing thread; dropping it stops the thread (after the checkpoint in progress).
#[derive(Debug)]
pub struct Checkpointer {
    asks: Option<mpsc::Sender<Ask>>,
    thread: Option<JoinHandle<()>>,
}

/// A checkpoint asked for now, answered with its outcome.
type Ask = mpsc::Sender<Result<Checkpointed, String>>;

/// What a checkpoint did: frames in the log, and frames copied into the database so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpointed {
    pub log_frames: i64,
    pub copied_frames: i64,
}

fn checkpoint(conn: &Connection) -> Result<Checkpointed, String> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(Checkpointed {
            log_frames: row.get(1)?,
            copied_frames: row.get(2)?,
        })
    })
    .map_err(|e| e.to_string())
}

impl Checkpointer {
    fn inert() -> Self {
        Checkpointer {
            asks: None,
            thread: None,
        }
    }

    /// Has the thread checkpoint now and says what it did; `None` for a store without a
    /// thread (in memory, or the thread could not start).
    pub fn checkpoint_now(&self) -> Option<Result<Checkpointed, String>> {
        let (reply, answer) = mpsc::channel();
        self.asks.as_ref()?.send(reply).ok()?;
        answer.recv().ok()
    }
}

impl Store {
    /// Checkpoints this store's log from a thread of its own every `every`, and no longer
    /// in this connection's commits (see the module doc). A store in memory has no log and
    /// gets a guard that does nothing.
    pub fn checkpoint_in_background(&self, every: Duration) -> Result<Checkpointer, StoreError> {
        let path = match self.conn.path() {
            Some(p) if !p.is_empty() => p.to_string(),
            _ => return Ok(Checkpointer::inert()),
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(|e| self.sql_err(e))?;
        // The checkpointer copies frames; it needs no cache of its own.
        conn.pragma_update(None, "cache_size", 16)
            .map_err(|e| self.sql_err(e))?;
        let (asks, asked) = mpsc::channel::<Ask>();
        let shown = self.path.clone();
        let spawned = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                loop {
                    match asked.recv_timeout(every) {
                        Ok(reply) => {
                            let _ = reply.send(checkpoint(&conn));
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if let Err(e) = checkpoint(&conn) {
                                tracing::warn!(error = %e, store = %shown, "a background checkpoint of the store failed; the next one tries again");
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            });
        let thread = match spawned {
            Ok(thread) => thread,
            Err(e) => {
                tracing::warn!(error = %e, "could not start the store's checkpoint thread: commits checkpoint themselves");
                return Ok(Checkpointer::inert());
            }
        };
        self.conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| self.sql_err(e))?;
        Ok(Checkpointer {
            asks: Some(asks),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.asks.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
