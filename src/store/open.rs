//! Finding, locking and diagnosing a store file before SQLite reads it: the store's real
//! path (every way of naming it, through a symlink or a relative path, is one store), the
//! writer lock on that path, and what a failure to open means for the user (a folder they
//! cannot write, a read-only file system, a damaged file) rather than SQLite's error code.
//!
//! Must not open the database file itself with `std::fs`: closing any descriptor of a file
//! drops the POSIX locks SQLite holds on it in this process.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

use super::StoreError;

/// Where a store cannot be written, for [`StoreError::ReadOnly`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOnlyPlace {
    /// The file system is mounted read-only.
    FileSystem,
    /// The directory that holds the store: SQLite creates the store's `-wal` and `-shm`
    /// files beside it, and mqlsync its `.lock`, even to read it.
    Directory(PathBuf),
    /// The store file itself.
    File,
}

impl std::fmt::Display for ReadOnlyPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadOnlyPlace::FileSystem => write!(
                f,
                "on a read-only file system; mount it read-write, or set `store` / MQLSYNC_STORE to a writable path"
            ),
            ReadOnlyPlace::Directory(dir) => write!(
                f,
                "in a read-only directory ({}): SQLite creates the store's -wal and -shm files beside it, even to read it; make the directory writable for this user, or move the store and set `store` / MQLSYNC_STORE",
                dir.display()
            ),
            ReadOnlyPlace::File => write!(
                f,
                "a file this user cannot write; make it writable (chmod u+w), or run mqlsync as its owner"
            ),
        }
    }
}

/// Held while a process writes the store (a run, `simulate`, `requeue`; later the daemon): a
/// second writer is refused instead of interleaving with the first, which would read the same
/// outbox rows and create alert tasks twice. An OS file lock on `{real path of the store}.lock`,
/// so a process that dies never leaves it behind, and every path that reaches the same file
/// (a symlink, a relative path) takes the same lock. The file holds the holder's process id,
/// for the message of the next one. Dropping it releases the store.
#[derive(Debug)]
pub struct WriterLock {
    _file: Option<std::fs::File>,
}

impl WriterLock {
    /// A lock for a store only this process can see (in memory).
    pub(super) fn private() -> WriterLock {
        WriterLock { _file: None }
    }

    /// Takes the lock file `lock` of the store `shown` (as the user named it), or says who
    /// holds it.
    pub(super) fn acquire(
        lock: &Path,
        shown: &str,
        store: &Path,
    ) -> Result<WriterLock, StoreError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock)
            .map_err(|e| {
                io_failure(
                    shown,
                    store,
                    &e,
                    &format!("create its lock file {}", lock.display()),
                )
            })?;
        let mut attempt = file.try_lock();
        for _ in 0..LOCK_RETRIES {
            if !matches!(attempt, Err(std::fs::TryLockError::WouldBlock)) {
                break;
            }
            std::thread::sleep(LOCK_RETRY_PAUSE);
            attempt = file.try_lock();
        }
        match attempt {
            Ok(()) => {
                // Best effort: the pid only makes the next process's message clearer.
                let _ = file.set_len(0);
                let _ = (&file).write_all(std::process::id().to_string().as_bytes());
                Ok(WriterLock { _file: Some(file) })
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Busy {
                path: shown.to_string(),
                lock: lock.display().to_string(),
                holder: std::fs::read_to_string(lock)
                    .ok()
                    .and_then(|s| s.trim().parse().ok()),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::NotAStore {
                path: shown.to_string(),
                detail: format!("cannot lock {}: {e}", lock.display()),
            }),
        }
    }
}

/// How often, and how far apart, a lock another holds is asked for again before the store is
/// refused as busy. A lock lives as long as any descriptor of its open file: a process that
/// starts a child while it holds the lock (a test harness, a supervisor running mqlsync in
/// its own process as well) shares that descriptor with the child until the child's `exec`
/// closes it, so a lock just released can still be held for a moment. 200 ms in all; a
/// writer that really holds the store is still refused at once as far as the user can tell.
const LOCK_RETRIES: u32 = 10;
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// The lock file of the store at `real` (a path from [`real_path`]).
pub(super) fn lock_path(real: &Path) -> PathBuf {
    let mut name = real.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// The store's file with every symbolic link resolved and made absolute, whether or not it
/// exists yet: its own real path, or its folder's real path and its name (a dangling symlink
/// is followed to where the file will be created, as SQLite does).
pub(super) fn real_path(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    // Linux's own limit of links followed in one lookup.
    for _ in 0..40 {
        match std::fs::canonicalize(&path) {
            Ok(real) => return Ok(real),
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            Err(_) => {}
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match std::fs::read_link(&path) {
            Ok(target) => path = dir.join(target),
            Err(_) => {
                let name = path.file_name().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "the path names no file")
                })?;
                return Ok(std::fs::canonicalize(&dir)?.join(name));
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "too many levels of symbolic links",
    ))
}

/// What an I/O error while preparing the store at `file` (its folder, its lock file) means.
pub(super) fn io_failure(shown: &str, file: &Path, e: &io::Error, doing: &str) -> StoreError {
    let exists = file.exists();
    match e.kind() {
        io::ErrorKind::ReadOnlyFilesystem => StoreError::ReadOnly {
            path: shown.to_string(),
            place: ReadOnlyPlace::FileSystem,
        },
        io::ErrorKind::PermissionDenied if exists => StoreError::ReadOnly {
            path: shown.to_string(),
            place: ReadOnlyPlace::Directory(folder(file)),
        },
        io::ErrorKind::PermissionDenied => StoreError::PermissionDenied {
            path: shown.to_string(),
            detail: format!("{doing}: {e}"),
        },
        _ => StoreError::NotAStore {
            path: shown.to_string(),
            detail: format!("cannot {doing}: {e}"),
        },
    }
}

/// What SQLite's failure to open or first read the store at `file` means, when it is about
/// access or damage rather than the file's content.
pub(super) fn sqlite_failure(shown: &str, file: &Path, e: &rusqlite::Error) -> Option<StoreError> {
    match e.sqlite_error_code()? {
        ErrorCode::DatabaseCorrupt => Some(StoreError::Corrupt {
            path: shown.to_string(),
            detail: e.to_string(),
        }),
        ErrorCode::CannotOpen
        | ErrorCode::ReadOnly
        | ErrorCode::PermissionDenied
        | ErrorCode::SystemIoFailure => access_problem(shown, file),
        _ => None,
    }
}

/// Why the store at `file` cannot be written, if it cannot: its file system, its folder or
/// the file itself, as the OS answers for this user.
pub(super) fn access_problem(shown: &str, file: &Path) -> Option<StoreError> {
    let read_only = |place| StoreError::ReadOnly {
        path: shown.to_string(),
        place,
    };
    let dir = folder(file);
    let exists = file.exists();
    if let Err(e) = writable(&dir) {
        return Some(match e.kind() {
            io::ErrorKind::ReadOnlyFilesystem => read_only(ReadOnlyPlace::FileSystem),
            _ if exists => read_only(ReadOnlyPlace::Directory(dir)),
            _ => StoreError::PermissionDenied {
                path: shown.to_string(),
                detail: format!("{}: {e}", dir.display()),
            },
        });
    }
    if exists && let Err(e) = writable(file) {
        return Some(match e.kind() {
            io::ErrorKind::ReadOnlyFilesystem => read_only(ReadOnlyPlace::FileSystem),
            _ => read_only(ReadOnlyPlace::File),
        });
    }
    None
}

fn folder(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether this user may write `path`, as the OS decides (permissions, read-only mounts,
/// root), without opening it.
#[cfg(unix)]
fn writable(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn writable(path: &Path) -> io::Result<()> {
    if std::fs::metadata(path)?.permissions().readonly() {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    } else {
        Ok(())
    }
}

/// SQLite's integrity report in one line: its first problem and how many there are.
pub(super) fn integrity_summary(rows: &[String]) -> String {
    let problems: Vec<&str> = rows
        .iter()
        .flat_map(|r| r.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "ok" && !l.starts_with("*** in database"))
        .collect();
    match problems.as_slice() {
        [] => "no detail".to_string(),
        [one] => (*one).to_string(),
        [first, rest @ ..] => format!("{first}, and {} more problems", rest.len()),
    }
}
