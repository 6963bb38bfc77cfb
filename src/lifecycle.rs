//! The one lifecycle of a process that runs a batch, in this order:
//!
//! 1. **check** — signals are caught from before the pre-run check; one
//!    there exits 130 at once, since nothing has been written (the
//!    empty-chunk try's transaction is interrupted and rolled back first,
//!    see [`check_write`]);
//! 2. **wait for clients** — with `--wait-for-clients N`, the first step
//!    waits on the gate (a condition variable, no polling) until N stream
//!    clients are connected;
//! 3. **run** — the first Ctrl-C or SIGTERM cancels: SQLite's interrupt stops
//!    the running statement and the current chunk rolls back; a second
//!    quits at once (no transaction is ever committed by then);
//! 4. **finished** — the runner logs `finished`;
//! 5. **linger** — with `--linger`, late clients still get the whole
//!    replay; a signal cuts it short, and a run a signal stopped does not
//!    linger at all ([`stop_after_linger`]);
//! 6. **stop accepting**, then **drain** — open streams get their tail for
//!    at most `--drain-timeout` (the server's `serve` does both when the
//!    stop future resolves), and so does Redis with `--publish`: its
//!    publisher keeps sending through the linger, then waits at most the
//!    drain timeout for what Redis has not taken (a signal in the linger
//!    ends that wait too);
//! 7. **exit** with the run's status; tasks still running get 100 ms.
//!
//! `batchsse relay` goes through the same phases without a runner (its
//! wiring is in `app::relay`): connect and check (refusals exit 2) →
//! listen → copy the run from Redis → `finished` → linger → drain → exit 0.
//! It counts signals with [`count_signals`]; one before `finished` ends the
//! streams at once (they would get nothing more) and exits 130.
//!
//! [`Lifecycle`] holds phases 1, 3 and 7; [`Cancel`] is the runner's side of
//! phases 2 and 3; [`Steering`] carries live commands (pause, a new pace)
//! from the server to the runner, read between chunks.

use std::future::Future;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, InterruptHandle};
use tokio::sync::watch;

use crate::error::exit;
use crate::events::log::EventLog;
use crate::platform::StopSignals;

/// One run's process from before its pre-run check to its exit: the runtime
/// and the Ctrl-C / SIGTERM listener. Start it before the check, so a signal
/// during the check (which can take a while, or wait out a lock) exits 130
/// with a message instead of killing the process mid-sentence.
pub struct Lifecycle {
    rt: tokio::runtime::Runtime,
    parts: Parts,
    phase: Arc<Mutex<Phase>>,
    leftover: Leftover,
}

/// Folders and files of the process's own (the demo's temporary folder,
/// or its shop while it is made in a `--keep` folder) that an exit at a
/// signal removes, as their owner's drop would have: that exit skips every
/// drop, the demo's folder can hold gigabytes, and a half-made shop would
/// stop the next demo in that folder.
type Leftover = Arc<Mutex<Vec<PathBuf>>>;

/// What the run's async part gets from the lifecycle.
#[derive(Clone)]
pub struct Parts {
    pub log: Arc<EventLog>,
    pub cancel: Arc<Cancel>,
    pub steering: Arc<Steering>,
    /// Counts Ctrl-C and SIGTERM (for the linger).
    pub signals: watch::Receiver<u32>,
}

/// What a signal means: during the check nothing has been written, so the
/// process may just exit; once the run starts, the runner must roll back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Checking,
    Running,
}

impl Lifecycle {
    /// Builds the runtime and installs the signal handlers before returning.
    pub fn start() -> anyhow::Result<Lifecycle> {
        let rt = runtime()?;
        let log = Arc::new(EventLog::new());
        let cancel = Arc::new(Cancel::default());
        let phase = Arc::new(Mutex::new(Phase::Checking));
        let leftover = Leftover::default();
        let signals = {
            let _in_rt = rt.enter();
            let quit = Quit {
                phase: phase.clone(),
                leftover: leftover.clone(),
            };
            listen_for_signals(cancel.clone(), log.clone(), quit)
        };
        Ok(Lifecycle {
            rt,
            parts: Parts {
                log,
                cancel,
                steering: Arc::default(),
                signals,
            },
            phase,
            leftover,
        })
    }

    /// Removes `path` (a folder, or a file) if a signal ends the process
    /// at once (during the check, or at a second Ctrl-C).
    pub fn remove_on_quit(&self, path: &Path) {
        self.leftover
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(path.to_owned());
    }

    /// Keeps what [`Lifecycle::remove_on_quit`] would have removed.
    pub fn keep_on_quit(&self) {
        self.leftover
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Phases 2–7: from now a signal cancels the run rather than exiting.
    /// Runs the run's async part to its end, then gives whatever is left
    /// (a client that never read its tail) 100 ms.
    pub fn run<F: Future>(self, drive: impl FnOnce(Parts) -> F) -> F::Output {
        // Taken under the lock the signal listener holds while it exits, so
        // a signal is either handled as during the check or as during the run.
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = Phase::Running;
        let out = self.rt.block_on(drive(self.parts));
        self.rt.shutdown_timeout(Duration::from_millis(100));
        out
    }
}

/// The runtime a run or a relay serves on: two workers, so reading from
/// Redis or the runner's events never waits behind the fan-out writer.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Out of descriptors, tokio panics as it makes its signal pipe.
    crate::platform::raise_open_file_limit();
    if let Err(e) = crate::platform::can_open_files(SPARE_FILES) {
        let why = if crate::platform::system_out_of_files(&e) {
            format!(
                "the system is out of open files ({e}), whatever this process's limit: close programs that hold many, or raise the system's limit (Linux: `sysctl fs.file-max`)"
            )
        } else {
            format!(
                "this process may open too few files (its limit, `ulimit -n`, leaves fewer than {SPARE_FILES}): raise it, e.g. `ulimit -n 1024`"
            )
        };
        return Err(crate::error::UsageError::new(format!(
            "{why}; batchsse needs a few dozen (its runtime, the database and its journal, the server's connections); run again once it has them; nothing was written"
        ))
        .into());
    }
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Files the process must still be able to open as it starts.
const SPARE_FILES: usize = 16;

/// Counts Ctrl-C and SIGTERM. During the pre-run check one exits 130 at once
/// (nothing has been written). During the run the first cancels it (the
/// current chunk rolls back) and a second exits at once (no transaction is
/// ever committed). On Unix the handlers are installed before this returns.
fn listen_for_signals(cancel: Arc<Cancel>, log: Arc<EventLog>, quit: Quit) -> watch::Receiver<u32> {
    let (tx, rx) = watch::channel(0u32);
    on_each_signal(move || on_signal(&tx, &cancel, &log, &quit));
    rx
}

/// What a signal that ends the process at once needs: the phase, and
/// what to remove first.
struct Quit {
    phase: Arc<Mutex<Phase>>,
    leftover: Leftover,
}

impl Quit {
    /// Says `line` (the bars cleared) and exits, removing the leftovers
    /// first.
    fn now(&self, line: &str) -> ! {
        let left = std::mem::take(&mut *self.leftover.lock().unwrap_or_else(|p| p.into_inner()));
        for path in left {
            let _ = match path.is_dir() {
                true => std::fs::remove_dir_all(path),
                false => std::fs::remove_file(path),
            };
        }
        crate::error::exit_with_line(line, exit::INTERRUPTED)
    }
}

/// For a process that only serves a run (`relay`): counts Ctrl-C and
/// SIGTERM, and does nothing else. Call it inside the runtime.
pub fn count_signals() -> watch::Receiver<u32> {
    let (tx, rx) = watch::channel(0u32);
    on_each_signal(move || {
        tx.send_modify(|n| *n += 1);
    });
    rx
}

/// Calls `f` at each request to stop (Ctrl-C or SIGTERM; on Windows
/// Ctrl-C or Ctrl-Break: see `platform`); the handlers are installed before
/// this returns.
fn on_each_signal(mut f: impl FnMut() + Send + 'static) {
    let mut signals = StopSignals::install();
    tokio::spawn(async move {
        loop {
            signals.next().await;
            f();
        }
    });
}

fn on_signal(tx: &watch::Sender<u32>, cancel: &Cancel, log: &EventLog, quit: &Quit) {
    {
        let phase = quit.phase.lock().unwrap_or_else(|p| p.into_inner());
        if *phase == Phase::Checking {
            let _rolled_back = stop_check_write();
            // Exits holding the lock, so the run never starts.
            quit.now("batchsse: interrupted during the pre-run check; nothing was written");
        }
    }
    let n = *tx.borrow() + 1;
    tx.send_replace(n);
    if log.finished_id().is_some() {
        return; // the run is over; this only cuts the linger short
    }
    let work = cancel.work();
    if n == 1 {
        crate::error::print_line_on_signal(&format!(
            "batchsse: interrupted; stopping{} (press Ctrl-C again to quit at once)",
            work.stopping()
        ));
        cancel.cancel();
    } else {
        quit.now(&format!("batchsse: quitting now{}", work.quitting()));
    }
}

/// The write transaction the pre-run check holds open on the real file
/// (the empty-chunk try), while it is open. An exit then would leave the
/// pages SQLite spilled into the file, and a hot journal beside it, for
/// whoever opens it next to roll back: a copy of the file alone is
/// damaged. A signal interrupts its statement instead, and the exit waits
/// until it has rolled back ([`check_write`]).
static CHECK_WRITE: Mutex<Option<InterruptHandle>> = Mutex::new(None);
/// Held while such a transaction is open.
static CHECK_WRITING: Mutex<()> = Mutex::new(());

/// Runs `f`, a write transaction of the pre-run check on `conn` that ends
/// rolled back: a signal meanwhile interrupts it, and the process exits
/// once `f` has returned.
pub fn check_write<T>(conn: &Connection, f: impl FnOnce() -> T) -> T {
    let _writing = CHECK_WRITING.lock().unwrap_or_else(|p| p.into_inner());
    *CHECK_WRITE.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.get_interrupt_handle());
    let out = f();
    *CHECK_WRITE.lock().unwrap_or_else(|p| p.into_inner()) = None;
    out
}

/// Interrupts the check's write transaction, if one is open, and waits
/// until it has ended; holds off any other from beginning.
fn stop_check_write() -> std::sync::MutexGuard<'static, ()> {
    if let Some(h) = CHECK_WRITE.lock().unwrap_or_else(|p| p.into_inner()).take() {
        h.interrupt();
    }
    CHECK_WRITING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Phase 5: resolves once the run has finished and `linger` has passed, or
/// a signal arrives during the linger. The server's stop future. A run that
/// a signal stopped does not linger: whoever sent it (a person's Ctrl-C, a
/// supervisor's SIGTERM with its grace period) wants the process gone.
pub async fn stop_after_linger(
    log: Arc<EventLog>,
    linger: Duration,
    mut signals: watch::Receiver<u32>,
) {
    let mut rx = log.subscribe();
    let _ = rx.wait_for(|_| log.finished_id().is_some()).await;
    if !lingers(linger, &signals) {
        return;
    }
    let seen = *signals.borrow_and_update();
    tokio::select! {
        () = tokio::time::sleep(linger) => {}
        _ = signals.wait_for(|n| *n > seen) => {}
    }
}

/// Whether a finished run lingers: it has a linger, and no signal came.
pub fn lingers(linger: Duration, signals: &watch::Receiver<u32>) -> bool {
    !linger.is_zero() && *signals.borrow() == 0
}

/// Phase 2: opens the gate once `clients` reaches `wanted` (at once when
/// `wanted` is 0 or there is no server).
pub fn open_gate_at(cancel: Arc<Cancel>, clients: Option<watch::Receiver<usize>>, wanted: usize) {
    match clients.filter(|_| wanted > 0) {
        None => cancel.open_gate(),
        Some(mut clients) => {
            tokio::spawn(async move {
                let _ = clients.wait_for(|n| *n >= wanted).await;
                cancel.open_gate();
            });
        }
    }
}

/// Cancellation shared between the signal listener and the runner: a flag,
/// SQLite's interrupt for the statements running on the run's connections,
/// and one condition variable that wakes the runner's waits (the start
/// gate, `--sleep`, a pause) at once, for a cancel or any live command.
#[derive(Default)]
pub struct Cancel {
    flag: AtomicBool,
    shared: Mutex<Shared>,
    wake: Condvar,
}

#[derive(Default)]
struct Shared {
    /// The run's connection and the throttle query's.
    interrupts: Vec<InterruptHandle>,
    gate_open: bool,
    /// Counts live commands, so a wait can tell it was nudged.
    nudges: u64,
    /// What the runner has under way ([`Cancel::under_way`]).
    work: Work,
    /// The run is one transaction (`--atomic`, `--dry-run`): a stop keeps
    /// none of it, whatever is under way.
    one_transaction: bool,
}

/// What the runner has under way, so that a Ctrl-C says what it rolls
/// back: a stop between chunks (in a `--sleep`, a yield, a pause, at the
/// start gate) rolls back nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Work {
    /// Waiting, or reading between chunks: nothing to roll back.
    #[default]
    Nothing,
    /// A chunk's transaction (or its wait for the write lock).
    Chunk,
    /// A plain step: one statement, in a transaction of its own.
    Step,
    /// Anything, in a run that is one transaction.
    WholeRun,
}

impl Work {
    /// How the first Ctrl-C's line goes on after "stopping".
    fn stopping(self) -> &'static str {
        match self {
            Work::Nothing => ", with nothing under way to roll back",
            Work::Chunk => ", with a chunk under way rolled back",
            Work::Step => ", with the step under way rolled back",
            Work::WholeRun => ": the run is one transaction, so none of it is kept",
        }
    }

    /// How the second Ctrl-C's line goes on after "quitting now".
    fn quitting(self) -> &'static str {
        match self {
            Work::Nothing => ", with nothing under way",
            _ => "; the open transaction is rolled back by SQLite",
        }
    }
}

/// Marks a piece of work under way until dropped ([`Cancel::under_way`]).
pub struct UnderWay<'c> {
    cancel: &'c Cancel,
    before: Work,
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.cancel.lock().work = self.before;
    }
}

/// How a wait between chunks ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// Its time was up.
    Elapsed,
    /// A live command came: read the settings again.
    Nudged,
    Cancelled,
}

impl Cancel {
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let shared = self.lock();
        for h in &shared.interrupts {
            h.interrupt();
        }
        self.wake.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `work` as under way until the guard is dropped, for what a
    /// Ctrl-C meanwhile says it rolls back.
    pub fn under_way(&self, work: Work) -> UnderWay<'_> {
        let before = std::mem::replace(&mut self.lock().work, work);
        UnderWay {
            cancel: self,
            before,
        }
    }

    /// From now on the run is one transaction (`--atomic`, `--dry-run`):
    /// a stop keeps none of it.
    pub fn in_one_transaction(&self) {
        self.lock().one_transaction = true;
    }

    /// What a stop now rolls back.
    fn work(&self) -> Work {
        let shared = self.lock();
        match shared.one_transaction {
            true => Work::WholeRun,
            false => shared.work,
        }
    }

    /// Lets `cancel` interrupt statements running on `conn` (as well as on
    /// those attached before).
    pub fn attach(&self, conn: &Connection) {
        self.lock().interrupts.push(conn.get_interrupt_handle());
    }

    /// Lets the first step begin.
    pub fn open_gate(&self) {
        self.lock().gate_open = true;
        self.wake.notify_all();
    }

    /// Blocks until the gate opens or the run is cancelled; true if it opened.
    pub fn wait_for_gate(&self) -> bool {
        let mut shared = self.lock();
        while !shared.gate_open && !self.is_cancelled() {
            shared = self.wake.wait(shared).unwrap_or_else(|p| p.into_inner());
        }
        shared.gate_open && !self.is_cancelled()
    }

    /// A live command was taken: wakes the runner's wait, whatever it
    /// waits for, so it reads the settings again.
    pub fn nudge(&self) {
        self.lock().nudges += 1;
        self.wake.notify_all();
    }

    /// The live commands so far; give it to [`Cancel::nap`] to be woken by
    /// any that comes after it was read.
    pub fn nudges(&self) -> u64 {
        self.lock().nudges
    }

    /// Sleeps up to `d`; true when woken by cancellation.
    pub fn sleep(&self, d: Duration) -> bool {
        self.wait(d, None) == Woken::Cancelled
    }

    /// Sleeps up to `d`, or until a cancel or a live command after the
    /// `seen`-th (at once if one has already come).
    pub fn nap(&self, d: Duration, seen: u64) -> Woken {
        self.wait(d, Some(seen))
    }

    fn wait(&self, d: Duration, seen: Option<u64>) -> Woken {
        // A huge --sleep is "until cancelled", not an overflow.
        let far = Duration::from_secs(100 * 365 * 24 * 3600);
        let deadline = Instant::now() + d.min(far);
        let mut shared = self.lock();
        loop {
            if self.is_cancelled() {
                return Woken::Cancelled;
            }
            if seen.is_some_and(|n| n != shared.nudges) {
                return Woken::Nudged;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Woken::Elapsed;
            }
            shared = self
                .wake
                .wait_timeout(shared, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Live commands for the runner: pause, and pace changes, which the
/// governor reads at the next chunk boundary. Cancel goes through [`Cancel`].
#[derive(Default)]
pub struct Steering {
    state: Mutex<(bool, PacePatch)>,
    /// Why this run cannot be paused, if it cannot.
    no_pause: std::sync::OnceLock<String>,
    /// Why a sleep or nice ratio would change nothing in this run, if so.
    no_wait: std::sync::OnceLock<String>,
    /// Why a chunk time or batch size would change nothing, if so.
    no_resize: std::sync::OnceLock<String>,
}

/// The values a pace may take, on the command line as in `POST /control`.
pub const CHUNK_TIME_MS: RangeInclusive<u64> = 1..=600_000;
pub const NICE_RATIO: RangeInclusive<f64> = 0.0..=100.0;
pub const SLEEP_MS: RangeInclusive<u64> = 0..=600_000;
pub const BATCH_SIZE: RangeInclusive<u64> = 1..=10_000_000;

/// A change to the pace; `None` leaves a value as it is. `batch_size:
/// Some(None)` makes chunks adapt again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PacePatch {
    pub chunk_time_ms: Option<u64>,
    pub nice_ratio: Option<f64>,
    pub sleep_ms: Option<u64>,
    pub batch_size: Option<Option<u64>>,
}

impl PacePatch {
    pub fn is_empty(&self) -> bool {
        *self == PacePatch::default()
    }

    /// `settings` with this change made.
    pub fn apply(&self, mut settings: crate::events::Settings) -> crate::events::Settings {
        if let Some(v) = self.chunk_time_ms {
            settings.chunk_time_ms = v;
        }
        if let Some(v) = self.nice_ratio {
            settings.nice_ratio = v;
        }
        if let Some(v) = self.sleep_ms {
            settings.sleep_ms = v;
        }
        if let Some(v) = self.batch_size {
            settings.batch_size = v;
        }
        settings
    }

    /// Later changes win, value by value.
    fn merge(&mut self, later: PacePatch) {
        self.chunk_time_ms = later.chunk_time_ms.or(self.chunk_time_ms);
        self.nice_ratio = later.nice_ratio.or(self.nice_ratio);
        self.sleep_ms = later.sleep_ms.or(self.sleep_ms);
        self.batch_size = later.batch_size.or(self.batch_size);
    }
}

impl Steering {
    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, PacePatch)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn paused(&self) -> bool {
        self.lock().0
    }

    /// From now on a pause is refused, for this reason.
    pub fn refuse_pause(&self, why: String) {
        let _ = self.no_pause.set(why);
    }

    /// Why a pause is refused, if it is.
    pub fn pause_refused(&self) -> Option<&str> {
        self.no_pause.get().map(String::as_str)
    }

    /// From now on a change of sleep or nice ratio is refused, for this
    /// reason: the run never waits between chunks.
    pub fn refuse_waits(&self, why: String) {
        let _ = self.no_wait.set(why);
    }

    /// Why a change of sleep or nice ratio is refused, if it is.
    pub fn waits_refused(&self) -> Option<&str> {
        self.no_wait.get().map(String::as_str)
    }

    /// From now on a change of chunk time or batch size is refused, for
    /// this reason: the chunks are not this run's to size.
    pub fn refuse_resizes(&self, why: String) {
        let _ = self.no_resize.set(why);
    }

    /// Why a change of chunk time or batch size is refused, if it is.
    pub fn resizes_refused(&self) -> Option<&str> {
        self.no_resize.get().map(String::as_str)
    }

    /// The pace changes not yet applied.
    pub fn take_pace(&self) -> PacePatch {
        std::mem::take(&mut self.lock().1)
    }

    /// Changes the pace, and pauses or resumes, once `log` has said so
    /// (false: the change is not taken), as one step under the lock: a
    /// pace the runner tells meanwhile (`say_pace`) comes wholly before or
    /// after, so a message with the pace as it was never lands after the
    /// `control` event that changed it, and `/status` never goes back to
    /// the old pace; and of two commands sent at once, the one logged last
    /// is the one in force, as `/status` (which follows the log) says.
    pub fn change_pace_logged(
        &self,
        patch: PacePatch,
        pause: Option<bool>,
        log: impl FnOnce() -> bool,
    ) -> bool {
        let mut state = self.lock();
        let taken = log();
        if taken {
            state.1.merge(patch);
            state.0 = pause.unwrap_or(state.0);
        }
        taken
    }

    /// Hands the pace changes not yet applied to `tell`, which applies
    /// them and says the pace, under the lock (see `change_pace_logged`).
    pub fn say_pace<T>(&self, tell: impl FnOnce(PacePatch) -> T) -> T {
        let mut state = self.lock();
        let patch = std::mem::take(&mut state.1);
        tell(patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_for_the_clients_or_for_a_cancel() {
        let c = Arc::new(Cancel::default());
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || c.wait_for_gate())
        };
        c.open_gate();
        assert!(waiter.join().unwrap(), "opened");
        let c = Arc::new(Cancel::default());
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || c.wait_for_gate())
        };
        c.cancel();
        assert!(!waiter.join().unwrap(), "cancelled while waiting");
    }

    #[test]
    fn a_pace_change_is_logged_wholly_before_or_after_a_pace_being_said() {
        let steering = Steering::default();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            steering.say_pace(|patch| {
                assert!(patch.is_empty());
                let change = PacePatch {
                    sleep_ms: Some(5),
                    ..Default::default()
                };
                scope.spawn(|| steering.change_pace_logged(change, None, || tx.send(()).is_ok()));
                // The runner is saying the pace: the command's `control`
                // event must wait, or it lands before the runner's message.
                let early = rx.recv_timeout(std::time::Duration::from_millis(100));
                assert!(early.is_err(), "the change was logged meanwhile");
            });
            rx.recv_timeout(std::time::Duration::from_secs(10))
                .expect("then it is logged");
        });
        assert_eq!(steering.take_pace().sleep_ms, Some(5), "and taken");
    }

    #[test]
    fn a_cancel_interrupts_every_attached_connection() {
        let c = Arc::new(Cancel::default());
        let (query, other) = (
            Connection::open_in_memory().unwrap(),
            Connection::open_in_memory().unwrap(),
        );
        c.attach(&query);
        c.attach(&other);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c";
            let r = query.query_row(endless, [], |r| r.get::<_, i64>(0));
            let _ = tx.send(r.map_err(|e| e.sqlite_error_code()));
        });
        // An interrupt before the query starts is lost, so cancel again
        // until it ends.
        let start = Instant::now();
        let got = loop {
            c.cancel();
            if let Ok(got) = rx.recv_timeout(Duration::from_millis(20)) {
                break got;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "never interrupted"
            );
        };
        assert_eq!(got, Err(Some(rusqlite::ErrorCode::OperationInterrupted)));
    }

    #[test]
    fn a_nap_ends_at_a_nudge_even_one_that_came_before_it() {
        let c = Arc::new(Cancel::default());
        let seen = c.nudges();
        c.nudge();
        assert_eq!(c.nap(Duration::from_secs(3600), seen), Woken::Nudged);
        let seen = c.nudges();
        let napper = {
            let c = c.clone();
            std::thread::spawn(move || c.nap(Duration::from_secs(3600), seen))
        };
        c.nudge();
        assert_eq!(napper.join().unwrap(), Woken::Nudged);
        assert_eq!(c.nap(Duration::from_millis(1), c.nudges()), Woken::Elapsed);
        c.cancel();
        assert_eq!(
            c.nap(Duration::from_secs(3600), c.nudges()),
            Woken::Cancelled
        );
    }

    #[test]
    fn what_is_under_way_is_marked_until_its_guard_is_dropped() {
        let c = Cancel::default();
        assert_eq!(c.work(), Work::Nothing, "at the gate");
        {
            let _step = c.under_way(Work::Step);
            {
                let _chunk = c.under_way(Work::Chunk);
                assert_eq!(c.work(), Work::Chunk);
            }
            assert_eq!(c.work(), Work::Step);
        }
        assert_eq!(c.work(), Work::Nothing, "between chunks");
        c.in_one_transaction();
        assert_eq!(c.work(), Work::WholeRun, "whatever is under way");
    }

    #[test]
    fn a_sleep_ends_at_once_on_cancel() {
        let c = Arc::new(Cancel::default());
        let sleeper = {
            let c = c.clone();
            std::thread::spawn(move || c.sleep(Duration::from_secs(3600)))
        };
        c.cancel();
        assert!(sleeper.join().unwrap());
        assert!(!Cancel::default().sleep(Duration::from_millis(1)));
    }
}
