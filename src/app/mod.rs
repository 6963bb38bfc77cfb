//! The commands that run a batch (`run`, and `demo` on a sample shop):
//! open the database and check the plan (nothing written), then run it with
//! the server and the terminal as readers of one event log, through the
//! phases `lifecycle` lists. The operator's commands sit beside them:
//! `checkpoint` (list and clear what resumable runs recorded) and `docs`
//! (completions, the man page, the event schema).

pub mod checkpoint;
pub mod ctl;
pub mod demo;
pub mod docs;
pub mod relay;
pub mod undo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use rusqlite::Connection;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::cli::RunArgs;
use crate::cli::config::{Publish, RunConfig, Serve};
use crate::error::UsageError;
use crate::events::log::EventLog;
use crate::events::{Event, Finished, Level, RunStatus};
use crate::human::shell_word;
use crate::lifecycle::{self, Lifecycle, Parts};
use crate::plan::{self, Plan};
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
    pub progress_interval: std::time::Duration,
    /// `--publish`: checked, not yet connected.
    pub publish: Option<Publish>,
    /// Printed after the listening line (the demo's "open this URL"), with
    /// `{url}` the dashboard's address, `{control_url}` the same with the
    /// control token after `#`, `{base}` it without a query, `{events}` the
    /// stream's address and `{control_token}`.
    pub banner: Option<String>,
    /// `batchsse undo`: take these runs back instead of applying `plan`
    /// (which then only names the plan).
    pub undo: Option<runner::undo::apply::Spec>,
}

/// `batchsse run`: check everything, then execute.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = RunConfig::from_args(&args)?;
    if let Some(plan) = args.plan.as_ref().or(args.sql.as_ref())
        && !config.opts.dry_run
    {
        checkpoint::refuse_beside_the_same_plan(&config.db, plan)?;
    }
    runner::look_ahead(&config.db);
    let lifecycle = Lifecycle::start()?;
    let session = open(config)?;
    execute(lifecycle, session)
}

/// Opens the database and checks the plan against it; nothing is written.
pub fn open(config: RunConfig) -> Result<Session, UsageError> {
    let RunConfig {
        db,
        source,
        opts,
        force,
        busy_timeout,
        serve,
        progress,
        progress_interval,
        publish,
    } = config;
    let conn = runner::open_db(&db, busy_timeout)?;
    let resuming = opts.checkpoint && !force;
    let own = |table: &str| runner::undo::store::is_own(table.as_bytes());
    let plan = plan::prepare_resumable(&source, &conn, own, |name| {
        if resuming {
            runner::checkpoint::finished_steps(&conn, name)
        } else {
            plan::Finished::new()
        }
    })?;
    runner::check(&plan, &opts)?;
    // A dry run records nothing, but refuses what the real run would, so
    // that it passing means the run can go.
    if opts.undo || plan.undo {
        runner::undo::refuse_unrecordable(&conn, &plan)?;
    }
    if let Some(q) = &opts.brakes.throttle_query {
        runner::check_throttle_query(&db, q)?;
    }
    let fk = if plan.foreign_keys { "ON" } else { "OFF" };
    conn.execute_batch(&format!("PRAGMA foreign_keys = {fk}"))
        .map_err(|e| UsageError::new(format!("cannot set foreign_keys: {e}")))?;
    if !opts.dry_run {
        checkpoint::refuse_beside_an_undo(&conn, &db, &plan.name)?;
    }
    let resume = if opts.checkpoint {
        Resume::load(&conn, &plan, force)?
    } else {
        Resume::none()
    };
    runner::refuse_escaping_chunks(&conn, &plan, &resume)?;
    if opts.undo || plan.undo {
        runner::undo::refuse_unrecorded_part(&conn, &plan, &resume)?;
    } else {
        runner::undo::refuse_unrecorded_rest(&conn, &plan, &resume)?;
    }
    Ok(Session {
        conn,
        plan,
        resume,
        opts,
        serve,
        progress,
        progress_interval,
        publish,
        banner: None,
        undo: None,
    })
}

/// Runs a checked session to its end; the exit status is the run's.
pub fn execute(lifecycle: Lifecycle, session: Session) -> anyhow::Result<ExitCode> {
    let status = lifecycle.run(|parts| drive(session, parts))?;
    Ok(ExitCode::from(status.exit_code()))
}

/// The run with its readers: the server (if on), the terminal, then the
/// runner on a blocking thread; returns once every reader is done.
async fn drive(mut session: Session, parts: Parts) -> Result<RunStatus, UsageError> {
    if let Some(why) = runner::why_no_pause(&session.opts) {
        parts.steering.refuse_pause(why);
    }
    if let Some(why) = runner::why_no_wait(&session.opts) {
        parts.steering.refuse_waits(why);
    }
    if session.undo.is_some() {
        parts
            .steering
            .refuse_resizes(runner::undo::apply::WHY_NO_RESIZE.into());
        parts.log.set_kind(crate::events::RunKind::Undo);
    }
    let banner = session.banner.take();
    let publisher = match session.publish.take() {
        Some(p) => Some((start_publishing(p.target, p.ttl, &parts).await?, p.drain)),
        None => None,
    };
    let (server_task, wait_for, linger) = match session.serve.take() {
        Some(s) => {
            let listener = server::bind(s.addr).await?;
            announce(&listener, &s, banner);
            let (wait_for, linger) = (s.wait_for_clients, s.linger);
            let (task, clients) = start_server(listener, s, &parts);
            lifecycle::open_gate_at(parts.cancel.clone(), Some(clients), wait_for);
            (Some(task), wait_for, linger)
        }
        None => {
            parts.cancel.open_gate();
            (None, 0, std::time::Duration::ZERO)
        }
    };
    if let Some((p, _)) = &publisher {
        crate::errln!(
            "batchsse: publishing every event to {0}; `batchsse relay {0}{3} {1}` serves the run from any host{2}",
            p.shown(),
            plan_flag(&session.plan.name),
            if p.has_password() {
                " (add the password to that URL, or set BATCHSSE_REDIS_PASSWORD)"
            } else {
                ""
            },
            p.tls_flags(),
        );
    }
    // Terminal output may block (a full pipe, a slow terminal); on its own
    // thread it never holds up the server's workers.
    let terminal = {
        let (log, handle) = (parts.log.clone(), tokio::runtime::Handle::current());
        let renderer = Renderer::new(session.progress, session.progress_interval)
            .of_kind(parts.log.snapshot().kind);
        tokio::task::spawn_blocking(move || {
            handle.block_on(crate::view::terminal::follow(log, renderer))
        })
    };
    let quiet = session.progress == ProgressMode::None;
    let status = run_blocking(session, &parts, wait_for).await;
    let _ = terminal.await;
    if lifecycle::lingers(linger, &parts.signals) && !quiet {
        // Else the terminal sits silent after `finished` (the demo's 15 s).
        crate::errln!(
            "batchsse: serving the finished run's replay for {} s (--linger), then exiting; Ctrl-C exits now",
            linger.as_secs_f64()
        );
    }
    wind_down(server_task, publisher, linger, &parts).await;
    Ok(status)
}

/// After `finished`: the server lingers and drains while Redis takes the
/// last events, for the linger and then at most the drain timeout, as
/// open streams do. (A drain counted from `finished` stopped the
/// publisher mid-linger, and a Redis back later in it never got the
/// run's end.) A signal in the linger ends the wait for Redis too: the
/// linger says Ctrl-C exits now.
async fn wind_down(
    server_task: Option<JoinHandle<()>>,
    publisher: Option<(crate::relay::publish::Publisher, std::time::Duration)>,
    linger: std::time::Duration,
    parts: &Parts,
) {
    let serving = async {
        if let Some(t) = server_task {
            let _ = t.await;
        }
    };
    let publishing = async {
        if let Some((publisher, drain)) = publisher {
            let signals = parts.signals.clone();
            let seen = *signals.borrow();
            lifecycle::stop_after_linger(parts.log.clone(), linger, signals.clone()).await;
            publisher.drain(drain, signals, seen).await;
        }
    };
    tokio::join!(serving, publishing);
}

/// `--plan NAME` for a command line, in the `=` form for a name that
/// starts with `-` (which would read as a flag).
fn plan_flag(name: &str) -> String {
    let sep = if name.starts_with('-') { "=" } else { " " };
    format!("--plan{sep}{}", shell_word(name))
}

/// Connects to Redis before anything runs (a refusal is a usage error:
/// exit 2, nothing written), then publishes the log in the background.
async fn start_publishing(
    target: crate::relay::Target,
    ttl: std::time::Duration,
    parts: &Parts,
) -> Result<crate::relay::publish::Publisher, UsageError> {
    let conn = target
        .connect_or_refuse("publish to", "--publish (or BATCHSSE_PUBLISH)")
        .await
        .map_err(|e| UsageError::new(format!("{e}; nothing was written")))?;
    Ok(crate::relay::publish::spawn(
        conn,
        target,
        ttl,
        parts.log.clone(),
    ))
}

/// The listening line (the first on stderr, which scripts read), then any
/// warning and the demo's banner.
fn announce(listener: &TcpListener, s: &Serve, banner: Option<String>) {
    let local = listener.local_addr().unwrap_or(s.addr);
    crate::errln!("batchsse: listening on http://{local}/");
    if let Some(w) = exposure_warning(local, s.config.token.as_deref()) {
        crate::errln!("{w}");
    }
    if let Some(b) = banner {
        let url = page_url(local, &s.config, "");
        let control = s.config.control_token.as_deref().unwrap_or("");
        // The page reads its fragment as `URLSearchParams` does: a `+`,
        // `%` or `&` of the token (base64 has `+`) must come encoded.
        let fragment: String = form_urlencoded::byte_serialize(control.as_bytes()).collect();
        let base = url.split('?').next().unwrap_or(&url).to_owned();
        crate::errln!(
            "{}",
            b.replace("{control_url}", &format!("{url}#control={fragment}"))
                .replace("{url}", &url)
                .replace("{events}", &page_url(local, &s.config, "events"))
                .replace("{base}", &base)
                .replace("{control_token}", &shell_word(control))
        );
    }
}

/// Serves until the run has finished and lingered; returns the task and a
/// watch on the number of stream clients.
fn start_server(
    listener: TcpListener,
    s: Serve,
    parts: &Parts,
) -> (JoinHandle<()>, tokio::sync::watch::Receiver<usize>) {
    let mut config = s.config;
    config.listen = listener.local_addr().ok();
    let state = server::State::steered(
        parts.log.clone(),
        config,
        parts.cancel.clone(),
        parts.steering.clone(),
    );
    let clients = state.watch_clients();
    let stop = lifecycle::stop_after_linger(parts.log.clone(), s.linger, parts.signals.clone());
    let task = tokio::spawn(server::serve(listener, state, stop, s.drain));
    (task, clients)
}

/// The runner on a blocking thread, behind the start gate.
async fn run_blocking(session: Session, parts: &Parts, wait_for: usize) -> RunStatus {
    let (log, cancel, steering) = (
        parts.log.clone(),
        parts.cancel.clone(),
        parts.steering.clone(),
    );
    let ran = tokio::task::spawn_blocking(move || {
        let gate = || {
            if wait_for > 0 {
                log.push(Event::message(
                    serde_json::json!({"clients": wait_for}),
                    Level::Info,
                    format!(
                        "waiting for {wait_for} stream client(s) to connect (--wait-for-clients)"
                    ),
                ));
            }
            cancel.wait_for_gate();
        };
        if let Some(spec) = &session.undo {
            let conn = &session.conn;
            let status = runner::undo::apply::run(
                conn,
                spec,
                &session.opts,
                &log,
                (&cancel, &steering),
                gate,
            );
            // Once its connection is closed (see `Spec::tidy_later`).
            if let Some(later) = spec.tidy_later.take() {
                drop(session);
                runner::undo::apply::tidy_when_closed(&later);
            }
            return status;
        }
        let mut session = session;
        let guard = runner::records(&session.plan, &session.opts)
            .then(|| runner::undo::Guard::install(&mut session.conn).ok())
            .flatten();
        let hook = (runner::records(&session.plan, &session.opts) && !runner::undo::preupdate())
            .then(|| runner::undo::Hook::install(&session.conn));
        let job = runner::Job {
            hook,
            guard,
            conn: &session.conn,
            plan: &session.plan,
            opts: &session.opts,
            resume: &session.resume,
        };
        runner::run(job, &log, (&cancel, &steering), gate)
    })
    .await;
    ran.unwrap_or_else(|e| runner_died(&parts.log, &e))
}

/// A bug in the runner must not leave viewers and the process waiting
/// forever: end the log so everything shuts down.
fn runner_died(log: &EventLog, e: &tokio::task::JoinError) -> RunStatus {
    let snap = log.snapshot();
    log.push(Event::Finished(Finished {
        status: RunStatus::Failed,
        steps_done: snap.steps_done,
        steps_total: snap.steps_total,
        rows_changed: snap.rows_changed,
        elapsed_ms: 0,
        dry_run: false,
        error: Some(format!(
            "internal error, please report it: the runner stopped ({e}); its open transaction was rolled back"
        )),
        undo_bytes: None,
        undo_command: None,
        conflicts: None,
        conflicts_earlier: None,
        conflicts_as_left: None,
        carried_older: None,
    }));
    RunStatus::Failed
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

/// Where `demo` keeps its database.
pub fn demo_dir(keep: Option<&PathBuf>) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    Ok(match keep {
        Some(dir) => {
            let refuse = |why: String| {
                UsageError::new(format!(
                    "cannot keep the demo in --keep {}: {why}; give a folder batchsse may create and write in",
                    crate::human::shown_path(dir)
                ))
            };
            std::fs::create_dir_all(dir).map_err(|e| refuse(e.to_string()))?;
            if crate::platform::may_create_in(dir) == Some(false) {
                return Err(refuse("no write access to it".into()).into());
            }
            (None, dir.clone())
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("batchsse-demo-")
                .tempdir()
                .map_err(no_temp_dir)?;
            let p = t.path().to_owned();
            (Some(t), p)
        }
    })
}

/// The demo's temporary folder could not be made (`e`): TMPDIR names a
/// folder that is not there, not a folder, or one this user may not write.
fn no_temp_dir(e: std::io::Error) -> UsageError {
    let tmp = std::env::temp_dir();
    let why = match std::fs::metadata(&tmp) {
        Err(gone) => gone.to_string(),
        Ok(m) if !m.is_dir() => "not a folder".into(),
        Ok(_) => e.kind().to_string(),
    };
    UsageError::new(format!(
        "cannot make a temporary folder for the demo in {} ({why}); set TMPDIR to a folder batchsse may write in, or keep the demo in one with --keep DIR",
        crate::human::shown_path(&tmp)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_name_is_quoted_for_the_shell_only_when_it_must_be() {
        assert_eq!(shell_word("reprice-2026"), "reprice-2026");
        assert_eq!(shell_word("fix.sql"), "fix.sql");
        assert_eq!(shell_word("my plan"), "'my plan'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("=x"), "'=x'", "zsh expands a leading =");
        assert_eq!(shell_word("a\n::error::x"), r"$'a\n::error::x'");
        assert_eq!(shell_word("it's\r"), r"$'it\'s\r'");
        assert_eq!(plan_flag("-x"), "--plan=-x", "not taken for a flag");
        assert_eq!(plan_flag("my plan"), "--plan 'my plan'");
    }

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
}
