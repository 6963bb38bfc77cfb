//! batchsse: run a batch update on a SQLite file and serve its progress as
//! server-sent events. `main` only parses, dispatches and maps errors to
//! exit statuses (listed in `error::exit`).

use std::process::ExitCode;

use batchsse::cli::{Cli, Command};
use batchsse::error::{Unreachable, UsageError, exit};
use batchsse::{app, demo, errln, watch};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => app::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Watch(args) => watch::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            errln!("batchsse: {err:#}");
            if err.chain().any(|e| e.is::<Unreachable>()) {
                ExitCode::from(exit::UNREACHABLE)
            } else if err.chain().any(|e| e.is::<UsageError>()) {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::from(exit::FAILED)
            }
        }
    }
}
