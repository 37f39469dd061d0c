//! The report as one self-contained HTML page (`report --format html`, and the daemon's
//! `/report`): inline CSS and server-drawn SVG charts, no script or font from anywhere else,
//! so that it opens from a mail attachment or an air-gapped share as it does on the daemon.
//!
//! Four charts: MQL volume by period with the threshold history drawn over it, the funnel by
//! status, score vs conversion, and SLA compliance by rep; then every table of the text
//! report. A few lines of script check that each chart drew something and record it on
//! `<body>` (`data-charts`, `data-drawn`, `data-errors`), for the headless-browser test and
//! for anyone wondering whether a blank chart is a bug.

use std::fmt::Write as _;

use jiff::tz::TimeZone;

use super::{Period, Report};

/// Chart colours: volume, accepted, converted, rejected, missed, then the threshold lines.
const BLUE: &str = "#2f6db5";
const TEAL: &str = "#2a9d8f";
const GREEN: &str = "#3a8f3a";
const RED: &str = "#c0392b";
const GREY: &str = "#8a8f98";
const LINES: [&str; 6] = [
    "#e07b00", "#7b3fb5", "#b5305f", "#1b7f8f", "#6b6b00", "#444444",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page.
pub fn page(r: &Report) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let range = match (r.from, r.to) {
        (None, None) => "all MQLs".to_string(),
        (Some(f), None) => format!("MQLs from {f}"),
        (None, Some(t)) => format!("MQLs before {t}"),
        (Some(f), Some(t)) => format!("MQLs from {f} to {t}"),
    };
    let _ = write!(
        out,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mqlsync report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2330; background: #fff; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }} h2 {{ font-size: 16px; margin: 28px 0 8px; }}
.sub {{ color: #5b6270; margin-bottom: 16px; }}
.kpis {{ display: flex; gap: 12px; flex-wrap: wrap; }}
.kpi {{ border: 1px solid #dde1e7; border-radius: 6px; padding: 8px 12px; min-width: 110px; }}
.kpi b {{ display: block; font-size: 20px; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 16px; }}
figure {{ margin: 0; border: 1px solid #dde1e7; border-radius: 6px; padding: 8px; }}
figcaption {{ font-weight: 600; margin-bottom: 4px; }}
svg text {{ font: 11px system-ui, sans-serif; fill: #1d2330; }}
table {{ border-collapse: collapse; margin: 4px 0 12px; }}
th, td {{ border-bottom: 1px solid #e6e9ee; padding: 3px 10px; text-align: right; }}
th {{ background: #f4f6f9; }} td.k, th.k {{ text-align: left; }}
</style></head>
<body data-charts="0" data-drawn="0" data-errors="0">
<h1>mqlsync report</h1>
<div class="sub">{} &middot; by {} &middot; grouped by {} &middot; periods in {} &middot; as of {}</div>
"#,
        esc(&range),
        r.by.name(),
        esc(&r.group),
        esc(&r.time_zone),
        r.now
    );
    let t = &r.totals;
    let kpi = |name: &str, value: String| format!("<div class=\"kpi\">{name}<b>{value}</b></div>");
    let share = |p: Option<f64>| p.map_or_else(|| "-".into(), |p| format!("{p:.1}%"));
    let _ = writeln!(
        out,
        "<div class=\"kpis\">{}{}{}{}{}{}</div>",
        kpi("MQLs", t.mqls.to_string()),
        kpi("people", t.people.to_string()),
        kpi("accepted", t.accepted.to_string()),
        kpi("converted", share(t.pct_converted)),
        kpi("rejected", share(t.pct_rejected)),
        kpi("missed SLA", share(t.pct_missed_sla)),
    );
    out.push_str("<div class=\"grid\">\n");
    out.push_str(&volume_chart(r));
    out.push_str(&funnel_chart(r));
    out.push_str(&score_chart(r));
    out.push_str(&sla_chart(r));
    out.push_str("</div>\n");
    for table in super::render::tables(r) {
        if table.rows.is_empty() {
            continue;
        }
        let _ = write!(out, "<h2>{}</h2>\n<table><tr>", esc(&table.title));
        for (i, h) in table.headers.iter().enumerate() {
            let class = if i < table.keys { " class=\"k\"" } else { "" };
            let _ = write!(out, "<th{class}>{}</th>", esc(h));
        }
        out.push_str("</tr>\n");
        for row in &table.rows {
            out.push_str("<tr>");
            for (i, cell) in row.iter().enumerate() {
                let class = if i < table.keys { " class=\"k\"" } else { "" };
                let _ = write!(out, "<td{class}>{}</td>", esc(cell));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
    }
    out.push_str(SELF_CHECK);
    out.push_str("</body></html>\n");
    out
}

/// Counts the charts and those that drew a mark with a size, and any error the page raised.
const SELF_CHECK: &str = r#"<script>
(function () {
  var body = document.body;
  window.addEventListener('error', function () {
    body.dataset.errors = String(Number(body.dataset.errors) + 1);
  }, true);
  function check() {
    var charts = document.querySelectorAll('svg.chart');
    var drawn = 0;
    for (var i = 0; i < charts.length; i++) {
      var marks = charts[i].querySelectorAll('.mark');
      for (var j = 0; j < marks.length; j++) {
        var box = marks[j].getBBox();
        if (box.width > 0 || box.height > 0) { drawn++; break; }
      }
    }
    body.dataset.charts = String(charts.length);
    body.dataset.drawn = String(drawn);
  }
  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', check);
  } else {
    check();
  }
})();
</script>
"#;

const W: f64 = 460.0;
const H: f64 = 240.0;
/// Plot area: left, top, right, bottom margins.
const PAD: (f64, f64, f64, f64) = (44.0, 12.0, 44.0, 48.0);

fn figure(caption: &str, svg_body: &str, legend: &[(&str, &str)]) -> String {
    let mut out = format!(
        "<figure><figcaption>{}</figcaption>\n<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" width=\"100%\" role=\"img\" aria-label=\"{}\">\n{svg_body}",
        esc(caption),
        esc(caption)
    );
    let mut x = PAD.0;
    for (name, colour) in legend {
        let _ = writeln!(
            out,
            "<rect x=\"{x}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            H - 14.0,
            x + 14.0,
            H - 5.0,
            esc(name)
        );
        x += 24.0 + 6.5 * name.chars().count() as f64;
    }
    out.push_str("</svg></figure>\n");
    out
}

/// "No MQLs in this range" in the plot area: a chart with nothing to draw says so.
fn empty(caption: &str) -> String {
    figure(
        caption,
        &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">nothing in this range</text>\n",
            W / 2.0,
            H / 2.0
        ),
        &[],
    )
}

/// A round axis maximum at or above `max` whose quarters are round too (the axis has four
/// steps); with `whole`, steps of at least 1 (counts).
fn nice_max(max: f64, whole: bool) -> f64 {
    if max <= 0.0 {
        return if whole { 4.0 } else { 1.0 };
    }
    let step = max / 4.0;
    let magnitude = 10f64.powf(step.log10().floor());
    let mut nice = 10.0 * magnitude;
    for m in [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.5, 8.0, 10.0] {
        if m * magnitude >= step {
            nice = m * magnitude;
            break;
        }
    }
    if whole {
        nice = nice.ceil().max(1.0);
    }
    4.0 * nice
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Vertical bars of one or more series over `labels`, on a left axis up to `max`.
fn bars(labels: &[String], series: &[(&str, Vec<f64>)], max: f64) -> String {
    let mut out = String::new();
    let plot_w = W - PAD.0 - PAD.2;
    let plot_h = H - PAD.1 - PAD.3;
    let base = PAD.1 + plot_h;
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = base - plot_h * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e6e9ee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            PAD.0,
            W - PAD.2,
            PAD.0 - 4.0,
            y + 4.0,
            fmt_num(v)
        );
    }
    let slot = plot_w / labels.len().max(1) as f64;
    let width = (slot * 0.8) / series.len().max(1) as f64;
    let every = (labels.len() / 12).max(1);
    for (i, label) in labels.iter().enumerate() {
        let x0 = PAD.0 + slot * i as f64 + slot * 0.1;
        for (s, (colour, values)) in series.iter().enumerate() {
            let v = values.get(i).copied().unwrap_or(0.0);
            let h = if max > 0.0 { plot_h * v / max } else { 0.0 };
            let _ = writeln!(
                out,
                "<rect class=\"mark\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{colour}\"><title>{}: {}</title></rect>",
                x0 + width * s as f64,
                base - h,
                width.max(1.0),
                esc(label),
                fmt_num(v)
            );
        }
        if i % every == 0 {
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x0 + slot * 0.4,
                base + 14.0,
                esc(label)
            );
        }
    }
    out
}

/// MQLs per period, with each segment's threshold at the end of the period as a line on the
/// right axis.
fn volume_chart(r: &Report) -> String {
    let caption = "MQL volume, with the threshold history";
    if r.timeframes.is_empty() {
        return empty(caption);
    }
    let labels: Vec<String> = r.timeframes.iter().map(|t| t.period.clone()).collect();
    let counts: Vec<f64> = r.timeframes.iter().map(|t| t.mqls as f64).collect();
    let max = nice_max(counts.iter().copied().fold(0.0, f64::max), true);
    let mut body = bars(&labels, &[(BLUE, counts)], max);
    // Each segment's knob over the periods: the last version labelled at or before the
    // period (labels sort in time order).
    let zone = TimeZone::get(&r.time_zone).unwrap_or(TimeZone::UTC);
    let mut segments: Vec<&str> = r
        .threshold_history
        .iter()
        .map(|s| s.segment.as_str())
        .collect();
    segments.sort_unstable();
    segments.dedup();
    let top = nice_max(
        r.threshold_history
            .iter()
            .map(|s| s.score)
            .fold(0.0, f64::max),
        false,
    );
    let plot_w = W - PAD.0 - PAD.2;
    let plot_h = H - PAD.1 - PAD.3;
    let slot = plot_w / labels.len() as f64;
    let mut legend: Vec<(String, &str)> = vec![("MQLs".into(), BLUE)];
    for (n, segment) in segments.iter().enumerate() {
        let colour = LINES[n % LINES.len()];
        // Per threshold record of the segment, its score at each period; the segment's
        // line is the highest record in force (a scheduled override may sit beside it).
        let mut points = Vec::new();
        for (i, label) in labels.iter().enumerate() {
            let mut latest: std::collections::BTreeMap<&str, (f64, bool)> = Default::default();
            for step in r.threshold_history.iter().filter(|s| s.segment == *segment) {
                if Period::label(r.by, step.at, &zone) <= *label {
                    latest.insert(&step.threshold_id, (step.score, step.off));
                }
            }
            if let Some(score) = latest
                .values()
                .filter(|(_, off)| !off)
                .map(|(s, _)| *s)
                .reduce(f64::max)
            {
                // A step: level across the period's slot, rising or falling at its edge.
                let x = PAD.0 + slot * i as f64;
                let y = PAD.1 + plot_h * (1.0 - score / top);
                points.push(format!("{x:.1},{y:.1} {:.1},{y:.1}", x + slot));
            }
        }
        if points.is_empty() {
            continue;
        }
        let _ = writeln!(
            body,
            "<polyline class=\"mark\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"><title>threshold {}</title></polyline>",
            points.join(" "),
            esc(segment)
        );
        legend.push((format!("threshold {segment}"), colour));
    }
    for i in 0..=4 {
        let v = top * f64::from(i) / 4.0;
        let y = PAD.1 + plot_h - plot_h * f64::from(i) / 4.0;
        let _ = writeln!(
            body,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{}\">{}</text>",
            W - PAD.2 + 4.0,
            y + 4.0,
            LINES[0],
            fmt_num(v)
        );
    }
    let legend: Vec<(&str, &str)> = legend.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    figure(caption, &body, &legend)
}

/// Horizontal bars: MQLs, accepted, converted, rejected, still open.
fn funnel_chart(r: &Report) -> String {
    let caption = "Funnel by status";
    let t = &r.totals;
    if t.mqls == 0 {
        return empty(caption);
    }
    let rows = [
        ("MQLs", t.mqls, BLUE),
        ("accepted (SAL)", t.accepted, TEAL),
        ("converted", t.converted, GREEN),
        ("rejected", t.rejected, RED),
        ("open", t.open, GREY),
    ];
    let mut body = String::new();
    let plot_w = W - 130.0 - 50.0;
    let row_h = (H - PAD.1 - 30.0) / rows.len() as f64;
    for (i, (name, n, colour)) in rows.iter().enumerate() {
        let y = PAD.1 + row_h * i as f64;
        let w = plot_w * *n as f64 / t.mqls as f64;
        let _ = writeln!(
            body,
            "<text x=\"124\" y=\"{:.1}\" text-anchor=\"end\">{name}</text><rect class=\"mark\" x=\"130\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{colour}\"><title>{name}: {n}</title></rect><text x=\"{:.1}\" y=\"{:.1}\">{n}</text>",
            y + row_h * 0.6,
            y + row_h * 0.15,
            row_h * 0.7,
            134.0 + w,
            y + row_h * 0.6
        );
    }
    figure(caption, &body, &[])
}

/// Per score band: % accepted and % converted.
fn score_chart(r: &Report) -> String {
    let caption = "Score vs conversion (score at the MQL)";
    if r.score_bands.is_empty() {
        return empty(caption);
    }
    let labels: Vec<String> = r
        .score_bands
        .iter()
        .map(|b| format!("{}-{}", fmt_num(b.score_from), fmt_num(b.score_to)))
        .collect();
    let accepted: Vec<f64> = r
        .score_bands
        .iter()
        .map(|b| b.pct_accepted.unwrap_or(0.0))
        .collect();
    let converted: Vec<f64> = r
        .score_bands
        .iter()
        .map(|b| b.pct_converted.unwrap_or(0.0))
        .collect();
    let body = bars(&labels, &[(TEAL, accepted), (GREEN, converted)], 100.0);
    figure(
        caption,
        &body,
        &[("% accepted", TEAL), ("% converted", GREEN)],
    )
}

/// Per rep (the MQL's first owner): SLA met and missed, stacked.
fn sla_chart(r: &Report) -> String {
    let caption = "SLA compliance by rep (first owner)";
    let reps: Vec<_> = r.sla_by_rep.iter().filter(|s| s.sla_known > 0).collect();
    if reps.is_empty() {
        return empty(caption);
    }
    let max = reps.iter().map(|s| s.sla_known).max().unwrap_or(1).max(1) as f64;
    let mut body = String::new();
    let (left, right) = (150.0, 40.0);
    let plot_w = W - left - right;
    let shown = reps.len().min(12);
    let row_h = (H - PAD.1 - 30.0) / shown as f64;
    for (i, rep) in reps.iter().take(shown).enumerate() {
        let y = PAD.1 + row_h * i as f64;
        let met_w = plot_w * rep.sla_met as f64 / max;
        let missed_w = plot_w * rep.sla_missed as f64 / max;
        let _ = writeln!(
            body,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect class=\"mark\" x=\"{left}\" y=\"{:.1}\" width=\"{met_w:.1}\" height=\"{:.1}\" fill=\"{GREEN}\"><title>met: {}</title></rect><rect class=\"mark\" x=\"{:.1}\" y=\"{:.1}\" width=\"{missed_w:.1}\" height=\"{:.1}\" fill=\"{RED}\"><title>missed: {}</title></rect>",
            left - 6.0,
            y + row_h * 0.6,
            esc(&rep.owner),
            y + row_h * 0.15,
            row_h * 0.7,
            rep.sla_met,
            left + met_w,
            y + row_h * 0.15,
            row_h * 0.7,
            rep.sla_missed
        );
    }
    let caption = if reps.len() > shown {
        format!("{caption}: the first {shown} of {}", reps.len())
    } else {
        caption.to_string()
    };
    figure(&caption, &body, &[("met", GREEN), ("missed", RED)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_maxima_are_round_with_round_quarters_and_cover_the_data() {
        assert_eq!(nice_max(0.0, true), 4.0);
        assert_eq!(nice_max(3.0, true), 4.0);
        assert_eq!(nice_max(7.0, true), 8.0);
        assert_eq!(nice_max(13.0, true), 16.0);
        assert_eq!(nice_max(100.0, false), 100.0);
        assert_eq!(nice_max(180.0, true), 200.0);
        assert_eq!(nice_max(230.0, true), 240.0);
        assert!((nice_max(0.3, false) - 0.3).abs() < 1e-9);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
