//! The runner: applies a checked plan to the database on a blocking thread
//! and reports every step as typed events in the log. It knows nothing of
//! HTTP or terminals.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use fallible_iterator::FallibleIterator;
use rusqlite::{Batch, Connection, InterruptHandle, OpenFlags, OptionalExtension, named_params};
use serde_json::json;

use crate::checkpoint::{self, Resume};
use crate::error::UsageError;
use crate::event::{
    Event, Finished, Level, Progress, RunStatus, Start, Step as StepEvent, StepInfo, StepKind,
    StepState,
};
use crate::event_log::EventLog;
use crate::plan::{self, Chunk, Key, Plan, Step, quote, sqlite_message};

/// How a run behaves, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub dry_run: bool,
    pub atomic: bool,
    /// Fixes every chunk's size, turning adaptation off.
    pub batch_size: Option<u64>,
    pub chunk_time: Duration,
    pub sleep: Duration,
    pub checkpoint: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dry_run: false,
            atomic: false,
            batch_size: None,
            chunk_time: Duration::from_millis(250),
            sleep: Duration::ZERO,
            checkpoint: true,
        }
    }
}

/// The largest chunk adaptation will choose.
const MAX_CHUNK: u64 = 1_000_000;

/// Opens an existing database read-write (never creating one) and checks it
/// is a SQLite file we may write.
pub fn open_db(path: &Path, busy_timeout: Duration) -> Result<Connection, UsageError> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(_) => {
            return Err(UsageError::new(format!(
                "no such database: {shown} (batchsse never creates one; check the path)"
            )));
        }
        Ok(m) if !m.is_file() => {
            return Err(UsageError::new(format!(
                "{shown} is not a file; --db takes a SQLite database file"
            )));
        }
        Ok(_) => {}
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| UsageError::new(format!("cannot open {shown}: {}", sqlite_message(&e))))?;
    conn.busy_timeout(busy_timeout)
        .map_err(|e| UsageError::new(format!("cannot set the busy timeout: {e}")))?;
    let locked = || {
        UsageError::new(format!(
            "{shown} is locked by another connection{}, still after --busy-timeout {} ms; wait for it to finish or raise --busy-timeout",
            lock_holders(path),
            busy_timeout.as_millis()
        ))
    };
    let is_lock = |e: &rusqlite::Error| {
        matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    };
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| {
        if is_lock(&e) {
            locked()
        } else {
            UsageError::new(format!("{shown}: {}", plan::db_open_message(&e)))
        }
    })?;
    let read_only = || {
        UsageError::new(format!(
            "{shown} is read-only; batchsse needs write access to the file and its directory (for the journal)"
        ))
    };
    if conn.is_readonly("main").unwrap_or(false) {
        return Err(read_only());
    }
    // Take the write lock once (and let it go) so a database another
    // process holds is reported now, before anything runs, not mid-plan.
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK") {
        return Err(match e.sqlite_error_code() {
            _ if is_lock(&e) => locked(),
            Some(rusqlite::ErrorCode::ReadOnly) => read_only(),
            _ => UsageError::new(format!("{shown}: {}", plan::db_open_message(&e))),
        });
    }
    Ok(conn)
}

/// Names the other processes that have the database (or its journal) open,
/// as far as /proc tells; empty where it cannot.
fn lock_holders(path: &Path) -> String {
    let Ok(db) = std::fs::canonicalize(path) else {
        return String::new();
    };
    let me = std::process::id().to_string();
    let mut holders = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return String::new();
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| {
                target == db || target.to_string_lossy().starts_with(&*db.to_string_lossy())
            })
        });
        if holds {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            holders.push(format!("pid {pid} ({})", comm.trim()));
        }
    }
    if holders.is_empty() {
        String::new()
    } else {
        format!(" (open in {})", holders.join(", "))
    }
}

/// An error met while running: SQLite's text, and for a lock another
/// process held past the busy timeout, who holds it and what to do, as
/// [`open_db`] says before the run.
fn run_time_message(conn: &Connection, e: &rusqlite::Error) -> String {
    if e.sqlite_error_code() != Some(rusqlite::ErrorCode::DatabaseBusy) {
        return sqlite_message(e);
    }
    let holders = conn
        .path()
        .map(|p| lock_holders(Path::new(p)))
        .unwrap_or_default();
    // The connection's own setting: --busy-timeout, unless a plan's PRAGMA
    // changed it.
    let waited: i64 = conn
        .pragma_query_value(None, "busy_timeout", |r| r.get(0))
        .unwrap_or(0);
    format!(
        "{} by another connection{holders}, still after --busy-timeout {waited} ms; wait for it to finish or raise --busy-timeout",
        sqlite_message(e)
    )
}

/// Cancellation shared between the signal handler and the runner: a flag,
/// SQLite's interrupt for the running statement, and a wake-up for sleeps.
#[derive(Default)]
pub struct Cancel {
    flag: AtomicBool,
    interrupt: Mutex<Option<InterruptHandle>>,
    wake: Condvar,
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let guard = self.interrupt.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = guard.as_ref() {
            h.interrupt();
        }
        self.wake.notify_all();
    }

    fn attach(&self, conn: &Connection) {
        *self.interrupt.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(conn.get_interrupt_handle());
    }

    /// Sleeps up to `d`; true when woken by cancellation.
    pub fn sleep(&self, d: Duration) -> bool {
        // A huge --sleep is "until cancelled", not an overflow.
        let far = Duration::from_secs(100 * 365 * 24 * 3600);
        let deadline = Instant::now() + d.min(far);
        let mut guard = self.interrupt.lock().unwrap_or_else(|p| p.into_inner());
        while !self.is_cancelled() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            guard = self
                .wake
                .wait_timeout(guard, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        self.is_cancelled()
    }
}

enum StepError {
    Cancelled,
    Sql(String),
}

struct Outcome {
    done: u64,
    total: u64,
    changed: u64,
}

/// Runs the plan and logs every event up to `finished`; returns the status.
/// `gate` is called after `start` and blocks until the first step may begin.
pub fn run(
    conn: &Connection,
    plan: &Plan,
    opts: &Options,
    resume: &Resume,
    log: &EventLog,
    cancel: &Cancel,
    gate: impl FnOnce(),
) -> RunStatus {
    cancel.attach(conn);
    let mut r = Runner {
        conn,
        plan,
        opts,
        log,
        cancel,
        db: db_name(conn),
        started: Instant::now(),
        outer_tx: opts.atomic || opts.dry_run,
    };
    let (status, steps_done, rows_changed, error) = r.run_all(resume, gate);
    log.push(Event::Finished(Finished {
        status,
        steps_done,
        steps_total: plan.steps.len(),
        rows_changed,
        elapsed_ms: ms(r.started.elapsed()),
        dry_run: opts.dry_run,
        error,
    }));
    status
}

fn db_name(conn: &Connection) -> String {
    conn.path()
        .and_then(|p| Path::new(p).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "database".into())
}

struct Runner<'a> {
    conn: &'a Connection,
    plan: &'a Plan,
    opts: &'a Options,
    log: &'a EventLog,
    cancel: &'a Cancel,
    db: String,
    started: Instant,
    /// With --atomic or --dry-run the whole run is one transaction and each
    /// step a savepoint inside it.
    outer_tx: bool,
}

impl Runner<'_> {
    fn message(&self, step: Option<usize>, level: Level, text: impl Into<String>) {
        let target = match step {
            Some(i) => json!({"db": self.db, "step": i}),
            None => json!({"db": self.db}),
        };
        self.log.push(Event::message(target, level, text));
    }

    fn run_all(
        &mut self,
        resume: &Resume,
        gate: impl FnOnce(),
    ) -> (RunStatus, usize, u64, Option<String>) {
        let plan = self.plan;
        self.log.push(Event::Start(Start {
            run_id: run_id(),
            plan: plan.name.clone(),
            db: self.db.clone(),
            steps: plan
                .steps
                .iter()
                .map(|s| StepInfo {
                    index: s.index,
                    name: s.name.clone(),
                    kind: if s.chunk.is_some() {
                        StepKind::Chunked
                    } else {
                        StepKind::Sql
                    },
                })
                .collect(),
            dry_run: self.opts.dry_run,
            resumed: resume.resumed(),
        }));
        if self.opts.dry_run {
            self.message(
                None,
                Level::Info,
                "dry run: every step runs for real inside one transaction that is rolled back at the end; nothing will be written",
            );
        }
        if resume.already_applied(plan) {
            self.message(
                None,
                Level::Info,
                format!(
                    "plan {:?} was already applied to {}; nothing to do (use --force to run it again)",
                    plan.name, self.db
                ),
            );
        } else if resume.resumed() {
            self.message(None, Level::Info, resume.describe(plan));
        }
        gate();
        self.started = Instant::now();
        if self.cancel.is_cancelled() {
            return (
                RunStatus::Cancelled,
                0,
                0,
                Some("interrupted before the first step".into()),
            );
        }
        if self.outer_tx
            && let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE")
        {
            let msg = format!(
                "cannot start the run's transaction: {}",
                run_time_message(self.conn, &e)
            );
            self.message(None, Level::Error, msg.clone());
            return (RunStatus::Failed, 0, 0, Some(msg));
        }
        if resume.forced()
            && let Err(e) = checkpoint::reset(self.conn, plan, self.opts)
        {
            let msg = format!(
                "cannot clear the old checkpoint for --force: {}",
                sqlite_message(&e)
            );
            self.message(None, Level::Error, msg.clone());
            return (RunStatus::Failed, 0, 0, Some(msg));
        }
        let mut steps_done = 0;
        let mut rows_changed = 0;
        let mut end: Option<(RunStatus, String)> = None;
        for step in &plan.steps {
            if self.cancel.is_cancelled() {
                end = Some((RunStatus::Cancelled, "interrupted between steps".into()));
                break;
            }
            // PRAGMA and ATTACH set up this connection only, so a resumed
            // run does them again (unless there is nothing left to do).
            if resume.is_done(step) && (!step.sets_up_connection() || resume.already_applied(plan))
            {
                self.log.push(Event::Step(StepEvent {
                    index: step.index,
                    name: step.name.clone(),
                    state: StepState::Skipped,
                    done: 0,
                    total: 0,
                    changed: 0,
                    elapsed_ms: 0,
                    error: None,
                }));
                steps_done += 1;
                continue;
            }
            let t0 = Instant::now();
            self.step_event(step, StepState::Running, 0, 0, 0, t0, None);
            let result = match &step.chunk {
                None => self.run_plain(step),
                Some(chunk) => self.run_chunked(step, chunk, resume),
            };
            match result {
                Ok(o) => {
                    rows_changed += o.changed;
                    steps_done += 1;
                    self.step_event(step, StepState::Done, o.done, o.total, o.changed, t0, None);
                }
                Err((err, o)) => {
                    let (status, text) = match err {
                        StepError::Cancelled => (
                            RunStatus::Cancelled,
                            format!(
                                "interrupted during step {} ({:?}); its current chunk was rolled back{}",
                                step.index + 1,
                                step.name,
                                if o.changed > 0 && !self.outer_tx {
                                    format!(", {} rows from earlier chunks are kept", o.changed)
                                } else {
                                    String::new()
                                }
                            ),
                        ),
                        StepError::Sql(e) => (
                            RunStatus::Failed,
                            format!("step {} ({:?}) failed: {e}", step.index + 1, step.name),
                        ),
                    };
                    rows_changed += o.changed;
                    self.step_event(
                        step,
                        StepState::Failed,
                        o.done,
                        o.total,
                        o.changed,
                        t0,
                        Some(text.clone()),
                    );
                    self.message(Some(step.index), Level::Error, text.clone());
                    end = Some((status, text));
                    break;
                }
            }
        }
        if self.outer_tx {
            let (status, rows) = self.end_outer(end.is_some(), rows_changed);
            if let Some(e) = status {
                end = Some(e);
            }
            rows_changed = rows;
        }
        match end {
            None => (RunStatus::Ok, steps_done, rows_changed, None),
            Some((status, text)) => (status, steps_done, rows_changed, Some(text)),
        }
    }

    /// Ends the run-wide transaction: rolled back for a dry run or after a
    /// failure, committed otherwise.
    fn end_outer(&self, failed: bool, rows: u64) -> (Option<(RunStatus, String)>, u64) {
        if self.opts.dry_run || failed {
            let _ = self.conn.execute_batch("ROLLBACK");
            let text = if self.opts.dry_run {
                format!(
                    "dry run finished: {} rows would change; rolled back, nothing was written",
                    crate::terminal::thousands(rows)
                )
            } else {
                "--atomic: the whole run was rolled back; the database is as it was before".into()
            };
            self.message(None, Level::Info, text);
            return (None, if self.opts.dry_run { rows } else { 0 });
        }
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => (None, rows),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                let text = format!(
                    "the run's transaction could not commit and was rolled back: {}",
                    run_time_message(self.conn, &e)
                );
                self.message(None, Level::Error, text.clone());
                (Some((RunStatus::Failed, text)), 0)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn step_event(
        &self,
        step: &Step,
        state: StepState,
        done: u64,
        total: u64,
        changed: u64,
        t0: Instant,
        error: Option<String>,
    ) {
        self.log.push(Event::Step(StepEvent {
            index: step.index,
            name: step.name.clone(),
            state,
            done,
            total,
            changed,
            elapsed_ms: ms(t0.elapsed()),
            error,
        }));
    }

    fn begin(&self) -> rusqlite::Result<()> {
        self.conn.execute_batch(if self.outer_tx {
            "SAVEPOINT batchsse_step"
        } else {
            "BEGIN IMMEDIATE"
        })
    }

    fn commit(&self) -> rusqlite::Result<()> {
        self.conn.execute_batch(if self.outer_tx {
            "RELEASE batchsse_step"
        } else {
            "COMMIT"
        })
    }

    fn rollback(&self) {
        let sql = if self.outer_tx {
            "ROLLBACK TO batchsse_step; RELEASE batchsse_step"
        } else {
            "ROLLBACK"
        };
        if !self.conn.is_autocommit() || self.outer_tx {
            let _ = self.conn.execute_batch(sql);
        }
    }

    fn error(&self, e: &rusqlite::Error) -> StepError {
        if self.cancel.is_cancelled()
            || e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted)
        {
            StepError::Cancelled
        } else {
            StepError::Sql(run_time_message(self.conn, e))
        }
    }

    fn run_plain(&self, step: &Step) -> Result<Outcome, (StepError, Outcome)> {
        let none = || Outcome {
            done: 0,
            total: 0,
            changed: 0,
        };
        let in_tx = !step.autocommit;
        if in_tx {
            self.begin().map_err(|e| (self.error(&e), none()))?;
        }
        if in_tx {
            match checkpoint::moved(self.conn, self.plan, step, self.opts, None) {
                Ok(false) => {}
                Ok(true) => {
                    self.rollback();
                    return Err((StepError::Sql(checkpoint::conflict(self.plan)), none()));
                }
                Err(e) => {
                    self.rollback();
                    return Err((self.error(&e), none()));
                }
            }
        }
        let result = (|| -> rusqlite::Result<u64> {
            let mut changed = 0;
            let mut batch = Batch::new(self.conn, &step.sql);
            while let Some(mut stmt) = batch.next()? {
                // The check before the run refuses parameters, unless its
                // schema copy could not compile the statement (after an
                // ATTACH, say): never let one run as NULL.
                if let Some(names) = plan::parameter_names(&stmt) {
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                        Some(format!(
                            "the statement uses {names}, which nothing binds (only chunked steps get :lo and :hi); write the value into the SQL"
                        )),
                    ));
                }
                let before = self.conn.total_changes();
                let mut rows = stmt.raw_query();
                while rows.next()?.is_some() {}
                drop(rows);
                // changes() keeps its old value after DDL; count only when
                // this statement really changed rows.
                if self.conn.total_changes() != before {
                    changed += self.conn.changes();
                }
            }
            if in_tx {
                checkpoint::record_step(self.conn, self.plan, step, self.opts, changed)?;
            }
            Ok(changed)
        })();
        match result {
            Ok(changed) => {
                if self.cancel.is_cancelled() && in_tx {
                    self.rollback();
                    return Err((StepError::Cancelled, none()));
                }
                if in_tx {
                    self.commit().map_err(|e| {
                        self.rollback();
                        (self.error(&e), none())
                    })?;
                } else {
                    checkpoint::record_step(self.conn, self.plan, step, self.opts, changed)
                        .map_err(|e| (self.error(&e), none()))?;
                }
                Ok(Outcome {
                    done: changed,
                    total: changed,
                    changed,
                })
            }
            Err(e) => {
                if in_tx {
                    self.rollback();
                }
                Err((self.error(&e), none()))
            }
        }
    }

    fn run_chunked(
        &self,
        step: &Step,
        chunk: &Chunk,
        resume: &Resume,
    ) -> Result<Outcome, (StepError, Outcome)> {
        let t0 = Instant::now();
        let table = quote(&chunk.table);
        let key = &chunk.key_sql;
        let mut o = Outcome {
            done: 0,
            total: 0,
            changed: 0,
        };
        // One query each: SQLite's fast paths (the b-tree count of a bare
        // `count(*)`, an index seek for `max`) apply only to a query that
        // asks for nothing else; together they cost a full scan.
        // Counting reads every page of the table; through a memory map that
        // is several times faster than a read() per page. The map is only
        // for these queries (which hold a shared lock, so no SQLite writer
        // can shrink the file under them): the step's own SQL runs with
        // SQLite's defaults.
        let _ = self.conn.execute_batch("PRAGMA mmap_size = 2147418112");
        let counts = (|| -> rusqlite::Result<(i64, i64, Key)> {
            let one = |sql: String| self.conn.query_row(&sql, [], |r| r.get::<_, Key>(0));
            let int = |k: Key| if let Key::Integer(n) = k { n } else { 0 };
            let all = int(one(format!("SELECT count(*) FROM {table}"))?);
            let with_key = if chunk.rowid {
                all
            } else {
                int(one(format!(
                    "SELECT count(*) FROM {table} WHERE {key} IS NOT NULL"
                ))?)
            };
            let max = one(format!("SELECT max({key}) FROM {table}"))?;
            Ok((with_key, all - with_key, max))
        })();
        let _ = self.conn.execute_batch("PRAGMA mmap_size = 0");
        let (total, nulls, max_key) = match counts {
            Ok(c) => c,
            Err(e) => return Err((self.error(&e), o)),
        };
        o.total = total.max(0) as u64;
        if nulls > 0 {
            self.message(
                Some(step.index),
                Level::Warn,
                format!(
                    "{nulls} rows of {} have a NULL {} and are not visited",
                    chunk.table, chunk.key
                ),
            );
        }
        let mut prev: Option<Key> = None;
        if let Some(cp) = resume.chunk_position(step) {
            prev = Some(cp.last_key.clone());
            o.done = cp.done;
            o.changed = cp.changed;
            o.total = o.total.max(cp.done);
            self.message(
                Some(step.index),
                Level::Info,
                format!(
                    "resuming after {} rows already committed ({} changed)",
                    cp.done, cp.changed
                ),
            );
        }
        let resumed_from = o.done;
        let first_size = self.opts.batch_size.unwrap_or(chunk.size).max(1);
        self.message(
            Some(step.index),
            Level::Info,
            format!(
                "{} rows of {} to visit by {}, {} first chunk of {}",
                crate::terminal::thousands(o.total.saturating_sub(o.done)),
                chunk.table,
                chunk.key,
                if self.opts.batch_size.is_some() {
                    "fixed chunks,"
                } else {
                    "adaptive chunks,"
                },
                first_size
            ),
        );
        if matches!(max_key, Key::Null) {
            // Nothing to visit; still record the step as applied.
            let r = self.begin().and_then(|()| {
                checkpoint::finish_chunked(self.conn, self.plan, step, self.opts, 0, 0)
            });
            return match r.and_then(|()| self.commit()) {
                Ok(()) => Ok(o),
                Err(e) => {
                    self.rollback();
                    Err((self.error(&e), o))
                }
            };
        }
        let prepared = (|| {
            Ok::<_, rusqlite::Error>((
                Keyset::new(
                    self.conn,
                    &table,
                    key,
                    if chunk.rowid {
                        dense_from(self.conn, &table, key, o.total)?
                    } else {
                        None
                    },
                )?,
                self.conn.prepare(&step.sql)?,
            ))
        })();
        let (mut keyset, mut work) = match prepared {
            Ok(p) => p,
            Err(e) => return Err((self.error(&e), o)),
        };
        let mut size = first_size;
        let mut ewma: Option<f64> = None;
        loop {
            if self.cancel.is_cancelled() {
                return Err((StepError::Cancelled, o));
            }
            let c0 = Instant::now();
            if let Err(e) = self.begin() {
                return Err((self.error(&e), o));
            }
            match checkpoint::moved(self.conn, self.plan, step, self.opts, prev.as_ref()) {
                Ok(false) => {}
                Ok(true) => {
                    self.rollback();
                    return Err((StepError::Sql(checkpoint::conflict(self.plan)), o));
                }
                Err(e) => {
                    self.rollback();
                    return Err((self.error(&e), o));
                }
            }
            let chunk_result = (|| -> rusqlite::Result<Option<(Key, u64, u64)>> {
                let (lo, hi, n) = keyset.next(prev.as_ref(), &max_key, size)?;
                if n == 0 {
                    // Rows past the last chunk were deleted meanwhile.
                    checkpoint::finish_chunked(
                        self.conn, self.plan, step, self.opts, o.done, o.changed,
                    )?;
                    return Ok(None);
                }
                let changed = work.execute(named_params! {":lo": lo, ":hi": hi})? as u64;
                let (done, total_changed) = (o.done + n, o.changed + changed);
                if hi == max_key {
                    checkpoint::finish_chunked(
                        self.conn,
                        self.plan,
                        step,
                        self.opts,
                        done,
                        total_changed,
                    )?;
                } else {
                    checkpoint::record_chunk(
                        self.conn,
                        self.plan,
                        step,
                        self.opts,
                        &hi,
                        done,
                        total_changed,
                    )?;
                }
                Ok(Some((hi, n, changed)))
            })();
            let (hi, n, changed) = match chunk_result {
                Ok(Some(v)) => v,
                Ok(None) => {
                    if let Err(e) = self.commit() {
                        self.rollback();
                        return Err((self.error(&e), o));
                    }
                    break;
                }
                Err(e) => {
                    self.rollback();
                    return Err((self.error(&e), o));
                }
            };
            if self.cancel.is_cancelled() {
                self.rollback();
                return Err((StepError::Cancelled, o));
            }
            if let Err(e) = self.commit() {
                self.rollback();
                return Err((self.error(&e), o));
            }
            o.done += n;
            o.changed += changed;
            o.total = o.total.max(o.done);
            let last = hi == max_key;
            prev = Some(hi);
            let work_time = c0.elapsed().as_secs_f64().max(1e-6);
            if self.opts.batch_size.is_none() {
                let rate = n as f64 / work_time;
                let avg = ewma.map_or(rate, |a| 0.3 * rate + 0.7 * a);
                ewma = Some(avg);
                let target = (avg * self.opts.chunk_time.as_secs_f64()) as u64;
                size = target.clamp(1, size.saturating_mul(4).min(MAX_CHUNK));
            }
            // The pause after this chunk is part of the pace; counting it
            // now keeps the first rate and ETA of a paced run honest.
            let pause = if last {
                Duration::ZERO
            } else {
                self.opts.sleep
            };
            self.progress(step, &o, t0, resumed_from, pause);
            if last {
                break;
            }
            if !self.opts.sleep.is_zero() && self.cancel.sleep(self.opts.sleep) {
                return Err((StepError::Cancelled, o));
            }
        }
        Ok(o)
    }

    /// `resumed_from`: rows an earlier run already did, which this run's
    /// rate must not count. `pause`: the `--sleep` about to follow, counted
    /// in the rate (and so the ETA) as if it had passed.
    fn progress(&self, step: &Step, o: &Outcome, t0: Instant, resumed_from: u64, pause: Duration) {
        let elapsed = t0.elapsed();
        let rate =
            o.done.saturating_sub(resumed_from) as f64 / (elapsed + pause).as_secs_f64().max(1e-6);
        let left = o.total.saturating_sub(o.done);
        let percent = if o.total == 0 {
            100.0
        } else {
            (o.done as f64 * 100.0 / o.total as f64).min(100.0)
        };
        self.log.push(Event::Progress(Progress {
            step: step.index,
            name: step.name.clone(),
            done: o.done,
            total: o.total,
            changed: o.changed,
            percent: (percent * 10.0).round() / 10.0,
            rate: rate.round(),
            eta_ms: (rate > 0.0).then(|| (left as f64 / rate * 1000.0) as u64),
            elapsed_ms: ms(elapsed),
        }));
    }
}

/// Finds each chunk's keys by keyset pagination. `hi` is found with one
/// `LIMIT 1 OFFSET size-1` probe from the previous chunk's last key: SQLite
/// steps over the keys without decoding rows, several times cheaper than
/// aggregating the chunk. Needs a unique key, which the plan checks.
struct Keyset<'c> {
    /// The smallest rowid when the rowids are dense (`max - min + 1` equals
    /// the row count): chunk boundaries are then plain arithmetic.
    dense_min: Option<i64>,
    /// `[first chunk, later chunks]` of each query.
    lo: [rusqlite::Statement<'c>; 2],
    hi: [rusqlite::Statement<'c>; 2],
    count: [rusqlite::Statement<'c>; 2],
}

impl<'c> Keyset<'c> {
    fn new(
        conn: &'c Connection,
        table: &str,
        key: &str,
        dense_min: Option<i64>,
    ) -> rusqlite::Result<Self> {
        // ?1 is the previous chunk's last key (unused for the first chunk),
        // ?2 the largest key when the step began.
        let from = [
            format!("{key} IS NOT NULL AND ?1 IS NULL"),
            format!("{key} > ?1"),
        ];
        let prep = |i: usize, what: &str, tail: &str| {
            conn.prepare(&format!(
                "SELECT {what} FROM {table} WHERE {} AND {key} <= ?2 {tail}",
                from[i]
            ))
        };
        let order = format!("ORDER BY {key}");
        Ok(Keyset {
            dense_min,
            lo: [
                prep(0, key, &format!("{order} LIMIT 1"))?,
                prep(1, key, &format!("{order} LIMIT 1"))?,
            ],
            hi: [
                prep(0, key, &format!("{order} LIMIT 1 OFFSET ?3"))?,
                prep(1, key, &format!("{order} LIMIT 1 OFFSET ?3"))?,
            ],
            count: [prep(0, "count(*)", "")?, prep(1, "count(*)", "")?],
        })
    }

    /// The next chunk after `prev`: `(lo, hi, rows)`, rows = 0 at the end.
    fn next(
        &mut self,
        prev: Option<&Key>,
        max: &Key,
        size: u64,
    ) -> rusqlite::Result<(Key, Key, u64)> {
        if let (Some(min), Key::Integer(max)) = (self.dense_min, max) {
            let lo = match prev {
                None => Some(min),
                Some(Key::Integer(p)) => p.checked_add(1),
                Some(_) => None,
            };
            let Some(lo) = lo.filter(|lo| lo <= max) else {
                return Ok((Key::Null, Key::Null, 0));
            };
            let span = i64::try_from(size).unwrap_or(i64::MAX).max(1) - 1;
            let hi = lo.saturating_add(span).min(*max);
            return Ok((Key::Integer(lo), Key::Integer(hi), (hi - lo + 1) as u64));
        }
        let i = usize::from(prev.is_some());
        let prev = prev.unwrap_or(&Key::Null);
        let lo: Option<Key> = self.lo[i]
            .query_row(rusqlite::params![prev, max], |r| r.get(0))
            .optional()?;
        let Some(lo) = lo else {
            return Ok((Key::Null, Key::Null, 0));
        };
        let offset = size.saturating_sub(1).min(i64::MAX as u64) as i64;
        let hi: Option<Key> = self.hi[i]
            .query_row(rusqlite::params![prev, max, offset], |r| r.get(0))
            .optional()?;
        match hi {
            Some(hi) => Ok((lo, hi, size)),
            // Fewer than `size` keys are left: the chunk runs to the end.
            None => {
                let n: i64 = self.count[i].query_row(rusqlite::params![prev, max], |r| r.get(0))?;
                Ok((lo, max.clone(), n.max(0) as u64))
            }
        }
    }
}

/// For a rowid walk (`key` names the real rowid), the smallest rowid if
/// the rowids have no gaps. Rows
/// deleted during the run then still count as visited, which only shows in
/// `done`; every key in range is covered either way.
fn dense_from(
    conn: &Connection,
    table: &str,
    key: &str,
    total: u64,
) -> rusqlite::Result<Option<i64>> {
    if total == 0 {
        return Ok(None);
    }
    // Two subqueries, so each is an index seek rather than one full scan.
    let (min, max): (Option<i64>, Option<i64>) = conn.query_row(
        &format!("SELECT (SELECT min({key}) FROM {table}), (SELECT max({key}) FROM {table})"),
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(match (min, max) {
        (Some(lo), Some(hi))
            if hi.checked_sub(lo).and_then(|d| d.checked_add(1)) == i64::try_from(total).ok() =>
        {
            Some(lo)
        }
        _ => None,
    })
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}-{:x}", nanos, std::process::id())
}

/// Refuses option combinations the plan cannot honour.
pub fn check(plan: &Plan, opts: &Options) -> Result<(), UsageError> {
    if (opts.atomic || opts.dry_run)
        && let Some(s) = plan.steps.iter().find(|s| s.autocommit)
    {
        return Err(UsageError::new(format!(
            "step {} ({:?}) must run outside a transaction, so it cannot be part of {}; remove the step or the flag",
            s.index + 1,
            s.name,
            if opts.dry_run {
                "--dry-run"
            } else {
                "--atomic"
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Source;

    struct Ran {
        status: RunStatus,
        events: Vec<Event>,
        conn: Connection,
        _dir: tempfile::TempDir,
    }

    impl Ran {
        fn progress(&self) -> Vec<&Progress> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    Event::Progress(p) => Some(p),
                    _ => None,
                })
                .collect()
        }

        fn step(&self, state: StepState) -> Vec<&StepEvent> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    Event::Step(s) if s.state == state => Some(s),
                    _ => None,
                })
                .collect()
        }

        fn int(&self, sql: &str) -> i64 {
            self.conn.query_row(sql, [], |r| r.get(0)).unwrap()
        }
    }

    fn run_plan(setup: &str, plan: &str, opts: Options) -> Ran {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch(setup)
            .unwrap();
        let conn = open_db(&path, Duration::from_secs(1)).unwrap();
        let plan = plan::prepare(
            &Source::Json {
                name: "p".into(),
                text: plan.into(),
            },
            &conn,
        )
        .unwrap();
        let log = EventLog::new();
        let status = run(
            &conn,
            &plan,
            &opts,
            &Resume::none(),
            &log,
            &Cancel::new(),
            || {},
        );
        let events = log.after(0).iter().map(|e| e.event.clone()).collect();
        Ran {
            status,
            events,
            conn,
            _dir: dir,
        }
    }

    fn fixed(size: u64) -> Options {
        Options {
            batch_size: Some(size),
            ..Options::default()
        }
    }

    const BUMP: &str = r#"{"steps":[{"sql":"UPDATE t SET c = c + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","key":"id"}}]}"#;

    #[test]
    fn sparse_keys_are_each_visited_once_in_chunks_of_the_given_size() {
        let r = run_plan(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, c INT DEFAULT 0);
             INSERT INTO t(id) VALUES (3),(4),(100),(1000),(1001),(50000),(50001),(9000000);",
            BUMP,
            fixed(3),
        );
        assert_eq!(r.status, RunStatus::Ok);
        let done: Vec<u64> = r.progress().iter().map(|p| p.done).collect();
        assert_eq!(done, [3, 6, 8]);
        assert!(
            r.progress()
                .iter()
                .all(|p| p.total == 8 && p.percent <= 100.0)
        );
        assert_eq!(r.int("SELECT count(*) FROM t WHERE c = 1"), 8);
        assert_eq!(r.int("SELECT count(*) FROM t WHERE c <> 1"), 0);
        let done = r.step(StepState::Done);
        assert_eq!((done[0].done, done[0].total, done[0].changed), (8, 8, 8));
    }

    #[test]
    fn dense_rowids_chunk_by_arithmetic_with_the_same_boundaries() {
        let r = run_plan(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, c INT DEFAULT 0);
             INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 5 UNION ALL SELECT i+1 FROM s WHERE i < 1004) SELECT i FROM s;",
            BUMP,
            fixed(300),
        );
        assert_eq!(r.status, RunStatus::Ok);
        let done: Vec<u64> = r.progress().iter().map(|p| p.done).collect();
        assert_eq!(done, [300, 600, 900, 1000]);
        assert_eq!(r.int("SELECT count(*) FROM t WHERE c = 1"), 1000);
        assert_eq!(r.int("SELECT count(*) FROM t WHERE c <> 1"), 0);
    }

    #[test]
    fn an_integer_primary_key_desc_is_walked_by_its_own_values_not_rowid() {
        // Not a rowid alias: binding rowids to :lo/:hi would change nothing.
        let r = run_plan(
            "CREATE TABLE t(id INTEGER PRIMARY KEY DESC, c INT DEFAULT 0);
             INSERT INTO t(id) VALUES (100),(200),(300),(400);",
            BUMP,
            fixed(3),
        );
        assert_eq!(r.status, RunStatus::Ok);
        assert_eq!(r.int("SELECT count(*) FROM t WHERE c = 1"), 4);
    }

    #[test]
    fn a_single_row_is_one_chunk() {
        let r = run_plan(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, c INT DEFAULT 0); INSERT INTO t(id) VALUES (42);",
            BUMP,
            fixed(1000),
        );
        assert_eq!(r.status, RunStatus::Ok);
        assert_eq!(r.progress().len(), 1);
        assert_eq!(r.progress()[0].percent, 100.0);
        assert_eq!(r.int("SELECT c FROM t"), 1);
    }

    #[test]
    fn an_empty_table_finishes_with_no_chunks() {
        let r = run_plan(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, c INT DEFAULT 0);",
            BUMP,
            fixed(10),
        );
        assert_eq!(r.status, RunStatus::Ok);
        assert!(r.progress().is_empty());
        let done = r.step(StepState::Done);
        assert_eq!((done[0].done, done[0].total), (0, 0));
    }

    #[test]
    fn without_rowid_tables_walk_their_text_primary_key() {
        let r = run_plan(
            "CREATE TABLE kv(k TEXT PRIMARY KEY, c INT DEFAULT 0) WITHOUT ROWID;
             INSERT INTO kv(k) VALUES ('b'),('a'),('aa'),('Z'),('z'),('é'),(''),('a b');",
            r#"{"steps":[{"sql":"UPDATE kv SET c = c + 1 WHERE k BETWEEN :lo AND :hi","chunk":{"table":"kv","key":"k"}}]}"#,
            fixed(2),
        );
        assert_eq!(r.status, RunStatus::Ok);
        assert_eq!(r.progress().len(), 4);
        assert_eq!(r.int("SELECT count(*) FROM kv WHERE c = 1"), 8);
    }

    #[test]
    fn adaptive_chunks_grow_when_chunks_are_fast() {
        let r = run_plan(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, c INT DEFAULT 0);
             INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 20000) SELECT i FROM s;",
            r#"{"steps":[{"sql":"UPDATE t SET c = c + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":10}}]}"#,
            Options::default(),
        );
        let p = r.progress();
        assert_eq!(p[0].done, 10, "the first chunk takes the plan's size");
        assert!(
            p.len() < 20,
            "chunks should grow towards 250 ms each, got {} chunks",
            p.len()
        );
        assert_eq!(r.int("SELECT count(*) FROM t WHERE c = 1"), 20000);
    }

    #[test]
    fn ddl_reports_zero_rows_changed() {
        let r = run_plan(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, c INT DEFAULT 0); INSERT INTO t(id) VALUES (1),(2),(3);",
            r#"{"steps":[{"sql":"UPDATE t SET c = 1"},{"sql":"ALTER TABLE t ADD COLUMN d INT"},{"sql":"CREATE INDEX t_c ON t(c)"}]}"#,
            Options::default(),
        );
        let changed: Vec<u64> = r.step(StepState::Done).iter().map(|s| s.changed).collect();
        assert_eq!(changed, [3, 0, 0]);
    }

    #[test]
    fn a_failing_plain_step_is_rolled_back_whole_and_later_steps_do_not_run() {
        let r = run_plan(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v INT CHECK (v < 50), c INT DEFAULT 0);
             INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 100) SELECT i FROM s;",
            r#"{"steps":[{"sql":"UPDATE t SET c = 1"},{"name":"set v","sql":"UPDATE t SET v = id"},{"sql":"UPDATE t SET c = 2"}]}"#,
            Options::default(),
        );
        assert_eq!(r.status, RunStatus::Failed);
        let failed = r.step(StepState::Failed);
        assert_eq!(failed.len(), 1);
        assert!(
            failed[0]
                .error
                .as_deref()
                .unwrap()
                .contains("CHECK constraint failed")
        );
        assert_eq!(
            r.int("SELECT count(*) FROM t WHERE c = 1"),
            100,
            "step 1 kept"
        );
        assert_eq!(
            r.int("SELECT count(*) FROM t WHERE v IS NOT NULL"),
            0,
            "step 2 rolled back"
        );
        match r.events.last() {
            Some(Event::Finished(f)) => {
                assert_eq!(
                    (f.status, f.steps_done, f.rows_changed),
                    (RunStatus::Failed, 1, 100)
                );
                assert!(f.error.as_deref().unwrap().contains("\"set v\""));
            }
            other => panic!("last event {other:?}"),
        }
    }

    #[test]
    fn cancelling_before_the_first_step_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, c INT DEFAULT 0); INSERT INTO t(id) VALUES (1);")
            .unwrap();
        let conn = open_db(&path, Duration::from_secs(1)).unwrap();
        let plan = plan::prepare(
            &Source::Json {
                name: "p".into(),
                text: BUMP.into(),
            },
            &conn,
        )
        .unwrap();
        let log = EventLog::new();
        let cancel = Cancel::new();
        let status = run(
            &conn,
            &plan,
            &Options::default(),
            &Resume::none(),
            &log,
            &cancel,
            || cancel.cancel(),
        );
        assert_eq!(status, RunStatus::Cancelled);
        let c: i64 = conn.query_row("SELECT c FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(c, 0);
    }
}
