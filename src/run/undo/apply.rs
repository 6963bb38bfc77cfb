//! `batchsse undo`: applies a recorded run's inverse newest first, one
//! recorded chunk per transaction (which also deletes that chunk's records,
//! so an undo killed anywhere resumes without applying anything twice),
//! paced by the governor and reported as events like a run.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::record::{Shape, shapes};
use super::store::{UNRECORDED, op};
use crate::events::log::EventLog;
use crate::events::{
    Event, Finished, Level, Progress, RunKind, RunStatus, Start, StepEvent, StepInfo, StepKind,
    StepState, UndoInfo,
};
use crate::human::thousands;
use crate::lifecycle::{Cancel, Steering};
use crate::plan::quote;
use crate::run::expect::shown;
use crate::run::governor::Governor;
use crate::run::tx::Tx;
use crate::run::{Options, ms};

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
    first: i64,
    last: i64,
    /// Rows the chunk changed when it ran.
    rows: u64,
}

/// Rows by (table, key), the key as its debug text (a `Value` has no
/// hash).
type Keys = HashSet<(String, String)>;

/// One record row.
struct Rec {
    tbl: String,
    op: i64,
    k: Value,
    col: Option<String>,
    old: Value,
    new: Value,
}

/// What an interrupted undo says.
const INTERRUPTED: &str =
    "interrupted; every chunk taken back so far is committed: run the same undo again to go on";

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
        format!("undo step {}: {}", self.g[0].step + 1, self.g[0].name)
    }

    fn progress(&self) -> Progress {
        let elapsed = self.t0.elapsed();
        let rate = self.done as f64 / elapsed.as_secs_f64().max(1e-6);
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

impl Rec {
    /// From `SELECT rec, tbl, op, k, col, old, new`.
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Rec> {
        Ok(Rec {
            tbl: r.get(1)?,
            op: r.get(2)?,
            k: r.get(3)?,
            col: r.get(4)?,
            old: r.get(5)?,
            new: r.get(6)?,
        })
    }

    fn key(&self) -> (String, String) {
        (self.tbl.clone(), format!("{:?}", self.k))
    }
}

/// How the undo went.
#[derive(Default)]
struct Tally {
    reverted: u64,
    conflicts: u64,
    steps_done: usize,
}

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
    let governor = Governor::new(
        conn,
        log,
        (cancel, steering),
        opts.pace.clone(),
        opts.brakes.clone(),
    );
    let mut u = Undoer {
        conn,
        spec,
        log,
        cancel,
        governor: std::cell::RefCell::new(governor),
        dry_run: opts.dry_run,
        shapes: HashMap::new(),
        db: crate::run::db_name(conn),
    };
    let started = Instant::now();
    let (tally, end, steps_total) = u.run_all(gate);
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
        conflicts: Some(tally.conflicts),
    }));
    status
}

struct Undoer<'a> {
    conn: &'a Connection,
    spec: &'a Spec,
    log: &'a EventLog,
    cancel: &'a Cancel,
    governor: std::cell::RefCell<Governor<'a>>,
    dry_run: bool,
    shapes: HashMap<String, Result<Shape, String>>,
    db: String,
}

type End = Option<(RunStatus, String)>;

impl Undoer<'_> {
    fn message(&self, level: Level, text: impl Into<String>) {
        self.log
            .push(Event::message(json!({"db": self.db}), level, text));
    }

    /// The recorded chunks to take back, grouped by (run, step), newest
    /// first; a group of an unrecorded step ends the list.
    fn groups(&self) -> rusqlite::Result<Vec<Vec<Chunk>>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, run, step, name, chunk, first, last, rows FROM batchsse_undo WHERE run = ?1 ORDER BY id DESC",
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
                    first: r.get(5)?,
                    last: r.get(6)?,
                    rows: r.get::<_, i64>(7)?.max(0) as u64,
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
        Ok(groups)
    }

    fn run_all(&mut self, gate: impl FnOnce()) -> (Tally, End, usize) {
        let groups = match self.groups().and_then(|g| Ok((g, shapes(self.conn)?))) {
            Ok((g, s)) => {
                self.shapes = s.into_iter().collect();
                g
            }
            Err(e) => {
                let end = self.failed(format!("cannot read the undo record: {e}"));
                return (Tally::default(), end, 0);
            }
        };
        self.announce(&groups);
        self.governor.borrow().say_starting_pace();
        gate();
        if self.cancel.is_cancelled() {
            let end = Some((
                RunStatus::Cancelled,
                "interrupted before the undo began".into(),
            ));
            return (Tally::default(), end, groups.len());
        }
        let outer = if self.dry_run {
            match Tx::begin(self.conn, false) {
                Ok(t) => Some(t),
                Err(e) => {
                    let end = self.failed(format!("cannot begin: {e}"));
                    return (Tally::default(), end, groups.len());
                }
            }
        } else {
            None
        };
        let mut tally = Tally::default();
        let mut end = None;
        for (i, g) in groups.iter().enumerate() {
            if g.iter().any(|c| c.chunk == UNRECORDED) {
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
                    format!("the undo stops at step {} ({:?}), which the run did not record (\"undo\": false); earlier steps stay as they are", g[0].step + 1, g[0].name),
                );
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
        if let Some(outer) = outer {
            drop(outer);
            self.message(Level::Info, format!(
                "dry run: {} rows would be reverted, {} conflict(s); rolled back, nothing was written",
                thousands(tally.reverted), tally.conflicts
            ));
        } else if end.is_none() {
            self.finish();
        }
        (tally, end, groups.len())
    }

    fn failed(&self, why: String) -> End {
        self.message(Level::Error, why.clone());
        Some((RunStatus::Failed, why))
    }

    fn announce(&self, groups: &[Vec<Chunk>]) {
        self.log.push(Event::Start(Start {
            protocol: crate::events::PROTOCOL,
            run_id: crate::run::run_id(),
            plan: self.spec.plan.clone(),
            db: self.db.clone(),
            steps: groups
                .iter()
                .enumerate()
                .map(|(i, g)| StepInfo {
                    index: i,
                    name: format!("undo step {}: {}", g[0].step + 1, g[0].name),
                    kind: StepKind::Chunked,
                })
                .collect(),
            dry_run: self.dry_run,
            resumed: false,
            settings: self.governor.borrow().settings(),
            kind: RunKind::Undo,
            undo: Some(UndoInfo {
                unrecorded_steps: Vec::new(),
                reverts: self.spec.runs.clone(),
            }),
        }));
    }

    /// A `step` event for group `at`: `skipped` before it began.
    fn step_event(&self, at: &At<'_>, state: StepState, error: Option<String>) {
        self.log.push(Event::Step(StepEvent {
            index: at.index,
            name: at.name(),
            state,
            done: at.done,
            total: at.total,
            changed: at.changed,
            elapsed_ms: ms(at.t0.elapsed()),
            error,
        }));
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
        self.step_event(&at, StepState::Running, None);
        for (n, c) in g.iter().enumerate() {
            let last = n + 1 == g.len();
            if self.governor.borrow_mut().wait_while_braked(Some(index))
                || self.cancel.is_cancelled()
            {
                return Err(self.stopped(&at, RunStatus::Cancelled, INTERRUPTED.into()));
            }
            let (c0, reverted0) = (Instant::now(), tally.reverted);
            if let Err(why) = self.chunk(c, tally) {
                self.message(Level::Error, why.clone());
                return Err(self.stopped(&at, RunStatus::Failed, why));
            }
            (at.done, at.changed) = (at.done + c.rows, at.changed + tally.reverted - reverted0);
            self.log.push(Event::Progress(at.progress()));
            if self
                .governor
                .borrow_mut()
                .after_chunk(c0.elapsed(), index, last)
            {
                return Err(self.stopped(&at, RunStatus::Cancelled, INTERRUPTED.into()));
            }
        }
        at.done = at.total;
        self.step_event(&at, StepState::Done, None);
        Ok(())
    }

    fn stopped(&self, at: &At<'_>, status: RunStatus, why: String) -> (RunStatus, String) {
        self.step_event(at, StepState::Failed, Some(why.clone()));
        (status, why)
    }

    /// One recorded chunk in its own transaction: its records applied
    /// newest first, then deleted.
    fn chunk(&self, c: &Chunk, tally: &mut Tally) -> Result<(), String> {
        let sql = |e: rusqlite::Error| crate::run::db::run_time_message(self.conn, &e);
        let tx = Tx::begin(self.conn, self.dry_run).map_err(sql)?;
        let (reverted, kept) = match self.updates_at_once(c, tally.conflicts)? {
            Some(counts) => counts,
            None => {
                let recs = self.records(c).map_err(sql)?;
                let (rows, conflicts) = self.one_by_one(c, &recs, tally.conflicts)?;
                let reverted = rows.difference(&conflicts).count() as u64;
                (reverted, conflicts.len() as u64)
            }
        };
        self.conn
            .execute(
                "DELETE FROM batchsse_undo_row WHERE rec BETWEEN ?1 AND ?2",
                params![c.first, c.last],
            )
            .map_err(sql)?;
        self.conn
            .execute("DELETE FROM batchsse_undo WHERE id = ?1", [c.id])
            .map_err(sql)?;
        if self.cancel.is_cancelled() {
            return Err("interrupted; the current chunk was rolled back".into());
        }
        tx.commit().map_err(sql)?;
        tally.reverted += reverted;
        tally.conflicts += kept;
        Ok(())
    }

    /// Applies the records one by one, newest first; returns the rows
    /// taken back and those kept as conflicts. `before`: conflicts so far.
    fn one_by_one(&self, c: &Chunk, recs: &[Rec], before: u64) -> Result<(Keys, Keys), String> {
        let sql = |e: rusqlite::Error| crate::run::db::run_time_message(self.conn, &e);
        let (mut rows, mut conflicts) = (Keys::new(), Keys::new());
        let mut i = 0;
        while i < recs.len() {
            let r = &recs[i];
            // A deleted row's columns are consecutive records.
            let mut j = i + 1;
            while r.op == op::DELETE
                && j < recs.len()
                && recs[j].op == op::DELETE
                && recs[j].tbl == r.tbl
                && recs[j].k == r.k
            {
                j += 1;
            }
            rows.insert(r.key());
            if let Some(why) = self.one(&recs[i..j]).map_err(sql)? {
                self.kept(c, r, &why, &mut conflicts, before)?;
            }
            i = j;
        }
        Ok((rows, conflicts))
    }

    /// A conflict met: an error under `abort`, else recorded once per row.
    fn kept(
        &self,
        c: &Chunk,
        r: &Rec,
        why: &str,
        conflicts: &mut Keys,
        before: u64,
    ) -> Result<(), String> {
        if self.spec.on_conflict == OnConflict::Abort {
            return Err(format!(
                "conflict in {} at key {}: {why}; --on-conflict abort rolled this chunk back",
                r.tbl,
                shown(&r.k)
            ));
        }
        if conflicts.insert(r.key()) {
            self.conflict(c, r, why, before + conflicts.len() as u64)
                .map_err(|e| crate::run::db::run_time_message(self.conn, &e))?;
        }
        Ok(())
    }

    /// When a chunk holds only updates, of tables that can be keyed, each
    /// (row, column) once, their order does not matter: per table and
    /// column, one query finds the conflicts and one `UPDATE … FROM` the
    /// record restores the rest. The common case (an `UPDATE` step without
    /// triggers), and far faster than one record at a time. Returns the
    /// rows reverted and kept, or `None` when the chunk holds anything else.
    fn updates_at_once(&self, c: &Chunk, before: u64) -> Result<Option<(u64, u64)>, String> {
        let sql = |e: rusqlite::Error| crate::run::db::run_time_message(self.conn, &e);
        let range = "FROM batchsse_undo_row WHERE rec BETWEEN ?1 AND ?2";
        let (others, all, distinct, rows): (i64, i64, i64, i64) = self
            .conn
            .query_row(
                &format!(
                    "SELECT (SELECT count(*) {range} AND op <> {u}), (SELECT count(*) {range}),
                       (SELECT count(*) FROM (SELECT DISTINCT tbl, k, col {range})),
                       (SELECT count(*) FROM (SELECT DISTINCT tbl, k {range}))",
                    u = op::UPDATE
                ),
                params![c.first, c.last],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(sql)?;
        if others > 0 || distinct != all {
            return Ok(None);
        }
        let pairs: Vec<(String, String)> = self
            .conn
            .prepare_cached(&format!("SELECT DISTINCT tbl, ifnull(col, '') {range}"))
            .and_then(|mut st| {
                st.query_map(params![c.first, c.last], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(sql)?;
        if pairs
            .iter()
            .any(|(t, _)| !matches!(self.shapes.get(t), Some(Ok(_))))
        {
            return Ok(None);
        }
        let mut conflicts = Keys::new();
        for (tbl, col) in &pairs {
            self.column_at_once(c, (tbl, col), &mut conflicts, before)?;
        }
        let kept = conflicts.len() as u64;
        Ok(Some(((rows.max(0) as u64).saturating_sub(kept), kept)))
    }

    /// One table's column of [`Undoer::updates_at_once`].
    fn column_at_once(
        &self,
        c: &Chunk,
        (tbl, col): (&str, &str),
        conflicts: &mut Keys,
        before: u64,
    ) -> Result<(), String> {
        let sql = |e: rusqlite::Error| crate::run::db::run_time_message(self.conn, &e);
        let Some(Ok(shape)) = self.shapes.get(tbl) else {
            return Ok(()); // checked by the caller
        };
        let (t, k, q) = (quote(tbl), &shape.key, quote(col));
        let overwrite = self.spec.on_conflict == OnConflict::Overwrite;
        let args = params![c.first, c.last, tbl, col, overwrite];
        let odd: Vec<(i64, Option<Value>)> = self
            .conn
            .prepare_cached(&format!(
                "SELECT r.rec, (SELECT {q} FROM {t} WHERE {k} = r.k) FROM batchsse_undo_row r
                 WHERE r.rec BETWEEN ?1 AND ?2 AND r.tbl = ?3 AND r.col = ?4
                   AND NOT EXISTS (SELECT 1 FROM {t} WHERE {k} = r.k AND (?5 OR {q} IS r.new))"
            ))
            .and_then(|mut st| {
                st.query_map(args, |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect()
            })
            .map_err(sql)?;
        for (rec, now) in odd {
            let r = self.record(rec).map_err(sql)?;
            let why = if self.gone(&t, k, &r.k).map_err(sql)? {
                "the row is gone".to_owned()
            } else {
                format!(
                    "{col} is {} now, not the {} the run wrote",
                    shown(&now.unwrap_or(Value::Null)),
                    shown(&r.new)
                )
            };
            self.kept(c, &r, &why, conflicts, before)?;
        }
        self.conn
            .prepare_cached(&format!(
                "UPDATE {t} SET {q} = r.old FROM batchsse_undo_row r
                 WHERE r.rec BETWEEN ?1 AND ?2 AND r.tbl = ?3 AND r.col = ?4
                   AND {t}.{k} = r.k AND (?5 OR {t}.{q} IS r.new)"
            ))
            .and_then(|mut st| st.execute(args))
            .map_err(sql)?;
        Ok(())
    }

    fn gone(&self, t: &str, k: &str, key: &Value) -> rusqlite::Result<bool> {
        let found = self
            .conn
            .prepare_cached(&format!("SELECT 1 FROM {t} WHERE {k} = ?1"))?
            .exists([key])?;
        Ok(!found)
    }

    fn records(&self, c: &Chunk) -> rusqlite::Result<Vec<Rec>> {
        self.conn
            .prepare_cached(
                "SELECT rec, tbl, op, k, col, old, new FROM batchsse_undo_row WHERE rec BETWEEN ?1 AND ?2 ORDER BY rec DESC",
            )?
            .query_map(params![c.first, c.last], Rec::read)?
            .collect()
    }

    fn record(&self, rec: i64) -> rusqlite::Result<Rec> {
        self.conn
            .prepare_cached(
                "SELECT rec, tbl, op, k, col, old, new FROM batchsse_undo_row WHERE rec = ?1",
            )?
            .query_row([rec], Rec::read)
    }

    /// Applies one change back (a deleted row's records together); returns
    /// why it is a conflict, if it is one and was not overwritten.
    fn one(&self, recs: &[Rec]) -> rusqlite::Result<Option<String>> {
        let r = &recs[0];
        let shape = match self.shapes.get(&r.tbl) {
            Some(Ok(s)) => s,
            Some(Err(why)) => return Ok(Some(why.clone())),
            None => return Ok(Some("the table is gone".into())),
        };
        let (t, k) = (quote(&r.tbl), &shape.key);
        let exists = |col: &str| -> rusqlite::Result<Option<Value>> {
            self.conn
                .prepare_cached(&format!("SELECT {col} FROM {t} WHERE {k} = ?1"))?
                .query_row([&r.k], |row| row.get(0))
                .optional()
        };
        let overwrite = self.spec.on_conflict == OnConflict::Overwrite;
        match r.op {
            op::INSERT => {
                if exists("1")?.is_none() {
                    return Ok(Some("the row the run inserted is gone".into()));
                }
                self.conn
                    .prepare_cached(&format!("DELETE FROM {t} WHERE {k} = ?1"))?
                    .execute([&r.k])?;
            }
            op::UPDATE => {
                let col = quote(r.col.as_deref().unwrap_or_default());
                let Some(now) = exists(&col)? else {
                    return Ok(Some("the row is gone".into()));
                };
                if now != r.new && !overwrite {
                    return Ok(Some(format!(
                        "{} is {} now, not the {} the run wrote",
                        r.col.as_deref().unwrap_or_default(),
                        shown(&now),
                        shown(&r.new)
                    )));
                }
                self.conn
                    .prepare_cached(&format!("UPDATE {t} SET {col} = ?1 WHERE {k} = ?2"))?
                    .execute([&r.old, &r.k])?;
            }
            _ => {
                let there = exists("1")?.is_some();
                if there && !overwrite {
                    return Ok(Some("the row the run deleted exists again".into()));
                }
                let cols: Vec<&Rec> = recs.iter().filter(|c| c.col.is_some()).collect();
                let names: String = cols
                    .iter()
                    .map(|c| format!(", {}", quote(c.col.as_deref().unwrap_or_default())))
                    .collect();
                let marks: String = (0..cols.len()).map(|n| format!(", ?{}", n + 2)).collect();
                let verb = if there { "INSERT OR REPLACE" } else { "INSERT" };
                let mut values: Vec<&Value> = vec![&r.k];
                values.extend(cols.iter().map(|c| &c.old));
                self.conn
                    .prepare_cached(&format!("{verb} INTO {t}({k}{names}) VALUES (?1{marks})"))?
                    .execute(rusqlite::params_from_iter(values))?;
            }
        }
        Ok(None)
    }

    /// Records (and, for the first ones, reports) a row kept under `skip`.
    fn conflict(&self, c: &Chunk, r: &Rec, why: &str, nth: u64) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("INSERT INTO batchsse_undo_conflict (run, tbl, k, col, why) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![c.run, r.tbl, r.k, r.col, why])?;
        let text = format!(
            "conflict in {} at key {}: {why}; kept the application's row",
            r.tbl,
            shown(&r.k)
        );
        if nth <= SHOWN_CONFLICTS {
            self.log.push(Event::message(
                json!({"db": self.db, "table": r.tbl, "key": json_value(&r.k)}),
                Level::Warn,
                text,
            ));
        } else if nth == SHOWN_CONFLICTS + 1 {
            self.message(
                Level::Warn,
                "more conflicts: every one is in the table batchsse_undo_conflict",
            );
        }
        Ok(())
    }

    /// After a complete undo: the plan's checkpoint goes (it can run
    /// again), and the undo tables if nothing is left in them.
    fn finish(&self) {
        let done = || -> rusqlite::Result<()> {
            let left: i64 = self.conn.query_row(
                "SELECT count(*) FROM batchsse_undo WHERE plan = ?1",
                [&self.spec.plan],
                |r| r.get(0),
            )?;
            if left == 0 && crate::run::checkpoint::table_exists(self.conn).unwrap_or(false) {
                self.conn.execute(
                    "DELETE FROM batchsse_checkpoint WHERE plan = ?1",
                    [&self.spec.plan],
                )?;
                self.message(Level::Info, format!("plan {:?} is fully taken back; its checkpoint is cleared, so it can run again", self.spec.plan));
            }
            Ok(())
        };
        if let Err(e) = done() {
            self.message(
                Level::Warn,
                format!(
                    "the undo is complete, but the plan's checkpoint could not be cleared: {e}"
                ),
            );
        }
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
