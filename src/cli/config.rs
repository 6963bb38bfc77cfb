//! Flags checked once into the settings the other parts take: a run's
//! database, plan source and options, and the server's address and rules.
//! Nothing here touches the database; every refusal is a usage error.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{PaceArgs, ProgressMode, PublishArgs, RedisAccessArgs, RelayArgs, RunArgs, ServeArgs};
use crate::error::UsageError;
use crate::human::quoted;
use crate::lifecycle::{BATCH_SIZE, CHUNK_TIME_MS, NICE_RATIO, SLEEP_MS};
use crate::plan::{self, Source};
use crate::relay::{Access, Target, source::Which};
use crate::run;
use crate::serve;

/// A checked `run`: everything but the database's contents.
pub struct RunConfig {
    pub db: PathBuf,
    pub source: Source,
    pub opts: run::Options,
    /// `--force`: start the plan over, whatever the checkpoint says.
    pub force: bool,
    pub busy_timeout: Duration,
    pub serve: Option<Serve>,
    pub progress: ProgressMode,
    /// `--progress-interval`.
    pub progress_interval: Duration,
    /// `--publish`: where the events also go.
    pub publish: Option<Publish>,
}

/// A checked `--publish`.
pub struct Publish {
    pub target: Target,
    /// `--publish-ttl`.
    pub ttl: Duration,
    /// `--drain-timeout`: how long the exit waits for Redis to take the rest.
    pub drain: Duration,
}

/// Checks `--publish` and `--publish-ttl` (for `run` and `demo`).
pub fn publish(a: &PublishArgs, drain_timeout: f64) -> Result<Option<Publish>, UsageError> {
    let Some(url) = &a.publish else {
        if a.redis.redis_ca.is_some() || a.redis.redis_cert.is_some() || a.redis.redis_key.is_some()
        {
            return Err(UsageError::new(
                "--redis-ca, --redis-cert and --redis-key go with --publish rediss://…; add --publish, or leave them out",
            ));
        }
        return Ok(None);
    };
    Ok(Some(Publish {
        target: Target::parse("--publish (or BATCHSSE_PUBLISH)", url, &access(&a.redis)?)?,
        ttl: Duration::from_secs(a.publish_ttl),
        drain: seconds("--drain-timeout", drain_timeout)?,
    }))
}

/// The TLS files, and the password from `BATCHSSE_REDIS_PASSWORD` (used
/// where the URL has none), so that it need not show in `ps`.
fn access(a: &RedisAccessArgs) -> Result<Access, UsageError> {
    let password = match std::env::var("BATCHSSE_REDIS_PASSWORD") {
        Ok(p) => Some(p).filter(|p| !p.is_empty()),
        Err(std::env::VarError::NotPresent) => None,
        // Dropped without a word, it left the user with Redis's NOAUTH.
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(UsageError::new(
                "the environment variable BATCHSSE_REDIS_PASSWORD is not UTF-8 text; set it to the Redis user's password as text (or put the password in the URL, %-escaped)",
            ));
        }
    };
    Ok(Access {
        ca: a.redis_ca.clone(),
        cert: a.redis_cert.clone(),
        key: a.redis_key.clone(),
        password,
    })
}

/// A checked `relay`.
pub struct RelayConfig {
    pub target: Target,
    pub which: Which,
    pub serve: Serve,
}

impl RelayConfig {
    pub fn from_args(a: &RelayArgs) -> Result<RelayConfig, UsageError> {
        let which = match (&a.run, &a.plan) {
            (Some(run), None) => Which::Run(run.clone()),
            (None, Some(plan)) => Which::Plan(plan.clone()),
            _ => return Err(UsageError::new("give exactly one of --run or --plan")),
        };
        let serve = check_server(ServerFlags {
            listen: &a.listen,
            token: a.token.as_ref(),
            cors: a.cors.as_ref(),
            allow_host: &a.allow_host,
            max_clients: a.max_clients,
            linger: a.linger,
            drain_timeout: a.drain_timeout,
        })?;
        Ok(RelayConfig {
            target: Target::parse(
                "the Redis URL (REDIS_URL, or BATCHSSE_PUBLISH)",
                &a.redis,
                &access(&a.access)?,
            )?,
            which,
            serve,
        })
    }
}

impl RunConfig {
    pub fn from_args(args: &RunArgs) -> Result<RunConfig, UsageError> {
        let serve = check_serve(&args.serve, 0.0)?;
        let source = read_source(args)?;
        Ok(RunConfig {
            db: args.db.clone(),
            source,
            opts: options(&args.pace, args)?,
            force: args.force,
            busy_timeout: Duration::from_millis(args.busy_timeout),
            serve,
            progress: args.serve.progress,
            progress_interval: progress_interval(args.serve.progress_interval)?,
            publish: publish(&args.serve.publish, args.serve.drain_timeout)?,
        })
    }
}

/// `batchsse undo`'s flags, checked.
pub struct UndoConfig {
    pub db: PathBuf,
    /// `Ok(run id)` for `--run`, `Err(plan name)` for `--plan`.
    pub which: Result<String, String>,
    pub opts: run::Options,
    pub on_conflict: run::undo::apply::OnConflict,
    pub busy_timeout: Duration,
    pub serve: Option<Serve>,
    pub progress: ProgressMode,
    pub progress_interval: Duration,
    pub publish: Option<Publish>,
}

impl UndoConfig {
    pub fn from_args(a: &crate::cli::UndoApplyArgs) -> Result<UndoConfig, UsageError> {
        let which = match (&a.run, &a.plan) {
            (Some(r), _) => Ok(r.clone()),
            (None, Some(p)) => Err(p.clone()),
            (None, None) => {
                return Err(UsageError::new(format!(
                    "say what to take back: --run RUN_ID or --plan NAME (`batchsse undo list --db {}` shows them)",
                    crate::human::shell_path(a.db.as_deref().unwrap_or(Path::new("FILE")))
                )));
            }
        };
        Ok(UndoConfig {
            db: a.db.clone().unwrap_or_default(),
            which,
            opts: run::Options {
                dry_run: a.dry_run,
                ..paced_within(&a.pace, run::one_transaction(a.dry_run, false))?
            },
            on_conflict: a.on_conflict,
            busy_timeout: Duration::from_millis(a.busy_timeout),
            serve: check_serve(&a.serve, 0.0)?,
            progress: a.serve.progress,
            progress_interval: progress_interval(a.serve.progress_interval)?,
            publish: publish(&a.serve.publish, a.serve.drain_timeout)?,
        })
    }
}

/// The checked server settings.
pub struct Serve {
    pub addr: SocketAddr,
    pub config: serve::Config,
    pub linger: Duration,
    pub drain: Duration,
    pub wait_for_clients: usize,
}

fn read_source(args: &RunArgs) -> Result<Source, UsageError> {
    let (path, json) = match (&args.plan, &args.sql) {
        (Some(p), None) => (p, true),
        (None, Some(p)) => (p, false),
        _ => return Err(UsageError::new("give exactly one of --plan or --sql")),
    };
    let what = if json { "plan" } else { "SQL script" };
    let (name, text) = if path == Path::new("-") {
        let bytes = read_bounded(std::io::stdin().lock(), MOST_PLAN_BYTES).map_err(|e| {
            UsageError::new(format!("cannot read the {what} from standard input: {e}"))
        })?;
        let text = utf8(bytes).map_err(|why| {
            UsageError::new(format!("cannot read the {what} on standard input: {why}"))
        })?;
        if text.trim().is_empty() {
            return Err(UsageError::new(format!(
                "the {what} on standard input is empty; pipe one in, or pass a file path"
            )));
        }
        // Named by content, so the same plan piped in again resumes.
        (format!("stdin-{}", plan::short_digest(&text)), text)
    } else {
        let unreadable = |why: String| {
            UsageError::new(format!(
                "cannot read {what} {}: {why}",
                crate::human::shown_path(path)
            ))
        };
        let bytes = read_plan_file(path).map_err(|e| unreadable(io_reason(&e)))?;
        let text = utf8(bytes).map_err(unreadable)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        (name, text)
    };
    Ok(if json {
        // Editors on Windows save a BOM; it marks the encoding and is no part
        // of the JSON. A SQL script keeps its own (SQLite skips it), so its
        // step checksums stay what earlier runs recorded.
        let text = match text.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_owned(),
            None => text,
        };
        Source::Json { name, text }
    } else {
        Source::Sql { name, text }
    })
}

/// The most of a plan or script read: SQLite takes no statement longer
/// (`SQLITE_MAX_SQL_LENGTH`), and `/dev/zero` or an endless pipe would
/// otherwise fill the memory.
const MOST_PLAN_BYTES: u64 = 1_000_000_000;

/// All of `from`, unless it holds more than `most` bytes.
fn read_bounded(from: impl Read, most: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    from.take(most.saturating_add(1)).read_to_end(&mut bytes)?;
    match bytes.len() as u64 > most {
        true => Err(too_long()),
        false => Ok(bytes),
    }
}

/// A plan or script past [`MOST_PLAN_BYTES`]: a file, unread (its size
/// says so), or a stream, once that much came.
fn read_plan_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() > MOST_PLAN_BYTES {
        return Err(too_long());
    }
    read_bounded(file, MOST_PLAN_BYTES)
}

fn too_long() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::FileTooLarge,
        "it is longer than 1,000,000,000 bytes, the longest SQL SQLite takes; check the path, or split the work into several plans",
    )
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file; check the path".into(),
        std::io::ErrorKind::IsADirectory => "it is a folder; give the file".into(),
        _ => e.to_string(),
    }
}

/// A plan's bytes as text, or why they are not, saying what to do.
fn utf8(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        if bytes.starts_with(b"SQLite format 3\0") {
            "it is a SQLite database, not a plan (--db takes the database); check the path".into()
        } else if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
            "it is UTF-16 text (as Windows PowerShell's > writes); save it as UTF-8".into()
        } else {
            "it is not UTF-8 text; save it as UTF-8".into()
        }
    })
}

fn options(pace: &PaceArgs, args: &RunArgs) -> Result<run::Options, UsageError> {
    let paced = paced_within(pace, run::one_transaction(args.dry_run, args.atomic))?;
    Ok(run::Options {
        dry_run: args.dry_run,
        atomic: args.atomic,
        checkpoint: !args.no_checkpoint,
        undo: args.undo,
        ..paced
    })
}

/// [`paced`], for a run (or undo) that may be one transaction, which
/// `mode` names (`--dry-run`, `--atomic`): it holds the write lock until
/// it ends, so the brakes that wait between chunks are refused, and its
/// own WAL frames are not checkpointed before it ends, so waiting for the
/// WAL to shrink would wait forever: that cap is off.
fn paced_within(pace: &PaceArgs, mode: Option<&str>) -> Result<run::Options, UsageError> {
    if let Some(mode) = mode {
        let brake = [
            ("--pause-file", pace.pause_file.is_some()),
            ("--throttle-query", pace.throttle_query.is_some()),
        ];
        if let Some((flag, _)) = brake.iter().find(|(_, given)| *given) {
            return Err(UsageError::new(format!(
                "{flag} cannot be used with {mode}: {}; drop one of them",
                run::LOCK_HELD
            )));
        }
    }
    let mut paced = paced(pace)?;
    if mode.is_some() {
        paced.brakes.max_wal = 0;
    }
    Ok(paced)
}

/// The options the pace flags set (shared by `run` and `undo`).
pub fn paced(pace: &PaceArgs) -> Result<run::Options, UsageError> {
    check_pace(pace)?;
    if let Some(q) = &pace.throttle_query
        && q.trim().is_empty()
    {
        return Err(UsageError::new(
            "--throttle-query is empty; give a SELECT whose first column is truthy while the run should wait",
        ));
    }
    Ok(run::Options {
        pace: run::Pace {
            chunk_time: pace.chunk_time.map(Duration::from_millis),
            nice_ratio: pace.nice_ratio.map(crate::events::Settings::tidy_ratio),
            sleep: Duration::from_millis(pace.sleep),
            batch_size: pace.batch_size,
        },
        brakes: run::Brakes {
            pause_file: pace.pause_file.clone(),
            throttle_query: pace.throttle_query.clone(),
            max_wal: pace.max_wal_mb.saturating_mul(1 << 20),
        },
        ..run::Options::default()
    })
}

/// The pace flags take what `POST /control` takes.
fn check_pace(pace: &PaceArgs) -> Result<(), UsageError> {
    sleep_ms(pace.sleep)?;
    if let Some(n) = pace.batch_size {
        in_range("--batch-size", n, &BATCH_SIZE, "rows")?;
    }
    if let Some(ms) = pace.chunk_time {
        in_range("--chunk-time", ms, &CHUNK_TIME_MS, "ms")?;
    }
    if let Some(r) = pace.nice_ratio
        && !NICE_RATIO.contains(&r)
    {
        // 1e308 as written, not as its 309 digits.
        let got = if r.abs() >= 1e6 {
            format!("{r:e}")
        } else {
            r.to_string()
        };
        return Err(UsageError::new(format!(
            "--nice-ratio takes 0 to 100 (0: never yield; 1: yield as long as each chunk took); got {got}"
        )));
    }
    Ok(())
}

/// Checks `--sleep` (for `run` and `demo`).
pub fn sleep_ms(ms: u64) -> Result<Duration, UsageError> {
    in_range("--sleep", ms, &SLEEP_MS, "ms").map(Duration::from_millis)
}

fn in_range(
    flag: &str,
    v: u64,
    range: &RangeInclusive<u64>,
    unit: &str,
) -> Result<u64, UsageError> {
    if range.contains(&v) {
        return Ok(v);
    }
    Err(UsageError::new(format!(
        "{flag} takes {} to {} {unit}, as a live `batchsse ctl set` does; got {v}",
        range.start(),
        range.end()
    )))
}

/// Checks `--progress-interval` (for `run`, `demo` and `watch`).
pub fn progress_interval(v: f64) -> Result<Duration, UsageError> {
    seconds("--progress-interval", v)
}

/// `flag`'s number of seconds, ≥ 0 and finite. Beyond a year is "forever"
/// and taken as a year, which also keeps timer arithmetic safe (a number
/// too large for a `Duration` too: it still meets the rule).
pub fn seconds(flag: &str, v: f64) -> Result<Duration, UsageError> {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    if v.is_finite() && v > YEAR.as_secs_f64() {
        return Ok(YEAR);
    }
    Duration::try_from_secs_f64(v)
        .map_err(|_| UsageError::new(format!("{flag} takes a number of seconds ≥ 0; got {v}")))
}

/// Parses `--listen`: HOST:PORT, [v6]:PORT, localhost:PORT or a bare port.
pub fn parse_listen(s: &str) -> Result<SocketAddr, UsageError> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = s
        .strip_prefix("localhost:")
        .and_then(|p| p.parse::<u16>().ok())
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    Err(UsageError::new(format!(
        "--listen {} is not an address; use HOST:PORT such as 127.0.0.1:7077, or 127.0.0.1:0 for any free port",
        quoted(s)
    )))
}

/// The flags every server takes, a run's and a relay's.
struct ServerFlags<'a> {
    listen: &'a str,
    token: Option<&'a String>,
    cors: Option<&'a String>,
    allow_host: &'a [String],
    max_clients: usize,
    linger: f64,
    drain_timeout: f64,
}

/// Checks the server flags; `None` with `--no-serve`.
pub fn check_serve(a: &ServeArgs, default_linger: f64) -> Result<Option<Serve>, UsageError> {
    let flags = ServerFlags {
        listen: &a.listen,
        token: a.token.as_ref(),
        cors: a.cors.as_ref(),
        allow_host: &a.allow_host,
        max_clients: a.max_clients,
        linger: a.linger.unwrap_or(default_linger),
        drain_timeout: a.drain_timeout,
    };
    if a.no_serve {
        seconds("--linger", flags.linger)?;
        seconds("--drain-timeout", flags.drain_timeout)?;
        if a.wait_for_clients > 0 {
            return Err(UsageError::new(
                "--wait-for-clients needs the server; drop --no-serve or --wait-for-clients",
            ));
        }
        return Ok(None);
    }
    let mut serve = check_server(flags)?;
    if a.wait_for_clients > a.max_clients {
        return Err(UsageError::new(format!(
            "--wait-for-clients {} can never be met with --max-clients {}; lower one or raise the other",
            a.wait_for_clients, a.max_clients
        )));
    }
    if let Some(t) = &a.control_token {
        serve::check_control_token(t)?;
    }
    serve::check_distinct(a.token.as_deref(), a.control_token.as_deref())?;
    serve.config.control_token = a.control_token.clone();
    serve.wait_for_clients = a.wait_for_clients;
    Ok(Some(serve))
}

/// Checks what every server takes: no control token, no start gate.
fn check_server(f: ServerFlags<'_>) -> Result<Serve, UsageError> {
    let linger = seconds("--linger", f.linger)?;
    let drain = seconds("--drain-timeout", f.drain_timeout)?;
    let addr = parse_listen(f.listen)?;
    if f.max_clients == 0 {
        return Err(UsageError::new("--max-clients must be at least 1"));
    }
    if let Some(t) = f.token {
        serve::check_token(t)?;
    }
    for name in f.allow_host {
        check_allow_host(name)?;
    }
    if let Some(o) = f.cors {
        if o == "*" && f.token.is_some() {
            return Err(UsageError::new(
                "--cors '*' would let any web page read a token-protected stream; name the page's origin, e.g. --cors http://localhost:5173",
            ));
        }
        check_cors(o)?;
    }
    Ok(Serve {
        addr,
        config: serve::Config {
            token: f.token.cloned(),
            cors: f.cors.cloned(),
            max_clients: f.max_clients,
            allow_hosts: f.allow_host.to_vec(),
            ..serve::Config::default()
        },
        linger,
        drain,
        wait_for_clients: 0,
    })
}

/// An `--allow-host` is a name as it comes in `Host` (a proxy's
/// `batch.example.com`, optionally with `:PORT`): never empty (an empty
/// name would let in a request with an empty `Host`), no URL, no blanks.
fn check_allow_host(name: &str) -> Result<(), UsageError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:[]".contains(c))
        && !name.starts_with(':');
    if ok {
        return Ok(());
    }
    Err(UsageError::new(format!(
        "--allow-host {} is not a host name; give the name a proxy sends in Host, e.g. --allow-host batch.example.com (no scheme, path or spaces)",
        quoted(name)
    )))
}

/// A `--cors` origin is `*`, `null`, or one origin exactly as a browser
/// sends it in `Origin`: `scheme://host[:port]`, lower case, without a
/// path or the scheme's default port. The browser compares the two byte for
/// byte, so `http://localhost:5173/` (as copied from the address bar) would
/// let no page in, and say so only in the page's console.
fn check_cors(o: &str) -> Result<(), UsageError> {
    if o == "*" || o == "null" {
        return Ok(());
    }
    let usage = || {
        UsageError::new(format!(
            "--cors {} is not an origin; give the page's scheme, host and port, e.g. --cors http://localhost:5173",
            quoted(o)
        ))
    };
    let (scheme, rest) = o.split_once("://").ok_or_else(usage)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (authority, None),
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_[]:".contains(c));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    if !(scheme_ok && host_ok && port_ok) {
        return Err(usage());
    }
    let scheme = scheme.to_ascii_lowercase();
    let default = matches!(
        (scheme.as_str(), port),
        ("http", Some("80")) | ("https", Some("443"))
    );
    let port = port.filter(|_| !default).map(|p| format!(":{p}"));
    let origin = format!(
        "{scheme}://{}{}",
        host.to_ascii_lowercase(),
        port.unwrap_or_default()
    );
    if origin == o {
        return Ok(());
    }
    Err(UsageError::new(format!(
        "--cors {} is not an origin as a browser sends it, and the browser compares the two exactly, so no page would be let in; use --cors {origin} (scheme, host and port only: no path or trailing slash)",
        quoted(o)
    )))
}

/// `--token` and `--control-token` typed on the command line beside
/// `--no-serve` mean nothing: there is no server to guard or steer, and a
/// user who expects to steer the run must hear so before it starts. The
/// same values from the environment (`BATCHSSE_TOKEN`,
/// `BATCHSSE_CONTROL_TOKEN`) stay harmless. Clap's derive cannot tell the
/// two apart, so this reads where the values came from.
pub fn typed_without_server(matches: &clap::ArgMatches) -> Result<(), UsageError> {
    let Some(("run" | "demo" | "undo", m)) = matches.subcommand() else {
        return Ok(());
    };
    if !m.get_flag("no_serve") {
        return Ok(());
    }
    for (id, flag) in [("token", "--token"), ("control_token", "--control-token")] {
        if m.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
            return Err(UsageError::new(format!(
                "{flag} needs the server, which --no-serve turns off; drop one of them"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_read_only_up_to_the_bound() {
        assert_eq!(read_bounded(&b"abc"[..], 3).unwrap(), b"abc");
        let endless = std::io::repeat(b'x');
        let e = read_bounded(endless, 1000).unwrap_err();
        assert!(e.to_string().contains("longest SQL"), "{e}");
    }

    #[test]
    fn a_cors_origin_is_one_as_a_browser_sends_it() {
        for good in [
            "http://localhost:5173",
            "https://app.example.com",
            "http://[::1]:8080",
            "http://127.0.0.1:5173",
            "*",
            "null",
        ] {
            assert_eq!(check_cors(good), Ok(()), "{good}");
        }
        for (bad, fix) in [
            (
                "http://localhost:5173/",
                "use --cors http://localhost:5173 ",
            ),
            (
                "http://localhost:5173/app",
                "use --cors http://localhost:5173 ",
            ),
            ("HTTP://LocalHost:5173", "use --cors http://localhost:5173 "),
            ("http://localhost:80", "use --cors http://localhost "),
            (
                "https://app.example.com:443/",
                "use --cors https://app.example.com ",
            ),
            ("localhost:5173", "is not an origin;"),
            ("http://", "is not an origin;"),
            ("http://a.test, http://b.test", "is not an origin;"),
            ("http://user@a.test", "is not an origin;"),
            ("http://a.test:x", "is not an origin;"),
            ("", "is not an origin;"),
        ] {
            let e = check_cors(bad).unwrap_err().0;
            assert!(e.contains("--cors") && e.contains(fix), "{bad:?}: {e}");
        }
    }

    #[test]
    fn allowed_hosts_are_names_only() {
        for good in [
            "proxy",
            "batch.example.com",
            "batch.example.com:8443",
            "[::1]:80",
            "a_b-c",
        ] {
            assert_eq!(check_allow_host(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ":80",
            "http://proxy",
            "a b",
            "proxy/",
            "tök",
            "a,b",
            " ",
        ] {
            let e = check_allow_host(bad).unwrap_err().0;
            assert!(e.contains("--allow-host"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn listen_addresses_people_type_parse() {
        assert_eq!(parse_listen("127.0.0.1:0").unwrap().port(), 0);
        assert_eq!(
            parse_listen("8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen("localhost:9").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(parse_listen("[::1]:7077").is_ok());
        for bad in ["", "host", "1.2.3.4", "300.0.0.1:80", "127.0.0.1:99999"] {
            assert!(
                parse_listen(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("127.0.0.1:0"),
                "{bad}"
            );
        }
    }
}
