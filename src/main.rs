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
            eprintln!("error: {e:#}");
            if usage { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}
