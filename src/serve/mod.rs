//! The HTTP side: a small hyper 1.x server that serves the event log as
//! server-sent events, a `/status` snapshot, the dashboard and `/healthz`.
//! It takes a bound listener and a stop future, so tests never guess ports.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, Stream};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub mod dashboard;
pub mod direct;
pub mod fanout;
mod keepalive;

use crate::error::UsageError;
use crate::events::log::EventLog;
use fanout::{Fanout, MAX_BATCH};
use keepalive::KeepAlive;

pub type Body = BoxBody<Bytes, Infallible>;

/// Event ids start at 1 in every run, so a `Last-Event-ID` alone cannot
/// tell a run restarted on the same address from the one it came from. Every
/// `/events` answer (`200` and `204`) names the run in this header, and a
/// request that names another run with it gets the whole run, from id 1,
/// whatever its `Last-Event-ID`.
pub const RUN_ID_HEADER: &str = "x-batchsse-run-id";

/// How the server answers, from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub token: Option<String>,
    pub cors: Option<String>,
    pub max_clients: usize,
    pub keep_alive: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: None,
            cors: None,
            max_clients: 10_000,
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// What every request handler shares.
pub struct State {
    pub log: Arc<EventLog>,
    pub config: Config,
    clients: AtomicUsize,
    client_count: watch::Sender<usize>,
}

impl State {
    pub fn new(log: Arc<EventLog>, config: Config) -> Arc<State> {
        Arc::new(State {
            log,
            config,
            clients: AtomicUsize::new(0),
            client_count: watch::channel(0).0,
        })
    }

    /// Stream clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::SeqCst)
    }

    /// Wakes whenever the number of stream clients changes.
    pub fn watch_clients(&self) -> watch::Receiver<usize> {
        self.client_count.subscribe()
    }

    fn try_add_client(self: &Arc<Self>) -> Option<ClientGuard> {
        let max = self.config.max_clients;
        self.clients
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.client_count.send_replace(self.clients());
        Some(ClientGuard(self.clone()))
    }
}

/// Counts a stream client for as long as its stream lives.
pub struct ClientGuard(Arc<State>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::SeqCst);
        self.0.client_count.send_replace(self.0.clients());
    }
}

/// Accepts connections until `stop` resolves, then lets open connections
/// finish (streams end after `finished`) for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    stop: impl Future<Output = ()>,
    drain: Duration,
) {
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(16 * 1024)
        // One request per connection: a browser would otherwise send its
        // EventSource request down the connection that fetched the page,
        // where hyper, not the fan-out writer, would serve the stream. On
        // localhost a new connection per request costs next to nothing.
        .keep_alive(false);
    // Direct streams are all written by one task; see `fanout`.
    let (fanout, writer) = Fanout::spawn(state.log.clone(), state.config.keep_alive);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else {
                    // Out of file descriptors and the like: back off briefly.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let state = state.clone();
                let builder = builder.clone();
                let mut closing = closing_rx.clone();
                let fanout = fanout.clone();
                conns.spawn(async move {
                    // A fresh connection asking for /events is streamed
                    // straight onto the socket; everything else is hyper's.
                    use direct::Sniffed;
                    // A connection that has not asked for anything yet is
                    // dropped at shutdown rather than waited for.
                    let sniffed = tokio::select! {
                        s = direct::sniff(tcp) => s,
                        _ = closing.wait_for(|c| *c) => return,
                    };
                    let io = match sniffed {
                        Sniffed::Stream(tcp, req) => {
                            return direct::serve(tcp, &state, req, &fanout).await;
                        }
                        Sniffed::Other(io) => io,
                        Sniffed::Gone => return,
                    };
                    let conn = builder.serve_connection(
                        TokioIo::new(io),
                        service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(handle(&state, req)) }
                        }),
                    );
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = closing.wait_for(|c| *c) => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                });
                while conns.try_join_next().is_some() {}
            }
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let all_done = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(drain, all_done).await;
    conns.abort_all();
    writer.abort();
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", format!("{body}\n"))
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Empty::new().boxed());
    *r.status_mut() = status;
    r
}

/// An accepted `/events` request whose body is still to be attached: the
/// cursor it starts after and the client slot it holds. `handle` makes it
/// hyper's streaming body; the direct path hands it to the fan-out writer.
#[derive(Clone)]
pub struct StreamStart {
    pub cursor: u64,
    pub guard: Arc<ClientGuard>,
}

/// Routes one request, streams attached as hyper bodies. Never panics on
/// anything a client sends.
pub fn handle<B>(state: &Arc<State>, req: Request<B>) -> Response<Body> {
    let mut resp = respond(state, req);
    if let Some(start) = resp.extensions_mut().remove::<StreamStart>() {
        let s = event_stream(
            state.log.clone(),
            start.cursor,
            state.config.keep_alive,
            start.guard,
        );
        *resp.body_mut() = BodyExt::boxed(StreamBody::new(s));
    }
    resp
}

/// Routes one request; an event stream comes back with an empty body and
/// its `StreamStart` in the extensions.
pub fn respond<B>(state: &Arc<State>, req: Request<B>) -> Response<Body> {
    let mut resp = route(state, &req);
    let headers = resp.headers_mut();
    if let Some(origin) = &state.config.cors
        && let Ok(v) = HeaderValue::from_str(origin)
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    if req.method() == Method::HEAD {
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Empty::new().boxed());
    }
    resp
}

fn route<B>(state: &Arc<State>, req: &Request<B>) -> Response<Body> {
    let path = req.uri().path();
    let method = req.method();
    let known = matches!(path, "/" | "/events" | "/status" | "/healthz");
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            "not found; try /, /events, /status or /healthz",
        );
    }
    if method == Method::OPTIONS && state.config.cors.is_some() {
        let mut r = empty(StatusCode::NO_CONTENT);
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Last-Event-ID, Cache-Control"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return r;
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    let query = Query::parse(req.uri().query());
    if let Some(token) = &state.config.token
        && !authorized(token, req, &query)
    {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "a token is required: send 'Authorization: Bearer TOKEN' or add ?token=TOKEN",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"batchsse\""),
        );
        return r;
    }
    match path {
        "/" => full(StatusCode::OK, "text/html; charset=utf-8", dashboard::HTML),
        "/status" => status(state),
        _ => events(state, req, &query),
    }
}

fn status(state: &State) -> Response<Body> {
    let snap = state.log.snapshot();
    let mut v = serde_json::to_value(&snap).unwrap_or_default();
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("clients".into(), state.clients().into());
    }
    let mut r = full(StatusCode::OK, "application/json", v.to_string());
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn events<B>(state: &Arc<State>, req: &Request<B>, query: &Query) -> Response<Body> {
    let last_seen = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.get("last_event_id"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    // None only between the server's start and the runner's `start` event.
    let run_id = state.log.run_id();
    let for_another_run = req
        .headers()
        .get(RUN_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|asked| run_id.as_deref() != Some(asked));
    // An id this run never gave out comes from an earlier run on the same
    // address (a dashboard left open): treat it as a new client.
    let last_seen = if for_another_run || last_seen > state.log.last_id() {
        0
    } else {
        last_seen
    };
    let run_id = run_id.and_then(|id| HeaderValue::from_str(&id).ok());
    if state.log.finished_id().is_some_and(|f| last_seen >= f) {
        // EventSource stops reconnecting on 204: the run is over for it.
        let mut r = empty(StatusCode::NO_CONTENT);
        if let Some(id) = run_id {
            r.headers_mut().insert(RUN_ID_HEADER, id);
        }
        return r;
    }
    let mut r = if req.method() == Method::HEAD {
        empty(StatusCode::OK)
    } else {
        let Some(guard) = state.try_add_client() else {
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "too many stream clients (--max-clients {}); try again later",
                    state.config.max_clients
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        };
        let mut r = empty(StatusCode::OK);
        r.extensions_mut().insert(StreamStart {
            cursor: last_seen,
            guard: Arc::new(guard),
        });
        r
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(id) = run_id {
        h.insert(RUN_ID_HEADER, id);
    }
    r
}

/// One client's cursor and the timer for its keep-alive.
struct Reader<G> {
    log: Arc<EventLog>,
    rx: watch::Receiver<u64>,
    cursor: u64,
    ended: bool,
    keep_alive: KeepAlive,
    last_write: tokio::time::Instant,
    ping: std::pin::Pin<Box<tokio::time::Sleep>>,
    _guard: G,
}

/// A client's view of the log: everything after `cursor`, then live events
/// as they come, a keep-alive comment when idle, and the end after
/// `finished`. Each poll writes all pending frames at once (up to
/// `MAX_BATCH`).
fn event_stream<G: Send + 'static>(
    log: Arc<EventLog>,
    cursor: u64,
    keep_alive: Duration,
    guard: G,
) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static {
    let keep_alive = KeepAlive::new(keep_alive);
    let now = tokio::time::Instant::now();
    let reader = Reader {
        rx: log.subscribe(),
        log,
        cursor,
        ended: false,
        keep_alive,
        last_write: now,
        ping: Box::pin(tokio::time::sleep_until(keep_alive.due(now))),
        _guard: guard,
    };
    stream::unfold(reader, |mut r| async move {
        if r.ended {
            return None;
        }
        loop {
            r.rx.borrow_and_update();
            if let Some(batch) = r.log.frames_after(r.cursor, MAX_BATCH) {
                r.cursor = batch.last;
                r.ended = batch.ends;
                // Only a clock read: the timer is re-armed when it fires, so
                // a busy stream does not touch the timer wheel per event.
                r.last_write = tokio::time::Instant::now();
                return Some((Ok(Frame::data(batch.bytes)), r));
            }
            if r.log.finished_id().is_some_and(|f| r.cursor >= f) {
                return None;
            }
            tokio::select! {
                changed = r.rx.changed() => if changed.is_err() { return None },
                () = r.ping.as_mut() => {
                    let due = r.keep_alive.due(r.last_write);
                    let now = tokio::time::Instant::now();
                    if now < due {
                        r.ping.as_mut().reset(due);
                        continue;
                    }
                    r.last_write = now;
                    r.ping.as_mut().reset(r.keep_alive.due(now));
                    return Some((Ok(Frame::data(KeepAlive::FRAME)), r));
                }
            }
        }
    })
}

/// Checks the token from the header or the query, in constant time.
fn authorized<B>(token: &str, req: &Request<B>, query: &Query) -> bool {
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110).
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(|t| t.trim().to_owned());
    [from_header, query.get("token")]
        .into_iter()
        .flatten()
        .any(|given| same_secret(token, &given))
}

/// The one rule for a token, for `run`, `demo` and `watch` alike. It must
/// reach `authorized` intact both ways: in `Authorization: Bearer T` (hyper
/// reads a header value as text only when it is visible ASCII, and the value
/// is trimmed) and as `?token=T` (percent-encoded). Only visible ASCII,
/// 0x21–0x7E, does both. The message never repeats the secret.
pub fn check_token(token: &str) -> Result<(), UsageError> {
    if token.is_empty() {
        return Err(UsageError::new(
            "--token (or BATCHSSE_TOKEN) is empty; give the run's secret or leave it unset",
        ));
    }
    let Some((at, c)) = token
        .chars()
        .enumerate()
        .find(|(_, c)| !matches!(c, '\x21'..='\x7e'))
    else {
        return Ok(());
    };
    let what = match c {
        ' ' => "a space",
        c if c.is_ascii() => "a control character",
        _ => "a non-ASCII character",
    };
    Err(UsageError::new(format!(
        "--token (or BATCHSSE_TOKEN) has {what} (character {}), which cannot be sent in an HTTP header; \
         use only visible ASCII (letters, digits and punctuation, 0x21-0x7E), e.g. a token made by `openssl rand -hex 32`",
        at + 1
    )))
}

/// Compares digests so the time taken says nothing about the token.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// The decoded query string.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
}

/// Connections the kernel queues for `accept` (capped by
/// `net.core.somaxconn`). tokio's default, 128, made a burst of 3,000
/// viewers wait on SYN retransmits for 17 s.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listen address with a message that says what to do on failure.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, UsageError> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restarted run can take its port
        // back at once (on Windows it would let others take it over).
        #[cfg(not(windows))]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => "the port is already in use".to_owned(),
            std::io::ErrorKind::AddrNotAvailable => "that address is not on this machine".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need privileges)".to_owned(),
            _ => e.to_string(),
        };
        UsageError::new(format!(
            "cannot listen on {addr}: {why}; pick another with --listen, e.g. --listen 127.0.0.1:0 for any free port"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, Finished, Level};
    use futures_util::StreamExt;
    use serde_json::json;

    fn msg(n: u32) -> Event {
        Event::message(json!({}), Level::Info, format!("m{n}"))
    }

    fn finished() -> Event {
        Finished::ok()
    }

    async fn collect(
        s: impl Stream<Item = Result<Frame<Bytes>, Infallible>>,
    ) -> (Vec<crate::events::sse::ParsedEvent>, usize) {
        let mut p = crate::events::sse::Parser::new();
        let mut evs = Vec::new();
        let mut s = std::pin::pin!(s);
        while let Some(Ok(f)) = s.next().await {
            evs.extend(p.feed(f.data_ref().unwrap()));
        }
        (evs, p.comments())
    }

    #[tokio::test(start_paused = true)]
    async fn idle_streams_get_keep_alives_then_the_live_tail() {
        let log = Arc::new(EventLog::new());
        log.push(msg(1));
        let s = event_stream(log.clone(), 0, Duration::from_secs(15), ());
        let writer = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(40)).await;
            writer.push(msg(2));
            writer.push(finished());
        });
        let (evs, pings) = collect(s).await;
        let ids: Vec<_> = evs.iter().map(|e| e.id.clone().unwrap()).collect();
        assert_eq!(ids, ["1", "2", "3"]);
        assert_eq!(pings, 2, "two 15 s keep-alives in 40 s of silence");
        assert_eq!(evs[2].event, "finished");
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_stream_starts_after_the_given_id() {
        let log = Arc::new(EventLog::new());
        for n in 0..5 {
            log.push(msg(n));
        }
        log.push(finished());
        let (evs, _) = collect(event_stream(log, 3, Duration::from_secs(15), ())).await;
        let ids: Vec<_> = evs.iter().map(|e| e.id.clone().unwrap()).collect();
        assert_eq!(ids, ["4", "5", "6"]);
    }

    #[test]
    fn tokens_are_visible_ascii_only() {
        let all: String = (0x21u8..=0x7e).map(char::from).collect();
        for good in ["s3cret", "a&b", "x", all.as_str()] {
            assert_eq!(check_token(good), Ok(()), "{good}");
        }
        for (bad, what) in [
            ("", "empty"),
            ("tök", "non-ASCII character (character 2)"),
            ("🔑", "non-ASCII character (character 1)"),
            ("a b", "a space (character 2)"),
            ("a\tb", "control character"),
            ("\u{7f}", "control character"),
            ("a\nb", "control character"),
        ] {
            let e = check_token(bad).unwrap_err().0;
            assert!(e.contains(what), "{bad:?}: {e}");
            assert!(e.contains("BATCHSSE_TOKEN"), "{e}");
        }
    }

    #[test]
    fn secrets_compare_by_value_only() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "x"));
    }
}
