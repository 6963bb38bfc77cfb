//! batchsse runs a batch update on a SQLite file and serves its progress as
//! server-sent events. The command line in `main.rs` is the interface; this
//! crate is public only as far as that binary, the tests and the benches
//! need.
//!
//! # Layout
//!
//! One direction of flow, each part knowing only what it must:
//!
//! ```text
//! cli ──> plan (load + check) ──> run (rusqlite, on a blocking thread)
//!                                   │ typed Event values    ^ Cancel, Steering
//!                                   v                       │
//!                                events::log (ids, frames encoded once, history)
//!                           /                  |                 \
//!   serve (/events, /status, /metrics, /)  view (terminal,   relay::publish (Redis)
//!                                          github; `watch`)        │
//!                                                                  v
//!              `batchsse relay`, any host: Redis stream ──> relay::source ──> events::log ──> serve
//! ```
//!
//! - [`cli`]: the flags as typed (clap), and `cli::config`, which checks
//!   them once into the settings the other parts take.
//! - `plan`: loading a JSON plan or SQL script (`split`) and the pre-run
//!   check against a schema copy (`check`).
//! - `run`: the runner: steps, the chunk walk (`chunk`), the pace and the
//!   waits between chunks (`governor`), a long plain step's "still
//!   running" (`heartbeat`), who else uses the file: SQLite's
//!   locks seen from outside, recent writes (`neighbours`), the
//!   transaction guard (`tx`), the
//!   checkpoint (`checkpoint`), opening the file (`db`), a step's
//!   expectations (`expect`), and the undo record (`undo`): made during
//!   `run --undo` by SQLite's pre-update hook (or, in a build without it,
//!   by reading around chunks and by TEMP triggers), one compact blob per
//!   chunk, applied back by `batchsse undo`.
//! - `events`: the typed events (`event`), the append-only log every
//!   reader follows (`log`), SSE framing (`sse`), and the events' JSON
//!   Schema (`schema`).
//! - `serve`: the HTTP server: the accept loop (`mod.rs`), shared state
//!   (`state`), routes (`routes`), tokens (`auth`), the direct `/events`
//!   path (`direct`) and its one writer task (`fanout`), hyper's stream
//!   body for the rest (`body`), one keep-alive rule for both
//!   (`keepalive`), live commands (`control`), the dashboard page
//!   (`dashboard`), `/metrics` (`metrics`).
//! - `relay`: Redis: the URL forms, keys and connections (`mod.rs`), TLS,
//!   Sentinel and Cluster clients (`tls`), the run's publisher (`publish`),
//!   and a relay's copy of a published run into its own log (`source`).
//! - `view`: the terminal (`terminal`), GitHub Actions output (`github`)
//!   and `batchsse watch` (`follow`).
//! - `lifecycle`: signals, cancel, the wait-for-clients gate, linger and
//!   drain, in the order a run goes through them; live commands for the
//!   runner (`Steering`).
//! - `app`: the commands, wiring the parts together (`run`, `demo`, `ctl`,
//!   `checkpoint`, `undo`, `relay`, and `docs` for completions, man page
//!   and event schema).
//! - `human`, [`error`]: number and duration wording; exit codes and the
//!   errors that choose them.
//! - `platform`: what differs between Linux, macOS and Windows (who else
//!   has the database open, whether a pid runs, the stop signals, the
//!   open-files limit a server raises), with
//!   the list of differences in its doc.
//!
//! Imports run one way, with no cycles: `app` → `view` → `cli` →
//! {`run`, `serve`, `relay`} → {`plan`, `lifecycle`, `events`} → {`human`, `error`, `platform`}
//! (`run` also uses `lifecycle` and `human`; `view` uses `serve` for the
//! run-id header and the token rule).

mod app;
pub mod cli;
pub mod error;
mod events;
mod human;
mod lifecycle;
pub mod plan;
mod platform;
mod relay;
mod run;
mod serve;
mod view;

pub use platform::echo_again_on_panic;

pub use app::demo;
pub use events::sse;

use std::process::ExitCode;

/// Prints a command's fatal error, `batchsse: MESSAGE`; in a GitHub
/// Actions job (or under `--progress github`) as one `::error::` line,
/// with the outcome in the step summary (see `view::github::fatal`).
/// `matches` is `None` when the command line itself could not be read.
pub fn report_error(matches: Option<&clap::ArgMatches>, message: &str, code: u8) {
    let github = match matches {
        Some(m) => view::github::annotates_errors(m),
        None => view::github::in_actions(),
    };
    if !github {
        return error::print_line(&format!("batchsse: {message}"));
    }
    let mut who = vec!["batchsse"];
    let mut at = matches;
    while let Some((name, sub)) = at.and_then(clap::ArgMatches::subcommand) {
        who.push(name);
        at = Some(sub);
    }
    for line in view::github::fatal(&who.join(" "), code, message) {
        error::print_line(&line);
    }
}

/// Exits on a command line clap could not read (or on `--help`): as clap
/// would, except that in a GitHub Actions job the error is reported as
/// every other one is there (see [`report_error`]).
pub fn exit_on_clap_error(e: clap::Error) -> ! {
    let e = with_subcommand_tip(e);
    if !e.use_stderr() || !view::github::in_actions() {
        e.exit()
    }
    let code = u8::try_from(e.exit_code()).unwrap_or(error::exit::USAGE);
    if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // The help, which is ours, as clap shows it; not all in the annotation.
        let _ = e.print();
        report_error(None, "a subcommand is missing: see the help above", code);
    } else {
        let text = e.render().to_string();
        report_error(None, text.trim().trim_start_matches("error: "), code);
    }
    std::process::exit(e.exit_code())
}

/// `batchsse undo --db FILE list`: `undo` takes its own flags or a
/// subcommand, so clap says the subcommand "cannot be used with '--db'",
/// as if `list` took no `--db`. It does, after its name: the tip says so,
/// only of a flag the subcommand takes (`list` takes no `--dry-run`).
/// (`undo` is the only command whose flags exclude its subcommands.)
fn with_subcommand_tip(mut e: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() == ErrorKind::ArgumentConflict
        && let Some(ContextValue::String(sub)) = e.get(ContextKind::InvalidSubcommand)
        && prior_flags(&e)
            .iter()
            .any(|flag| undo_subcommand_takes(sub, flag))
    {
        let tip = format!("`{sub}` takes its flags after its name: batchsse undo {sub} --db PATH");
        e.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![tip.into()]),
        );
    }
    e
}

/// The flags a conflict error names as given before the subcommand.
fn prior_flags(e: &clap::Error) -> Vec<String> {
    use clap::error::{ContextKind, ContextValue};
    match e.get(ContextKind::PriorArg) {
        Some(ContextValue::String(flag)) => vec![flag.clone()],
        Some(ContextValue::Strings(flags)) => flags.clone(),
        _ => Vec::new(),
    }
}

/// Whether `batchsse undo SUB` takes `flag`, as clap shows it in an error
/// (`--db <PATH>`).
fn undo_subcommand_takes(sub: &str, flag: &str) -> bool {
    let long = flag
        .split_whitespace()
        .next()
        .and_then(|f| f.strip_prefix("--"));
    let cli = <cli::Cli as clap::CommandFactory>::command();
    cli.find_subcommand("undo")
        .and_then(|undo| undo.find_subcommand(sub))
        .is_some_and(|sub| {
            sub.get_arguments()
                .any(|a| a.get_long().is_some() && a.get_long() == long)
        })
}

/// Runs the command the user gave; the error chain is for `main` to print.
pub fn execute(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        cli::Command::Run(args) => app::run(args),
        cli::Command::Demo(args) => demo::run(args),
        cli::Command::Watch(args) => view::follow::run(args),
        cli::Command::Relay(args) => app::relay::run(args),
        cli::Command::Ctl(args) => app::ctl::run(args),
        cli::Command::Checkpoint(args) => app::checkpoint::run(args),
        cli::Command::Undo(args) => app::undo::run(args),
        cli::Command::Completions(args) => app::docs::completions(args),
        cli::Command::Man => app::docs::man(),
        cli::Command::Schema => app::docs::schema(),
    }
}
