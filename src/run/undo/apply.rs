//! `batchsse undo`: applies a recorded run's inverse newest first, one
//! recorded chunk per transaction (which also deletes that chunk's records,
//! so an undo killed anywhere resumes without applying anything twice),
//! paced by the governor and reported as events like a run.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::types::Value;
use serde_json::json;

use super::revert::{Conflict, GONE, RUN_DELETED, RUNS_ROW, Reverter, STAYS_DELETED, TAKEN};
use super::stash::{self, Deleting, Stash};
use super::store::{self, PARTS, UNRECORDED};
use crate::events::log::EventLog;
use crate::events::{
    Event, Finished, Level, Progress, RunKind, RunStatus, Start, StepEvent, StepInfo, StepKind,
    StepState, UndoInfo,
};
use crate::human::{plural, quoted, thousands};
use crate::lifecycle::{Cancel, Steering, Work};
use crate::run::checkpoint;
use crate::run::db::{WRAP_UP_WAIT, waiting_at_most};
use crate::run::expect::shown;
use crate::run::governor::Governor;
use crate::run::tx::Tx;
use crate::run::{Options, Rest, busy, ms};

/// What `--on-conflict` does with a row the application changed since the
/// run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnConflict {
    /// Keep the application's value and report the row.
    #[default]
    Skip,
    /// Roll back the current chunk and stop (exit 1).
    Abort,
    /// Restore the run's old value anyway.
    Overwrite,
}

/// What to take back.
pub struct Spec {
    /// The runs, newest first.
    pub runs: Vec<String>,
    pub plan: String,
    pub on_conflict: OnConflict,
    /// The parts the damage check read, to apply without reading again.
    pub kept: RefCell<store::Kept>,
    /// Set by a complete undo that left its empty tables to another
    /// batchsse that had the file open: what [`tidy_when_closed`] needs.
    pub tidy_later: RefCell<Option<TidyLater>>,
}

/// The conflicts shown as messages; all are kept in `batchsse_undo_conflict`.
const SHOWN_CONFLICTS: u64 = 100;

/// One recorded chunk.
struct Chunk {
    id: i64,
    run: String,
    step: i64,
    name: String,
    chunk: i64,
    /// Rows the chunk changed when it ran.
    rows: u64,
    /// The row that counts its step's parts (none in a record of a
    /// batchsse from before that count).
    count: Option<i64>,
    /// Its place among the parts the undo takes back, newest first.
    pos: usize,
}

impl Chunk {
    fn part(&self) -> store::Part<'_> {
        store::Part {
            id: self.id,
            run: &self.run,
            step: self.step,
            chunk: self.chunk,
        }
    }
}

/// What an interrupted undo says.
const INTERRUPTED: &str =
    "interrupted; every chunk taken back so far is committed: run the same undo again to go on";
/// What an interrupted dry run says: it wrote nothing.
const INTERRUPTED_DRY: &str = "interrupted; a dry run writes nothing, so nothing was taken back";

/// Where the undo of one recorded step is.
struct At<'g> {
    index: usize,
    g: &'g [Chunk],
    t0: Instant,
    /// Rows of the recorded chunks taken back so far, and of all of them.
    done: u64,
    total: u64,
    /// Rows reverted (conflicts not counted).
    changed: u64,
}

impl At<'_> {
    fn name(&self) -> String {
        format!(
            "undo step {}: {}",
            self.g[0].step.saturating_add(1),
            self.g[0].name
        )
    }

    /// `rest`: the rest that follows the part just taken back (`--sleep`,
    /// the yield), counted now as a run counts its own, so that the first
    /// rate and ETA of a paced undo are not those of an unpaced one; and
    /// the time a person held it paused, left out as a run leaves it out.
    fn progress(&self, rest: Rest) -> Progress {
        let elapsed = self.t0.elapsed();
        let rate = self.done as f64 / busy(elapsed, rest);
        let left = self.total.saturating_sub(self.done);
        Progress {
            step: self.index,
            name: self.name(),
            done: Some(self.done),
            total: Some(self.total),
            changed: self.changed,
            percent: Some(if self.total == 0 {
                100.0
            } else {
                (self.done as f64 * 1000.0 / self.total as f64).round() / 10.0
            }),
            rate: Some(rate.round()),
            eta_ms: (rate > 0.0).then(|| (left as f64 / rate * 1000.0) as u64),
            elapsed_ms: ms(elapsed),
        }
    }
}

/// How the undo went.
#[derive(Default)]
struct Tally {
    reverted: u64,
    /// Rows kept as the application has them.
    conflicts: u64,
    /// Rows put back over the application's values (`overwrite`).
    overwritten: u64,
    /// Of the conflicts, rows kept as the run left them.
    as_left: u64,
    /// Rows put back to what an older run wrote (see [`Undoer::finish`]).
    carried: u64,
    steps_done: usize,
    /// A dry run's [`Undoer::earlier`], read before it rolls back.
    earlier: Option<(u64, u64)>,
}

/// Why an undo refuses a live change of chunk time or batch size.
pub const WHY_NO_RESIZE: &str = "an undo takes back the run's chunks as they were recorded, so chunk_time_ms and batch_size change nothing in it; nice_ratio and sleep_ms still apply";

/// Runs the undo and logs every event up to `finished`.
pub fn run(
    conn: &Connection,
    spec: &Spec,
    opts: &Options,
    log: &EventLog,
    (cancel, steering): (&Cancel, &Steering),
    gate: impl FnOnce(),
) -> RunStatus {
    cancel.attach(conn);
    let mut governor = Governor::new(
        conn,
        log,
        (cancel, steering),
        opts.pace.clone(),
        opts.brakes.clone(),
    );
    governor.takes_recorded_chunks();
    if opts.dry_run {
        governor.in_one_transaction("--dry-run");
    }
    if !opts.dry_run {
        // Unreadable, it says so at the first part.
        let _ = store::complete_conflicts(conn);
    }
    // Rows kept before this try: only conflicts it does not count. Those
    // still kept at its end (under `overwrite` it puts them back).
    let upto = store::last_kept(conn).unwrap_or(0);
    let mut u = Undoer {
        conn,
        upto,
        above: std::cell::Cell::new(upto),
        scope: store::Scope::of(conn, &spec.runs, &spec.plan),
        spec,
        log,
        cancel,
        governor: RefCell::new(governor),
        dry_run: opts.dry_run,
        reverter: RefCell::new(Reverter::new(
            conn,
            spec.on_conflict == OnConflict::Overwrite,
        )),
        db: crate::run::db_name(conn),
        newer: Default::default(),
        stopped_at_conflict: Default::default(),
        step: Default::default(),
        checkpointed: checkpoint::holds(conn, &spec.plan).unwrap_or(true),
    };
    let started = Instant::now();
    let (tally, end, steps_total) = u.run_all(gate);
    let (earlier, earlier_as_left) = tally.earlier.unwrap_or_else(|| u.earlier());
    // As a run ends: the WAL synced, the rollback journal back to DELETE
    // (a journal file left behind would look like a recent writer).
    waiting_at_most(WRAP_UP_WAIT, || u.governor.borrow().finish());
    let (status, error) = match end {
        None => (RunStatus::Ok, None),
        Some((s, why)) => (s, Some(why)),
    };
    log.push(Event::Finished(Finished {
        status,
        steps_done: tally.steps_done,
        steps_total,
        rows_changed: tally.reverted,
        elapsed_ms: ms(started.elapsed()),
        dry_run: opts.dry_run,
        error,
        undo_bytes: None,
        undo_command: None,
        conflicts: Some(tally.conflicts),
        conflicts_earlier: (earlier > 0).then_some(earlier),
        conflicts_as_left: Some(tally.as_left + earlier_as_left).filter(|&n| n > 0),
        carried_older: Some(tally.carried).filter(|&n| n > 0),
    }));
    status
}

/// Whether no other batchsse has the file `path` open for writing (a run
/// or an undo); `None` where the system cannot tell.
fn alone(path: &std::path::Path) -> Option<bool> {
    use crate::platform::{Sight, open_by_others, open_by_this_program};
    match open_by_others(path) {
        Sight::Seen(_) => Some(open_by_this_program(path).is_empty()),
        Sight::Blind => None,
    }
}

/// Drops batchsse's own tables that hold nothing (the undo record's, the
/// checkpoint's), in one transaction.
fn drop_own_empty(conn: &Connection) -> rusqlite::Result<()> {
    let tx = Tx::begin(conn, false)?;
    store::drop_if_empty(conn)?;
    checkpoint::drop_if_empty(conn)?;
    tx.commit()
}

/// What [`tidy_when_closed`] needs: the file, which file it was when the
/// undo ended (see [`crate::platform::file_identity`]), and the undo's
/// busy timeout.
pub struct TidyLater {
    path: std::path::PathBuf,
    file: Option<(u64, u64)>,
    busy: std::time::Duration,
}

/// After a complete undo whose end saw another batchsse with the file
/// open ([`Spec::tidy_later`]), once the undo's own connection is closed:
/// the tables left empty go if no other batchsse has the file open now,
/// on a connection of their own. Of two undos of the same runs ending
/// together, each saw the other and left the tables; the one that closes
/// last finds the other gone (or tidying: then that one drops them).
pub fn tidy_when_closed(later: &TidyLater) {
    let path = &later.path;
    // Another file moved into its place since (a backup put back) is not
    // the one the undo saw empty.
    if alone(path) != Some(true)
        || later.file.is_none()
        || crate::platform::file_identity(path) != later.file
    {
        return;
    }
    let warn = |why: String| {
        crate::errln!(
            "batchsse: warning: the undo is complete, but batchsse's own tables, now empty, could not be removed: {why}; `batchsse undo clear` and `batchsse checkpoint clear` remove them"
        )
    };
    // Waiting for locks as the undo did: the other undo, tidying too, may
    // hold the write lock for a moment.
    let conn = match crate::run::db::open_db_to_tidy(path, later.busy) {
        Ok(conn) => conn,
        Err(e) => return warn(e.to_string()),
    };
    // Gone all the same: the other undo, ending too, dropped them first.
    if let Err(e) = drop_own_empty(&conn)
        && store::exists(&conn).unwrap_or(true)
    {
        warn(crate::run::db::run_time_message(&conn, &e));
    }
}

struct Undoer<'a> {
    conn: &'a Connection,
    spec: &'a Spec,
    /// The rows kept before that it holds too.
    scope: store::Scope,
    /// The last row of `batchsse_undo_conflict` as this try began.
    upto: i64,
    /// What the rows the part under way keeps are numbered above: `upto`,
    /// and every row of `batchsse_undo_conflict` this undo has read or
    /// kept (see [`store::keep`]).
    above: std::cell::Cell<i64>,
    log: &'a EventLog,
    cancel: &'a Cancel,
    governor: RefCell<Governor<'a>>,
    dry_run: bool,
    reverter: RefCell<Reverter<'a>>,
    db: String,
    /// Whether it warned of a newer recorded run that changed its tables:
    /// a row in conflict may then be that run's, not the application's.
    newer: std::cell::Cell<bool>,
    /// Whether `--on-conflict abort` met a conflict: a dry run's counts,
    /// of the parts before it, then say so.
    stopped_at_conflict: std::cell::Cell<bool>,
    /// The undo's step under way (its index among the undo's own `step`
    /// events), which a conflict's message names as a run's messages do.
    step: std::cell::Cell<usize>,
    /// Whether the plan had a checkpoint as this try began (a run with
    /// `--no-checkpoint` keeps none), which its last line says is cleared.
    checkpointed: bool,
}

type End = Option<(RunStatus, String)>;

impl Undoer<'_> {
    /// Why an interrupted undo stopped, and what is kept.
    fn interrupted(&self) -> String {
        match self.dry_run {
            true => INTERRUPTED_DRY.into(),
            false => INTERRUPTED.into(),
        }
    }

    /// What the last line says of the plan's checkpoint: that it is
    /// cleared (after `;`, or in parentheses), or nothing when it had none.
    fn cleared(&self, parens: bool) -> &'static str {
        match (self.checkpointed, parens) {
            (false, _) => "",
            (true, false) => "; its checkpoint is cleared",
            (true, true) => " (its checkpoint is cleared)",
        }
    }

    fn message(&self, level: Level, text: impl Into<String>) {
        self.log
            .push(Event::message(json!({"db": self.db}), level, text));
    }

    /// The recorded chunks to take back, grouped by (run, step), newest
    /// first; a group of an unrecorded step ends the list.
    fn groups(&self) -> rusqlite::Result<Vec<Vec<Chunk>>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, run, step, name, chunk, rows FROM batchsse_undo WHERE run = ?1 ORDER BY id DESC",
        )?;
        let mut groups: Vec<Vec<Chunk>> = Vec::new();
        for run in &self.spec.runs {
            let rows = stmt.query_map([run], |r| {
                Ok(Chunk {
                    id: r.get(0)?,
                    run: r.get(1)?,
                    step: r.get(2)?,
                    name: r.get(3)?,
                    chunk: r.get(4)?,
                    rows: r.get::<_, i64>(5)?.max(0) as u64,
                    count: None,
                    pos: 0,
                })
            })?;
            for c in rows {
                let c = c?;
                match groups.last_mut() {
                    Some(g) if g[0].run == c.run && g[0].step == c.step => g.push(c),
                    _ => groups.push(vec![c]),
                }
            }
        }
        for g in &mut groups {
            // A step's count of parts is no part to take back: it goes
            // down in the transaction of each part taken.
            if let Some(at) = g.iter().position(|c| c.chunk == PARTS) {
                let count = g.remove(at).id;
                g.iter_mut().for_each(|c| c.count = Some(count));
            }
        }
        groups.retain(|g| !g.is_empty());
        for (pos, c) in groups.iter_mut().flatten().enumerate() {
            c.pos = pos;
        }
        Ok(groups)
    }

    /// What the undo knows of rows it may save (see `stash`): the parts
    /// it takes back that may delete rows (up to a step the run did not
    /// record, where it stops), those the damage check found to hold no
    /// delete left out, and the rows earlier tries saved.
    fn stash(&self, groups: &[Vec<Chunk>]) -> rusqlite::Result<Stash> {
        let kept = self.spec.kept.borrow();
        let deleting = groups
            .iter()
            .take_while(|g| !g.iter().any(|c| c.chunk == UNRECORDED))
            .flatten()
            .filter(|c| c.chunk >= 0 && !kept.holds_no_delete(c.id))
            .map(|c| Deleting {
                pos: c.pos,
                id: c.id,
                run: c.run.clone(),
                step: c.step,
                chunk: c.chunk,
            })
            .collect();
        let mut stash = Stash::new(deleting, &self.spec.runs);
        stash.load(self.conn)?;
        Ok(stash)
    }

    /// A dry run's one transaction, rolled back when it is dropped; `None`
    /// for an undo that writes. `Err`: how the undo ends when it cannot
    /// begin.
    fn dry_run_transaction(&self) -> Result<Option<Tx<'_>>, End> {
        if !self.dry_run {
            return Ok(None);
        }
        match Tx::begin(self.conn, false) {
            Ok(t) => {
                self.cancel.in_one_transaction();
                Ok(Some(t))
            }
            Err(e) => Err(self.failed(format!(
                "the dry run's transaction could not begin: {}",
                crate::run::db::run_time_message(self.conn, &e)
            ))),
        }
    }

    /// Where the undo meets group `g` (index `i`), of a step the run did
    /// not record: it stops there, the step said skipped. That is the
    /// boundary before a step, as before any other: a pause sent during
    /// the last part before it was answered "pausing at the next chunk
    /// boundary", since the server sees a step still to come, so it holds
    /// here first. A cancel while held ends the undo as cancelled.
    fn stop_at_unrecorded(&self, i: usize, g: &[Chunk]) -> End {
        if self.governor.borrow_mut().wait_while_braked(None) || self.cancel.is_cancelled() {
            return Some((RunStatus::Cancelled, self.interrupted()));
        }
        let at = At {
            index: i,
            g,
            t0: Instant::now(),
            done: 0,
            total: 0,
            changed: 0,
        };
        self.step_event(&at, StepState::Skipped, None);
        self.message(
            Level::Warn,
            format!("the undo stops at step {} ({}), which the run did not record (\"undo\": false); earlier steps stay as they are", g[0].step.saturating_add(1), quoted(&g[0].name)),
        );
        None
    }

    fn run_all(&mut self, gate: impl FnOnce()) -> (Tally, End, usize) {
        let read = self.groups().and_then(|g| {
            let mut reverter = self.reverter.borrow_mut();
            reverter.hold_kept(&self.scope)?;
            reverter.stash = self.stash(&g)?;
            Ok(g)
        });
        let groups = match read {
            Ok(g) => g,
            Err(e) => {
                let end = self.failed(format!(
                    "cannot read the undo record: {}; nothing was taken back",
                    crate::run::db::run_time_message(self.conn, &e)
                ));
                return (Tally::default(), end, 0);
            }
        };
        self.announce(&groups);
        self.governor.borrow_mut().say_starting_pace();
        gate();
        if self.cancel.is_cancelled() {
            let end = Some((
                RunStatus::Cancelled,
                "interrupted before the undo began".into(),
            ));
            return (Tally::default(), end, groups.len());
        }
        let outer = match self.dry_run_transaction() {
            Ok(outer) => outer,
            Err(end) => return (Tally::default(), end, groups.len()),
        };
        let mut tally = Tally::default();
        let mut end = None;
        for (i, g) in groups.iter().enumerate() {
            if g.iter().any(|c| c.chunk == UNRECORDED) {
                end = self.stop_at_unrecorded(i, g);
                break;
            }
            match self.group(i, g, &mut tally) {
                Ok(()) => tally.steps_done += 1,
                Err(e) => {
                    end = Some(e);
                    break;
                }
            }
        }
        self.say_dangling();
        self.say_overwritten(tally.overwritten);
        if let Some(outer) = outer {
            tally.earlier = Some(self.earlier());
            tally.carried = self.say_dry_carried();
            drop(outer);
            self.say_dry_run(&tally, &end);
        } else if end.is_none() {
            tally.carried = self.finish();
        } else {
            // The parts it committed are taken back for good: the rows
            // they left carrying an older run's change do, stop or not.
            tally.carried = waiting_at_most(WRAP_UP_WAIT, || self.say_all_carried().1);
        }
        (tally, end, groups.len())
    }

    /// Of the rows kept before this try, those still kept (under
    /// `overwrite` it puts them back), and of those the ones kept as the
    /// run left them.
    fn earlier(&self) -> (u64, u64) {
        let kept = |why| store::kept_up_to(self.conn, &self.scope, why, self.upto).unwrap_or(0);
        (kept(""), kept(TAKEN))
    }

    /// A dry run's counts, once it has rolled back: those of the chunks
    /// before the stop when it stopped.
    fn say_dry_run(&self, tally: &Tally, end: &End) {
        let (level, before, so_far) = match end {
            None => (Level::Info, "", ""),
            // Its own conflict is not counted: "0 conflicts before it
            // stopped" read as if the undo had stopped for another reason.
            Some(_) if self.stopped_at_conflict.get() => (
                Level::Warn,
                "it stops at a conflict (--on-conflict abort); before it, ",
                "",
            ),
            Some(_) => (Level::Warn, "", " before it stopped"),
        };
        self.message(level, format!(
            "dry run: {before}{} row{} would be reverted, {} conflict{}{so_far}; rolled back, nothing was written",
            thousands(tally.reverted), plural(tally.reverted), thousands(tally.conflicts),
            plural(tally.conflicts)
        ));
    }

    /// A dry run's word of the rows the undo would leave carrying an older
    /// run's change, as the undo itself says at its end (see
    /// [`Self::say_carried`], and [`Self::say_older_carries`] when no
    /// record of the plan would be left): read before the dry run rolls
    /// back, since the marks and conflicts it wrote go with it. Gives how
    /// many rows it named.
    fn say_dry_carried(&self) -> u64 {
        let carried = store::carried(self.conn, &self.scope, &self.spec.runs).unwrap_or_default();
        let mut said = carried.iter().map(|c| c.rows).sum();
        for c in carried {
            let (n, older, by, plan) = (c.rows, &c.older, &c.by, quoted(&c.plan));
            let [rows, they, them] = they_them(n);
            self.message(Level::Warn, format!(
                "dry run: {} {rows} that run {by} changed after run {older} of plan {plan}, kept as conflicts by that run's undo, would get back what {they} held before run {by}: what run {older} wrote (unless an application changed {them} in between), so {they} would still carry run {older}'s change, with no record left to take it back; running plan {plan} again would then change {them} a second time (the undo names the command that lists {them})",
                thousands(n)
            ));
        }
        let left: rusqlite::Result<bool> = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM batchsse_undo WHERE plan = ?1)",
            [&self.spec.plan],
            |r| r.get(0),
        );
        if left.unwrap_or(true) {
            return said;
        }
        for (run, n) in store::left_by_older(self.conn, &self.scope).unwrap_or_default() {
            said += n;
            let [rows, they, them] = they_them(n);
            self.message(Level::Warn, format!(
                "dry run: {} {rows} that the undo of run {run}, an older run of plan {}, kept (a newer run had changed {them} since) would get back what run {run} wrote, so {they} would still carry that run's change, with no record left to take it back; running the plan again would then change {them} a second time; to list {them}: sqlite3 {} \"SELECT tbl, k FROM batchsse_undo_conflict WHERE run = '{run}'\"",
                thousands(n),
                quoted(&self.spec.plan),
                crate::run::db::shell_word_of(self.conn),
            ));
        }
        said
    }

    /// Warns of rows the undo left with a foreign key pointing at nothing
    /// (see [`super::dangling`]).
    fn say_dangling(&self) {
        let reverter = self.reverter.borrow();
        let Some(w) = reverter.watch.as_ref() else {
            return;
        };
        let tables = w.watched();
        if tables.is_empty() {
            return;
        }
        // A scan of each table: seconds on millions of rows.
        self.message(
            Level::Info,
            format!(
                "checking the foreign keys of {}, which the undo may have left pointing at rows that are gone",
                crate::human::shown_list(&tables)
            ),
        );
        if let Some(text) = w.said(self.conn, self.dry_run) {
            self.message(Level::Warn, text);
        }
    }

    /// Counts the rows of the application put back over (`overwrite`).
    fn say_overwritten(&self, n: u64) {
        if n == 0 {
            return;
        }
        let (rows, was) = match n {
            1 => ("row", "was"),
            _ => ("rows", "were"),
        };
        let overwritten = match self.dry_run {
            true => "would be overwritten",
            false => &format!("{was} overwritten"),
        };
        self.message(
            Level::Warn,
            format!(
                "{} {rows} the application changed since the run {overwritten} with the values from before the run",
                thousands(n)
            ),
        );
    }

    fn failed(&self, why: String) -> End {
        self.message(Level::Error, why.clone());
        Some((RunStatus::Failed, why))
    }

    fn announce(&self, groups: &[Vec<Chunk>]) {
        self.governor.borrow_mut().say_start(|settings| {
            self.log.push(Event::Start(Start {
                protocol: crate::events::PROTOCOL,
                pid: std::process::id(),
                run_id: crate::run::run_id(),
                plan: self.spec.plan.clone(),
                db: self.db.clone(),
                steps: groups
                    .iter()
                    .enumerate()
                    .map(|(i, g)| StepInfo {
                        index: i,
                        name: format!("undo step {}: {}", g[0].step.saturating_add(1), g[0].name),
                        kind: StepKind::Chunked,
                    })
                    .collect(),
                dry_run: self.dry_run,
                resumed: false,
                settings,
                kind: RunKind::Undo,
                undo: Some(UndoInfo {
                    unrecorded_steps: Vec::new(),
                    reverts: self.spec.runs.clone(),
                }),
            }))
        });
        self.say_newer_runs();
        self.say_newer_of_other_plans();
    }

    /// Taking back a run while a newer run of another plan that changed
    /// the same tables stays recorded: the rows both changed are conflicts
    /// to this undo, though no application wrote them, and the newer run's
    /// undo would later put this run's values back into them. Newest
    /// first, both go back whole.
    fn say_newer_of_other_plans(&self) {
        let Ok(newer) = super::overlap::newer_runs(self.conn, &self.spec.runs, &self.spec.plan)
        else {
            return;
        };
        let db = crate::run::db::shell_word_of(self.conn);
        let (these, whose) = match self.spec.runs.len() {
            1 => ("this run", "this run's"),
            _ => ("the oldest of these runs", "these runs'"),
        };
        self.newer.set(self.newer.get() || !newer.is_empty());
        for n in &newer {
            let tables: Vec<String> = n.tables.iter().map(|t| quoted(t)).collect();
            self.message(
                Level::Warn,
                format!(
                    "run {} of plan {}, recorded after {}, changed {} {} too: the rows both runs changed are conflicts to this undo (not the application's), and undoing run {} after it would bring back {} values into them; to take back {}, newest first: {}, then this undo",
                    n.run,
                    quoted(&n.plan),
                    these,
                    match tables.len() {
                        1 => "table",
                        _ => "tables",
                    },
                    tables.join(", "),
                    n.run,
                    whose,
                    match n.after.is_empty() {
                        true => "both",
                        false => "all of them",
                    },
                    n.after
                        .iter()
                        .chain([&n.run])
                        .map(|r| format!("batchsse undo --db {db} --run {r}"))
                        .collect::<Vec<_>>()
                        .join(", then "),
                ),
            );
        }
    }

    /// Taking back one run while a newer run of its plan stays recorded:
    /// the rows the newer one changed after it are no longer as this run
    /// left them, so they are kept as conflicts, still carrying the newer
    /// run's change, though no application wrote them.
    fn say_newer_runs(&self) {
        let ([run], plan) = (self.spec.runs.as_slice(), &self.spec.plan) else {
            return;
        };
        let Ok(all) = store::runs_of_plan(self.conn, plan) else {
            return;
        };
        let newer: Vec<String> = all.into_iter().take_while(|r| r != run).collect();
        if newer.is_empty() {
            return;
        }
        self.newer.set(true);
        self.message(
            Level::Warn,
            format!(
                "run {} of plan {} was recorded after this one and stays as it is: the rows it changed after this run are kept as conflicts, still carrying its change; to take back both, newest first: batchsse undo --db {} --plan {}",
                newer.join(", "),
                quoted(plan),
                crate::run::db::shell_word_of(self.conn),
                crate::human::shell_word(plan)
            ),
        );
    }

    /// A `step` event for group `at`: `skipped` before it began.
    fn step_event(&self, at: &At<'_>, state: StepState, error: Option<String>) {
        let event = self.step_of(at, state, error);
        self.log.push(Event::Step(event));
    }

    /// The event [`Self::step_event`] sends, built apart so that a failed
    /// step's can say a cancel stopped it.
    fn step_of(&self, at: &At<'_>, state: StepState, error: Option<String>) -> StepEvent {
        StepEvent {
            index: at.index,
            name: at.name(),
            state,
            done: at.done,
            total: at.total,
            changed: at.changed,
            elapsed_ms: ms(at.t0.elapsed()),
            error,
            cancelled: false,
        }
    }

    /// Takes back one step's chunks, newest first.
    fn group(
        &self,
        index: usize,
        g: &[Chunk],
        tally: &mut Tally,
    ) -> Result<(), (RunStatus, String)> {
        let mut at = At {
            index,
            g,
            t0: Instant::now(),
            done: 0,
            total: g.iter().map(|c| c.rows).sum(),
            changed: 0,
        };
        self.step.set(index);
        self.step_event(&at, StepState::Running, None);
        let paused0 = self.governor.borrow().paused();
        for (n, c) in g.iter().enumerate() {
            let last = n + 1 == g.len();
            if self.governor.borrow_mut().wait_while_braked(Some(index))
                || self.cancel.is_cancelled()
            {
                return Err(self.stopped(&at, RunStatus::Cancelled, self.interrupted()));
            }
            let (c0, reverted0) = (Instant::now(), tally.reverted);
            let under_way = self.cancel.under_way(Work::Chunk);
            let taken = self
                .chunk(c, tally)
                .map_err(|why| self.chunk_failed(&at, why))?;
            drop(under_way);
            (at.done, at.changed) = (at.done + c.rows, at.changed + tally.reverted - reverted0);
            let took = c0.elapsed();
            // A part another undo took meanwhile cost nothing: no pause.
            let pause = if taken && !last {
                self.governor.borrow().rest_after(took)
            } else {
                Duration::ZERO
            };
            let paused = self.governor.borrow().paused().saturating_sub(paused0);
            self.log.push(Event::Progress(at.progress((pause, paused))));
            if taken && self.governor.borrow_mut().after_chunk(took, index, last) {
                return Err(self.stopped(&at, RunStatus::Cancelled, self.interrupted()));
            }
        }
        at.done = at.total;
        self.step_event(&at, StepState::Done, None);
        Ok(())
    }

    /// How a part that failed with `why` ends the undo.
    fn chunk_failed(&self, at: &At<'_>, why: String) -> (RunStatus, String) {
        // Ctrl-C stops the statement under way with an error: that is the
        // interrupt, not a failure (the part rolled back).
        if self.cancel.is_cancelled() {
            return self.stopped(at, RunStatus::Cancelled, self.interrupted());
        }
        // The step's failure first, as a run logs it: a viewer then knows
        // the message for the error it has already shown, and says it once.
        let end = self.stopped(at, RunStatus::Failed, schema_hint(why));
        self.message(Level::Error, end.1.clone());
        end
    }

    fn stopped(&self, at: &At<'_>, status: RunStatus, why: String) -> (RunStatus, String) {
        let mut end = self.step_of(at, StepState::Failed, Some(why.clone()));
        end.cancelled = status == RunStatus::Cancelled;
        self.log.push(Event::Step(end));
        (status, why)
    }

    /// One recorded part in its own transaction: its entries put back
    /// newest first, then its row deleted. False when the part was gone.
    fn chunk(&self, c: &Chunk, tally: &mut Tally) -> Result<bool, String> {
        let sql = |e: rusqlite::Error| crate::run::db::run_time_message(self.conn, &e);
        let tx = Tx::begin(self.conn, self.dry_run).map_err(sql)?;
        let mut reverter = self.reverter.borrow_mut();
        reverter.hold_kept(&self.scope).map_err(sql)?;
        self.above.set(self.upto.max(reverter.kept_seen()));
        reverter.stash.at(c.pos);
        reverter.part_of_run(self.scope.recorded_at(&c.run));
        let mut blob = reverter.buffer();
        drop(reverter);
        let mut kept = self.spec.kept.borrow_mut();
        let read = store::read_kept(self.conn, c.part(), &mut blob, Some(&mut kept));
        drop(kept);
        let recorded = match read.map_err(sql)? {
            // Gone: another undo (or `undo clear`) took this part meanwhile.
            None => return Ok(false),
            // `false`: a step that changed nothing; only its note goes.
            Some(recorded) => recorded,
        };
        if recorded
            && let Some((how, tables)) =
                store::renumbered_in(self.conn, &c.run, &blob).map_err(sql)?
        {
            return Err(self.renumbered(c, how, &tables));
        }
        if recorded {
            let tables = super::rebuilt::in_part(self.conn, &c.run, c.id, &blob).map_err(sql)?;
            if !tables.is_empty() {
                return Err(self.rebuilt(c, &tables));
            }
        }
        let before = (tally.conflicts, tally.overwritten);
        let (mut kept, mut overwritten, mut as_left) = (0u64, 0u64, 0u64);
        let mut on_kept = |conflict: Conflict<'_>| match conflict.overwritten {
            true => {
                overwritten += 1;
                self.said_overwritten(&conflict, before.1 + overwritten);
                Ok(())
            }
            false => {
                kept += 1;
                as_left += u64::from(conflict.as_run_left);
                self.kept(c, conflict, before.0 + kept)
            }
        };
        let mut reverter = self.reverter.borrow_mut();
        let reverted = match recorded {
            true => reverter.apply_blob(blob, &mut on_kept)?,
            false => 0,
        };
        let carried = reverter.take_carried();
        drop(reverter);
        let oldest = self.spec.runs.last().unwrap_or(&c.run);
        store::mark_carried(self.conn, &carried, (&c.run, &self.spec.plan), oldest).map_err(sql)?;
        self.conn
            .execute("DELETE FROM batchsse_undo WHERE id = ?1", [c.id])
            .map_err(sql)?;
        // A note of the step is no part: it leaves the count alone.
        if let Some(count) = c.count.filter(|_| c.chunk >= 0) {
            store::part_taken(self.conn, count, c.part()).map_err(sql)?;
        }
        self.settle(c).map_err(sql)?;
        if self.cancel.is_cancelled() {
            return Err("interrupted; the current chunk was rolled back".into());
        }
        // Nobody else writes while the part's transaction holds the file:
        // the rows kept past the last read are this part's, held already.
        let own = (kept > 0)
            .then(|| store::last_kept(self.conn).ok())
            .flatten();
        tx.commit().map_err(sql)?;
        if let Some(own) = own {
            self.reverter.borrow_mut().seen_through(own);
        }
        tally.reverted += reverted;
        tally.conflicts += kept;
        tally.overwritten += overwritten;
        tally.as_left += as_left;
        Ok(true)
    }

    /// Why the undo stops at part `c`: `how` numbered anew the rowids of
    /// `tables`, by which the part finds its rows, since the run was
    /// recorded (an application's `VACUUM` between two parts of this
    /// undo). Putting it back would write old values into other rows.
    fn renumbered(&self, c: &Chunk, how: store::Renumbered, tables: &[String]) -> String {
        let one = tables.len() == 1;
        format!(
            "the rowids of {} were numbered anew while the undo ran ({}, {}), and the record finds {} rows by rowid, so taking the rest back would put old values into other rows. The undo stopped here, this part rolled back; what it took back before stays taken back, and the rest can no longer be taken back safely: remove it with `batchsse undo clear --db {} --run {}`. To keep this from happening, vacuum only once the run is taken back, or give such tables an INTEGER PRIMARY KEY",
            crate::human::shown_list(tables),
            how.by(),
            how.which(),
            if one { "its" } else { "their" },
            crate::run::db::shell_word_of(self.conn),
            crate::human::shell_word(&c.run)
        )
    }

    /// Why the undo stops at part `c`: `tables`, whose rows its record
    /// finds by rowid, were made anew (see [`super::rebuilt`]).
    fn rebuilt(&self, c: &Chunk, tables: &[String]) -> String {
        format!(
            "{}; the undo stopped here, this part rolled back, and what it took back before stays taken back: {}",
            super::rebuilt::why(tables, &c.run),
            super::rebuilt::what_now(&crate::run::db::shell_word_of(self.conn), &c.run),
        )
    }

    /// In part `c`'s transaction, once its record is gone: a step with no
    /// record left (of any run of the plan) is taken back whole, so its
    /// checkpoint goes and the step can run again; one with records left
    /// is marked as taken back in part (see [`checkpoint::UNDOING`]), so a
    /// run of the plan waits for the undo to end instead of skipping it.
    /// A kill between two parts leaves the checkpoint saying just that.
    fn settle(&self, c: &Chunk) -> rusqlite::Result<()> {
        if !checkpoint::table_exists(self.conn).unwrap_or(false) {
            return Ok(());
        }
        let plan = &self.spec.plan;
        let left: bool = self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM batchsse_undo WHERE plan = ?1 AND step = ?2)",
            )?
            .query_row(rusqlite::params![plan, c.step], |r| r.get(0))?;
        let mut set = match left {
            true => self.conn.prepare_cached(&format!(
                "UPDATE batchsse_checkpoint SET checksum = '{}' WHERE plan = ?1 AND step = ?2",
                checkpoint::UNDOING
            ))?,
            false => self
                .conn
                .prepare_cached("DELETE FROM batchsse_checkpoint WHERE plan = ?1 AND step = ?2")?,
        };
        set.execute(rusqlite::params![plan, c.step])?;
        // With its checkpoint go its walk's probe row and the rows of
        // its TEMP tables (a run of the plan starts that step over).
        if let (false, Ok(step)) = (left, usize::try_from(c.step)) {
            crate::run::walk_probe::forget(self.conn, plan, Some(step))?;
            crate::run::setup::kept::forget(self.conn, plan, Some(step))?;
            crate::run::setup::kept::forget_writer(self.conn, plan, step)?;
        }
        Ok(())
    }

    /// A conflict met: an error under `abort`, else recorded and (the
    /// first ones) reported. `nth`: the undo's conflicts so far.
    fn kept(&self, c: &Chunk, k: Conflict<'_>, nth: u64) -> Result<(), String> {
        if self.spec.on_conflict == OnConflict::Abort {
            // Overwrite cannot put back a value another row holds; skip
            // cannot bring a row back to its old key while its new one stays.
            let ways = match (k.as_run_left, k.moved) {
                // The row the run inserted again at the key is gone: skip
                // puts it back, as the run left it.
                (true, _) if k.why.starts_with(RUNS_ROW) => {
                    "--on-conflict skip (keep the row the run inserted again at that key, as the run left it)"
                }
                (true, _) => "--on-conflict skip (keep that row as it is)",
                (false, true) => {
                    "--on-conflict overwrite (the run changed this row's key: keeping the application's row at the new key would leave the old one out)"
                }
                (false, false) => {
                    "--on-conflict skip (keep the application's rows) or overwrite (put the run's old values back)"
                }
            };
            self.stopped_at_conflict.set(true);
            return Err(format!(
                "conflict in {} at key {}: {}; --on-conflict abort rolled this chunk back. To finish the undo, run it again with {ways}",
                crate::human::shown(k.table),
                k.shown,
                k.why
            ));
        }
        self.conflict(c, &k, nth)
            .map_err(|e| crate::run::db::run_time_message(self.conn, &e))
    }

    /// Reports (the first ones of) the rows of the application put back
    /// over; none goes to `batchsse_undo_conflict`, which holds the rows
    /// kept (an undo run again must not keep these).
    fn said_overwritten(&self, k: &Conflict<'_>, nth: u64) {
        let overwrote = match self.dry_run {
            true => "would overwrite",
            false => "overwrote",
        };
        let more = "more rows of the application overwritten: the last lines count them";
        self.say_conflict(k, &format!("{overwrote} the application's row"), nth, more);
    }

    /// Records (and, for the first ones, reports) a row kept under `skip`.
    fn conflict(&self, c: &Chunk, k: &Conflict<'_>, nth: u64) -> rusqlite::Result<()> {
        let row = [&c.run, k.table, k.why.as_str(), &self.spec.plan];
        let recorded = self.scope.recorded_at(&c.run);
        store::keep(self.conn, row, &k.key, (self.above.get(), recorded))?;
        let kept = match self.dry_run {
            true => "would keep",
            false => "kept",
        };
        let whose = match k.as_run_left {
            _ if k.why.starts_with(STAYS_DELETED) => "the row out, deleted as the run left it",
            _ if k.why.starts_with(RUNS_ROW) => {
                "its row as the run left it (the row the run inserted again, with the run's values, not the application's)"
            }
            true => "its row as it is (the run's values, not the application's)",
            false if self.newer.get() => {
                "the row as it is now (the application's, or a newer run's: see the warning above)"
            }
            false => "the application's row",
        };
        // A dry run rolls the table back with everything else.
        let more = match self.dry_run {
            true => "more conflicts: the last line counts them all".to_owned(),
            false => format!(
                "more conflicts: every one is in the table batchsse_undo_conflict; to list them: {}",
                self.conflicts_command()
            ),
        };
        self.say_conflict(k, &format!("{kept} {whose}"), nth, &more);
        Ok(())
    }

    /// A command to paste that lists the rows this undo kept: its
    /// messages name only the first [`SHOWN_CONFLICTS`].
    fn conflicts_command(&self) -> String {
        let runs: Vec<String> = self
            .spec
            .runs
            .iter()
            .map(|r| format!("'{}'", r.replace('\'', "''")))
            .collect();
        let sql = format!(
            "SELECT tbl, k, why FROM batchsse_undo_conflict WHERE run IN ({}) ORDER BY rowid",
            runs.join(", ")
        );
        // Run ids are letters, digits and '-': in double quotes the SQL
        // reads as typed, where single quotes would need '\'' escapes.
        let shell_safe = !sql.contains(['"', '$', '`', '\\', '!']);
        format!(
            "sqlite3 {} {}",
            crate::run::db::shell_word_of(self.conn),
            match shell_safe {
                true => format!("\"{sql}\""),
                false => crate::human::shell_word(&sql),
            }
        )
    }

    /// The undo's `nth` conflict, `k`, and what became of its row
    /// (`done`), as a message for each of the first ones, then `more`
    /// once.
    fn say_conflict(&self, k: &Conflict<'_>, done: &str, nth: u64, more: &str) {
        if nth <= SHOWN_CONFLICTS {
            self.log.push(Event::message(
                json!({"db": self.db, "step": self.step.get(), "table": k.table, "key": json_value(&k.key.to_value())}),
                Level::Warn,
                format!(
                    "conflict in {} at key {}: {}; {done}",
                    crate::human::shown(k.table),
                    k.shown,
                    k.why
                ),
            ));
        } else if nth == SHOWN_CONFLICTS + 1 {
            self.message(Level::Warn, more);
        }
    }

    /// Says that the plan is taken back, and names the rows that still
    /// carry its change: kept as the run left them, since another row holds
    /// a value they would get back. Running the plan again would change
    /// them twice. `older`: the rows left carrying an older run's change
    /// of the plan, by run ([`store::left_by_older`]).
    fn say_taken_back(&self, carried: bool, older: &[(String, u64)]) {
        let plan = &self.spec.plan;
        let deleted = store::kept_why(self.conn, &self.scope, STAYS_DELETED).unwrap_or(0);
        let as_left = store::kept_why(self.conn, &self.scope, TAKEN)
            .unwrap_or(0)
            .saturating_sub(deleted);
        let kept = store::kept_why(self.conn, &self.scope, "").unwrap_or(0);
        for (run, n) in older {
            self.say_older_carries(run, *n);
        }
        if kept == 0 && older.is_empty() {
            // Rows that carry another plan's older run (said above): this
            // plan is out of the file, but the file is not as before it.
            let fully = if carried { "" } else { "fully " };
            return self.message(
                Level::Info,
                format!(
                    "plan {} is {fully}taken back{}, so it can run again",
                    quoted(plan),
                    self.cleared(false)
                ),
            );
        }
        let gone: u64 = GONE
            .iter()
            .map(|why| store::kept_why(self.conn, &self.scope, why).unwrap_or(0))
            .sum();
        // Rows the run deleted that were written again at their keys:
        // nothing of the run's is on them.
        let back = store::kept_why(self.conn, &self.scope, RUN_DELETED).unwrap_or(0);
        if kept > as_left + gone + deleted + back {
            self.say_theirs_carry(kept - as_left - gone - deleted - back);
        }
        if back > 0 {
            self.say_written_again(back);
        }
        if gone > 0 {
            self.say_gone(gone);
        }
        if deleted > 0 {
            self.say_stay_deleted(deleted);
        }
        if as_left == 0 {
            return;
        }
        let [left, why, carries, it, those] = match as_left {
            1 => [
                "it",
                "another row holds a value it",
                "It still carries",
                "it",
                "that row right, or leave it",
            ],
            _ => [
                "them",
                "other rows hold values they",
                "Each still carries",
                "them",
                "those rows right, or leave them",
            ],
        };
        self.message(Level::Warn, format!(
            "plan {} is taken back, all but {} row{} kept as the run left {left} ({why} would get back; see the table batchsse_undo_conflict). {carries} the run's change, so running the plan again would change {it} a second time: put {those} out of the plan's WHERE, before it runs again{cleared}",
            quoted(plan),
            thousands(as_left),
            plural(as_left),
            cleared = self.cleared(true),
        ));
    }

    /// Says that `n` rows an undo of `run`, an older run of the plan taken
    /// back first, kept (this undo's run had changed them since) now hold
    /// what `run` wrote, put back by this undo: its change stays in them,
    /// with no record left to take it back, though the plan's checkpoint
    /// is cleared.
    fn say_older_carries(&self, run: &str, n: u64) {
        let [rows, them, carry] = match n {
            1 => ["row", "it", "it still carries"],
            _ => ["rows", "them", "they still carry"],
        };
        self.message(Level::Warn, format!(
            "plan {} is not fully taken back: {} {rows} that the undo of run {run}, an older run of the plan, kept (this run had changed {them} since) got back what run {run} wrote, so {carry} that run's change, and no record is left to take it back; running the plan again would change {them} a second time: put {them} right, or leave {them} out of the plan's WHERE, before it runs again (the steps taken back can run again); to list {them}: sqlite3 {} \"SELECT tbl, k FROM batchsse_undo_conflict WHERE run = '{run}'\"",
            quoted(&self.spec.plan),
            thousands(n),
            crate::run::db::shell_word_of(self.conn),
        ));
    }

    /// Says, run by run, the rows this undo (and its earlier tries) put
    /// back to an older run's change (see [`Self::say_carried`]): whether
    /// there were any, and how many.
    fn say_all_carried(&self) -> (bool, u64) {
        let carried = store::carried(self.conn, &self.scope, &self.spec.runs).unwrap_or_default();
        for c in &carried {
            self.say_carried(c);
        }
        (!carried.is_empty(), carried.iter().map(|c| c.rows).sum())
    }

    /// Says that rows an undo of an older run of another plan kept (run
    /// `c.by` had changed them since) got back, through this undo, what
    /// they held before `c.by`: what the older run wrote, unless an
    /// application changed them in between. Its change stays in them, with
    /// no record left to take it back, and its plan may run again.
    fn say_carried(&self, c: &store::Carried) {
        let [rows, they, them, carry] = match c.rows {
            1 => ["row", "it", "it", "carries"],
            _ => ["rows", "they", "them", "carry"],
        };
        let (by, older) = (&c.by, &c.older);
        self.message(Level::Warn, format!(
            "{} {rows} that run {by} changed after run {older} of plan {}, kept as conflicts by that run's undo, got back what {they} held before run {by}: what run {older} wrote (unless an application changed {them} in between), so {they} still {carry} run {older}'s change, and no record is left to take it back; running plan {} again would change {them} a second time: put {them} right, or leave {them} out of its WHERE, before it runs again; to list {them}: sqlite3 {} \"SELECT tbl, k FROM batchsse_undo_conflict WHERE {}\"",
            thousands(c.rows),
            quoted(&c.plan),
            quoted(&c.plan),
            crate::run::db::shell_word_of(self.conn),
            c.which,
        ));
    }

    /// Says that `n` rows the run deleted stay deleted: other rows written
    /// since hold values they would get back. No row carries the run's
    /// change, so nothing is to be put right.
    fn say_stay_deleted(&self, n: u64) {
        let [rows, which, hold] = match n {
            1 => ["row", "stays", "another row written since holds a value it"],
            _ => ["rows", "stay", "rows written since hold values they"],
        };
        self.message(Level::Warn, format!(
            "plan {} is taken back, all but {} {rows} the run deleted, which {which} deleted: {hold} would get back (see the table batchsse_undo_conflict){cleared}, so it can run again",
            quoted(&self.spec.plan),
            thousands(n),
            cleared = self.cleared(false),
        ));
    }

    /// Says that `n` rows the run deleted were not put back: a row was
    /// written again at their keys since (by the application, or a later
    /// run), which is kept as it is. It holds nothing of the run's, but the
    /// plan, run again, would delete it.
    fn say_written_again(&self, n: u64) {
        let w = match n {
            1 => [
                "key",
                "a row was",
                "that row is",
                "it is",
                "it",
                "it still matches",
            ],
            _ => [
                "keys",
                "rows were",
                "those rows are",
                "they are",
                "them",
                "they still match",
            ],
        };
        self.message(Level::Warn, format!(
            "plan {} is taken back but for {} row{} the run deleted, at whose {keys} {written} written again after the run (by the application, or a later run): {kept} kept as {is} (see the table batchsse_undo_conflict); nothing of the run's is in {it}, but running the plan again would delete {it} if {matches} its WHERE{cleared}",
            quoted(&self.spec.plan),
            thousands(n),
            plural(n),
            keys = w[0],
            written = w[1],
            kept = w[2],
            is = w[3],
            it = w[4],
            matches = w[5],
            cleared = self.cleared(false),
        ));
    }

    /// Says that `n` rows the run wrote were deleted by the application
    /// since: kept as conflicts, with nothing of the run left in them.
    fn say_gone(&self, n: u64) {
        let [rows, them, they] = match n {
            1 => ["row", "it", "it stays"],
            _ => ["rows", "them", "they stay"],
        };
        self.message(Level::Warn, format!(
            "plan {} is taken back but for {} {rows} the run wrote that the application deleted after the run: nothing of {them} was left to take back, so {they} deleted (see the table batchsse_undo_conflict){cleared}, so it can run again",
            quoted(&self.spec.plan),
            thousands(n),
            cleared = self.cleared(false),
        ));
    }

    /// Says that the plan is taken back but for `n` rows the application
    /// changed after the run, kept as it left them: their columns it did
    /// not set may still hold the run's values, which a second run of the
    /// plan would change again.
    fn say_theirs_carry(&self, n: u64) {
        let plan = &self.spec.plan;
        let [row, them, carry, those] = match n {
            1 => ["row", "it", "its", "that row"],
            _ => ["rows", "them", "their", "those rows"],
        };
        self.message(Level::Warn, format!(
            "plan {} is taken back but for {} {row} the application changed after the run, kept as the application left {them} (see the table batchsse_undo_conflict): {carry} columns the application did not set may still hold the run's values, so running the plan again would change {them} a second time: check {those}, or put {them} out of the plan's WHERE, before it runs again{cleared}",
            quoted(plan),
            thousands(n),
            cleared = self.cleared(true),
        ));
    }

    /// After a plan is taken back whole, batchsse's own tables that hold
    /// nothing go, so the file holds what it held before the run. Rows
    /// kept as conflicts keep the undo's tables, another plan's
    /// checkpoint the checkpoint's; and nothing goes while another run or
    /// undo of this program has the file open (an undo of the same run
    /// beside this one still reads them), nor where the system cannot
    /// tell.
    fn tidy(&self) {
        let Some(path) = crate::run::db::file_of(self.conn) else {
            return;
        };
        match alone(&path) {
            Some(true) => {}
            // Another batchsse that has it open may be an undo of the same
            // runs ending at this moment, which sees this one: each would
            // leave the tables to the other. Looked at again once this
            // undo's connection is closed, the last to close sees no other.
            Some(false) => return self.tidy_later(path),
            None => return,
        }
        match drop_own_empty(self.conn) {
            Ok(()) => {}
            // Another undo that ended beside it, its connection closed,
            // is dropping them on one of its own (see `tidy_when_closed`).
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                self.tidy_later(path)
            }
            Err(e) => self.message(
                Level::Warn,
                format!(
                    "the undo is complete, but batchsse's own tables, now empty, could not be removed: {}; `batchsse undo clear` and `batchsse checkpoint clear` remove them",
                    crate::run::db::run_time_message(self.conn, &e)
                ),
            ),
        }
    }

    /// Leaves the tables to [`tidy_when_closed`], with the undo's busy
    /// timeout.
    fn tidy_later(&self, path: std::path::PathBuf) {
        *self.spec.tidy_later.borrow_mut() = Some(TidyLater {
            file: crate::platform::file_identity(&path),
            path,
            busy: crate::run::db::busy_timeout(),
        });
    }

    /// After a complete undo: says what is left. The checkpoint of each
    /// step taken back whole went in its last part's transaction
    /// ([`Undoer::settle`]), so those steps can run again. Gives the rows
    /// it said still carry an older run's change (`carried_older`).
    fn finish(&self) -> u64 {
        let plan = &self.spec.plan;
        // Each row saved waited for a part now taken back.
        if let Err(e) = stash::forget(self.conn, &self.spec.runs) {
            self.message(
                Level::Warn,
                format!(
                    "the undo is complete, but the rows it saved in {} could not be removed: {}; `batchsse undo clear` removes them",
                    stash::TABLE,
                    crate::run::db::run_time_message(self.conn, &e)
                ),
            );
        }
        let steps = |sql: &str| -> rusqlite::Result<Vec<i64>> {
            self.conn
                .prepare(sql)?
                .query_map([plan], |r| r.get(0))?
                .collect()
        };
        let done = || -> rusqlite::Result<(Vec<i64>, Vec<i64>)> {
            let recorded =
                steps("SELECT DISTINCT step FROM batchsse_undo WHERE plan = ?1 ORDER BY step")?;
            if !checkpoint::table_exists(self.conn).unwrap_or(false) {
                return Ok((Vec::new(), recorded));
            }
            let kept = steps("SELECT step FROM batchsse_checkpoint WHERE plan = ?1 ORDER BY step")?;
            Ok((kept, recorded))
        };
        let listed = |s: &[i64]| -> String {
            let s: Vec<String> = s.iter().map(|s| s.saturating_add(1).to_string()).collect();
            s.join(", ")
        };
        let (any, mut said) = self.say_all_carried();
        // With no record of the plan left, rows an older run's undo kept
        // hold what that run wrote, whatever steps stay checkpointed (as
        // a dry run counts them, [`Self::say_dry_carried`]).
        let older = || store::left_by_older(self.conn, &self.scope).unwrap_or_default();
        match done() {
            Ok((kept, left)) if kept.is_empty() && left.is_empty() => {
                let older = older();
                said += older.iter().map(|(_, n)| n).sum::<u64>();
                self.say_taken_back(any, &older);
                self.tidy();
            }
            Ok((kept, left)) if left.is_empty() => {
                for (run, n) in older() {
                    said += n;
                    self.say_older_carries(&run, n);
                }
                self.message(Level::Warn, format!("plan {}: the steps taken back can run again, but step(s) {} were applied by a run that was not recorded, so they stay applied and checkpointed (running the plan again will not apply them twice)", quoted(plan), listed(&kept)));
            }
            Ok((_, left)) => self.message(Level::Warn, format!("plan {} is not fully taken back: step(s) {} still have undo records (a step the run did not record stopped the undo, or only some of the plan's runs were taken back), so they stay checkpointed: running the plan again skips them, or is refused while a step is taken back only in part (`batchsse undo list` shows what is left); the steps taken back in full can run again", quoted(plan), listed(&left))),
            Err(e) => self.message(
                Level::Warn,
                format!(
                    "the undo is complete, but the plan's checkpoint could not be cleared: {}",
                    crate::run::db::run_time_message(self.conn, &e)
                ),
            ),
        }
        said
    }
}

/// "row", "it", "it" or "rows", "they", "them", for `n` rows.
fn they_them(n: u64) -> [&'static str; 3] {
    match n {
        1 => ["row", "it", "it"],
        _ => ["rows", "they", "them"],
    }
}

/// A key for a message's `target`: blobs as their SQL literal.
fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => json!(i),
        Value::Real(f) => json!(f),
        Value::Text(t) => json!(t),
        Value::Blob(_) => json!(shown(v)),
    }
}

/// A failure from a column or table the record names that the database
/// no longer has, with what to do about it.
fn schema_hint(why: String) -> String {
    if store::says_missing(&why) {
        return format!(
            "the undo record was removed while the undo ran (by `batchsse undo clear`?; {why}): the parts taken back so far stay taken back, and the rest can no longer be"
        );
    }
    if why.contains("no such table") {
        return format!(
            "{why}: the table was renamed or dropped since the run was recorded, and the undo puts rows back into the table it recorded; give a renamed table its old name back (or make a dropped one again) and run the undo again, or drop the record with `batchsse undo clear`"
        );
    }
    if !why.contains("no such column") && !why.contains("has no column named") {
        return why;
    }
    format!(
        "{why}: the table's columns changed since the run was recorded, and the undo puts back the columns it recorded; give a renamed column its old name back (or add a dropped one again) and run the undo again, or drop the record with `batchsse undo clear`"
    )
}
