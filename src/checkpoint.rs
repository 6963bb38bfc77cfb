//! Resumable runs: each step's and chunk's outcome is written to the table
//! `batchsse_checkpoint` in the same transaction as the work itself, so a
//! re-run after a crash resumes exactly after the last committed chunk.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::UsageError;
use crate::plan::{Key, Plan, Step, sqlite_message};
use crate::runner::Options;

pub const TABLE: &str = "batchsse_checkpoint";

const CREATE: &str = "CREATE TABLE IF NOT EXISTS batchsse_checkpoint (
    plan TEXT NOT NULL,
    step INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('partial', 'done')),
    last_key BLOB, -- BLOB affinity: the key is stored exactly, never converted
    done INTEGER NOT NULL,
    changed INTEGER NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (plan, step)
)";

/// Where a chunked step stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkPos {
    pub last_key: Key,
    pub done: u64,
    pub changed: u64,
}

#[derive(Debug, Clone)]
struct Row {
    checksum: String,
    done_state: bool,
    pos: ChunkPos,
}

/// What an earlier run of the same plan left behind.
#[derive(Debug, Default)]
pub struct Resume {
    rows: HashMap<usize, Row>,
    forced: bool,
}

impl Resume {
    /// No earlier run: every step starts from scratch.
    pub fn none() -> Self {
        Resume::default()
    }

    /// Reads the checkpoint for `plan`, refusing steps edited since they
    /// were applied unless `force` (which starts over).
    pub fn load(conn: &Connection, plan: &Plan, force: bool) -> Result<Resume, UsageError> {
        if force {
            return Ok(Resume {
                forced: true,
                ..Resume::none()
            });
        }
        if !table_exists(conn)? {
            return Ok(Resume::none());
        }
        let read = || -> rusqlite::Result<Vec<(usize, Row)>> {
            let mut stmt = conn.prepare(
                "SELECT step, checksum, state, last_key, done, changed FROM batchsse_checkpoint WHERE plan = ?1 AND step >= 0",
            )?;
            let rows = stmt.query_map([&plan.name], |r| {
                Ok((
                    r.get::<_, i64>(0)? as usize,
                    Row {
                        checksum: r.get(1)?,
                        done_state: r.get::<_, String>(2)? == "done",
                        pos: ChunkPos {
                            last_key: r.get(3)?,
                            done: r.get::<_, i64>(4)?.max(0) as u64,
                            changed: r.get::<_, i64>(5)?.max(0) as u64,
                        },
                    },
                ))
            })?;
            rows.collect()
        };
        let rows = read().map_err(|e| {
            UsageError::new(format!(
                "cannot read {TABLE}: {}; it may have been altered by hand (pass --no-checkpoint to ignore it)",
                sqlite_message(&e)
            ))
        })?;
        for (index, row) in &rows {
            match plan.steps.get(*index) {
                Some(step) if step.checksum == row.checksum => {}
                Some(step) => return Err(edited(*index, &step.name, &plan.name)),
                None => {
                    return Err(UsageError::new(format!(
                        "plan {:?} had a step {} that is gone now; the plan was edited after it ran. \
                         Give it a new \"name\" to start fresh, or pass --force to run it again",
                        plan.name,
                        index + 1
                    )));
                }
            }
        }
        Ok(Resume {
            rows: rows.into_iter().collect(),
            forced: false,
        })
    }

    /// True for `--force`: the old checkpoint is cleared when the run starts.
    pub fn forced(&self) -> bool {
        self.forced
    }

    /// True when an earlier run of this plan left anything behind.
    pub fn resumed(&self) -> bool {
        !self.rows.is_empty()
    }

    pub fn is_done(&self, step: &Step) -> bool {
        self.rows.get(&step.index).is_some_and(|r| r.done_state)
    }

    pub fn already_applied(&self, plan: &Plan) -> bool {
        plan.steps.iter().all(|s| self.is_done(s))
    }

    /// Where a partly applied chunked step resumes.
    pub fn chunk_position(&self, step: &Step) -> Option<&ChunkPos> {
        self.rows
            .get(&step.index)
            .filter(|r| !r.done_state)
            .map(|r| &r.pos)
    }

    pub fn describe(&self, plan: &Plan) -> String {
        let done: Vec<String> = plan
            .steps
            .iter()
            .filter(|s| self.is_done(s))
            .map(|s| (s.index + 1).to_string())
            .collect();
        let partial = plan
            .steps
            .iter()
            .find_map(|s| self.chunk_position(s).map(|p| (s, p)));
        let mut text = format!("resuming plan {:?}", plan.name);
        if !done.is_empty() {
            text += &format!(": step(s) {} already applied and skipped", done.join(", "));
        }
        if let Some((s, p)) = partial {
            text += &format!(
                "; step {} ({:?}) continues after {} committed rows",
                s.index + 1,
                s.name,
                p.done
            );
        }
        text
    }
}

/// Step `index` was applied by an earlier run of `plan` and edited since.
pub fn edited(index: usize, name: &str, plan: &str) -> UsageError {
    UsageError::new(format!(
        "step {} ({name:?}) has changed since it was applied by plan {plan:?}; \
         revert the edit, give the plan a new \"name\" to start fresh, or pass --force to run the whole plan again",
        index + 1
    ))
}

/// The steps of `plan` an earlier run finished: index -> checksum. Empty
/// when there is no checkpoint or it cannot be read (`Resume::load` then
/// says what is wrong).
pub fn finished_steps(conn: &Connection, plan: &str) -> crate::plan::Finished {
    if !table_exists(conn).unwrap_or(false) {
        return Default::default();
    }
    let read = || -> rusqlite::Result<crate::plan::Finished> {
        let mut stmt = conn.prepare(
            "SELECT step, checksum FROM batchsse_checkpoint WHERE plan = ?1 AND state = 'done' AND step >= 0",
        )?;
        let rows = stmt.query_map([plan], |r| {
            Ok((r.get::<_, i64>(0)? as usize, r.get::<_, String>(1)?))
        })?;
        rows.collect()
    };
    read().unwrap_or_default()
}

fn table_exists(conn: &Connection) -> Result<bool, UsageError> {
    conn.query_row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [TABLE],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
    .map_err(|e| UsageError::new(sqlite_message(&e)))
}

fn enabled(opts: &Options) -> bool {
    opts.checkpoint && !opts.dry_run
}

/// Forgets an earlier run of `plan` (for `--force`), inside the caller's
/// transaction.
pub fn reset(conn: &Connection, plan: &Plan, opts: &Options) -> rusqlite::Result<()> {
    if enabled(opts) && table_exists(conn).unwrap_or(false) {
        conn.execute(
            "DELETE FROM batchsse_checkpoint WHERE plan = ?1",
            [&plan.name],
        )?;
    }
    Ok(())
}

/// True when the checkpoint of `step` is no longer what this run last left
/// (`last_key`, or no row before its first write): another batchsse run is
/// applying the same plan. Call inside the transaction, before any work, so
/// the write lock makes the check and the work one step.
pub fn moved(
    conn: &Connection,
    plan: &Plan,
    step: &Step,
    opts: &Options,
    last_key: Option<&Key>,
) -> rusqlite::Result<bool> {
    if !enabled(opts) {
        return Ok(false);
    }
    let row = conn
        .prepare_cached(
            "SELECT state, last_key FROM batchsse_checkpoint WHERE plan = ?1 AND step = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![plan.name, step.index as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Key>(1)?))
            })
            .optional()
        });
    let row = match row {
        Ok(row) => row,
        // No checkpoint table yet: nothing has been recorded by anyone.
        Err(e) if e.to_string().contains("no such table") => None,
        Err(e) => return Err(e),
    };
    Ok(match (row, last_key) {
        (None, None) => false,
        (Some((state, key)), Some(expected)) => state != "partial" || key != *expected,
        _ => true,
    })
}

/// The message for `moved`.
pub fn conflict(plan: &Plan) -> String {
    format!(
        "another batchsse run is applying plan {:?} to this database (its checkpoint moved under this run); let one run finish, then run the plan again to resume",
        plan.name
    )
}

/// Records a finished step; call inside the step's transaction.
pub fn record_step(
    conn: &Connection,
    plan: &Plan,
    step: &Step,
    opts: &Options,
    changed: u64,
) -> rusqlite::Result<()> {
    write(conn, plan, step, opts, "done", &Key::Null, changed, changed)
}

/// Records a committed chunk; call inside the chunk's transaction.
pub fn record_chunk(
    conn: &Connection,
    plan: &Plan,
    step: &Step,
    opts: &Options,
    last_key: &Key,
    done: u64,
    changed: u64,
) -> rusqlite::Result<()> {
    write(conn, plan, step, opts, "partial", last_key, done, changed)
}

/// Marks a chunked step whose chunks are all committed as done.
pub fn finish_chunked(
    conn: &Connection,
    plan: &Plan,
    step: &Step,
    opts: &Options,
    done: u64,
    changed: u64,
) -> rusqlite::Result<()> {
    write(conn, plan, step, opts, "done", &Key::Null, done, changed)
}

#[allow(clippy::too_many_arguments)]
fn write(
    conn: &Connection,
    plan: &Plan,
    step: &Step,
    opts: &Options,
    state: &str,
    last_key: &Key,
    done: u64,
    changed: u64,
) -> rusqlite::Result<()> {
    if !enabled(opts) {
        return Ok(());
    }
    conn.prepare_cached(CREATE)?.execute([])?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO batchsse_checkpoint (plan, step, checksum, name, state, last_key, done, changed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        plan.name,
        step.index as i64,
        step.checksum,
        step.name,
        state,
        last_key,
        done as i64,
        changed as i64
    ])?;
    Ok(())
}
