//! batchsse: run a batch update on a SQLite file and serve its progress as
//! server-sent events. `main` only parses, dispatches and maps errors to
//! exit statuses (listed in `error::exit`).

use std::process::ExitCode;

use batchsse::cli::Cli;
use batchsse::error::{Unreachable, UsageError, exit};
use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let checked = batchsse::cli::config::typed_without_server(&matches).map_err(Into::into);
    match checked.and_then(|()| batchsse::execute(cli)) {
        Ok(code) => code,
        Err(err) => {
            batchsse::error::print_line(&batchsse::error_line(&err));
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
