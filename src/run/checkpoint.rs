//! Resumable runs: each step's and chunk's outcome is written to the table
//! `batchsse_checkpoint` in the same transaction as the work itself, so a
//! re-run after a crash resumes exactly after the last committed chunk.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::UsageError;
use crate::human::{quoted, shown};
use crate::plan::{Key, Plan, Step, edited, key_order, order_shown, quote, sqlite_message};

pub const TABLE: &str = "batchsse_checkpoint";

/// A step's checksum once an undo has taken back part of it, until the
/// undo clears its checkpoint: the step is no longer as the checkpoint
/// says, and only the undo, finished, may say what it is.
pub const UNDOING: &str = "undoing";

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
    last_insert_rowid INTEGER, -- what it answered the plan's statements here; NULL: not known
    walk_end BLOB, -- where a walk that inserts into its table ends; NULL: where its table ends
    key_order TEXT, -- how a walk by a key other than the rowid ordered it (affinity, collation)
    walk_root INTEGER, -- the root page of the table a walk by bare rowid goes through
    PRIMARY KEY (plan, step)
)";

/// The column that holds what `last_insert_rowid()` answered the plan's
/// own statements when the row was written, for a resume to go on from
/// it on its new connection (see [`Resume::rowid_before`]); NULL where
/// it is not known: the table of an earlier release had no such column,
/// and a run that resumed from one knows it only once a step inserts.
/// Added to such a table by the first write of a run (see
/// [`Checkpoint::write`]), so a run that only reads leaves it as it was.
const ROWID: &str = "last_insert_rowid";

/// The column that holds, for a chunked step stopped part-way that walks
/// by rowid a table it inserts into, the largest rowid when the step
/// began: its walk ends there, and a resume must not go on to the rows
/// its own chunks inserted past it (it would copy them again). NULL for
/// every other row, and missing in a table an earlier release made,
/// which gets it as [`ROWID`] does.
const END: &str = "walk_end";

/// The column that holds, for a chunked step stopped part-way that walks
/// by a key other than the rowid, how the walk ordered that key: its
/// column's affinity and collation (see [`crate::plan::key_order`]).
/// A resume goes on after the last key in the order of now, so one where
/// the column was made again of another type or collation since is
/// refused (see [`refuse_reordered`]). NULL for every other row, and
/// missing in a table an earlier release made (nothing to compare with),
/// which gets it as [`ROWID`] does.
const ORDER: &str = "key_order";

/// The column that holds, for a chunked step stopped part-way that walks
/// a table by its bare rowid, the root page of that table's b-tree: a
/// table made again since (copied into a new one and renamed) has its
/// rowids numbered anew, which a resume must not go on after (see
/// [`super::walk_probe::rebuilt`]). NULL for every other row, and missing
/// in a table an earlier release made, which gets it as [`ROWID`] does.
const ROOT: &str = "walk_root";

/// The columns later releases added, with their types.
const ADDED: [(&str, &str); 4] = [
    (ROWID, "INTEGER"),
    (END, "BLOB"),
    (ORDER, "TEXT"),
    (ROOT, "INTEGER"),
];

/// A checkpoint row as [`Checkpoint::write`] takes it: the step, its
/// state, its last key and where its walk ends (see [`END`]).
type Written<'a> = (&'a Step, Mark, &'a Key, Option<&'a Key>);

/// Where a chunked step stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkPos {
    pub last_key: Key,
    pub done: u64,
    pub changed: u64,
    /// Where the walk ends (see [`END`]); `None`: where its table ends
    /// as the step goes on.
    pub end: Option<Key>,
    /// How the walk ordered its key (see [`ORDER`]); `None`: not known.
    pub order: Option<String>,
    /// The root page of the table walked by its bare rowid (see [`ROOT`]);
    /// `None`: not known, or another walk.
    pub root: Option<i64>,
}

/// The steps of `plan` that `rows` say stopped part-way, with their rows.
fn stopped_part_way<'a>(
    plan: &'a Plan,
    rows: &'a [(usize, Row)],
) -> impl Iterator<Item = (usize, &'a Row, &'a Step)> {
    rows.iter().filter_map(|(index, row)| {
        let step = plan.steps.get(*index)?;
        (row.mark == Mark::Partial).then_some((*index, row, step))
    })
}

/// Refuses to resume a step that walks a table by a rowid a `VACUUM` has
/// numbered anew since its last chunk (see [`super::walk_probe`]): going
/// on after its last rowid would skip rows.
fn refuse_renumbered(
    conn: &Connection,
    plan: &Plan,
    rows: &[(usize, Row)],
) -> Result<(), UsageError> {
    for (index, _, step) in stopped_part_way(plan, rows) {
        let table = super::walk_probe::renumbered(conn, &plan.name, step).map_err(|e| {
            super::db::unreadable(
                conn,
                &format!(
                    "the walk's probe ({}, {})",
                    super::walk_probe::TABLE,
                    super::walk_probe::COPY_TABLE
                ),
                &e,
                "pass --no-checkpoint to ignore it",
            )
        })?;
        let Some((table, how)) = table else { continue };
        let table = crate::human::shown(table);
        let (by, which) = renumbered_by(how);
        return Err(UsageError::new(format!(
            "step {} ({}) of plan {} stopped part-way through {table}, which it walks by rowid, and {by} has since numbered the rowids of {table} anew ({which}): going on after the last rowid the step committed would skip rows it has not reached. Nothing was run. Run the plan again with --force to start it over, if its steps may meet rows they already changed (a DELETE, or an UPDATE whose WHERE leaves changed rows out); or give {table} an index or an INTEGER PRIMARY KEY before it is vacuumed again",
            index + 1,
            quoted(&step.name),
            quoted(&plan.name)
        )));
    }
    Ok(())
}

/// Refuses to resume a step that walks by its bare rowid a table made
/// again since its last chunk (see [`super::walk_probe::rebuilt`]): its
/// rows numbered anew, going on after its last rowid would skip rows.
fn refuse_rebuilt(conn: &Connection, plan: &Plan, rows: &[(usize, Row)]) -> Result<(), UsageError> {
    for (index, row, step) in stopped_part_way(plan, rows) {
        let rebuilt =
            super::walk_probe::rebuilt(conn, &plan.name, step, row.pos.root).map_err(|e| {
                super::db::unreadable(conn, TABLE, &e, "pass --no-checkpoint to ignore it")
            })?;
        let Some(table) = rebuilt else { continue };
        let table = shown(table);
        return Err(UsageError::new(format!(
            "step {} ({}) of plan {} stopped part-way through {table}, which it walks by rowid, and {table} has since been made again ({REBUILT}): going on after the last rowid the step committed would skip rows it has not reached. Nothing was run. {REBUILT_WAY_OUT}",
            index + 1,
            quoted(&step.name),
            quoted(&plan.name),
        )));
    }
    Ok(())
}

/// Refuses to resume a step that walks a table by a key whose order is
/// not the one it walked by when it stopped (see [`ORDER`]): its column
/// made again with another collation or type, going on after the last key
/// committed would skip rows the step has not reached, and change again
/// rows it has.
fn refuse_reordered(
    conn: &Connection,
    plan: &Plan,
    rows: &[(usize, Row)],
) -> Result<(), UsageError> {
    for (index, row, step) in stopped_part_way(plan, rows) {
        let (Some(then), Some(chunk)) = (&row.pos.order, &step.chunk) else {
            continue;
        };
        // Made the table's INTEGER PRIMARY KEY, the key walks as the rowid:
        // in the same order, if the step stopped at an integer.
        let now = match chunk.rowid {
            false => key_order(conn, &chunk.table, &chunk.key),
            true if matches!(row.pos.last_key, Key::Integer(_)) => continue,
            true => "rowid".into(),
        };
        if *then == now {
            continue;
        }
        let (table, key) = (shown(&chunk.table), shown(&chunk.key));
        return Err(UsageError::new(format!(
            "step {} ({}) of plan {} stopped part-way through {table}, walking it in the order of its chunk key {key}, and {table} orders {key} otherwise now: by {} when the step stopped, by {} now (its column was made again with another type or collation since). Going on after the last key the step committed would skip rows it has not reached and change again rows it has. Nothing was run. Make the column as it was to go on, or run the plan again with --force to start it over, if its steps may meet rows they already changed",
            index + 1,
            quoted(&step.name),
            quoted(&plan.name),
            order_shown(then),
            order_shown(&now),
        )));
    }
    Ok(())
}

/// What making a table again does to a walk by its bare rowid, for a
/// message (see [`super::walk_probe::rebuilt`]).
const REBUILT: &str = "its b-tree is another: copied into a new table, as SQLite's way to change a column does, rows without an INTEGER PRIMARY KEY are numbered anew";

/// The way out of a walk by a bare rowid whose table was made again.
const REBUILT_WAY_OUT: &str = "Run the plan again with --force to start it over, if its steps may meet rows they already changed (a DELETE, or an UPDATE whose WHERE leaves changed rows out); walk a table you may make again by its INTEGER PRIMARY KEY or a unique column, which a copy keeps";

/// What numbered a walked table's rowids anew, and which tables it
/// renumbers, for a message.
fn renumbered_by(how: super::renumber::Renumbered) -> (&'static str, String) {
    let tail = match how {
        super::renumber::Renumbered::Vacuum => {
            ": it had none when the step stopped, or has none now"
        }
        super::renumber::Renumbered::Copy => "",
    };
    (how.by(), format!("{}{tail}", how.which()))
}

/// Whether the checkpoint table is there; refused (nothing run) when its
/// name holds something batchsse cannot write as it must: a view, or a
/// table altered by hand, on which a run would fail at its first chunk
/// or, with no primary key, resume from the wrong row.
fn is_ours(conn: &Connection) -> Result<bool, UsageError> {
    let read = |e: rusqlite::Error| {
        UsageError::new(format!(
            "cannot read {TABLE}: {}",
            super::db::run_time_message(conn, &e)
        ))
    };
    let kind = super::db::object_kind(conn, TABLE).map_err(read)?;
    let why = match kind.as_deref() {
        None => return Ok(false),
        Some("table") => match altered(conn).map_err(read)? {
            None => return Ok(true),
            Some(why) => why,
        },
        Some(other) => {
            return Err(UsageError::new(format!(
                "{TABLE} is a {other} of yours, not batchsse's checkpoint table; give it another name, or pass --no-checkpoint to run without a checkpoint"
            )));
        }
    };
    Err(UsageError::new(format!(
        "{why}: a run would fail on it or resume from the wrong place. Nothing was run. Put it back from a copy of the file; or, if it holds nothing you need, drop it (in the sqlite3 shell: DROP TABLE {TABLE}) to run the plan from its first step; or pass --no-checkpoint to run without a checkpoint"
    )))
}

/// Refuses probe tables a run cannot write (see
/// [`super::walk_probe::not_ours`]), nothing run.
fn refuse_foreign_probes(conn: &Connection) -> Result<(), UsageError> {
    refuse_foreign(
        conn,
        super::walk_probe::not_ours(conn),
        "the walk's probe tables",
        "a row there for each step that walks a table by its bare rowid,",
    )
}

/// Refuses a table of the rows TEMP-only steps keep that a run cannot
/// write (see [`super::setup::kept::not_ours`]), nothing run.
fn refuse_foreign_kept(conn: &Connection) -> Result<(), UsageError> {
    refuse_foreign(
        conn,
        super::setup::kept::not_ours(conn),
        super::setup::kept::TABLE,
        "there the rows of the TEMP tables a step makes, for a resume to go on from them,",
    )
}

/// Refuses one of batchsse's tables beside the checkpoint that is not as
/// batchsse makes it (`why`, or the error reading `what`); `keeps` says
/// what batchsse keeps in it.
fn refuse_foreign(
    conn: &Connection,
    why: rusqlite::Result<Option<String>>,
    what: &str,
    keeps: &str,
) -> Result<(), UsageError> {
    let why = why.map_err(|e| {
        UsageError::new(format!(
            "cannot read {what}: {}",
            super::db::run_time_message(conn, &e)
        ))
    })?;
    match why {
        None => Ok(()),
        Some(why) => Err(UsageError::new(format!(
            "{why}: batchsse keeps {keeps} beside the checkpoint, and the run would fail on it. Nothing was run. Give it another name, or drop it if it holds nothing you need; or pass --no-checkpoint to run without a checkpoint"
        ))),
    }
}

/// Refuses a trigger of the user's on the checkpoint table, and with
/// `probes` on the walk's probe tables (see [`super::db::refuse_triggers_on`]).
fn refuse_triggers(conn: &Connection, probes: bool) -> Result<(), UsageError> {
    let ours = [
        TABLE,
        super::setup::kept::TABLE,
        super::walk_probe::TABLE,
        super::walk_probe::COPY_TABLE,
    ];
    let written = if probes { &ours[..] } else { &ours[..2] };
    super::db::refuse_triggers_on(
        conn,
        written,
        "pass --no-checkpoint to run without a checkpoint",
    )
}

/// The columns of the checkpoint table that every release made: those a
/// run writes, then the one it leaves to its default. [`ROWID`] is not
/// one of them: an earlier release's table has none.
const COLUMNS: [&str; 9] = [
    "plan",
    "step",
    "checksum",
    "name",
    "state",
    "last_key",
    "done",
    "changed",
    "updated_at",
];

/// What in the checkpoint table is not as [`CREATE`] makes it, in what a
/// run relies on: a column missing, a column that must be set and that no
/// run sets (see [`super::db::not_as_made`]), a rowid column no run can
/// write, a unique index on which one step's row would replace another's,
/// or a primary key other than (plan, step) (a resume reads one row per
/// step).
fn altered(conn: &Connection) -> rusqlite::Result<Option<String>> {
    // Every column but `updated_at`, left to its default, is written.
    let mut written = COLUMNS[..8].to_vec();
    written.extend(ADDED.map(|(column, _)| column));
    if let Some(why) = super::db::not_as_made(conn, TABLE, &COLUMNS, &written)? {
        return Ok(Some(why));
    }
    if let Some(index) = stray_unique_index(conn)? {
        return Ok(Some(format!(
            "the table {TABLE} has a unique index {} beside its primary key, on which writing one step's row would delete another's that holds the same values (every step that inserts nothing keeps the same {ROWID}), so a resume would apply that step again; drop the index (in the sqlite3 shell: DROP INDEX {})",
            quoted(&index),
            quote(&index)
        )));
    }
    if generated_rowid_column(conn)? {
        return Ok(Some(format!(
            "the table {TABLE} has a generated column {ROWID}, which batchsse writes (not as batchsse makes it)"
        )));
    }
    let key = conn
        .prepare("SELECT lower(name) FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?
        .query_map([TABLE], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok((key != ["plan", "step"]).then(|| {
        format!("the table {TABLE} has no primary key on (plan, step) (not as batchsse makes it)")
    }))
}

/// A unique index of the user's on the checkpoint table that does not
/// hold both `plan` and `step`, if there is one: a row written over
/// `INSERT OR REPLACE` deletes any other row with the same values there,
/// another step's checkpoint, which a resume then applies again.
fn stray_unique_index(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT il.name FROM pragma_index_list(?1) AS il
         WHERE il.\"unique\" AND il.origin <> 'pk'
           AND (SELECT count(*) FROM pragma_index_info(il.name) AS ii
                WHERE lower(ii.name) IN ('plan', 'step')) < 2
         ORDER BY il.name LIMIT 1",
        [TABLE],
        |r| r.get(0),
    )
    .optional()
}

/// Whether the column [`ROWID`] is a generated one, which no run can
/// write: SQLite's `table_info` leaves it out, so the table would pass
/// for one of an earlier release, and the column be added again (a
/// duplicate, failing the run's first write).
fn generated_rowid_column(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare(
        "SELECT 1 FROM pragma_table_xinfo(?1) WHERE lower(name) = ?2 AND hidden IN (2, 3)",
    )?
    .exists([TABLE, ROWID])
}

/// A step's state in the checkpoint (the table's `state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Some chunks committed; `last_key` says where the walk resumes.
    Partial,
    Done,
}

impl Mark {
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Partial => "partial",
            Mark::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Mark> {
        match s {
            "partial" => Some(Mark::Partial),
            "done" => Some(Mark::Done),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Row {
    checksum: String,
    mark: Mark,
    pos: ChunkPos,
    /// What `last_insert_rowid()` answered the plan's statements there
    /// (see [`ROWID`]); `None`: not known.
    rowid: Option<i64>,
}

impl Row {
    /// What a step that writes only TEMP tables made, as
    /// [`Checkpoint::keep_setup`] noted it.
    fn setup_digest(&self) -> Option<i64> {
        match (self.mark, &self.pos.last_key) {
            (Mark::Done, Key::Integer(d)) => Some(*d),
            _ => None,
        }
    }
}

/// What `last_insert_rowid()` answered where an earlier run's checkpoint
/// says a step goes on from (see [`Resume::rowid_before`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowidAt {
    /// `None`: not known (see [`ROWID`]).
    pub rowid: Option<i64>,
    /// As the step's own committed chunks left it: it resumes part-way.
    pub part_way: bool,
}

/// Refuses, before anything runs, a resume where a step still to run
/// reads `last_insert_rowid()` (by its text, before an insert of its
/// own) that the checkpoint does not hold (an earlier release's, see
/// [`ROWID`]) while a step before it that inserts (by its text), or its
/// own chunks before, was applied by the earlier run: on the new
/// connection it would answer 0, or an insert of this run's from before
/// it, and the rows it writes would be silently wrong.
fn refuse_unknown_rowid(plan: &Plan, resume: &Resume) -> Result<(), UsageError> {
    // The step whose insert the rowid is of, while it is not known.
    let mut lost: Option<usize> = None;
    // The last step so far that inserts, by its text.
    let mut inserted: Option<usize> = None;
    for step in &plan.steps {
        let inserts = step.inserts();
        if !resume.skips(plan, step) {
            if let Some(at) = resume.rowid_before(plan, step) {
                lost = match (at.rowid, at.part_way && inserts) {
                    (Some(_), _) => None,
                    (None, true) => Some(step.index),
                    (None, false) => inserted,
                };
            }
            if let (Some(by), Some(place)) = (lost, step.reads_rowid_first()) {
                return Err(lost_rowid(plan, step, by, place));
            }
            if inserts {
                lost = None;
            }
        }
        if inserts {
            inserted = Some(step.index);
        }
    }
    Ok(())
}

/// Refuses, before anything runs, to resume part-way a rowid walk that
/// inserts into its table where the checkpoint does not say where the
/// walk ends (see [`END`]: an earlier release's): the table ends past the
/// rows the earlier run's chunks inserted, which the walk would visit and
/// insert from again.
fn refuse_unknown_end(plan: &Plan, resume: &Resume) -> Result<(), UsageError> {
    for step in &plan.steps {
        let inserts = step.chunk.as_ref().is_some_and(|c| c.inserts && c.rowid);
        if inserts && resume.chunk_position(step).is_some_and(|p| p.end.is_none()) {
            return Err(UsageError::new(format!(
                "step {} ({}) of plan {} stopped part-way, and inserts into the table it walks by rowid, but its checkpoint did not keep where the walk ends (an earlier release of batchsse did not, nor does a run of a step that did not insert there then, before a trigger was added), so a resume would go on to the rows the step's chunks inserted past that end, and insert from them again. Nothing was run. Start the plan over from a copy of the file made before it ran, or finish the step by hand",
                step.index + 1,
                quoted(&step.name),
                quoted(&plan.name)
            )));
        }
    }
    Ok(())
}

/// Why [`refuse_unknown_rowid`] refuses `step`, which reads the rowid
/// `place` (`""`, or in its expect) that step `by`'s inserts left.
fn lost_rowid(plan: &Plan, step: &Step, by: usize, place: &str) -> UsageError {
    let (resumes, edit) = match by == step.index {
        true => (
            "this run resumes it part-way, after chunks an earlier run applied".to_owned(),
            " (a step stopped part-way cannot be edited: start the plan over with --force, if its steps can be applied twice, or from a copy of the file made before it ran)",
        ),
        false => (
            format!(
                "this run resumes after step {} ({}), whose inserts an earlier run applied",
                by + 1,
                quoted(&plan.steps[by].name)
            ),
            "",
        ),
    };
    UsageError::new(format!(
        "step {} ({}) calls last_insert_rowid(){place}, and {resumes}; that run's checkpoint was written by an earlier release of batchsse, which did not keep the rowid they left, so here it would not answer it, and the rows the step writes or the check it makes would be wrong. Nothing was run. Have the step find that row itself (for example `(SELECT max(id) FROM orders)`), then run the plan again{edit}",
        step.index + 1,
        quoted(&step.name),
    ))
}

/// The column [`ROWID`] as a resume reads it: NULL in a table of an
/// earlier release, which has none. A value there that is not an integer
/// was written by hand, and fails the read, as in any other column: taken
/// for a rowid not known, it was said to come from an earlier release,
/// and a column made NOT NULL failed the first checkpoint write.
fn rowid_read(conn: &Connection) -> rusqlite::Result<String> {
    added_read(conn, ROWID)
}

/// A column of [`ADDED`] as a read takes it: NULL where the table has none.
fn added_read(conn: &Connection, column: &str) -> rusqlite::Result<String> {
    Ok(match super::db::has_column(conn, TABLE, column)? {
        true => column.into(),
        false => format!("NULL AS {column}"),
    })
}

/// The checkpoint's rows of `plan`, by step index.
fn read_rows(conn: &Connection, plan: &Plan) -> rusqlite::Result<Vec<(usize, Row)>> {
    let (rowid, end) = (rowid_read(conn)?, added_read(conn, END)?);
    let (order, root) = (added_read(conn, ORDER)?, added_read(conn, ROOT)?);
    let mut stmt = conn.prepare(&format!(
        "SELECT step, checksum, state, last_key, done, changed, {rowid}, {end}, {order}, {root} FROM batchsse_checkpoint WHERE plan = ?1 AND step >= 0",
    ))?;
    let rows = stmt.query_map([&plan.name], |r| {
        Ok((
            r.get::<_, i64>(0)? as usize,
            Row {
                checksum: r.get(1)?,
                // The table's CHECK allows only these two.
                mark: Mark::parse(&r.get::<_, String>(2)?).unwrap_or(Mark::Partial),
                pos: ChunkPos {
                    last_key: r.get(3)?,
                    done: r.get::<_, i64>(4)?.max(0) as u64,
                    changed: r.get::<_, i64>(5)?.max(0) as u64,
                    end: r.get(7)?,
                    order: r.get(8)?,
                    root: r.get(9)?,
                },
                rowid: r.get(6)?,
            },
        ))
    })?;
    rows.collect()
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
        // Checked for --force too: it clears the table, then writes it.
        let present = is_ours(conn)?;
        let probes = force || super::walk_probe::written_by(plan);
        if probes {
            refuse_foreign_probes(conn)?;
        }
        if force || plan.steps.iter().any(|s| s.temp_only) {
            refuse_foreign_kept(conn)?;
        }
        refuse_triggers(conn, probes)?;
        if force {
            return Ok(Resume {
                forced: true,
                ..Resume::none()
            });
        }
        if !present {
            return Ok(Resume::none());
        }
        let rows = read_rows(conn, plan).map_err(|e| {
            super::db::unreadable(conn, TABLE, &e, "pass --no-checkpoint to ignore it")
        })?;
        if rows.iter().any(|(_, row)| row.checksum == UNDOING) {
            return Err(UsageError::new(format!(
                "an undo of plan {} is not finished: it stopped after taking back part of what the plan applied, so the checkpoint no longer says what is applied. Finish it with `batchsse undo --db {db} --plan {name}` (or start over with `batchsse checkpoint clear --db {db} --plan {name}`), then run the plan again",
                quoted(&plan.name),
                db = super::db::shell_word_of(conn),
                name = crate::human::shell_word(&plan.name)
            )));
        }
        for (index, row) in &rows {
            match plan.steps.get(*index) {
                Some(step) if step.checksum == row.checksum => {}
                // Wrote only TEMP tables, so nothing of it is in the file:
                // made again as it is now (see `super::setup`).
                Some(_) if row.setup_digest().is_some() => {}
                Some(step) => return Err(edited(*index, &step.name, &plan.name)),
                None => {
                    return Err(UsageError::new(format!(
                        "plan {} had a step {} that is gone now; the plan was edited after it ran. \
                         Give it a new \"name\" to start fresh, or pass --force to run it again",
                        quoted(&plan.name),
                        index + 1
                    )));
                }
            }
        }
        refuse_renumbered(conn, plan, &rows)?;
        refuse_rebuilt(conn, plan, &rows)?;
        refuse_reordered(conn, plan, &rows)?;
        let resume = Resume {
            rows: rows.into_iter().collect(),
            forced: false,
        };
        refuse_unknown_rowid(plan, &resume)?;
        refuse_unknown_end(plan, &resume)?;
        Ok(resume)
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
        self.rows
            .get(&step.index)
            .is_some_and(|r| r.mark == Mark::Done && r.checksum == step.checksum)
    }

    /// Whether this run skips `step`: an earlier run finished it, and it
    /// does not set up the connection (PRAGMA, ATTACH and TEMP-only steps
    /// are done again, the connection being new, unless nothing is left
    /// to do).
    pub fn skips(&self, plan: &Plan, step: &Step) -> bool {
        self.is_done(step) && (!step.sets_up_connection() || self.already_applied(plan))
    }

    /// What `last_insert_rowid()` answers the plan's statements as `step`
    /// begins in this run, where the earlier run's checkpoint says: a
    /// resumed run's connection is new, where it answers 0. Said for a
    /// step resumed part-way (as its last committed chunk left it), and
    /// for one after a step the earlier run finished (as that step left
    /// it, even where this run does that step again to set up its
    /// connection: a TEMP table made again may hold other rows, whose
    /// earlier run's are put back); else `None`, and the step goes on
    /// from what this run's statements left. A TEMP-only step edited
    /// since is made as it says now, and so is the rowid after it.
    pub fn rowid_before(&self, plan: &Plan, step: &Step) -> Option<RowidAt> {
        if let Some(row) = self.rows.get(&step.index)
            && row.mark == Mark::Partial
        {
            return Some(RowidAt {
                rowid: row.rowid,
                part_way: true,
            });
        }
        let before = plan.steps.get(step.index.checked_sub(1)?)?;
        let row = self
            .rows
            .get(&before.index)
            .filter(|_| self.is_done(before))?;
        Some(RowidAt {
            rowid: row.rowid,
            part_way: false,
        })
    }

    pub fn already_applied(&self, plan: &Plan) -> bool {
        plan.steps.iter().all(|s| self.is_done(s))
    }

    /// Where a partly applied chunked step resumes.
    pub fn chunk_position(&self, step: &Step) -> Option<&ChunkPos> {
        self.rows
            .get(&step.index)
            .filter(|r| r.mark == Mark::Partial)
            .map(|r| &r.pos)
    }

    pub fn describe(&self, plan: &Plan) -> String {
        // Setup steps (PRAGMA, ATTACH) run again: the connection is new.
        let done: Vec<String> = plan
            .steps
            .iter()
            .filter(|s| self.is_done(s) && (!s.sets_up_connection() || self.already_applied(plan)))
            .map(|s| (s.index + 1).to_string())
            .collect();
        let partial = plan
            .steps
            .iter()
            .find_map(|s| self.chunk_position(s).map(|p| (s, p)));
        let mut text = format!("resuming plan {}", quoted(&plan.name));
        if !done.is_empty() {
            text += &format!(": step(s) {} already applied and skipped", done.join(", "));
        }
        if let Some((s, p)) = partial {
            text += &format!(
                "; step {} ({}) continues after {} committed rows",
                s.index + 1,
                quoted(&s.name),
                crate::human::thousands(p.done)
            );
        }
        text
    }
}

/// The steps an undo has taken back only in part ([`UNDOING`]), as (plan,
/// step), by plan and step: until that undo ends, only its record can say
/// what they still hold, so `undo clear` must not take that record away.
/// None with no table, or with one that lacks the columns an undo marks
/// (not batchsse's: no undo could have marked it).
pub fn undoing(conn: &Connection) -> rusqlite::Result<Vec<(String, i64)>> {
    let columns: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name IN ('plan', 'step', 'checksum')",
        [TABLE],
        |r| r.get(0),
    )?;
    if columns < 3 {
        return Ok(Vec::new());
    }
    conn.prepare(&format!(
        "SELECT plan, step FROM {TABLE} WHERE checksum = ?1 ORDER BY plan, step"
    ))?
    .query_map([UNDOING], |r| Ok((r.get(0)?, r.get(1)?)))?
    .collect()
}

/// Whether the checkpoint holds any step of `plan` (false with no table):
/// what `undo clear --plan` leaves of it, applied and skipped by its next
/// run, or applied with nothing to tell a run so.
pub fn holds(conn: &Connection, plan: &str) -> rusqlite::Result<bool> {
    if !super::renumber::table_exists(conn, TABLE)? {
        return Ok(false);
    }
    conn.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE plan = ?1)"),
        [plan],
        |r| r.get(0),
    )
}

/// The steps of `plan` an earlier run finished: index -> checksum; not
/// those that wrote only TEMP tables (their row holds the digest of what
/// they made, see `super::setup`), which left nothing in the file and
/// are made again, as they are now, at every resume. Empty
/// when there is no checkpoint or it cannot be read (`Resume::load` then
/// says what is wrong).
pub fn finished_steps(conn: &Connection, plan: &str) -> crate::plan::Finished {
    if !table_exists(conn).unwrap_or(false) {
        return Default::default();
    }
    let read = || -> rusqlite::Result<crate::plan::Finished> {
        let mut stmt = conn.prepare(
            "SELECT step, checksum FROM batchsse_checkpoint WHERE plan = ?1 AND state = 'done' AND step >= 0 AND checksum <> 'undoing' AND typeof(last_key) <> 'integer'",
        )?;
        let rows = stmt.query_map([plan], |r| {
            Ok((r.get::<_, i64>(0)? as usize, r.get::<_, String>(1)?))
        })?;
        rows.collect()
    };
    read().unwrap_or_default()
}

/// Drops the checkpoint table if it holds no plan's steps (a complete
/// undo took back the last); returns whether it did.
pub(crate) fn drop_if_empty(conn: &Connection) -> rusqlite::Result<bool> {
    if !super::renumber::table_exists(conn, TABLE)? {
        return Ok(false);
    }
    let empty: bool = conn.query_row(
        &format!("SELECT NOT EXISTS (SELECT 1 FROM {TABLE})"),
        [],
        |r| r.get(0),
    )?;
    if empty {
        conn.execute_batch(&format!("DROP TABLE {TABLE}"))?;
    }
    Ok(empty)
}

pub(super) fn table_exists(conn: &Connection) -> Result<bool, UsageError> {
    conn.query_row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [TABLE],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
    .map_err(|e| UsageError::new(sqlite_message(&e)))
}

/// This run's writes to the checkpoint, for one plan: off with
/// `--no-checkpoint` or `--dry-run`. Every write and check happens inside
/// the caller's transaction, with the work it records.
pub struct Checkpoint<'a> {
    conn: &'a Connection,
    plan: &'a Plan,
    on: bool,
    /// The table is known to exist (seen, or written by this run).
    exists: std::cell::Cell<bool>,
    /// What `last_insert_rowid()` answers the plan's statements (the
    /// runner's; `None`: not known), written with every row.
    rowid: &'a std::cell::Cell<Option<i64>>,
}

impl<'a> Checkpoint<'a> {
    pub fn new(
        conn: &'a Connection,
        plan: &'a Plan,
        on: bool,
        rowid: &'a std::cell::Cell<Option<i64>>,
    ) -> Self {
        Checkpoint {
            conn,
            plan,
            on,
            exists: std::cell::Cell::new(false),
            rowid,
        }
    }

    fn table_exists(&self) -> rusqlite::Result<bool> {
        if !self.exists.get() {
            let found = self
                .conn
                .prepare_cached("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1")?
                .exists([TABLE])?;
            self.exists.set(found);
        }
        Ok(self.exists.get())
    }

    /// Whether the table holds any row of this plan, looked up afresh (it
    /// may have been dropped since this run saw it).
    pub fn holds_plan(&self) -> rusqlite::Result<bool> {
        let found = self
            .conn
            .prepare_cached("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1")?
            .exists([TABLE])?;
        if !found {
            return Ok(false);
        }
        self.conn
            .prepare_cached("SELECT 1 FROM batchsse_checkpoint WHERE plan = ?1")?
            .exists([&self.plan.name])
    }

    /// Forgets an earlier run of the plan (for `--force`).
    pub fn reset(&self) -> rusqlite::Result<()> {
        if self.on && self.table_exists()? {
            self.conn.execute(
                "DELETE FROM batchsse_checkpoint WHERE plan = ?1",
                [&self.plan.name],
            )?;
        }
        if self.on {
            super::walk_probe::forget(self.conn, &self.plan.name, None)?;
            super::setup::kept::forget(self.conn, &self.plan.name, None)?;
        }
        Ok(())
    }

    /// True when the checkpoint of `step` is no longer what this run last
    /// left (`last_key`, or no row before its first write): another
    /// batchsse run is applying the same plan. Call before any work, so the
    /// write lock makes the check and the work one step.
    pub fn moved(&self, step: &Step, last_key: Option<&Key>) -> rusqlite::Result<bool> {
        if !self.on || !self.table_exists()? {
            // No table: nothing has been recorded by anyone.
            return Ok(self.on && last_key.is_some());
        }
        let row = self
            .conn
            .prepare_cached(
                "SELECT state, last_key FROM batchsse_checkpoint WHERE plan = ?1 AND step = ?2",
            )?
            .query_row(params![self.plan.name, step.index as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Key>(1)?))
            })
            .optional()?;
        Ok(match (row, last_key) {
            (None, None) => false,
            (Some((state, key)), Some(expected)) => {
                Mark::parse(&state) != Some(Mark::Partial) || key != *expected
            }
            _ => true,
        })
    }

    /// The message for [`Checkpoint::moved`]: the plan's records gone
    /// (cleared while this run ran), or another run's progress.
    pub fn conflict(&self) -> String {
        if let Ok(false) = self.holds_plan() {
            return format!(
                "the checkpoint of plan {} was removed while this run ran (by `batchsse checkpoint clear`, a run of the plan with --force, or by hand), so this run stopped rather than go on unrecorded",
                quoted(&self.plan.name)
            );
        }
        format!(
            "another batchsse run is applying plan {} to this database (its checkpoint moved under this run); let one run finish, then run the plan again to resume",
            quoted(&self.plan.name)
        )
    }

    /// Why `step` must not go on after its last committed chunk: a
    /// `VACUUM` has numbered anew, since that chunk, the rowids it walks
    /// by (see [`super::walk_probe`]), so rows it has not reached may now
    /// lie below them. Call in the next chunk's transaction, before any
    /// work, and only once the step has a committed chunk (a probe row
    /// left by an earlier, cleared run says nothing of this one).
    pub fn renumbered(&self, step: &Step) -> rusqlite::Result<Option<String>> {
        if !self.on {
            return Ok(None);
        }
        let table = super::walk_probe::renumbered(self.conn, &self.plan.name, step)?;
        if table.is_none() {
            return self.rebuilt(step);
        }
        Ok(table.map(|(table, how)| {
            let table = crate::human::shown(table);
            let (by, which) = renumbered_by(how);
            format!(
            "{by} numbered the rowids of {table} anew while this step walked it by rowid ({which}): going on after the last rowid it committed would skip rows it has not reached, so the step stopped before its next chunk. What committed stays applied and checkpointed; run the plan again with --force to start it over, if its steps may meet rows they already changed (a DELETE, or an UPDATE whose WHERE leaves changed rows out)"
        )
        }))
    }

    /// Why `step` must not go on after its last committed chunk: its
    /// table, walked by its bare rowid, was made again since that chunk
    /// (see [`super::walk_probe::rebuilt`]). As [`Checkpoint::renumbered`].
    fn rebuilt(&self, step: &Step) -> rusqlite::Result<Option<String>> {
        // Not a walk by bare rowid: no root page kept (`rebuilt` reads the
        // table's now, once).
        if super::walk_probe::by_bare_rowid(step).is_none() {
            return Ok(None);
        }
        let then: Option<i64> = self
            .conn
            .prepare_cached(&format!(
                "SELECT {} FROM {TABLE} WHERE plan = ?1 AND step = ?2",
                added_read(self.conn, ROOT)?
            ))?
            .query_row(params![self.plan.name, step.index as i64], |r| r.get(0))
            .optional()?
            .flatten();
        let table = super::walk_probe::rebuilt(self.conn, &self.plan.name, step, then)?;
        Ok(table.map(|table| {
            format!(
                "{} was made again while this step walked it by rowid ({REBUILT}): going on after the last rowid it committed would skip rows it has not reached, so the step stopped before its next chunk. What committed stays applied and checkpointed. {REBUILT_WAY_OUT}",
                shown(table)
            )
        }))
    }

    /// Whether this run writes the checkpoint.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// What the earlier run's TEMP-only `step`, as it is now, made (see
    /// `super::setup`), as its row says; none where it was edited since.
    pub fn setup_digest(&self, step: &Step) -> rusqlite::Result<Option<i64>> {
        if !self.on || !self.table_exists()? {
            return Ok(None);
        }
        let found: Option<Key> = self
            .conn
            .prepare_cached(
                "SELECT last_key FROM batchsse_checkpoint WHERE plan = ?1 AND step = ?2 AND checksum = ?3 AND state = 'done'",
            )?
            .query_row(
                params![self.plan.name, step.index as i64, step.checksum],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match found {
            Some(Key::Integer(d)) => Some(d),
            _ => None,
        })
    }

    /// What `last_insert_rowid()` answered the plan's statements after
    /// the earlier run's `step`, as its row says (`None`: not known, or
    /// no row): what the steps after it go on from in a resume (see
    /// [`Resume::rowid_before`]).
    pub fn rowid_after(&self, step: &Step) -> rusqlite::Result<Option<i64>> {
        if !self.on || !self.table_exists()? {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {} FROM {TABLE} WHERE plan = ?1 AND step = ?2",
            rowid_read(self.conn)?
        );
        let found = self
            .conn
            .prepare(&sql)?
            .query_row(params![self.plan.name, step.index as i64], |r| r.get(0))
            .optional()?;
        Ok(found.flatten())
    }

    /// Records a finished TEMP-only step with the `digest` of what it made.
    pub fn setup_done(&self, step: &Step, changed: u64, digest: i64) -> rusqlite::Result<()> {
        let row = (step, Mark::Done, &Key::Integer(digest), None);
        self.write(row, changed, changed)
    }

    /// Records a finished step (a plain one: `done` = `changed`).
    pub fn step_done(&self, step: &Step, done: u64, changed: u64) -> rusqlite::Result<()> {
        self.write((step, Mark::Done, &Key::Null, None), done, changed)
    }

    /// Records a committed chunk of a step that goes on after `last_key`,
    /// with where its walk ends when a resume must not go past it (see
    /// [`END`]).
    pub fn chunk_done(
        &self,
        (step, last_key, end): (&Step, &Key, Option<&Key>),
        done: u64,
        changed: u64,
    ) -> rusqlite::Result<()> {
        self.write((step, Mark::Partial, last_key, end), done, changed)
    }

    /// Adds the columns of [`ADDED`] to a table an earlier release made,
    /// in the transaction of this run's first write there (a dry run, and
    /// `checkpoint list`, leave the table as they found it; a release
    /// before this one ignores the columns, nullable, and leaves them
    /// NULL). Called where writing the row failed, so a write pays
    /// nothing for it: a table of this release has the columns, and one
    /// this run added them to keeps them, unless the write's transaction
    /// is rolled back, which takes them back with it (then the next write
    /// fails and adds them again). `false`: they were there, and the
    /// write failed for another reason.
    fn add_columns(&self) -> rusqlite::Result<bool> {
        let mut any = false;
        for (column, kind) in ADDED {
            let has = || super::db::has_column(self.conn, TABLE, column);
            if has()? {
                continue;
            }
            let added = self
                .conn
                .execute_batch(&format!("ALTER TABLE {TABLE} ADD COLUMN {column} {kind}"));
            // A run of another plan, outside a transaction (after a step
            // such as VACUUM), may have added it since it was looked for.
            if let Err(e) = added
                && !has()?
            {
                return Err(e);
            }
            any = true;
        }
        Ok(any)
    }

    /// The checkpoint row, with what `last_insert_rowid()` answers the
    /// plan's statements now.
    fn insert_row(
        &self,
        (step, mark, last_key, end): Written<'_>,
        (done, changed): (u64, u64),
    ) -> rusqlite::Result<()> {
        let (order, root) = match mark {
            Mark::Partial => (
                step.chunk
                    .as_ref()
                    .filter(|c| !c.rowid)
                    .map(|c| key_order(self.conn, &c.table, &c.key)),
                super::walk_probe::root(self.conn, step)?,
            ),
            Mark::Done => (None, None),
        };
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO batchsse_checkpoint (plan, step, checksum, name, state, last_key, done, changed, last_insert_rowid, walk_end, key_order, walk_root)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                self.plan.name,
                step.index as i64,
                step.checksum,
                step.name,
                mark.as_str(),
                last_key,
                done as i64,
                changed as i64,
                self.rowid.get(),
                end,
                order,
                root
            ])?;
        Ok(())
    }

    fn write(&self, row: Written<'_>, done: u64, changed: u64) -> rusqlite::Result<()> {
        if !self.on {
            return Ok(());
        }
        let (step, mark) = (row.0, row.1);
        self.conn.prepare_cached(CREATE)?.execute([])?;
        self.exists.set(true);
        if let Err(e) = self.insert_row(row, (done, changed)) {
            if !self.add_columns()? {
                return Err(e);
            }
            self.insert_row(row, (done, changed))?;
        }
        if !step.temp_only {
            super::setup::kept::forget_written(
                self.conn,
                &self.plan.name,
                step.index,
                &step.writes,
            )?;
        }
        // The rows the plan's TEMP-only steps kept are for a resume: once
        // its last step is done there is none.
        if mark == Mark::Done && step.index + 1 == self.plan.steps.len() {
            super::setup::kept::forget(self.conn, &self.plan.name, None)?;
        }
        match mark {
            Mark::Partial => super::walk_probe::note(self.conn, &self.plan.name, step),
            Mark::Done => super::walk_probe::done(self.conn, &self.plan.name, step),
        }
    }
}
