//! The runner: applies a checked plan to the database on a blocking thread
//! and reports every step as typed events in the log. It knows nothing of
//! HTTP or terminals; the way back in is [`Cancel`] (and the start gate).
//!
//! `mod.rs` runs the plan step by step; `chunk` walks a chunked step;
//! `tx` is the transaction guard; `checkpoint` records what is done, in
//! the same transaction as the work; `housekeeping` lists and clears it
//! for `batchsse checkpoint`; `db` opens the file; `escape` refuses a
//! chunked step that changes rows outside its chunk; `expect` checks what a
//! step expects; `heartbeat` says a long plain step still runs; `undo`
//! records a run (`--undo`) and takes it back.

pub mod checkpoint;
mod chunk;
mod count;
mod db;
mod escape;
mod expect;
mod fence;
mod governor;
mod heartbeat;
mod hooked;
pub mod housekeeping;
mod neighbours;
mod renumber;
mod scatter;
mod setup;
mod tx;
pub mod undo;
mod walk_probe;
mod write_cap;

use std::time::{Duration, Instant};

use fallible_iterator::FallibleIterator;
use rusqlite::{Batch, Connection};
use serde_json::json;

use checkpoint::Checkpoint;
pub use checkpoint::Resume;

pub use db::{open_db, open_db_to_read, open_db_to_tidy, run_time_message};
pub use escape::refuse_escaping_chunks;
use governor::Governor;
pub use governor::{Brakes, Pace, check_throttle_query};
use heartbeat::Heartbeat;
pub use neighbours::look_ahead;
use tx::Tx;

use crate::error::UsageError;
use crate::events::log::EventLog;
use crate::events::{
    Event, Finished, Level, Progress, RunStatus, Start, StepEvent, StepInfo, StepKind, StepState,
};
use crate::human::quoted;
use crate::lifecycle::{Cancel, Steering, Work};
use crate::plan::{self, Plan, Step};

/// How a run behaves, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub dry_run: bool,
    pub atomic: bool,
    pub checkpoint: bool,
    /// Chunk time, nice ratio, sleep, batch size: what the flags fix.
    pub pace: Pace,
    /// What makes the run wait between chunks.
    pub brakes: Brakes,
    /// `--undo`: record every step so the run can be taken back.
    pub undo: bool,
    /// The command that goes on after a stop, where it is not the same
    /// command again (the demo's, which always starts a fresh database).
    pub go_on: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dry_run: false,
            atomic: false,
            checkpoint: true,
            pace: Pace::default(),
            brakes: Brakes {
                max_wal: 256 << 20,
                ..Brakes::default()
            },
            undo: false,
            go_on: None,
        }
    }
}

/// What to run: a checked plan, on its database, as the flags say, from
/// where an earlier run left it.
pub struct Job<'a> {
    pub conn: &'a Connection,
    pub plan: &'a Plan,
    pub opts: &'a Options,
    pub resume: &'a Resume,
    /// With `--undo`: the connection's update hook ([`records`]).
    pub hook: Option<undo::Hook<'a>>,
    /// With `--undo`: the connection's guard against unrecordable writes.
    pub guard: Option<undo::Guard>,
}

/// Why a step stopped.
enum StepError {
    /// Stopped by a cancel; `under_way`: with its work rolled back (else
    /// between two chunks, with none under way).
    Cancelled {
        under_way: bool,
    },
    Sql(String),
    /// An expectation failed; with `--undo` the message gets the command
    /// that takes back what committed, once the step's work rolled back.
    Expect(String),
}

/// A step's rows so far: visited, to visit, changed.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    done: u64,
    total: u64,
    changed: u64,
}

impl Counts {
    /// A plain step's: every row it changed is one it did.
    fn all(changed: u64) -> Counts {
        Counts {
            done: changed,
            total: changed,
            changed,
        }
    }
}

/// A step's end when it did not finish: why, and what it had done.
type StepResult = Result<Counts, (StepError, Counts)>;

/// How the run went, for `finished`.
#[derive(Default)]
struct Tally {
    steps_done: usize,
    rows_changed: u64,
    /// Of `rows_changed`, those an earlier run committed in a step this
    /// one goes on with (which it counts, as a resumed step does).
    earlier: u64,
    /// Set when the run did not end ok: how, and why.
    end: Option<(RunStatus, String)>,
}

impl Tally {
    fn ended(status: RunStatus, why: impl Into<String>) -> Tally {
        Tally {
            end: Some((status, why.into())),
            ..Tally::default()
        }
    }

    /// Whether the run got anywhere: a step done, or rows committed.
    fn kept(&self) -> bool {
        self.steps_done > 0 || self.rows_changed > 0
    }
}

/// Whether a run of `plan` with `opts` is recorded for undo.
pub fn records(plan: &Plan, opts: &Options) -> bool {
    (opts.undo || plan.undo) && !opts.dry_run
}

/// Runs the plan and logs every event up to `finished`; returns the status.
/// `gate` is called after `start` and blocks until the first step may begin.
pub fn run(
    job: Job<'_>,
    log: &EventLog,
    (cancel, steering): (&Cancel, &Steering),
    gate: impl FnOnce(),
) -> RunStatus {
    heartbeat::with_heartbeat(log, |hb| {
        run_beating(job, log, (cancel, steering), gate, hb)
    })
}

/// [`run`], with the heartbeat its plain steps use.
fn run_beating(
    job: Job<'_>,
    log: &EventLog,
    (cancel, steering): (&Cancel, &Steering),
    gate: impl FnOnce(),
    heartbeat: &Heartbeat,
) -> RunStatus {
    cancel.attach(job.conn);
    let on = job.opts.checkpoint && !job.opts.dry_run;
    let governor = governor(&job, log, (cancel, steering));
    let run_id = run_id();
    // A new connection's: 0, known (see `Runner::user_rowid`).
    let user_rowid = std::cell::Cell::new(Some(0));
    let mut r = Runner {
        recorder: records(job.plan, job.opts).then(|| {
            let hooks = (job.hook, job.guard);
            undo::Recorder::new(job.conn, run_id.clone(), &job.plan.name, hooks)
        }),
        run_id,
        conn: job.conn,
        plan: job.plan,
        opts: job.opts,
        log,
        cancel,
        heartbeat,
        governor: std::cell::RefCell::new(governor),
        checkpoint: Checkpoint::new(job.conn, job.plan, on, &user_rowid),
        db: db_name(job.conn),
        started: Instant::now(),
        nested: job.opts.atomic || job.opts.dry_run,
        made_anew: std::cell::Cell::new(None),
        views: count::Views::default(),
        user_rowid: &user_rowid,
    };
    let tally = r.run_all(job.resume, gate);
    db::waiting_at_most(db::WRAP_UP_WAIT, || r.governor.borrow().finish());
    let kept = tally.kept();
    let (status, error) = match tally.end {
        None => (RunStatus::Ok, None),
        Some((status, why)) => (status, Some(why)),
    };
    if let Some(rec) = r.recorder.as_ref().filter(|_| !r.nested) {
        let _ = rec.mark_cleared_steps();
    }
    let recorded = r
        .recorder
        .as_ref()
        .map(|rec| (rec, rec.committed().unwrap_or_default()));
    let undo_command = recorded
        .filter(|(_, (rows, _))| *rows > 0)
        .and_then(|(rec, _)| r.say_how_to_undo(rec));
    if let Some((_, (0, _))) = recorded {
        // Nothing to take back: no empty tables left behind (if no other
        // run has records in them).
        let _ = undo::store::drop_empty(job.conn);
    }
    if status != RunStatus::Ok && on && !job.opts.atomic && kept {
        match db::waiting_at_most(db::WRAP_UP_WAIT, || r.checkpoint.holds_plan()) {
            Ok(false) => r.message(None, Level::Warn, r.checkpoint_gone()),
            _ => r.message(None, Level::Info, r.to_go_on(status)),
        }
    }
    log.push(Event::Finished(Finished {
        status,
        steps_done: tally.steps_done,
        steps_total: job.plan.steps.len(),
        rows_changed: tally.rows_changed,
        elapsed_ms: ms(r.started.elapsed()),
        dry_run: job.opts.dry_run,
        error,
        undo_bytes: recorded.map(|(_, (_, bytes))| bytes),
        undo_command,
        conflicts: None,
        conflicts_earlier: None,
        conflicts_as_left: None,
        carried_older: None,
    }));
    status
}

/// The run's governor: one that is one transaction never waits between
/// chunks (see [`Governor::after_chunk`]).
fn governor<'a>(
    job: &Job<'a>,
    log: &'a EventLog,
    lines: (&'a Cancel, &'a Steering),
) -> Governor<'a> {
    let opts = job.opts;
    let mut g = Governor::new(job.conn, log, lines, opts.pace.clone(), opts.brakes.clone());
    if let Some(flag) = one_transaction(opts.dry_run, opts.atomic) {
        g.in_one_transaction(flag);
    }
    g
}

fn db_name(conn: &Connection) -> String {
    db::file_of(conn)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "database".into())
}

struct Runner<'a> {
    conn: &'a Connection,
    run_id: String,
    /// With `--undo`: what records each chunk's old values.
    recorder: Option<undo::Recorder<'a>>,
    plan: &'a Plan,
    opts: &'a Options,
    log: &'a EventLog,
    cancel: &'a Cancel,
    /// Says a plain step still runs when it runs long.
    heartbeat: &'a Heartbeat,
    checkpoint: Checkpoint<'a>,
    /// Paces chunks and holds the run while a brake is on.
    governor: std::cell::RefCell<Governor<'a>>,
    db: String,
    started: Instant,
    /// With --atomic or --dry-run the whole run is one transaction and each
    /// step's a savepoint inside it.
    nested: bool,
    /// The first TEMP-only step this run made with no digest of an
    /// earlier run's to hold it to (edited since), for [`setup::made`]:
    /// the rows a later one kept were made from what it made before.
    made_anew: std::cell::Cell<Option<usize>>,
    /// Whether the current step writes a view, so its statements are
    /// counted by the view rows they process (see [`count`]).
    views: count::Views,
    /// `last_insert_rowid()` as the plan's own statements left it: put
    /// back before each of them and each `expect`, so that the run's own
    /// inserts between (the checkpoint, the undo record, a step's try)
    /// are not what a step that reads it gets (see [`db::set_last_rowid`]).
    /// Written with every checkpoint row, for a resume to go on from (see
    /// [`Resume::rowid_before`]). `None`: not known, where this run
    /// resumed from the checkpoint of an earlier release, which kept
    /// none, until a statement inserts.
    user_rowid: &'a std::cell::Cell<Option<i64>>,
}

impl Runner<'_> {
    /// Says the command that takes the run back, and returns it for
    /// `finished`; or, when its record lost parts while it ran (`batchsse
    /// undo clear`) or an unrecorded last step stops any undo, says that it
    /// cannot be.
    fn say_how_to_undo(&self, rec: &undo::Recorder) -> Option<String> {
        let (command, stop) = self.undo_reach(rec);
        let incomplete = undo::store::incomplete(self.conn, &rec.run_id);
        let reaches =
            matches!(incomplete, Ok(None)) && stop.as_ref().is_none_or(|(_, after)| *after);
        let (level, text) = match incomplete {
            Ok(None) => match stop {
                None => (
                    Level::Info,
                    match self.earlier_undo(rec) {
                        Some(plan) => format!(
                            "recorded for undo; to take this run back: {command} (with what the earlier runs of its plan committed: {plan})"
                        ),
                        None => format!("recorded for undo; to take this run back: {command}"),
                    },
                ),
                Some((step, after)) => {
                    let unrecorded =
                        format!("{step} ran unrecorded (\"undo\": false), and an undo stops there");
                    match after {
                        true => (
                            Level::Warn,
                            format!("{unrecorded}; to take back the steps after it: {command}"),
                        ),
                        false => (
                            Level::Warn,
                            format!("this run cannot be taken back: its {unrecorded}"),
                        ),
                    }
                }
            },
            Ok(Some(why)) => (
                Level::Warn,
                format!("this run cannot be taken back: its undo record is incomplete ({why})"),
            ),
            Err(e) => (
                Level::Warn,
                format!("could not read this run's undo record: {e}"),
            ),
        };
        self.message(None, level, text);
        reaches.then_some(command)
    }

    /// The command that takes this run back, and the newest of its steps
    /// that ran unrecorded, where an undo stops ("step N (NAME)"), with
    /// whether recorded work follows it.
    fn undo_reach(&self, rec: &undo::Recorder) -> (String, Option<(String, bool)>) {
        let command = format!(
            "batchsse undo --db {} --run {}",
            db::shell_word_of(self.conn),
            rec.run_id
        );
        let stop = undo::store::stop_of(self.conn, &rec.run_id)
            .ok()
            .flatten()
            .map(|(step, name, after)| {
                (
                    format!("step {} ({})", step.saturating_add(1), quoted(&name)),
                    after,
                )
            });
        (command, stop)
    }

    /// How to go on after a run that stopped with work committed: the
    /// checkpoint makes the same command continue from there.
    fn to_go_on(&self, status: RunStatus) -> String {
        let first = match status {
            RunStatus::Cancelled => "",
            _ => "once the cause is fixed, ",
        };
        let again = match &self.opts.go_on {
            Some(command) => format!("`{command}` goes on"),
            None => "run the same command again to go on".to_owned(),
        };
        format!(
            "what committed is checkpointed: {first}{again} from where this run stopped \
             (or start over after `batchsse checkpoint clear --db {} --plan {}`)",
            db::shell_word_of(self.conn),
            crate::human::shell_word(&self.plan.name)
        )
    }

    /// A run with `--no-checkpoint` neither resumes nor clears an earlier
    /// run's checkpoint of its plan: it applies again what that run
    /// applied, and a later run with the checkpoint on goes on from it,
    /// applying again what this one applies. Said as the run begins.
    fn warn_if_checkpoint_ignored(&self) {
        if self.opts.checkpoint || !self.checkpoint.holds_plan().unwrap_or(false) {
            return;
        }
        self.message(
            None,
            Level::Warn,
            format!(
                "plan {} has a checkpoint in this file from an earlier run, and --no-checkpoint ignores it: this run applies every step from the first, what that run applied included, and leaves the checkpoint as it is, so a later run without --no-checkpoint would go on from it and apply again what this run applies. Once this run is done, remove it: `batchsse checkpoint clear --db {} --plan {}`",
                quoted(&self.plan.name),
                db::shell_word_of(self.conn),
                crate::human::shell_word(&self.plan.name)
            ),
        );
    }

    /// For a run that committed work but whose checkpoint is gone: it was
    /// removed while the run ran (`checkpoint clear`, or by hand), and
    /// running the plan again would do that work a second time.
    fn checkpoint_gone(&self) -> String {
        format!(
            "the checkpoint of plan {} was removed while this run ran (by `batchsse checkpoint clear`, a run of the plan with --force, or by hand): what this run committed is no longer recorded, so running the plan again starts from its first step and applies it a second time; make sure its steps can be applied twice, or narrow them to the rows not yet done",
            quoted(&self.plan.name)
        )
    }

    fn message(&self, step: Option<usize>, level: Level, text: impl Into<String>) {
        let target = match step {
            Some(i) => json!({"db": self.db, "step": i}),
            None => json!({"db": self.db}),
        };
        self.log.push(Event::message(target, level, text));
    }

    fn run_all(&mut self, resume: &Resume, gate: impl FnOnce()) -> Tally {
        self.announce(resume);
        // A run with nothing to do has no pace to speak of.
        if !resume.already_applied(self.plan) {
            self.governor.borrow_mut().say_starting_pace();
        }
        gate();
        self.started = Instant::now();
        if self.cancel.is_cancelled() {
            return Tally::ended(RunStatus::Cancelled, "interrupted before the first step");
        }
        let outer = if self.nested {
            match Tx::begin(self.conn, false) {
                Ok(tx) => {
                    self.cancel.in_one_transaction();
                    Some(tx)
                }
                Err(e) => {
                    let why = format!(
                        "cannot start the run's transaction: {}",
                        run_time_message(self.conn, &e)
                    );
                    return self.failed_early(why);
                }
            }
        } else {
            None
        };
        if resume.forced()
            && let Err(e) = self.checkpoint.reset()
        {
            let why = format!(
                "cannot clear the old checkpoint for --force: {}",
                run_time_message(self.conn, &e)
            );
            return self.failed_early(why);
        }
        let mut tally = Tally::default();
        for step in &self.plan.steps {
            if self.cancel.is_cancelled() {
                tally.end = Some((RunStatus::Cancelled, "interrupted between steps".into()));
                break;
            }
            tally.earlier += resume.chunk_position(step).map_or(0, |p| p.changed);
            match self.step(step, resume) {
                Ok(c) => {
                    tally.steps_done += 1;
                    tally.rows_changed += c.changed;
                }
                Err((status, why, c)) => {
                    tally.rows_changed += c.changed;
                    tally.end = Some((status, why));
                    break;
                }
            }
        }
        if let Some(outer) = outer {
            self.end_outer(outer, &mut tally);
        }
        tally
    }

    fn failed_early(&self, why: String) -> Tally {
        self.message(None, Level::Error, why.clone());
        Tally::ended(RunStatus::Failed, why)
    }

    /// `start`, and what kind of run this is.
    fn announce(&self, resume: &Resume) {
        let plan = self.plan;
        self.governor.borrow_mut().say_start(|settings| {
            self.log.push(Event::Start(Start {
                protocol: crate::events::PROTOCOL,
                pid: std::process::id(),
                run_id: self.run_id.clone(),
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
                settings,
                kind: crate::events::RunKind::Run,
                undo: self.recorder.as_ref().map(|_| crate::events::UndoInfo {
                    unrecorded_steps: plan
                        .steps
                        .iter()
                        .filter(|s| !s.undo)
                        .map(|s| s.index)
                        .collect(),
                    reverts: Vec::new(),
                }),
            }))
        });
        if self.opts.dry_run {
            self.message(
                None,
                Level::Info,
                "dry run: every step runs for real inside one transaction that is rolled back at the end; nothing will be written",
            );
        }
        self.warn_if_checkpoint_ignored();
        if resume.already_applied(plan) {
            self.message(
                None,
                Level::Info,
                format!(
                    "plan {} was already applied to {}; nothing to do (use --force to run it again)",
                    quoted(&plan.name),
                    crate::human::shown(&self.db)
                ),
            );
        } else if resume.resumed() {
            self.message(None, Level::Info, resume.describe(plan));
        }
    }

    /// Runs (or skips) one step with its `step` events; on failure returns
    /// the run's status, the reason, and what the step had done.
    fn step(&self, step: &Step, resume: &Resume) -> Result<Counts, (RunStatus, String, Counts)> {
        // PRAGMA and ATTACH set up this connection only, so a resumed run
        // does them again (unless there is nothing left to do).
        if resume.skips(self.plan, step) {
            self.step_event(step, StepState::Skipped, Counts::default(), None, None);
            return Ok(Counts::default());
        }
        // This connection is new: where the earlier run left off, its
        // statements go on from what they left there.
        if let Some(at) = resume.rowid_before(self.plan, step) {
            self.user_rowid.set(at.rowid);
        }
        if self.governor.borrow_mut().wait_while_braked(None)
        // before the step begins: `step: null`
        {
            return Err((
                RunStatus::Cancelled,
                format!(
                    "interrupted before step {} ({})",
                    step.index + 1,
                    quoted(&step.name)
                ),
                Counts::default(),
            ));
        }
        let t0 = Instant::now();
        self.step_event(step, StepState::Running, Counts::default(), Some(t0), None);
        self.views.reset();
        let result = match escape::refuse_in_run(self, step).and_then(|()| self.arm(step)) {
            Err(e) => Err(e),
            Ok(()) => match &step.chunk {
                None => self.run_plain(step),
                Some(chunk) => chunk::run(self, step, chunk, resume),
            },
        };
        self.disarm(step, resume, &result);
        let (err, c) = match result {
            Ok(c) => {
                self.step_event(step, StepState::Done, c, Some(t0), None);
                return Ok(c);
            }
            Err(e) => e,
        };
        let (status, why) = match err {
            StepError::Cancelled { under_way } => {
                (RunStatus::Cancelled, self.interrupted(step, c, under_way))
            }
            StepError::Sql(e) => (
                RunStatus::Failed,
                format!(
                    "step {} ({}) failed: {e}",
                    step.index + 1,
                    quoted(&step.name)
                ),
            ),
            StepError::Expect(e) => (
                RunStatus::Failed,
                format!(
                    "step {} ({}) failed: {e}{}",
                    step.index + 1,
                    quoted(&step.name),
                    self.undo_hint()
                ),
            ),
        };
        let mut end = self.step_of(step, StepState::Failed, c, Some(t0), Some(why.clone()));
        end.cancelled = status == RunStatus::Cancelled;
        self.log.push(Event::Step(end));
        self.message(Some(step.index), Level::Error, why.clone());
        Err((status, why, c))
    }

    /// Disarms the recorder, if any, after `step` ended with `result`.
    fn disarm(&self, step: &Step, resume: &Resume, result: &Result<Counts, (StepError, Counts)>) {
        let Some(rec) = &self.recorder else {
            return;
        };
        rec.disarm();
        match result {
            Ok(_) => {
                let _ = rec.step_done(step);
            }
            // Rolled back with nothing of it kept: a step run outside a
            // transaction may have done something; a chunked one did if
            // this run committed a chunk (visited rows past where it
            // resumed).
            Err((_, c)) if !step.autocommit => {
                let resumed = resume.chunk_position(step).map_or(0, |p| p.done);
                if c.done <= resumed {
                    let _ = rec.unnote(step);
                }
            }
            Err(_) => {}
        }
    }

    /// Arms the recorder, if any, for `step`.
    fn arm(&self, step: &Step) -> Result<(), (StepError, Counts)> {
        match self.recorder.as_ref().map(|rec| rec.arm(step)) {
            Some(Err(e)) => Err(self.fail(e, Counts::default())),
            _ => Ok(()),
        }
    }

    /// Ends the run-wide transaction: rolled back for a dry run or after a
    /// failure, committed otherwise.
    fn end_outer(&self, outer: Tx<'_>, tally: &mut Tally) {
        if self.opts.dry_run && tally.end.is_none() && tx::deferred_violations(self.conn) {
            let why = format!(
                "the run's transaction would not commit: {}",
                tx::foreign_key_failed()
            );
            self.message(None, Level::Error, why.clone());
            tally.end = Some((RunStatus::Failed, why));
        }
        if self.opts.dry_run || tally.end.is_some() {
            drop(outer);
            let text = if self.opts.dry_run {
                let earlier = match tally.earlier {
                    0 => String::new(),
                    n => format!(
                        ", {} of them already changed by an earlier run, which committed them",
                        crate::human::thousands(n)
                    ),
                };
                format!(
                    "dry run finished: {} would change{earlier}; rolled back, nothing was written",
                    crate::human::rows(tally.rows_changed)
                )
            } else {
                tally.rows_changed = 0;
                "--atomic: the whole run was rolled back; the database is as it was before".into()
            };
            self.message(None, Level::Info, text);
            return;
        }
        if let Err(e) = outer.commit() {
            let why = format!(
                "the run's transaction could not commit and was rolled back: {}",
                run_time_message(self.conn, &e)
            );
            self.message(None, Level::Error, why.clone());
            tally.end = Some((RunStatus::Failed, why));
            tally.rows_changed = 0;
        }
    }

    /// `t0`: when the step began (none for a skipped step).
    fn step_event(
        &self,
        step: &Step,
        state: StepState,
        c: Counts,
        t0: Option<Instant>,
        error: Option<String>,
    ) {
        let event = self.step_of(step, state, c, t0, error);
        self.log.push(Event::Step(event));
    }

    /// The event [`Self::step_event`] sends, built apart so that a failed
    /// step's can say a cancel stopped it.
    fn step_of(
        &self,
        step: &Step,
        state: StepState,
        c: Counts,
        t0: Option<Instant>,
        error: Option<String>,
    ) -> StepEvent {
        StepEvent {
            index: step.index,
            name: step.name.clone(),
            state,
            done: c.done,
            total: c.total,
            changed: c.changed,
            elapsed_ms: t0.map_or(0, |t| ms(t.elapsed())),
            error,
            cancelled: false,
        }
    }

    /// A failed SQLite call as a step's end, with what the step had done.
    fn fail(&self, e: rusqlite::Error, c: Counts) -> (StepError, Counts) {
        let err = if self.cancel.is_cancelled()
            || e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted)
        {
            StepError::Cancelled { under_way: true }
        } else if let Some(why) = self
            .recorder
            .as_ref()
            .filter(|_| {
                e.sqlite_error_code() == Some(rusqlite::ErrorCode::AuthorizationForStatementDenied)
            })
            .and_then(|r| r.refused())
        {
            StepError::Sql(why)
        } else {
            StepError::Sql(run_time_message(self.conn, &e))
        };
        (err, c)
    }

    /// [`Self::fail`], but for an `ATTACH` whose file cannot be opened:
    /// SQLite says only "unable to open database", and the file is most
    /// often not there (the check before the run finds a missing file
    /// only when it is named by a literal), which the run never creates.
    fn fail_attach(&self, step: &Step, e: rusqlite::Error) -> (StepError, Counts) {
        let cannot_open = e.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen);
        if !cannot_open || plan::first_keyword(&step.sql) != "ATTACH" {
            return self.fail(e, Counts::default());
        }
        let why = format!(
            "{}: the file does not exist, or cannot be opened to write; batchsse never creates a database, so make it first (an empty file is one) or fix the path, and give batchsse write access to the file and its directory",
            plan::sqlite_message(&e)
        );
        (StepError::Sql(why), Counts::default())
    }

    /// A plain step, with a heartbeat `progress` every
    /// [`heartbeat::EVERY`] while it runs (one statement cannot say how far
    /// it is, but a viewer should see it is alive). The heartbeat has its
    /// own thread, so the statement is never held up by it.
    fn run_plain(&self, step: &Step) -> StepResult {
        let _under_way = self.cancel.under_way(Work::Step);
        let _beating = self.heartbeat.start(step.index, &step.name);
        self.plain_step(step)
    }

    fn plain_step(&self, step: &Step) -> StepResult {
        let none = Counts::default();
        if step.autocommit {
            let changed = self.execute(step).map_err(|e| self.fail_attach(step, e))?;
            self.checkpoint
                .step_done(step, changed, changed)
                .map_err(|e| self.fail(e, none))?;
            return Ok(Counts::all(changed));
        }
        if step.temp_only && !self.nested {
            return self.temp_step(step);
        }
        let tx = Tx::begin(self.conn, self.nested).map_err(|e| self.fail(e, none))?;
        // A step that sets up the connection is done again on a resume, over
        // its own checkpoint row; two runs doing it at once is harmless.
        if !step.sets_up_connection()
            && self
                .checkpoint
                .moved(step, None)
                .map_err(|e| self.fail(e, none))?
        {
            return Err((StepError::Sql(self.checkpoint.conflict()), none));
        }
        let before = setup::before(self, step).map_err(|e| self.fail(e, none))?;
        // A plain step is never recorded by reading around it, but may
        // write a table its staging did not cover (see
        // [`undo::Recorder::record`]): rolled back and done again.
        let Some((changed, expected)) = self
            .recorded(step, None, (0, true), &mut || self.execute(step))
            .map_err(|e| self.fail(e, none))?
        else {
            drop(tx);
            return self.plain_step(step);
        };
        setup::step_done(self, step, changed, (before, expected))
            .map_err(|e| self.fail(e, none))?
            .map_err(|e| (e, none))?;
        if self.cancel.is_cancelled() {
            return Err((StepError::Cancelled { under_way: true }, none));
        }
        self.commit(tx).map_err(|e| self.fail(e, none))?;
        Ok(Counts::all(changed))
    }

    /// A step that writes only TEMP tables reads the file in a deferred
    /// transaction, which takes no write lock: made from a scan of a large
    /// table (the to-do list of the rows a later step changes) it would
    /// otherwise stop the application's writes as long as the scan takes
    /// (in WAL mode; in rollback-journal mode a reader holds up their
    /// commits either way). What it leaves in the file, the rows of its
    /// tables and its checkpoint row, is written afterwards, a part a
    /// transaction, the checkpoint row in the last (see [`setup::record`]).
    fn temp_step(&self, step: &Step) -> StepResult {
        let none = Counts::default();
        let fail = |e| self.fail(e, none);
        let tx = Tx::begin_reading(self.conn, false).map_err(fail)?;
        let before = setup::before(self, step).map_err(fail)?;
        let Some((changed, expected)) = self
            .recorded(step, None, (0, true), &mut || self.execute(step))
            .map_err(fail)?
        else {
            drop(tx);
            return self.temp_step(step);
        };
        let made = match before {
            Some(b) => Some(setup::made(self, step, &b).map_err(fail)?),
            None => None,
        };
        let made = match made {
            Some(Ok(m)) => setup::checked(&m, expected).map(|()| Some(m)),
            Some(Err(why)) => expected.and(Err(StepError::Sql(why))),
            None => expected.map(|()| None),
        }
        .map_err(|e| (e, none))?;
        if self.cancel.is_cancelled() {
            return Err((StepError::Cancelled { under_way: true }, none));
        }
        self.commit(tx).map_err(fail)?;
        let Some(m) = made else {
            return Ok(Counts::all(changed));
        };
        let tx = Tx::begin(self.conn, false).map_err(fail)?;
        if !setup::unmoved(self, step, &m).map_err(fail)? {
            return Err((StepError::Sql(self.checkpoint.conflict()), none));
        }
        let mut next = || self.conn.execute_batch("COMMIT; BEGIN IMMEDIATE");
        setup::record(self, step, changed, m, &mut next).map_err(fail)?;
        self.commit(tx).map_err(fail)?;
        Ok(Counts::all(changed))
    }

    /// Commits a step's or a chunk's transaction. In a `--dry-run` without
    /// `--atomic` it is a savepoint that stands for a transaction of the
    /// real run: one that leaves a foreign-key violation deferred to the
    /// commit fails, rolled back, as that commit would.
    fn commit(&self, tx: Tx<'_>) -> rusqlite::Result<()> {
        if self.opts.dry_run && !self.opts.atomic && tx::deferred_violations(self.conn) {
            return Err(tx::foreign_key_failed());
        }
        tx.commit()
    }

    /// Does a step's (or chunk's) work, recorded with `--undo`, and checks
    /// the [`expectations`](Runner::expectations) of a step that had
    /// changed `before` rows, at its `end` or not: right after the work,
    /// before the record is written, so an `expect` that asks
    /// `changes()` or `last_insert_rowid()` gets the step's answer, not
    /// the record's. The rows changed and the check's outcome; `None`:
    /// roll the chunk back and do it again (see
    /// [`undo::Recorder::record`]).
    fn recorded(
        &self,
        step: &Step,
        range: Option<(&plan::Key, &plan::Key)>,
        (before, end): (u64, bool),
        work: &mut dyn FnMut() -> rusqlite::Result<u64>,
    ) -> rusqlite::Result<Option<(u64, Result<(), StepError>)>> {
        let mut expected = Ok(());
        let mut checked = || {
            let changed = work()?;
            expected = self.expectations(step, before, changed, end);
            Ok(changed)
        };
        // A try rolled back to be done again leaves the rowid as before it.
        let rowid = self.user_rowid.get();
        let changed = match &self.recorder {
            Some(rec) => rec.record(step, range, &mut checked)?,
            None => Some(checked()?),
        };
        if changed.is_none() {
            self.user_rowid.set(rowid);
        }
        Ok(changed.map(|n| (n, expected)))
    }

    /// Puts back what `last_insert_rowid()` answered the plan's own
    /// statements, before one of them or an `expect` (0 where it is not
    /// known, as on any new connection).
    fn put_rowid(&self) {
        db::set_last_rowid(self.conn, self.user_rowid.get().unwrap_or(0));
    }

    /// Notes what a statement of the plan's, just run after
    /// [`Runner::put_rowid`], left in `last_insert_rowid()`. Where it was
    /// not known, it is once a statement inserts (it answers 0 until then).
    fn note_rowid(&self) {
        let now = self.conn.last_insert_rowid();
        if self.user_rowid.get().is_some() || now != 0 {
            self.user_rowid.set(Some(now));
        }
    }

    /// Checks what a chunked step expects as it ends, its `changed` rows
    /// all committed by its chunks.
    fn ended(&self, step: &Step, changed: u64) -> Result<(), StepError> {
        self.expectations(step, changed, 0, true)
    }

    /// Checks what the step expects once it has changed `before` rows
    /// committed (which stay, but in a run that is one transaction) and
    /// `now` in work not committed yet: the most it may change, and at its
    /// `end` the fewest and its query.
    /// Called inside the transaction, which the caller drops on an error.
    fn expectations(&self, step: &Step, before: u64, now: u64, end: bool) -> Result<(), StepError> {
        let changed = before + now;
        let kept = if self.nested { 0 } else { before };
        if let Some(why) = expect::over_max(&step.expect, changed, kept) {
            return Err(StepError::Expect(why));
        }
        if !end {
            return Ok(());
        }
        self.put_rowid();
        match expect::at_end(self.conn, &step.expect, changed) {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(StepError::Expect(why)),
            // Said as the query's failure: "integer overflow" alone would
            // read as the step's own SQL failing.
            Err(e) => Err(match self.fail(e, Counts::default()).0 {
                StepError::Sql(why) => StepError::Expect(format!(
                    "expect {} could not run: {why}",
                    expect::query(step.expect.sql.as_deref().unwrap_or_default())
                )),
                other => other,
            }),
        }
    }

    /// Why a step stopped when it was interrupted (`under_way`: in the
    /// middle of its work, else between two chunks), and what it keeps.
    fn interrupted(&self, step: &Step, c: Counts, under_way: bool) -> String {
        let (stopped, kept) = match (&step.chunk, under_way) {
            (None, _) => ("; its work was rolled back", ", "),
            (Some(_), true) => ("; its current chunk was rolled back", ", "),
            (Some(_), false) => (" with no chunk under way", "; "),
        };
        format!(
            "interrupted during step {} ({}){stopped}{}",
            step.index + 1,
            quoted(&step.name),
            if c.changed > 0 && !self.nested {
                format!(
                    "{kept}{} rows changed by earlier chunks are kept",
                    crate::human::thousands(c.changed)
                )
            } else {
                String::new()
            }
        )
    }

    /// With `--undo`, after a failed expectation rolled its work back: the
    /// command that takes back what this run committed, if it committed
    /// any (read now, so the rolled-back chunk's record is not counted).
    fn undo_hint(&self) -> String {
        let Some(rec) = self.recorder.as_ref().filter(|_| !self.nested) else {
            return String::new();
        };
        let (command, stop) = self.undo_reach(rec);
        let earlier = self.earlier_undo(rec);
        match (rec.committed(), stop) {
            (Ok((rows, _)), None) if rows > 0 => match earlier {
                Some(plan) => format!(
                    "; what this run committed can be taken back with: {command} (with what the earlier runs of its plan committed: {plan})"
                ),
                None => format!("; what this run committed can be taken back with: {command}"),
            },
            (_, Some((step, after))) => match after {
                true => format!(
                    "; what this run committed after its {step}, which ran unrecorded (\"undo\": false), can be taken back with: {command}"
                ),
                false => format!(
                    "; its {step} ran unrecorded (\"undo\": false), and an undo stops there, so it can take back nothing of this run"
                ),
            },
            _ => match earlier {
                Some(plan) => format!(
                    "; this run committed nothing, but earlier runs of its plan did (the run it resumed, say): what they committed can be taken back with: {plan}"
                ),
                None => "; this run committed nothing, so it has nothing to take back".into(),
            },
        }
    }

    /// The command that takes back the whole plan, when runs of it before
    /// this one left records (the run this one resumed): the hint's `--run`
    /// names this run's record alone.
    fn earlier_undo(&self, rec: &undo::Recorder) -> Option<String> {
        let runs = undo::store::runs_of_plan(self.conn, &self.plan.name).ok()?;
        runs.iter().any(|r| *r != rec.run_id).then(|| {
            format!(
                "batchsse undo --db {} --plan {}",
                db::shell_word_of(self.conn),
                crate::human::shell_word(&self.plan.name)
            )
        })
    }

    /// Runs a plain step's statements; returns the rows they changed.
    fn execute(&self, step: &Step) -> rusqlite::Result<u64> {
        let mut changed = 0;
        let mut batch = Batch::new(self.conn, &step.sql);
        while let Some(mut stmt) = batch.next()? {
            // The check before the run refuses parameters, unless its schema
            // copy could not compile the statement (after an ATTACH, say):
            // never let one run as NULL.
            if let Some(names) = plan::parameter_names(&stmt) {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                    Some(format!(
                        "the statement uses {names}, which nothing binds (only chunked steps get :lo and :hi); write the value into the SQL"
                    )),
                ));
            }
            // SQLite forgets an interrupt that came while no statement ran,
            // and a plain step's statement may run for minutes: a Ctrl-C
            // since the last look is seen here, not when it ends.
            if self.cancel.is_cancelled() {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERRUPT),
                    None,
                ));
            }
            let shape = count::Shape::of(&stmt);
            changed += self.run_counted(step, (&mut stmt, shape), None)?;
        }
        Ok(changed)
    }

    /// `resumed_from`: rows an earlier run already did, which this run's
    /// rate must not count. `rest`: the `--sleep` about to follow, counted
    /// in the rate (and so the ETA) as if it had passed, and the time a
    /// person held the step paused, which the rate leaves out: the run will
    /// not wait so again.
    fn progress(&self, step: &Step, c: Counts, t0: Instant, resumed_from: u64, rest: Rest) {
        let elapsed = t0.elapsed();
        let rate = c.done.saturating_sub(resumed_from) as f64 / busy(elapsed, rest);
        let left = c.total.saturating_sub(c.done);
        let percent = if c.total == 0 {
            100.0
        } else {
            (c.done as f64 * 100.0 / c.total as f64).min(100.0)
        };
        self.log.push(Event::Progress(Progress {
            step: step.index,
            name: step.name.clone(),
            done: Some(c.done),
            total: Some(c.total),
            changed: c.changed,
            percent: Some((percent * 10.0).round() / 10.0),
            rate: Some(rate.round()),
            eta_ms: (rate > 0.0).then(|| (left as f64 / rate * 1000.0) as u64),
            elapsed_ms: ms(elapsed),
        }));
    }
}

/// The pause about to follow and the time held paused (see `progress`).
type Rest = (Duration, Duration);

/// The seconds a rate divides by: `elapsed` with the pause ahead and
/// without the time held paused.
fn busy(elapsed: Duration, (ahead, paused): Rest) -> f64 {
    (elapsed + ahead)
        .saturating_sub(paused)
        .as_secs_f64()
        .max(1e-6)
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
    if let Some(flag) = one_transaction(opts.dry_run, opts.atomic)
        && let Some(s) = plan.steps.iter().find(|s| s.autocommit)
    {
        return Err(UsageError::new(format!(
            "step {} ({}) must run outside a transaction, so it cannot be part of {flag}; remove the step or the flag",
            s.index + 1,
            quoted(&s.name),
        )));
    }
    Ok(())
}

/// The flag that makes the whole run one transaction (`--dry-run` or
/// `--atomic`), if one does.
pub fn one_transaction(dry_run: bool, atomic: bool) -> Option<&'static str> {
    if dry_run {
        Some("--dry-run")
    } else if atomic {
        Some("--atomic")
    } else {
        None
    }
}

/// Why a run that is one transaction never waits between chunks.
pub const LOCK_HELD: &str = "its one transaction holds the write lock until the run ends, so a wait between chunks would keep other writers locked out, not let them in";

/// Why a live pause is refused in this run, if it is: with `--atomic` or
/// `--dry-run` it would keep the write lock, while a pause promises to
/// free it.
pub fn why_no_pause(opts: &Options) -> Option<String> {
    one_transaction(opts.dry_run, opts.atomic).map(|flag| {
        format!(
            "this run cannot be paused: it is {flag}, and {LOCK_HELD}; cancel it (everything rolls back) or let it finish"
        )
    })
}

/// Why a live change of sleep or nice ratio is refused in this run, if it
/// is: with `--atomic` or `--dry-run` it never waits between chunks, so
/// the change would be accepted and do nothing.
pub fn why_no_wait(opts: &Options) -> Option<String> {
    one_transaction(opts.dry_run, opts.atomic).map(|flag| {
        format!(
            "this run never waits between chunks, so sleep_ms and nice_ratio change nothing in it: it is {flag}, and {LOCK_HELD}; chunk_time_ms and batch_size still apply"
        )
    })
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
        let job = Job {
            conn: &conn,
            plan: &plan,
            opts: &opts,
            resume: &Resume::none(),
            hook: None,
            guard: None,
        };
        let status = run(job, &log, (&Cancel::default(), &Steering::default()), || {});
        let events = log.after(0).iter().map(|e| e.event.clone()).collect();
        Ran {
            status,
            events,
            conn,
            _dir: dir,
        }
    }

    fn fixed(size: u64) -> Options {
        let mut opts = Options::default();
        opts.pace.batch_size = Some(size);
        opts
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
        let done: Vec<u64> = r.progress().iter().filter_map(|p| p.done).collect();
        assert_eq!(done, [3, 6, 8]);
        assert!(
            r.progress()
                .iter()
                .all(|p| p.total == Some(8) && p.percent <= Some(100.0))
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
        let done: Vec<u64> = r.progress().iter().filter_map(|p| p.done).collect();
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
        assert_eq!(r.progress()[0].percent, Some(100.0));
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

    /// Chunks far quicker than the chunk time grow 4× each. A chunk time of
    /// a minute keeps that true on a machine whose commits take long (a
    /// busy disk's fsync), so the count is exact (`next_size` has the
    /// arithmetic's own tests).
    #[test]
    fn adaptive_chunks_grow_when_chunks_are_fast() {
        let mut opts = Options::default();
        opts.pace.chunk_time = Some(Duration::from_secs(60));
        let r = run_plan(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, c INT DEFAULT 0);
             INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 20000) SELECT i FROM s;",
            r#"{"steps":[{"sql":"UPDATE t SET c = c + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":10}}]}"#,
            opts,
        );
        let done: Vec<u64> = r.progress().iter().filter_map(|p| p.done).collect();
        assert_eq!(
            done,
            [10, 50, 210, 850, 3410, 13650, 20000],
            "10 rows, then 40, 160, 640, 2,560, 10,240 and the rest"
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
        let cancel = Cancel::default();
        let job = Job {
            conn: &conn,
            plan: &plan,
            opts: &Options::default(),
            resume: &Resume::none(),
            hook: None,
            guard: None,
        };
        let status = run(job, &log, (&cancel, &Steering::default()), || {
            cancel.cancel()
        });
        assert_eq!(status, RunStatus::Cancelled);
        let c: i64 = conn.query_row("SELECT c FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(c, 0);
    }
}
