//! batchsse: run a batch update on a SQLite file and serve its progress as
//! server-sent events. `main` only parses, dispatches and maps errors to
//! exit statuses (listed in `error::exit`).

use std::process::ExitCode;

use batchsse::cli::Cli;
use batchsse::error::{Unreachable, UsageError, exit};
use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let matches = Cli::command().try_get_matches().unwrap_or_else(|e| {
        if e.kind() == clap::error::ErrorKind::InvalidUtf8
            && let Some(name) = batchsse::cli::non_utf8_env()
        {
            batchsse::error::print_line(&format!(
                "batchsse: the environment variable {name} is not UTF-8 text; unset it, or set it to visible ASCII (a token such as `openssl rand -hex 32` makes)"
            ));
            std::process::exit(i32::from(exit::USAGE));
        }
        e.exit()
    });
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
