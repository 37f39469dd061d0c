//! `run --once --dry-run`: the same run on a copy of the store, with the writes listed
//! instead of sent. Reads and decisions are the real ones (the run reads both systems as
//! usual); nothing reaches the CRM and nothing is committed to the user's store, so the next
//! real run does the same work. This file owns the copy and the comparison of each planned
//! write with what mqlsync last wrote to that record; it must not send or commit anything.

use std::path::{Path, PathBuf};

use jiff::Timestamp;

use crate::mapping::Mapping;
use crate::store::{Store, StoreError};

use super::once::PlannedWrite;
use super::writes::{self, AlertState};

/// A copy of the store in the temporary directory, removed when dropped.
pub struct ScratchStore {
    path: PathBuf,
}

impl ScratchStore {
    /// A copy of the store at `original` (a fresh store when there is none yet: a dry run
    /// before the first run), opened.
    pub fn open(original: &Path) -> Result<(ScratchStore, Store), StoreError> {
        let stamp = Timestamp::now().as_nanosecond();
        let path = std::env::temp_dir().join(format!(
            "mqlsync-dry-run-{}-{stamp}.sqlite",
            std::process::id()
        ));
        let scratch = ScratchStore { path };
        if original.exists() {
            Store::copy_to(original, &scratch.path)?;
        }
        let store = Store::open(&scratch.path)?;
        Ok((scratch, store))
    }
}

impl Drop for ScratchStore {
    fn drop(&mut self) {
        let beside = |suffix: &str| {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            PathBuf::from(name)
        };
        for suffix in ["", "-wal", "-shm", ".lock"] {
            let _ = std::fs::remove_file(beside(suffix));
        }
        // A dry run's bulk reads export beside the copy (their files are removed once read).
        let _ = std::fs::remove_dir_all(beside(".exports"));
    }
}

/// Fills in, for each planned write, what mqlsync last wrote to that record (from the user's
/// store, untouched by the dry run), and leaves out the fields that would not change. An MQL
/// record never written before is a `create`; one written before, an `update`.
pub fn compare(
    original: Option<&Store>,
    m: &Mapping,
    plan: &mut [PlannedWrite],
) -> Result<(), StoreError> {
    for write in plan.iter_mut() {
        let before = match original {
            Some(store) => store.outbox_written(&write.key)?,
            None => None,
        };
        if write.action == "upsert" {
            write.action = if before.is_some() { "update" } else { "create" }.into();
        }
        let Some(row) = before else { continue };
        let previous = writes::plan(m, vec![row], |_| AlertState::Current { due: None });
        let Some(record) = [
            previous.mql_upserts,
            previous.lead_updates,
            previous.contact_updates,
            previous.threshold_updates,
            previous.task_creates,
        ]
        .into_iter()
        .flatten()
        .next()
        .map(|w| w.record) else {
            continue;
        };
        for change in &mut write.fields {
            change.from = record.get(&change.field).cloned();
        }
        write
            .fields
            .retain(|c| c.from.as_ref() != Some(&c.to) || c.field == "Id");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_store_leaves_nothing_behind_not_even_its_exports_directory() {
        let original = std::env::temp_dir().join("mqlsync-no-such-store.sqlite");
        let (scratch, store) = ScratchStore::open(&original).unwrap();
        let exports = PathBuf::from(format!("{}.exports", store.path()));
        std::fs::create_dir_all(&exports).unwrap();
        let path = scratch.path.clone();
        assert!(path.exists());
        drop(store);
        drop(scratch);
        assert!(!path.exists(), "{}", path.display());
        assert!(!exports.exists(), "{}", exports.display());
    }
}
