//! Where logs go and how they look: stderr, filtered by `MQLSYNC_LOG` (tracing's
//! `EnvFilter` syntax), as text or as one JSON object a line (`MQLSYNC_LOG_FORMAT=json` or
//! `--log-format json`), with colour only when stderr is a terminal. On a terminal a run also
//! gets progress bars: every span that carries an `indicatif.pb_show` field (one per phase
//! of a run) is drawn as a bar with its records and rate, and log lines print above the bars
//! instead of through them. Set up once, in `main`, before anything logs; user-facing output
//! (summaries, tables) goes to stdout and never through here.

use std::io::IsTerminal;

use indicatif::{ProgressState, ProgressStyle};
use tracing_indicatif::IndicatifLayer;
use tracing_indicatif::filter::{IndicatifFilter, hide_indicatif_span_fields};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::DefaultFields;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The variable that picks the log format.
pub const FORMAT_VARIABLE: &str = "MQLSYNC_LOG_FORMAT";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line (for log collectors).
    Json,
}

/// A log setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={value:?}: {message}")]
pub struct LogSettingError {
    pub variable: &'static str,
    pub value: String,
    pub message: String,
}

/// The format: the flag, else `MQLSYNC_LOG_FORMAT`, else text.
pub fn format_from(
    flag: Option<LogFormat>,
    variable: Option<&str>,
) -> Result<LogFormat, LogSettingError> {
    if let Some(format) = flag {
        return Ok(format);
    }
    match variable.map(str::trim) {
        None | Some("") => Ok(LogFormat::Text),
        Some(v) if v.eq_ignore_ascii_case("text") => Ok(LogFormat::Text),
        Some(v) if v.eq_ignore_ascii_case("json") => Ok(LogFormat::Json),
        Some(v) => Err(LogSettingError {
            variable: FORMAT_VARIABLE,
            value: v.to_string(),
            message: "not a log format: use `text` or `json`".into(),
        }),
    }
}

/// Installs the global subscriber. `default_filter` applies when `MQLSYNC_LOG` is not set
/// (`info` for a run: a line per phase and per committed page; `warn` elsewhere). `progress`
/// asks for progress bars, drawn only for text logs on a terminal.
pub fn init(
    format: LogFormat,
    default_filter: &str,
    progress: bool,
) -> Result<(), LogSettingError> {
    let filter = match std::env::var("MQLSYNC_LOG") {
        Ok(value) => EnvFilter::try_new(&value).map_err(|e| LogSettingError {
            variable: "MQLSYNC_LOG",
            value,
            message: format!(
                "{e}: use a level (`info`, `debug`) or directives such as `mqlsync=debug,warn`"
            ),
        })?,
        Err(_) => EnvFilter::new(default_filter),
    };
    let terminal = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text if progress && terminal => {
            // `phase="Lead" 4000 records (2,300/s, 2s)`: the phase, its records so far, the rate.
            let style = ProgressStyle::with_template(
                "{spinner} {span_fields} {pos} records ({rate}, {elapsed})",
            )
            .expect("the progress template is valid")
            .with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", state.per_sec());
                },
            );
            let bars = IndicatifLayer::new()
                .with_span_field_formatter(hide_indicatif_span_fields(DefaultFields::new()))
                .with_progress_style(style);
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(true)
                        .fmt_fields(hide_indicatif_span_fields(DefaultFields::new()))
                        .with_writer(bars.get_stderr_writer()),
                )
                .with(bars.with_filter(IndicatifFilter::new(false)))
                .init()
        }
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(terminal)
                    .fmt_fields(hide_indicatif_span_fields(DefaultFields::new()))
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    Ok(())
}

/// The bar of a phase whose end is known (set its length and position in `unit`s): the
/// phase, a bar, how far, the rate and the time left. Where no bar is drawn (not a terminal,
/// JSON logs) setting it costs nothing and the phase's log lines tell the progress.
pub fn bar_with_eta(unit: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{span_fields}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, {{elapsed}}, ETA {{eta}})"
    ))
    .expect("the progress template is valid")
    .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_variable_then_text() {
        assert_eq!(
            format_from(Some(LogFormat::Json), Some("text")).unwrap(),
            LogFormat::Json
        );
        assert_eq!(format_from(None, Some("JSON")).unwrap(), LogFormat::Json);
        assert_eq!(format_from(None, None).unwrap(), LogFormat::Text);
        let e = format_from(None, Some("yaml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "MQLSYNC_LOG_FORMAT=\"yaml\": not a log format: use `text` or `json`"
        );
    }
}
