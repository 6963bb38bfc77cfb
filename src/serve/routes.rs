//! Routing: every request, whichever path it came by, is answered here:
//! CORS, methods, the token, `/`, `/status`, `/metrics`, `/healthz`, and `/events` up to
//! the point where a stream path takes over (a [`StreamStart`]).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::auth::authorized;
use super::dashboard;
use super::metrics;
use super::state::{ClientGuard, State};

pub type Body = BoxBody<Bytes, Infallible>;

/// Event ids start at 1 in every run, so a `Last-Event-ID` alone cannot
/// tell a run restarted on the same address from the one it came from. Every
/// `/events` answer (`200` and `204`) names the run in this header, and a
/// request that names another run with it gets the whole run, from id 1,
/// whatever its `Last-Event-ID`.
pub const RUN_ID_HEADER: &str = "x-batchsse-run-id";

/// An accepted `/events` request whose body is still to be attached: the
/// cursor it starts after and the client slot it holds. Hyper's path makes
/// it a streaming body (`body::handle`); the direct path hands it to the
/// fan-out writer.
#[derive(Clone)]
pub struct StreamStart {
    pub cursor: u64,
    pub guard: Arc<ClientGuard>,
}

/// Routes one request; an event stream comes back with an empty body and
/// its `StreamStart` in the extensions. Never panics on anything a client
/// sends.
pub fn respond<B>(state: &Arc<State>, req: Request<B>) -> Response<Body> {
    let mut resp = misdirected(state, req.headers()).unwrap_or_else(|| route(state, &req));
    add_cors(state, &mut resp);
    if req.method() == Method::HEAD {
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Empty::new().boxed());
    }
    resp
}

/// `--cors`: the one origin whose pages may read the answers.
pub(super) fn add_cors(state: &State, resp: &mut Response<Body>) {
    let headers = resp.headers_mut();
    if let Some(origin) = &state.config.cors
        && let Ok(v) = HeaderValue::from_str(origin)
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// A request whose `Host` or `Authorization` is ambiguous gets `400`. Two
/// hosts, or a `Host` that is not text, are what HTTP/1.1 says to refuse:
/// the guard against rebinding reads only the first, so a second one must
/// not reach a proxy or a log that reads the last. Of two credentials the
/// server would have to guess which one counts.
fn ambiguous(headers: &hyper::HeaderMap) -> Option<Response<Body>> {
    for (name, what) in [
        (header::HOST, "Host"),
        (header::AUTHORIZATION, "Authorization"),
    ] {
        if headers.get_all(&name).iter().count() > 1 {
            let why = format!("more than one {what} header; send one");
            return Some(text(StatusCode::BAD_REQUEST, &why));
        }
    }
    let host = headers.get(header::HOST)?;
    host.to_str().is_err().then(|| {
        text(
            StatusCode::BAD_REQUEST,
            "the Host header is not valid (only visible ASCII may name a host); send the server's address, e.g. Host: 127.0.0.1",
        )
    })
}

/// Against DNS rebinding: a server on a loopback address answers only to a
/// loopback name in `Host` (with any port: a local proxy in front keeps the
/// name), its own address, or a name `--allow-host` lets in; anything else, such as a
/// hostile domain that resolves to 127.0.0.1, gets `421`. A request
/// without `Host` (HTTP/1.0 tools) passes: a browser always sends one.
/// Two of them, one that is not text, or two `Authorization` headers get
/// [`ambiguous`]' `400`, on any address.
pub(super) fn misdirected(state: &State, headers: &hyper::HeaderMap) -> Option<Response<Body>> {
    if let Some(refused) = ambiguous(headers) {
        return Some(refused);
    }
    let listen = state.config.listen.filter(|a| a.ip().is_loopback())?;
    let host = headers.get(header::HOST)?;
    // Text: `ambiguous` refused any other.
    let host = host.to_str().unwrap_or("").trim().to_ascii_lowercase();
    let name = match host.rsplit_once(':') {
        Some((n, p)) if !n.is_empty() && !p.contains(']') => n.to_owned(),
        _ => host.clone(),
    };
    // The address the listening line prints is the server's own (an IP
    // literal cannot be rebound), e.g. 127.0.0.2 of 127.0.0.0/8.
    let own = match listen.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let loopback = matches!(name.as_str(), "127.0.0.1" | "localhost" | "[::1]") || name == own;
    let allowed = state
        .config
        .allow_hosts
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&name) || a.eq_ignore_ascii_case(&host));
    if loopback || allowed {
        return None;
    }
    let names = match own.as_str() {
        "127.0.0.1" | "[::1]" => "127.0.0.1, localhost or [::1]".to_owned(),
        _ => format!("127.0.0.1, localhost, [::1] or {own}"),
    };
    Some(text(
        StatusCode::MISDIRECTED_REQUEST,
        &format!(
            "this server answers only to {names}, not {} (a guard against DNS rebinding); behind a reverse proxy, start it with --allow-host NAME (port {} here)",
            crate::human::quoted(&host),
            listen.port()
        ),
    ))
}

fn route<B>(state: &Arc<State>, req: &Request<B>) -> Response<Body> {
    let path = req.uri().path();
    let method = req.method();
    // Its target is a host, not a path here: no route would match it.
    if method == Method::CONNECT {
        return not_allowed("this server is not a proxy; only GET and HEAD are allowed");
    }
    let known = matches!(
        path,
        "/" | "/events" | "/status" | "/metrics" | "/healthz" | "/control"
    );
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            "not found; try /, /events, /status, /metrics, /healthz or POST /control",
        );
    }
    if method == Method::OPTIONS && state.config.cors.is_some() {
        let mut r = empty(StatusCode::NO_CONTENT);
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type, Last-Event-ID"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return r;
    }
    if path == "/control" {
        // POST is hyper's (see `serve::connection`); anything else ends here.
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "/control takes POST with a JSON body",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if method != Method::GET && method != Method::HEAD {
        return not_allowed("only GET and HEAD are allowed");
    }
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    let query = Query::parse(req.uri().query());
    if let Some(token) = &state.config.token
        && !authorized(token, req.headers(), query.get("token"))
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
        "/" if state.relayed => page(state, dashboard::RELAYED.as_str()),
        "/" => page(state, dashboard::HTML),
        "/status" => status(state),
        "/metrics" => metrics_page(state),
        _ => events(state, req, &query),
    }
}

/// `405` for a method no route here takes, with the ones they do.
fn not_allowed(why: &str) -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, why);
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}

/// The dashboard. Only the `--cors` origin's pages may frame it (none
/// without one, or with `*`: every site is no one origin), so no other
/// site can lay it under its own buttons.
fn page(state: &State, html: &'static str) -> Response<Body> {
    let mut r = full(StatusCode::OK, "text/html; charset=utf-8", html);
    let one_origin = |o: &&str| !o.contains(['*', ';', ',', ' ']);
    let ancestors = state
        .config
        .cors
        .as_deref()
        .filter(one_origin)
        .unwrap_or("'none'");
    let policy = HeaderValue::from_str(&format!("frame-ancestors {ancestors}"))
        .unwrap_or(HeaderValue::from_static("frame-ancestors 'none'"));
    r.headers_mut()
        .insert(header::CONTENT_SECURITY_POLICY, policy);
    r
}

pub(super) fn status(state: &State) -> Response<Body> {
    let snap = state.log.snapshot();
    let mut v = serde_json::to_value(&snap).unwrap_or_default();
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("clients".into(), state.clients().into());
        m.insert("max_clients".into(), state.config.max_clients.into());
    }
    let mut r = full(StatusCode::OK, "application/json", v.to_string());
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn metrics_page(state: &State) -> Response<Body> {
    let mut r = match metrics::render(&state.log.snapshot(), state.clients()) {
        Ok(body) => full(StatusCode::OK, metrics::CONTENT_TYPE, body),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded",
        ),
    };
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The id a `/events` request says it has seen: `Last-Event-ID`, else
/// `?last_event_id=`; 0 for none, or for anything but ASCII digits. Our
/// ids are only ever digits, and Rust's own parse would take `+3` as 3.
fn last_seen<B>(req: &Request<B>, query: &Query) -> u64 {
    req.headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.get("last_event_id"))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
}

/// How long an `/events` request waits for the log to be ready for it.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

/// Before an `/events` request is routed, waits (at most [`CATCH_UP`])
/// until the run's `start` is in the log, so the answer names the run
/// (`x-batchsse-run-id`): a request may come between a server's listening
/// line and its first event, or while a relay copies it from Redis.
pub async fn ready<B>(state: &State, req: &Request<B>) {
    if req.uri().path() != "/events" || misdirected(state, req.headers()).is_some() {
        return;
    }
    // A request that will be refused for its token is refused at once.
    if let Some(token) = &state.config.token
        && !authorized(
            token,
            req.headers(),
            Query::parse(req.uri().query()).get("token"),
        )
    {
        return;
    }
    // `start` is always id 1.
    state.log.wait_for_id(1, CATCH_UP).await;
}

fn events<B>(state: &Arc<State>, req: &Request<B>, query: &Query) -> Response<Body> {
    let last_seen = last_seen(req, query);
    // None only between the server's start and the runner's `start` event.
    let run_id = state.log.run_id();
    // The run the client's `Last-Event-ID` belongs to: the header, or
    // `?run=` (which an EventSource, which cannot send headers, can).
    let for_another_run = req
        .headers()
        .get(RUN_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.get("run"))
        .is_some_and(|asked| run_id.as_deref() != Some(asked.as_str()));
    // An id this run never gave out comes from an earlier run on the same
    // address (a dashboard left open): treat it as a new client. A relay
    // cannot tell while it copies a live run: it trails Redis, and a client
    // that moves here from the run's own server or another relay may have
    // seen ids it has not copied yet, so it trusts the id (no duplicate).
    // Once it has copied `finished` it holds every id the run gave out.
    let complete = !state.relayed || state.log.finished_id().is_some();
    let beyond = last_seen > state.log.last_id() && complete;
    let last_seen = if for_another_run || beyond {
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

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

pub(super) fn text(status: StatusCode, body: &str) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", format!("{body}\n"))
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Empty::new().boxed());
    *r.status_mut() = status;
    r
}

/// The decoded query string.
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub(super) fn parse(q: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub(super) fn get(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::log::EventLog;
    use crate::events::{Event, Level};
    use crate::serve::Config;

    /// The cursor an `/events` request with `Last-Event-ID: 3` gets while
    /// ids 1 and 2 reach the log 50 ms after it arrives.
    async fn cursor_for_an_id_not_held_yet(relayed: bool) -> u64 {
        let log = Arc::new(EventLog::new());
        let state = if relayed {
            State::relayed(log.clone(), Config::default())
        } else {
            State::watching_for_tests(log.clone())
        };
        let req = Request::get("/events")
            .header("last-event-id", "3")
            .body(())
            .unwrap();
        let copier = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            for n in 1..=2 {
                let e = Event::message(serde_json::json!({}), Level::Info, format!("m{n}"));
                log.push_published(n, e, format!("{{\"n\":{n}}}"));
            }
        });
        ready(&state, &req).await;
        let resp = respond(&state, req);
        copier.await.unwrap();
        resp.extensions()
            .get::<StreamStart>()
            .expect("a stream")
            .cursor
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_trusts_an_id_it_has_not_copied_yet() {
        assert_eq!(cursor_for_an_id_not_held_yet(true).await, 3);
        // A run's own server has given out every id it ever will: one it
        // does not hold comes from another run, so the client starts over.
        assert_eq!(cursor_for_an_id_not_held_yet(false).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_without_the_token_is_not_held_for_start() {
        let log = Arc::new(EventLog::new());
        let config = Config {
            token: Some("t0ken".into()),
            ..Config::default()
        };
        let state = State::relayed(log, config);
        let req = Request::get("/events").body(()).unwrap();
        let before = tokio::time::Instant::now();
        ready(&state, &req).await;
        assert_eq!(before.elapsed(), std::time::Duration::ZERO);
        assert_eq!(respond(&state, req).status(), StatusCode::UNAUTHORIZED);
        let with = Request::get("/events?token=t0ken").body(()).unwrap();
        ready(&state, &with).await;
        assert_eq!(before.elapsed(), CATCH_UP, "no start: held the full wait");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_asked_for_before_start_names_the_run() {
        use crate::events::{Settings, Start};
        let log = Arc::new(EventLog::new());
        let state = State::watching_for_tests(log.clone());
        let req = Request::get("/events").body(()).unwrap();
        let runner = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            log.push(Event::Start(Start {
                run_id: "r-1".into(),
                plan: "p".into(),
                db: "d".into(),
                steps: Vec::new(),
                dry_run: false,
                resumed: false,
                protocol: 1,
                pid: 1,
                settings: Settings::default(),
                kind: Default::default(),
                undo: None,
            }));
        });
        ready(&state, &req).await;
        let resp = respond(&state, req);
        runner.await.unwrap();
        assert_eq!(
            resp.headers()
                .get(RUN_ID_HEADER)
                .map(|v| v.to_str().unwrap()),
            Some("r-1")
        );
    }
}
