//! batchsse: run a batch update on a SQLite file and serve its progress as
//! server-sent events. `main` only parses, dispatches and maps errors to
//! exit statuses (listed in `error::exit`).

mod app;
mod checkpoint;
mod cli;
mod dashboard;
mod demo;
mod error;
mod event;
mod event_log;
mod plan;
mod runner;
mod server;
mod sse;
mod terminal;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::{UsageError, exit};

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
