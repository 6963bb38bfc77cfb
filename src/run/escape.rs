//! A chunked step that escapes its chunk. Its statement runs once a
//! chunk, so whatever it changes outside the chunk's keys (`WHERE id
//! BETWEEN :lo AND :hi OR id = 7`, where the `OR` binds looser than the
//! range) is changed again by every chunk: row 7 gets `+ 1` a hundred
//! times, and the run says it finished.
//!
//! Each chunked step's statement is run once on the real database with an
//! empty chunk (`:lo` and `:hi` NULL, which no key is between), in a
//! transaction that is rolled back: before anything runs, and again as the
//! step begins, on the rows the steps before it left (a step that marks
//! rows the next one's stray `OR` reaches passed the first try). A
//! statement that changes a row then, or is stopped by a constraint as it
//! writes one, would change it at every chunk, so the step is refused.
//! Walking one table to change the rows of another found by its keys stays
//! allowed: with no keys in the chunk it finds none.
//!
//! The try stops a statement once it has changed [`CAP`] rows, where it
//! may (see [`WriteCap`]): a step missing its range is refused after a
//! thousand rows, not after rewriting its whole table under the write
//! lock, which the application waits on.

use rusqlite::{Connection, named_params};

use super::checkpoint::Resume;
use super::hooked::Beneath;
use super::write_cap::{WriteCap, Writes};
use super::{Counts, Runner, StepError};
use crate::error::UsageError;
use crate::plan::{Chunk, Key, Plan, Step, quote, sqlite_message};

/// Rows a tried statement may change before the try stops it: a stray
/// `OR` that reaches a few rows is still counted exactly.
const CAP: u64 = 1000;

/// What a step's statement did with an empty chunk.
enum Escape {
    /// It changed rows: `first`, when the update hook saw one, and
    /// `stopped` when the try stopped it at [`CAP`] (`rows` is then that
    /// many).
    Changed {
        rows: u64,
        first: Option<(String, i64)>,
        stopped: bool,
    },
    /// A constraint stopped a write (SQLite's message): it still wrote, or
    /// tried to write, a row.
    Stopped(String),
    /// On a chunk of the walked table's `first` key alone, it changed the
    /// row whose key is `theirs`.
    OneKey { first: Key, theirs: Key },
}

/// Refuses the first chunked step still to run whose statement changes
/// rows when its chunk holds none. A step this file cannot run yet (its
/// table is made by an earlier step) is not tried; nor is one the
/// application holds the write lock against: the try as the step begins
/// covers both.
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
        if super::chunk::top_rowid_taken(conn, chunk).unwrap_or(false) {
            return Err(UsageError::new(format!(
                "step {} ({}) {}. Nothing was written",
                step.index + 1,
                crate::human::quoted(&step.name),
                super::chunk::random_rowids(chunk)
            )));
        }
        // Before the run: the undo recording's hook is not on yet.
        let at = Conn {
            conn,
            beneath: None,
        };
        let try_it = || tried(at, step, Try::Capped);
        if let Ok(Some(escape)) = crate::lifecycle::check_write(conn, try_it) {
            return Err(UsageError::new(format!(
                "step {} ({}) {}. Nothing was written",
                step.index + 1,
                crate::human::quoted(&step.name),
                escapes(chunk, &escape, "")
            )));
        }
    }
    Ok(())
}

/// The same try as a chunked step begins, before its first chunk, on the
/// database as the steps before it left it (inside the run's transaction
/// with `--atomic` or `--dry-run`). A step that escapes fails with
/// nothing of it written.
pub(super) fn refuse_in_run(r: &Runner<'_>, step: &Step) -> Result<(), (StepError, Counts)> {
    let Some(chunk) = &step.chunk else {
        return Ok(());
    };
    // Stopping a statement inside the run's transaction would roll all of
    // it back.
    let how = if r.nested { Try::Nested } else { Try::Capped };
    let at = Conn {
        conn: r.conn,
        beneath: r.recorder.as_ref().and_then(|rec| rec.update_hook()),
    };
    match tried(at, step, how) {
        Ok(None) => Ok(()),
        Ok(Some(escape)) => Err((
            StepError::Sql(format!(
                "it {}. None of its chunks ran",
                escapes(chunk, &escape, ", on the rows the steps before it left,")
            )),
            Counts::default(),
        )),
        Err(e) => Err(r.fail(e, Counts::default())),
    }
}

/// How a step's statement is tried.
#[derive(Clone, Copy, PartialEq)]
enum Try {
    /// In a transaction of its own, stopped at [`CAP`] rows.
    Capped,
    /// In a savepoint of the run's transaction, to its end.
    Nested,
}

/// The connection a step is tried on, and the update hook of the run's
/// undo recording, which the try's own is installed over (see `hooked`).
#[derive(Clone, Copy)]
struct Conn<'c> {
    conn: &'c Connection,
    beneath: Option<Beneath<'c>>,
}

/// How `step` escapes its chunk, if it does: `Ok(None)` when it changes
/// nothing with an empty chunk, or cannot be tried (it does not compile
/// here, or fails other than by a constraint). `Err` when the
/// transaction cannot begin (a lock another connection holds) or end.
fn tried(at: Conn<'_>, step: &Step, how: Try) -> rusqlite::Result<Option<Escape>> {
    let conn = at.conn;
    // The write lock first, as a chunk takes it: a deferred transaction in
    // WAL mode would fail at once if another process wrote in between.
    let (begin, end) = match how {
        Try::Nested => (
            "SAVEPOINT batchsse_try",
            "ROLLBACK TO batchsse_try; RELEASE batchsse_try",
        ),
        Try::Capped => ("BEGIN IMMEDIATE", "ROLLBACK"),
    };
    conn.execute_batch(begin)?;
    let mut escape = with_empty_chunk(at, step, how);
    if escape.is_none() && !conn.is_autocommit() {
        escape = with_one_key(at, step, how);
    }
    // A failed statement may have ended SQLite's transaction already (an
    // `OR ROLLBACK`, a full disk, the cap): the whole of it, outer one
    // included.
    if !conn.is_autocommit() {
        conn.execute_batch(end)?;
    }
    Ok(escape)
}

/// The step's statement with an empty chunk, in the try's transaction.
fn with_empty_chunk(at: Conn<'_>, step: &Step, how: Try) -> Option<Escape> {
    let conn = at.conn;
    let before = conn.total_changes();
    let cap = (how == Try::Capped).then(|| WriteCap::install(conn, at.beneath, CAP));
    let null: Option<i64> = None;
    let ran = run_bound(conn, &step.sql, &null);
    let changed = conn.total_changes().saturating_sub(before);
    let (seen, stopped) = cap.map_or((Writes::default(), false), |c| (c.writes(), c.reached()));
    // Stopped, it changed at least CAP rows (a few more, between two
    // calls of the progress handler), which is all the message says.
    let rows = if stopped { CAP } else { changed.max(seen.rows) };
    let changed = |stopped| Escape::Changed {
        rows,
        first: seen.first.clone(),
        stopped,
    };
    match ran {
        _ if stopped => Some(changed(true)),
        Ok(()) if rows > 0 => Some(changed(false)),
        Ok(()) => None,
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
            Some(Escape::Stopped(sqlite_message(&e)))
        }
        Err(_) => None,
    }
}

/// The step's statement on a chunk of one key, the walked table's first,
/// in the try's transaction: a [`Chunk::fenced`] step may change only
/// that key's rows of the walked table. One that changes another
/// (`WHERE k BETWEEN :lo + 1 AND :hi + 1`, or an `OR` whose literal hides
/// behind `:hi`) would change it again in that row's own chunk. Only rows
/// SQLite's update hook reports are seen: none of a WITHOUT ROWID table.
fn with_one_key(at: Conn<'_>, step: &Step, how: Try) -> Option<Escape> {
    let conn = at.conn;
    let chunk = step.chunk.as_ref().filter(|c| c.fenced)?;
    if super::fence::cascades(conn, &chunk.table) {
        return None;
    }
    let (table, key) = (quote(&chunk.table), &chunk.key_sql);
    let rowid = free_rowid_name(conn, &chunk.table)?;
    let first: Key = conn
        .query_row(
            &format!("SELECT {key} FROM {table} WHERE {key} IS NOT NULL ORDER BY {key} LIMIT 1"),
            [],
            |r| r.get(0),
        )
        .ok()?;
    // Inside the run's transaction a stop would roll all of it back.
    let cap = if how == Try::Capped { CAP } else { u64::MAX };
    let cap = WriteCap::install(conn, at.beneath, cap);
    let ran = run_bound(conn, &step.sql, &first);
    let (seen, stopped) = (cap.writes(), cap.reached());
    drop(cap);
    if ran.is_err() && !stopped {
        return None; // the run meets it, in a chunk
    }
    let holds = |id: i64| {
        let sql =
            format!("SELECT count(*) FROM {table} WHERE {rowid} = ?1 AND {key} BETWEEN ?2 AND ?2");
        conn.query_row(&sql, rusqlite::params![id, first], |r| r.get::<_, i64>(0))
            .map_or(true, |n| n > 0)
    };
    let walked = |t: &str| t.eq_ignore_ascii_case(&chunk.table);
    let (_, stray) = seen.all.iter().find(|(t, id)| walked(t) && !holds(*id))?;
    let theirs = conn
        .query_row(
            &format!("SELECT {key} FROM {table} WHERE {rowid} = ?1"),
            [stray],
            |r| r.get(0),
        )
        .unwrap_or(Key::Null);
    Some(Escape::OneKey { first, theirs })
}

/// A name of `table`'s rowid that no column of it takes; none for a
/// WITHOUT ROWID table, which has no rowid.
pub(super) fn free_rowid_name(conn: &Connection, table: &str) -> Option<&'static str> {
    let without: bool = conn
        .query_row(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1 COLLATE NOCASE",
            [table],
            |r| r.get(0),
        )
        .ok()?;
    if without {
        return None;
    }
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_xinfo(?1)")
        .ok()?;
    let columns: Vec<String> = stmt
        .query_map([table], |r| r.get(0))
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    crate::plan::free_rowid_name(|n| columns.iter().any(|c| c.eq_ignore_ascii_case(n)))
}

/// Runs `sql` with `:lo` and `:hi` both `bound`, its rows read and
/// dropped.
fn run_bound(conn: &Connection, sql: &str, bound: &dyn rusqlite::ToSql) -> rusqlite::Result<()> {
    let Ok(mut stmt) = conn.prepare(sql) else {
        return Ok(()); // not tried: see `tried`
    };
    let mut rows = stmt.query(named_params! {":lo": bound, ":hi": bound})?;
    while rows.next()?.is_some() {}
    Ok(())
}

/// Why a step that `escape`s its chunk is refused, from "changes rows
/// outside its chunk" on; `on` says what the try ran on.
fn escapes(chunk: &Chunk, escape: &Escape, on: &str) -> String {
    let did = match escape {
        Escape::Changed {
            rows,
            first,
            stopped,
        } => format!(
            "it changed {}{}, and it would change {} again in every chunk",
            match stopped {
                true => format!(
                    "at least {} before the try stopped it",
                    crate::human::rows(*rows)
                ),
                false => crate::human::rows(*rows),
            },
            first_row(*rows, first.as_ref()),
            if *rows == 1 { "it" } else { "them" },
        ),
        Escape::OneKey { first, theirs } => {
            let key = crate::human::shown(&chunk.key);
            return format!(
                "changes rows outside its chunk: run on a chunk of one key ({key} = {}), it changed the row whose {key} is {}, which another chunk holds and would change again. A chunked statement may change only the rows of its own chunk: compare {key} with :lo and :hi only as `{key} BETWEEN :lo AND :hi`, in an AND with the rest of the WHERE",
                super::expect::shown(first),
                super::expect::shown(theirs),
            );
        }
        Escape::Stopped(why) => format!(
            "it still wrote or tried to write a row, which a constraint refused ({why}); with a chunk's keys bound it would write such a row in every chunk"
        ),
    };
    format!(
        "changes rows outside its chunk: run with an empty chunk (:lo and :hi NULL){on} {did}. A chunked statement must change nothing when its chunk holds no rows: put the chunk's range in an AND with the rest of the WHERE, as in `WHERE {key} BETWEEN :lo AND :hi AND (…)`, and give a change meant to happen once a step of its own, without \"chunk\" (a running total kept in another table passes with `HAVING count(*) > 0`)",
        key = crate::human::shown(&chunk.key),
    )
}

/// ` (rowid 7 of "t")`, or ` (the first: …)` of several; empty when the
/// update hook saw none (a WITHOUT ROWID table).
fn first_row(rows: u64, first: Option<&(String, i64)>) -> String {
    let Some((table, rowid)) = first else {
        return String::new();
    };
    let which = if rows == 1 { "" } else { "the first: " };
    format!(" ({which}rowid {rowid} of {})", crate::human::quoted(table))
}
