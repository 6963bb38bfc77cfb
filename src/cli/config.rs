//! Flags checked once into the settings the other parts take: a run's
//! database, plan source and options, and the server's address and rules.
//! Nothing here touches the database; every refusal is a usage error.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{PaceArgs, ProgressMode, PublishArgs, RedisAccessArgs, RelayArgs, RunArgs, ServeArgs};
use crate::error::UsageError;
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
        target: Target::parse("--publish (or BATCHSSE_PUBLISH)", url, &access(&a.redis))?,
        ttl: Duration::from_secs(a.publish_ttl),
        drain: seconds("--drain-timeout", drain_timeout)?,
    }))
}

/// The TLS files, and the password from `BATCHSSE_REDIS_PASSWORD` (used
/// where the URL has none), so that it need not show in `ps`.
fn access(a: &RedisAccessArgs) -> Access {
    Access {
        ca: a.redis_ca.clone(),
        cert: a.redis_cert.clone(),
        key: a.redis_key.clone(),
        password: std::env::var("BATCHSSE_REDIS_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()),
    }
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
                &access(&a.access),
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
    let (name, text) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| {
            UsageError::new(format!("cannot read the plan from standard input: {e}"))
        })?;
        if text.trim().is_empty() {
            return Err(UsageError::new(
                "the plan on standard input is empty; pipe a plan in, or pass a file path",
            ));
        }
        // Named by content, so the same plan piped in again resumes.
        (format!("stdin-{}", plan::short_digest(&text)), text)
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| {
            UsageError::new(format!(
                "cannot read {} {}: {}",
                if json { "plan" } else { "SQL script" },
                path.display(),
                io_reason(&e)
            ))
        })?;
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

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file; check the path".into(),
        std::io::ErrorKind::InvalidData => "it is not UTF-8 text".into(),
        _ => e.to_string(),
    }
}

fn options(pace: &PaceArgs, args: &RunArgs) -> Result<run::Options, UsageError> {
    if pace.batch_size == Some(0) {
        return Err(UsageError::new("--batch-size must be at least 1"));
    }
    if pace.chunk_time == Some(0) {
        return Err(UsageError::new("--chunk-time must be at least 1 ms"));
    }
    if let Some(r) = pace.nice_ratio
        && !(0.0..=100.0).contains(&r)
    {
        return Err(UsageError::new(format!(
            "--nice-ratio takes 0 to 100 (0: never yield; 1: yield as long as each chunk took); got {r}"
        )));
    }
    if let Some(q) = &pace.throttle_query
        && q.trim().is_empty()
    {
        return Err(UsageError::new(
            "--throttle-query is empty; give a SELECT whose first column is truthy while the run should wait",
        ));
    }
    Ok(run::Options {
        dry_run: args.dry_run,
        atomic: args.atomic,
        checkpoint: !args.no_checkpoint,
        pace: run::Pace {
            chunk_time: pace.chunk_time.map(Duration::from_millis),
            nice_ratio: pace.nice_ratio,
            sleep: Duration::from_millis(pace.sleep),
            batch_size: pace.batch_size,
        },
        brakes: run::Brakes {
            pause_file: pace.pause_file.clone(),
            throttle_query: pace.throttle_query.clone(),
            max_wal: pace.max_wal_mb.saturating_mul(1 << 20),
        },
    })
}

/// Checks `--progress-interval` (for `run`, `demo` and `watch`).
pub fn progress_interval(v: f64) -> Result<Duration, UsageError> {
    seconds("--progress-interval", v)
}

fn seconds(flag: &str, v: f64) -> Result<Duration, UsageError> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| UsageError::new(format!("{flag} takes a number of seconds ≥ 0; got {v}")))
        // Beyond a year is "forever"; it also keeps timer arithmetic safe.
        .map(|d| d.min(Duration::from_secs(365 * 24 * 3600)))
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
        "--listen {s:?} is not an address; use HOST:PORT such as 127.0.0.1:7077, or 127.0.0.1:0 for any free port"
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
    if let Some(o) = f.cors {
        if o == "*" && f.token.is_some() {
            return Err(UsageError::new(
                "--cors '*' would let any web page read a token-protected stream; name the page's origin, e.g. --cors http://localhost:5173",
            ));
        }
        if o.is_empty() || hyper::header::HeaderValue::from_str(o).is_err() {
            return Err(UsageError::new(format!(
                "--cors {o:?} is not a valid origin; use e.g. http://localhost:5173"
            )));
        }
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

/// `--token` and `--control-token` typed on the command line beside
/// `--no-serve` mean nothing: there is no server to guard or steer, and a
/// user who expects to steer the run must hear so before it starts. The
/// same values from the environment (`BATCHSSE_TOKEN`,
/// `BATCHSSE_CONTROL_TOKEN`) stay harmless. Clap's derive cannot tell the
/// two apart, so this reads where the values came from.
pub fn typed_without_server(matches: &clap::ArgMatches) -> Result<(), UsageError> {
    let Some(("run" | "demo", m)) = matches.subcommand() else {
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
