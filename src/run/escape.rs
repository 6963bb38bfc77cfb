//! A chunked step that escapes its chunk. Its statement runs once a
//! chunk, so whatever it changes outside the chunk's keys (`WHERE id
//! BETWEEN :lo AND :hi OR id = 7`, where the `OR` binds looser than the
//! range) is changed again by every chunk: row 7 gets `+ 1` a hundred
//! times, and the run says it finished.
//!
//! Before anything runs, each chunked step's statement is run once on the
//! real database with an empty chunk (`:lo` and `:hi` NULL, which no key
//! is between), in a transaction that is rolled back. A statement that
//! changes a row then would change it at every chunk, so the run is
//! refused. Walking one table to change the rows of another found by its
//! keys stays allowed: with no keys in the chunk it finds none.

use rusqlite::{Connection, named_params};

use super::checkpoint::Resume;
use crate::error::UsageError;
use crate::plan::{Chunk, Plan, Step};

/// Refuses the first chunked step still to run whose statement changes
/// rows when its chunk holds none. A step this file cannot run yet (its
/// table is made by an earlier step) is not tried.
pub fn refuse_escaping_chunks(
    conn: &Connection,
    plan: &Plan,
    resume: &Resume,
) -> Result<(), UsageError> {
    for step in &plan.steps {
        let Some(chunk) = &step.chunk else { continue };
        if resume.is_done(step) {
            continue;
        }
        if let Some(changed) = changed_with_no_chunk(conn, step) {
            return Err(escapes(step, chunk, changed));
        }
    }
    Ok(())
}

/// The rows `step` changes with an empty chunk, if any: `None` when it
/// changes none or cannot be tried here.
fn changed_with_no_chunk(conn: &Connection, step: &Step) -> Option<u64> {
    // The write lock first, as a chunk takes it: a deferred transaction in
    // WAL mode would fail at once if another process wrote in between.
    conn.execute_batch("BEGIN IMMEDIATE").ok()?;
    let before = conn.total_changes();
    let ran = run_empty(conn, &step.sql);
    let changed = conn.total_changes().saturating_sub(before);
    if conn.execute_batch("ROLLBACK").is_err() {
        return None;
    }
    ran.ok().filter(|_| changed > 0).map(|_| changed)
}

fn run_empty(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(sql)?;
    let null: Option<i64> = None;
    let mut rows = stmt.query(named_params! {":lo": null, ":hi": null})?;
    while rows.next()?.is_some() {}
    Ok(())
}

fn escapes(step: &Step, chunk: &Chunk, changed: u64) -> UsageError {
    UsageError::new(format!(
        "step {} ({}) changes rows outside its chunk: run with an empty chunk (:lo and :hi NULL) it changed {}, and it would change {} again in every chunk. A chunked statement must change nothing when its chunk holds no rows: put the chunk's range in an AND with the rest of the WHERE, as in `WHERE {key} BETWEEN :lo AND :hi AND (…)`, and give a change meant to happen once a step of its own, without \"chunk\" (a running total kept in another table passes with `HAVING count(*) > 0`). Nothing was written",
        step.index + 1,
        crate::human::quoted(&step.name),
        crate::human::rows(changed),
        if changed == 1 { "it" } else { "them" },
        key = crate::human::shown(&chunk.key),
    ))
}
