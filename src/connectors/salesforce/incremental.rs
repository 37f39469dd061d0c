//! Incremental reads of one object from a [`ModstampCursor`]: re-query from the cursor minus the
//! look-back window, in `(SystemModstamp, Id)` order, drop pairs already handed out, and hand
//! back the advanced cursor with every page so the caller checkpoints after processing it.
//!
//! Memory holds one page plus the window's seen pairs. This file must not write checkpoints.

use std::time::Duration;

use super::soql::{ModstampCursor, parse_datetime};
use crate::connectors::error::{ConnectorError, Result, System};
use crate::connectors::{Crm, Priority, QueryPages, Record};

/// One page of new or changed records plus the cursor to store once they are processed.
#[derive(Debug, Clone)]
pub struct ChangePage {
    pub records: Vec<Record>,
    pub cursor: ModstampCursor,
}

/// Reader of changes since a cursor.
pub struct IncrementalRead<C: Crm> {
    pages: QueryPages<C>,
    cursor: ModstampCursor,
    lookback: Duration,
}

impl<C: Crm> IncrementalRead<C> {
    /// Start reading `object` (with `fields`; `Id` and `SystemModstamp` are always added) since
    /// `cursor`. `all` reads `/queryAll` (soft-deleted rows too; select `IsDeleted`).
    pub fn new(
        crm: C,
        object: &str,
        fields: &[&str],
        cursor: ModstampCursor,
        lookback: Duration,
        extra_where: Option<&str>,
        all: bool,
    ) -> Result<Self> {
        let soql = cursor.query(object, fields, lookback, extra_where)?;
        Ok(IncrementalRead {
            pages: QueryPages::new(crm, soql, all, Priority::Routine).reading_ahead(),
            cursor,
            lookback,
        })
    }

    /// The next page of unseen records (possibly empty when a whole page was re-read inside the
    /// window), or `None` when the query is exhausted.
    pub async fn next_page(&mut self) -> Result<Option<ChangePage>> {
        let Some(records) = self.pages.next_page().await? else {
            return Ok(None);
        };
        let mut fresh = Vec::with_capacity(records.len());
        for r in records {
            let id = r.get("Id").and_then(|v| v.as_str()).map(str::to_string);
            let ts = r
                .get("SystemModstamp")
                .and_then(|v| v.as_str())
                .and_then(parse_datetime);
            let (Some(id), Some(ts)) = (id, ts) else {
                return Err(ConnectorError::Malformed {
                    system: System::Salesforce,
                    detail: "record without Id or SystemModstamp in an incremental read".into(),
                });
            };
            if self.cursor.seen(ts, &id) {
                continue;
            }
            self.cursor.advance(ts, &id, self.lookback);
            fresh.push(r);
        }
        Ok(Some(ChangePage {
            records: fresh,
            cursor: self.cursor.clone(),
        }))
    }
}
