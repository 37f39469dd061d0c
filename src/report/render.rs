//! The report as text tables (`--format table`) and as CSV (`--format csv`). Both are made
//! from the same [`Table`]s, so that every figure of one is in the other.
//!
//! The CSV is long ("tidy"): one row per figure, `section,key,group,metric,value`, so that a
//! spreadsheet pivot or a BI tool takes every section from one file.

use std::fmt::Write as _;

use super::Report;

/// One section of the report: key columns first, then figures.
pub struct Table {
    /// Machine name (the CSV's `section`).
    pub name: &'static str,
    pub title: String,
    /// How many leading columns identify a row (1 or 2).
    pub keys: usize,
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

fn count(n: i64) -> String {
    n.to_string()
}

fn share(p: Option<f64>) -> String {
    p.map_or_else(|| "-".into(), |p| format!("{p:.1}%"))
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn score(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// Every section of the report, in the order the text prints them.
pub fn tables(r: &Report) -> Vec<Table> {
    let t = &r.totals;
    let mut out = vec![Table {
        name: "totals",
        title: "Totals".into(),
        keys: 1,
        headers: vec![
            "range",
            "mqls",
            "people",
            "open",
            "working",
            "rejected",
            "converted",
            "accepted",
            "% missed SLA",
            "% converted",
            "% rejected",
        ],
        rows: vec![vec![
            "all".into(),
            count(t.mqls),
            count(t.people),
            count(t.open),
            count(t.working),
            count(t.rejected),
            count(t.converted),
            count(t.accepted),
            share(t.pct_missed_sla),
            share(t.pct_converted),
            share(t.pct_rejected),
        ]],
    }];
    out.push(Table {
        name: "volume",
        title: format!("MQLs created by {} and {}", r.by.name(), r.group),
        keys: 2,
        headers: vec!["period", "group", "mqls", "people"],
        rows: r
            .volume
            .iter()
            .map(|v| {
                vec![
                    v.period.clone(),
                    v.group.clone(),
                    count(v.mqls),
                    count(v.people),
                ]
            })
            .collect(),
    });
    out.push(Table {
        name: "qualified_by",
        title: "MQLs by how they qualified".into(),
        keys: 1,
        headers: vec!["qualified by", "mqls"],
        rows: r
            .qualified_by
            .iter()
            .map(|c| vec![c.key.clone(), count(c.count)])
            .collect(),
    });
    out.push(Table {
        name: "reps",
        title: "By rep (the cycle's owner now); hours to SAL are business hours".into(),
        keys: 1,
        headers: vec![
            "owner",
            "mqls",
            "open",
            "working",
            "rejected",
            "converted",
            "overdue",
            "% rejected",
            "hours to SAL",
        ],
        rows: r
            .reps
            .iter()
            .map(|x| {
                vec![
                    x.owner.clone(),
                    count(x.mqls),
                    count(x.open),
                    count(x.working),
                    count(x.rejected),
                    count(x.converted),
                    count(x.overdue),
                    share(x.pct_rejected),
                    num(x.avg_business_hours_to_sal),
                ]
            })
            .collect(),
    });
    out.push(Table {
        name: "sla",
        title:
            "SLA by the rep each MQL went to first (business hours; weekends and holidays excluded)"
                .into(),
        keys: 1,
        headers: vec![
            "owner",
            "with SLA",
            "decided",
            "met",
            "missed",
            "% missed SLA",
            "reassigned",
        ],
        rows: r
            .sla_by_rep
            .iter()
            .map(|x| {
                vec![
                    x.owner.clone(),
                    count(x.with_sla),
                    count(x.sla_known),
                    count(x.sla_met),
                    count(x.sla_missed),
                    share(x.pct_missed_sla),
                    count(x.reassigned),
                ]
            })
            .collect(),
    });
    out.push(Table {
        name: "overdue",
        title: "Overdue MQLs by owner and region".into(),
        keys: 2,
        headers: vec!["owner", "region", "overdue", "mqls"],
        rows: r
            .overdue_by_owner_region
            .iter()
            .map(|o| {
                vec![
                    o.owner.clone(),
                    o.region.clone(),
                    count(o.overdue),
                    count(o.mqls),
                ]
            })
            .collect(),
    });
    out.push(Table {
        name: "rejected",
        title: "Rejected MQLs by reason".into(),
        keys: 1,
        headers: vec!["reason", "rejected"],
        rows: r
            .rejected_by_reason
            .iter()
            .map(|c| vec![c.key.clone(), count(c.count)])
            .collect(),
    });
    out.push(Table {
        name: "timeframes",
        title: format!("SLA and conversion by {}", r.by.name()),
        keys: 1,
        headers: vec![
            "period",
            "mqls",
            "% missed SLA",
            "converted",
            "% converted",
            "rejected",
            "% rejected",
        ],
        rows: r
            .timeframes
            .iter()
            .map(|x| {
                vec![
                    x.period.clone(),
                    count(x.mqls),
                    share(x.pct_missed_sla),
                    count(x.converted),
                    share(x.pct_converted),
                    count(x.rejected),
                    share(x.pct_rejected),
                ]
            })
            .collect(),
    });
    out.push(Table {
        name: "campaigns",
        title: "Campaign attribution (the campaign of the crossing score change)".into(),
        keys: 1,
        headers: vec!["campaign", "mqls", "accepted", "converted", "% converted"],
        rows: r
            .campaigns
            .iter()
            .map(|c| {
                vec![
                    c.campaign.clone(),
                    count(c.mqls),
                    count(c.accepted),
                    count(c.converted),
                    share(c.pct_converted),
                ]
            })
            .collect(),
    });
    out.push(Table {
        name: "score_bands",
        title: "Score vs conversion and velocity (score at the MQL)".into(),
        keys: 1,
        headers: vec![
            "score",
            "mqls",
            "% accepted",
            "% converted",
            "% rejected",
            "hours to SAL",
            "days to opp.",
            "days to converted",
        ],
        rows: r
            .score_bands
            .iter()
            .map(|b| {
                vec![
                    format!("{}-{}", score(b.score_from), score(b.score_to)),
                    count(b.mqls),
                    share(b.pct_accepted),
                    share(b.pct_converted),
                    share(b.pct_rejected),
                    num(b.avg_business_hours_to_sal),
                    num(b.avg_days_to_opportunity),
                    num(b.avg_days_to_converted),
                ]
            })
            .collect(),
    });
    out.push(Table {
        name: "thresholds",
        title: "Pipeline vs threshold (the threshold in force at the MQL)".into(),
        keys: 2,
        headers: vec![
            "segment",
            "threshold",
            "mqls",
            "accepted",
            "converted",
            "% converted",
            "with opp.",
            "opportunities",
            "won",
        ],
        rows: r
            .thresholds
            .iter()
            .map(|x| {
                vec![
                    x.segment.clone(),
                    score(x.threshold),
                    count(x.mqls),
                    count(x.accepted),
                    count(x.converted),
                    share(x.pct_converted),
                    count(x.with_opportunity),
                    count(x.opportunities),
                    count(x.won),
                ]
            })
            .collect(),
    });
    if let Some(c) = &r.checklist {
        out.push(Table {
            name: "checklist",
            title: format!("Qualification checklist ({})", c.fields.join(", ")),
            keys: 1,
            headers: vec!["status", "mqls", "% filled", "complete"],
            rows: c
                .by_status
                .iter()
                .map(|x| {
                    vec![
                        x.status.clone(),
                        count(x.mqls),
                        share(x.pct_filled),
                        count(x.complete),
                    ]
                })
                .collect(),
        });
    }
    out
}

/// The report as aligned text tables.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let range = match (r.from, r.to) {
        (None, None) => "all MQLs".to_string(),
        (Some(f), None) => format!("MQLs from {f}"),
        (None, Some(t)) => format!("MQLs before {t}"),
        (Some(f), Some(t)) => format!("MQLs from {f} to {t}"),
    };
    let _ = writeln!(out, "mqlsync report: {range} (periods in {})", r.time_zone);
    if r.totals.mqls == 0 {
        let _ = writeln!(out, "\nNo MQLs in this range.");
        return out;
    }
    for table in tables(r) {
        if table.rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{}", table.title);
        let widths: Vec<usize> = (0..table.headers.len())
            .map(|i| {
                table
                    .rows
                    .iter()
                    .map(|row| row[i].chars().count())
                    .chain([table.headers[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<&str>| -> String {
            let mut s = String::from(" ");
            for (i, cell) in cells.iter().enumerate() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                if i < table.keys {
                    let _ = write!(s, " {cell}{}", " ".repeat(pad));
                } else {
                    let _ = write!(s, " {}{cell}", " ".repeat(pad));
                }
            }
            s.trim_end().to_string()
        };
        let _ = writeln!(out, "{}", line(table.headers.clone()));
        for row in &table.rows {
            let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
        }
    }
    out
}

/// The report as long CSV: `section,key,group,metric,value`.
pub fn csv(r: &Report) -> String {
    let mut out = String::from("section,key,group,metric,value\n");
    for table in tables(r) {
        for row in &table.rows {
            let key = &row[0];
            let group = if table.keys > 1 { row[1].as_str() } else { "" };
            for (i, value) in row.iter().enumerate().skip(table.keys) {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{}",
                    table.name,
                    field(key),
                    field(group),
                    field(table.headers[i]),
                    // Shares as plain numbers (the metric says "%"), none as empty.
                    field(if value == "-" {
                        ""
                    } else {
                        value.trim_end_matches('%')
                    })
                );
            }
        }
    }
    out
}

/// A CSV field, quoted when it must be (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
