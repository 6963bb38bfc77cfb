//! Wires one run together: checks the flags and the plan once, then starts
//! the runner, the server and the terminal as readers of one event log, and
//! shuts everything down after `finished` (or on Ctrl-C / SIGTERM).

pub mod demo;

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::watch;

use crate::cli::{PaceArgs, RunArgs, ServeArgs};
use crate::error::{UsageError, exit};
use crate::events::log::EventLog;
use crate::events::{Event, Level, RunStatus};
use crate::lifecycle::Cancel;
use crate::plan::{self, Plan, Source};
use crate::run::{self as runner, Resume};
use crate::serve::{self as server};
use crate::view::terminal::{ProgressMode, Renderer};

/// Everything a run needs, checked.
pub struct Session {
    pub conn: Connection,
    pub plan: Plan,
    pub resume: Resume,
    pub opts: runner::Options,
    pub serve: Option<Serve>,
    pub progress: ProgressMode,
    /// Printed after the listening line (the demo's "open this URL"), with
    /// `{url}` the dashboard's address and `{events}` the stream's.
    pub banner: Option<String>,
}

/// The checked server settings.
pub struct Serve {
    pub addr: SocketAddr,
    pub config: server::Config,
    pub linger: Duration,
    pub drain: Duration,
    pub wait_for_clients: usize,
}

/// `batchsse run`: check everything, then execute.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let serve = check_serve(&args.serve, 0.0)?;
    let source = read_source(&args)?;
    let opts = options(&args.pace, &args)?;
    let lifecycle = Lifecycle::start()?;
    let session = open(
        &args.db,
        &source,
        opts,
        args.force,
        Duration::from_millis(args.busy_timeout),
        serve,
        args.serve.progress,
    )?;
    lifecycle.execute(session)
}

/// Opens the database and checks the plan against it; nothing is written.
pub fn open(
    db: &Path,
    source: &Source,
    opts: runner::Options,
    force: bool,
    busy_timeout: Duration,
    serve: Option<Serve>,
    progress: ProgressMode,
) -> Result<Session, UsageError> {
    let conn = runner::open_db(db, busy_timeout)?;
    let resuming = opts.checkpoint && !force;
    let plan = plan::prepare_resumable(source, &conn, |name| {
        if resuming {
            runner::checkpoint::finished_steps(&conn, name)
        } else {
            plan::Finished::new()
        }
    })?;
    runner::check(&plan, &opts)?;
    let fk = if plan.foreign_keys { "ON" } else { "OFF" };
    conn.execute_batch(&format!("PRAGMA foreign_keys = {fk}"))
        .map_err(|e| UsageError::new(format!("cannot set foreign_keys: {e}")))?;
    let resume = if opts.checkpoint {
        Resume::load(&conn, &plan, force)?
    } else {
        Resume::none()
    };
    Ok(Session {
        conn,
        plan,
        resume,
        opts,
        serve,
        progress,
        banner: None,
    })
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

pub fn options(pace: &PaceArgs, args: &RunArgs) -> Result<runner::Options, UsageError> {
    if pace.batch_size == Some(0) {
        return Err(UsageError::new("--batch-size must be at least 1"));
    }
    if pace.chunk_time == 0 {
        return Err(UsageError::new("--chunk-time must be at least 1 ms"));
    }
    Ok(runner::Options {
        dry_run: args.dry_run,
        atomic: args.atomic,
        batch_size: pace.batch_size,
        chunk_time: Duration::from_millis(pace.chunk_time),
        sleep: Duration::from_millis(pace.sleep),
        checkpoint: !args.no_checkpoint,
    })
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

/// Checks the server flags; `None` with `--no-serve`.
pub fn check_serve(a: &ServeArgs, default_linger: f64) -> Result<Option<Serve>, UsageError> {
    let linger = seconds("--linger", a.linger.unwrap_or(default_linger))?;
    let drain = seconds("--drain-timeout", a.drain_timeout)?;
    if a.no_serve {
        if a.wait_for_clients > 0 {
            return Err(UsageError::new(
                "--wait-for-clients needs the server; drop --no-serve or --wait-for-clients",
            ));
        }
        return Ok(None);
    }
    let addr = parse_listen(&a.listen)?;
    if a.max_clients == 0 {
        return Err(UsageError::new("--max-clients must be at least 1"));
    }
    if a.wait_for_clients > a.max_clients {
        return Err(UsageError::new(format!(
            "--wait-for-clients {} can never be met with --max-clients {}; lower one or raise the other",
            a.wait_for_clients, a.max_clients
        )));
    }
    if let Some(t) = &a.token {
        server::check_token(t)?;
    }
    if let Some(o) = &a.cors {
        if o == "*" && a.token.is_some() {
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
    Ok(Some(Serve {
        addr,
        config: server::Config {
            token: a.token.clone(),
            cors: a.cors.clone(),
            max_clients: a.max_clients,
            ..server::Config::default()
        },
        linger,
        drain,
        wait_for_clients: a.wait_for_clients,
    }))
}

/// One run's process from before its pre-run check to its exit: the runtime
/// and the Ctrl-C / SIGTERM listener. Start it before [`open`], so a signal
/// during the check (which can take a while, or wait out a lock) exits 130
/// with a message instead of killing the process mid-sentence.
pub struct Lifecycle {
    rt: tokio::runtime::Runtime,
    log: Arc<EventLog>,
    cancel: Arc<Cancel>,
    signals: watch::Receiver<u32>,
    phase: Arc<std::sync::Mutex<Phase>>,
}

/// What a signal means: during the check nothing has been written, so the
/// process may just exit; once the run starts, the runner must roll back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Checking,
    Running,
}

impl Lifecycle {
    /// Builds the runtime and installs the signal handlers before returning.
    pub fn start() -> anyhow::Result<Lifecycle> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let log = Arc::new(EventLog::new());
        let cancel = Arc::new(Cancel::new());
        let phase = Arc::new(std::sync::Mutex::new(Phase::Checking));
        let signals = {
            let _in_rt = rt.enter();
            watch_signals(cancel.clone(), log.clone(), phase.clone())
        };
        Ok(Lifecycle {
            rt,
            log,
            cancel,
            signals,
            phase,
        })
    }

    /// Runs a checked session to its end and returns the exit status.
    pub fn execute(self, session: Session) -> anyhow::Result<ExitCode> {
        // Taken under the lock the signal watcher holds while it exits, so a
        // signal is either handled as during the check or as during the run.
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = Phase::Running;
        let Lifecycle {
            rt,
            log,
            cancel,
            signals,
            ..
        } = self;
        let status = rt.block_on(drive(session, log, cancel, signals));
        // A client that never read its tail must not hold the exit.
        rt.shutdown_timeout(Duration::from_millis(100));
        Ok(ExitCode::from(status?.exit_code()))
    }
}

async fn drive(
    session: Session,
    log: Arc<EventLog>,
    cancel: Arc<Cancel>,
    signals: watch::Receiver<u32>,
) -> Result<RunStatus, UsageError> {
    let Session {
        conn,
        plan,
        resume,
        opts,
        serve,
        progress,
        banner,
    } = session;

    let mut server_task = None;
    let mut clients = None;
    let mut wait_for = 0;
    if let Some(s) = serve {
        let listener = server::bind(s.addr).await?;
        let local = listener.local_addr().unwrap_or(s.addr);
        crate::errln!("batchsse: listening on http://{local}/");
        if let Some(w) = exposure_warning(local, s.config.token.as_deref()) {
            crate::errln!("{w}");
        }
        if let Some(b) = banner {
            crate::errln!(
                "{}",
                b.replace("{url}", &page_url(local, &s.config, ""))
                    .replace("{events}", &page_url(local, &s.config, "events"))
            );
        }
        let state = server::State::new(log.clone(), s.config);
        clients = Some(state.watch_clients());
        wait_for = s.wait_for_clients;
        let stop = linger_then_stop(log.clone(), s.linger, signals.clone());
        server_task = Some(tokio::spawn(server::serve(listener, state, stop, s.drain)));
    }

    // Terminal output may block (a full pipe, a slow terminal); on its own
    // thread it never holds up the server's workers.
    let terminal = {
        let (log, handle) = (log.clone(), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || {
            handle.block_on(crate::view::terminal::follow(log, Renderer::new(progress)))
        })
    };

    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    if let Some(mut clients) = clients.filter(|_| wait_for > 0) {
        tokio::spawn(async move {
            let _ = clients.wait_for(|n| *n >= wait_for).await;
            let _ = gate_tx.send(());
        });
    } else {
        let _ = gate_tx.send(());
    }
    let runner_log = log.clone();
    let runner_cancel = cancel.clone();
    let status = tokio::task::spawn_blocking(move || {
        let gate = || {
            if wait_for > 0 {
                runner_log.push(Event::message(
                    serde_json::json!({"clients": wait_for}),
                    Level::Info,
                    format!(
                        "waiting for {wait_for} stream client(s) to connect (--wait-for-clients)"
                    ),
                ));
            }
            while !runner_cancel.is_cancelled() {
                match gate_rx.recv_timeout(Duration::from_millis(50)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            }
        };
        let job = runner::Job {
            conn: &conn,
            plan: &plan,
            opts: &opts,
            resume: &resume,
        };
        runner::run(job, &runner_log, &runner_cancel, gate)
    })
    .await;
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            // A bug in the runner must not leave viewers and the process
            // waiting forever: end the log so everything shuts down.
            let snap = log.snapshot();
            log.push(Event::Finished(crate::events::Finished {
                status: RunStatus::Failed,
                steps_done: snap.steps_done,
                steps_total: snap.steps_total,
                rows_changed: snap.rows_changed,
                elapsed_ms: 0,
                dry_run: false,
                error: Some(format!(
                    "internal error, please report it: the runner stopped ({e}); its open transaction was rolled back"
                )),
            }));
            RunStatus::Failed
        }
    };

    let _ = terminal.await;
    if let Some(t) = server_task {
        let _ = t.await;
    }
    Ok(status)
}

/// A warning when the stream is reachable from other machines unguarded.
fn exposure_warning(addr: SocketAddr, token: Option<&str>) -> Option<String> {
    (!addr.ip().is_loopback() && token.is_none()).then(|| {
        format!(
            "batchsse: warning: listening on {} without --token: anyone who can reach this address can watch the run",
            addr.ip()
        )
    })
}

/// `http://HOST:PORT/PATH`, with `?token=` when the run has one.
fn page_url(addr: SocketAddr, config: &server::Config, path: &str) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    let host = if addr.is_ipv6() && host != "127.0.0.1" {
        format!("[{host}]")
    } else {
        host
    };
    match &config.token {
        Some(t) => format!(
            "http://{host}:{}/{path}?token={}",
            addr.port(),
            form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>()
        ),
        None => format!("http://{host}:{}/{path}", addr.port()),
    }
}

/// Counts Ctrl-C and SIGTERM. During the pre-run check one exits 130 at once
/// (nothing has been written). During the run the first cancels it (the
/// current chunk rolls back) and a second exits at once (no transaction is
/// ever committed). On Unix the handlers are installed before this returns.
fn watch_signals(
    cancel: Arc<Cancel>,
    log: Arc<EventLog>,
    phase: Arc<std::sync::Mutex<Phase>>,
) -> watch::Receiver<u32> {
    let (tx, rx) = watch::channel(0u32);
    #[cfg(unix)]
    let (mut int, mut term) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    tokio::spawn(async move {
        loop {
            #[cfg(unix)]
            tokio::select! {
                () = next_signal(&mut int) => {}
                () = next_signal(&mut term) => {}
            }
            #[cfg(not(unix))]
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            {
                let phase = phase.lock().unwrap_or_else(|p| p.into_inner());
                if *phase == Phase::Checking {
                    // Exits holding the lock, so the run never starts.
                    crate::errln!(
                        "batchsse: interrupted during the pre-run check; nothing was written"
                    );
                    std::process::exit(i32::from(exit::INTERRUPTED));
                }
            }
            let n = *tx.borrow() + 1;
            tx.send_replace(n);
            if log.finished_id().is_some() {
                // The run is over; this only cuts the linger short.
                continue;
            }
            if n == 1 {
                crate::errln!(
                    "batchsse: interrupted; rolling back the current chunk (press Ctrl-C again to quit at once)"
                );
                cancel.cancel();
            } else {
                crate::errln!(
                    "batchsse: quitting now; the open transaction is rolled back by SQLite"
                );
                std::process::exit(i32::from(exit::INTERRUPTED));
            }
        }
    });
    rx
}

/// The next delivery of a signal; never, if its handler could not be installed.
#[cfg(unix)]
async fn next_signal(s: &mut Option<tokio::signal::unix::Signal>) {
    match s.as_mut() {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Resolves once the run has finished and `linger` has passed (or a signal
/// arrives during the linger).
async fn linger_then_stop(log: Arc<EventLog>, linger: Duration, mut signals: watch::Receiver<u32>) {
    let mut rx = log.subscribe();
    let _ = rx.wait_for(|_| log.finished_id().is_some()).await;
    if linger.is_zero() {
        return;
    }
    let seen = *signals.borrow_and_update();
    tokio::select! {
        () = tokio::time::sleep(linger) => {}
        _ = signals.wait_for(|n| *n > seen) => {}
    }
}

/// Where `demo` keeps its database.
pub fn demo_dir(keep: Option<&PathBuf>) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    Ok(match keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            (None, dir.clone())
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("batchsse-demo-")
                .tempdir()?;
            let p = t.path().to_owned();
            (Some(t), p)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unguarded_non_loopback_address_is_warned_about() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(
            exposure_warning(addr("0.0.0.0:7077"), None)
                .unwrap()
                .contains("--token")
        );
        assert!(exposure_warning(addr("192.168.1.5:7077"), None).is_some());
        assert!(exposure_warning(addr("[::]:7077"), None).is_some());
        assert!(exposure_warning(addr("0.0.0.0:7077"), Some("t")).is_none());
        assert!(exposure_warning(addr("127.0.0.1:7077"), None).is_none());
        assert!(exposure_warning(addr("[::1]:7077"), None).is_none());
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
