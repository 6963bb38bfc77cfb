//! The run's append-only event log: the one broadcast. Each event gets the
//! next id and is encoded to SSE bytes once; every reader (HTTP client,
//! terminal) is a cursor into it, woken through a `watch` channel.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::sync::watch;

use crate::event::{Event, RunStatus, StepState, now_ms};
use crate::sse;

/// One logged event, shared by every reader.
#[derive(Debug)]
pub struct Entry {
    pub id: u64,
    pub event: Event,
    /// The JSON payload (with `ts_ms`), exactly as sent in SSE `data`.
    pub data: String,
    /// The whole SSE frame.
    pub frame: Bytes,
}

/// What `/status` reports, kept current as events are appended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub state: &'static str,
    pub status: Option<RunStatus>,
    pub step: Option<usize>,
    pub steps_done: usize,
    pub steps_total: usize,
    pub done: u64,
    pub total: u64,
    pub changed: u64,
    pub rows_changed: u64,
    pub last_event_id: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: Vec<Arc<Entry>>,
    finished_id: Option<u64>,
    snapshot: Snapshot,
    /// Rows changed by steps that have ended, so `rows_changed` can add
    /// the running step's count to it.
    changed_before: u64,
}

#[derive(Debug)]
pub struct EventLog {
    inner: RwLock<Inner>,
    last_id: watch::Sender<u64>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

impl EventLog {
    pub fn new() -> Self {
        let inner = Inner {
            snapshot: Snapshot {
                state: "waiting",
                ..Snapshot::default()
            },
            ..Inner::default()
        };
        EventLog {
            inner: RwLock::new(inner),
            last_id: watch::channel(0).0,
        }
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
        let mut inner = self.write();
        if inner.finished_id.is_some() {
            return None;
        }
        let id = inner.snapshot.last_event_id + 1;
        // Event names are fixed identifiers, so encoding cannot fail.
        let frame = sse::encode(Some(id), event.sse_name(), &data).unwrap_or_default();
        update_snapshot(&mut inner, &event, id);
        if matches!(event, Event::Finished(_)) {
            inner.finished_id = Some(id);
        }
        inner.entries.push(Arc::new(Entry {
            id,
            event,
            data,
            frame,
        }));
        drop(inner);
        self.last_id.send_replace(id);
        Some(id)
    }

    /// Every entry with an id above `cursor`, oldest first.
    pub fn after(&self, cursor: u64) -> Vec<Arc<Entry>> {
        let inner = self.read();
        let start = inner.entries.partition_point(|e| e.id <= cursor);
        inner.entries[start..].to_vec()
    }

    /// The SSE bytes of every entry above `cursor`, as one buffer ready to
    /// write, and the id of the last one; `None` when there is nothing new.
    /// A single pending frame is handed out as the shared `Bytes`, no copy.
    pub fn frames_after(&self, cursor: u64) -> Option<(Bytes, u64)> {
        let inner = self.read();
        let start = inner.entries.partition_point(|e| e.id <= cursor);
        let pending = &inner.entries[start..];
        let last = pending.last()?.id;
        if pending.len() == 1 {
            return Some((pending[0].frame.clone(), last));
        }
        let len = pending.iter().map(|e| e.frame.len()).sum();
        let mut buf = BytesMut::with_capacity(len);
        for e in pending {
            buf.extend_from_slice(&e.frame);
        }
        Some((buf.freeze(), last))
    }

    /// Wakes when a new event is appended; `borrow()` is the last id.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last_id.subscribe()
    }

    pub fn last_id(&self) -> u64 {
        self.read().snapshot.last_event_id
    }

    /// The id of the `finished` event, once it is logged.
    pub fn finished_id(&self) -> Option<u64> {
        self.read().finished_id
    }

    pub fn snapshot(&self) -> Snapshot {
        self.read().snapshot.clone()
    }

    /// The run's final outcome, once `finished` is logged.
    pub fn final_status(&self) -> Option<RunStatus> {
        let inner = self.read();
        inner.finished_id.and(inner.snapshot.status)
    }
}

fn update_snapshot(inner: &mut Inner, event: &Event, id: u64) {
    let changed_before = inner.changed_before;
    let s = &mut inner.snapshot;
    s.last_event_id = id;
    match event {
        Event::Start(e) => s.steps_total = e.steps.len(),
        Event::Step(e) => {
            s.step = Some(e.index);
            (s.done, s.total, s.changed) = (e.done, e.total, e.changed);
            match e.state {
                StepState::Running => s.state = "running",
                StepState::Done | StepState::Skipped => s.steps_done += 1,
                StepState::Failed => {}
            }
            s.rows_changed = changed_before + e.changed;
            if e.state != StepState::Running {
                inner.changed_before += e.changed;
            }
        }
        Event::Progress(e) => {
            (s.done, s.total, s.changed) = (e.done, e.total, e.changed);
            s.rows_changed = changed_before + e.changed;
        }
        Event::Message(_) => {}
        Event::Finished(e) => {
            s.state = "finished";
            s.status = Some(e.status);
            s.steps_done = e.steps_done;
            s.rows_changed = e.rows_changed;
            s.step = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Finished, Level};
    use serde_json::json;

    fn msg(n: usize) -> Event {
        Event::message(json!({}), Level::Info, format!("m{n}"))
    }

    fn finished() -> Event {
        Event::Finished(Finished {
            status: RunStatus::Ok,
            steps_done: 0,
            steps_total: 0,
            rows_changed: 0,
            elapsed_ms: 0,
            dry_run: false,
            error: None,
        })
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
        let all: Vec<u8> = log.after(0).iter().flat_map(|e| e.frame.to_vec()).collect();
        let (bytes, last) = log.frames_after(0).unwrap();
        assert_eq!((&bytes[..], last), (&all[..], 3));
        let (one, last) = log.frames_after(2).unwrap();
        assert_eq!(last, 3);
        assert_eq!(one, log.after(2)[0].frame);
        assert!(log.frames_after(3).is_none());
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
