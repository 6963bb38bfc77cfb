//! The governor sits between chunks and between steps. It decides how long
//! the next chunk may hold SQLite's write lock, how long to yield after one
//! so a waiting application gets the lock, where WAL checkpoints run, and
//! whether to wait (pause file, throttle query, WAL size). While it waits no
//! transaction is open and no lock is held.
//!
//! Pacing is automatic unless flags fix it. SQLite has no queue for its
//! write lock: an application that finds it taken sleeps in the busy
//! handler (1, 2, 5, 10, 15, 20, 25 ms…) and retries. A runner that takes
//! the lock back the moment it commits makes such an application wait for
//! the whole batch. So while anyone else may be about (see `neighbours`),
//! chunks are short and each is followed by a yield that lasts while the
//! others keep writing; only once the run has seen nobody for a while are
//! chunks long, with no yield.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::json;

use super::db::without_waiting;
use super::neighbours::Neighbours;
use crate::error::UsageError;
use crate::events::log::EventLog;
use crate::events::{Event, Level, Settings, Throttle, ThrottleReason};
use crate::human::duration;
use crate::lifecycle::{Cancel, Steering, Woken};

/// Pacing for a file nobody else has open: long chunks, no yield.
const IDLE: (Duration, f64) = (Duration::from_millis(250), 0.0);
/// Pacing for a live database in rollback-journal mode: chunks short
/// enough that an application waiting in SQLite's busy handler has slept
/// only its short steps (1, 2, 5 ms…) when the chunk ends, and a yield as
/// long as the chunk that lets it in (see `yield_lock`). Chosen on the
/// frontier `cargo bench --bench live_app` measures over its application
/// profiles (README, "On a live database"): half the yield left a
/// single-connection application's writes at 47–124 ms p99 and its reads
/// at 410–913 ms; three quarters of it, its writes at 34–84 ms.
const LIVE: (Duration, f64) = (Duration::from_millis(10), 1.0);
/// The live pace in WAL mode, where only writers wait: a writer that
/// waits out a 20 ms chunk wakes at 33 ms (1 + 2 + 5 + 10 + 15), inside
/// the yield. On the same frontier, over three runs of all five
/// application profiles, this was the one point that met every target:
/// writes at 34 ms p99, the batch at 2.2–2.5× its idle time, and as many
/// failed deferred transactions as 10 ms × 1 (which took 2.7–2.9×). Shorter
/// chunks commit more often and fail more of those; half the yield left
/// writes at 51–63 ms.
const LIVE_WAL: (Duration, f64) = (Duration::from_millis(20), 0.75);
/// The run paces as live until it has seen nobody else for this long: no
/// commit, no lock, no process with the file open.
const ALONE_AFTER: Duration = Duration::from_secs(5);
/// A file written this recently may belong to an application that opens
/// it per request and has it closed right now: start at the live pace.
const RECENT_WRITE: Duration = Duration::from_secs(60);
/// A yield goes on while others write, until they have been quiet for this
/// long: longer than the sleep of a writer that has waited one chunk in
/// SQLite's busy handler (1, 2, 5, 10, 15 ms…), so it wakes inside it…
const QUIET: Duration = Duration::from_millis(15);
/// …but to at most this multiple of its own length, so the batch moves.
const YIELD_STRETCH: f64 = 2.0;
/// How often a yield looks whether others write.
const YIELD_POLL: Duration = Duration::from_millis(1);
/// How often a wait re-checks what it waits for.
const RECHECK: Duration = Duration::from_millis(250);
/// How long a chunk at the live pace waits for another process's
/// transaction to end before it begins anyway.
const CLEAR_WAIT: Duration = Duration::from_millis(20);
/// The longest chunk time at which a rollback-journal chunk keeps
/// readers out (see `Governor::exclusive`).
const EXCLUSIVE_UP_TO: Duration = Duration::from_millis(50);
/// The throttle query runs at most this often.
const QUERY_EVERY: Duration = Duration::from_millis(100);
/// A throttle check still running after this is stopped and counts as
/// "wait": a database too busy to answer a monitoring query in time is too
/// busy for the batch. The next check comes as long after.
const CHECK_BOUND: Duration = Duration::from_secs(1);

/// The pace as the flags set it; `None` leaves a value to the governor.
#[derive(Debug, Clone, Default)]
pub struct Pace {
    pub chunk_time: Option<Duration>,
    pub nice_ratio: Option<f64>,
    pub sleep: Duration,
    pub batch_size: Option<u64>,
}

/// What makes a run wait between chunks.
#[derive(Debug, Clone, Default)]
pub struct Brakes {
    pub pause_file: Option<PathBuf>,
    pub throttle_query: Option<String>,
    /// In bytes; 0 turns the WAL check off.
    pub max_wal: u64,
}

/// Checks a throttle query before anything runs: it must compile, read
/// only, and return a column.
pub fn check_throttle_query(db: &Path, sql: &str) -> Result<(), UsageError> {
    let conn = open_reader(db).map_err(|e| {
        UsageError::new(format!(
            "cannot open {} to check --throttle-query: {e}",
            crate::human::shown_path(db)
        ))
    })?;
    let stmt = conn.prepare(sql).map_err(|e| {
        let lacks = open_reader(db)
            .ok()
            .and_then(|fresh| crate::plan::query_refusal(&fresh, sql, &e));
        UsageError::new(match lacks {
            Some(why) => format!(
                "--throttle-query {why}; or leave --throttle-query out. Nothing was run"
            ),
            None => format!(
                "--throttle-query does not compile: {}; give one SELECT whose first column is truthy while the run should wait",
                crate::plan::sqlite_message(&e)
            ),
        })
    })?;
    if !stmt.readonly() || stmt.column_count() == 0 {
        return Err(UsageError::new(
            "--throttle-query must be one read-only SELECT that returns a column (truthy: wait)",
        ));
    }
    // Nothing binds one: it would be NULL, and the run would never wait.
    if let Some(names) = crate::plan::parameter_names(&stmt) {
        return Err(UsageError::new(format!(
            "--throttle-query uses {names}, which nothing binds; write the values into the query"
        )));
    }
    Ok(())
}

fn open_reader(db: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(1))?;
    Ok(conn)
}

pub(super) struct Governor<'a> {
    conn: &'a Connection,
    log: &'a EventLog,
    cancel: &'a Cancel,
    steering: &'a Steering,
    pace: Pace,
    brakes: Brakes,
    db: String,
    neighbours: Option<Neighbours>,
    /// When another connection was last seen (a commit, a lock, the file
    /// open elsewhere, or at the start a recent write).
    seen_at: Option<Instant>,
    /// Why the run began at the live pace.
    start_reason: Option<&'static str>,
    /// `PRAGMA data_version` at the last look.
    data_version: i64,
    /// The settings last announced, to tell when they change.
    announced: Settings,
    wal: Option<PathBuf>,
    /// The run switched a DELETE journal to TRUNCATE (see `lighten_commits`).
    restore_delete: bool,
    throttle: Option<ThrottleQuery>,
    /// The throttle query's failures said so far: each is said once, even
    /// when the query works between them, since every warning stays in
    /// the log for good.
    query_errors: HashSet<String>,
    /// The flag that makes the run one transaction (`--atomic`,
    /// `--dry-run`): it holds the write lock throughout, so nothing waits
    /// between its chunks.
    one_transaction: Option<&'static str>,
    /// An undo's chunks are the run's recorded ones, taken back as they
    /// are: no chunk time or batch size resizes them.
    recorded_chunks: bool,
    /// How long a person has held the run (a live pause, the pause file)
    /// in all: a rate over time that counts it would say the run is slow.
    paused: Duration,
}

struct ThrottleQuery {
    conn: Connection,
    sql: String,
    /// No check before this.
    next: Option<Instant>,
    /// Why the last check said to wait, if it did.
    last: Option<String>,
}

/// What one throttle check found.
enum Check {
    Answer(bool),
    /// Still running at [`CHECK_BOUND`] (or locked out that long).
    CutOff,
    Failed(String),
    Cancelled,
}

impl ThrottleQuery {
    /// Runs the query once, for at most [`CHECK_BOUND`]; a cancel stops it
    /// at once (the connection is attached to `Cancel`).
    fn check(&mut self, cancel: &Cancel) -> Check {
        let deadline = Instant::now() + CHECK_BOUND;
        let _ = self
            .conn
            .progress_handler(1000, Some(move || Instant::now() >= deadline));
        let answer = self
            .conn
            .query_row(&self.sql, [], |r| r.get::<_, rusqlite::types::Value>(0))
            .optional();
        let _ = self.conn.progress_handler(0, None::<fn() -> bool>);
        match answer {
            Ok(v) => Check::Answer(v.is_some_and(|v| truthy(&v))),
            Err(_) if cancel.is_cancelled() => Check::Cancelled,
            // Interrupted at the bound, or locked out for the whole busy
            // timeout, which is as long.
            Err(_) if Instant::now() >= deadline => Check::CutOff,
            Err(e) => Check::Failed(crate::plan::sqlite_message(&e)),
        }
    }
}

impl<'a> Governor<'a> {
    pub(super) fn new(
        conn: &'a Connection,
        log: &'a EventLog,
        (cancel, steering): (&'a Cancel, &'a Steering),
        pace: Pace,
        brakes: Brakes,
    ) -> Self {
        let path = super::db::file_of(conn);
        let wal = wal_file(conn, path.as_deref());
        if wal.is_some() {
            // Checkpoints run here, between chunks, not inside some
            // application's commit.
            let _ = conn.execute_batch("PRAGMA wal_autocheckpoint = 0");
        }
        let throttle = brakes.throttle_query.clone().and_then(|sql| {
            let conn = open_reader(path.as_deref()?).ok()?;
            cancel.attach(&conn);
            Some(ThrottleQuery {
                conn,
                sql,
                next: None,
                last: None,
            })
        });
        let db = path
            .as_deref()
            .and_then(Path::file_name)
            .map_or_else(|| "database".into(), |n| n.to_string_lossy().into_owned());
        let mut neighbours = path.as_deref().map(|p| Neighbours::new(p, wal.is_some()));
        let start_reason = neighbours.as_mut().and_then(first_look);
        if let Some(n) = neighbours.as_mut() {
            n.watch();
        }
        let mut g = Governor {
            conn,
            log,
            cancel,
            steering,
            pace,
            brakes,
            db,
            neighbours,
            seen_at: start_reason.map(|_| Instant::now()),
            start_reason,
            data_version: 0,
            announced: Settings::default(),
            wal,
            restore_delete: false,
            throttle,
            query_errors: HashSet::new(),
            one_transaction: None,
            recorded_chunks: false,
            paused: Duration::ZERO,
        };
        g.data_version = g.read_data_version();
        g.announced = g.settings();
        g.size_cache();
        g.restore_delete = g.lighten_commits();
        g
    }

    /// Makes each chunk's commit cheaper, since a chunk commits with its
    /// checkpoint row and a resume repeats whatever a crash loses: in WAL
    /// mode no fsync per commit (`synchronous = NORMAL`; checkpoints still
    /// sync, and [`Self::finish`] syncs the rest), in rollback mode a
    /// journal truncated rather than deleted after each commit. True when
    /// the journal mode must go back to DELETE at the end.
    fn lighten_commits(&self) -> bool {
        if self.wal.is_some() {
            let _ = self.conn.execute_batch("PRAGMA synchronous = NORMAL");
            return false;
        }
        let mode: Option<String> = self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .ok();
        mode.is_some_and(|m| m.eq_ignore_ascii_case("delete"))
            && self
                .conn
                .query_row("PRAGMA journal_mode = TRUNCATE", [], |r| {
                    r.get::<_, String>(0)
                })
                .is_ok_and(|m| m.eq_ignore_ascii_case("truncate"))
    }

    /// Before `finished`: what the run committed is on disk (the WAL
    /// synced), and the journal mode is as the run found it, which also
    /// removes the empty journal file. Only while the mode is still the
    /// run's TRUNCATE: a file someone switched to WAL during the run (an
    /// application's settings, an operator) stays WAL.
    pub(super) fn finish(&self) {
        if let Some(wal) = &self.wal {
            let _ = std::fs::File::open(wal).and_then(|f| f.sync_all());
        }
        // A read first: the connection learns of a switch to WAL only
        // when it next reads the file.
        let still_truncate = || {
            let _ = self
                .conn
                .query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0));
            self.conn
                .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
                .is_ok_and(|m| m.eq_ignore_ascii_case("truncate"))
        };
        if self.restore_delete && still_truncate() {
            let _ = self
                .conn
                .query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()));
        }
    }

    /// Readers never wait on a chunk in WAL mode, and in rollback mode only
    /// while it commits, as long as its pages fit in the page cache: a chunk
    /// that spills takes the exclusive lock early. So with others about,
    /// the cache holds a chunk; on an idle file SQLite's default (2 MB)
    /// stays, since a larger cache only costs page faults there (~10% of
    /// a big UPDATE, measured).
    fn size_cache(&self) {
        let kib = if self.live() && self.wal.is_none() {
            65536
        } else {
            2000
        };
        let _ = self
            .conn
            .execute_batch(&format!("PRAGMA cache_size = -{kib}"));
    }

    /// The pace in force now.
    pub(super) fn settings(&self) -> Settings {
        let (chunk, nice) = match (self.live(), self.wal.is_some()) {
            (true, true) => LIVE_WAL,
            (true, false) => LIVE,
            (false, _) => IDLE,
        };
        Settings {
            chunk_time_ms: self.pace.chunk_time.unwrap_or(chunk).as_millis() as u64,
            nice_ratio: self.pace.nice_ratio.unwrap_or(nice),
            sleep_ms: self.pace.sleep.as_millis() as u64,
            batch_size: self.pace.batch_size,
        }
    }

    /// Hands `push` the pace the run starts at, for its `start` event:
    /// with the live changes sent before it made (a `ctl set` while the
    /// run waits for its first client). Without them `start` told the
    /// pace as if they had not come, and `/status` and the next `ctl set`
    /// said so too, though the first chunk took them. `push` runs under
    /// the steering lock (see `Steering::change_pace_logged`), so a
    /// command taken meanwhile is not undone by `start`'s pace either.
    pub(super) fn say_start<T>(&mut self, push: impl FnOnce(Settings) -> T) -> T {
        let steering = self.steering;
        steering.say_pace(|patch| {
            self.apply_patch(patch);
            push(self.settings())
        })
    }

    pub(super) fn chunk_time(&self) -> Duration {
        Duration::from_millis(self.settings().chunk_time_ms.max(1))
    }

    pub(super) fn batch_size(&self) -> Option<u64> {
        self.pace.batch_size
    }

    fn live(&self) -> bool {
        self.seen_at.is_some_and(|t| t.elapsed() < ALONE_AFTER)
    }

    /// A look, never a wait: a file another holds locked for good made
    /// each look between chunks wait --busy-timeout out, before the next
    /// chunk waited it out again. A locked file reads as changed.
    fn read_data_version(&self) -> i64 {
        without_waiting(|| {
            self.conn
                .query_row("PRAGMA data_version", [], |r| r.get(0))
                .unwrap_or(0)
        })
    }

    /// Right after `start`: when the run begins at the live pace, a line
    /// for people (`start`'s `settings` already tell programs), as a
    /// change of pace mid-run gets.
    pub(super) fn say_starting_pace(&mut self) {
        self.say_no_wait_in_one_transaction();
        if let Some(why) = self.start_reason {
            let fixed = self.recorded_chunks || self.pace.batch_size.is_some();
            let words = pace_words(true, fixed, self.one_transaction);
            let why = format!("{why}: {words}");
            self.say_pace(&why, None);
        }
    }

    /// A run that is one transaction never waits between chunks: a
    /// `--sleep` or `--nice-ratio` asked for is said to do nothing, rather
    /// than a run that ends at once looking as if it had slept.
    fn say_no_wait_in_one_transaction(&self) {
        let Some(flag) = self.one_transaction else {
            return;
        };
        let asked: Vec<&str> = [
            ("--sleep", !self.pace.sleep.is_zero()),
            (
                "--nice-ratio",
                self.pace.nice_ratio.is_some_and(|r| r > 0.0),
            ),
        ]
        .iter()
        .filter(|(_, given)| *given)
        .map(|(name, _)| *name)
        .collect();
        if asked.is_empty() {
            return;
        }
        self.log.push(Event::message(
            json!({"db": self.db}),
            Level::Warn,
            format!(
                "{} {} nothing in this run: it is {flag}, and {}",
                asked.join(" and "),
                if asked.len() > 1 { "do" } else { "does" },
                super::LOCK_HELD
            ),
        ));
    }

    /// A pace message: why, and the settings now in force (which ride on
    /// the message, for `/status`). A run that is one transaction never
    /// yields, so its nice ratio, whatever it is, is not named beside that.
    /// Says the pace with the live changes taken so far applied, under
    /// the steering lock (see `Steering::change_pace_logged`).
    fn say_pace(&mut self, why: &str, step: Option<usize>) {
        let steering = self.steering;
        steering.say_pace(|patch| {
            self.apply_patch(patch);
            self.push_pace(why, step);
        });
    }

    fn push_pace(&self, why: &str, step: Option<usize>) {
        let now = self.settings();
        let mut target = json!({"db": self.db, "settings": now});
        if let Some(i) = step {
            target["step"] = i.into();
        }
        let chunks = match now.batch_size {
            _ if self.recorded_chunks => crate::events::RECORDED_CHUNKS.to_owned(),
            Some(n) => format!("batch size {}", crate::human::thousands(n)),
            None => format!("chunks of ~{} ms", now.chunk_time_ms),
        };
        let ratio = match self.one_transaction {
            Some(_) => String::new(),
            None => format!(", nice ratio {}", now.nice_ratio),
        };
        self.log.push(Event::message(
            target,
            Level::Info,
            format!("{why} ({chunks}{ratio})"),
        ));
    }

    /// Looks again at who else uses the file, and says when that changes
    /// the pace (the new settings ride on the message, for `/status`).
    fn observe(&mut self, step: Option<usize>) {
        self.steer();
        let open = self
            .neighbours
            .as_ref()
            .is_some_and(Neighbours::open_lately);
        if self.committed() || self.locks().any || open {
            self.seen_at = Some(Instant::now());
        }
        let now = self.settings();
        if now != self.announced {
            self.announced = now;
            self.size_cache();
            let why = if self.live() {
                "another connection is using the database"
            } else {
                "nobody else has used the database for 5 s"
            };
            let fixed = self.recorded_chunks || now.batch_size.is_some();
            let words = pace_words(self.live(), fixed, self.one_transaction);
            let why = format!("{why}: {words}");
            self.say_pace(&why, step);
        }
    }

    /// After a chunk that held the lock for `took`: checkpoint, yield, then
    /// wait while a brake is on. True when cancelled meanwhile.
    pub(super) fn after_chunk(&mut self, took: Duration, step: usize, last: bool) -> bool {
        self.checkpoint(step);
        self.observe(Some(step));
        if last || self.one_transaction.is_some() {
            // The step is done (what follows checks again), or the lock is
            // held throughout: a wait would only keep others out longer.
            return false;
        }
        let yielded = took.mul_f64(self.settings().nice_ratio.max(0.0));
        if self.yield_lock(yielded) || self.sleep_between_chunks() {
            return true;
        }
        self.wait_while_braked(Some(step))
    }

    /// Leaves the write lock free for `least`, for whoever waits for it,
    /// and then for as long as others keep writing (a commit, or a write
    /// lock held) until they have been quiet for `QUIET`, but to no more
    /// than `YIELD_STRETCH` times `least`: writers sleeping in SQLite's
    /// busy handler wake inside the yield, and the batch still moves.
    /// Nothing is waited for when nothing is yielded. True when cancelled
    /// meanwhile. (Without the stretch, at the same share of the lock, a
    /// rollback-journal application's write p99 went from 35 ms to 570.)
    fn yield_lock(&mut self, least: Duration) -> bool {
        if least.is_zero() {
            return false;
        }
        let start = Instant::now();
        let mut active: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let waited = now - start;
            let quiet = active.is_none_or(|t| now - t >= QUIET);
            let Some(nap) = yield_nap(waited, least, quiet) else {
                return false;
            };
            if self.cancel.sleep(nap) {
                return true;
            }
            if self.committed() || self.locks().writing {
                active = Some(Instant::now());
                self.seen_at = active;
            }
        }
    }

    /// `--sleep` after a chunk. A live command wakes it: the sleep is then
    /// measured against the new setting from where it began, and a pause
    /// or cancel is taken at once. True when cancelled meanwhile.
    fn sleep_between_chunks(&mut self) -> bool {
        let start = Instant::now();
        loop {
            let seen = self.cancel.nudges();
            self.steer();
            let left = self.pace.sleep.saturating_sub(start.elapsed());
            if left.is_zero() || self.steering.paused() {
                return self.cancel.is_cancelled();
            }
            match self.cancel.nap(left, seen) {
                Woken::Cancelled => return true,
                Woken::Elapsed => return false,
                Woken::Nudged => {}
            }
        }
    }

    /// Right before a chunk at the live pace, when the chunk is a
    /// transaction of its own: waits, up to `CLEAR_WAIT`,
    /// while another process is inside a transaction. A chunk that took
    /// the write lock now would make that transaction's write, if it read
    /// first, fail at once: SQLite does not wait on the busy handler for a
    /// lock a transaction needs to go from reading to writing. True when
    /// cancelled meanwhile.
    pub(super) fn before_chunk(&mut self) -> bool {
        if !self.live() {
            return false;
        }
        let start = Instant::now();
        while self.locks().busy && start.elapsed() < CLEAR_WAIT {
            if self.cancel.sleep(Duration::from_millis(1)) {
                return true;
            }
        }
        false
    }

    /// Whether a chunk should begin with the exclusive lock: at the live
    /// pace in rollback-journal mode, while chunks adapt to a short chunk
    /// time. There a transaction that read first gets no busy wait for the
    /// write lock a chunk holds (`SQLITE_BUSY` at once: ~100 of ~300
    /// writes failed in the benchmark's deferred-write profile), while a
    /// reader kept out waits in its busy handler, for about one chunk. A
    /// chunk fixed by `--batch-size` may be long, and readers then come
    /// first.
    pub(super) fn exclusive(&self) -> bool {
        self.wal.is_none()
            && self.live()
            && self.pace.batch_size.is_none()
            && self.chunk_time() <= EXCLUSIVE_UP_TO
    }

    /// Another connection committed since the last look.
    fn committed(&mut self) -> bool {
        let version = self.read_data_version();
        let moved = version != self.data_version;
        self.data_version = version;
        moved
    }

    fn locks(&mut self) -> super::neighbours::Locks {
        self.neighbours
            .as_mut()
            .map(Neighbours::locks)
            .unwrap_or_default()
    }

    /// The pause after a chunk, counted in its rate and ETA.
    pub(super) fn rest_after(&self, took: Duration) -> Duration {
        if self.one_transaction.is_some() {
            return Duration::ZERO;
        }
        took.mul_f64(self.settings().nice_ratio.max(0.0)) + self.pace.sleep
    }

    /// Says the run is one transaction, made so by `flag` (`--dry-run`,
    /// `--atomic`; see [`Governor::after_chunk`]).
    pub(super) fn in_one_transaction(&mut self, flag: &'static str) {
        self.one_transaction = Some(flag);
    }

    /// Says the chunks are an undo's: the run's, as recorded, which the
    /// pace does not resize, so its messages speak only of the yield.
    pub(super) fn takes_recorded_chunks(&mut self) {
        self.recorded_chunks = true;
    }

    /// Waits while the pause file exists, the throttle query says so, or
    /// the WAL is too big; says so with `throttle` events. True when
    /// cancelled meanwhile.
    pub(super) fn wait_while_braked(&mut self, step: Option<usize>) -> bool {
        let mut waiting: Option<(ThrottleReason, Instant)> = None;
        loop {
            if self.cancel.is_cancelled() {
                if let Some((reason, since)) = waiting {
                    let waited = self.waited(reason, since);
                    self.throttle_event(false, reason, format!("cancelled after {waited}"), step);
                }
                return true;
            }
            let seen = self.cancel.nudges();
            let brake = self.brake();
            match (waiting, brake) {
                (None, None) => return false,
                (Some((reason, since)), None) => {
                    let detail = format!("waited {}", self.waited(reason, since));
                    self.throttle_event(false, reason, detail, step);
                    return false;
                }
                (Some((reason, _)), Some((now, _))) if reason == now => {}
                (old, Some((reason, detail))) => {
                    if let Some((was, since)) = old {
                        let ended = format!("waited {}", self.waited(was, since));
                        self.throttle_event(false, was, ended, step);
                    }
                    self.throttle_event(true, reason, detail, step);
                    waiting = Some((reason, Instant::now()));
                }
            }
            // While it waits, who else uses the file still changes the
            // pace it will go on at: said now, not at the next chunk.
            self.observe(step);
            // A cancel or a live command looks again at once.
            self.cancel.nap(RECHECK, seen);
        }
    }

    /// A wait for `reason` since `since` is over: counted, if a person
    /// held the run, in the time paused, and said in words.
    fn waited(&mut self, reason: ThrottleReason, since: Instant) -> String {
        let took = since.elapsed();
        if reason.pauses() {
            self.paused += took;
        }
        duration(ms(took))
    }

    /// How long a person has held the run in all, to leave out of a rate.
    pub(super) fn paused(&self) -> Duration {
        self.paused
    }

    fn throttle_event(
        &self,
        active: bool,
        reason: ThrottleReason,
        detail: String,
        step: Option<usize>,
    ) {
        self.log.push(Event::Throttle(Throttle {
            active,
            reason,
            detail,
            step,
        }));
    }

    /// Applies pace changes from live commands. Their `control` event has
    /// already said so, as a change to the pace said before it: a change
    /// of pace that no look has said yet (the run went idle while it
    /// waited) is still said by the next one.
    fn steer(&mut self) {
        let patch = self.steering.take_pace();
        self.apply_patch(patch);
    }

    fn apply_patch(&mut self, patch: crate::lifecycle::PacePatch) {
        if patch.is_empty() {
            return;
        }
        if let Some(ms) = patch.chunk_time_ms {
            self.pace.chunk_time = Some(Duration::from_millis(ms));
        }
        if let Some(r) = patch.nice_ratio {
            self.pace.nice_ratio = Some(r);
        }
        if let Some(ms) = patch.sleep_ms {
            self.pace.sleep = Duration::from_millis(ms);
        }
        if let Some(n) = patch.batch_size {
            self.pace.batch_size = n;
        }
        self.announced = patch.apply(self.announced);
        self.size_cache();
    }

    /// The brake that holds the run now, with a word on it.
    fn brake(&mut self) -> Option<(ThrottleReason, String)> {
        self.steer();
        if self.steering.paused() {
            return Some((
                ThrottleReason::Paused,
                "by a live command; resume from the dashboard, batchsse ctl or POST /control"
                    .into(),
            ));
        }
        if let Some(p) = &self.brakes.pause_file
            && p.exists()
        {
            return Some((
                ThrottleReason::PauseFile,
                format!("{} exists; remove it to go on", crate::human::shown_path(p)),
            ));
        }
        if let Some(detail) = self.throttled_by_query() {
            return Some((ThrottleReason::ThrottleQuery, detail));
        }
        self.wal_over().map(|detail| (ThrottleReason::Wal, detail))
    }

    /// Why the throttle query says to wait, if it does.
    fn throttled_by_query(&mut self) -> Option<String> {
        let q = self.throttle.as_mut()?;
        if q.next.is_some_and(|t| Instant::now() < t) {
            return q.last.clone();
        }
        let started = Instant::now();
        let check = q.check(self.cancel);
        q.next = Some(Instant::now() + QUERY_EVERY.max(started.elapsed()));
        let bound = CHECK_BOUND.as_secs();
        let (last, problem) = match check {
            Check::Answer(wait) => (
                wait.then(|| "--throttle-query answered truthy".into()),
                None,
            ),
            Check::Cancelled => return None,
            Check::CutOff => (
                Some(format!(
                    "--throttle-query took over {bound} s and was stopped; checking again"
                )),
                Some(format!(
                    "--throttle-query took over {bound} s and was stopped; the run waits while its checks take that long (is the database overloaded, or does the query need an index?)"
                )),
            ),
            // A broken monitoring query must not stop the batch, nor
            // hold it forever: say so once and go on.
            Check::Failed(text) => (
                None,
                Some(format!(
                    "--throttle-query failed ({text}); not throttling until it works"
                )),
            ),
        };
        q.last = last.clone();
        if let Some(problem) = problem
            && self.query_errors.insert(problem.clone())
        {
            self.log
                .push(Event::message(json!({"db": self.db}), Level::Warn, problem));
        }
        last
    }

    /// In WAL mode, a passive checkpoint after every chunk: its cost is the
    /// batch's, not an application's commit. Never waits for anyone.
    fn checkpoint(&self, _step: usize) {
        if self.wal.is_some() {
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
    }

    /// `Some(detail)` while the `-wal` file is over `--max-wal-mb` and a
    /// truncating checkpoint cannot bring it back (a reader pins it).
    fn wal_over(&self) -> Option<String> {
        let wal = self.wal.as_ref()?;
        let max = self.brakes.max_wal;
        let size = std::fs::metadata(wal).map(|m| m.len()).ok()?;
        if max == 0 || size <= max {
            return None;
        }
        // TRUNCATE waits for readers in the busy handler, blocking new
        // writers meanwhile; without waiting it empties the file now or
        // reports busy at once.
        without_waiting(|| {
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        })
        .ok();
        let size = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
        (size > max).then(|| {
            format!(
                "wal {:.1} MiB > {} MiB",
                size as f64 / f64::from(1 << 20),
                max >> 20
            )
        })
    }
}

/// Not NULL, 0 or ''.
fn truthy(v: &rusqlite::types::Value) -> bool {
    use rusqlite::types::Value::*;
    match v {
        Null => false,
        Integer(n) => *n != 0,
        Real(f) => *f != 0.0,
        Text(t) => !t.is_empty(),
        Blob(b) => !b.is_empty(),
    }
}

/// The `-wal` file, when the database is in WAL mode.
fn wal_file(conn: &Connection, path: Option<&Path>) -> Option<PathBuf> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .ok()?;
    if !mode.eq_ignore_ascii_case("wal") {
        return None;
    }
    let mut name = path?.as_os_str().to_owned();
    name.push("-wal");
    Some(PathBuf::from(name))
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// What a pace means for the chunks, in words: `fixed` chunks (a batch
/// size, `--batch-size` or `ctl set --batch-size`, or an undo's recorded
/// chunks) stay as they are, so only the yield changes; a run that is one
/// transaction (`one_tx`, the flag) never yields.
fn pace_words(live: bool, fixed: bool, one_tx: Option<&str>) -> &'static str {
    match (live, fixed, one_tx.is_some()) {
        (true, false, false) => "short chunks, yielding between them",
        (true, true, false) => "yielding between chunks",
        (true, false, true) => "short chunks, with no yield, since the run is one transaction",
        (true, true, true) => {
            "nothing changes: the chunks keep their size, and a run in one transaction never yields"
        }
        (false, false, _) => "long chunks, no yield",
        (false, true, _) => "no yield between chunks",
    }
}

/// Why the run should begin at the live pace, if it should: someone has
/// the file open or locked, or wrote it lately and may come back, or the
/// system cannot tell who has it open.
fn first_look(n: &mut Neighbours) -> Option<&'static str> {
    let open = n.open_elsewhere();
    if open == Some(true) || n.locks().any {
        Some("another process has the database open")
    } else if open.is_none() {
        // Not taken for idle unseen: see `platform`.
        Some("this system cannot see which processes have the database open")
    } else if n.written_within(RECENT_WRITE) {
        Some(
            "the database was written within the last minute, maybe by an application between its requests",
        )
    } else {
        None
    }
}

/// How long a yield that has lasted `waited` of its `least` sleeps before
/// it looks again at whether others write (`quiet`: nobody has lately);
/// `None` when it is over. It looks every `YIELD_POLL`, but never sleeps
/// past the end it could have: a chunk of 0.2 ms yields about 0.2 ms, not
/// a whole poll. (Rounding every yield up to the poll made a run of
/// 100-row chunks at `--sleep 10` 10% slower, and slower again on a busy
/// machine, where each short sleep wakes late.)
fn yield_nap(waited: Duration, least: Duration, quiet: bool) -> Option<Duration> {
    let most = least.mul_f64(YIELD_STRETCH);
    if waited >= most || (waited >= least && quiet) {
        return None;
    }
    let end = if quiet { least } else { most };
    Some((end - waited).min(YIELD_POLL))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::run::neighbours::tests::{holder, release};

    #[test]
    fn before_a_live_chunk_the_run_waits_while_another_process_is_in_a_transaction() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("g.sqlite");
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
            .expect("table");
        let (log, cancel, steering) = (EventLog::new(), Cancel::default(), Steering::default());
        let pace = (Pace::default(), Brakes::default());
        let mut g = Governor::new(&conn, &log, (&cancel, &steering), pace.0, pace.1);
        assert!(g.live(), "a file written just now is live");
        // Another process inside a transaction: the chunk waits, up to
        // CLEAR_WAIT, then goes on.
        let Some(reader) = holder(&path, "BEGIN; SELECT * FROM t") else {
            return;
        };
        let t0 = Instant::now();
        assert!(!g.before_chunk());
        assert!(t0.elapsed() >= CLEAR_WAIT, "waited {:?}", t0.elapsed());
        // A cancel is seen only inside the wait: true while it waits,
        // false (no wait at all) once the transaction is over.
        cancel.cancel();
        assert!(g.before_chunk(), "cancelled while waiting");
        release(reader);
        let Some(idle) = holder(&path, "SELECT * FROM t") else {
            return;
        };
        assert!(!g.before_chunk(), "no transaction, no wait");
        release(idle);
    }

    #[test]
    fn a_yield_sleeps_no_longer_than_it_has_left() {
        let ms = |n: f64| Duration::from_secs_f64(n / 1000.0);
        // Nobody writing: a short yield is its own length, a long one is
        // looked at every poll, and it ends at `least`.
        assert_eq!(yield_nap(ms(0.0), ms(0.2), true), Some(ms(0.2)));
        assert_eq!(yield_nap(ms(0.0), ms(10.0), true), Some(YIELD_POLL));
        assert_eq!(yield_nap(ms(9.5), ms(10.0), true), Some(ms(0.5)));
        assert_eq!(yield_nap(ms(10.0), ms(10.0), true), None);
        // Others writing: it goes on past `least`, to the stretch at most.
        assert_eq!(yield_nap(ms(10.0), ms(10.0), false), Some(YIELD_POLL));
        assert_eq!(yield_nap(ms(19.5), ms(10.0), false), Some(ms(0.5)));
        assert_eq!(yield_nap(ms(20.0), ms(10.0), false), None);
    }

    /// The settings every pace `message` carried, in order.
    fn said(log: &EventLog) -> Vec<Settings> {
        log.after(0)
            .iter()
            .filter_map(|e| match &e.event {
                Event::Message(m) => serde_json::from_value(m.target.get("settings")?.clone()).ok(),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_pace_set_before_the_start_is_the_start_s_pace() {
        let dir = tempfile::tempdir().expect("dir");
        let conn = Connection::open(dir.path().join("g.sqlite")).expect("open");
        conn.execute_batch("CREATE TABLE t(x)").expect("table");
        let (log, cancel, steering) = (EventLog::new(), Cancel::default(), Steering::default());
        // `ctl set` while the run gets ready (an undo checks its record
        // before its `start`): the command is taken, not yet applied.
        steering.change_pace_logged(
            crate::lifecycle::PacePatch {
                nice_ratio: Some(0.0),
                sleep_ms: Some(5),
                ..Default::default()
            },
            None,
            || true,
        );
        let pace = (Pace::default(), Brakes::default());
        let mut g = Governor::new(&conn, &log, (&cancel, &steering), pace.0, pace.1);
        assert!(g.live(), "a file written just now starts at the live pace");
        let start = g.say_start(|settings| settings);
        assert_eq!((start.nice_ratio, start.sleep_ms), (0.0, 5));
        assert_eq!(g.settings(), start);
    }

    #[test]
    fn a_pace_command_taken_after_the_run_went_idle_unseen_leaves_the_change_said() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("g.sqlite");
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch("CREATE TABLE t(x)").expect("table");
        let (log, cancel, steering) = (EventLog::new(), Cancel::default(), Steering::default());
        let pace = (Pace::default(), Brakes::default());
        let mut g = Governor::new(&conn, &log, (&cancel, &steering), pace.0, pace.1);
        assert!(g.live(), "a file written just now is live");
        // Paused past the quiet time: no chunk ran, so no look said the
        // run went idle. A command comes, and the wait takes it.
        g.seen_at = None;
        steering.change_pace_logged(
            crate::lifecycle::PacePatch {
                sleep_ms: Some(20),
                ..Default::default()
            },
            None,
            || true,
        );
        assert_eq!(g.brake(), None);
        // The `control` event told the live pace with the new sleep; the
        // first look after the wait must say the idle one.
        g.observe(None);
        let now = g.settings();
        assert_eq!((now.chunk_time_ms, now.sleep_ms), (250, 20));
        assert_eq!(said(&log).last(), Some(&now), "{:?}", said(&log));
    }
}
