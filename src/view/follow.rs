//! `batchsse watch`: follows a running batchsse's `/events` over HTTP with
//! hyper's client, draws it with the same `Renderer` as `run`, resumes a
//! dropped stream with `Last-Event-ID`, and exits with the run's status.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::uri::Authority;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::cli::WatchArgs;
use crate::error::print_line;
use crate::error::{Unreachable, UsageError, exit};
use crate::events::sse::{ParsedEvent, Parser};
use crate::events::{Event, RunStatus, Start};
use crate::platform;
use crate::serve::RUN_ID_HEADER;
use crate::view::terminal::Renderer;

/// The server sends a keep-alive every 15 s; three missed ones mean the
/// connection is dead even if TCP has not noticed.
const IDLE: Duration = Duration::from_secs(45);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const TRY_AT_LEAST: Duration = Duration::from_secs(1);
/// Events not batchsse's that `watch` takes, before any of batchsse's,
/// from what answered, then gives up: a run's stream begins with its
/// `start`, and from the middle with other events batchsse sends.
const FOREIGN_EVENTS: u32 = 5;
/// How long `watch` tries before it says it is still waiting for a run
/// (a run started at once, as in CI, is reached well before).
const SAY_WAITING_AFTER: Duration = Duration::from_secs(2);

/// Where the run is, checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// For `TcpStream::connect` (IPv6 brackets removed).
    pub host: String,
    pub port: u16,
    /// For the `Host` header, as the user wrote it.
    pub authority: String,
    /// `/events` (or `/prefix/events`) with the user's query, minus `last_event_id`.
    pub events: String,
    /// `/status` beside it, same query.
    pub status: String,
    /// The run's base path the URL names (`/`, or a proxy's `/prefix/`).
    pub base: String,
    /// A `last_event_id` in the URL: show only what comes after it.
    pub after: u64,
    pub auth: Option<HeaderValue>,
}

impl Target {
    /// Accepts `http://HOST:PORT/`, any of the run's routes under it
    /// (`/events`, `/status`, `/metrics`, `/healthz`, `/control`; a prefix
    /// before them is kept, for reverse proxies) and `HOST:PORT`. A user
    /// name or password in the URL is refused, not sent.
    pub fn parse(url: &str, token: Option<&str>) -> Result<Target, UsageError> {
        Target::parse_for(url, token, "--token (or BATCHSSE_TOKEN)")
    }

    /// As [`Target::parse`], for a command whose token flag is `flag`
    /// (`ctl` has `--control-token` only), which the refusal of a
    /// `USER:PASS@` names: a flag the command lacks would be one more error.
    pub fn parse_for(url: &str, token: Option<&str>, flag: &str) -> Result<Target, UsageError> {
        let bad = |why: &str| {
            UsageError::new(format!(
                "{} is not a batchsse URL ({why}); use e.g. http://127.0.0.1:7077/ or http://127.0.0.1:7077/events",
                crate::human::quoted(&hide_token(url))
            ))
        };
        let uri: Uri = with_scheme(url.trim())
            .parse()
            .map_err(|_| bad("cannot parse it"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "batchsse serves plain http, the only kind watch and ctl speak; give the run's own http:// address",
                ));
            }
            _ => return Err(bad("only http:// is supported")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            // Not echoed: the URL holds a password.
            return Err(UsageError::new(format!(
                "the URL has a user name or password (USER:PASS@), which batchsse never sends; drop that part and give the run's token with {flag}"
            )));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = port(authority).ok_or_else(|| bad("its port must be 1 to 65535"))?;
        let base = base_path(uri.path());
        let mut after = 0;
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
            if k == "last_event_id" {
                after = v
                    .trim()
                    .parse()
                    .map_err(|_| bad("last_event_id must be a whole number"))?;
            } else {
                query.append_pair(&k, &v);
            }
        }
        let query = query.finish();
        let with_query = |p: String| {
            if query.is_empty() {
                p
            } else {
                format!("{p}?{query}")
            }
        };
        let auth = match token {
            None => None,
            Some(t) => {
                crate::serve::check_token(t)?;
                // Visible ASCII is always a valid header value.
                Some(
                    HeaderValue::from_str(&format!("Bearer {t}"))
                        .map_err(|_| UsageError::new("--token cannot be sent as a header"))?,
                )
            }
        };
        Ok(Target {
            host: host.to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            events: with_query(format!("{base}events")),
            status: with_query(format!("{base}status")),
            base,
            after,
            auth,
        })
    }

    /// The URL for a message: a `token` in its query is shown as `***`,
    /// since messages end up in CI logs.
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.authority, hide_token(path))
    }

    /// What to check when what answered is no batchsse run. A base URL
    /// (or a port alone) was given as asked, so asking for it again would
    /// not help: the server there is another program. A URL with a path of
    /// its own may be a proxy's prefix for the run, mistyped.
    pub fn not_a_run(&self) -> String {
        if self.base == "/" {
            format!(
                "the server at {} is not a batchsse run (a run serves its events at /events): check the port; a run says where it listens in its first line (batchsse: listening on http://…/)",
                self.url("/")
            )
        } else {
            format!(
                "nothing under {} serves a batchsse run's events: give the run's base URL, where its dashboard is (e.g. http://127.0.0.1:7077/, or the prefix a proxy serves it under)",
                self.url(&self.base)
            )
        }
    }
}

/// The URL's port, 80 when it names none; `None` for one that no TCP port
/// is (`http`'s own reading takes `:99999` for no port at all: port 80).
fn port(authority: &Authority) -> Option<u16> {
    match authority.as_str().rsplit_once(':') {
        Some((_, p)) if !p.is_empty() && !p.ends_with(']') => p.parse().ok().filter(|p| *p > 0),
        _ => Some(80),
    }
}

/// `url` with the value of every `token=` query parameter as `***`.
fn hide_token(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find("token=") {
        let param = i > 0 && matches!(rest.as_bytes()[i - 1], b'?' | b'&');
        out.push_str(&rest[..i + "token=".len()]);
        rest = &rest[i + "token=".len()..];
        if param {
            out.push_str("***");
            rest = &rest[rest.find(['&', '#']).unwrap_or(rest.len())..];
        }
    }
    out + rest
}

/// The URL as typed, with `http://` when it has no scheme. A port alone
/// (`7077`, `:7077`), as `--listen` takes one, is the run on this machine.
fn with_scheme(url: &str) -> String {
    let digits = url.strip_prefix(':').unwrap_or(url);
    if url.contains("://") {
        url.to_owned()
    } else if !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit())
    {
        format!("http://127.0.0.1:{digits}")
    } else {
        format!("http://{url}")
    }
}

/// The run's base path (ending in `/`) from a URL's path: the path itself,
/// or its prefix when it names one of the run's routes.
fn base_path(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((prefix, "events" | "status" | "metrics" | "healthz" | "control")) => {
            format!("{prefix}/")
        }
        _ if path.ends_with('/') => path.to_owned(),
        _ => format!("{path}/"),
    }
}

/// `batchsse watch`.
pub fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let target = Target::parse(&args.url, args.token.as_deref())?;
    let patience = crate::cli::config::seconds("--connect-timeout", args.connect_timeout)?;
    let interval = crate::cli::config::progress_interval(args.progress_interval)?;
    let renderer = Renderer::new(args.progress, interval);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = rt.block_on(async {
        // Ctrl-C or SIGTERM (`timeout`, a CI runner stopping the step); if
        // no handler could be installed, `next` never resolves: just follow.
        let mut stop = platform::StopSignals::install();
        tokio::select! {
            r = follow(&target, patience, args.pid, renderer) => r,
            () = stop.next() => {
                print_line("batchsse: watch interrupted; the run itself goes on");
                Ok(exit::INTERRUPTED)
            }
        }
    })?;
    Ok(ExitCode::from(status))
}

/// How one connection ended.
enum Attempt {
    /// `finished` arrived: the run's outcome.
    Finished(RunStatus),
    /// `204`: the server has nothing after our last id (the run is over).
    NoContent,
    /// We were connected and lost the stream; worth resuming.
    Dropped(String),
    /// We never got a stream this time (refused, timed out).
    Failed(String),
    /// The run answered 503: it has as many stream clients as it takes.
    Busy,
    /// The output was closed (`watch … | head`, or `2>&1 | head` for the
    /// modes that write to standard error): nobody reads on.
    OutputClosed,
    /// The stream is not a batchsse run's (the last of its events, shown).
    Foreign(String),
    /// With `--pid`: the server is another run's; none of it was shown.
    OtherRun(OtherRun),
}

/// A run whose server `watch --pid` found where it looked for its own
/// run's: another process's (one still lingering on the port, say).
#[derive(Debug, Clone, PartialEq, Eq)]
struct OtherRun {
    run_id: String,
    pid: u32,
}

impl OtherRun {
    /// Why a try found no run to follow.
    fn why(&self) -> String {
        format!(
            "what answers there is another run: run {}, pid {}",
            crate::human::shown(&self.run_id),
            self.pid
        )
    }
}

/// Where the watch is: the run it follows and the last event it showed.
/// Event ids start at 1 in every run, so an id alone cannot tell a run
/// restarted on the same address from the one followed so far.
struct Seen {
    last_id: u64,
    run_id: Option<String>,
    /// Whether an event was shown: until then `last_id` is only the URL's
    /// `last_event_id`, which the server may not know.
    shown: bool,
    /// Events not batchsse's met before any was shown.
    foreign: u32,
    /// `--pid`: the run's process. A server whose `start` names another
    /// is another run's, and is not followed.
    run_pid: Option<u32>,
    /// The last server found to be another run's (said once).
    other: Option<OtherRun>,
    /// The line that says a new run started, said with its first event
    /// shown: with `--pid`, its `start` may yet show it is another run's.
    restarted: Option<String>,
    /// Where this try began, to go back to if its server is another run's.
    before: (u64, Option<String>, Option<String>),
}

impl Seen {
    /// Whether `run_id` is another run than the one followed so far (the
    /// first one heard of is adopted).
    fn is_new_run(&mut self, run_id: &str) -> bool {
        match &self.run_id {
            Some(known) => known != run_id,
            None => {
                self.run_id = Some(run_id.to_owned());
                false
            }
        }
    }

    /// Starts over with `run_id`, whose every event is new to us.
    fn restart(&mut self, run_id: &str) {
        self.last_id = 0;
        self.run_id = Some(run_id.to_owned());
        self.restarted = Some(format!(
            "batchsse: a new run started on this address (run {run_id}); following it"
        ));
    }

    /// The server names `run_id` (its header): the run found to be
    /// another's, if it is that one (no need to read its replay again).
    fn answered_by(&mut self, run_id: &str) -> Option<OtherRun> {
        if let Some(other) = self.other.as_ref().filter(|o| o.run_id == run_id) {
            return Some(other.clone());
        }
        // Another run on this address ignored our Last-Event-ID (we named
        // our run) and sends its own events from id 1.
        if self.is_new_run(run_id) {
            self.restart(run_id);
        }
        None
    }

    /// With `--pid`, the run that `start` announces if its process is
    /// another run's than the one `watch` follows, as far as this system
    /// tells (a `start` without `pid` is from an older batchsse: followed).
    fn other_run(&self, start: &Start) -> Option<OtherRun> {
        let run = self.run_pid?;
        (start.pid != 0 && platform::another_run(start.pid, run)).then(|| OtherRun {
            run_id: start.run_id.clone(),
            pid: start.pid,
        })
    }

    /// A try begins: remember where the watch is.
    fn begin_try(&mut self) {
        self.before = (self.last_id, self.run_id.clone(), self.restarted.clone());
    }

    /// The try reached another run's server: nothing of it counts.
    fn forget_try(&mut self) {
        (self.last_id, self.run_id, self.restarted) = std::mem::take(&mut self.before);
    }
}

/// Why `watch` gave up after `patience`: a stream lost and not found
/// again, a run that kept refusing it, another run's server where the
/// run's (`--pid`, the run's process, still running) should be, or no run
/// at all.
fn gave_up(
    target: &Target,
    patience: Duration,
    last_id: u64,
    (connected, busy, other): (bool, bool, Option<u32>),
    why: &str,
) -> Unreachable {
    let url = target.url(&target.events);
    let secs = patience.as_secs_f64();
    Unreachable(if let (false, Some(pid)) = (connected, other) {
        format!(
            "the run (pid {pid}) did not answer at {url} within {secs} s ({why}); give the run an address of its own (--listen), or stop the other run first"
        )
    } else if connected {
        format!(
            "lost the stream at {url} after event {last_id} and could not reconnect within {secs} s ({why}); the run's outcome is unknown"
        )
    } else if busy {
        format!(
            "the run at {url} kept refusing this client for {secs} s: {BUSY} (its --max-clients); try again later, or give the run a larger --max-clients"
        )
    } else {
        format!(
            "no batchsse run answered at {url} within {secs} s ({why}); start `batchsse run` first, check the address, or raise --connect-timeout"
        )
    })
}

/// Why a try failed when the run answered 503.
const BUSY: &str = "the run has too many stream clients (503)";

/// Follows the stream across reconnects until the run's outcome is known;
/// returns the exit status. With `run_pid`, gives up as soon as that
/// process is gone instead of waiting out `patience`.
async fn follow(
    target: &Target,
    patience: Duration,
    run_pid: Option<u32>,
    mut renderer: Renderer,
) -> anyhow::Result<u8> {
    let mut seen = Seen {
        last_id: target.after,
        run_id: None,
        shown: false,
        foreign: 0,
        run_pid,
        other: None,
        restarted: None,
        before: (0, None, None),
    };
    // The clock for --connect-timeout restarts whenever a stream was live.
    let mut since = Instant::now();
    let (mut connected, mut busy, mut said_waiting) = (false, false, false);
    let mut backoff = FIRST_BACKOFF;
    loop {
        // Even --connect-timeout 0 gets one real try.
        let deadline = (since + patience).max(Instant::now() + TRY_AT_LEAST);
        // With --pid, the run's pid when this try found another run's server.
        let mut other = None;
        let why = match attempt(target, &mut seen, &mut renderer, deadline).await? {
            Attempt::Finished(s) => return Ok(s.exit_code()),
            Attempt::OutputClosed => return Ok(exit::OUTPUT_CLOSED),
            Attempt::Foreign(last) => return Err(not_batchsse(target, &last).into()),
            Attempt::NoContent => return outcome_after_204(target, seen.last_id, deadline).await,
            Attempt::Dropped(why) => {
                since = Instant::now();
                (connected, said_waiting) = (true, false);
                backoff = FIRST_BACKOFF;
                why
            }
            Attempt::Failed(why) => {
                busy = false;
                why
            }
            Attempt::Busy => {
                busy = true;
                BUSY.to_owned()
            }
            Attempt::OtherRun(run) => {
                (busy, other) = (false, run_pid);
                say_other_run(target, &mut seen, run)
            }
        };
        let last_id = seen.last_id;
        if let Some(pid) = run_pid.filter(|&p| !platform::process_alive(p)) {
            return run_exited(target, pid, (connected, last_id), &why);
        }
        if !said_waiting && since.elapsed() >= SAY_WAITING_AFTER {
            // Else a watch started before its run, or one that lost it (a
            // run killed, a relay gone), sat silent for 30 s.
            said_waiting = true;
            if connected {
                say_reconnecting(target, patience, last_id, &renderer, &why);
            } else {
                say_waiting(target, patience, run_pid, &renderer, &why);
            }
        }
        // Sleep, then try again only if time is left, so the message below
        // names the last real failure rather than our own deadline.
        let now = Instant::now();
        if now + backoff < since + patience {
            tokio::time::sleep(backoff).await;
        } else {
            tokio::time::sleep_until(since + patience).await;
            let state = (connected, busy, other);
            return Err(gave_up(target, patience, last_id, state, &why).into());
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// How `watch --pid` ends once the run's process `pid` has exited: before
/// its stream was reached (the run's own messages say why), or after it
/// was lost (`last_id`: the last event seen).
fn run_exited(
    target: &Target,
    pid: u32,
    (connected, last_id): (bool, u64),
    why: &str,
) -> anyhow::Result<u8> {
    let url = target.url(&target.events);
    if !connected {
        // The run's own error says why (in GitHub Actions, as its
        // annotation): this is no second error, only why watch ends.
        print_line(&crate::view::github::one_line(&format!(
            "batchsse: the run (pid {pid}) exited before its stream at {url} could be followed ({why}); its exit status and messages say why"
        )));
        return Ok(exit::UNREACHABLE);
    }
    Err(Unreachable(format!(
        "lost the stream at {url} after event {last_id} ({why}), and the run (pid {pid}) has exited; the run's outcome is unknown: its exit status tells"
    ))
    .into())
}

/// Says that `watch` lost the run's stream after `last_id` and is still
/// trying to find it again.
fn say_reconnecting(
    target: &Target,
    patience: Duration,
    last_id: u64,
    renderer: &Renderer,
    why: &str,
) {
    renderer.note(&format!(
        "batchsse: lost the stream at {} after event {last_id} ({why}); trying to reconnect for up to {} s (--connect-timeout)",
        target.url(&target.events),
        patience.as_secs_f64()
    ));
}

/// Says that `watch` is still waiting for a run (`run_pid`'s, if given).
fn say_waiting(
    target: &Target,
    patience: Duration,
    run_pid: Option<u32>,
    renderer: &Renderer,
    why: &str,
) {
    let whose = run_pid.map_or("no run answers".into(), |pid| {
        format!("the run (pid {pid}) does not answer")
    });
    renderer.note(&format!(
        "batchsse: {whose} at {} yet ({why}); trying again for up to {} s (--connect-timeout)",
        target.url(&target.events),
        patience.as_secs_f64()
    ));
}

impl Target {
    /// Sends one request on a fresh connection, with the run's `Host` and
    /// the token (if any) added; the answer's head, its body still to come.
    pub async fn send<B>(&self, mut req: Request<B>) -> Result<Response<Incoming>, String>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        // The connection task ends with the body (or its error reaches us through the body).
        tokio::spawn(conn);
        let headers = req.headers_mut();
        if let Ok(host) = HeaderValue::from_str(&self.authority) {
            headers.insert(header::HOST, host);
        }
        if let Some(auth) = &self.auth {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
        sender.send_request(req).await.map_err(|e| e.to_string())
    }
}

/// The most a JSON answer (`/status`, `/control`) may take: a run's is a
/// few KiB, so anything near this is not a batchsse run talking.
pub const MAX_ANSWER: usize = 1 << 20;

/// A whole (small) answer body, or why not: past `MAX_ANSWER` the rest is
/// not read, so a server that never stops sending cannot fill memory.
pub async fn answer_body(body: Incoming) -> Result<Bytes, String> {
    match http_body_util::Limited::new(body, MAX_ANSWER)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(format!(
            "it sent more than {} KiB, where a batchsse run answers in a few KiB",
            MAX_ANSWER >> 10
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Sends `GET path`, resuming after `seen` if given; connecting and the
/// response head must come by `deadline`.
async fn get(
    target: &Target,
    path: &str,
    seen: Option<&Seen>,
    deadline: Instant,
) -> Result<Response<Incoming>, String> {
    let exchange = async {
        let mut req =
            Request::get(path).header(header::ACCEPT, "text/event-stream, application/json");
        if let Some(seen) = seen.filter(|s| s.last_id > 0) {
            req = req.header("last-event-id", seen.last_id);
            // The id counts only for its own run: another run on this
            // address answers with all of its events instead.
            if let Some(run_id) = &seen.run_id {
                req = req.header(RUN_ID_HEADER, run_id);
            }
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        target.send(req).await
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Ok(r) => r,
        Err(_) => Err("timed out".into()),
    }
}

/// One connection: renders new events until `finished` or the stream ends.
async fn attempt(
    target: &Target,
    seen: &mut Seen,
    renderer: &mut Renderer,
    deadline: Instant,
) -> anyhow::Result<Attempt> {
    seen.begin_try();
    let resp = match get(target, &target.events, Some(seen), deadline).await {
        Ok(r) => r,
        Err(why) => return Ok(Attempt::Failed(why)),
    };
    if let Some(other) = resp
        .headers()
        .get(RUN_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|run_id| seen.answered_by(run_id))
    {
        return Ok(Attempt::OtherRun(other));
    }
    if let Some(end) = check_answer(target, &resp)? {
        return Ok(end);
    }
    // A batchsse stream (it asks proxies not to buffer) that names no run
    // comes from a relay still waiting for its plan's next run: say why
    // nothing shows yet.
    let batchsse = resp.headers().contains_key("x-accel-buffering");
    if batchsse && resp.headers().get(RUN_ID_HEADER).is_none() && seen.run_id.is_none() {
        crate::errln!(
            "batchsse: {} has no run yet (a relay waiting for its plan's next run); waiting for it to start",
            target.url(&target.events)
        );
    }
    let mut body = resp.into_body();
    // A fresh parser per connection: a frame cut in half is never dispatched.
    let mut parser = Parser::new();
    // A stream that said nothing (and is not batchsse's by its headers)
    // was never a run's: lost, it is a failed try, which does not restart
    // the clock of --connect-timeout, or a server that answers with an
    // empty stream and closes it would be retried forever.
    let mut live = batchsse;
    loop {
        let lost = |why: String| match live {
            true => Attempt::Dropped(why),
            false => Attempt::Failed(format!("{why} without sending anything")),
        };
        let frame = match tokio::time::timeout(IDLE, body.frame()).await {
            Err(_) => return Ok(lost(format!("no data for {} s", IDLE.as_secs()))),
            Ok(None) => return Ok(lost("the server closed the stream".into())),
            Ok(Some(Err(e))) => return Ok(lost(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        // Every frame, a keep-alive included (every 15 s while the run
        // is paused or quiet), is a chance to see the reader went away.
        if renderer.output_gone() {
            return Ok(Attempt::OutputClosed);
        }
        let Ok(bytes) = frame.into_data() else {
            continue;
        };
        live |= !bytes.is_empty();
        // A line or event past the parser's limit is not batchsse's:
        // buffering on would only fill memory.
        let events = parser.try_feed(&bytes).map_err(|e| {
            let url = target.url(&target.events);
            Unreachable(format!(
                "{url} sent {e}, more than a batchsse run sends at once; is {url} a batchsse stream? {}",
                target.not_a_run()
            ))
        })?;
        for ev in events {
            if let Some(end) = show(&ev, seen, renderer) {
                return Ok(end);
            }
        }
    }
}

/// `None` when the answer is a stream to read; else how the attempt ends
/// (or an error that retrying will not change).
fn check_answer<B>(target: &Target, resp: &hyper::Response<B>) -> anyhow::Result<Option<Attempt>> {
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NO_CONTENT => return Ok(Some(Attempt::NoContent)),
        StatusCode::SERVICE_UNAVAILABLE => return Ok(Some(Attempt::Busy)),
        s => return Err(refused(target, s)),
    }
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            // Media types are case-insensitive; parameters may follow.
            let kind = v.split(';').next().unwrap_or_default().trim();
            kind.eq_ignore_ascii_case("text/event-stream")
        });
    if !is_sse {
        return Err(Unreachable(format!(
            "{} answered, but not with an event stream; {}",
            target.url(&target.events),
            target.not_a_run()
        ))
        .into());
    }
    Ok(None)
}

/// Shows one event unless it was seen; `Some` when it ends the attempt.
fn show(ev: &ParsedEvent, seen: &mut Seen, renderer: &mut Renderer) -> Option<Attempt> {
    let id = ev.id.as_deref().and_then(|i| i.trim().parse::<u64>().ok());
    let parsed = Event::from_json(&ev.event, &ev.data);
    // A new run that answered before logging its `start` sent no run id
    // header, so its `start` (it replays from id 1: our id is beyond its
    // log) is what tells the runs apart.
    if let Ok(Event::Start(s)) = &parsed {
        if let Some(other) = seen.other_run(s) {
            seen.forget_try();
            return Some(Attempt::OtherRun(other));
        }
        if seen.is_new_run(&s.run_id) {
            seen.restart(&s.run_id);
        } else if !seen.shown && seen.last_id > 0 {
            // The server replays from `start` an id it never gave out (one
            // from an earlier run's page): every event is new to us.
            renderer.new_run(&format!(
                "batchsse: event {} is not one this run gave out; showing run {} from its start",
                seen.last_id, s.run_id
            ));
            seen.last_id = 0;
        }
    }
    if let Some(id) = id {
        // The replay after a reconnect starts after our id, but a server
        // that replays more must still not show anything twice.
        if id <= seen.last_id {
            return None;
        }
        seen.last_id = id;
    }
    match parsed {
        Ok(event) => {
            seen.shown = true;
            if let Some(line) = seen.restarted.take() {
                renderer.new_run(&line);
            }
            renderer.show(id.unwrap_or(seen.last_id), &event, &ev.data);
            if let Event::Finished(f) = event {
                return Some(Attempt::Finished(f.status));
            }
            if renderer.output_failed() {
                return Some(Attempt::OutputClosed);
            }
        }
        Err(e) => {
            print_line(&format!(
                "batchsse: warning: skipped event {} ({}): its data is not what batchsse sends ({e})",
                id.map_or("without id".into(), |i| i.to_string()),
                crate::human::quoted(&ev.event)
            ));
            // Else a server that is not a run is retried, or read, forever.
            seen.foreign += u32::from(!seen.shown);
            if seen.foreign >= FOREIGN_EVENTS {
                return Some(Attempt::Foreign(format!(
                    "event {}, data {}",
                    crate::human::quoted(&ev.event),
                    crate::human::quoted(&ev.data.chars().take(60).collect::<String>())
                )));
            }
        }
    }
    None
}

/// Says, once for each, that the server is `other`'s, not the run's;
/// returns why this try found no run.
fn say_other_run(target: &Target, seen: &mut Seen, other: OtherRun) -> String {
    let why = other.why();
    if seen.other.as_ref() != Some(&other) {
        print_line(&crate::view::github::one_line(&format!(
            "batchsse: the server at {} is another run's (run {}, pid {}), not the run's (pid {}): another batchsse still serving this address (lingering after its end, say); showing none of it, and waiting for the run's own",
            target.url(&target.events),
            crate::human::shown(&other.run_id),
            other.pid,
            seen.run_pid.unwrap_or_default()
        )));
        seen.other = Some(other);
    }
    why
}

/// What answered sends events, but none of a batchsse run's (`last`: the
/// last of them): another program's event stream.
fn not_batchsse(target: &Target, last: &str) -> Unreachable {
    Unreachable(format!(
        "{} serves an event stream that is not a batchsse run: its first {FOREIGN_EVENTS} events are none of those batchsse sends (the last: {last}); check the address (a run listens on http://127.0.0.1:7077/ unless its --listen says otherwise)",
        target.url(&target.events)
    ))
}

/// A status that retrying will not change.
fn refused(target: &Target, status: StatusCode) -> anyhow::Error {
    let url = target.url(&target.events);
    // A token goes as --token (the header) or in the URL (`?token=T`).
    let sent = target.auth.is_some() || hide_token(&target.events) != target.events;
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if sent => UsageError::new(format!(
            "{url} refused the token ({status}); pass the run's --token (or BATCHSSE_TOKEN)"
        ))
        .into(),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => UsageError::new(format!(
            "{url} needs a token ({status}); pass the run's --token T or set BATCHSSE_TOKEN"
        ))
        .into(),
        s => Unreachable(format!("{url} answered {s}; {}", target.not_a_run())).into(),
    }
}

/// After `204` the stream has nothing for us: `/status` holds the outcome.
async fn outcome_after_204(target: &Target, last_id: u64, deadline: Instant) -> anyhow::Result<u8> {
    let url = target.url(&target.status);
    let deadline = deadline.max(Instant::now() + Duration::from_secs(5));
    let resp = get(target, &target.status, None, deadline)
        .await
        .map_err(|why| {
            Unreachable(format!(
                "the stream had ended, and {url} did not answer ({why})"
            ))
        })?;
    if resp.status() != StatusCode::OK {
        return Err(refused(target, resp.status()));
    }
    let body = tokio::time::timeout_at(deadline, answer_body(resp.into_body()))
        .await
        .map_err(|_| Unreachable(format!("{url} timed out")))?
        .map_err(|e| Unreachable(format!("{url}: {e}")))?;
    #[derive(serde::Deserialize)]
    struct Status {
        status: Option<RunStatus>,
    }
    let status = serde_json::from_slice::<Status>(&body)
        .ok()
        .and_then(|s| s.status)
        .ok_or_else(|| {
            Unreachable(format!(
                "the stream had ended, but {url} reports no final status: {}",
                String::from_utf8_lossy(&body)
            ))
        })?;
    let word = match status {
        RunStatus::Ok => "ok",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    };
    print_line(&format!(
        "batchsse: nothing after event {last_id}: the run had already finished ({word})"
    ));
    Ok(status.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_in_a_url_is_hidden() {
        for (url, shown) in [
            ("/events", "/events"),
            ("/events?token=abc", "/events?token=***"),
            ("/e?x=1&token=a%20b&y=2", "/e?x=1&token=***&y=2"),
            ("/e?token=a#f", "/e?token=***#f"),
            ("/e?mytoken=a&token=", "/e?mytoken=a&token=***"),
            ("http://h/?token=t&token=u", "http://h/?token=***&token=***"),
        ] {
            assert_eq!(hide_token(url), shown, "{url}");
        }
    }

    #[test]
    fn urls_people_paste_all_work() {
        let t = Target::parse("http://127.0.0.1:7077/", None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 7077));
        assert_eq!(
            (t.events.as_str(), t.status.as_str()),
            ("/events", "/status")
        );
        let t = Target::parse("http://127.0.0.1:7077/events", None).unwrap();
        assert_eq!(
            (t.events.as_str(), t.status.as_str()),
            ("/events", "/status")
        );
        let t = Target::parse("127.0.0.1:7077", None).unwrap();
        assert_eq!(t.events, "/events");
        for bare in ["7077", ":7077", " 7077 "] {
            let t = Target::parse(bare, None).unwrap();
            assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 7077), "{bare}");
        }
        assert!(Target::parse("70770", None).is_err());
        let t = Target::parse(
            "http://ci.local/batch/events?token=a%20b&last_event_id=7",
            None,
        )
        .unwrap();
        assert_eq!((t.host.as_str(), t.port, t.after), ("ci.local", 80, 7));
        assert_eq!(t.events, "/batch/events?token=a+b");
        assert_eq!(t.status, "/batch/status?token=a+b");
        for route in ["status", "metrics", "healthz", "control", "events", ""] {
            let t = Target::parse(&format!("http://h:1/batch/{route}"), None).unwrap();
            assert_eq!(
                (t.events.as_str(), t.status.as_str()),
                ("/batch/events", "/batch/status")
            );
        }
        let t = Target::parse("http://h:1/batch", None).unwrap();
        assert_eq!(t.status, "/batch/status");
        let t = Target::parse("http://[::1]:9/", Some("s3cret")).unwrap();
        assert_eq!((t.host.as_str(), t.authority.as_str()), ("::1", "[::1]:9"));
        assert_eq!(t.auth.unwrap(), "Bearer s3cret");
    }

    #[test]
    fn bad_urls_and_tokens_say_what_to_do() {
        for (url, token) in [
            ("https://127.0.0.1:7077/", None),
            ("ftp://x/", None),
            ("http://", None),
            ("http://h/?last_event_id=x", None),
            ("http://h/", Some("")),
            ("http://h/", Some("a\nb")),
            ("http://h/", Some("tök")),
        ] {
            let e = Target::parse(url, token).unwrap_err();
            assert!(!e.0.is_empty(), "{url}");
        }
        for url in [
            "http://user:pa55@h:1/",
            "http://user@h:1/events",
            "u:pa55@h:1",
        ] {
            let e = Target::parse(url, None).unwrap_err().0;
            assert!(
                e.contains("USER:PASS@") && !e.contains("pa55"),
                "{url}: {e}"
            );
        }
    }
}
