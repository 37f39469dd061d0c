//! Bulk extract of leads and activities: create, enqueue, status, cancel, file, list.
//!
//! An activity job filters on `activityTypeIds` and optionally on the primary asset, by id
//! (`primaryAttributeValueIds`) or by name (`primaryAttributeValues`), as Adobe's Bulk
//! Activity Extract documentation has it: at most 50 of either, never both, and only with
//! `activityTypeIds` all of one asset group (lead fields: Change Data Value 13 and Change
//! Score 22; programs: Change Status in Progression 104; static lists: Add to / Remove from
//! List 24, 25; forms: Fill Out Form 2). The documentation names no error code for a misuse;
//! the sandbox answers 1003. A name is the asset's own (`2026 Customer Summit`, `Demo
//! Request`): Adobe asks for `<program>.<asset>` names of assets that live in a program, and
//! the sandbox's forms are global ones.
//!
//! Jobs go `Created -> Queued -> Processing -> Completed` (or `Failed`, or `Cancelled`); at
//! most 2 Processing at once, and at most 10 queued or processing (1029 "Too many jobs (10)
//! in queue"). Date filters are 31 days or fewer. The file is CSV with `null` literals and a
//! JSON `attributes` column, served with `Range` support (206) and a `sha256:` checksum; a
//! job not Completed gives 404 plain text. Once the day's exported bytes (500 MB by default,
//! per Central-time day) are spent, create and enqueue answer 1029 "Export daily quota ...
//! exceeded" until midnight Central.
//!
//! Two timings, chosen by [`Jobs::new`]:
//! - by observation (the default, for clients that poll in a tight loop): a queued job moves
//!   one state per status or list call;
//! - by the clock (Marketo's own: "status will not be updated more frequently than once
//!   every 60 seconds"): a job stays Queued at least one interval and until a Processing
//!   slot is free, then Processing one interval, whether or not anyone polls.
//!
//! A test can make jobs fail ([`Jobs::fail_next`]). Job time comes from the sandbox clock only.

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::activities::{Activity, ActivityIndex, parse_datetime};
use super::envelope::ApiError;
use super::leads::{self, LeadTable, format_time};

pub const MAX_QUEUED: usize = 10;
pub const MAX_PROCESSING: usize = 2;
/// Bytes of export files per Central-time day (1029 "Export daily quota" past it).
pub const DAILY_EXPORT_BYTES: u64 = 500 * 1024 * 1024;
const MAX_WINDOW_DAYS: i64 = 31;
/// Most primary attribute ids or names one activity job filters on.
const MAX_PRIMARY_ATTRIBUTES: usize = 50;
/// The activity types whose primary asset a job may filter on, by asset group.
const ASSET_GROUPS: [(&str, &[i64]); 4] = [
    ("Attribute Name", &[13, 22]),
    ("Marketing Program", &[104]),
    ("Static List", &[24, 25]),
    ("Web Form", &[2]),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Leads,
    Activities,
}

impl Target {
    pub fn from_kind(kind: &str) -> Target {
        if kind.starts_with("bulk_leads") {
            Target::Leads
        } else {
            Target::Activities
        }
    }
}

#[derive(Clone, Debug)]
pub struct Job {
    pub export_id: String,
    pub target: Target,
    pub client_id: String,
    pub status: &'static str,
    pub created_at: Timestamp,
    pub queued_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub fields: Vec<String>,
    pub window: (Timestamp, Timestamp),
    /// Which lead date the window filters on (`createdAt` or `updatedAt`).
    pub window_field: &'static str,
    pub type_ids: Vec<i64>,
    pub primary_ids: Vec<i64>,
    pub primary_values: Vec<String>,
    pub file: Option<Vec<u8>>,
    /// `sha256:<hex>` of the file, taken once when it is written.
    pub checksum: Option<String>,
    pub records: usize,
    /// Why a Failed job failed (`errorMsg`).
    pub error_msg: Option<String>,
}

impl Job {
    pub fn record(&self) -> Value {
        let mut v = json!({"exportId": self.export_id, "format": "CSV", "status": self.status,
                           "createdAt": format_time(self.created_at)});
        for (key, at) in [
            ("queuedAt", self.queued_at),
            ("startedAt", self.started_at),
            ("finishedAt", self.finished_at),
        ] {
            if let Some(at) = at {
                v[key] = json!(format_time(at));
            }
        }
        if let Some(file) = &self.file {
            v["numberOfRecords"] = json!(self.records);
            v["fileSize"] = json!(file.len());
            v["fileChecksum"] = json!(self.checksum);
        }
        if let Some(message) = &self.error_msg {
            v["errorMsg"] = json!(message);
        }
        v
    }
}

/// Jobs a test has told to fail: the next `skip` jobs to finish complete, the `times` after
/// them fail with `message`.
#[derive(Clone, Debug)]
struct Failures {
    skip: u32,
    times: u32,
    message: String,
}

#[derive(Debug)]
pub struct Jobs {
    pub jobs: Vec<Job>,
    created: u64,
    /// File bytes exported per quota day.
    exported: std::collections::BTreeMap<jiff::civil::Date, u64>,
    /// `None`: a job moves one state per status or list call. `Some(d)`: by the clock, at
    /// most one state per `d`, as Marketo updates a job's status at most once a minute.
    status_interval: Option<SignedDuration>,
    /// Bytes of export files allowed per Central-time day.
    daily_bytes: u64,
    failures: Option<Failures>,
    /// The instant of the last state change made by the clock (a slot freed then).
    last_event: Option<Timestamp>,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs::new(None, DAILY_EXPORT_BYTES)
    }
}

const ACTIVITY_FIELDS: [&str; 8] = [
    "marketoGUID",
    "leadId",
    "activityDate",
    "activityTypeId",
    "campaignId",
    "primaryAttributeValueId",
    "primaryAttributeValue",
    "attributes",
];

impl Jobs {
    /// Jobs timed by observation (`status_interval` `None`) or by the clock, with a daily
    /// export allowance of `daily_bytes`.
    pub fn new(status_interval: Option<SignedDuration>, daily_bytes: u64) -> Self {
        Jobs {
            jobs: Vec::new(),
            created: 0,
            exported: Default::default(),
            status_interval,
            daily_bytes,
            failures: None,
            last_event: None,
        }
    }

    /// The next `skip` jobs to finish complete; the `times` after them fail with `message`.
    pub fn fail_next(&mut self, skip: u32, times: u32, message: &str) {
        self.failures = Some(Failures {
            skip,
            times,
            message: message.to_string(),
        });
    }

    /// 1029 "Export daily quota ... exceeded" once today's files reach the allowance: no job
    /// may be created or enqueued until midnight Central.
    fn quota_spent(&self, now: Timestamp) -> Option<ApiError> {
        let used = self
            .exported
            .get(&super::limits::quota_day(now))
            .copied()
            .unwrap_or(0);
        (used >= self.daily_bytes).then(|| {
            ApiError::new(
                "1029",
                format!(
                    "Export daily quota {}MB exceeded",
                    self.daily_bytes.div_ceil(1024 * 1024)
                ),
            )
        })
    }

    pub fn create(
        &mut self,
        target: Target,
        client_id: &str,
        body: &Value,
        now: Timestamp,
    ) -> Result<Job, ApiError> {
        let filter = &body["filter"];
        let window_field = match target {
            Target::Leads if filter["createdAt"].is_null() => "updatedAt",
            _ => "createdAt",
        };
        let range = &filter[window_field];
        if range.is_null() {
            return Err(match target {
                Target::Activities => ApiError::new("1003", "createdAt filter is required"),
                Target::Leads => ApiError::new(
                    "1035",
                    "Unsupported filter type for target subscription: only createdAt and updatedAt are served",
                ),
            });
        }
        let start = parse_datetime(range["startAt"].as_str().unwrap_or(""))?;
        let end = parse_datetime(range["endAt"].as_str().unwrap_or(""))?;
        if end < start {
            return Err(ApiError::new("1003", "endAt is before startAt"));
        }
        if end.duration_since(start) > SignedDuration::from_hours(24 * MAX_WINDOW_DAYS) {
            return Err(ApiError::new(
                "1003",
                format!("Date range exceeds {MAX_WINDOW_DAYS} days"),
            ));
        }
        let list = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let ints = |v: &Value| -> Vec<i64> {
            v.as_array()
                .map(|a| a.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default()
        };
        let mut fields = list(&body["fields"]);
        if let Some(spent) = self.quota_spent(now) {
            return Err(spent);
        }
        match target {
            Target::Leads => {
                if fields.is_empty() {
                    return Err(ApiError::new("1003", "fields cannot be blank"));
                }
                if let Some(bad) = fields.iter().find(|f| leads::field(f).is_none()) {
                    return Err(ApiError::new("1006", format!("Field '{bad}' not found")));
                }
            }
            Target::Activities => {
                check_primary_filter(
                    &ints(&filter["activityTypeIds"]),
                    ints(&filter["primaryAttributeValueIds"]).len(),
                    list(&filter["primaryAttributeValues"]).len(),
                )?;
                if fields.is_empty() {
                    fields = ACTIVITY_FIELDS.iter().map(|s| s.to_string()).collect();
                }
                if let Some(bad) = fields
                    .iter()
                    .find(|f| !ACTIVITY_FIELDS.contains(&f.as_str()) && *f != "actionResult")
                {
                    return Err(ApiError::new("1003", format!("Invalid field '{bad}'")));
                }
            }
        }
        self.created += 1;
        let hex = format!(
            "{:032x}",
            u128::from(self.created).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
        );
        let job = Job {
            export_id: format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            ),
            target,
            client_id: client_id.to_string(),
            status: "Created",
            created_at: now,
            queued_at: None,
            started_at: None,
            finished_at: None,
            fields,
            window: (start, end),
            window_field,
            type_ids: ints(&filter["activityTypeIds"]),
            primary_ids: ints(&filter["primaryAttributeValueIds"]),
            primary_values: list(&filter["primaryAttributeValues"]),
            file: None,
            checksum: None,
            records: 0,
            error_msg: None,
        };
        self.jobs.push(job.clone());
        Ok(job)
    }

    fn find(&mut self, target: Target, client_id: &str, id: &str) -> Result<usize, ApiError> {
        self.jobs
            .iter()
            .position(|j| j.export_id == id && j.target == target && j.client_id == client_id)
            .ok_or_else(|| ApiError::new("1003", format!("Export id '{id}' not found")))
    }

    pub fn enqueue(
        &mut self,
        target: Target,
        client_id: &str,
        id: &str,
        now: Timestamp,
    ) -> Result<Job, ApiError> {
        let i = self.find(target, client_id, id)?;
        if self.jobs[i].status != "Created" {
            return Err(ApiError::new("1029", "Job already queued"));
        }
        if let Some(spent) = self.quota_spent(now) {
            return Err(spent);
        }
        let queued = self
            .jobs
            .iter()
            .filter(|j| j.status == "Queued" || j.status == "Processing")
            .count();
        if queued >= MAX_QUEUED {
            return Err(ApiError::new(
                "1029",
                format!("Too many jobs ({MAX_QUEUED}) in queue"),
            ));
        }
        self.jobs[i].status = "Queued";
        self.jobs[i].queued_at = Some(now);
        Ok(self.jobs[i].clone())
    }

    pub fn cancel(
        &mut self,
        target: Target,
        client_id: &str,
        id: &str,
        now: Timestamp,
    ) -> Result<Job, ApiError> {
        let i = self.find(target, client_id, id)?;
        if matches!(self.jobs[i].status, "Completed" | "Failed") {
            return Err(ApiError::new(
                "1003",
                format!("Job already {}", self.jobs[i].status),
            ));
        }
        if self.jobs[i].status == "Processing" {
            self.last_event = Some(now); // its slot is free from now on
        }
        self.jobs[i].status = "Cancelled";
        self.jobs[i].finished_at = Some(now);
        Ok(self.jobs[i].clone())
    }

    /// Before a status or list call: jobs move on (one state, or as far as the clock says).
    pub fn observe(&mut self, leads: &LeadTable, activities: &ActivityIndex, now: Timestamp) {
        match self.status_interval {
            None => self.step_once(leads, activities, now),
            Some(interval) => self.run_clock(interval, leads, activities, now),
        }
    }

    /// Before any other bulk call: jobs timed by the clock catch up with it (a job timed by
    /// observation waits to be observed).
    pub fn settle(&mut self, leads: &LeadTable, activities: &ActivityIndex, now: Timestamp) {
        if let Some(interval) = self.status_interval {
            self.run_clock(interval, leads, activities, now);
        }
    }

    /// Moves every queued or processing job one state on.
    fn step_once(&mut self, leads: &LeadTable, activities: &ActivityIndex, now: Timestamp) {
        for i in 0..self.jobs.len() {
            match self.jobs[i].status {
                "Processing" => self.finish(i, leads, activities, now),
                "Queued" => {
                    let processing = self
                        .jobs
                        .iter()
                        .filter(|j| j.status == "Processing")
                        .count();
                    if processing < MAX_PROCESSING {
                        self.jobs[i].status = "Processing";
                        self.jobs[i].started_at = Some(now);
                    }
                }
                _ => {}
            }
        }
    }

    /// Applies, in time order, every state change due by `now`: a Processing job finishes
    /// `interval` after it started; the oldest Queued job starts `interval` after it was
    /// queued, or when a slot frees, whichever is later.
    fn run_clock(
        &mut self,
        interval: SignedDuration,
        leads: &LeadTable,
        activities: &ActivityIndex,
        now: Timestamp,
    ) {
        loop {
            let due = |at: Option<Timestamp>| at.map(|t| t + interval);
            let finish = (self.jobs.iter().enumerate())
                .filter(|(_, j)| j.status == "Processing")
                .filter_map(|(i, j)| Some((due(j.started_at)?, i)))
                .min();
            let processing = self.jobs.iter().filter(|j| j.status == "Processing");
            let start = if processing.count() < MAX_PROCESSING {
                (self.jobs.iter().enumerate())
                    .filter(|(_, j)| j.status == "Queued")
                    .filter_map(|(i, j)| Some((j.queued_at?, i)))
                    .min()
                    .map(|(queued, i)| {
                        let at = queued + interval;
                        (self.last_event.map_or(at, |freed| at.max(freed)), i)
                    })
            } else {
                None
            };
            // At the same instant a finish goes first: it frees the slot the start takes.
            let (at, i, finishing) = match (finish, start) {
                (Some(f), Some(s)) if s.0 < f.0 => (s.0, s.1, false),
                (Some(f), _) => (f.0, f.1, true),
                (None, Some(s)) => (s.0, s.1, false),
                (None, None) => break,
            };
            if at > now {
                break;
            }
            if finishing {
                self.finish(i, leads, activities, at);
            } else {
                self.jobs[i].status = "Processing";
                self.jobs[i].started_at = Some(at);
            }
            self.last_event = Some(at);
        }
    }

    /// A Processing job ends at `at`: Completed with its file (counted against that day's
    /// export allowance), or Failed when a test said so.
    fn finish(&mut self, i: usize, leads: &LeadTable, activities: &ActivityIndex, at: Timestamp) {
        let fail = match &mut self.failures {
            Some(f) if f.skip > 0 => {
                f.skip -= 1;
                None
            }
            Some(f) if f.times > 0 => {
                f.times -= 1;
                Some(f.message.clone())
            }
            _ => None,
        };
        let job = &mut self.jobs[i];
        job.finished_at = Some(at);
        if let Some(message) = fail {
            job.status = "Failed";
            job.error_msg = Some(message);
            return;
        }
        let (file, records) = build_file(job, leads, activities);
        *self
            .exported
            .entry(super::limits::quota_day(at))
            .or_insert(0) += file.len() as u64;
        job.checksum = Some(format!("sha256:{}", sha256_hex(&file)));
        job.file = Some(file);
        job.records = records;
        job.status = "Completed";
    }

    pub fn status(&mut self, target: Target, client_id: &str, id: &str) -> Result<Job, ApiError> {
        let i = self.find(target, client_id, id)?;
        Ok(self.jobs[i].clone())
    }

    /// The file of a Completed job, or `None` (404).
    pub fn file(&self, target: Target, client_id: &str, id: &str) -> Option<&[u8]> {
        self.jobs
            .iter()
            .find(|j| {
                j.export_id == id
                    && j.target == target
                    && j.client_id == client_id
                    && j.status == "Completed"
            })
            .and_then(|j| j.file.as_deref())
    }

    /// Jobs of this client from the past 7 days, optionally by status (either spelling of
    /// the cancelled state), at most `batch_size` (default and most 300).
    pub fn list(
        &self,
        target: Target,
        client_id: &str,
        statuses: &[String],
        batch_size: Option<usize>,
        now: Timestamp,
    ) -> Vec<Value> {
        let since = now - SignedDuration::from_hours(24 * 7);
        let named = |s: &String, status: &str| {
            s.eq_ignore_ascii_case(status)
                || (status == "Cancelled" && s.eq_ignore_ascii_case("Canceled"))
        };
        self.jobs
            .iter()
            .filter(|j| j.target == target && j.client_id == client_id && j.created_at >= since)
            .filter(|j| statuses.is_empty() || statuses.iter().any(|s| named(s, j.status)))
            .take(batch_size.unwrap_or(300).clamp(1, 300))
            .map(Job::record)
            .collect()
    }
}

/// The primary attribute filters of an activity job, checked as the documentation states them.
fn check_primary_filter(type_ids: &[i64], ids: usize, names: usize) -> Result<(), ApiError> {
    if ids == 0 && names == 0 {
        return Ok(());
    }
    if ids > 0 && names > 0 {
        return Err(ApiError::new(
            "1003",
            "primaryAttributeValueIds and primaryAttributeValues cannot be used together",
        ));
    }
    let (filter, count) = if ids > 0 {
        ("primaryAttributeValueIds", ids)
    } else {
        ("primaryAttributeValues", names)
    };
    if count > MAX_PRIMARY_ATTRIBUTES {
        return Err(ApiError::new(
            "1003",
            format!("{filter} takes at most {MAX_PRIMARY_ATTRIBUTES} values, got {count}"),
        ));
    }
    let group = |t: &i64| ASSET_GROUPS.iter().find(|(_, types)| types.contains(t));
    match type_ids.first().and_then(group) {
        Some((_, types)) if type_ids.iter().all(|t| types.contains(t)) => Ok(()),
        _ => Err(ApiError::new(
            "1003",
            format!(
                "{filter} needs activityTypeIds of one asset group ({}), got {type_ids:?}",
                ASSET_GROUPS
                    .iter()
                    .map(|(name, types)| format!("{name}: {types:?}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        )),
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn build_file(job: &Job, leads: &LeadTable, activities: &ActivityIndex) -> (Vec<u8>, usize) {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(&job.fields).expect("in-memory csv");
    let (start, end) = job.window;
    let mut records = 0;
    match job.target {
        Target::Leads => {
            for lead in leads.by_id.values() {
                let at = lead
                    .get(job.window_field)
                    .as_str()
                    .and_then(|t| t.parse::<Timestamp>().ok());
                if at.is_some_and(|at| at >= start && at <= end) {
                    let row: Vec<String> = job.fields.iter().map(|f| cell(lead.get(f))).collect();
                    out.write_record(&row).expect("in-memory csv");
                    records += 1;
                }
            }
        }
        Target::Activities => {
            let from = activities.entries.partition_point(|a| a.at < start);
            for a in activities.entries[from..]
                .iter()
                .take_while(|a| a.at <= end)
            {
                if !job.type_ids.is_empty() && !job.type_ids.contains(&a.type_id) {
                    continue;
                }
                if !job.primary_ids.is_empty()
                    && !a.primary_id.is_some_and(|p| job.primary_ids.contains(&p))
                {
                    continue;
                }
                if !job.primary_values.is_empty()
                    && !a
                        .primary_value()
                        .is_some_and(|v| job.primary_values.contains(&v))
                {
                    continue;
                }
                let row: Vec<String> = job.fields.iter().map(|f| activity_cell(a, f)).collect();
                out.write_record(&row).expect("in-memory csv");
                records += 1;
            }
        }
    }
    (out.into_inner().expect("in-memory csv"), records)
}

fn activity_cell(a: &Activity, field: &str) -> String {
    match field {
        "marketoGUID" => a.id.to_string(),
        "leadId" => a.lead_id.to_string(),
        "activityDate" => format_time(a.at),
        "activityTypeId" => a.type_id.to_string(),
        "campaignId" => a.campaign_id.map_or("null".into(), |c| c.to_string()),
        "primaryAttributeValueId" => a.primary_id.map_or("null".into(), |c| c.to_string()),
        "primaryAttributeValue" => a.primary_value().unwrap_or_else(|| "null".into()),
        "attributes" => {
            let map: serde_json::Map<String, Value> = a
                .attributes()
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            Value::Object(map).to_string()
        }
        _ => "null".into(),
    }
}

/// SHA-256 (FIPS 180-4), for `fileChecksum`; small enough not to need a crate.
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_digests() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
