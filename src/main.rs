//! batchsse: run a batch update on a SQLite file and serve its progress as
//! server-sent events. `main` only parses, dispatches and maps errors to
//! exit statuses (listed in `error::exit`).

use std::process::ExitCode;

use batchsse::cli::{Cli, Command};
use batchsse::error::{UsageError, exit};
use batchsse::{app, demo};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => app::run(args),
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("batchsse: {err:#}");
            if err.chain().any(|e| e.is::<UsageError>()) {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::from(exit::FAILED)
            }
        }
    }
}
