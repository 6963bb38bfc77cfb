//! The run's append-only event log: the one broadcast. Each event gets the
//! next id and is encoded to SSE bytes once; every reader (HTTP client,
//! terminal) is a cursor into it, woken through a `watch` channel. Long runs
//! are bounded, in events and in bytes, by compacting superseded
//! `progress`, `control`, `throttle` and pace `message` events (see `Limits`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::sync::watch;

use crate::events::chunk_times::ChunkTimes;
use crate::events::sse;
use crate::events::{
    ControlAction, Event, RunKind, RunState, RunStatus, Settings, StepState, ThrottleReason, now_ms,
};

/// One logged event, shared by every reader.
#[derive(Debug)]
pub struct Entry {
    pub id: u64,
    pub event: Event,
    /// The whole SSE frame.
    pub frame: Bytes,
    payload: Payload,
}

/// Where an entry's payload is. A run's own events are one line of JSON,
/// which the frame holds whole as its one `data:` line, so the log keeps
/// them once (a plan of 100,000 statements logs 200,000 `step` events,
/// which the log never drops).
#[derive(Debug)]
enum Payload {
    /// The frame's bytes from here to its closing blank line.
    InFrame(usize),
    /// A payload of several lines (a relay's copy of something published),
    /// which the frame splits into `data:` lines.
    Own(Box<str>),
}

impl Entry {
    fn new(id: u64, event: Event, data: String, frame: Bytes) -> Entry {
        // The frame ends with the payload's one line, then "\n\n".
        let start = frame.len().saturating_sub(data.len() + 2);
        let payload = if !data.contains(['\r', '\n'])
            && frame.get(start..frame.len() - 2) == Some(data.as_bytes())
        {
            Payload::InFrame(start)
        } else {
            Payload::Own(data.into_boxed_str())
        };
        Entry {
            id,
            event,
            frame,
            payload,
        }
    }

    /// The JSON payload (with `ts_ms`), exactly as sent in SSE `data`.
    pub fn data(&self) -> &str {
        match &self.payload {
            Payload::InFrame(start) => {
                let end = self.frame.len().saturating_sub(2);
                std::str::from_utf8(self.frame.get(*start..end).unwrap_or_default())
                    .unwrap_or_default()
            }
            Payload::Own(data) => data,
        }
    }

    /// About what the entry holds, for the log's byte bound: the frame,
    /// and as much again as the payload for the parsed event, whose
    /// strings are the payload's (a step's name is in both); a payload
    /// kept apart from the frame counts once more. No walk over the bytes.
    fn bytes(&self) -> usize {
        let payload = match &self.payload {
            Payload::InFrame(start) => self.frame.len().saturating_sub(start + 2),
            Payload::Own(data) => 2 * data.len(),
        };
        self.frame.len() + payload
    }
}

/// What `/status` reports, kept current as events are appended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// The `start` event's `run_id` (`batchsse relay --run` takes it).
    pub run_id: Option<String>,
    /// `run`, or `undo` for `batchsse undo` (whose pace has no chunk time
    /// or batch size: it takes back the run's chunks as recorded).
    pub kind: RunKind,
    pub state: RunState,
    pub status: Option<RunStatus>,
    pub step: Option<usize>,
    pub steps_done: usize,
    pub steps_total: usize,
    pub done: u64,
    pub total: u64,
    pub changed: u64,
    pub rows_changed: u64,
    /// With `run --undo`, once finished: the undo record's bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undo_bytes: Option<u64>,
    /// With `run --undo`, once finished: the command that takes it back,
    /// when one can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undo_command: Option<String>,
    /// For an undo, once finished: the rows it kept as conflicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<u64>,
    /// For an undo, once finished: the rows kept before this try of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflicts_earlier: Option<u64>,
    /// For an undo, once finished: of the rows kept, those kept as the run
    /// left them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflicts_as_left: Option<u64>,
    /// For an undo, once finished: the rows left carrying an older run's
    /// change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carried_older: Option<u64>,
    pub last_event_id: u64,
    /// Paused by a live command.
    pub paused: bool,
    /// Why the run waits between chunks now, if it does.
    pub throttled: Option<ThrottleReason>,
    /// The pace in force (from `start`, then pacing changes).
    pub settings: Settings,
    /// The current step's rows per second and time left, as its latest
    /// `progress` said.
    pub rate: Option<f64>,
    pub eta_ms: Option<u64>,
    /// The whole run's time left, where it can be told: while the last
    /// step that has work left runs.
    pub run_eta_ms: Option<u64>,
    /// Steps (by index) that ended, so the run's ETA knows what is left.
    #[serde(skip)]
    pub ended: Vec<bool>,
    /// For `/metrics`: the run, once `start` is logged.
    #[serde(skip)]
    pub run: Option<RunIdentity>,
    /// For `/metrics`: every chunk's time, from the `progress` events.
    #[serde(skip)]
    pub chunks: ChunkTimes,
}

/// Which run this is, from its `start` event.
#[derive(Debug, Clone, PartialEq)]
pub struct RunIdentity {
    pub run_id: String,
    pub plan: String,
    pub db: String,
}

/// How much history the log keeps. Once it holds `compact_at` entries, or
/// its entries hold `compact_bytes` (see `Entry::bytes`), the entries
/// older than the newest `keep_recent`, and than the newest `keep_bytes`,
/// keep only the latest of each kind a later one supersedes (see
/// `Superseded`): a step's `progress`, a `control` `set`, a `pause` or
/// `resume`, a reason's `throttle`, the governor's pace `message`.
/// `start`, `step`, other `message`s, `finished` and `cancel` are never
/// dropped. The bytes bound what the count cannot: events of any size (a
/// step's name is user text, repeated in each of its `progress` events),
/// so the defaults hold the log near 32 MiB however long the run and
/// however large its events.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub compact_at: usize,
    pub keep_recent: usize,
    pub compact_bytes: usize,
    pub keep_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

impl Limits {
    const DEFAULT: Limits = Limits {
        compact_at: 32_768,
        keep_recent: 16_384,
        compact_bytes: 32 << 20,
        keep_bytes: 16 << 20,
    };

    /// The defaults, or `BATCHSSE_LOG_COMPACT_AT=N` (keeping the newest N/2)
    /// and `BATCHSSE_LOG_COMPACT_BYTES=N` (keeping the newest N/2 bytes), so
    /// tests and benchmarks can watch compaction on a short run.
    pub fn from_env() -> Limits {
        let mut limits = Limits::default();
        if let Some(n) = env_at_least_2("BATCHSSE_LOG_COMPACT_AT") {
            (limits.compact_at, limits.keep_recent) = (n, n / 2);
        }
        if let Some(n) = env_at_least_2("BATCHSSE_LOG_COMPACT_BYTES") {
            (limits.compact_bytes, limits.keep_bytes) = (n, n / 2);
        }
        limits
    }
}

/// A testing aid's number; values below 2 are ignored, as nothing could
/// be kept below them.
fn env_at_least_2(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n >= 2)
}

/// The pending bytes for one reader: a single write.
#[derive(Debug)]
pub struct Batch {
    pub bytes: Bytes,
    /// The id of the last event in `bytes`: the reader's new cursor.
    pub last: u64,
    /// `bytes` ends with `finished`: nothing follows.
    pub ends: bool,
}

/// The pending frames for one reader, shared with the log: a vectored write.
#[derive(Debug, Clone)]
pub struct Frames {
    pub frames: Arc<[Bytes]>,
    /// The id of the last frame: the reader's new cursor.
    pub last: u64,
    /// The last frame is `finished`: nothing follows.
    pub ends: bool,
}

#[derive(Debug, Default)]
struct Inner {
    entries: Vec<Arc<Entry>>,
    /// Entries dropped by compaction so far.
    compacted: u64,
    /// The ids compaction dropped and nobody has taken yet, once something
    /// mirrors the log (see [`EventLog::mirror_after`]).
    dropped: Option<Dropped>,
    /// Compact when `entries` reaches this length.
    next_compaction: usize,
    /// What the entries hold, by `Entry::bytes`, kept as they come and go.
    bytes: usize,
    /// Compact when `bytes` reaches this.
    next_compaction_bytes: usize,
    finished_id: Option<u64>,
    /// The `start` event's `run_id`, once it is logged.
    run_id: Option<String>,
    snapshot: Snapshot,
    /// Rows changed by steps that have ended, so `rows_changed` can add
    /// the running step's count to it.
    changed_before: u64,
}

/// What compaction dropped, for the log's mirror: only ids up to the last
/// the mirror has read (see [`EventLog::mirror_after`]), since it never
/// holds the others; so a mirror that reads no more (its Redis refused,
/// or is away for a day) leaves the log bounded.
#[derive(Debug, Default)]
struct Dropped {
    ids: Vec<u64>,
    read_to: u64,
}

#[derive(Debug)]
pub struct EventLog {
    inner: RwLock<Inner>,
    last_id: watch::Sender<u64>,
    limits: Limits,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

impl EventLog {
    pub fn new() -> Self {
        Self::with_limits(Limits::from_env())
    }

    pub fn with_limits(limits: Limits) -> Self {
        let limits = Limits {
            keep_recent: limits.keep_recent.min(limits.compact_at),
            keep_bytes: limits.keep_bytes.min(limits.compact_bytes),
            ..limits
        };
        let inner = Inner {
            snapshot: Snapshot {
                state: RunState::Waiting,
                ..Snapshot::default()
            },
            next_compaction: limits.compact_at,
            next_compaction_bytes: limits.compact_bytes,
            ..Inner::default()
        };
        EventLog {
            inner: RwLock::new(inner),
            last_id: watch::channel(0).0,
            limits,
        }
    }

    /// What the run is, for `/status` before its `start` is logged (a
    /// command can come first: an undo's pace has no chunk time).
    pub fn set_kind(&self, kind: RunKind) {
        self.write().snapshot.kind = kind;
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an event, stamping `ts_ms` now; returns its id. Events after
    /// `finished` are dropped (the stream has ended for everyone).
    pub fn push(&self, event: Event) -> Option<u64> {
        self.push_at(event, now_ms())
    }

    pub fn push_at(&self, event: Event, ts_ms: u64) -> Option<u64> {
        let data = event.to_json(ts_ms).to_string();
        let inner = self.write();
        let id = inner.snapshot.last_event_id + 1;
        self.append(inner, id, event, data).then_some(id)
    }

    /// Appends an event that already has its id and payload: a relay's copy
    /// of a published run, whose frame then comes out byte for byte as the
    /// run's own server sent it. Refused (`false`) unless `id` is above
    /// every id logged so far, and after `finished`.
    pub fn push_published(&self, id: u64, event: Event, data: String) -> bool {
        let inner = self.write();
        if id <= inner.snapshot.last_event_id {
            return false;
        }
        self.append(inner, id, event, data)
    }

    fn append(
        &self,
        mut inner: RwLockWriteGuard<'_, Inner>,
        id: u64,
        event: Event,
        data: String,
    ) -> bool {
        if inner.finished_id.is_some() {
            return false;
        }
        // Event names are fixed identifiers, so encoding cannot fail.
        let frame = sse::encode(Some(id), event.sse_name(), &data).unwrap_or_default();
        update_snapshot(&mut inner, &event, id);
        match &event {
            Event::Finished(_) => inner.finished_id = Some(id),
            Event::Start(s) => inner.run_id = Some(s.run_id.clone()),
            _ => {}
        }
        let entry = Entry::new(id, event, data, frame);
        inner.bytes += entry.bytes();
        inner.entries.push(Arc::new(entry));
        if inner.entries.len() >= inner.next_compaction
            || inner.bytes >= inner.next_compaction_bytes
        {
            compact(&mut inner, self.limits);
        }
        drop(inner);
        self.last_id.send_replace(id);
        true
    }

    /// Every entry with an id above `cursor`, oldest first.
    pub fn after(&self, cursor: u64) -> Vec<Arc<Entry>> {
        let inner = self.read();
        let start = inner.entries.partition_point(|e| e.id <= cursor);
        inner.entries[start..].to_vec()
    }

    /// At most `n` of the entries with an id above `cursor`, oldest first.
    pub fn after_at_most(&self, cursor: u64, n: usize) -> Vec<Arc<Entry>> {
        at_most_after(&self.read().entries, cursor, n)
    }

    /// The SSE bytes of the entries above `cursor`, as one buffer ready to
    /// write: as many as fit in `max_bytes` (at least one), so a reader that
    /// is far behind catches up in few writes without one huge copy. A single
    /// pending frame is handed out as the shared `Bytes`, no copy. `None`
    /// when there is nothing new.
    pub fn frames_after(&self, cursor: u64, max_bytes: usize) -> Option<Batch> {
        let f = self.frame_list_after(cursor, max_bytes, usize::MAX)?;
        let bytes = if let [one] = &f.frames[..] {
            one.clone()
        } else {
            let mut buf = BytesMut::with_capacity(f.frames.iter().map(Bytes::len).sum());
            for frame in f.frames.iter() {
                buf.extend_from_slice(frame);
            }
            buf.freeze()
        };
        Some(Batch {
            bytes,
            last: f.last,
            ends: f.ends,
        })
    }

    /// The shared frames of the entries above `cursor`, not copied, for a
    /// vectored write: as many as fit in `max_bytes` and `max_frames` (at
    /// least one). `None` when there is nothing new.
    pub fn frame_list_after(
        &self,
        cursor: u64,
        max_bytes: usize,
        max_frames: usize,
    ) -> Option<Frames> {
        let inner = self.read();
        let start = inner.entries.partition_point(|e| e.id <= cursor);
        let pending = &inner.entries[start..];
        let first = pending.first()?;
        let mut len = first.frame.len();
        let mut n = 1;
        while let Some(e) = pending.get(n) {
            if n >= max_frames || len + e.frame.len() > max_bytes {
                break;
            }
            len += e.frame.len();
            n += 1;
        }
        let last = pending[n - 1].id;
        Some(Frames {
            frames: pending[..n].iter().map(|e| e.frame.clone()).collect(),
            last,
            ends: inner.finished_id == Some(last),
        })
    }

    /// Entries held now (after compaction), and how many were dropped.
    #[cfg(test)]
    pub fn retained(&self) -> (usize, u64) {
        let inner = self.read();
        (inner.entries.len(), inner.compacted)
    }

    /// Wakes when a new event is appended; `borrow()` is the last id.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last_id.subscribe()
    }

    pub fn last_id(&self) -> u64 {
        self.read().snapshot.last_event_id
    }

    /// Waits until the log holds `id` (or has finished), at most `limit`.
    pub async fn wait_for_id(&self, id: u64, limit: std::time::Duration) {
        let mut rx = self.subscribe();
        let reached = rx.wait_for(|last| *last >= id || self.finished_id().is_some());
        let _ = tokio::time::timeout(limit, reached).await;
    }

    /// The run's id from its `start` event, once that is logged.
    pub fn run_id(&self) -> Option<String> {
        self.read().run_id.clone()
    }

    /// The id of the `finished` event, once it is logged.
    pub fn finished_id(&self) -> Option<u64> {
        self.read().finished_id
    }

    pub fn snapshot(&self) -> Snapshot {
        self.read().snapshot.clone()
    }

    /// At most `n` of the entries above `cursor`, for the log's one mirror
    /// (the run's Redis stream): from its first read on, what compaction
    /// drops of the entries it has read is kept for
    /// [`EventLog::take_dropped`] (in the same lock, so none slips by while
    /// the mirror copies them), so the mirror drops them too and stays as
    /// bounded as the log.
    pub fn mirror_after(&self, cursor: u64, n: usize) -> Vec<Arc<Entry>> {
        let mut inner = self.write();
        let read = at_most_after(&inner.entries, cursor, n);
        let d = inner.dropped.get_or_insert_with(Dropped::default);
        if let Some(last) = read.last() {
            d.read_to = d.read_to.max(last.id);
        }
        read
    }

    /// The ids compaction dropped since the last call, in the order it
    /// dropped them (not always oldest first: a compaction can drop an
    /// old `control` an earlier one kept as the latest).
    pub fn take_dropped(&self) -> Vec<u64> {
        self.write()
            .dropped
            .as_mut()
            .map(|d| std::mem::take(&mut d.ids))
            .unwrap_or_default()
    }

    #[cfg(test)]
    /// The run's final outcome, once `finished` is logged.
    pub fn final_status(&self) -> Option<RunStatus> {
        let inner = self.read();
        inner.finished_id.and(inner.snapshot.status)
    }
}

/// At most `n` of `entries` with ids above `cursor`.
fn at_most_after(entries: &[Arc<Entry>], cursor: u64, n: usize) -> Vec<Arc<Entry>> {
    let start = entries.partition_point(|e| e.id <= cursor);
    entries[start..].iter().take(n).cloned().collect()
}

/// Drops the superseded events (see [`Superseded`]) from all but the
/// newest entries (see [`recent_start`]), keeping the latest of each kind.
/// Readers are cursors by id, so one whose next event was dropped simply
/// gets the next retained one: ids stay monotonic and no reader sees an
/// event twice. The latest event that sets each piece of a viewer's state
/// (paused, the active throttle, the pace) is always kept, in order, so a
/// late joiner or a relay replaying the log ends in the run's state.
fn compact(inner: &mut Inner, limits: Limits) {
    let old_end = recent_start(&inner.entries, limits);
    let mut latest: HashMap<Superseded, u64> = HashMap::new();
    for e in inner.entries.iter().rev() {
        if let Some(kind) = superseded(&e.event) {
            latest.entry(kind).or_insert(e.id);
        }
    }
    let before = inner.entries.len();
    let (mut i, mut freed) = (0, 0);
    let mut dropped = inner.dropped.take();
    inner.entries.retain(|e| {
        let keep = i >= old_end
            || superseded(&e.event).is_none_or(|kind| latest.get(&kind) == Some(&e.id));
        if !keep {
            freed += e.bytes();
        }
        if let (false, Some(d)) = (keep, dropped.as_mut())
            && e.id <= d.read_to
        {
            d.ids.push(e.id);
        }
        i += 1;
        keep
    });
    inner.dropped = dropped;
    inner.compacted += (before - inner.entries.len()) as u64;
    inner.bytes -= freed;
    // A log of mostly events kept for good cannot shrink much; wait for as
    // many new entries, and bytes, as a full compaction would have freed,
    // so the cost stays amortised O(1) per push and per byte.
    let room = (limits.compact_at - limits.keep_recent).max(1);
    inner.next_compaction = inner.entries.len().max(limits.compact_at - room) + room;
    let room = (limits.compact_bytes - limits.keep_bytes).max(1);
    inner.next_compaction_bytes = inner.bytes.max(limits.compact_bytes - room) + room;
}

/// Where the newest entries begin that compaction leaves whole: at most
/// `keep_recent` of them, and no more than fit in `keep_bytes`, so that
/// superseded events stay bounded whatever their size.
fn recent_start(entries: &[Arc<Entry>], limits: Limits) -> usize {
    let (mut start, mut bytes) = (entries.len(), 0);
    while start > 0 && entries.len() - start < limits.keep_recent {
        bytes += entries[start - 1].bytes();
        if bytes > limits.keep_bytes {
            break;
        }
        start -= 1;
    }
    start
}

/// Events of which an old part of the log keeps only the latest of each
/// kind, since a later one says all a viewer needs: a step's progress, the
/// pace (`set`), paused or not (`pause` and `resume`), each reason's
/// waiting or not (`throttle`), and the pace the governor took (its pace
/// `message`, which carries the settings). A run that goes on for days, a
/// throttle query that flaps, or an application that writes every few
/// seconds then holds a bounded log.
#[derive(PartialEq, Eq, Hash)]
enum Superseded {
    Progress(usize),
    Pace,
    Paused,
    Waiting(ThrottleReason),
    PaceSaid,
}

fn superseded(event: &Event) -> Option<Superseded> {
    match event {
        Event::Progress(p) => Some(Superseded::Progress(p.step)),
        Event::Message(m) if m.is_pace() => Some(Superseded::PaceSaid),
        Event::Control(c) => match c.action {
            ControlAction::Set => Some(Superseded::Pace),
            ControlAction::Pause | ControlAction::Resume => Some(Superseded::Paused),
            ControlAction::Cancel => None,
        },
        Event::Throttle(t) => Some(Superseded::Waiting(t.reason)),
        _ => None,
    }
}

fn update_snapshot(inner: &mut Inner, event: &Event, id: u64) {
    let changed_before = inner.changed_before;
    let s = &mut inner.snapshot;
    s.last_event_id = id;
    match event {
        Event::Start(e) => {
            s.run_id = Some(e.run_id.clone());
            s.kind = e.kind;
            s.steps_total = e.steps.len();
            s.settings = e.settings;
            s.ended = vec![false; e.steps.len()];
            s.run = Some(RunIdentity {
                run_id: e.run_id.clone(),
                plan: e.plan.clone(),
                db: e.db.clone(),
            });
        }
        Event::Step(e) => {
            s.step = Some(e.index);
            (s.done, s.total, s.changed) = (e.done, e.total, e.changed);
            (s.rate, s.eta_ms, s.run_eta_ms) = (None, None, None);
            if e.state != StepState::Running
                && let Some(ended) = s.ended.get_mut(e.index)
            {
                *ended = true;
            }
            match e.state {
                StepState::Running => s.state = RunState::Running,
                StepState::Done | StepState::Skipped => {
                    s.steps_done = s.steps_done.saturating_add(1)
                }
                StepState::Failed => {}
            }
            s.rows_changed = changed_before.saturating_add(e.changed);
            if e.state != StepState::Running {
                inner.changed_before = inner.changed_before.saturating_add(e.changed);
            }
        }
        // A heartbeat says only that the step still runs.
        Event::Progress(e) if e.is_heartbeat() => {}
        Event::Progress(e) => {
            s.chunks.observe(e);
            s.done = e.done.unwrap_or(s.done);
            s.total = e.total.unwrap_or(s.total);
            s.changed = e.changed;
            s.rows_changed = changed_before.saturating_add(e.changed);
            (s.rate, s.eta_ms) = (e.rate, e.eta_ms);
            let last_with_work = s
                .ended
                .iter()
                .skip(e.step.saturating_add(1))
                .all(|ended| *ended);
            s.run_eta_ms = e.eta_ms.filter(|_| last_with_work);
        }
        Event::Message(m) => {
            // The governor's pacing changes carry the new settings.
            if m.is_pace()
                && let Some(v) = m.target.get("settings")
                && let Ok(settings) = serde_json::from_value(v.clone())
            {
                s.settings = settings;
            }
        }
        Event::Control(c) => {
            s.settings = c.settings;
            match c.action {
                ControlAction::Pause => s.paused = true,
                ControlAction::Resume => s.paused = false,
                ControlAction::Cancel | ControlAction::Set => {}
            }
        }
        Event::Throttle(t) => {
            s.throttled = t.active.then_some(t.reason);
            // A paused run's last rate and time left no longer hold; the
            // first chunk after it gives them again.
            if t.active && t.reason.pauses() {
                (s.rate, s.eta_ms, s.run_eta_ms) = (None, None, None);
            }
        }
        Event::Finished(e) => {
            s.state = RunState::Finished;
            s.status = Some(e.status);
            s.steps_done = e.steps_done;
            s.rows_changed = e.rows_changed;
            (s.undo_bytes, s.conflicts) = (e.undo_bytes, e.conflicts);
            s.undo_command.clone_from(&e.undo_command);
            (s.conflicts_earlier, s.conflicts_as_left) = (e.conflicts_earlier, e.conflicts_as_left);
            s.carried_older = e.carried_older;
            s.step = None;
            (s.rate, s.eta_ms, s.run_eta_ms) = (None, None, None);
            (s.paused, s.throttled) = (false, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Finished, Level};
    use serde_json::json;

    fn msg(n: usize) -> Event {
        Event::message(json!({}), Level::Info, format!("m{n}"))
    }

    fn finished() -> Event {
        Finished::ok()
    }

    #[test]
    fn an_undo_s_status_says_undo_before_its_start() {
        let log = EventLog::new();
        let kind = |log: &EventLog| serde_json::to_value(log.snapshot()).unwrap()["kind"].clone();
        assert_eq!(kind(&log), "run");
        log.set_kind(RunKind::Undo);
        assert_eq!(kind(&log), "undo");
    }

    #[test]
    fn ids_start_at_one_and_rise_by_one() {
        let log = EventLog::new();
        for n in 0..5 {
            assert_eq!(log.push(msg(n)), Some(n as u64 + 1));
        }
        let ids: Vec<u64> = log.after(0).iter().map(|e| e.id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        assert_eq!(log.after(3).len(), 2);
        assert_eq!(log.retained(), (5, 0));
        assert!(log.after(5).is_empty());
    }

    #[test]
    fn nothing_is_appended_after_finished() {
        let log = EventLog::new();
        log.push(msg(0));
        assert_eq!(log.push(finished()), Some(2));
        assert_eq!(log.push(msg(1)), None);
        assert_eq!(log.finished_id(), Some(2));
        assert_eq!(log.final_status(), Some(RunStatus::Ok));
    }

    #[test]
    fn frames_after_concatenates_exactly_the_pending_frames() {
        let log = EventLog::new();
        for n in 0..3 {
            log.push(msg(n));
        }
        log.push(finished());
        let all: Vec<u8> = log.after(0).iter().flat_map(|e| e.frame.to_vec()).collect();
        let b = log.frames_after(0, usize::MAX).unwrap();
        assert_eq!((&b.bytes[..], b.last, b.ends), (&all[..], 4, true));
        let one = log.frames_after(2, usize::MAX).unwrap();
        assert_eq!((one.last, one.ends), (4, true));
        assert_eq!(
            one.bytes.len(),
            log.after(2).iter().map(|e| e.frame.len()).sum::<usize>()
        );
        assert!(log.frames_after(4, usize::MAX).is_none());
    }

    #[test]
    fn a_batch_stops_at_the_byte_limit_but_always_holds_one_frame() {
        let log = EventLog::new();
        for n in 0..10 {
            log.push(msg(n));
        }
        let len = log.after(0)[0].frame.len();
        let b = log.frames_after(0, len * 3).unwrap();
        assert_eq!((b.last, b.ends, b.bytes.len()), (3, false, len * 3));
        let tiny = log.frames_after(3, 1).unwrap();
        assert_eq!((tiny.last, tiny.bytes.len()), (4, len));
        // One pending frame is the shared buffer itself, not a copy.
        let shared = log.frames_after(9, usize::MAX).unwrap();
        assert_eq!(shared.bytes.as_ptr(), log.after(9)[0].frame.as_ptr());
    }

    #[test]
    fn status_follows_the_pace_the_waits_and_the_time_left() {
        use crate::events::{Settings, Start, StepInfo, StepKind, Throttle, ThrottleReason};
        let log = EventLog::new();
        let pace = |chunk_time_ms| Settings {
            chunk_time_ms,
            nice_ratio: 0.0,
            sleep_ms: 0,
            batch_size: None,
        };
        let info = |index| StepInfo {
            index,
            name: format!("s{index}"),
            kind: StepKind::Chunked,
        };
        log.push(Event::Start(Start {
            run_id: "r".into(),
            plan: "p".into(),
            db: "d".into(),
            steps: vec![info(0), info(1)],
            dry_run: false,
            resumed: false,
            protocol: 1,
            pid: 1,
            settings: pace(250),
            kind: Default::default(),
            undo: None,
        }));
        assert_eq!(log.snapshot().settings, pace(250));
        log.push(Event::message(
            json!({"db": "d", "settings": pace(20)}),
            Level::Info,
            "pace",
        ));
        assert_eq!(log.snapshot().settings, pace(20), "a pacing message");
        log.push(step(0, StepState::Running));
        let mut p = progress(0, 10);
        if let Event::Progress(p) = &mut p {
            p.eta_ms = Some(900);
        }
        log.push(p.clone());
        let s = log.snapshot();
        assert_eq!(
            (s.rate, s.eta_ms, s.run_eta_ms),
            (Some(1.0), Some(900), None)
        );
        let wait = |active| {
            Event::Throttle(Throttle {
                active,
                reason: ThrottleReason::PauseFile,
                detail: "x".into(),
                step: Some(1),
            })
        };
        log.push(step(0, StepState::Done));
        log.push(step(1, StepState::Running));
        log.push(wait(true));
        let s = log.snapshot();
        assert_eq!(
            (s.throttled, s.paused),
            (Some(ThrottleReason::PauseFile), false)
        );
        log.push(wait(false));
        assert_eq!(log.snapshot().throttled, None);
        if let Event::Progress(p) = &mut p {
            p.step = 1;
        }
        log.push(p);
        let s = log.snapshot();
        assert_eq!(s.run_eta_ms, Some(900), "the last step with work left");
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["settings"]["chunk_time_ms"], 20);
        assert_eq!(v["throttled"], serde_json::Value::Null);
        assert!(v.get("ended").is_none(), "bookkeeping stays inside");
    }

    fn progress(step: usize, done: u64) -> Event {
        Event::Progress(crate::events::Progress {
            step,
            name: format!("step {step}"),
            done: Some(done),
            total: Some(1_000_000),
            changed: done,
            percent: Some(0.0),
            rate: Some(1.0),
            eta_ms: None,
            elapsed_ms: done,
        })
    }

    fn step(index: usize, state: StepState) -> Event {
        Event::Step(crate::events::StepEvent {
            index,
            name: format!("step {index}"),
            state,
            done: 0,
            total: 0,
            changed: 7,
            elapsed_ms: 0,
            error: None,
            cancelled: false,
        })
    }

    /// Limits small enough to compact a lot in a test.
    const SMALL: Limits = Limits {
        compact_at: 1000,
        keep_recent: 300,
        ..Limits::DEFAULT
    };

    /// A two-step run of 2 × `n` progress events with a message every 97.
    fn long_run(log: &EventLog, n: u64) -> Vec<u64> {
        let mut kept = Vec::new();
        let mut keep = |id: Option<u64>| kept.push(id.unwrap());
        for s in 0..2 {
            keep(log.push(step(s, StepState::Running)));
            for done in 1..=n {
                log.push(progress(s, done));
                if done % 97 == 0 {
                    keep(log.push(msg(done as usize)));
                }
            }
            keep(log.push(step(s, StepState::Done)));
        }
        keep(log.push(finished()));
        kept
    }

    #[test]
    fn a_tracked_log_hands_over_exactly_the_ids_it_dropped() {
        let log = EventLog::with_limits(SMALL);
        let mut taken = log.take_dropped();
        assert!(taken.is_empty(), "nothing dropped yet");
        // The mirror reads every event (before compaction drops it).
        let mut read = 0;
        for n in 1..=6000u64 {
            log.push(progress(0, n));
            read = log.mirror_after(read, 1).last().map_or(read, |e| e.id);
            if n % 700 == 0 {
                taken.extend(log.take_dropped());
            }
        }
        taken.extend(log.take_dropped());
        let held: Vec<u64> = log.after(0).iter().map(|e| e.id).collect();
        let mut all: Vec<u64> = held.iter().chain(&taken).copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (1..=6000).collect::<Vec<_>>(),
            "held and dropped are every id once"
        );
        assert_eq!(taken.len() as u64, log.retained().1);
        assert!(taken.windows(2).all(|w| w[0] < w[1]), "oldest first");
        assert!(log.take_dropped().is_empty(), "taken once");
        // An untracked log keeps no list.
        let quiet = EventLog::with_limits(SMALL);
        for n in 1..=6000 {
            quiet.push(progress(0, n));
        }
        assert!(quiet.retained().1 > 0 && quiet.take_dropped().is_empty());
    }

    #[test]
    fn a_mirror_that_stops_reading_does_not_grow_the_log() {
        // A publisher whose Redis refused it, or is away for a day, reads
        // no further: the log keeps the dropped ids of what it had read,
        // not of every event the run goes on to compact.
        let log = EventLog::with_limits(SMALL);
        for n in 1..=200 {
            log.push(progress(0, n));
        }
        let read = log.mirror_after(0, 150);
        assert_eq!(read.last().map(|e| e.id), Some(150));
        for n in 201..=60_000 {
            log.push(progress(0, n));
        }
        assert!(log.retained().1 > 50_000, "the log compacted");
        assert_eq!(log.take_dropped(), (1..=150).collect::<Vec<_>>());
    }

    #[test]
    fn compaction_keeps_every_non_progress_event_and_monotonic_ids() {
        let limits = SMALL;
        let log = EventLog::with_limits(limits);
        let must_keep = long_run(&log, 5000);
        let last = log.last_id();
        let all = log.after(0);
        let (held, dropped) = log.retained();
        assert_eq!(
            held as u64 + dropped,
            last,
            "every id is held or counted as dropped"
        );
        assert!(
            dropped > 0,
            "10,000 progress events with a limit of 1,000 must compact"
        );
        assert!(held < limits.compact_at + must_keep.len(), "held {held}");
        let ids: Vec<u64> = all.iter().map(|e| e.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids rise");
        for id in &must_keep {
            assert!(ids.contains(id), "non-progress event {id} was dropped");
        }
        // The newest entries are all there, gap-free.
        let tail = &ids[ids.len() - limits.keep_recent..];
        assert!(
            tail.windows(2).all(|w| w[1] == w[0] + 1),
            "recent tail has gaps"
        );
        // Step 0 ended long ago: only its final progress survives.
        let step0: Vec<u64> = all
            .iter()
            .filter_map(|e| match &e.event {
                Event::Progress(p) if p.step == 0 => p.done,
                _ => None,
            })
            .collect();
        assert_eq!(step0, [5000]);
        // The snapshot does not depend on what was dropped.
        let snap = log.snapshot();
        assert_eq!((snap.state, snap.last_event_id), (RunState::Finished, last));
        assert_eq!(log.final_status(), Some(RunStatus::Ok));
    }

    fn control(action: ControlAction, sleep_ms: u64) -> Event {
        Event::Control(crate::events::Control {
            action,
            by: crate::events::ControlBy::Ctl,
            remote: "127.0.0.1:9".into(),
            settings: Settings {
                chunk_time_ms: 250,
                nice_ratio: 0.0,
                sleep_ms,
                batch_size: None,
            },
        })
    }

    fn throttle(active: bool, reason: ThrottleReason) -> Event {
        Event::Throttle(crate::events::Throttle {
            active,
            reason,
            detail: String::new(),
            step: Some(0),
        })
    }

    #[test]
    fn a_flood_of_commands_and_waits_keeps_the_latest_of_each_and_every_cancel() {
        let limits = SMALL;
        let log = EventLog::with_limits(limits);
        log.push(step(0, StepState::Running));
        for n in 0..50_000u64 {
            let action = match n % 3 {
                0 => ControlAction::Pause,
                1 => ControlAction::Resume,
                _ => ControlAction::Set,
            };
            log.push(control(action, n));
            // A throttle query that flaps.
            log.push(throttle(n % 2 == 0, ThrottleReason::ThrottleQuery));
        }
        let wal = log.push(throttle(true, ThrottleReason::Wal)).unwrap();
        let paused = log.push(control(ControlAction::Pause, 7)).unwrap();
        let set = log.push(control(ControlAction::Set, 7)).unwrap();
        let waiting = log
            .push(throttle(false, ThrottleReason::ThrottleQuery))
            .unwrap();
        let cancel = log.push(control(ControlAction::Cancel, 7)).unwrap();
        // Enough later events that the flood is all old at the next compaction.
        for n in 0..2 * limits.compact_at {
            log.push(msg(n));
        }
        let all = log.after(0);
        let ids: Vec<u64> = all.iter().map(|e| e.id).collect();
        for id in [1, wal, paused, set, waiting, cancel] {
            assert!(ids.contains(&id), "event {id} was dropped");
        }
        // The step, the latest of each kind and the cancel, the messages.
        assert_eq!(all.len(), 1 + 5 + 2 * limits.compact_at);
        let (held, dropped) = log.retained();
        assert_eq!(held as u64 + dropped, log.last_id());
        let snap = log.snapshot();
        assert_eq!(snap.settings.sleep_ms, 7);
        assert!(snap.paused, "the last command paused");
    }

    #[test]
    fn resuming_from_a_compacted_id_gives_every_later_retained_event_once() {
        let log = EventLog::with_limits(Limits {
            compact_at: 500,
            keep_recent: 100,
            ..Limits::DEFAULT
        });
        long_run(&log, 2000);
        let retained: Vec<u64> = log.after(0).iter().map(|e| e.id).collect();
        let gone = (1..log.last_id())
            .find(|id| !retained.contains(id))
            .expect("some id was compacted away");
        let mut cursor = gone - 1;
        let mut got = Vec::new();
        let mut p = sse::Parser::new();
        // Tiny batches so the reader takes many steps, like a slow client.
        while let Some(b) = log.frames_after(cursor, 600) {
            cursor = b.last;
            got.extend(
                p.feed(&b.bytes)
                    .into_iter()
                    .map(|e| e.id.unwrap().parse::<u64>().unwrap()),
            );
        }
        let want: Vec<u64> = retained.into_iter().filter(|id| *id >= gone).collect();
        assert_eq!(got, want);
    }

    /// Limits that only bytes reach in a test: 1 MiB, keeping 512 KiB.
    const SMALL_BYTES: Limits = Limits {
        compact_bytes: 1 << 20,
        keep_bytes: 512 << 10,
        ..Limits::DEFAULT
    };

    /// A `progress` of step 0 whose name is `len` bytes of user text.
    fn big_progress(done: u64, len: usize) -> Event {
        let mut e = progress(0, done);
        if let Event::Progress(p) = &mut e {
            p.name = "n".repeat(len);
        }
        e
    }

    /// The running byte total, and the entries' bytes summed afresh.
    fn byte_totals(log: &EventLog) -> (usize, usize) {
        let inner = log.read();
        (
            inner.bytes,
            inner.entries.iter().map(|e| e.bytes()).sum::<usize>(),
        )
    }

    #[test]
    fn big_events_compact_by_bytes_and_keep_the_newest_up_to_the_byte_budget() {
        let limits = SMALL_BYTES;
        let log = EventLog::with_limits(limits);
        let running = log.push(step(0, StepState::Running)).unwrap();
        let mut last = 0;
        // 2,000 events of ~40 KB: 80 MB unbounded, far below the count.
        for done in 1..=2000 {
            last = log.push(big_progress(done, 20_000)).unwrap();
            let (total, summed) = byte_totals(&log);
            assert_eq!(total, summed, "the running total after event {done}");
            assert!(total < limits.compact_bytes + 150_000, "{total} bytes");
        }
        let all = log.after(0);
        let (held, dropped) = log.retained();
        assert!(dropped > 1900, "compacted by bytes: {dropped} dropped");
        assert_eq!(held as u64 + dropped, last);
        let ids: Vec<u64> = all.iter().map(|e| e.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids rise");
        assert_eq!((ids[0], ids.last()), (running, Some(&last)));
        // The newest entries are whole, gap-free, and no more than the
        // bytes kept (with what came since the last compaction).
        let recent = &ids[ids.len() - 10..];
        assert!(recent.windows(2).all(|w| w[1] == w[0] + 1), "{recent:?}");
        let entry = all[1].bytes();
        assert!(entry > 40_000, "a name counts twice: {entry}");
        assert!(held <= limits.compact_bytes / entry + 3, "{held} held");
    }

    #[test]
    fn events_larger_than_the_byte_budget_keep_the_latest_of_each_kind() {
        let limits = Limits {
            compact_bytes: 100_000,
            keep_bytes: 50_000,
            ..Limits::DEFAULT
        };
        let log = EventLog::with_limits(limits);
        log.push(step(0, StepState::Running));
        for done in 1..=300 {
            log.push(big_progress(done, 80_000));
            let (total, summed) = byte_totals(&log);
            assert_eq!(total, summed);
            // The step, the latest progress and the one just logged.
            assert!(log.retained().0 <= 3, "{:?}", log.retained());
        }
        log.push(step(0, StepState::Done));
        log.push(finished());
        let kinds: Vec<String> = log
            .after(0)
            .iter()
            .map(|e| match &e.event {
                Event::Progress(p) => format!("progress {:?}", p.done),
                other => other.name().to_owned(),
            })
            .collect();
        assert_eq!(kinds, ["step", "progress Some(300)", "step", "finished"]);
    }

    fn pace_msg(status: Level, chunk_time_ms: u64) -> Event {
        let settings = Settings {
            chunk_time_ms,
            nice_ratio: 1.0,
            sleep_ms: 0,
            batch_size: None,
        };
        Event::message(
            json!({"db": "d", "settings": settings}),
            status,
            format!("pace {chunk_time_ms}"),
        )
    }

    #[test]
    fn a_pace_message_is_superseded_by_the_next_and_warnings_stay() {
        let limits = SMALL;
        let log = EventLog::with_limits(limits);
        let mut kept = vec![log.push(step(0, StepState::Running)).unwrap()];
        for n in 0..5000u64 {
            log.push(pace_msg(Level::Info, 10 + n % 2 * 240));
            if n % 500 == 0 {
                // Warnings, and other words, are kept for good, even one
                // that names settings.
                kept.push(log.push(pace_msg(Level::Warn, n)).unwrap());
                kept.push(log.push(msg(n as usize)).unwrap());
            }
        }
        let latest = log.push(pace_msg(Level::Info, 77)).unwrap();
        // Enough later events that the pace messages are all old.
        for n in 0..2 * limits.compact_at {
            log.push(progress(0, n as u64));
        }
        let all = log.after(0);
        let ids: Vec<u64> = all.iter().map(|e| e.id).collect();
        for id in kept.iter().chain([&latest]) {
            assert!(ids.contains(id), "event {id} was dropped");
        }
        let paces: Vec<u64> = all
            .iter()
            .filter(|e| matches!(&e.event, Event::Message(m) if m.is_pace()))
            .map(|e| e.id)
            .collect();
        assert_eq!(paces, [latest], "only the latest pace message");
        assert_eq!(log.snapshot().settings.chunk_time_ms, 77);
    }

    #[test]
    fn a_hundred_thousand_events_stay_far_under_64_mib() {
        let log = EventLog::new();
        long_run(&log, 60_000);
        let all = log.after(0);
        let bytes: usize = all
            .iter()
            .map(|e| {
                std::mem::size_of::<Entry>() + e.frame.len() + 2 * 64 // names, allocator slack
            })
            .sum();
        assert!(log.last_id() > 120_000);
        assert!(
            all.len() <= Limits::default().compact_at + 2_000,
            "{} entries",
            all.len()
        );
        assert!(bytes < 64 << 20, "{bytes} bytes");
    }

    #[test]
    fn many_concurrent_readers_each_get_every_event_once_in_order() {
        let log = Arc::new(EventLog::new());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        const EVENTS: u64 = 3000;
        let readers: Vec<_> = (0..64)
            .map(|r| {
                let log = log.clone();
                rt.spawn(async move {
                    let mut rx = log.subscribe();
                    let mut p = sse::Parser::new();
                    let (mut cursor, mut ids) = (0, Vec::new());
                    // Odd readers take small batches, even ones everything.
                    let max = if r % 2 == 1 { 700 } else { usize::MAX };
                    loop {
                        rx.borrow_and_update();
                        if let Some(b) = log.frames_after(cursor, max) {
                            cursor = b.last;
                            ids.extend(
                                p.feed(&b.bytes)
                                    .into_iter()
                                    .map(|e| e.id.unwrap().parse::<u64>().unwrap()),
                            );
                            if b.ends {
                                return ids;
                            }
                            tokio::task::yield_now().await;
                            continue;
                        }
                        rx.changed().await.unwrap();
                    }
                })
            })
            .collect();
        let writer = log.clone();
        std::thread::spawn(move || {
            for n in 1..EVENTS {
                writer.push(msg(n as usize));
            }
            writer.push(finished());
        });
        rt.block_on(async {
            for r in readers {
                let ids = tokio::time::timeout(std::time::Duration::from_secs(60), r)
                    .await
                    .expect("readers finish")
                    .unwrap();
                assert_eq!(ids, (1..=EVENTS).collect::<Vec<_>>());
            }
        });
    }

    #[test]
    fn a_published_copy_keeps_the_ids_and_bytes_and_refuses_old_ids() {
        let run = EventLog::new();
        for n in 0..3 {
            run.push(msg(n));
        }
        run.push(finished());
        let copy = EventLog::new();
        // The copy starts late: from id 2, as a relay resuming would.
        for e in run.after(1) {
            assert!(copy.push_published(e.id, e.event.clone(), e.data().to_owned()));
        }
        let frames = |log: &EventLog, from| -> Vec<Bytes> {
            log.after(from).iter().map(|e| e.frame.clone()).collect()
        };
        assert_eq!(frames(&copy, 0), frames(&run, 1));
        assert_eq!(copy.finished_id(), Some(4));
        let again = run.after(2)[0].clone();
        assert!(!copy.push_published(again.id, again.event.clone(), again.data().to_owned()));
        assert!(
            !copy.push_published(9, msg(9), "{}".into()),
            "after finished"
        );
        let gap = EventLog::new();
        assert!(gap.push_published(5, msg(5), "{}".into()));
        assert!(!gap.push_published(5, msg(5), "{}".into()), "same id twice");
        assert_eq!(gap.push(msg(6)), Some(6), "ids go on from the copy's");
    }

    #[test]
    fn a_payload_is_kept_once_in_its_frame_unless_it_spans_lines() {
        let log = EventLog::new();
        log.push(msg(0));
        let own = log.after(0)[0].clone();
        assert!(matches!(own.payload, Payload::InFrame(_)));
        assert!(own.data().starts_with('{') && own.data().ends_with('}'));
        let frame = std::str::from_utf8(&own.frame).unwrap();
        assert!(frame.ends_with(&format!("data: {}\n\n", own.data())));
        // A relay's copy of a published payload that spans lines: its
        // frame has two `data:` lines, and the payload is kept as given.
        let copy = EventLog::new();
        assert!(copy.push_published(7, msg(7), "{\"a\":\n1}".into()));
        let two = copy.after(0)[0].clone();
        assert!(matches!(two.payload, Payload::Own(_)));
        assert_eq!(two.data(), "{\"a\":\n1}");
        assert!(
            std::str::from_utf8(&two.frame)
                .unwrap()
                .ends_with("data: {\"a\":\ndata: 1}\n\n")
        );
    }

    #[test]
    fn subscribers_see_the_last_id() {
        let log = EventLog::new();
        let rx = log.subscribe();
        log.push(msg(0));
        log.push(msg(1));
        assert_eq!(*rx.borrow(), 2);
    }
}
