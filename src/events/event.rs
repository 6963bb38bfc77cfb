//! The typed events a run emits, and their JSON payloads: the one place the
//! event protocol's names and fields are spelled out.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepInfo {
    pub index: usize,
    pub name: String,
    pub kind: StepKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Sql,
    Chunked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Running,
    Done,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// Where a run is, as `/status` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Before the first step (also while waiting for clients).
    #[default]
    Waiting,
    Running,
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Ok,
    Failed,
    Cancelled,
}

impl RunStatus {
    /// The process exit status that goes with this outcome.
    pub fn exit_code(self) -> u8 {
        match self {
            RunStatus::Ok => crate::error::exit::OK,
            RunStatus::Failed => crate::error::exit::FAILED,
            RunStatus::Cancelled => crate::error::exit::INTERRUPTED,
        }
    }
}

/// The version of the event protocol a `start` event announces; raised
/// only when a change could break a client (a field renamed, removed or
/// given another meaning), never for an added field.
pub const PROTOCOL: u32 = 1;

/// `start`: once, first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Start {
    /// The event protocol's version, 1: raised only for a change that could
    /// break a client. Servers older than the field send none (read as 0).
    #[serde(default)]
    #[schemars(extend("const" = 1))]
    pub protocol: u32,
    /// The process id of the run (or undo) that logged this `start`: on a
    /// relay, the original run's, not the relay's. `watch --pid` tells by
    /// it a server that is another run's (one still lingering on the
    /// port). Servers older than the field send none (read as 0).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub pid: u32,
    pub run_id: String,
    pub plan: String,
    pub db: String,
    pub steps: Vec<StepInfo>,
    pub dry_run: bool,
    pub resumed: bool,
    /// The pace the run starts with.
    #[serde(default)]
    pub settings: Settings,
    /// `undo` for `batchsse undo`, which takes an earlier run back.
    #[serde(default, skip_serializing_if = "RunKind::is_run")]
    pub kind: RunKind,
    /// How this run can be taken back, or what it takes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<UndoInfo>,
}

/// What a run does: apply a plan, or take an earlier run back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    #[default]
    Run,
    Undo,
}

impl RunKind {
    pub fn is_run(&self) -> bool {
        *self == RunKind::Run
    }
}

/// A recorded run (`run --undo`): the steps it leaves unrecorded. An undo:
/// the runs it takes back, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UndoInfo {
    /// Steps (0-based) with `"undo": false`: an undo stops at the last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unrecorded_steps: Vec<usize>,
    /// For an undo: the run ids it takes back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reverts: Vec<String>,
}

/// How an undo's chunks are told where a run's pace names a chunk time
/// and a batch size: it takes back the run's chunks as they were recorded.
pub const RECORDED_CHUNKS: &str = "the run's chunks, as recorded";

/// The pace in force: what the governor gives each chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Settings {
    /// Target time one chunk holds the write lock.
    pub chunk_time_ms: u64,
    /// After each chunk, yield this many times its time.
    pub nice_ratio: f64,
    /// Fixed pause between chunks.
    pub sleep_ms: u64,
    /// Fixed chunk size, or null when sizes adapt to `chunk_time_ms`.
    pub batch_size: Option<u64>,
}

impl Settings {
    /// A nice ratio as kept and shown: to a millionth (1e-320 would print
    /// 330 digits, and -0.0 as "-0"), never negative zero.
    pub fn tidy_ratio(r: f64) -> f64 {
        (r * 1e6).round() / 1e6 + 0.0
    }
}

/// Why a run is waiting between chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ThrottleReason {
    /// Paused by a live command.
    Paused,
    /// `--pause-file` exists.
    PauseFile,
    /// `--throttle-query` answered truthy.
    ThrottleQuery,
    /// The WAL is over `--max-wal-mb` and cannot be checkpointed yet.
    Wal,
}

impl ThrottleReason {
    /// Paused by a person (a live command, the pause file), for as long as
    /// they like: the rate and time left from before no longer hold.
    pub fn pauses(self) -> bool {
        matches!(self, ThrottleReason::Paused | ThrottleReason::PauseFile)
    }
}

/// What a live command asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ControlAction {
    Pause,
    Resume,
    Cancel,
    Set,
}

/// Where a live command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ControlBy {
    /// A plain HTTP client (curl, a script).
    Http,
    /// `batchsse ctl`.
    Ctl,
    /// The dashboard's buttons.
    Dashboard,
}

/// A live command was accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Control {
    pub action: ControlAction,
    pub by: ControlBy,
    /// The peer's address.
    pub remote: String,
    /// The pace after the change.
    pub settings: Settings,
}

/// The run starts (`active`) or stops waiting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Throttle {
    pub active: bool,
    pub reason: ThrottleReason,
    /// What a person should know, e.g. `wal 300.0 MiB > 256 MiB`.
    pub detail: String,
    pub step: Option<usize>,
}

/// `step`: a step changes state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepEvent {
    pub index: usize,
    pub name: String,
    pub state: StepState,
    pub done: u64,
    pub total: u64,
    pub changed: u64,
    pub elapsed_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// On a `failed` step: a cancel stopped it (Ctrl-C, SIGTERM, `ctl
    /// cancel`), not an error of its own.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub cancelled: bool,
}

#[cfg(test)]
impl Finished {
    /// A plain successful end, for tests that only need the stream to end.
    pub fn ok() -> Event {
        Event::Finished(Finished {
            status: RunStatus::Ok,
            steps_done: 1,
            steps_total: 1,
            rows_changed: 0,
            elapsed_ms: 0,
            dry_run: false,
            error: None,
            undo_bytes: None,
            undo_command: None,
            conflicts: None,
            conflicts_earlier: None,
            conflicts_as_left: None,
            carried_older: None,
        })
    }
}

/// After a chunk: how far the step is. A heartbeat (a plain step still
/// running) has only `elapsed_ms`: its counts are null, since a single
/// statement cannot say how far it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Progress {
    pub step: usize,
    pub name: String,
    pub done: Option<u64>,
    pub total: Option<u64>,
    pub changed: u64,
    pub percent: Option<f64>,
    pub rate: Option<f64>,
    pub eta_ms: Option<u64>,
    pub elapsed_ms: u64,
}

impl Progress {
    /// A plain step's "still running" after `elapsed_ms`.
    pub fn heartbeat(step: usize, name: String, elapsed_ms: u64) -> Progress {
        Progress {
            step,
            name,
            done: None,
            total: None,
            changed: 0,
            percent: None,
            rate: None,
            eta_ms: None,
            elapsed_ms,
        }
    }

    /// True for a heartbeat rather than a chunk's report.
    pub fn is_heartbeat(&self) -> bool {
        self.done.is_none()
    }
}

/// `message`: a log line (sent without an SSE `event:` line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    pub target: Value,
    pub status: Level,
    pub message: String,
}

impl Message {
    /// The governor's word on a change of pace: information whose target
    /// carries the settings now in force. The next one says all it said,
    /// so the log keeps only the latest (warnings are never such).
    pub fn is_pace(&self) -> bool {
        self.status == Level::Info && self.target.get("settings").is_some_and(Value::is_object)
    }
}

/// `finished`: once, last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Finished {
    pub status: RunStatus,
    pub steps_done: usize,
    pub steps_total: usize,
    pub rows_changed: u64,
    pub elapsed_ms: u64,
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// With `run --undo`: the bytes of the undo record this run wrote.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub undo_bytes: Option<u64>,
    /// With `run --undo`, when what it committed can be taken back: the
    /// command that does it (`batchsse undo --db … --run …`). Absent when
    /// nothing was recorded, when the record is incomplete, and when an
    /// unrecorded last step (`"undo": false`) leaves nothing an undo can
    /// reach.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub undo_command: Option<String>,
    /// For an undo: rows it kept as conflicts (the application changed
    /// them since the run, or another row holds a value they would get back).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub conflicts: Option<u64>,
    /// For an undo that goes on from an earlier try of it (interrupted, or
    /// stopped), or that follows an undo of a newer run of the same plan:
    /// the rows those kept that are still kept at its end (it holds them
    /// too, but under `overwrite`, which puts them back), not counted in
    /// `conflicts`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub conflicts_earlier: Option<u64>,
    /// For an undo: of the rows kept (`conflicts` and `conflicts_earlier`),
    /// those kept as the run left them, since another row holds a value
    /// they would get back; they still carry the run's change.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub conflicts_as_left: Option<u64>,
    /// For an undo that took back a run which changed rows after an older
    /// run, whose undo had kept them as conflicts: those rows, which got
    /// back what the older run wrote (or, deleted by it, were left
    /// deleted) and so still carry its change, with
    /// no record left to take it back (the undo's warnings name the older
    /// runs, and how to list the rows). For a dry run, those it would
    /// leave so. Given at the undo's end, counting earlier tries of it
    /// too; when it stops part-way, those of the parts it committed and
    /// of the tries before. Absent when there are none.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub carried_older: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start(Start),
    Step(StepEvent),
    Progress(Progress),
    Message(Message),
    Throttle(Throttle),
    Control(Control),
    Finished(Finished),
}

impl Event {
    /// The name used in `--progress json` lines and, except for `message`,
    /// on the SSE `event:` line.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Start(_) => "start",
            Event::Step(_) => "step",
            Event::Progress(_) => "progress",
            Event::Message(_) => "message",
            Event::Throttle(_) => "throttle",
            Event::Control(_) => "control",
            Event::Finished(_) => "finished",
        }
    }

    /// The SSE `event:` field; `message` has none, so `onmessage` sees it.
    pub fn sse_name(&self) -> Option<&'static str> {
        match self {
            Event::Message(_) => None,
            other => Some(other.name()),
        }
    }

    /// The payload as a JSON object with `ts_ms` added.
    pub fn to_json(&self, ts_ms: u64) -> Value {
        let mut v = match self {
            Event::Start(e) => serde_json::to_value(e),
            Event::Step(e) => serde_json::to_value(e),
            Event::Progress(e) => serde_json::to_value(e),
            Event::Message(e) => serde_json::to_value(e),
            Event::Throttle(e) => serde_json::to_value(e),
            Event::Control(e) => serde_json::to_value(e),
            Event::Finished(e) => serde_json::to_value(e),
        }
        .unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            map.insert("ts_ms".into(), ts_ms.into());
        }
        v
    }

    /// Rebuilds an event from its name and payload (the reverse of
    /// `name` + `to_json`), as `watch` receives them.
    pub fn from_json(name: &str, data: &str) -> Result<Event, serde_json::Error> {
        Ok(match name {
            "start" => Event::Start(serde_json::from_str(data)?),
            "step" => Event::Step(serde_json::from_str(data)?),
            "progress" => Event::Progress(serde_json::from_str(data)?),
            "throttle" => Event::Throttle(serde_json::from_str(data)?),
            "control" => Event::Control(serde_json::from_str(data)?),
            "finished" => Event::Finished(serde_json::from_str(data)?),
            _ => Event::Message(serde_json::from_str(data)?),
        })
    }

    pub fn message(target: Value, status: Level, message: impl Into<String>) -> Event {
        Event::Message(Message {
            target,
            status,
            message: message.into(),
        })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_from_before_the_protocol_and_pid_fields_reads_both_as_0() {
        let old = r#"{"run_id":"r","plan":"p","db":"d.sqlite","steps":[],"dry_run":false,"resumed":false,"ts_ms":1}"#;
        match Event::from_json("start", old).expect("an old start reads") {
            Event::Start(s) => assert_eq!((s.protocol, s.pid, s.plan.as_str()), (0, 0, "p")),
            other => panic!("{other:?}"),
        }
        let new = Event::Start(Start {
            protocol: PROTOCOL,
            pid: 7,
            run_id: "r".into(),
            plan: "p".into(),
            db: "d".into(),
            steps: vec![],
            dry_run: false,
            resumed: false,
            settings: Settings::default(),
            kind: RunKind::Run,
            undo: None,
        });
        assert_eq!(new.to_json(5)["protocol"], 1);
        assert_eq!(new.to_json(5)["pid"], 7);
    }
}
