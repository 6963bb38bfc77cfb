//! `batchsse ctl URL pause|resume|cancel|set …`: one `POST /control` to a
//! running batch, with the control token, then one line saying where the
//! run stands (`--json`: its `/status`). Exit 0 done, 2 refused (the
//! server's reason), 3 unreachable or not a run.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use serde_json::{Value, json};

use crate::cli::{CtlAction, CtlArgs};
use crate::error::{Unreachable, UsageError};
use crate::human::thousands;
use crate::view::follow::{Target, answer_body};

/// How long to wait for the run to answer.
const PATIENCE: Duration = Duration::from_secs(10);

/// The token `ctl` sends, which it cannot do without. An empty one is most
/// often `--control-token "$T"` typed in another terminal than the one
/// that set `T`: the shared rule's "leave it unset" would only lead to the
/// refusal of a missing token.
fn control_token(args: &CtlArgs) -> Result<&str, UsageError> {
    match args.control_token.as_deref() {
        None => Err(UsageError::new(
            "give the run's control token with --control-token T (or BATCHSSE_CONTROL_TOKEN)",
        )),
        Some("") => Err(UsageError::new(
            "--control-token (or BATCHSSE_CONTROL_TOKEN) is empty: give the run's control token (a shell variable such as $T holds it only in the shell that set it; set it in this one too)",
        )),
        Some(token) => crate::serve::check_control_token(token).map(|()| token),
    }
}

pub fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let body = command(&args.action)?;
    let token = control_token(&args)?;
    let mut target = Target::parse_for(
        &args.url,
        None,
        "--control-token (or BATCHSSE_CONTROL_TOKEN)",
    )?;
    target.auth = HeaderValue::from_str(&format!("Bearer {token}")).ok();
    let path = target
        .status
        .split('?')
        .next()
        .and_then(|p| p.strip_suffix("status"))
        .map(|p| format!("{p}control"))
        .unwrap_or_else(|| "/control".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, text) = rt.block_on(post(&target, &path, body))?;
    if status != StatusCode::OK && !REFUSALS.contains(&status.as_u16()) {
        return Err(not_a_run(&target, &path, status, &text).into());
    }
    if status != StatusCode::OK {
        return Err(UsageError::new(format!(
            "{} refused the command ({}): {}",
            target.authority,
            status.as_u16(),
            text.trim()
        ))
        .into());
    }
    let v: Value = serde_json::from_str(&text).map_err(|_| {
        Unreachable(format!(
            "{} did not answer POST {path} as a batchsse run does (its answer is not the run's status JSON); {}",
            target.authority,
            target.not_a_run()
        ))
    })?;
    // The command was taken: a reader gone (`| head -0`) changes nothing.
    let line = match args.json {
        true => format!("{v}\n"),
        false => format!("batchsse: {}\n", one_line(&args.action, &v)),
    };
    super::docs::print(crate::error::terminal_safe(&line).as_bytes())
}

/// The statuses a batchsse run (or relay) refuses a command with at
/// `POST /control` (README, "Steer a running batch"). Any other, such as
/// a `404` of a wrong path or a `501` of another web server, means the
/// address is not a run's: exit 3, as `watch` does.
const REFUSALS: [u16; 8] = [400, 401, 403, 409, 413, 415, 421, 431];

/// What answered is not a batchsse run; its own text only when it is one
/// short line (not a whole HTML page).
fn not_a_run(target: &Target, path: &str, status: StatusCode, text: &str) -> Unreachable {
    let text = text.trim();
    let said = if text.is_empty() || text.contains('\n') || text.chars().count() > 200 {
        String::new()
    } else {
        format!(": {text}")
    };
    Unreachable(format!(
        "{} answered {status} to POST {path}{said}; {}",
        target.authority,
        target.not_a_run()
    ))
}

/// The body for an action.
fn command(action: &CtlAction) -> Result<Value, UsageError> {
    Ok(match action {
        CtlAction::Pause => json!({"pause": true}),
        CtlAction::Resume => json!({"pause": false}),
        CtlAction::Cancel => json!({"cancel": true}),
        CtlAction::Set(s) => {
            let mut v = serde_json::Map::new();
            if let Some(ms) = s.chunk_time {
                v.insert("chunk_time_ms".into(), ms.into());
            }
            if let Some(r) = s.nice_ratio {
                v.insert("nice_ratio".into(), r.into());
            }
            if let Some(ms) = s.sleep {
                v.insert("sleep_ms".into(), ms.into());
            }
            match s.batch_size.as_deref() {
                None => {}
                Some("auto") => {
                    v.insert("batch_size".into(), Value::Null);
                }
                Some(n) => {
                    let n: u64 = n.parse().map_err(|_| {
                        UsageError::new(format!(
                            "--batch-size takes a whole number of rows from {} to {}, or `auto`; got {}",
                            crate::lifecycle::BATCH_SIZE.start(),
                            crate::lifecycle::BATCH_SIZE.end(),
                            crate::human::quoted(n)
                        ))
                    })?;
                    v.insert("batch_size".into(), n.into());
                }
            }
            if v.is_empty() {
                return Err(UsageError::new(
                    "set needs at least one of --chunk-time, --nice-ratio, --sleep, --batch-size",
                ));
            }
            Value::Object(v)
        }
    })
}

/// Sends the command; the answer's status and body.
async fn post(target: &Target, path: &str, body: Value) -> anyhow::Result<(StatusCode, String)> {
    let unreachable = |why: String| {
        Unreachable(format!(
            "cannot reach a run at {} ({why}); is it running, and is this its address?",
            target.authority
        ))
    };
    let exchange = async {
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-batchsse-client", "ctl")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let resp = target.send(req).await.map_err(unreachable)?;
        let status = resp.status();
        let bytes = answer_body(resp.into_body()).await.map_err(unreachable)?;
        Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .map_err(|_| unreachable("no answer in 10 s".into()))?
}

/// What became of a pause the server answered once the run (or undo) had
/// ended: it came during the last chunk, which ended the run, or during
/// one that failed or was cancelled.
fn ended_first(v: &Value) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let kind = if v["kind"] == "undo" { "undo" } else { "run" };
    let status = v["status"].as_str().unwrap_or("?");
    let (steps_done, steps_total) = (n("steps_done"), n("steps_total"));
    match status {
        "ok" => format!(
            "the {kind} finished (ok, {steps_done}/{steps_total} steps) before a chunk boundary it could pause at: the pause came during its last chunk"
        ),
        _ => format!(
            "the {kind} ended ({status}, {steps_done}/{steps_total} steps) before the pause took hold"
        ),
    }
}

/// "pausing at the next chunk boundary, step 1/3, 4,000/10,000 rows; pace:
/// chunks ~250 ms, nice ratio 0, sleep 100 ms, batch size adaptive". The
/// status is the moment the command was taken, so the action says what
/// comes next.
fn one_line(action: &CtlAction, v: &Value) -> String {
    let throttled = v["throttled"].as_str();
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let last_step = v["step"]
        .as_u64()
        .is_some_and(|i| i + 1 >= n("steps_total"));
    let state = match action {
        // The server waits for a pause in the last step to take hold.
        CtlAction::Pause if v["state"] == "finished" => return ended_first(v),
        CtlAction::Pause if throttled == Some("paused") => "paused".to_owned(),
        // The wait for it to take hold ended with another command's resume.
        CtlAction::Pause if v["paused"] == false => {
            "resumed by another command before the pause took hold".to_owned()
        }
        CtlAction::Pause if last_step => {
            "pausing at the next chunk boundary, unless the run finishes first (this is its last step)".to_owned()
        }
        CtlAction::Pause => "pausing at the next chunk boundary".to_owned(),
        CtlAction::Resume => "resuming".to_owned(),
        // /status does not say whether the run is one transaction.
        CtlAction::Cancel => "cancelling (what the run has not committed rolls back: the current chunk, or all of an --atomic or --dry-run run; the run exits 130)".to_owned(),
        CtlAction::Set(_) if v["paused"] == true => "new pace set (still paused)".to_owned(),
        CtlAction::Set(_) => match throttled {
            Some(why) => format!("new pace set (throttled: {why})"),
            None => "new pace set, from the next chunk".to_owned(),
        },
    };
    // Before its first step a run has no rows to count ("0/0 rows").
    let step = v["step"].as_u64().map_or_else(
        || ", before the first step".to_owned(),
        |i| {
            format!(
                ", step {}/{}, {}/{} rows",
                i + 1,
                n("steps_total"),
                thousands(n("done")),
                thousands(n("total"))
            )
        },
    );
    format!("{state}{step}; pace: {}", pace(action, v))
}

/// "chunks ~250 ms, nice ratio 0, sleep 100 ms, batch size adaptive"; an
/// undo's chunks are the run's, so it has no chunk time or batch size.
fn pace(action: &CtlAction, v: &Value) -> String {
    let s = &v["settings"];
    // As the run's own terminal says it: 0 and 0.5, not JSON's 0.0.
    let ratio = s["nice_ratio"]
        .as_f64()
        .map_or_else(|| s["nice_ratio"].to_string(), |r| r.to_string());
    let sleep = &s["sleep_ms"];
    if v["kind"] == "undo" {
        let chunks = crate::events::RECORDED_CHUNKS;
        return format!("{chunks}, nice ratio {ratio}, sleep {sleep} ms");
    }
    let batch = s["batch_size"]
        .as_u64()
        .map_or("adaptive".into(), thousands);
    // A chunk time is only a target for adapting chunks; say so when a
    // fixed batch size keeps it from doing anything.
    let idle = match action {
        CtlAction::Set(set) if set.chunk_time.is_some() && s["batch_size"].is_u64() => {
            "\nbatchsse: note: the batch size is fixed, so --chunk-time has no effect until `set --batch-size auto`"
        }
        _ => "",
    };
    format!(
        "chunks ~{} ms, nice ratio {ratio}, sleep {sleep} ms, batch size {batch}{idle}",
        s["chunk_time_ms"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::SetArgs;

    fn set(chunk_time: Option<u64>) -> CtlAction {
        CtlAction::Set(SetArgs {
            chunk_time,
            nice_ratio: None,
            sleep: None,
            batch_size: None,
        })
    }

    fn status(batch_size: Value) -> Value {
        serde_json::json!({
            "step": 0, "steps_total": 1, "done": 1000, "total": 5000,
            "settings": {"chunk_time_ms": 50, "nice_ratio": 1.0, "sleep_ms": 0, "batch_size": batch_size},
        })
    }

    #[test]
    fn a_chunk_time_that_a_fixed_batch_size_overrides_is_pointed_out() {
        let fixed = one_line(&set(Some(50)), &status(500.into()));
        assert!(fixed.contains("batch size 500"), "{fixed}");
        assert!(fixed.contains("--chunk-time has no effect"), "{fixed}");
        for (action, batch) in [
            (set(Some(50)), Value::Null),
            (set(None), 500.into()),
            (CtlAction::Pause, 500.into()),
        ] {
            let line = one_line(&action, &status(batch));
            assert!(!line.contains("no effect"), "{line}");
        }
    }

    #[test]
    fn a_run_before_its_first_step_is_said_so_not_zero_of_zero_rows() {
        let mut v = status(Value::Null);
        assert!(
            one_line(&CtlAction::Pause, &v).contains(", step 1/1, 1,000/5,000 rows; pace:"),
            "{v}"
        );
        v["step"] = Value::Null;
        let line = one_line(&CtlAction::Pause, &v);
        assert!(
            line.starts_with("pausing at the next chunk boundary, before the first step; pace:"),
            "{line}"
        );
    }

    #[test]
    fn a_pause_in_the_last_step_says_the_run_may_finish_first_or_did() {
        let mut v = status(Value::Null);
        v["steps_total"] = 2.into();
        let line = one_line(&CtlAction::Pause, &v);
        assert!(
            line.starts_with("pausing at the next chunk boundary, step"),
            "{line}"
        );
        v["step"] = 1.into();
        let line = one_line(&CtlAction::Pause, &v);
        assert!(line.contains("unless the run finishes first"), "{line}");
        v["throttled"] = "paused".into();
        assert!(one_line(&CtlAction::Pause, &v).starts_with("paused, step 2/2"));
        let finished = serde_json::json!({
            "state": "finished", "status": "ok", "step": null,
            "steps_done": 2, "steps_total": 2, "paused": false,
        });
        let line = one_line(&CtlAction::Pause, &finished);
        assert_eq!(
            line,
            "the run finished (ok, 2/2 steps) before a chunk boundary it could pause at: the pause came during its last chunk"
        );
        // Ended otherwise, it did not "finish" before a boundary; an undo is
        // called one.
        let mut failed = finished.clone();
        failed["status"] = "failed".into();
        failed["steps_done"] = 1.into();
        assert_eq!(
            one_line(&CtlAction::Pause, &failed),
            "the run ended (failed, 1/2 steps) before the pause took hold"
        );
        failed["kind"] = "undo".into();
        assert!(one_line(&CtlAction::Pause, &failed).starts_with("the undo ended (failed"));
    }
}
