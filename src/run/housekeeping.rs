//! `batchsse checkpoint`: reading what resumable runs recorded in
//! `batchsse_checkpoint`, and clearing it by plan or whole. Only that table
//! and its companions (the walk probe, the cleared plans' undo records)
//! are ever read or written here, in one transaction per clear.

use rusqlite::Connection;

use super::checkpoint::{Mark, TABLE, table_exists};
use super::tx::Tx;
use crate::error::UsageError;
use crate::plan::Key;

/// One step's row in the checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub plan: String,
    /// 0-based, as in the events.
    pub step: i64,
    pub name: String,
    pub state: Mark,
    /// Where a partial chunked walk resumes (NULL for a finished step).
    pub last_key: Key,
    pub done: u64,
    pub changed: u64,
    /// UTC, ISO 8601, as SQLite wrote it.
    pub updated_at: String,
    /// For a step that wrote only TEMP tables, the bytes of their rows
    /// kept in the file for a resume (see `run::setup::kept`); else 0.
    pub kept_bytes: u64,
    /// An undo of the plan took back part of this step and stopped (see
    /// [`super::checkpoint::UNDOING`]): it no longer holds what `state`
    /// says, and only that undo, run to its end, can tell what it holds.
    pub undoing: bool,
}

/// Every row, by plan then step; empty when no run has recorded anything
/// (no table).
pub fn records(conn: &Connection) -> Result<Vec<Record>, UsageError> {
    if !table_exists(conn)? {
        return Ok(Vec::new());
    }
    let read = || -> rusqlite::Result<Vec<Record>> {
        let mut stmt = conn.prepare(
            // A finished step's last_key is NULL, or for a step that wrote
            // only TEMP tables the digest of what it made (`run::setup`).
            "SELECT plan, step, name, state, CASE state WHEN 'done' THEN NULL ELSE last_key END,
                    done, changed, updated_at, checksum = ?1
             FROM batchsse_checkpoint ORDER BY plan, step",
        )?;
        let rows = stmt.query_map([super::checkpoint::UNDOING], |r| {
            Ok(Record {
                plan: r.get(0)?,
                step: r.get(1)?,
                name: r.get(2)?,
                // The table's CHECK allows only these two.
                state: Mark::parse(&r.get::<_, String>(3)?).unwrap_or(Mark::Partial),
                last_key: r.get(4)?,
                done: r.get::<_, i64>(5)?.max(0) as u64,
                changed: r.get::<_, i64>(6)?.max(0) as u64,
                updated_at: r.get(7)?,
                kept_bytes: 0,
                undoing: r.get(8)?,
            })
        })?;
        let mut all: Vec<Record> = rows.collect::<rusqlite::Result<_>>()?;
        for (plan, step, bytes) in super::setup::kept::sizes(conn)? {
            if let Some(r) = all.iter_mut().find(|r| r.plan == plan && r.step == step) {
                r.kept_bytes = bytes;
            }
        }
        Ok(all)
    };
    read().map_err(|e| {
        super::db::unreadable(
            conn,
            TABLE,
            &e,
            &format!(
                "drop it in the sqlite3 shell: DROP TABLE {TABLE}; `checkpoint clear` must read it first"
            ),
        )
    })
}

/// The plans an undo stopped in part-way, each with the steps (0-based)
/// it took back in part (see [`super::checkpoint::undoing`]): their undo
/// record is what is left to take back, and the plan cannot run until it
/// has been.
pub fn stopped_undos(conn: &Connection) -> Result<Vec<(String, Vec<i64>)>, UsageError> {
    let steps = super::checkpoint::undoing(conn).map_err(|e| {
        super::db::unreadable(conn, TABLE, &e, "`batchsse checkpoint list` says more")
    })?;
    let mut out: Vec<(String, Vec<i64>)> = Vec::new();
    for (plan, step) in steps {
        match out.last_mut() {
            Some((p, s)) if *p == plan => s.push(step),
            _ => out.push((plan, vec![step])),
        }
    }
    Ok(out)
}

/// Rows of TEMP tables kept for a resume (plan, 0-based step, bytes)
/// whose step has no row in the checkpoint (`records`): a run killed while
/// it kept them, before it recorded the step. `checkpoint clear` removes
/// them with the plan.
pub fn kept_unrecorded(
    conn: &Connection,
    records: &[Record],
) -> Result<Vec<(String, i64, u64)>, UsageError> {
    let sizes = super::setup::kept::sizes(conn).map_err(|e| {
        super::db::unreadable(
            conn,
            "batchsse_setup",
            &e,
            "drop it in the sqlite3 shell: DROP TABLE batchsse_setup (it holds only rows kept for resuming TEMP setup steps)",
        )
    })?;
    Ok(sizes
        .into_iter()
        .filter(|(plan, step, _)| !records.iter().any(|r| &r.plan == plan && r.step == *step))
        .collect())
}

/// What `clear` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which<'a> {
    Plan(&'a str),
    All,
}

/// What `clear` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleared {
    /// Each plan removed, with how many step records it had (none for one
    /// that had only rows of TEMP tables kept).
    pub plans: Vec<(String, usize)>,
    /// The table was empty afterwards, so it was dropped.
    pub dropped: bool,
    /// Runs of those plans whose undo records were removed too.
    pub undo_runs: usize,
}

/// Removes the records of `which`, then the table if nothing is left, in
/// one transaction. A plan with no records is refused (exit 2, nothing
/// written): most often a mistyped name, so the message lists the names
/// there are.
pub fn clear(conn: &Connection, which: Which) -> Result<Cleared, UsageError> {
    let failed = |e: rusqlite::Error| {
        UsageError::new(format!(
            "cannot clear {TABLE}: {}; nothing was removed",
            super::db::run_time_message(conn, &e)
        ))
    };
    let foreign = match super::walk_probe::not_ours(conn).map_err(failed)? {
        None => super::setup::kept::not_ours(conn).map_err(failed)?,
        why => why,
    };
    if let Some(why) = foreign {
        return Err(UsageError::new(format!(
            "cannot clear {TABLE}: {why}, and batchsse's rows there go with the checkpoint; nothing was removed. Give it another name, or drop it if it holds nothing you need"
        )));
    }
    let tx = Tx::begin(conn, false).map_err(failed)?;
    let all = records(conn)?;
    let mut plans: Vec<(String, usize)> = Vec::new();
    for r in &all {
        match plans.last_mut() {
            Some((p, n)) if *p == r.plan => *n += 1,
            _ => plans.push((r.plan.clone(), 1)),
        }
    }
    // A plan whose run stopped while keeping its first step's TEMP rows
    // has them and no step record: cleared with the rest.
    for plan in super::setup::kept::plans(conn).map_err(failed)? {
        if !plans.iter().any(|(p, _)| *p == plan) {
            plans.push((plan, 0));
        }
    }
    let known = plans.clone();
    if let Which::Plan(name) = which {
        plans.retain(|(p, _)| p == name);
        if plans.is_empty() {
            return Err(no_such_plan(conn, name, &known));
        }
    }
    let removed: usize = plans.iter().map(|(_, n)| n).sum();
    if removed > 0 {
        match which {
            Which::Plan(name) => {
                conn.execute("DELETE FROM batchsse_checkpoint WHERE plan = ?1", [name])
            }
            Which::All => conn.execute("DELETE FROM batchsse_checkpoint", []),
        }
        .map_err(failed)?;
    }
    let dropped = super::checkpoint::drop_if_empty(conn).map_err(failed)?;
    for (plan, _) in &plans {
        super::walk_probe::forget(conn, plan, None).map_err(failed)?;
        super::setup::kept::forget(conn, plan, None).map_err(failed)?;
    }
    let undo_runs = clear_undo(conn, &plans).map_err(failed)?;
    // Nothing to remove: the transaction is let go unwritten, since
    // committing it would give an empty file SQLite's header.
    if !plans.is_empty() || dropped || undo_runs > 0 {
        tx.commit().map_err(failed)?;
    }
    Ok(Cleared {
        plans,
        dropped,
        undo_runs,
    })
}

/// The undo records of the cleared plans go with their checkpoint: a plan
/// that may run again from the start must not be taken back by an old
/// record. Returns the runs removed. A plan with no step record keeps
/// them: it had no checkpoint to clear (a run with `--no-checkpoint` may
/// have recorded them).
fn clear_undo(conn: &Connection, plans: &[(String, usize)]) -> rusqlite::Result<usize> {
    let mut runs = 0;
    for (plan, _) in plans.iter().filter(|(_, steps)| *steps > 0) {
        for run in super::undo::store::runs_of_plan(conn, plan)? {
            super::undo::store::remove_run(conn, &run)?;
            runs += 1;
        }
    }
    if runs > 0 {
        super::undo::store::drop_if_empty(conn)?;
    }
    Ok(runs)
}

fn no_such_plan(conn: &Connection, name: &str, known: &[(String, usize)]) -> UsageError {
    let names: Vec<String> = known.iter().map(|(p, _)| crate::human::quoted(p)).collect();
    let name = crate::human::quoted(name);
    UsageError::new(if names.is_empty() {
        format!(
            "no checkpoint recorded for plan {name}: no plan has one in this database; nothing was removed"
        )
    } else {
        format!(
            "no checkpoint recorded for plan {name}; recorded plans: {} (see `batchsse checkpoint list --db {}`); nothing was removed",
            names.join(", "),
            super::db::shell_word_of(conn)
        )
    })
}
