//! `POST /control`: live commands for the run — pause, resume, cancel, a
//! new pace. Off without `--control-token`; the token only in
//! `Authorization: Bearer`; a JSON body of at most 4 KiB, whole within
//! 10 s; refused once the
//! run has finished, and a pause refused in a run that holds its write lock
//! throughout (`--atomic`, `--dry-run`). Each accepted command becomes a
//! `control` event, wakes the runner's wait, and the answer is the new
//! `/status`.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use super::auth::{bearer, same_secret};
use super::routes::{self, Body, Query};
use super::state::State;
use crate::events::{Control, ControlAction, ControlBy, Event, RunState, ThrottleReason};
use crate::lifecycle::{BATCH_SIZE, CHUNK_TIME_MS, NICE_RATIO, PacePatch, SLEEP_MS};

/// The largest body accepted.
const MAX_BODY: usize = 4096;

/// How long the body may take to arrive once the head has, as long as
/// the head may (hyper's `header_read_timeout`): a client that stops
/// half-way must not hold its connection until the run ends.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a command after the run's end is refused.
const FINISHED: &str = "the run has finished; there is nothing left to steer";

/// A refusal: its status and what to do about it.
type Refusal = (StatusCode, String);

/// Answers `POST /control` (the routing checks before this one, the host
/// and CORS, are `routes`').
pub async fn handle(
    state: &Arc<State>,
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    if let Some(mut r) = routes::misdirected(state, &parts.headers) {
        routes::add_cors(state, &mut r);
        return r;
    }
    let answer = match admit(state, &parts.headers, parts.uri.query()) {
        Err(r) => Err(r),
        Ok(()) => match read_body(body).await {
            Ok(b) => command(state, &parts.headers, &b, peer),
            Err(r) => Err(r),
        },
    };
    if matches!(answer, Ok(ControlAction::Pause)) {
        landed(state).await;
    }
    let mut r = match answer {
        Ok(_) => routes::status(state),
        Err((code, why)) => {
            let mut r = routes::text(code, &why);
            if code == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"batchsse control\""),
                );
            }
            r
        }
    };
    routes::add_cors(state, &mut r);
    r
}

/// How long the answer to a pause in the run's last step waits for it to
/// take hold.
const LANDING: std::time::Duration = std::time::Duration::from_secs(5);

/// In the run's last step, waits (at most [`LANDING`]) until a pause holds
/// the run, or the run has finished first, or another command lifted it,
/// so the answer, the `/status` after it, says which. A pause that comes
/// during the run's last chunk takes effect nowhere: there is no boundary
/// after it, and the run finishes. Before the last step another boundary
/// always comes, and the answer, "pausing", is sent at once.
async fn landed(state: &State) {
    let snap = state.log.snapshot();
    if snap.step.is_none_or(|i| i + 1 < snap.steps_total) {
        return;
    }
    let mut changed = state.log.subscribe();
    let settled = async {
        loop {
            let s = state.log.snapshot();
            let holds = s.throttled == Some(ThrottleReason::Paused);
            if s.state == RunState::Finished || !s.paused || holds {
                return;
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(LANDING, settled).await;
}

/// The body, of at most [`MAX_BODY`] bytes, within [`BODY_TIMEOUT`].
async fn read_body(body: hyper::body::Incoming) -> Result<bytes::Bytes, Refusal> {
    let read = Limited::new(body, MAX_BODY).collect();
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(_)) => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {MAX_BODY} bytes; send one small JSON object"),
        )),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} s; send it whole with the request",
                BODY_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Everything that needs no body: control on, the token, the type, the size.
fn admit(state: &State, headers: &HeaderMap, query: Option<&str>) -> Result<(), Refusal> {
    if state.relayed {
        return Err((
            StatusCode::FORBIDDEN,
            "this is a relay: it shows a run published to Redis but cannot steer it; send the command to the run's own server (batchsse ctl URL …)".into(),
        ));
    }
    let Some(token) = &state.config.control_token else {
        return Err((
            StatusCode::FORBIDDEN,
            "live control is off; start the run with --control-token T (or BATCHSSE_CONTROL_TOKEN) to steer it".into(),
        ));
    };
    let q = Query::parse(query);
    if q.get("token").is_some() || q.get("control_token").is_some() {
        return Err((
            StatusCode::UNAUTHORIZED,
            "the control token is taken only as 'Authorization: Bearer T', never in the URL (where logs and history keep it)".into(),
        ));
    }
    match bearer(headers) {
        None => {
            return Err((
                StatusCode::UNAUTHORIZED,
                "a control token is required: send 'Authorization: Bearer T' with the run's --control-token".into(),
            ));
        }
        Some(s) if !same_secret(s, token) => {
            return Err((
                StatusCode::UNAUTHORIZED,
                "the control token was not accepted: it is not this run's --control-token (give the one the run was started with, as 'Authorization: Bearer T')".into(),
            ));
        }
        Some(_) => {}
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the command as 'Content-Type: application/json'".into(),
        ));
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if length.is_some_and(|n| n > MAX_BODY as u64) {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {MAX_BODY} bytes; send one small JSON object"),
        ));
    }
    Ok(())
}

/// What a body asks for.
#[derive(Debug, Default, PartialEq)]
struct Command {
    pause: Option<bool>,
    cancel: bool,
    pace: PacePatch,
}

/// Checks the body, carries the command out and logs it; what it was.
fn command(
    state: &State,
    headers: &HeaderMap,
    body: &[u8],
    peer: SocketAddr,
) -> Result<ControlAction, Refusal> {
    let cmd = parse(body).map_err(|why| (StatusCode::BAD_REQUEST, why))?;
    if state.log.finished_id().is_some() {
        return Err((StatusCode::CONFLICT, FINISHED.into()));
    }
    let Some((cancel, steering)) = &state.control else {
        return Err((
            StatusCode::FORBIDDEN,
            "this server shows a run but cannot steer it".into(),
        ));
    };
    if cmd.pause == Some(true)
        && !cmd.cancel
        && let Some(why) = steering.pause_refused()
    {
        return Err((StatusCode::CONFLICT, why.to_owned()));
    }
    let waits =
        cmd.pace.sleep_ms.is_some_and(|s| s > 0) || cmd.pace.nice_ratio.is_some_and(|r| r > 0.0);
    if waits
        && !cmd.cancel
        && let Some(why) = steering.waits_refused()
    {
        return Err((StatusCode::CONFLICT, why.to_owned()));
    }
    let resizes = cmd.pace.chunk_time_ms.is_some() || cmd.pace.batch_size.is_some();
    if resizes
        && !cmd.cancel
        && let Some(why) = steering.resizes_refused()
    {
        return Err((StatusCode::CONFLICT, why.to_owned()));
    }
    let action = if cmd.cancel {
        ControlAction::Cancel
    } else {
        match cmd.pause {
            Some(true) => ControlAction::Pause,
            Some(false) => ControlAction::Resume,
            None => ControlAction::Set,
        }
    };
    // Logged before anything changes, so `control` comes before the run's
    // end; a run that finished since the check above takes no command.
    let logged = steering.change_pace_logged(cmd.pace.clone(), cmd.pause, || {
        let settings = cmd.pace.apply(state.log.snapshot().settings);
        let control = Control {
            action,
            by: client(headers),
            remote: peer.to_string(),
            settings,
        };
        state.log.push(Event::Control(control)).is_some()
    });
    if !logged {
        return Err((StatusCode::CONFLICT, FINISHED.into()));
    }
    // Either way the runner's wait ends now, and it reads the settings again.
    if cmd.cancel {
        cancel.cancel();
    } else {
        cancel.nudge();
    }
    Ok(action)
}

/// `X-Batchsse-Client: ctl|dashboard` says who sent it; anything else is
/// plain HTTP.
fn client(headers: &HeaderMap) -> ControlBy {
    match headers
        .get("x-batchsse-client")
        .and_then(|v| v.to_str().ok())
    {
        Some("ctl") => ControlBy::Ctl,
        Some("dashboard") => ControlBy::Dashboard,
        _ => ControlBy::Http,
    }
}

/// A JSON object's fields as sent, repeats included (`serde_json`'s map
/// keeps only the last of a repeated key).
struct Fields(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Fields, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut m: M) -> Result<Fields, M::Error> {
                let mut fields = Vec::new();
                while let Some(field) = m.next_entry::<String, Value>()? {
                    fields.push(field);
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// The body as a command, or why not (naming the field).
fn parse(body: &[u8]) -> Result<Command, String> {
    let Fields(map) = serde_json::from_slice(body).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            "the body must be a JSON object, e.g. {\"pause\": true}".to_owned()
        } else {
            format!("the body is not JSON ({e}); send e.g. {{\"pause\": true}}")
        }
    })?;
    let mut cmd = Command::default();
    for (i, (key, value)) in map.iter().enumerate() {
        // `{"pause": true, "pause": false}` could mean either: refused.
        if map[..i].iter().any(|(k, _)| k == key) {
            return Err(format!(
                "the field {} is given twice; give each field once",
                crate::human::quoted(key)
            ));
        }
        field(&mut cmd, key, value)?;
    }
    if map.is_empty() {
        return Err("the object is empty; give pause, cancel, chunk_time_ms, nice_ratio, sleep_ms or batch_size".into());
    }
    Ok(cmd)
}

fn field(cmd: &mut Command, key: &str, value: &Value) -> Result<(), String> {
    match key {
        "pause" => cmd.pause = Some(value.as_bool().ok_or("pause must be true or false")?),
        "cancel" => {
            if value != &Value::Bool(true) {
                return Err("cancel must be true (there is no undoing a cancel)".into());
            }
            cmd.cancel = true;
        }
        "chunk_time_ms" => cmd.pace.chunk_time_ms = Some(int(key, value, CHUNK_TIME_MS)?),
        "sleep_ms" => cmd.pace.sleep_ms = Some(int(key, value, SLEEP_MS)?),
        "batch_size" => {
            cmd.pace.batch_size = Some(match value {
                Value::Null => None,
                v => Some(int(key, v, BATCH_SIZE)?),
            });
        }
        "nice_ratio" => {
            let r = value
                .as_f64()
                .filter(|r| NICE_RATIO.contains(r))
                .ok_or("nice_ratio must be a number from 0 to 100")?;
            cmd.pace.nice_ratio = Some(crate::events::Settings::tidy_ratio(r));
        }
        other => {
            return Err(format!(
                "unknown field {}; the fields are pause, cancel, chunk_time_ms, nice_ratio, sleep_ms and batch_size",
                crate::human::quoted(other)
            ));
        }
    }
    Ok(())
}

/// A whole number in `range`, however JSON spells it: `-0`, `0.0` and
/// `2.5e2` are whole numbers too (serde_json reads them as floats), as a
/// `nice_ratio` of `-0` is 0.
fn int(key: &str, value: &Value, range: RangeInclusive<u64>) -> Result<u64, String> {
    let whole = |f: f64| f.fract() == 0.0 && (0.0..=*range.end() as f64).contains(&f);
    value
        .as_u64()
        .or_else(|| value.as_f64().filter(|f| whole(*f)).map(|f| f as u64))
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            format!(
                "{key} must be a whole number from {} to {}; send e.g. {{\"{key}\": {}}}",
                range.start(),
                range.end(),
                range.start()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_read_field_by_field_and_refusals_name_the_field() {
        let ok = parse(br#"{"pause": true, "chunk_time_ms": 50, "batch_size": null}"#).unwrap();
        assert_eq!(ok.pause, Some(true));
        assert_eq!(ok.pace.chunk_time_ms, Some(50));
        assert_eq!(ok.pace.batch_size, Some(None), "null: adapt again");
        let bad = |body: &str| parse(body.as_bytes()).unwrap_err();
        assert!(bad(r#"{"chunk_time_ms": 0}"#).contains("chunk_time_ms"));
        assert!(bad(r#"{"chunk_time_ms": 600001}"#).contains("chunk_time_ms"));
        assert!(bad(r#"{"nice_ratio": 101}"#).contains("nice_ratio"));
        assert!(bad(r#"{"nice_ratio": "1"}"#).contains("nice_ratio"));
        assert!(bad(r#"{"sleep_ms": -1}"#).contains("sleep_ms"));
        for half in [
            r#"{"sleep_ms": 2.5}"#,
            r#"{"sleep_ms": -0.5}"#,
            r#"{"sleep_ms": 1e300}"#,
        ] {
            let why = bad(half);
            assert!(
                why.contains("whole number from 0 to 600000; send e.g. {\"sleep_ms\": 0}"),
                "{half}: {why}"
            );
        }
        // As a nice ratio of -0 is 0, every field's -0 is 0.
        for (sent, kept) in [
            ("-0", 0),
            ("0.0", 0),
            ("-0.0", 0),
            ("250.0", 250),
            ("2.5e2", 250),
        ] {
            let cmd = parse(format!("{{\"sleep_ms\": {sent}}}").as_bytes()).unwrap();
            assert_eq!(cmd.pace.sleep_ms, Some(kept), "{sent}");
        }
        assert_eq!(
            parse(br#"{"batch_size": 1e1}"#).unwrap().pace.batch_size,
            Some(Some(10))
        );
        assert!(bad(r#"{"batch_size": 0}"#).contains("batch_size"));
        assert!(bad(r#"{"cancel": false}"#).contains("cancel"));
        assert!(bad(r#"{"speed": 2}"#).contains("\"speed\""));
        assert!(bad("{}").contains("empty"));
        assert!(bad("[1]").contains("object"));
        assert!(bad("pause").contains("not JSON"));
        for not_object in ["true", "1", "-1", "1.5", "\"x\"", "null", "[]"] {
            assert!(bad(not_object).contains("object"), "{not_object}");
        }
        assert!(bad(r#"{"pause": true, "pause": false}"#).contains("\"pause\" is given twice"));
        assert!(bad(r#"{"sleep_ms": 1, "pause": true, "sleep_ms": 1}"#).contains("\"sleep_ms\""));
        assert!(bad(r#"{"pause": true} x"#).contains("not JSON"));
        for (sent, kept) in [
            ("1e-320", 0.0),
            ("-0.0", 0.0),
            ("0.1234567", 0.123457),
            ("2", 2.0),
        ] {
            let r = parse(format!("{{\"nice_ratio\": {sent}}}").as_bytes()).unwrap();
            let r = r.pace.nice_ratio.unwrap();
            assert_eq!((r, r.to_string()), (kept, kept.to_string()), "{sent}");
        }
    }
}
