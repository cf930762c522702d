//! Logging: `RUST_LOG` filter (default `info`), pretty or JSON lines, on stderr; colour only on a terminal.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// How log lines look: `pretty` (for people) or `json` (one object per line, for collectors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    // The variants have no doc comments: clap would turn them into a long `--help` (the enum's doc says it).
    #[default]
    Pretty,
    Json,
}

/// Installs the global subscriber. Safe to call more than once (later calls do nothing), which tests rely on.
pub fn init(format: LogFormat) {
    // Default `info`, minus PostgreSQL's NOTICEs ("relation ... already exists, skipping" on every migrate).
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    // Escape codes only where a terminal interprets them: a log redirected to a file or collected by a
    // supervisor stays plain text. NO_COLOR (https://no-color.org) turns them off on a terminal too.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _already_set = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
