//! The command line as the user typed it (clap derive); `config` checks
//! and combines the flags once.

pub mod config;

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::{Args, Parser, Subcommand};

use crate::lifecycle::{BATCH_SIZE, CHUNK_TIME_MS, SLEEP_MS};

/// The environment variables the command line reads.
const ENV: [&str; 3] = [
    "BATCHSSE_TOKEN",
    "BATCHSSE_CONTROL_TOKEN",
    "BATCHSSE_PUBLISH",
];

/// The first of them that is set to something that is not UTF-8, which
/// clap reports only as "invalid UTF-8 … in one or more arguments".
pub fn non_utf8_env() -> Option<&'static str> {
    ENV.into_iter()
        .find(|name| std::env::var_os(name).is_some_and(|v| v.to_str().is_none()))
}

/// `--version`: the version, the commit it was built from when the build
/// was told (`BATCHSSE_COMMIT`, which `.ci/release` sets), and the SQLite
/// compiled in.
fn long_version() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let commit = option_env!("BATCHSSE_COMMIT")
            .filter(|c| !c.is_empty())
            .map(|c| format!("commit {c}, "))
            .unwrap_or_default();
        format!(
            "{} ({commit}SQLite {})",
            env!("CARGO_PKG_VERSION"),
            rusqlite::version()
        )
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "batchsse",
    version,
    long_version = long_version(),
    about = "Run a batch update on a SQLite file and stream its progress as server-sent events",
    long_about = "Run a batch update on a SQLite file and stream its progress as server-sent events.\n\n\
        While `batchsse run` works, http://127.0.0.1:7077/ shows a live dashboard, /events streams \
        every step as SSE (curl -N, EventSource, `batchsse watch`), and the terminal shows the same progress.",
    after_help = "Exit status: 0 ok (or already applied), 1 a step failed, 2 bad usage or input \
        (nothing written; for `ctl`: the run refused the command), 3 `watch` or `ctl` could not \
        reach a run (`relay`: Redis refused it, or its run stopped without finishing), 130 interrupted, 141 `watch` lost its reader (`--progress json | head`, `2>&1 | head`)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply a plan (JSON) or a SQL script to a SQLite database, serving its progress.
    #[command(after_help = "Examples:\n  \
        batchsse run --db shop.sqlite --plan plan.json\n  \
        batchsse run --db shop.sqlite --sql fix.sql --listen 127.0.0.1:0\n  \
        batchsse run --db shop.sqlite --plan plan.json --dry-run --no-serve\n  \
        cat fix.sql | batchsse run --db shop.sqlite --sql - --progress json")]
    Run(RunArgs),
    /// Build a sample shop database in a temporary folder and run the sample plan at a watchable pace.
    #[command(after_help = "Examples:\n  \
        batchsse demo                      # then open http://127.0.0.1:7077/\n  \
        batchsse demo --rows 1000000 --sleep 0 --linger 0\n  \
        batchsse demo --keep shop --create-only   # a fresh shop/shop.sqlite to try `run` on")]
    Demo(DemoArgs),
    /// Follow a running batchsse (its base URL or /events) with the same progress as `run`; exit with the run's status.
    #[command(after_help = "Examples:\n  \
        batchsse watch http://127.0.0.1:7077/\n  \
        batchsse watch http://127.0.0.1:7077/events --progress json > events.ndjson\n  \
        BATCHSSE_TOKEN=s3cret batchsse watch http://127.0.0.1:7077/ --connect-timeout 120\n  \
        batchsse run --db shop.sqlite --plan plan.json --wait-for-clients 1 &\n  \
        batchsse watch http://127.0.0.1:7077/ --pid $!\n\n\
        It may start before the run listens: it retries until --connect-timeout (or until the \
        --pid process has exited), and after a dropped connection it resumes with Last-Event-ID, \
        printing no event twice. A new run started on the same address is followed from its start; \
        with --pid, only if it is that process's run (not another run still lingering on the port; \
        only Linux tells the two apart, other systems follow what answers).\n\n\
        Exit status: 0 the run finished ok, 1 it failed, 130 it was interrupted (or watch was), \
        2 bad usage (or the token was refused), 3 no run could be reached (or what answered is \
        not a batchsse run), 141 its output was \
        closed (--progress json | head, or 2>&1 | head for the modes that write to stderr) \
        or could not be written.")]
    Watch(WatchArgs),

    /// Serve a run published to Redis (run --publish) from this host: /events, /status, the dashboard, /metrics.
    #[command(after_help = "Examples:\n  \
        batchsse relay redis://127.0.0.1:6379/0 --plan reprice-2026 --listen 127.0.0.1:7078\n  \
        batchsse relay redis://:s3cret@redis.internal:6379/0 --run 18ee14c0a7d2b3f1-6959 --listen 0.0.0.0:7078 --token T\n\n\
        Ids and bytes are the run's own, so a client can move between relays (or from the run's \
        own server to a relay) with Last-Event-ID. --plan follows the plan's live run, or waits for \
        its next one. The relay exits after the run's finished event and --linger (30 s).\n\n\
        Exit status: 0 it served the run to its end (whatever the run's own outcome), 2 bad usage \
        (Redis unreachable, a wrong password, no such run), 3 Redis refused the relay, the run \
        stopped without finishing, or its stream does not begin with its start, 130 interrupted.")]
    Relay(RelayArgs),

    /// Steer a running batch: pause, resume, cancel, or a new pace (needs the run's --control-token).
    #[command(after_help = "Examples:\n  \
        batchsse ctl http://127.0.0.1:7077/ pause --control-token T\n  \
        batchsse ctl http://127.0.0.1:7077/ set --chunk-time 50 --nice-ratio 2\n  \
        batchsse ctl http://127.0.0.1:7077/ set --batch-size auto\n\n\
        Exit status: 0 done, 2 refused (the server's reason is printed), 3 the run could not be reached, \
        or what answered is not a batchsse run.")]
    Ctl(CtlArgs),
    /// Show or clear what resumable runs have recorded in a database (the batchsse_checkpoint table).
    #[command(after_help = "Examples:\n  \
        batchsse checkpoint list --db shop.sqlite\n  \
        batchsse checkpoint list --db shop.sqlite --json\n  \
        batchsse checkpoint clear --db shop.sqlite --plan reprice-2026\n  \
        batchsse checkpoint clear --db shop.sqlite --all\n\n\
        Clearing a plan's records makes its next run start from the first step (as --force would). \
        Only batchsse's own tables are touched: batchsse_checkpoint (dropped once it is empty), the rows \
        of TEMP tables kept for a resume (batchsse_setup), and the undo records of the plans cleared.")]
    Checkpoint(CheckpointArgs),
    /// Take back a run recorded with `run --undo`, streamed and steerable like a run; list or clear the records.
    #[command(after_help = "Examples:\n  \
        batchsse undo --db shop.sqlite --plan reprice-2026 --dry-run --no-serve\n  \
        batchsse undo --db shop.sqlite --run 18ee14...-6959 --listen 127.0.0.1:0\n  \
        batchsse undo list --db shop.sqlite\n  \
        batchsse undo clear --db shop.sqlite --older-than 7d\n\n\
        A row the application changed since the run is a conflict: --on-conflict skip (default) keeps \
        it and reports it (all of them in the table batchsse_undo_conflict), abort rolls back the \
        current chunk and exits 1, overwrite restores the run's old value anyway.\n\n\
        An undo takes back the run's chunks as they were recorded (cut at 256 KiB), one transaction \
        each: --batch-size and --chunk-time, taken as run takes them, do not resize them; --nice-ratio, \
        --sleep, --pause-file and --throttle-query pace it.")]
    Undo(UndoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on standard output.
    #[command(after_help = "Examples:\n  \
        batchsse completions bash > ~/.local/share/bash-completion/completions/batchsse\n  \
        batchsse completions zsh > ~/.zfunc/_batchsse    # with fpath+=~/.zfunc before compinit\n  \
        batchsse completions fish > ~/.config/fish/completions/batchsse.fish")]
    Completions(CompletionsArgs),
    /// Print the man page (roff) on standard output.
    #[command(after_help = "Examples:\n  \
        batchsse man | man -l -\n  \
        batchsse man > ~/.local/share/man/man1/batchsse.1")]
    Man,
    /// Print a JSON Schema (draft 2020-12) of every event's data, by event name.
    #[command(
        after_help = "Its $defs hold one schema per event (start, step, progress, message, \
        throttle, control, finished); the document itself validates a `--progress json` line \
        ({\"id\":N,\"event\":\"…\",\"data\":{…}}).\n\nExample:\n  \
        batchsse schema > batchsse-events.schema.json"
    )]
    Schema,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The run's address: its base URL, e.g. http://127.0.0.1:7077/ (or any of its routes, such as /status).
    #[arg(value_name = "URL")]
    pub url: String,

    #[command(subcommand)]
    pub action: CtlAction,

    /// The run's --control-token, sent as Authorization: Bearer T.
    #[arg(
        long,
        value_name = "T",
        env = "BATCHSSE_CONTROL_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub control_token: Option<String>,

    /// Print the run's /status JSON instead of one line.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum CtlAction {
    /// Stop at the next chunk boundary (the current chunk commits first); holds no lock while paused (so an --atomic or --dry-run run refuses it).
    Pause,
    /// Go on after a pause.
    Resume,
    /// Stop now, as Ctrl-C would: the current chunk rolls back (all of an
    /// --atomic or --dry-run run), the run exits 130.
    Cancel,
    /// Change the pace from the next chunk on.
    Set(SetArgs),
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// Target time one chunk holds the write lock (1–600000).
    #[arg(long, value_name = "MS", value_parser = whole(CHUNK_TIME_MS, "ms"))]
    pub chunk_time: Option<u64>,
    /// After each chunk, yield R times its time (0–100).
    #[arg(long, value_name = "R")]
    pub nice_ratio: Option<f64>,
    /// Fixed pause between chunks (0–600000).
    #[arg(long, value_name = "MS", value_parser = whole(SLEEP_MS, "ms"))]
    pub sleep: Option<u64>,
    /// Fix the chunk size (1–10000000), or `auto` to adapt again.
    #[arg(long, value_name = "N|auto")]
    pub batch_size: Option<String>,
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    pub action: CheckpointAction,
}

#[derive(Debug, Subcommand)]
pub enum CheckpointAction {
    /// Each recorded plan with its steps: done, partial or partly taken back by an undo, last key, rows, when.
    List(CheckpointListArgs),
    /// Remove the records of one plan (--plan) or of every plan (--all); never user tables.
    Clear(CheckpointClearArgs),
}

#[derive(Debug, Args)]
pub struct CheckpointListArgs {
    /// The SQLite database file; it must exist (batchsse never creates one).
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// Wait this long for another process's lock before failing.
    #[arg(long, value_name = "MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(0..=i32::MAX as u64))]
    pub busy_timeout: u64,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["plan", "all"]))]
pub struct CheckpointClearArgs {
    /// The SQLite database file; it must exist (batchsse never creates one).
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,

    /// The plan whose records to remove (its "name", as `checkpoint list` shows it).
    // A plan's name may begin with a hyphen: the commands batchsse
    // prints give it as `--plan -x`.
    #[arg(long, value_name = "NAME", allow_hyphen_values = true)]
    pub plan: Option<String>,

    /// Remove every plan's records and the table itself.
    #[arg(long)]
    pub all: bool,

    /// Wait this long for another process's lock before failing.
    #[arg(long, value_name = "MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(0..=i32::MAX as u64))]
    pub busy_timeout: u64,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct UndoArgs {
    #[command(subcommand)]
    pub action: Option<UndoAction>,

    #[command(flatten)]
    pub apply: UndoApplyArgs,
}

#[derive(Debug, Subcommand)]
pub enum UndoAction {
    /// Each run with undo records: its plan, chunks, rows, size and when it was recorded.
    List(CheckpointListArgs),
    /// Remove undo records: of one run (--run), of a plan (--plan), of runs older than --older-than, or all (--all).
    #[command(after_help = "Examples:\n  \
        batchsse undo clear --db shop.sqlite --run 18ee14...-6959\n  \
        batchsse undo clear --db shop.sqlite --plan reprice-2026\n  \
        batchsse undo clear --db shop.sqlite --older-than 7d\n\n\
        An undo takes a step's record for all the step holds: once the last of it is taken back, \
        it clears the step's checkpoint, so the plan can run again. So a run's record never goes on \
        its own while another run of its plan (a resume, a --force run) recorded one of its steps: \
        --run is refused (exit 2, nothing removed) and --older-than keeps it, saying so; take the \
        plan back, or clear its records together with --plan, which leaves the plan applied and \
        checkpointed. Nor does a record go while an undo of its plan has stopped part-way (only \
        the record can say what is left to take back): --run, --plan and --all are refused, \
        --older-than keeps it; finish the undo with `batchsse undo --plan NAME`.")]
    Clear(UndoClearArgs),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").args(["run", "plan"]))]
pub struct UndoApplyArgs {
    /// The SQLite database file the run changed.
    #[arg(long, value_name = "PATH", required = true)]
    pub db: Option<PathBuf>,

    /// The run to take back (its run_id, as `undo list` shows it).
    #[arg(long, value_name = "RUN_ID")]
    pub run: Option<String>,

    /// Take back every recorded run of this plan, newest first.
    // A plan's name may begin with a hyphen: the commands batchsse
    // prints give it as `--plan -x`.
    #[arg(long, value_name = "NAME", allow_hyphen_values = true)]
    pub plan: Option<String>,

    /// Count what would be reverted and what conflicts; write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// What to do with a row the application changed since the run.
    #[arg(long, value_enum, default_value_t)]
    pub on_conflict: crate::run::undo::apply::OnConflict,

    /// Wait this long for another process's lock before failing.
    #[arg(long, value_name = "MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(0..=i32::MAX as u64))]
    pub busy_timeout: u64,

    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub pace: PaceArgs,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["run", "plan", "older_than", "all"]))]
pub struct UndoClearArgs {
    /// The SQLite database file.
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,

    /// The run whose records to remove; refused while another run of its plan recorded one of its steps, or an undo of its plan stopped part-way.
    #[arg(long, value_name = "RUN_ID")]
    pub run: Option<String>,

    /// Remove the records of every run of this plan: it stays applied and checkpointed, no longer undoable.
    // A plan's name may begin with a hyphen: the commands batchsse
    // prints give it as `--plan -x`.
    #[arg(long, value_name = "NAME", allow_hyphen_values = true)]
    pub plan: Option<String>,

    /// Remove the records of runs last recorded longer ago than this (90s, 30m, 12h, 7d, 2w: a unit is needed), keeping back, with a line each, those that must stay (see below).
    #[arg(long, value_name = "AGE", allow_hyphen_values = true)]
    pub older_than: Option<String>,

    /// Remove every run's records and the tables themselves; refused while an undo has stopped part-way.
    #[arg(long)]
    pub all: bool,

    /// Wait this long for another process's lock before failing.
    #[arg(long, value_name = "MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(0..=i32::MAX as u64))]
    pub busy_timeout: u64,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["plan", "sql"]))]
pub struct RunArgs {
    /// The SQLite database file; it must exist (batchsse never creates one).
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,

    /// A JSON plan ("-" reads standard input).
    #[arg(long, value_name = "PATH")]
    pub plan: Option<PathBuf>,

    /// A SQL script whose every statement is one step ("-" reads standard input).
    #[arg(long, value_name = "PATH")]
    pub sql: Option<PathBuf>,

    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub pace: PaceArgs,

    /// Wait this long for another process's lock before failing.
    #[arg(long, value_name = "MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(0..=i32::MAX as u64))]
    pub busy_timeout: u64,

    /// Run everything in one transaction, report the real counts, then roll back.
    #[arg(long)]
    pub dry_run: bool,

    /// Run the whole plan as one transaction: all or nothing.
    #[arg(long)]
    pub atomic: bool,

    /// Do not record progress in the batchsse_checkpoint table (no resume).
    #[arg(long)]
    pub no_checkpoint: bool,

    /// Run a plan again from the start even if it was applied or edited since.
    #[arg(long)]
    pub force: bool,

    /// Record every change so `batchsse undo` can take the run back.
    #[arg(long)]
    pub undo: bool,
}

/// The progress server and the terminal, shared by `run` and `demo`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the progress server listens; 127.0.0.1:0 picks a free port.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:7077",
        conflicts_with = "no_serve"
    )]
    pub listen: String,

    /// Run without the progress server.
    #[arg(long)]
    pub no_serve: bool,

    /// Require this token on every route but /healthz (Authorization: Bearer T, or ?token=T).
    #[arg(long, value_name = "T", env = "BATCHSSE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Allow live control (POST /control, `batchsse ctl`, the dashboard's buttons) with this token, sent as Authorization: Bearer T only.
    #[arg(
        long,
        value_name = "T",
        env = "BATCHSSE_CONTROL_TOKEN",
        hide_env_values = true
    )]
    pub control_token: Option<String>,

    /// On a loopback address, also answer requests whose Host is NAME (a reverse proxy's); others get 421. Repeatable.
    #[arg(long, value_name = "NAME", conflicts_with = "no_serve")]
    pub allow_host: Vec<String>,

    /// Send Access-Control-Allow-Origin: ORIGIN, for a page served from another origin.
    #[arg(long, value_name = "ORIGIN", conflicts_with = "no_serve")]
    pub cors: Option<String>,

    /// Stream clients at once; more get 503.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        conflicts_with = "no_serve"
    )]
    pub max_clients: usize,

    /// Hold the first step until N stream clients are connected.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub wait_for_clients: usize,

    /// After `finished`, keep answering for SECS (late clients get the full replay) [default: 0; demo: 15].
    #[arg(long, value_name = "SECS", conflicts_with = "no_serve")]
    pub linger: Option<f64>,

    /// How long open streams may take to receive their tail (and --publish to catch up) before the process exits anyway.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub drain_timeout: f64,

    /// Terminal output: auto = bars on a terminal, github in GitHub Actions (GITHUB_ACTIONS=true), plain lines otherwise; json = NDJSON on stdout.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// At most one plain progress line per step every SECS (0: every one).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub progress_interval: f64,

    #[command(flatten)]
    pub publish: PublishArgs,
}

/// Publishing the run's events to Redis, for `batchsse relay`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Also append every event to the Redis stream batchsse:run:<run_id> (redis://[USER:PASSWORD@]HOST:PORT[/DB], rediss:// for TLS, redis+sentinel://HOST:PORT[,…]/SERVICE[/DB], redis+cluster://HOST:PORT[,…]; the password may come from BATCHSSE_REDIS_PASSWORD), for `batchsse relay`.
    #[arg(
        long,
        value_name = "URL",
        env = "BATCHSSE_PUBLISH",
        hide_env_values = true,
        help_heading = "Publish"
    )]
    pub publish: Option<String>,

    /// Keep the published stream this long after the run's last event.
    #[arg(long, value_name = "SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=10 * 365 * 86_400),
          requires = "publish", help_heading = "Publish")]
    pub publish_ttl: u64,

    #[command(flatten)]
    pub redis: RedisAccessArgs,
}

/// TLS files for a `rediss://` Redis (the password may come from
/// BATCHSSE_REDIS_PASSWORD, read where the URL is checked).
#[derive(Debug, Args, Default)]
pub struct RedisAccessArgs {
    /// Trust this CA (PEM) for a rediss:// Redis, instead of the system's roots (Mozilla's on macOS).
    #[arg(long, value_name = "FILE", help_heading = "Redis")]
    pub redis_ca: Option<PathBuf>,

    /// Client certificate (PEM) for a rediss:// Redis that wants one; with --redis-key.
    #[arg(long, value_name = "FILE", help_heading = "Redis")]
    pub redis_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", help_heading = "Redis")]
    pub redis_key: Option<PathBuf>,
}

/// `batchsse relay`: one run, from Redis, served as `run` serves it.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["run", "plan"]))]
pub struct RelayArgs {
    /// The Redis the run publishes to: redis://[USER:PASSWORD@]HOST:PORT[/DB], rediss:// for TLS, redis+sentinel://HOST:PORT[,…]/SERVICE[/DB], redis+cluster://HOST:PORT[,…] (the password may come from BATCHSSE_REDIS_PASSWORD).
    #[arg(
        value_name = "REDIS_URL",
        env = "BATCHSSE_PUBLISH",
        hide_env_values = true
    )]
    pub redis: String,

    /// The run to serve: its run_id (in the run's /status, its x-batchsse-run-id header, its start event, or `redis-cli GET batchsse:plan:NAME:latest`).
    #[arg(long, value_name = "RUN_ID")]
    pub run: Option<String>,

    /// Serve this plan's live run, or wait for its next one (the plan's name, as in the start event).
    // A plan's name may begin with a hyphen: the commands batchsse
    // prints give it as `--plan -x`.
    #[arg(long, value_name = "NAME", allow_hyphen_values = true)]
    pub plan: Option<String>,

    /// Where the relay listens; 127.0.0.1:0 picks a free port (the default is the run's port plus one, so both fit on one machine).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7078")]
    pub listen: String,

    /// Require this token on every route but /healthz (Authorization: Bearer T, or ?token=T).
    #[arg(long, value_name = "T", env = "BATCHSSE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// On a loopback address, also answer requests whose Host is NAME (a reverse proxy's); others get 421. Repeatable.
    #[arg(long, value_name = "NAME")]
    pub allow_host: Vec<String>,

    /// Send Access-Control-Allow-Origin: ORIGIN, for a page served from another origin.
    #[arg(long, value_name = "ORIGIN")]
    pub cors: Option<String>,

    /// Stream clients at once; more get 503.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_clients: usize,

    /// After `finished`, keep answering for SECS (late clients get the full replay).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub linger: f64,

    /// How long open streams may take to receive their tail before the relay exits anyway.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub drain_timeout: f64,

    #[command(flatten)]
    pub access: RedisAccessArgs,
}

/// How fast chunked steps go.
#[derive(Debug, Args)]
pub struct PaceArgs {
    /// Fix every chunked step's chunk size, 1–10000000 (turns adapting off).
    #[arg(long, value_name = "N", help_heading = "Pace", value_parser = whole(BATCH_SIZE, "rows"))]
    pub batch_size: Option<u64>,

    /// Adapt chunk sizes so one chunk holds the write lock about MS, 1–600000 [default: while another process may be using the database 10, or 20 in WAL mode; else 250].
    #[arg(long, value_name = "MS", help_heading = "Pace", value_parser = whole(CHUNK_TIME_MS, "ms"))]
    pub chunk_time: Option<u64>,

    /// After each chunk, yield R times its time so others get the lock (gh-ost's name), 0–100 [default: while another process may be using the database 1, or 0.75 in WAL mode; else 0].
    #[arg(long, value_name = "R", help_heading = "Pace")]
    pub nice_ratio: Option<f64>,

    /// Fixed pause between chunks, 0–600000 (a live command cuts it short).
    #[arg(long, value_name = "MS", default_value_t = 0, help_heading = "Pace", value_parser = whole(SLEEP_MS, "ms"))]
    pub sleep: u64,

    /// Wait between chunks while PATH exists (create it to pause, remove it to go on).
    #[arg(long, value_name = "PATH", help_heading = "Pace")]
    pub pause_file: Option<PathBuf>,

    /// Wait between chunks while this SELECT's first column is truthy (not NULL, 0 or ''); run on its own read connection at most every 100 ms; a check that takes over 1 s is stopped and counts as truthy.
    #[arg(long, value_name = "SQL", help_heading = "Pace")]
    pub throttle_query: Option<String>,

    /// WAL databases: wait while the -wal file is over N MiB and cannot be checkpointed (0: no limit; off with --atomic and --dry-run, whose own transaction fills it).
    #[arg(long, value_name = "N", default_value_t = 256, help_heading = "Pace")]
    pub max_wal_mb: u64,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Orders in the sample database (customers and sessions scale with it).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub rows: u64,

    /// Pause between chunks, 0–600000; the default paces the demo to about 20 s.
    #[arg(long, value_name = "MS", value_parser = whole(SLEEP_MS, "ms"))]
    pub sleep: Option<u64>,

    /// Keep the sample database in this folder instead of a temporary one,
    /// with the sample plans beside it (plan.json, undo-plan.json, fix.sql).
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,

    /// With --keep: only create the sample database (the plan not applied), to try `run` on.
    #[arg(long)]
    pub create_only: bool,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The run's address: its base URL (http://127.0.0.1:7077/) or its /events URL.
    #[arg(value_name = "URL")]
    pub url: String,

    /// The run's --token, sent as Authorization: Bearer T.
    #[arg(long, value_name = "T", env = "BATCHSSE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Terminal output: auto = bars on a terminal, github in GitHub Actions (GITHUB_ACTIONS=true), plain lines otherwise; json = NDJSON on stdout.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// At most one plain progress line per step every SECS (0: every one).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub progress_interval: f64,

    /// Keep trying to reach the run this long, at the start and after a dropped connection.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub connect_timeout: f64,

    /// The run's process id (a shell's $!): stop retrying as soon as that process has exited; on Linux, a server that is another run's (its start names another live batchsse) is not followed.
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
    pub pid: Option<u32>,
}

/// `--progress`: how the terminal shows a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, github in GitHub Actions (GITHUB_ACTIONS=true, standard error not a terminal), plain lines otherwise.
    Auto,
    /// Progress bars (indicatif).
    Bar,
    /// One line per change, at most one progress line per step per second.
    Plain,
    /// One JSON object per event on stdout: {"id":N,"event":"…","data":{…}}.
    Json,
    /// Plain lines with GitHub Actions workflow commands: a group per step, annotations, a step summary.
    Github,
    /// No progress output (errors are still printed).
    None,
}

/// A pace flag's value as a whole number, said with the flag's range when
/// it is not one (clap's own words for `1e400` would be "invalid digit
/// found in string"). A number out of the range is refused with the rest
/// of the pace, as `POST /control` refuses it (`config::check_pace`).
fn whole(
    range: std::ops::RangeInclusive<u64>,
    unit: &'static str,
) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    move |s| {
        s.parse().map_err(|_| {
            format!(
                "it takes a whole number of {unit} from {} to {}, written in digits",
                range.start(),
                range.end()
            )
        })
    }
}
