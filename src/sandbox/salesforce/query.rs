//! `GET /query?q=`, `GET /queryAll?q=` and `GET /query/{locator}-{offset}` (queryMore).
//! The work sits in [`run`] and [`more`], which Composite subrequests call too (with `q`
//! already decoded from the subrequest's `url`), so both paths answer alike.
//!
//! A query locator holds a cursor, not a copy of the table: for the orders the tables are
//! indexed by (none, `Id`, `SystemModstamp[, Id]`, either direction) it keeps the last
//! (key, Id) each page ended at and the next page range-scans the index from there; for
//! other orders it keeps the ordered list of matching ids (never the records). Pages hold
//! `Sforce-Query-Options: batchSize` records (200..=2000, default 2000). Every offset handed
//! out stays valid for two days (the vendor's v56+ cursor lifetime), so a client may retry a
//! page; an unknown or expired locator gets `INVALID_QUERY_LOCATOR`.
//!
//! Unlike the vendor's snapshot, a record changed between pages of a `SystemModstamp`-ordered
//! query can show up again at the end. It must not know about HTTP beyond its handlers.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};

use super::soql::{self, Query, Selected};
use super::store::{Record, Store, Table};
use super::{Reply, Salesforce, api_version, error};
use crate::sandbox::world::salesforce_id;

/// How a query walks its table.
#[derive(Clone, Debug)]
enum Walk {
    ById { descending: bool },
    ByModstamp { descending: bool },
    Listed(Arc<Vec<String>>),
}

/// Where a page starts.
#[derive(Clone, Debug)]
enum Position {
    Start,
    /// After this (key, id) of the walk's index.
    After(String, String),
    /// At this index of a listed walk.
    At(usize),
}

struct Cursor {
    query: Arc<Query>,
    all_rows: bool,
    walk: Walk,
    total: usize,
    batch: usize,
    expires: Timestamp,
    /// Offset -> where the page at that offset starts.
    positions: BTreeMap<usize, Position>,
}

impl Cursor {
    /// The cursor without its page positions, to serve one page from.
    fn view(&self) -> Cursor {
        Cursor {
            query: self.query.clone(),
            all_rows: self.all_rows,
            walk: self.walk.clone(),
            total: self.total,
            batch: self.batch,
            expires: self.expires,
            positions: BTreeMap::new(),
        }
    }
}

#[derive(Default)]
pub(crate) struct Cursors {
    next: u64,
    open: HashMap<String, Cursor>,
}

#[derive(serde::Deserialize)]
pub(crate) struct QParams {
    q: Option<String>,
}

fn batch_size(headers: &HeaderMap) -> usize {
    headers
        .get("sforce-query-options")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',').find_map(|opt| {
                let (k, n) = opt.split_once('=')?;
                (k.trim().eq_ignore_ascii_case("batchSize"))
                    .then(|| n.trim().parse::<usize>().ok())
                    .flatten()
            })
        })
        .map_or(2000, |n| n.clamp(200, 2000))
}

pub(crate) async fn query(
    State(sf): State<Salesforce>,
    Path(version): Path<String>,
    QueryParams(params): QueryParams<QParams>,
    headers: HeaderMap,
) -> Reply {
    run(&sf, &version, params.q, &headers, false)
}

pub(crate) async fn query_all(
    State(sf): State<Salesforce>,
    Path(version): Path<String>,
    QueryParams(params): QueryParams<QParams>,
    headers: HeaderMap,
) -> Reply {
    run(&sf, &version, params.q, &headers, true)
}

/// Runs one SOQL statement (already decoded from `q`) and answers its first page: the GET
/// handlers and Composite subrequests both come here. `headers` are the request's (or the
/// subrequest's `httpHeaders`), read for `Sforce-Query-Options`.
pub(crate) fn run(
    sf: &Salesforce,
    version: &str,
    q: Option<String>,
    headers: &HeaderMap,
    all_rows: bool,
) -> Reply {
    api_version(version)?;
    let endpoint = if all_rows { "queryAll" } else { "query" };
    let inner = sf.inner();
    let now = inner.clock.now();
    let Some(text) = q.filter(|q| !q.trim().is_empty()) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "MALFORMED_QUERY",
            "A query string has to be specified",
        ));
    };
    let query = soql::parse(&text, now)
        .map(Arc::new)
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.code, &e.message))?;
    let db = inner.db.lock().expect("db lock");
    let table = db
        .table(query.object.name)
        .expect("schema objects have tables");
    let walk = walk_for(&db, &query, table, all_rows);
    let matched = count(&db, &query, table, all_rows, &walk);
    let total = matched
        .saturating_sub(query.offset)
        .min(query.limit.unwrap_or(usize::MAX));
    if query.count_only {
        return Ok(
            axum::Json(json!({"totalSize": total, "done": true, "records": []})).into_response(),
        );
    }
    let cursor = Cursor {
        query,
        all_rows,
        walk,
        total,
        batch: batch_size(headers),
        expires: now + SignedDuration::from_hours(48),
        positions: BTreeMap::new(),
    };
    // Skip OFFSET rows once, so every later page starts from a plain position.
    let start = if cursor.query.offset > 0 {
        let (_, after) = page(&db, &cursor, &Position::Start, cursor.query.offset);
        after
    } else {
        Position::Start
    };
    let body = serve_page(sf, &db, &cursor, 0, start, version, endpoint, now, None);
    drop(db);
    Ok(body)
}

pub(crate) async fn query_more(
    State(sf): State<Salesforce>,
    Path((version, locator)): Path<(String, String)>,
) -> Reply {
    more(&sf, &version, &locator)
}

/// Serves the page a `nextRecordsUrl` locator (`{cursor id}-{offset}`) points at, for the
/// GET handler and for Composite subrequests.
pub(crate) fn more(sf: &Salesforce, version: &str, locator: &str) -> Reply {
    api_version(version)?;
    let inner = sf.inner();
    let now = inner.clock.now();
    let invalid = || {
        error(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
        )
    };
    let (id, offset) = locator.rsplit_once('-').ok_or_else(invalid)?;
    let offset = offset.parse::<usize>().map_err(|_| invalid())?;
    // The cursor stays registered while a page is served, so concurrent or repeated
    // requests for the same page both succeed.
    let cursors = inner.cursors.lock().expect("cursors lock");
    let open = cursors
        .open
        .get(id)
        .filter(|c| c.expires > now)
        .ok_or_else(invalid)?;
    let position = open.positions.get(&offset).cloned().ok_or_else(invalid)?;
    let cursor = open.view();
    drop(cursors);
    let endpoint = if cursor.all_rows { "queryAll" } else { "query" };
    let db = inner.db.lock().expect("db lock");
    Ok(serve_page(
        sf,
        &db,
        &cursor,
        offset,
        position,
        version,
        endpoint,
        now,
        Some(id.to_string()),
    ))
}

#[allow(clippy::too_many_arguments)]
fn serve_page(
    sf: &Salesforce,
    db: &Store,
    cursor: &Cursor,
    offset: usize,
    position: Position,
    version: &str,
    endpoint: &str,
    now: Timestamp,
    locator: Option<String>,
) -> Response {
    let want = cursor.batch.min(cursor.total.saturating_sub(offset));
    let (records, after) = page(db, cursor, &position, want);
    let next_offset = offset + records.len();
    let done = next_offset >= cursor.total || records.len() < want;
    let select = &cursor.query.select;
    let object = cursor.query.object.name;
    let rendered: Vec<Value> = records
        .iter()
        .map(|r| render(db, object, r, select, version))
        .collect();
    let mut body = json!({"totalSize": cursor.total, "done": done, "records": rendered});
    if !done {
        let mut cursors = sf.inner().cursors.lock().expect("cursors lock");
        let id = locator.unwrap_or_else(|| {
            cursors.next += 1;
            salesforce_id("01g", cursors.next)
        });
        body["nextRecordsUrl"] = json!(format!(
            "/services/data/{version}/{endpoint}/{id}-{next_offset}"
        ));
        cursors.open.retain(|_, c| c.expires > now);
        let registered = cursors.open.entry(id).or_insert_with(|| cursor.view());
        registered.positions.insert(offset, position);
        registered.positions.insert(next_offset, after);
    }
    axum::Json(body).into_response()
}

/// A record as the REST API returns it: `attributes`, then the selected fields, parent
/// fields nested under their relationship (null when the reference is empty).
pub(crate) fn render(
    db: &Store,
    object: &str,
    record: &Record,
    select: &[Selected],
    version: &str,
) -> Value {
    let mut out = Map::new();
    let id = record.get("Id").as_str().unwrap_or("");
    out.insert("attributes".into(), attributes(object, id, version));
    for s in select {
        match s {
            Selected::Field(f) => {
                out.insert((*f).to_string(), record.get(f).clone());
            }
            Selected::Parent {
                relationship,
                reference,
                object: parent_object,
                field,
            } => {
                let parent = record
                    .get(reference)
                    .as_str()
                    .and_then(|pid| db.live(parent_object.name, pid));
                let entry = out
                    .entry(relationship.clone())
                    .or_insert_with(|| match parent {
                        Some(p) => {
                            let pid = p.get("Id").as_str().unwrap_or("");
                            let mut m = Map::new();
                            m.insert(
                                "attributes".into(),
                                attributes(parent_object.name, pid, version),
                            );
                            Value::Object(m)
                        }
                        None => Value::Null,
                    });
                if let (Value::Object(m), Some(p)) = (entry, parent) {
                    m.insert((*field).to_string(), p.get(field).clone());
                }
            }
        }
    }
    Value::Object(out)
}

fn attributes(object: &str, id: &str, version: &str) -> Value {
    json!({"type": object, "url": format!("/services/data/{version}/sobjects/{object}/{id}")})
}

/// The value of one selected column (parent fields followed through their reference).
pub(crate) fn selected_value<'a>(db: &'a Store, record: &'a Record, s: &Selected) -> &'a Value {
    match s {
        Selected::Field(f) => record.get(f),
        Selected::Parent {
            reference,
            object,
            field,
            ..
        } => record
            .get(reference)
            .as_str()
            .and_then(|pid| db.live(object.name, pid))
            .map_or(&Value::Null, |p| p.get(field)),
    }
}

fn walk_for(db: &Store, query: &Query, table: &Table, all_rows: bool) -> Walk {
    let modstamp_field = if query.object.field("SystemModstamp").is_some() {
        "SystemModstamp"
    } else {
        "CreatedDate"
    };
    let order = &query.order;
    let native = match order.as_slice() {
        [] => Some(Walk::ById { descending: false }),
        [o] if o.field == "Id" => Some(Walk::ById {
            descending: o.descending,
        }),
        [o] if o.field == modstamp_field => Some(Walk::ByModstamp {
            descending: o.descending,
        }),
        [o, i] if o.field == modstamp_field && i.field == "Id" && o.descending == i.descending => {
            Some(Walk::ByModstamp {
                descending: o.descending,
            })
        }
        _ => None,
    };
    if let Some(walk) = native {
        return walk;
    }
    let mut matching: Vec<&Record> = table
        .records
        .values()
        .filter(|r| visible(db, query, r, all_rows))
        .collect();
    matching.sort_by(|a, b| soql::order_records(order, a, b));
    Walk::Listed(Arc::new(
        matching
            .into_iter()
            .map(|r| r.get("Id").as_str().unwrap_or("").to_string())
            .collect(),
    ))
}

fn visible(db: &Store, query: &Query, record: &Record, all_rows: bool) -> bool {
    (all_rows || !record.deleted)
        && query
            .filter
            .as_ref()
            .is_none_or(|f| f.matches(record, Some(db)))
}

fn count(db: &Store, query: &Query, table: &Table, all_rows: bool, walk: &Walk) -> usize {
    match walk {
        Walk::Listed(ids) => ids.len(),
        Walk::ById { .. } => table
            .records
            .values()
            .filter(|r| visible(db, query, r, all_rows))
            .count(),
        Walk::ByModstamp { .. } => {
            let field = if query.object.field("SystemModstamp").is_some() {
                "SystemModstamp"
            } else {
                "CreatedDate"
            };
            let from = query
                .filter
                .as_ref()
                .and_then(|f| f.lower_bound(field))
                .unwrap_or_default();
            table
                .by_modstamp
                .range((from, String::new())..)
                .filter_map(|(_, id)| table.records.get(id))
                .filter(|r| visible(db, query, r, all_rows))
                .count()
        }
    }
}

/// Up to `n` visible records from `position`, and the position after the last one.
fn page<'a>(
    db: &'a Store,
    cursor: &Cursor,
    position: &Position,
    n: usize,
) -> (Vec<&'a Record>, Position) {
    let query = &cursor.query;
    let table = db.table(query.object.name).expect("table");
    let all_rows = cursor.all_rows;
    let mut out = Vec::new();
    if n == 0 {
        return (out, position.clone());
    }
    let mut last = position.clone();
    let mut take = |key: &str, record: &'a Record, last: &mut Position| -> bool {
        if visible(db, query, record, all_rows) {
            *last = Position::After(
                key.to_string(),
                record.get("Id").as_str().unwrap_or("").to_string(),
            );
            out.push(record);
        }
        out.len() >= n
    };
    match &cursor.walk {
        Walk::ById { descending } => {
            let after = match position {
                Position::After(_, id) => Bound::Excluded(id.clone()),
                _ => Bound::Unbounded,
            };
            if *descending {
                for (id, r) in table.records.range((Bound::Unbounded, after)).rev() {
                    if take(id, r, &mut last) {
                        break;
                    }
                }
            } else {
                for (id, r) in table.records.range((after, Bound::Unbounded)) {
                    if take(id, r, &mut last) {
                        break;
                    }
                }
            }
        }
        Walk::ByModstamp { descending } => {
            if *descending {
                let upper = match position {
                    Position::After(k, id) => Bound::Excluded((k.clone(), id.clone())),
                    _ => Bound::Unbounded,
                };
                for (key, id) in table.by_modstamp.range((Bound::Unbounded, upper)).rev() {
                    if let Some(r) = table.records.get(id)
                        && take(key, r, &mut last)
                    {
                        break;
                    }
                }
            } else {
                let lower = match position {
                    Position::After(k, id) => Bound::Excluded((k.clone(), id.clone())),
                    _ => {
                        let field = if query.object.field("SystemModstamp").is_some() {
                            "SystemModstamp"
                        } else {
                            "CreatedDate"
                        };
                        let from = query
                            .filter
                            .as_ref()
                            .and_then(|f| f.lower_bound(field))
                            .unwrap_or_default();
                        Bound::Included((from, String::new()))
                    }
                };
                for (key, id) in table.by_modstamp.range((lower, Bound::Unbounded)) {
                    if let Some(r) = table.records.get(id)
                        && take(key, r, &mut last)
                    {
                        break;
                    }
                }
            }
        }
        Walk::Listed(ids) => {
            let start = match position {
                Position::At(i) => *i,
                _ => 0,
            };
            let mut i = start;
            while i < ids.len() && out.len() < n {
                if let Some(r) = table.records.get(&ids[i])
                    && (all_rows || !r.deleted)
                {
                    out.push(r);
                }
                i += 1;
            }
            return (out, Position::At(i));
        }
    }
    (out, last)
}
