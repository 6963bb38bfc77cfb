//! The plain step's heartbeat: a `progress` with only `elapsed_ms` every
//! [`EVERY`] while one statement runs. One thread serves the whole run, so
//! a script of many short statements does not start a thread per step.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::events::log::EventLog;
use crate::events::{Event, Progress};

/// How often a plain step that is still running says so.
pub(super) const EVERY: Duration = Duration::from_secs(5);

/// The step being timed, shared with the beating thread.
pub(super) struct Heartbeat {
    slot: Mutex<Slot>,
    wake: Condvar,
    every: Duration,
}

#[derive(Default)]
struct Slot {
    current: Option<Timed>,
    /// Counts the steps timed, so the thread tells a new one from the old.
    generation: u64,
    /// The thread waits with no deadline and must be woken for a step.
    idle: bool,
    closed: bool,
}

struct Timed {
    step: usize,
    name: String,
    since: Instant,
}

/// Times one step until dropped; no beat comes after the drop.
pub(super) struct Beating<'a>(&'a Heartbeat);

impl Drop for Beating<'_> {
    fn drop(&mut self) {
        self.0.lock().current = None;
    }
}

/// Closes the heartbeat when the run ends, a panic included, so the
/// scope that joins its thread never waits forever.
struct CloseOnDrop<'a>(&'a Heartbeat);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.wake.notify_all();
    }
}

/// Runs `f` with a heartbeat whose thread lives as long as `f`.
pub(super) fn with_heartbeat<R>(log: &EventLog, f: impl FnOnce(&Heartbeat) -> R) -> R {
    beating_every(EVERY, log, f)
}

fn beating_every<R>(every: Duration, log: &EventLog, f: impl FnOnce(&Heartbeat) -> R) -> R {
    let hb = Heartbeat {
        slot: Mutex::default(),
        wake: Condvar::new(),
        every,
    };
    std::thread::scope(|s| {
        s.spawn(|| hb.beat(log));
        let _close = CloseOnDrop(&hb);
        f(&hb)
    })
}

impl Heartbeat {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // A beat holds nothing a panic could leave half-written.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Times a plain step from now: beats come every [`EVERY`] until the
    /// returned guard is dropped. The thread is woken only when it is idle;
    /// otherwise it sees the new step at its next deadline, so quick steps
    /// cost a lock each and no wake-up.
    pub(super) fn start(&self, step: usize, name: &str) -> Beating<'_> {
        let mut slot = self.lock();
        slot.generation += 1;
        slot.current = Some(Timed {
            step,
            name: name.to_owned(),
            since: Instant::now(),
        });
        if slot.idle {
            slot.idle = false;
            self.wake.notify_one();
        }
        Beating(self)
    }

    /// The thread: waits for a step, then for its next beat, and sends the
    /// beat if that step is still the one running. The beat is sent under
    /// the lock, so once a step's guard is dropped no beat of it follows.
    fn beat(&self, log: &EventLog) {
        // The step last seen, and how many beats it has had.
        let (mut seen, mut beats) = (0u64, 0u32);
        let mut slot = self.lock();
        loop {
            if slot.closed {
                return;
            }
            let Some(t) = &slot.current else {
                slot.idle = true;
                slot = self.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            if slot.generation != seen {
                (seen, beats) = (slot.generation, 0);
            }
            let due = t.since + self.every * (beats + 1);
            let now = Instant::now();
            if now >= due {
                let elapsed = now.duration_since(t.since).as_millis() as u64;
                log.push(Event::Progress(Progress::heartbeat(
                    t.step,
                    t.name.clone(),
                    elapsed,
                )));
                beats += 1;
                continue;
            }
            slot = self
                .wake
                .wait_timeout(slot, due - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    /// The heartbeats in the log: (step, elapsed_ms).
    fn beats(log: &EventLog) -> Vec<(usize, u64)> {
        log.after(0)
            .iter()
            .filter_map(|e| match &e.event {
                Event::Progress(p) if p.is_heartbeat() => Some((p.step, p.elapsed_ms)),
                _ => None,
            })
            .collect()
    }

    /// Waits (up to a minute, however loaded the machine) for a beat of `step`.
    fn await_beat(log: &EventLog, step: usize) {
        let start = Instant::now();
        while !beats(log).iter().any(|(s, _)| *s == step) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no beat of {step}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn each_step_beats_on_its_own_clock_and_never_after_it_ends() {
        let log = EventLog::new();
        beating_every(TICK, &log, |hb| {
            let first = hb.start(1, "first");
            await_beat(&log, 1);
            drop(first);
            for i in 2..1000 {
                drop(hb.start(i, "quick"));
            }
            let last = hb.start(1000, "last");
            await_beat(&log, 1000);
            drop(last);
            let before = beats(&log).len();
            std::thread::sleep(TICK * 3);
            assert_eq!(beats(&log).len(), before, "a beat after the step ended");
        });
        let got = beats(&log);
        // A step's beats count from its own start, not from the run's or
        // an earlier step's.
        assert!(got.iter().all(|(_, ms)| *ms >= 100), "{got:?}");
        let last: Vec<u64> = got
            .iter()
            .filter(|(s, _)| *s == 1000)
            .map(|b| b.1)
            .collect();
        assert!(last.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    }

    #[test]
    fn the_run_ends_even_when_a_step_is_still_timed() {
        let log = EventLog::new();
        let beating = beating_every(EVERY, &log, |hb| {
            std::mem::forget(hb.start(0, "left running"));
            7
        });
        assert_eq!(beating, 7);
    }
}
