//! `smartscheduler`: parses the command line, runs the command, maps the outcome to an exit code
//! (0 success, 1 failure with a one-line cause on stderr, 2 usage error).

use clap::Parser;
use smartscheduler::cli::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits with 2 on usage errors, 0 for --help
    smartscheduler::telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(smartscheduler::commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let usage = e.downcast_ref::<smartscheduler::commands::UsageError>().is_some();
            eprintln!("error: {}", one_line(&e));
            if usage { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

/// The error and its causes on one line, without repeating a cause that a message already includes
/// (many errors, sqlx's among them, print their source inside their own message).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace(['\n', '\r'], " ")
}
