//! batchsse: run a batch update on a SQLite file and serve its progress as
//! server-sent events. `main` only parses, dispatches and maps errors to
//! exit statuses (listed in `error::exit`).

use std::process::ExitCode;

use batchsse::cli::Cli;
use batchsse::error::{Unreachable, UsageError, exit};
use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    batchsse::echo_again_on_panic();
    let matches = Cli::command().try_get_matches().unwrap_or_else(|e| {
        if e.kind() == clap::error::ErrorKind::InvalidUtf8
            && let Some(name) = batchsse::cli::non_utf8_env()
        {
            batchsse::report_error(
                None,
                &format!(
                    "the environment variable {name} is not UTF-8 text; unset it, or set it to visible ASCII (a token such as `openssl rand -hex 32` makes)"
                ),
                exit::USAGE,
            );
            std::process::exit(i32::from(exit::USAGE));
        }
        batchsse::exit_on_clap_error(e)
    });
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| batchsse::exit_on_clap_error(e));
    let checked = batchsse::cli::config::typed_without_server(&matches).map_err(Into::into);
    match checked.and_then(|()| batchsse::execute(cli)) {
        Ok(code) => code,
        Err(err) => {
            let code = if err.chain().any(|e| e.is::<Unreachable>()) {
                exit::UNREACHABLE
            } else if err.chain().any(|e| e.is::<UsageError>()) {
                exit::USAGE
            } else {
                exit::FAILED
            };
            batchsse::report_error(Some(&matches), &format!("{err:#}"), code);
            ExitCode::from(code)
        }
    }
}
