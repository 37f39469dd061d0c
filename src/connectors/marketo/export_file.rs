//! A downloaded bulk export file of one window, read one record at a time: activity rows as
//! [`Activity`], lead rows as [`Record`] maps of the requested fields.
//!
//! The file is Marketo's CSV: a header row naming the fields, empty values as the literal
//! `null` (an empty cell is read as null too), and for activities an `attributes` column
//! holding a JSON object (`{"New Value":45,"Reason":"..."}`). NUL bytes, which real exports
//! have carried, are dropped before parsing. Rows whose date falls outside the window's
//! `[start, end)` are skipped: Adobe does not say whether `endAt` is inclusive, so a record on
//! the seam of two windows is handed out once either way. At the end the rows read are
//! checked against the job's `numberOfRecords`.
//!
//! This file must not hold a whole file in memory, and must not know MQL semantics. The file
//! on disk is removed when its [`WindowFile`] is dropped.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;

use serde_json::Value;

use super::bulk::ExportKind;
use super::extract::{ExtractError, Window};
use super::{Activity, Attribute, parse_datetime};
use crate::connectors::Record;

/// The columns of an activity export, in the order the runner asks for them.
pub const ACTIVITY_COLUMNS: [&str; 8] = [
    "marketoGUID",
    "leadId",
    "activityDate",
    "activityTypeId",
    "campaignId",
    "primaryAttributeValueId",
    "primaryAttributeValue",
    "attributes",
];

/// The lead field a lead export's window filters on; always exported so rows can be kept to
/// the window.
pub const LEAD_WINDOW_FIELD: &str = "createdAt";

/// The verified file of one window's export job. Read it with [`WindowFile::activities`] or
/// [`WindowFile::leads`] (each opens the file anew); dropping it removes the file.
#[derive(Debug)]
pub struct WindowFile {
    pub window: Window,
    pub export_id: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// The job's `numberOfRecords`, when Marketo gave it.
    pub number_of_records: Option<u64>,
    kind: ExportKind,
    /// Lead exports: the fields the caller asked for, in its order.
    fields: Vec<String>,
}

impl WindowFile {
    pub(super) fn new(
        window: Window,
        export_id: String,
        path: PathBuf,
        bytes: u64,
        number_of_records: Option<u64>,
        kind: ExportKind,
        fields: Vec<String>,
    ) -> Self {
        WindowFile {
            window,
            export_id,
            path,
            bytes,
            number_of_records,
            kind,
            fields,
        }
    }

    /// The activities of an activity export, in file order.
    pub fn activities(&self) -> Result<ActivityRows, ExtractError> {
        self.expect(ExportKind::Activities)?;
        let csv = Rows::open(self)?;
        let column = |name: &str| csv.column(name);
        let required = |name: &str| {
            column(name).ok_or_else(|| csv.error(format!("the header has no {name} column")))
        };
        let columns = ActivityColumns {
            guid: required("marketoGUID")?,
            lead_id: required("leadId")?,
            date: required("activityDate")?,
            type_id: required("activityTypeId")?,
            campaign_id: column("campaignId"),
            primary_id: column("primaryAttributeValueId"),
            primary_value: column("primaryAttributeValue"),
            attributes: column("attributes"),
        };
        Ok(ActivityRows { csv, columns })
    }

    /// The leads of a lead export, each a map of the requested fields (null where empty), in
    /// file order.
    pub fn leads(&self) -> Result<LeadRows, ExtractError> {
        self.expect(ExportKind::Leads)?;
        let csv = Rows::open(self)?;
        let created = csv
            .column(LEAD_WINDOW_FIELD)
            .ok_or_else(|| csv.error(format!("the header has no {LEAD_WINDOW_FIELD} column")))?;
        let fields = self
            .fields
            .iter()
            .map(|f| {
                csv.column(f)
                    .map(|i| (f.clone(), i))
                    .ok_or_else(|| csv.error(format!("the header has no {f} column")))
            })
            .collect::<Result<_, _>>()?;
        Ok(LeadRows {
            csv,
            created,
            fields,
        })
    }

    fn expect(&self, kind: ExportKind) -> Result<(), ExtractError> {
        if self.kind == kind {
            return Ok(());
        }
        Err(ExtractError::Settings(format!(
            "the file of {} holds {}, not {}",
            self.window,
            self.kind.segment(),
            kind.segment()
        )))
    }
}

impl Drop for WindowFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Drops NUL bytes before the CSV reader sees them.
struct NulFree<R>(R);

impl<R: Read> Read for NulFree<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.0.read(buf)?;
            if n == 0 {
                return Ok(0);
            }
            // Almost every buffer has none: one scan, no copy.
            if !buf[..n].contains(&0) {
                return Ok(n);
            }
            let mut kept = 0;
            for i in 0..n {
                if buf[i] != 0 {
                    buf[kept] = buf[i];
                    kept += 1;
                }
            }
            if kept > 0 {
                return Ok(kept);
            }
        }
    }
}

/// The CSV reader of one file, one reused record, and what errors name.
struct Rows {
    reader: csv::Reader<NulFree<BufReader<File>>>,
    headers: csv::StringRecord,
    record: csv::StringRecord,
    window: Window,
    export_id: String,
    path: PathBuf,
    expected: Option<u64>,
    read: u64,
    /// Rows outside the window, skipped.
    skipped: u64,
    done: bool,
}

impl Rows {
    fn open(file: &WindowFile) -> Result<Rows, ExtractError> {
        let opened = File::open(&file.path).map_err(|error| ExtractError::Io {
            what: "read",
            path: file.path.clone(),
            error,
        })?;
        let mut rows = Rows {
            reader: csv::ReaderBuilder::new()
                .has_headers(true)
                .from_reader(NulFree(BufReader::with_capacity(64 * 1024, opened))),
            headers: csv::StringRecord::new(),
            record: csv::StringRecord::new(),
            window: file.window.clone(),
            export_id: file.export_id.clone(),
            path: file.path.clone(),
            expected: file.number_of_records,
            read: 0,
            skipped: 0,
            done: false,
        };
        rows.headers = match rows.reader.headers() {
            Ok(headers) => headers.clone(),
            Err(e) => return Err(rows.error(format!("the header cannot be read: {e}"))),
        };
        Ok(rows)
    }

    fn column(&self, name: &str) -> Option<usize> {
        self.headers.iter().position(|h| h == name)
    }

    fn error(&self, detail: String) -> ExtractError {
        ExtractError::Row {
            window: self.window.clone(),
            export_id: self.export_id.clone(),
            path: self.path.clone(),
            line: self.record.position().map_or(1, |p| p.line()),
            detail,
        }
    }

    /// Reads the next record into `self.record`: `Ok(true)`, or `Ok(false)` at the end once
    /// the count is checked.
    fn advance(&mut self) -> Result<bool, ExtractError> {
        if self.done {
            return Ok(false);
        }
        match self.reader.read_record(&mut self.record) {
            Ok(true) => {
                self.read += 1;
                Ok(true)
            }
            Ok(false) => {
                self.done = true;
                match self.expected {
                    Some(expected) if expected != self.read => Err(ExtractError::RecordCount {
                        window: self.window.clone(),
                        export_id: self.export_id.clone(),
                        expected,
                        read: self.read,
                    }),
                    _ => Ok(false),
                }
            }
            Err(e) => {
                self.done = true;
                Err(self.error(format!("not a CSV record: {e}")))
            }
        }
    }

    /// The cell at `column`; `None` when absent, empty or the literal `null`.
    fn cell(&self, column: Option<usize>) -> Option<&str> {
        column
            .and_then(|i| self.record.get(i))
            .filter(|v| !v.is_empty() && *v != "null")
    }

    fn required(&self, column: usize, name: &str) -> Result<&str, ExtractError> {
        self.cell(Some(column))
            .ok_or_else(|| self.error(format!("{name} is empty")))
    }

    fn number<T: std::str::FromStr>(&self, column: usize, name: &str) -> Result<T, ExtractError> {
        let text = self.required(column, name)?;
        text.trim()
            .parse()
            .map_err(|_| self.error(format!("{name} {text:?} is not a number")))
    }

    fn in_window(&self, at: jiff::Timestamp) -> bool {
        self.window.start <= at && at < self.window.end
    }
}

struct ActivityColumns {
    guid: usize,
    lead_id: usize,
    date: usize,
    type_id: usize,
    campaign_id: Option<usize>,
    primary_id: Option<usize>,
    primary_value: Option<usize>,
    attributes: Option<usize>,
}

/// The activities of one file, one at a time; an `Err` item ends the iteration.
pub struct ActivityRows {
    csv: Rows,
    columns: ActivityColumns,
}

impl ActivityRows {
    /// Rows read so far that fell outside the window (handed out by the neighbouring window).
    pub fn skipped(&self) -> u64 {
        self.csv.skipped
    }

    /// The next activity's date alone (the rest of the row is not parsed), for a pass that
    /// only checks the file's order; rows outside the window are skipped as by `next`.
    pub fn next_date(&mut self) -> Option<Result<jiff::Timestamp, ExtractError>> {
        loop {
            match self.csv.advance() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
            let csv = &self.csv;
            let date = match csv.required(self.columns.date, "activityDate") {
                Ok(date) => date,
                Err(e) => return Some(Err(e)),
            };
            match parse_datetime(date) {
                Some(at) if csv.in_window(at) => return Some(Ok(at)),
                Some(_) => self.csv.skipped += 1,
                None => {
                    let e = csv.error(format!("activityDate {date:?} is not a date"));
                    self.csv.done = true;
                    return Some(Err(e));
                }
            }
        }
    }

    fn parse(&self) -> Result<Activity, ExtractError> {
        let (csv, c) = (&self.csv, &self.columns);
        let date = csv.required(c.date, "activityDate")?;
        let activity_date = parse_datetime(date)
            .ok_or_else(|| csv.error(format!("activityDate {date:?} is not a date")))?;
        let campaign_id = match csv.cell(c.campaign_id) {
            None => None,
            Some(text) => Some(
                text.trim()
                    .parse()
                    .map_err(|_| csv.error(format!("campaignId {text:?} is not a number")))?,
            ),
        };
        let primary_attribute_value_id = csv.cell(c.primary_id).map(|text| {
            text.trim()
                .parse::<i64>()
                .map_or_else(|_| Value::String(text.to_string()), Value::from)
        });
        let attributes = match csv.cell(c.attributes) {
            None => Vec::new(),
            Some(text) => attributes(text).map_err(|e| csv.error(e))?,
        };
        Ok(Activity {
            id: None,
            marketo_guid: csv.required(c.guid, "marketoGUID")?.to_string(),
            lead_id: csv.number(c.lead_id, "leadId")?,
            activity_date,
            activity_type_id: csv.number(c.type_id, "activityTypeId")?,
            campaign_id,
            primary_attribute_value_id,
            primary_attribute_value: csv.cell(c.primary_value).map(str::to_string),
            attributes,
            fields: Vec::new(),
        })
    }
}

/// The `attributes` cell: a JSON object of name to value (the REST API's `[{name, value}]`
/// array is taken too), read straight into the list (a map of a dozen allocations a row was
/// a tenth of a backfill's replay). A cell that does not read is read again as a value, for
/// an error that says what it is.
fn attributes(text: &str) -> Result<Vec<Attribute>, String> {
    serde_json::from_str::<AttributeList>(text)
        .map(|AttributeList(list)| list)
        .map_err(|e| match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(_) | Value::Object(_)) => {
                format!("attributes is not a list of name and value: {e}")
            }
            Ok(other) => format!("attributes is not a JSON object: {other}"),
            Err(e) => format!("attributes is not JSON: {e}"),
        })
}

/// An `attributes` cell's pairs, in the order written, from an object or a list of `{name,
/// value}`.
struct AttributeList(Vec<Attribute>);

impl<'de> serde::Deserialize<'de> for AttributeList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> serde::de::Visitor<'de> for Pairs {
            type Value = AttributeList;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of attributes or a list of name and value")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut list = Vec::with_capacity(map.size_hint().unwrap_or(6));
                while let Some((name, value)) = map.next_entry::<String, Value>()? {
                    // A name written twice keeps its last value, as a JSON object read whole.
                    match list.iter_mut().find(|a: &&mut Attribute| a.name == name) {
                        Some(seen) => seen.value = value,
                        None => list.push(Attribute { name, value }),
                    }
                }
                Ok(AttributeList(list))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(6));
                while let Some(attribute) = seq.next_element::<Attribute>()? {
                    list.push(attribute);
                }
                Ok(AttributeList(list))
            }
        }
        d.deserialize_any(Pairs)
    }
}

impl Iterator for ActivityRows {
    type Item = Result<Activity, ExtractError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.csv.advance() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
            match self.parse() {
                Ok(a) if !self.csv.in_window(a.activity_date) => self.csv.skipped += 1,
                Ok(a) => return Some(Ok(a)),
                Err(e) => {
                    self.csv.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The leads of one file, one at a time; an `Err` item ends the iteration.
pub struct LeadRows {
    csv: Rows,
    created: usize,
    fields: Vec<(String, usize)>,
}

impl LeadRows {
    /// Rows read so far that fell outside the window (handed out by the neighbouring window).
    pub fn skipped(&self) -> u64 {
        self.csv.skipped
    }

    fn parse(&self) -> Result<Option<Record>, ExtractError> {
        let csv = &self.csv;
        let created = csv.required(self.created, LEAD_WINDOW_FIELD)?;
        let at = parse_datetime(created)
            .ok_or_else(|| csv.error(format!("{LEAD_WINDOW_FIELD} {created:?} is not a date")))?;
        if !csv.in_window(at) {
            return Ok(None);
        }
        Ok(Some(
            self.fields
                .iter()
                .map(|(name, i)| {
                    let value = csv
                        .cell(Some(*i))
                        .map_or(Value::Null, |v| Value::String(v.to_string()));
                    (name.clone(), value)
                })
                .collect(),
        ))
    }
}

impl Iterator for LeadRows {
    type Item = Result<Record, ExtractError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.csv.advance() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
            match self.parse() {
                Ok(Some(lead)) => return Some(Ok(lead)),
                Ok(None) => self.csv.skipped += 1,
                Err(e) => {
                    self.csv.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn window() -> Window {
        Window {
            index: 2,
            start: "2026-10-01T00:00:00Z".parse().unwrap(),
            end: "2026-11-01T00:00:00Z".parse().unwrap(),
        }
    }

    fn file(
        dir: &tempfile::TempDir,
        kind: ExportKind,
        text: &[u8],
        records: Option<u64>,
    ) -> WindowFile {
        let path = dir.path().join("export.csv");
        std::fs::write(&path, text).unwrap();
        let fields = vec!["id".into(), "email".into(), "leadScore".into()];
        WindowFile::new(
            window(),
            "e-1".into(),
            path,
            text.len() as u64,
            records,
            kind,
            fields,
        )
    }

    const HEADER: &str = "marketoGUID,leadId,activityDate,activityTypeId,campaignId,primaryAttributeValueId,primaryAttributeValue,attributes\n";

    #[test]
    fn an_attributes_cell_reads_as_an_object_or_a_list_and_says_what_it_is_otherwise() {
        let pairs = |list: Vec<Attribute>| -> Vec<(String, Value)> {
            list.into_iter().map(|a| (a.name, a.value)).collect()
        };
        assert_eq!(
            pairs(attributes(r#"{"New Value":45,"Reason":"x","New Value":50}"#).unwrap()),
            [
                ("New Value".into(), json!(50)),
                ("Reason".into(), json!("x"))
            ],
            "written order, the last of a name written twice"
        );
        assert_eq!(
            pairs(attributes(r#"[{"name":"Old Value","value":"35"},{"name":"Source"}]"#).unwrap()),
            [
                ("Old Value".into(), json!("35")),
                ("Source".into(), Value::Null)
            ]
        );
        assert!(
            attributes("7")
                .unwrap_err()
                .starts_with("attributes is not a JSON object")
        );
        assert!(
            attributes("{")
                .unwrap_err()
                .starts_with("attributes is not JSON")
        );
        assert!(
            attributes(r#"[{"value":1}]"#)
                .unwrap_err()
                .starts_with("attributes is not a list of name and value")
        );
    }

    #[test]
    fn activity_rows_read_nulls_json_attributes_and_keep_to_the_window() {
        let dir = tempfile::tempdir().unwrap();
        // A JSON object in a quoted cell, its quotes doubled, as Marketo writes it.
        let json = r#"{"New Value":45,"Old Value":35,"Reason":"Changed by \"Webinar\""}"#;
        let cell = format!("\"{}\"", json.replace('"', "\"\""));
        let text = format!(
            "{HEADER}\
             900,7,2026-09-30T23:59:59Z,22,1001,58,Lead Score,null\n\
             901,7,2026-10-01T00:00:00Z,22,1001,58,Lead Score,{cell}\n\
             902,8,2026-10-15T10:00:00+0000,22,null,,null,\n\
             9\x0003,9,2026-10-31T23:59:59Z,22,1002,58,Lead Score,{{}}\n\
             904,9,2026-11-01T00:00:00Z,22,1002,58,Lead Score,{{}}\n"
        );
        let file = file(&dir, ExportKind::Activities, text.as_bytes(), Some(5));
        let mut rows = file.activities().unwrap();
        let read: Vec<Activity> = rows.by_ref().map(Result::unwrap).collect();
        let guids: Vec<&str> = read.iter().map(|a| a.marketo_guid.as_str()).collect();
        assert_eq!(
            guids,
            ["901", "902", "903"],
            "start kept, end left to the next window, NUL dropped"
        );
        assert_eq!(rows.skipped(), 2);
        let a = &read[0];
        assert_eq!(
            (a.lead_id, a.activity_type_id, a.campaign_id),
            (7, 22, Some(1001))
        );
        assert_eq!(a.primary_attribute_value_id, Some(json!(58)));
        assert_eq!(a.primary_attribute_value.as_deref(), Some("Lead Score"));
        let attribute = |name: &str| {
            a.attributes
                .iter()
                .find(|x| x.name == name)
                .unwrap()
                .value
                .clone()
        };
        assert_eq!(attribute("New Value"), json!(45));
        assert_eq!(attribute("Reason"), json!("Changed by \"Webinar\""));
        let b = &read[1];
        assert_eq!(b.activity_date.to_string(), "2026-10-15T10:00:00Z");
        assert_eq!(
            (
                b.campaign_id,
                &b.primary_attribute_value_id,
                &b.primary_attribute_value
            ),
            (None, &None, &None)
        );
        assert!(b.attributes.is_empty());
        // The file is removed with its handle.
        let path = file.path.clone();
        drop(rows);
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn a_row_that_cannot_be_used_names_the_file_line_and_window() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{HEADER}901,7,2026-10-02T00:00:00Z,22,1,58,Lead Score,{{}}\n902,seven,2026-10-02T00:00:00Z,22,1,58,Lead Score,{{}}\n"
        );
        let file = file(&dir, ExportKind::Activities, text.as_bytes(), None);
        let mut rows = file.activities().unwrap();
        assert!(rows.next().unwrap().is_ok());
        let error = rows.next().unwrap().unwrap_err().to_string();
        assert!(
            error.contains("export.csv: line 3: leadId \"seven\" is not a number")
                && error.contains(
                    "export job e-1, window 2 (2026-10-01T00:00:00Z to 2026-11-01T00:00:00Z)"
                ),
            "{error}"
        );
        assert!(rows.next().is_none(), "an error ends the rows");
    }

    #[test]
    fn fewer_rows_than_the_job_counted_is_an_error_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{HEADER}901,7,2026-10-02T00:00:00Z,22,1,58,Lead Score,{{}}\n");
        let file = file(&dir, ExportKind::Activities, text.as_bytes(), Some(2));
        let rows: Vec<_> = file.activities().unwrap().collect();
        assert!(rows[0].is_ok());
        let error = rows[1].as_ref().unwrap_err();
        assert!(
            matches!(
                error,
                ExtractError::RecordCount {
                    expected: 2,
                    read: 1,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(rows.len(), 2);
        assert!(
            file.leads().is_err(),
            "an activity file is not read as leads"
        );
    }

    #[test]
    fn lead_rows_are_maps_of_the_fields_asked_for_with_nulls() {
        let dir = tempfile::tempdir().unwrap();
        let text = "leadScore,id,email,createdAt\n\
                    45,1000001,ada@example.com,2026-10-03T09:00:00Z\n\
                    null,1000002,,2026-10-04T09:00:00Z\n\
                    10,1000003,old@example.com,2026-09-04T09:00:00Z\n";
        let file = file(&dir, ExportKind::Leads, text.as_bytes(), Some(3));
        let mut rows = file.leads().unwrap();
        let leads: Vec<Record> = rows.by_ref().map(Result::unwrap).collect();
        assert_eq!(rows.skipped(), 1);
        assert_eq!(
            serde_json::to_value(&leads).unwrap(),
            json!([{"id": "1000001", "email": "ada@example.com", "leadScore": "45"},
                   {"id": "1000002", "email": null, "leadScore": null}])
        );
        assert_eq!(
            leads[0].keys().collect::<Vec<_>>(),
            ["email", "id", "leadScore"]
        );
        let missing = file_without_email(&dir);
        let error = missing.leads().err().unwrap().to_string();
        assert!(error.contains("the header has no email column"), "{error}");
    }

    fn file_without_email(dir: &tempfile::TempDir) -> WindowFile {
        let path = dir.path().join("short.csv");
        std::fs::write(&path, "id,createdAt\n").unwrap();
        WindowFile::new(
            window(),
            "e-2".into(),
            path,
            13,
            None,
            ExportKind::Leads,
            vec!["id".into(), "email".into()],
        )
    }
}
