//! The undo record's tables, beside the checkpoint in the database file:
//! `batchsse_undo` (one row per recorded chunk, or part of one: run, plan,
//! step, and the record itself, a blob in the format of `codec`, with its
//! checksum) and `batchsse_undo_conflict` (rows an undo kept); and the
//! check that a record is whole before an undo takes it back.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};

use crate::error::UsageError;
use crate::plan::sqlite_message;
pub use crate::run::renumber::Renumbered;
use crate::run::renumber::{next_probe_rowid, table_exists};

pub const CHUNKS: &str = "batchsse_undo";

/// batchsse's own tables in a database file, never recorded (the last is
/// the undo record's format from before the first release).
const OWN: [&str; 10] = [
    crate::run::checkpoint::TABLE,
    crate::run::setup::kept::TABLE,
    crate::run::walk_probe::TABLE,
    crate::run::walk_probe::COPY_TABLE,
    CHUNKS,
    CONFLICTS,
    PROBE,
    COPY_PROBE,
    super::stash::TABLE,
    "batchsse_undo_row",
];

/// Where undos keep the rows they leave alone, beside the record.
pub const CONFLICTS: &str = "batchsse_undo_conflict";

/// A row per recorded run, given the rowid `at` with a gap before it, in
/// a table without an index: a `VACUUM` numbers the rows of such a table
/// anew from 1, so a row whose rowid is no longer `at` tells that those
/// of every table with neither an `INTEGER PRIMARY KEY` nor an index have
/// moved since the run, and with them the rows its record finds by rowid.
pub(super) const PROBE: &str = "batchsse_undo_probe";

/// The same as [`PROBE`], in a table with an index, whose rowids a
/// `VACUUM` keeps (SQLite copies the index as it is) but a copy of the
/// file made through `.dump` does not: that copy numbers anew every table
/// without an `INTEGER PRIMARY KEY`, indexed or not.
const COPY_PROBE: &str = "batchsse_undo_copy";

/// Whether `table` (as SQLite names it) is one of batchsse's own or one of
/// SQLite's (`sqlite_…`, in any case), which no step's record holds.
pub fn not_recorded(table: &[u8]) -> bool {
    is_own(table)
        || table
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"sqlite_"))
}

/// Whether `table` is one of batchsse's own.
pub fn is_own(table: &[u8]) -> bool {
    OWN.iter()
        .any(|own| own.as_bytes().eq_ignore_ascii_case(table))
}

/// A chunk's `chunk` number for a step the run did not record (`"undo":
/// false`): an undo stops there.
pub const UNRECORDED: i64 = -1;

/// A chunk's `chunk` number for a recorded step that changed nothing: it
/// holds no record, but says the step was recorded (so an undo may clear
/// its checkpoint).
pub const NOTHING: i64 = -2;

/// A chunk's `chunk` number for a recorded step's count of its parts (in
/// `rows`), kept in the transaction of each chunk that adds parts and of
/// each part an undo takes back: without it a step's newest parts could
/// go by hand unseen, as the parts left would still be numbered 0, 1, 2…
pub const PARTS: i64 = -3;

// Columns without a type have no affinity: every value is kept exactly.
// The record last: SQLite reads a column after a blob of megabytes by
// walking the blob's overflow pages, so every query of the other columns
// (the damage check, `undo list`) would read the whole record.
// By run and step: a run's end asks, of each step it recorded, whether
// its parts are still there; by run alone that read all the run's parts
// for each step (a script of 8,000 one-row statements took 7 s to end).
const CREATE: &str = "CREATE TABLE IF NOT EXISTS batchsse_undo (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    plan TEXT NOT NULL,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    rec_hash INTEGER,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    rec BLOB
);
CREATE INDEX IF NOT EXISTS batchsse_undo_by_run ON batchsse_undo(run, id);
CREATE INDEX IF NOT EXISTS batchsse_undo_by_step ON batchsse_undo(plan, step);
CREATE INDEX IF NOT EXISTS batchsse_undo_by_run_step ON batchsse_undo(run, step);
CREATE TABLE IF NOT EXISTS batchsse_undo_conflict (
    run TEXT NOT NULL,
    tbl TEXT NOT NULL,
    k,
    col TEXT,
    why TEXT NOT NULL,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    plan TEXT,
    run_at TEXT
);
CREATE TABLE IF NOT EXISTS batchsse_undo_probe (
    run TEXT NOT NULL,
    at INTEGER NOT NULL,
    bare TEXT,
    roots TEXT
);
CREATE TABLE IF NOT EXISTS batchsse_undo_copy (
    run TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS batchsse_undo_copy_by_run ON batchsse_undo_copy(run);";

/// Makes the tables if they are not there (inside the caller's
/// transaction). Records of an earlier format (a row per value, from
/// before the first release) are refused with what to do.
pub fn create(conn: &Connection) -> rusqlite::Result<()> {
    if crate::run::db::has_column(conn, "batchsse_undo", "first")? {
        return Err(failure(
            "this file holds undo records of an older batchsse; take them back with that version, or remove them with `batchsse undo clear --all`".into(),
        ));
    }
    conn.execute_batch(CREATE)?;
    // A table made by a batchsse from before the checksum: its old parts
    // keep a NULL there, which `damage` takes as unchecked.
    if !has_checksums(conn)? {
        conn.execute_batch("ALTER TABLE batchsse_undo ADD COLUMN rec_hash INTEGER")?;
    }
    if !crate::run::db::has_column(conn, PROBE, "bare")? {
        conn.execute_batch("ALTER TABLE batchsse_undo_probe ADD COLUMN bare TEXT")?;
    }
    // The root pages of the tables found by bare rowid (see `rebuilt`).
    if !crate::run::db::has_column(conn, PROBE, "roots")? {
        conn.execute_batch("ALTER TABLE batchsse_undo_probe ADD COLUMN roots TEXT")?;
    }
    complete_conflicts(conn)
}

/// Gives `run` its [`PROBE`] row, unless it has one (inside the caller's
/// transaction, once the tables are made), with the tables that have no
/// index as it is written (`bare`): one given an index after a `VACUUM`
/// renumbered it must not look as if it kept its rowids; and its
/// [`COPY_PROBE`] row.
pub fn probe(conn: &Connection, run: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO {COPY_PROBE} (rowid, run, at) SELECT n, ?1, n FROM {}
         WHERE NOT EXISTS (SELECT 1 FROM {COPY_PROBE} WHERE run = ?1)",
        next_probe_rowid(COPY_PROBE)
    ))?
    .execute([run])?;
    conn.prepare_cached(&format!(
        "INSERT INTO {PROBE} (rowid, run, at, bare)
         SELECT n, ?1, n, (SELECT json_group_array(t.name) FROM pragma_table_list AS t
             WHERE t.schema = 'main' AND t.type = 'table' AND substr(t.name, 1, 7) <> 'sqlite_'
             AND NOT EXISTS (SELECT 1 FROM pragma_index_list(t.name, 'main')))
         FROM {} WHERE NOT EXISTS (SELECT 1 FROM {PROBE} WHERE run = ?1)",
        next_probe_rowid(PROBE)
    ))?
    .execute([run])
    .map(drop)
}

/// Whether, and how, the rowids of tables without an `INTEGER PRIMARY
/// KEY` were numbered anew since `run` was recorded (see [`PROBE`] and
/// [`COPY_PROBE`]); `None` too for a run recorded by a batchsse from
/// before the probes.
pub fn renumbered(conn: &Connection, run: &str) -> rusqlite::Result<Option<Renumbered>> {
    let moved = |table: &str| -> rusqlite::Result<bool> {
        if !table_exists(conn, table)? {
            return Ok(false);
        }
        // Cached: read again in every part an undo takes back.
        conn.prepare_cached(&format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE run = ?1 AND rowid <> at)"
        ))?
        .query_row([run], |r| r.get(0))
    };
    Ok(Renumbered::of(moved(COPY_PROBE)?, moved(PROBE)?))
}

/// The tables whose rows `run`'s record finds by their bare rowid, by
/// name (reads every part of the record): after a copy, all of them;
/// after a `VACUUM`, those that have no index, or had none when the run
/// was recorded (an index added after a `VACUUM` does not give back the
/// rowids it renumbered).
pub fn by_rowid(conn: &Connection, run: &str, how: Renumbered) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT id, step, chunk FROM batchsse_undo WHERE run = ?1 AND chunk >= 0 ORDER BY id",
    )?;
    let parts: Vec<(i64, i64, i64)> = stmt
        .query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let (mut tables, mut rec) = (std::collections::BTreeSet::new(), Vec::new());
    for (id, step, chunk) in parts {
        if !read_record(conn, run, (id, step, chunk), &mut rec)? {
            continue;
        }
        tables.extend(bare_rowid_tables(&rec)?);
    }
    renumbered_of(conn, run, how, tables)
}

/// The tables whose rows part `rec` finds by their bare rowid.
pub(super) fn bare_rowid_tables(rec: &[u8]) -> rusqlite::Result<impl Iterator<Item = String>> {
    let layouts = super::codec::layouts(rec).map_err(|e| failure(e.to_string()))?;
    Ok(layouts
        .into_iter()
        .filter(|l| l.by_bare_rowid())
        .map(|l| l.table))
}

/// Of `tables`, found by their bare rowid, those that `how` numbered anew
/// (see [`by_rowid`]).
fn renumbered_of(
    conn: &Connection,
    run: &str,
    how: Renumbered,
    tables: std::collections::BTreeSet<String>,
) -> rusqlite::Result<Vec<String>> {
    if how == Renumbered::Copy {
        return Ok(tables.into_iter().collect());
    }
    let mut unindexed = Vec::new();
    for t in tables {
        let bare: bool = conn.query_row(
            "SELECT NOT EXISTS (SELECT 1 FROM pragma_index_list(?2, 'main'))
                 OR EXISTS (SELECT 1 FROM batchsse_undo_probe, json_each(bare)
                     WHERE run = ?1 AND json_each.value = ?2 COLLATE NOCASE)",
            [run, &t],
            |r| r.get(0),
        )?;
        if bare {
            unindexed.push(t);
        }
    }
    Ok(unindexed)
}

/// The tables of part `rec` of `run` whose rowids were numbered anew since
/// the run was recorded, and what did it: checked in each part's
/// transaction, since an application's `VACUUM` may come between two parts
/// of an undo as well as before it (two reads of the small probe tables,
/// and nothing more unless it came).
pub fn renumbered_in(
    conn: &Connection,
    run: &str,
    rec: &[u8],
) -> rusqlite::Result<Option<(Renumbered, Vec<String>)>> {
    let Some(how) = renumbered(conn, run)? else {
        return Ok(None);
    };
    let tables = renumbered_of(conn, run, how, bare_rowid_tables(rec)?.collect())?;
    Ok((!tables.is_empty()).then_some((how, tables)))
}

/// Gives a conflict table made by a batchsse from before them the `plan`
/// and `run_at` columns (its rows keep a NULL there: found by their run
/// only, and held by any later undo of their plan), and the index by row
/// ([`left_by_older`] looks each kept row up by its table and key: without
/// it, an undo that follows one that kept 100,000 rows read the table
/// 100,000 times, for minutes, at its very end).
pub fn complete_conflicts(conn: &Connection) -> rusqlite::Result<()> {
    if !conflicts_have_plan(conn)? {
        conn.execute_batch("ALTER TABLE batchsse_undo_conflict ADD COLUMN plan TEXT")?;
    }
    if !conflicts_have_run_at(conn)? {
        conn.execute_batch("ALTER TABLE batchsse_undo_conflict ADD COLUMN run_at TEXT")?;
    }
    conn.execute_batch(CONFLICTS_BY_ROW)
}

/// The conflict table's index by table and key.
const CONFLICTS_BY_ROW: &str =
    "CREATE INDEX IF NOT EXISTS batchsse_undo_conflict_by_row ON batchsse_undo_conflict(tbl, k)";

fn conflicts_have_run_at(conn: &Connection) -> rusqlite::Result<bool> {
    crate::run::db::has_column(conn, CONFLICTS, "run_at")
}

fn conflicts_have_plan(conn: &Connection) -> rusqlite::Result<bool> {
    crate::run::db::has_column(conn, "batchsse_undo_conflict", "plan")
}

/// The undo's own tables.
pub const TABLES: [&str; 5] = [CHUNKS, CONFLICTS, PROBE, COPY_PROBE, super::stash::TABLE];

/// The undo's own tables, and the columns each has had since the
/// first release (later ones are added to an older table as it is met).
const SHAPES: [(&str, &[&str]); 5] = [
    (
        CHUNKS,
        &["run", "plan", "step", "chunk", "rows", "bytes", "rec"],
    ),
    ("batchsse_undo_conflict", &["run", "tbl", "k", "why"]),
    (PROBE, &["run", "at"]),
    (COPY_PROBE, &["run", "at"]),
    (super::stash::TABLE, super::stash::FIRST_COLUMNS),
];

/// Why one of the undo's table names is taken by something batchsse did
/// not make (a view, or a table without the columns batchsse writes), if
/// one is: the run or the undo would fail on it part-way.
pub fn not_ours(conn: &Connection) -> rusqlite::Result<Option<String>> {
    // The record format from before the first release: `create` names it.
    if crate::run::db::has_column(conn, CHUNKS, "first")? {
        return Ok(None);
    }
    for ((name, needed), (_, known)) in SHAPES.iter().zip(COLUMNS) {
        if let Some(why) = crate::run::db::not_as_made(conn, name, needed, known)? {
            return Ok(Some(why));
        }
    }
    Ok(None)
}

/// Every column of the undo's own tables as batchsse makes them.
const COLUMNS: [(&str, &[&str]); 5] = [
    (
        CHUNKS,
        &[
            "id",
            "run",
            "plan",
            "step",
            "name",
            "chunk",
            "rows",
            "bytes",
            "rec_hash",
            "created_at",
            "rec",
        ],
    ),
    (
        CONFLICTS,
        &["run", "tbl", "k", "col", "why", "at", "plan", "run_at"],
    ),
    (PROBE, &["run", "at", "bare", "roots"]),
    (COPY_PROBE, &["run", "at"]),
    (super::stash::TABLE, super::stash::COLUMNS),
];

/// Whether batchsse's own `table` has `column` (a table made by an older
/// batchsse may lack one, or have one it no longer writes).
/// The rows an undo holds as kept before it keeps any itself: those kept
/// for its runs, and those kept for its plan since its oldest run was
/// recorded, by an undo of a newer run of the plan (one that a try of this
/// undo took back whole before it was interrupted has no record left, so
/// it is no longer among the runs): the run it takes back changed those
/// rows before the application did, so it must not put them back either.
pub struct Scope {
    /// The runs, as a JSON array (`json_each` reads it).
    runs: String,
    plan: String,
    /// When the oldest of the runs began to be recorded; `None` where the
    /// conflict table has no `plan` (a dry run on a table made before it).
    since: Option<String>,
    /// Whether the conflict table says when each kept row's run was
    /// recorded (`run_at`; not in a dry run on a table made before it).
    run_at: bool,
    /// When each run began to be recorded (its first part's
    /// `created_at`), read once: [`keep`] writes it into every row kept.
    recorded: HashMap<String, String>,
}

impl Scope {
    /// The scope of an undo of `runs` of `plan`: by its runs alone where
    /// the tables cannot tell more.
    pub fn of(conn: &Connection, runs: &[String], plan: &str) -> Scope {
        let runs = serde_json::to_string(runs).unwrap_or_else(|_| "[]".into());
        let oldest = || {
            conn.query_row(
                "SELECT min(created_at) FROM batchsse_undo WHERE run IN (SELECT value FROM json_each(?1))",
                [&runs],
                |r| r.get(0),
            )
        };
        let since = match conflicts_have_plan(conn) {
            Ok(true) => oldest().ok().flatten(),
            _ => None,
        };
        Scope {
            plan: plan.to_owned(),
            recorded: first_parts(conn, &runs).unwrap_or_default(),
            runs,
            since,
            run_at: conflicts_have_run_at(conn).unwrap_or(false),
        }
    }

    /// When `run` began to be recorded, if it has parts left.
    pub fn recorded_at(&self, run: &str) -> Option<&str> {
        self.recorded.get(run).map(String::as_str)
    }

    /// When each of the runs with parts left began to be recorded, in
    /// order.
    pub fn starts(&self) -> Vec<String> {
        let mut starts: Vec<String> = self.recorded.values().cloned().collect();
        starts.sort_unstable();
        starts.dedup();
        starts
    }

    /// The condition on a conflict row, its parameters ([`Scope::params`])
    /// from `?first` on.
    fn holds(&self, first: usize) -> String {
        let runs = format!("run IN (SELECT value FROM json_each(?{first}))");
        // Rows an undo of an older run of the plan kept, taken back first
        // (`--run`), are not held: the newer run changed them after it,
        // not an application, and its undo puts back what it overwrote.
        let newer = match self.run_at {
            true => format!(" AND (run_at IS NULL OR run_at >= ?{})", first + 2),
            false => String::new(),
        };
        match self.since {
            Some(_) => format!(
                "({runs} OR (plan = ?{} AND at >= ?{}{newer}))",
                first + 1,
                first + 2
            ),
            None => runs,
        }
    }

    fn params(&self) -> Vec<&dyn rusqlite::ToSql> {
        match &self.since {
            Some(since) => vec![&self.runs, &self.plan, since],
            None => vec![&self.runs],
        }
    }
}

/// Whether the record table has the checksum column (a table made by a
/// batchsse from before it has not, until a run with `--undo` adds it).
fn has_checksums(conn: &Connection) -> rusqlite::Result<bool> {
    crate::run::db::has_column(conn, "batchsse_undo", "rec_hash")
}

/// The checksum written with part `chunk` of step `step`: of its record,
/// and of where it belongs, so a part moved to another place is found too.
pub fn checksum(step: i64, chunk: i64, rec: &[u8]) -> i64 {
    let seed = (step as u64).rotate_left(32) ^ chunk as u64;
    super::hash::hash(seed, rec) as i64
}

/// Which part of the record: its row's id, and what the row says it is.
/// An id alone is not enough: SQLite gives a new row the highest id left
/// plus one, so once a part is taken (or cleared) another run's part can
/// come to have its id.
#[derive(Clone, Copy)]
pub struct Part<'r> {
    pub id: i64,
    pub run: &'r str,
    pub step: i64,
    pub chunk: i64,
}

/// Reads `part`'s record into `into` (a buffer reused from part to part):
/// `None` when the part is gone (another undo took it), `Some(false)` when
/// it holds no record (a step that changed nothing).
pub fn read_part(
    conn: &Connection,
    part: Part<'_>,
    into: &mut Vec<u8>,
) -> rusqlite::Result<Option<bool>> {
    read_kept(conn, part, into, None)
}

/// As [`read_part`], taking the part's bytes from `kept` (read by
/// [`damage`] a moment before) when it holds them: only whether the part
/// is still there is read again.
pub fn read_kept(
    conn: &Connection,
    part: Part<'_>,
    into: &mut Vec<u8>,
    kept: Option<&mut Kept>,
) -> rusqlite::Result<Option<bool>> {
    let id = part.id;
    let len: Option<Option<i64>> = conn
        .prepare_cached(
            "SELECT length(rec) FROM batchsse_undo
             WHERE id = ?1 AND run = ?2 AND step = ?3 AND chunk = ?4",
        )?
        .query_row(
            rusqlite::params![id, part.run, part.step, part.chunk],
            |r| r.get(0),
        )
        .optional()?;
    let Some(len) = len else { return Ok(None) };
    let Some(len) = len else {
        return Ok(Some(false));
    };
    if let Some(bytes) = kept.and_then(|k| k.parts.remove(&id))
        && i64::try_from(bytes.len()) == Ok(len)
    {
        *into = bytes;
        return Ok(Some(true));
    }
    let len = usize::try_from(len).unwrap_or_default();
    into.clear();
    into.reserve(len);
    // Straight into the buffer, not zeroed first: no copy of the whole
    // part made on the way, and no pass over it before the read (a part
    // read before the undo starts is new memory, which zeroing faulted in).
    let blob = conn.blob_open(rusqlite::MAIN_DB, "batchsse_undo", "rec", id, true)?;
    let read = blob.raw_read_at_exact(&mut into.spare_capacity_mut()[..len], 0)?;
    let read = read.len();
    // SAFETY: the read succeeded, so the first `read` (= `len`) bytes are set.
    unsafe { into.set_len(read) };
    Ok(Some(true))
}

/// An error of the undo record, as SQLite's errors are carried.
pub fn failure(why: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
        Some(why),
    )
}

/// Whether `e` says the record's table is not there (dropped by `undo
/// clear` since it was made).
pub fn is_missing(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(_, Some(m)) if says_missing(m))
}

/// Whether SQLite's message `m` says a table of the record is not there
/// (`batchsse_undo`, or `batchsse_undo_conflict`, whose name begins so).
pub fn says_missing(m: &str) -> bool {
    m.contains(&format!("no such table: {CHUNKS}"))
}

/// Whether the record is there without [`CONFLICTS`] beside it: that
/// table dropped by hand, and with it the rows earlier undos kept.
pub fn conflicts_gone(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(exists(conn)? && !table_exists(conn, CONFLICTS)?)
}

pub fn exists(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [CHUNKS],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
}

/// How much of the record [`damage`] keeps in memory for the undo, so
/// that a record of up to this size is read once, not twice.
const KEPT_BYTES: usize = 64 << 20;

/// Parts [`damage`] read and checked, by id, up to [`KEPT_BYTES`].
#[derive(Default)]
pub struct Kept {
    parts: std::collections::HashMap<i64, Vec<u8>>,
    bytes: usize,
    /// The parts read whose flags say they hold no delete (see
    /// [`super::codec::NO_DELETES`]), kept or not.
    no_deletes: std::collections::HashSet<i64>,
}

impl Kept {
    /// Whether [`damage`] found that part `id` holds no delete: an undo
    /// need not read it again to know that no row it takes back is
    /// deleted there.
    pub fn holds_no_delete(&self, id: i64) -> bool {
        self.no_deletes.contains(&id)
    }
}

/// What is wrong with `run`'s record, if it was altered since it was
/// written: a part of another type or length than noted, a note with a
/// record, a step whose parts are not numbered 0, 1, 2… (the run numbers
/// them so, and an undo takes the highest first), or fewer than its count
/// of parts says (its newest removed), or a part whose record does not
/// match its checksum. Taking such a record back would leave rows out, or
/// put wrong values back, while saying all went well. Reads every part
/// once, keeping what fits in `kept`; writes nothing.
pub fn damage(conn: &Connection, run: &str, kept: &mut Kept) -> rusqlite::Result<Option<String>> {
    let summed = has_checksums(conn)?;
    // A table without the column holds only records of an older batchsse.
    let sum = if summed { "rec_hash" } else { "NULL" };
    if let Some(why) = bad_row(conn, run, sum)? {
        return Ok(Some(why));
    }
    if let Some(why) = bad_step(conn, run, sum)? {
        return Ok(Some(why));
    }
    match summed {
        true => bad_checksum(conn, run, kept),
        false => Ok(None),
    }
}

/// The newest step of `run` that ran unrecorded (`"undo": false`), where
/// an undo of it stops: its index, its name, and whether recorded parts
/// follow it (what an undo can take back).
pub fn stop_of(conn: &Connection, run: &str) -> rusqlite::Result<Option<(i64, String, bool)>> {
    conn.query_row(
        "SELECT step, name, EXISTS (SELECT 1 FROM batchsse_undo AS a
                 WHERE a.run = u.run AND a.id > u.id AND a.chunk >= 0)
         FROM batchsse_undo AS u WHERE run = ?1 AND chunk = ?2 ORDER BY id DESC LIMIT 1",
        rusqlite::params![run, UNRECORDED],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()
}

/// What is wrong with `run`'s record as an undo would first find it, by
/// its rows alone (no record is read): a part cleared while the run was
/// recording, say.
pub fn incomplete(conn: &Connection, run: &str) -> rusqlite::Result<Option<String>> {
    let sum = if has_checksums(conn)? {
        "rec_hash"
    } else {
        "NULL"
    };
    match bad_row(conn, run, sum)? {
        Some(why) => Ok(Some(why)),
        None => bad_step(conn, run, sum),
    }
}

/// The first row of `run` that no batchsse writes as it is.
fn bad_row(conn: &Connection, run: &str, sum: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        &format!(
            "SELECT 'row ' || id || ' of batchsse_undo: ' || why FROM (SELECT id, CASE
                 WHEN typeof(step) <> 'integer' OR typeof(chunk) <> 'integer'
                     OR typeof(rows) <> 'integer' OR typeof(bytes) <> 'integer'
                     OR typeof({sum}) NOT IN ('integer', 'null')
                     THEN 'its step, part, rows, bytes or checksum is not a whole number'
                 WHEN chunk < ?2 THEN 'its part number is ' || chunk
                 WHEN chunk >= 0 AND typeof(rec) <> 'blob' THEN 'its record is ' || typeof(rec)
                 WHEN chunk >= 0 AND length(rec) <> bytes
                     THEN 'its record is ' || length(rec) || ' bytes, but ' || bytes || ' were written'
                 WHEN chunk < 0 AND rec IS NOT NULL THEN 'a note of a step holds a record'
                 END AS why
             FROM batchsse_undo WHERE run = ?1) WHERE why IS NOT NULL LIMIT 1"
        ),
        rusqlite::params![run, PARTS.min(NOTHING).min(UNRECORDED)],
        |r| r.get(0),
    )
    .optional()
}

/// The first step of `run` whose parts are not the ones it wrote: not
/// numbered 0, 1, 2…, or not as many as its count of parts says. A
/// step's parts all carry a checksum exactly when it has a count (an
/// older batchsse wrote neither); a step killed in the middle has as many
/// as the count, which was kept in the transaction of each of them.
fn bad_step(conn: &Connection, run: &str, sum: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        &format!(
            "SELECT CASE
                 WHEN held > 0 AND lo > 0 AND hi = lo + held - 1 AND numbers = held
                     THEN 'step ' || (step + 1) || ': its first ' || lo || ' part(s) are gone, '
                         || held || ' left (numbered ' || (lo + 1) || ' to ' || (hi + 1)
                         || '), as when `batchsse undo clear` ran while the run was still recording'
                 WHEN held > 0 AND (lo <> 0 OR hi <> held - 1 OR numbers <> held)
                     THEN 'step ' || (step + 1) || ': ' || held || ' part(s) numbered ' || (lo + 1) || ' to ' || (hi + 1)
                 WHEN counts = 1 AND held = 0 AND counted > 0
                     THEN 'step ' || (step + 1) || ': its ' || counted || ' part(s) are gone, as when `batchsse undo clear` ran while the run was still recording'
                 WHEN counts > 1 THEN 'step ' || (step + 1) || ': ' || counts || ' rows count its parts'
                 WHEN counts = 1 AND counted IS NOT held
                     THEN 'row ' || count_id || ' of batchsse_undo counts ' || counted || ' part(s) of step '
                         || (step + 1) || ', but ' || held || CASE WHEN held < counted
                             THEN ' are left: the newest were removed' ELSE ' are there: parts were added' END
                 WHEN counts = 1 AND unsummed IS NOT NULL
                     THEN 'row ' || unsummed || ' of batchsse_undo: its checksum is gone'
                 WHEN counts = 0 AND summed > 0
                     THEN 'step ' || (step + 1) || ': the row that counts its parts is gone'
                 END AS why
             FROM (SELECT step,
                     count(*) FILTER (WHERE chunk >= 0) AS held,
                     min(chunk) FILTER (WHERE chunk >= 0) AS lo,
                     max(chunk) FILTER (WHERE chunk >= 0) AS hi,
                     count(DISTINCT CASE WHEN chunk >= 0 THEN chunk END) AS numbers,
                     count(*) FILTER (WHERE chunk = ?2) AS counts,
                     max(rows) FILTER (WHERE chunk = ?2) AS counted,
                     max(id) FILTER (WHERE chunk = ?2) AS count_id,
                     min(id) FILTER (WHERE chunk >= 0 AND {sum} IS NULL) AS unsummed,
                     count({sum}) FILTER (WHERE chunk >= 0) AS summed
                   FROM batchsse_undo WHERE run = ?1 GROUP BY step)
             WHERE why IS NOT NULL LIMIT 1"
        ),
        rusqlite::params![run, PARTS],
        |r| r.get(0),
    )
    .optional()
}

/// The first part of `run` whose record does not match its checksum.
/// Parts written by a batchsse from before the checksum have none and are
/// not checked (`bad_step` refuses one missing from a part of this one).
fn bad_checksum(conn: &Connection, run: &str, kept: &mut Kept) -> rusqlite::Result<Option<String>> {
    let mut stmt = conn.prepare(
        "SELECT id, step, chunk, rec_hash FROM batchsse_undo
         WHERE run = ?1 AND chunk >= 0 AND rec_hash IS NOT NULL ORDER BY id",
    )?;
    let mut rows = stmt.query([run])?;
    let mut rec = Vec::new();
    while let Some(row) = rows.next()? {
        let (id, step, chunk, sum): (i64, i64, i64, i64) =
            (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
        if !read_record(conn, run, (id, step, chunk), &mut rec)? {
            continue;
        }
        if checksum(step, chunk, &rec) != sum {
            return Ok(Some(format!(
                "row {id} of batchsse_undo: its record does not match the checksum written with it"
            )));
        }
        if !super::codec::may_delete(&rec) {
            kept.no_deletes.insert(id);
        }
        if kept.bytes + rec.len() <= KEPT_BYTES {
            kept.bytes += rec.len();
            kept.parts.insert(id, std::mem::take(&mut rec));
        }
    }
    Ok(None)
}

/// Reads into `rec` the record of `run`'s part `id` (step and chunk as
/// its row says): whether there was one (a step that changed nothing has
/// none, and a part gone since was taken by an undo).
fn read_record(
    conn: &Connection,
    run: &str,
    (id, step, chunk): (i64, i64, i64),
    rec: &mut Vec<u8>,
) -> rusqlite::Result<bool> {
    let part = Part {
        id,
        run,
        step,
        chunk,
    };
    Ok(read_part(conn, part, rec)? == Some(true))
}

/// A run with undo records, as `undo list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub run: String,
    pub plan: String,
    pub chunks: u64,
    pub rows: u64,
    pub bytes: u64,
    /// When its first and last chunk were recorded (UTC, ISO 8601).
    pub first_at: String,
    pub last_at: String,
}

/// What to do with undo tables altered by hand, which `undo clear` must
/// read before it removes them. A table of the user's that has the name
/// cannot be told from one of batchsse's altered by hand, and dropping it
/// would lose the user's rows: `undo` and `run --undo` say to rename it.
const DROP_BY_HAND: &str = "if batchsse made them, drop them in the sqlite3 shell: DROP TABLE batchsse_undo; DROP TABLE batchsse_undo_conflict; `undo clear` must read them first; if one is a table of yours, give it another name instead";

/// The refusal when the record cannot be read (`e`).
pub fn unreadable(conn: &Connection, e: &rusqlite::Error) -> UsageError {
    crate::run::db::unreadable(conn, CHUNKS, e, DROP_BY_HAND)
}

/// Every run with records, oldest first.
pub fn runs(conn: &Connection) -> Result<Vec<RunRecord>, UsageError> {
    if !exists(conn).map_err(|e| UsageError::new(sqlite_message(&e)))? {
        return Ok(Vec::new());
    }
    let read = || -> rusqlite::Result<Vec<RunRecord>> {
        let mut stmt = conn.prepare(
            "SELECT run, plan, count(*) FILTER (WHERE chunk >= 0), total(rows) FILTER (WHERE chunk >= 0), total(bytes), min(created_at), max(created_at)
             FROM batchsse_undo GROUP BY run ORDER BY min(id)",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RunRecord {
                run: r.get(0)?,
                plan: r.get(1)?,
                chunks: r.get::<_, i64>(2)?.max(0) as u64,
                rows: r.get::<_, f64>(3)?.max(0.0) as u64,
                bytes: r.get::<_, f64>(4)?.max(0.0) as u64,
                first_at: r.get(5)?,
                last_at: r.get(6)?,
            })
        })?;
        rows.collect()
    };
    read().map_err(|e| unreadable(conn, &e))
}

/// A run taken back whole whose undo kept conflicts: they stay in
/// `batchsse_undo_conflict` as its report, with no record left beside them.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptConflicts {
    pub run: String,
    pub conflicts: u64,
    /// When the last of them was kept (UTC, ISO 8601).
    pub last_at: String,
}

/// Of the rows kept so far that an undo of `scope` holds (by earlier
/// tries of it, or an undo of a newer run of its plan), those whose reason
/// begins with `why` (every one for `""`).
pub fn kept_why(conn: &Connection, scope: &Scope, why: &str) -> rusqlite::Result<u64> {
    kept_up_to(conn, scope, why, i64::MAX)
}

/// The rows an undo of an older run of `scope`'s plan kept after `scope`'s
/// oldest run was recorded (that run had changed them since, so the older
/// undo left them) that this undo did not keep itself, by older run: their
/// undo here put back what the older run wrote (see [`Scope::holds`]), so
/// they carry its change, and no record is left to take it back. Empty
/// where the conflict table cannot tell (no `plan` or `run_at`).
pub fn left_by_older(conn: &Connection, scope: &Scope) -> rusqlite::Result<Vec<(String, u64)>> {
    let Some(since) = scope.since.as_ref().filter(|_| scope.run_at) else {
        return Ok(Vec::new());
    };
    let mut params = scope.params();
    params.extend([&scope.plan as &dyn rusqlite::ToSql, since, &scope.runs]);
    conn.prepare(&left_by_older_sql(scope))?
        .query_map(params.as_slice(), |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?
        .collect()
}

/// [`left_by_older`]'s query: each row kept by an older undo is looked up
/// among those `scope` holds by its table and key (through
/// [`CONFLICTS_BY_ROW`]).
fn left_by_older_sql(scope: &Scope) -> String {
    format!(
        "SELECT o.run, count(*) FROM batchsse_undo_conflict o
         WHERE o.plan = ?4 AND o.run_at < ?5 AND o.at >= ?5
           AND o.run NOT IN (SELECT value FROM json_each(?6))
           AND NOT EXISTS (SELECT 1 FROM batchsse_undo_conflict
                           WHERE tbl = o.tbl AND k IS o.k AND rowid <> o.rowid AND {})
         GROUP BY o.run ORDER BY min(o.run_at)",
        scope.holds(1)
    )
}

/// [`kept_why`], of the rows of `batchsse_undo_conflict` up to rowid
/// `upto` ([`last_kept`] as an undo began: those kept before it that are
/// still kept, since an undo under `overwrite` may put them back).
pub fn kept_up_to(conn: &Connection, scope: &Scope, why: &str, upto: i64) -> rusqlite::Result<u64> {
    let sql = format!(
        "SELECT count(*) FROM batchsse_undo_conflict WHERE substr(why, 1, length(?1)) = ?1 AND rowid <= ?2 AND {}",
        scope.holds(3)
    );
    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&why, &upto];
    params.extend(scope.params());
    let n: i64 = conn.query_row(&sql, params.as_slice(), |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// How many rows `batchsse_undo_conflict` holds (every page of the table
/// read: `NOT INDEXED`, or SQLite counts the smaller index instead).
pub fn count_kept(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT count(*) FROM batchsse_undo_conflict NOT INDEXED",
        [],
        |r| r.get(0),
    )
}

/// The last row of `batchsse_undo_conflict` (0 with none).
pub fn last_kept(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT ifnull(max(rowid), 0) FROM batchsse_undo_conflict",
        [],
        |r| r.get(0),
    )
}

/// Adds a row kept by an undo (`[run, table, why, plan]` and the key)
/// whose try began with [`last_kept`] at `mark`, numbered above it: SQLite
/// numbers a row the highest plus one, so once an `overwrite` has removed
/// the highest rows kept before the try ([`forget_kept`]), a row it keeps
/// would take one of their numbers, and [`kept_up_to`] would count it
/// among those kept before. `mark` is also past every row the undo has
/// read or kept: another undo of the same runs at work beside it reads
/// the rows past the last it read, and one that had read past a number
/// an `overwrite` freed would never read the row given it again (and
/// keep that row a second time).
pub fn keep(
    conn: &Connection,
    [run, table, why, plan]: [&str; 4],
    key: &super::codec::Val,
    (mark, run_at): (i64, Option<&str>),
) -> rusqlite::Result<()> {
    // `run_at` bound, not read by a subquery here: one that picks the
    // first part (`ORDER BY id`) had SQLite plan this statement anew for
    // every row kept, about a quarter of an undo that keeps many. And the
    // number in a subquery of `VALUES`, not as `INSERT … SELECT … FROM`
    // this table, which SQLite runs through a temporary table of its own
    // (made and dropped for every row: a fifth of such an undo).
    let kept = conn
        .prepare_cached(KEEP)?
        .execute(rusqlite::params![run, table, key, why, plan, mark, run_at]);
    match kept {
        // The number past the largest rowid SQLite allows: a real, which
        // a rowid cannot be ("datatype mismatch").
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::TypeMismatch) => {
            Err(failure(no_room(last_kept(conn)?.max(mark), 0)))
        }
        kept => kept.map(drop),
    }
}

/// The rows an undo of `runs` may keep at most: one for each row its
/// record holds (a float sum: `rows` is the record's word, not checked).
pub fn rows_recorded(conn: &Connection, runs: &[String]) -> rusqlite::Result<i64> {
    let runs = serde_json::to_string(runs).unwrap_or_else(|_| "[]".into());
    let rows: f64 = conn.query_row(
        "SELECT total(max(rows, 0)) FROM batchsse_undo
         WHERE run IN (SELECT value FROM json_each(?1)) AND chunk >= 0",
        [runs],
        |r| r.get(0),
    )?;
    Ok(rows as i64) // saturating
}

/// Whether an undo that may keep `need` rows has no room to number them
/// past the last row of `batchsse_undo_conflict` (only a row numbered by
/// hand comes so near the largest rowid SQLite allows): then why, and
/// what to do.
pub fn no_room_for(conn: &Connection, need: i64) -> rusqlite::Result<Option<String>> {
    let last = last_kept(conn)?;
    Ok(last
        .checked_add(need.max(1))
        .is_none()
        .then(|| no_room(last, need)))
}

/// Why the rows an undo keeps cannot be numbered past `last`, the last
/// row of `batchsse_undo_conflict` (with `need` rows to keep, 0 if not
/// known), and how to renumber the rows numbered by hand past the limit.
fn no_room(last: i64, need: i64) -> String {
    let limit = i64::MAX - need.max(1);
    format!(
        "the table {CONFLICTS} has a row numbered {last}, too near the largest rowid SQLite allows ({}) for the rows an undo keeps to be numbered after it, as they must be (an undo tells the rows it keeps from those kept before by their numbers). SQLite never numbers a row so: it was written by hand. Renumber the rows past {limit} after the others, when no undo of the file is going, with this statement in the sqlite3 shell, then run the undo again: UPDATE {CONFLICTS} AS c SET rowid = ifnull((SELECT max(rowid) FROM {CONFLICTS} WHERE rowid <= {limit}), 0) + r.n FROM (SELECT rowid AS old, row_number() OVER (ORDER BY rowid) AS n FROM {CONFLICTS} WHERE rowid > {limit}) AS r WHERE c.rowid = r.old",
        i64::MAX
    )
}

/// [`keep`]'s statement.
const KEEP: &str = "INSERT INTO batchsse_undo_conflict (rowid, run, tbl, k, why, plan, run_at)
     VALUES ((SELECT max(ifnull(max(rowid), 0), ?6) + 1 FROM batchsse_undo_conflict),
             ?1, ?2, ?3, ?4, ?5, ?7)";

/// Each of `runs` (a JSON array) with its first part's `created_at`.
fn first_parts(conn: &Connection, runs: &str) -> rusqlite::Result<HashMap<String, String>> {
    conn.prepare(
        "SELECT run, created_at FROM batchsse_undo WHERE id IN (
           SELECT min(id) FROM batchsse_undo
           WHERE run IN (SELECT value FROM json_each(?1)) GROUP BY run)",
    )?
    .query_map([runs], |r| Ok((r.get(0)?, r.get(1)?)))?
    .collect()
}

/// A row of `batchsse_undo_conflict`: its rowid, table, key, and whether
/// why it was kept begins with one of the reasons asked about.
pub type KeptRow = (i64, String, super::codec::Val, bool);

/// The rows kept with a rowid in `after..=upto` that an undo of `scope`
/// holds; of each, whether it was kept for one of the reasons `whys`
/// (their beginnings: a reason edited by hand, not UTF-8, is none).
pub fn kept_rows(
    conn: &Connection,
    scope: &Scope,
    (after, upto): (i64, i64),
    whys: &[&str],
) -> rusqlite::Result<Vec<KeptRow>> {
    let sql = format!(
        "SELECT rowid, tbl, k, why FROM batchsse_undo_conflict WHERE rowid > ?1 AND rowid <= ?2 AND {}",
        scope.holds(3)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&after, &upto];
    params.extend(scope.params());
    // The key as SQLite holds it: text that is not UTF-8 too.
    let rows = stmt.query_map(params.as_slice(), |r| {
        let why = r.get_ref(3)?.as_bytes().unwrap_or_default();
        let asked = whys.iter().any(|w| why.starts_with(w.as_bytes()));
        Ok((r.get(0)?, r.get(1)?, r.get_ref(2)?.into(), asked))
    })?;
    rows.collect()
}

/// The rows kept with a rowid in `after..=upto` by an undo of a run of
/// another plan than `scope`'s, taken back after `scope`'s oldest run was
/// recorded, with when that run was recorded and when its undo kept them:
/// rows one of `scope`'s runs recorded after it may have changed since,
/// which that run's undo puts back to what the older run wrote (only a
/// plan's own older runs are named by [`left_by_older`]). Which of
/// `scope`'s runs that can be is told per run ([`OlderKept::carried_by`]):
/// with several, another plan's run may lie between them. Empty where the
/// conflict table cannot tell (no `plan` or `run_at`).
pub fn kept_for_older(
    conn: &Connection,
    scope: &Scope,
    (after, upto): (i64, i64),
    mut each: impl FnMut(OlderKept<'_>),
) -> rusqlite::Result<()> {
    let Some(since) = scope.since.as_ref().filter(|_| scope.run_at) else {
        return Ok(());
    };
    let mut stmt = conn.prepare_cached(
        "SELECT rowid, tbl, k, run_at, at, why FROM batchsse_undo_conflict
         WHERE rowid > ?1 AND rowid <= ?2 AND plan IS NOT NULL AND plan <> ?3
           AND run_at IS NOT NULL AND at >= ?4
           AND run NOT IN (SELECT value FROM json_each(?5)) AND instr(why, ?6) = 0",
    )?;
    // One put back already, by an earlier try (another of its runs):
    // counted once, for that run.
    let params = rusqlite::params![after, upto, scope.plan, since, scope.runs, MARK];
    let mut rows = stmt.query(params)?;
    while let Some(r) = rows.next()? {
        // Streamed, not collected: an older undo may have kept millions.
        each(OlderKept {
            rowid: r.get(0)?,
            table: r.get_ref(1)?.as_str()?,
            key: r.get_ref(2)?,
            run_at: r.get_ref(3)?.as_str()?,
            at: r.get_ref(4)?.as_str()?,
            // Bytes: a reason edited by hand need not be UTF-8.
            why: r.get_ref(5)?.as_bytes().unwrap_or_default(),
        });
    }
    Ok(())
}

/// A row of `batchsse_undo_conflict` from [`kept_for_older`]: its key,
/// kept by the undo of a run recorded at `run_at`, at `at`, for `why`.
pub struct OlderKept<'r> {
    pub rowid: i64,
    pub table: &'r str,
    pub key: rusqlite::types::ValueRef<'r>,
    pub why: &'r [u8],
    run_at: &'r str,
    at: &'r str,
}

impl OlderKept<'_> {
    /// Of `starts` (when the undo's runs began to be recorded, in order),
    /// the ones whose run's undo, putting the row back, gives it what the
    /// older run wrote: that run was recorded before it, and its undo
    /// kept the row after it began, so it changed the row on top of the
    /// older run's change (a run recorded after the older undo changed
    /// what that undo left, not the older run's value). A range, since
    /// both bounds are times. A run recorded in the same millisecond as
    /// the older one is among them: which began first cannot be told,
    /// but an undo that finds the row as its run left it, after the older
    /// undo found it changed, shows that its run changed it last.
    pub fn carried_by(&self, starts: &[String]) -> std::ops::Range<u32> {
        let from = starts.partition_point(|s| s.as_str() < self.run_at);
        let to = starts.partition_point(|s| s.as_str() <= self.at);
        let index = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
        index(from)..index(to.max(from))
    }
}

/// How each mark of [`mark_carried`] begins.
const MARK: &str = "; put back by the undo of run ";

/// How a mark ends: the oldest run of the undo that made it.
const DOWN_TO: &str = ", by an undo down to run ";

/// What an undo of `run` of `plan`, whose oldest run is `oldest`, adds to
/// the reason of a row an older run's undo kept when it puts the row back
/// ([`mark_carried`]): the part the command that lists them looks for,
/// and the whole, which names the plan and the undo's oldest run so that
/// the undo's end finds the marks of its runs an earlier try took back
/// whole, and those alone ([`carried`]). Run ids need no quoting in that
/// command.
fn carried_mark(run: &str, plan: &str, oldest: &str) -> (String, String) {
    let found = format!("{MARK}{run} ");
    let whole = format!(
        "{found}{}to what it held before that run{DOWN_TO}{oldest}",
        of_plan(plan)
    );
    (found, whole)
}

/// Whether a mark's rest (after its run) was made by a try of the undo of
/// `runs`: one down to one of them (an undo of the plan's newer run alone,
/// taken back before, is another undo, which said its rows itself). A
/// mark made before marks said so is taken to be.
fn marked_by_a_try_of(rest: &str, runs: &[String]) -> bool {
    let Some((_, oldest)) = rest.rsplit_once(DOWN_TO) else {
        return true;
    };
    let oldest = oldest.split([';', ' ']).next().unwrap_or_default();
    runs.iter().any(|r| r == oldest)
}

/// The part of a mark after its run that names its plan.
fn of_plan(plan: &str) -> String {
    let quoted = serde_json::to_string(plan).unwrap_or_default();
    format!("(plan {quoted}) ")
}

/// In the transaction of the part of `run` of `plan` that put them back,
/// in an undo whose oldest run is `oldest`: marks the rows `rowids`, kept
/// by an older run's undo ([`kept_for_older`]), as holding what that older
/// run wrote again, so an undo resumed after an interruption still counts
/// them at its end.
pub fn mark_carried(
    conn: &Connection,
    rowids: &[i64],
    (run, plan): (&str, &str),
    oldest: &str,
) -> rusqlite::Result<()> {
    if rowids.is_empty() {
        return Ok(());
    }
    let (found, whole) = carried_mark(run, plan, oldest);
    // One statement for the part's rows, not one for each.
    let rowids = serde_json::to_string(rowids).unwrap_or_else(|_| "[]".into());
    conn.prepare_cached(
        "UPDATE batchsse_undo_conflict SET why = why || ?2
         WHERE rowid IN (SELECT value FROM json_each(?1)) AND instr(why, ?3) = 0",
    )?
    .execute(rusqlite::params![rowids, whole, found])
    .map(drop)
}

/// Rows an older run's undo kept that an undo of one of `runs` put back
/// ([`mark_carried`]).
pub struct Carried {
    /// The older run, its plan, and the run of the undo that put them back.
    pub older: String,
    pub plan: String,
    pub by: String,
    pub rows: u64,
    /// The condition in SQL that picks them out of the conflict table.
    pub which: String,
}

/// The rows marked by [`mark_carried`] for each of `runs`, and for runs of
/// `scope`'s plan on rows kept since its oldest run was recorded (runs an
/// earlier try of this undo took back whole: no longer among `runs`), by
/// older run and run, in the order they were kept. One scan of the rows
/// marked, however many runs.
pub fn carried(
    conn: &Connection,
    scope: &Scope,
    runs: &[String],
) -> rusqlite::Result<Vec<Carried>> {
    let ours = of_plan(&scope.plan);
    let mut stmt = conn.prepare(
        "SELECT run, plan, why, at FROM batchsse_undo_conflict
         WHERE instr(why, ?1) > 0 ORDER BY rowid",
    )?;
    let mut rows = stmt.query([MARK])?;
    let mut all: Vec<Carried> = Vec::new();
    while let Some(r) = rows.next()? {
        let (older, why, at): (String, String, String) = (r.get(0)?, r.get(2)?, r.get(3)?);
        let since = scope.since.as_deref().is_some_and(|s| at.as_str() >= s);
        for mark in why.split(MARK).skip(1) {
            let Some((by, rest)) = mark.split_once(' ') else {
                continue;
            };
            let of_ours = since && rest.starts_with(&ours) && marked_by_a_try_of(rest, runs);
            if !of_ours && !runs.iter().any(|r| r == by) {
                continue;
            }
            match all.iter_mut().find(|c| c.older == older && c.by == by) {
                Some(c) => c.rows += 1,
                None => all.push(Carried {
                    which: format!(
                        "run = '{}' AND instr(why, '{MARK}{by} ') > 0",
                        older.replace('\'', "''")
                    ),
                    older: older.clone(),
                    plan: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    by: by.to_owned(),
                    rows: 1,
                }),
            }
        }
    }
    Ok(all)
}

/// Removes the row `rowid` of `batchsse_undo_conflict`: a row an earlier
/// try kept that an undo under `overwrite` has put back after all.
pub fn forget_kept(conn: &Connection, rowid: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM batchsse_undo_conflict WHERE rowid = ?1")?
        .execute([rowid])
        .map(drop)
}

/// Every run with conflicts kept but no record left, oldest first.
pub fn kept_conflicts(conn: &Connection) -> Result<Vec<KeptConflicts>, UsageError> {
    let read = || -> rusqlite::Result<Vec<KeptConflicts>> {
        // Both tables, though they come and go together: one dropped by
        // hand must not keep `undo list` from showing the other.
        let both: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'
             AND name IN ('batchsse_undo', 'batchsse_undo_conflict')",
            [],
            |r| r.get(0),
        )?;
        if both < 2 {
            return Ok(Vec::new());
        }
        conn.prepare(
            "SELECT run, count(*), max(at) FROM batchsse_undo_conflict AS c
             WHERE NOT EXISTS (SELECT 1 FROM batchsse_undo AS u WHERE u.run = c.run)
             GROUP BY run ORDER BY min(rowid)",
        )?
        .query_map([], |r| {
            Ok(KeptConflicts {
                run: r.get(0)?,
                conflicts: r.get::<_, i64>(1)?.max(0) as u64,
                last_at: r.get(2)?,
            })
        })?
        .collect()
    };
    read().map_err(|e| crate::run::db::unreadable(conn, CONFLICTS, &e, DROP_BY_HAND))
}

/// Removes a run's records and the conflicts its undos kept; returns the
/// record's rows removed. Inside the caller's transaction.
pub fn remove_run(conn: &Connection, run: &str) -> rusqlite::Result<usize> {
    let removed = conn.execute("DELETE FROM batchsse_undo WHERE run = ?1", [run])?;
    // Dropped by hand, it must not keep the record from being removed.
    if table_exists(conn, CONFLICTS)? {
        conn.execute("DELETE FROM batchsse_undo_conflict WHERE run = ?1", [run])?;
    }
    for probe in [PROBE, COPY_PROBE, super::stash::TABLE] {
        conn.execute(&format!("DELETE FROM {probe} WHERE run = ?1"), [run])
            .or_else(|e| if is_missing(&e) { Ok(0) } else { Err(e) })?;
    }
    Ok(removed)
}

/// The runs recorded for a plan, newest first.
pub fn runs_of_plan(conn: &Connection, plan: &str) -> rusqlite::Result<Vec<String>> {
    if !exists(conn)? {
        return Ok(Vec::new());
    }
    conn.prepare(
        "SELECT run FROM batchsse_undo WHERE plan = ?1 GROUP BY run ORDER BY max(id) DESC",
    )?
    .query_map([plan], |r| r.get(0))?
    .collect()
}

/// Drops the tables if they hold no record and no kept conflict, the
/// look and the drop in one transaction of its own: a record another
/// process commits in between would go with them.
pub fn drop_empty(conn: &Connection) -> rusqlite::Result<()> {
    if !exists(conn)? {
        return Ok(());
    }
    let tx = crate::run::tx::Tx::begin(conn, false)?;
    if drop_if_empty(conn)? {
        tx.commit()?;
    }
    Ok(())
}

/// Drops the tables when no record is left (inside the caller's
/// transaction); returns whether it did.
pub fn drop_if_empty(conn: &Connection) -> rusqlite::Result<bool> {
    if !exists(conn)? {
        return Ok(false);
    }
    let left: i64 = conn.query_row("SELECT count(*) FROM batchsse_undo", [], |r| r.get(0))?;
    let conflicts: i64 = match table_exists(conn, CONFLICTS)? {
        true => conn.query_row("SELECT count(*) FROM batchsse_undo_conflict", [], |r| {
            r.get(0)
        })?,
        false => 0,
    };
    if left > 0 || conflicts > 0 {
        return Ok(false);
    }
    // `batchsse_undo_row`: the tables of the format before the first release.
    conn.execute_batch(
        "DROP TABLE batchsse_undo; DROP TABLE IF EXISTS batchsse_undo_conflict;
         DROP TABLE IF EXISTS batchsse_undo_probe; DROP TABLE IF EXISTS batchsse_undo_copy;
         DROP TABLE IF EXISTS batchsse_undo_stash; DROP TABLE IF EXISTS batchsse_undo_row",
    )?;
    Ok(true)
}

/// The refusal of `undo clear` when the tables it must read or write
/// cannot be: nothing was removed.
pub fn not_cleared(conn: &Connection, e: &rusqlite::Error) -> UsageError {
    UsageError::new(format!(
        "cannot clear the undo records: {}; nothing was removed",
        crate::run::db::run_time_message(conn, e)
    ))
}

/// Removes the records of the runs `choose` picks (every run's, tables
/// and all, with `all`), in one transaction begun before `choose` reads
/// what to pick: no run or undo can commit in between and change what it
/// picked from (a step an undo marks as taken back in part, say). Returns
/// what `choose` returned beside the runs, and whether the tables were
/// dropped; nothing is removed when `choose` refuses.
pub fn clear<T>(
    conn: &Connection,
    all: bool,
    choose: impl FnOnce() -> Result<(Vec<String>, T), UsageError>,
) -> Result<(T, bool), UsageError> {
    let failed = |e: rusqlite::Error| not_cleared(conn, &e);
    if !exists(conn).map_err(failed)? {
        return choose().map(|(_, t)| (t, false));
    }
    let tx = crate::run::tx::Tx::begin(conn, false).map_err(failed)?;
    let (runs, t) = choose()?;
    let go = || -> rusqlite::Result<bool> {
        for run in &runs {
            remove_run(conn, run)?;
        }
        if all && table_exists(conn, CONFLICTS)? {
            conn.execute_batch("DELETE FROM batchsse_undo_conflict")?;
        }
        let dropped = drop_if_empty(conn)?;
        tx.commit()?;
        Ok(dropped)
    };
    let dropped = go().map_err(failed)?;
    Ok((t, dropped))
}

/// Two runs whose records hold the same step of their plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Shared {
    pub run: String,
    pub other: String,
    pub plan: String,
    pub step: i64,
}

/// Every two runs whose records hold the same step of their plan (each
/// pair both ways round), by run, step and other run. An undo takes a
/// step's record for all the step holds: once it has taken back the last
/// of it, the step's checkpoint goes. So the record of one of two such
/// runs must not go alone: the other's would then pass for the whole of
/// the step, and the plan's next run would apply the first one's change
/// a second time.
pub fn shared_steps(conn: &Connection) -> rusqlite::Result<Vec<Shared>> {
    if !exists(conn)? {
        return Ok(Vec::new());
    }
    conn.prepare(
        "WITH s AS (SELECT DISTINCT run, plan, step FROM batchsse_undo)
         SELECT a.run, b.run, a.plan, a.step FROM s AS a JOIN s AS b
             ON b.plan = a.plan AND b.step = a.step AND b.run <> a.run
         ORDER BY a.run, a.step, b.run",
    )?
    .query_map([], |r| {
        Ok(Shared {
            run: r.get(0)?,
            other: r.get(1)?,
            plan: r.get(2)?,
            step: r.get(3)?,
        })
    })?
    .collect()
}

/// In the transaction of an undo that took back part `chunk` of a step
/// whose count of parts is row `count`: the parts left are 0 to
/// `chunk` - 1, and the count goes with the last of them. (`part` names
/// the run and step, so another run's row of the same id is left alone.)
pub fn part_taken(conn: &Connection, count: i64, part: Part<'_>) -> rusqlite::Result<()> {
    let sql = match part.chunk {
        0 => "DELETE FROM batchsse_undo WHERE id = ?1 AND chunk = ?3 AND run = ?4 AND step = ?5",
        _ => {
            "UPDATE batchsse_undo SET rows = ?2 WHERE id = ?1 AND chunk = ?3 AND run = ?4 AND step = ?5"
        }
    };
    conn.prepare_cached(sql)?.execute(rusqlite::params![
        count, part.chunk, PARTS, part.run, part.step
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mark names the oldest run of the undo that made it: a try of an
    /// undo down to one of `runs` made it, another undo did not; a mark
    /// written before marks named it counts as before.
    #[test]
    fn a_mark_is_a_try_s_when_its_undo_went_down_to_one_of_the_runs() {
        let runs = ["b1".to_owned()];
        let rest = |oldest: &str| {
            let (found, whole) = carried_mark("b2", "ten", oldest);
            whole[found.len()..].to_owned()
        };
        assert!(marked_by_a_try_of(&rest("b1"), &runs));
        assert!(!marked_by_a_try_of(&rest("b2"), &runs));
        assert!(!marked_by_a_try_of(&rest("b10"), &runs));
        let before = "(plan \"ten\") to what it held before that run";
        assert!(marked_by_a_try_of(before, &runs));
    }

    /// A row kept goes in without a temporary table of SQLite's: `INSERT
    /// … SELECT` from the table it writes made one and dropped it for
    /// every row (a fifth of an undo that keeps a million).
    #[test]
    fn a_row_kept_is_written_without_a_temporary_table() {
        let conn = Connection::open_in_memory().unwrap();
        create(&conn).unwrap();
        let ops: Vec<String> = conn
            .prepare(&format!("EXPLAIN {KEEP}"))
            .unwrap()
            .query_map(rusqlite::params_from_iter([None::<i64>; 7]), |r| r.get(1))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(ops.iter().any(|o| o == "Insert"), "{ops:?}");
        assert!(!ops.iter().any(|o| o == "OpenEphemeral"), "{ops:?}");
    }

    /// Removing a run takes its conflicts with it: with nothing left, the
    /// tables can go (`checkpoint clear` removes runs this way).
    #[test]
    fn a_removed_run_leaves_no_conflicts_behind() {
        let conn = Connection::open_in_memory().unwrap();
        create(&conn).unwrap();
        conn.execute_batch(
            "INSERT INTO batchsse_undo (run, plan, step, name, chunk, rows, bytes) VALUES ('r', 'p', 0, 's', -2, 0, 0);
             INSERT INTO batchsse_undo_conflict (run, tbl, k, why) VALUES ('r', 't', 1, 'x'), ('q', 't', 2, 'y');",
        )
        .unwrap();
        assert_eq!(remove_run(&conn, "r").unwrap(), 1);
        assert!(!drop_if_empty(&conn).unwrap(), "run q's conflict stays");
        remove_run(&conn, "q").unwrap();
        assert!(drop_if_empty(&conn).unwrap());
    }

    /// An undo holds the rows kept for its runs, and those kept for its
    /// plan since its oldest run was recorded (not those of an earlier
    /// round of the plan, nor another plan's); a conflict table from
    /// before the `plan` column is read by run alone until it gets it.
    #[test]
    fn an_undo_holds_its_runs_rows_and_its_plans_since_its_oldest_run() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&CREATE.replace(",\n    plan TEXT,\n    run_at TEXT\n", "\n"))
            .unwrap();
        let t = |s: &str| format!("'2026-01-0{s}T00:00:00.000Z'");
        conn.execute_batch(&format!(
            "INSERT INTO batchsse_undo (run, plan, step, name, chunk, rows, bytes, created_at)
               VALUES ('r1', 'p', 0, 's', -2, 0, 0, {});
             INSERT INTO batchsse_undo_conflict (run, tbl, k, why, at) VALUES
               ('r1', 't', 1, 'x', {}), ('r2', 't', 2, 'y: x', {}), ('r0', 't', 3, 'y', {})",
            t("5"),
            t("6"),
            t("7"),
            t("1")
        ))
        .unwrap();
        assert!(!conflicts_have_plan(&conn).unwrap());
        let runs = ["r1".to_owned()];
        let old = Scope::of(&conn, &runs, "p");
        assert_eq!(kept_why(&conn, &old, "").unwrap(), 1, "by run alone");
        complete_conflicts(&conn).unwrap();
        complete_conflicts(&conn).unwrap();
        conn.execute_batch(
            "UPDATE batchsse_undo_conflict SET plan = 'p';
             INSERT INTO batchsse_undo_conflict (run, tbl, k, why, at, plan)
               VALUES ('q', 't', 4, 'x', '2026-01-08T00:00:00.000Z', 'other')",
        )
        .unwrap();
        let scope = Scope::of(&conn, &runs, "p");
        assert_eq!(kept_why(&conn, &scope, "").unwrap(), 2, "r1's and r2's");
        assert_eq!(kept_why(&conn, &scope, "y").unwrap(), 1, "r2's alone");
        assert_eq!(kept_why(&conn, &scope, "y: xx").unwrap(), 0);
        let rows = kept_rows(&conn, &scope, (0, 10), &[]).unwrap();
        let keys: Vec<_> = rows.iter().map(|(_, _, k, _)| k.clone()).collect();
        use super::super::codec::Val::Integer;
        assert_eq!(keys, [Integer(1), Integer(2)]);
        assert_eq!(kept_rows(&conn, &scope, (1, 10), &[]).unwrap().len(), 1);
        // Kept by an undo of an older run of the plan (taken back first,
        // by `--run`): not held; by one of a newer run: held.
        conn.execute_batch(&format!(
            "INSERT INTO batchsse_undo_conflict (run, tbl, k, why, at, plan, run_at)
               VALUES ('r0', 't', 5, 'x', {}, 'p', {}), ('r3', 't', 6, 'x', {}, 'p', {})",
            t("7"),
            t("4"),
            t("8"),
            t("6")
        ))
        .unwrap();
        let scope = Scope::of(&conn, &runs, "p");
        let rows = kept_rows(&conn, &scope, (0, 10), &[]).unwrap();
        let keys: Vec<_> = rows.iter().map(|(_, _, k, _)| k.clone()).collect();
        assert_eq!(keys, [Integer(1), Integer(2), Integer(6)]);
    }

    /// The rows an older undo kept are each looked up among those an undo
    /// holds by their key, not by reading the whole table again for each:
    /// quadratic in the rows kept (minutes for 100,000).
    #[test]
    fn rows_left_by_an_older_undo_are_looked_up_by_their_key() {
        let conn = Connection::open_in_memory().unwrap();
        create(&conn).unwrap();
        conn.execute_batch(
            "INSERT INTO batchsse_undo (run, plan, step, name, chunk, rows, bytes) VALUES ('r', 'p', 0, 's', -2, 0, 0)",
        )
        .unwrap();
        let scope = Scope::of(&conn, &["r".to_owned()], "p");
        assert!(scope.since.is_some() && scope.run_at, "the plan's scope");
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", left_by_older_sql(&scope)))
            .unwrap()
            .query_map(rusqlite::params_from_iter([None::<i64>; 6]), |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let inner: Vec<&String> = plan
            .iter()
            .filter(|l| l.contains("batchsse_undo_conflict"))
            .collect();
        assert!(!inner.is_empty(), "{plan:#?}");
        assert!(
            inner
                .iter()
                .all(|l| l.contains("USING INDEX batchsse_undo_conflict_by_row")),
            "{plan:#?}"
        );
    }

    /// The conflicts of a run with no record left are its undo's report;
    /// a run that still has records is not one, and a conflict table
    /// dropped by hand leaves nothing to report rather than an error.
    #[test]
    fn kept_conflicts_are_those_of_runs_with_no_record_left() {
        let conn = Connection::open_in_memory().unwrap();
        assert_eq!(kept_conflicts(&conn).unwrap(), Vec::new());
        create(&conn).unwrap();
        conn.execute_batch(
            "INSERT INTO batchsse_undo (run, plan, step, name, chunk, rows, bytes) VALUES ('r', 'p', 0, 's', -2, 0, 0);
             INSERT INTO batchsse_undo_conflict (run, tbl, k, why) VALUES ('r', 't', 1, 'x'), ('q', 't', 2, 'y'), ('q', 't', 3, 'z');",
        )
        .unwrap();
        let kept = kept_conflicts(&conn).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!((kept[0].run.as_str(), kept[0].conflicts), ("q", 2));
        conn.execute_batch("DROP TABLE batchsse_undo_conflict")
            .unwrap();
        assert_eq!(kept_conflicts(&conn).unwrap(), Vec::new());
    }

    /// A part the damage check read is applied from memory, once; one
    /// taken meanwhile (by another undo) is still found gone.
    #[test]
    fn parts_the_damage_check_read_are_not_read_again() {
        let conn = Connection::open_in_memory().unwrap();
        create(&conn).unwrap();
        let rec = vec![7u8; 3000];
        for (id, chunk) in [(1, 0), (2, 1)] {
            conn.execute(
                "INSERT INTO batchsse_undo (id, run, plan, step, name, chunk, rows, bytes, rec, rec_hash)
                 VALUES (?1, 'r', 'p', 0, 's', ?2, 1, 3000, ?3, ?4)",
                rusqlite::params![id, chunk, rec, checksum(0, chunk, &rec)],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO batchsse_undo (run, plan, step, name, chunk, rows, bytes) VALUES ('r', 'p', 0, 's', ?1, 2, 0)",
            [PARTS],
        )
        .unwrap();
        let mut kept = Kept::default();
        assert_eq!(damage(&conn, "r", &mut kept).unwrap(), None);
        assert_eq!((kept.parts.len(), kept.bytes), (2, 6000));
        // Read from memory: the table's bytes (changed behind its back
        // here, to tell the two apart) are not read.
        conn.execute(
            "UPDATE batchsse_undo SET rec = zeroblob(3000) WHERE id = 2",
            [],
        )
        .unwrap();
        let mut into = Vec::new();
        let part = |id, chunk| Part {
            id,
            run: "r",
            step: 0,
            chunk,
        };
        let read = read_kept(&conn, part(2, 1), &mut into, Some(&mut kept)).unwrap();
        assert_eq!((read, into == rec), (Some(true), true));
        assert!(!kept.parts.contains_key(&2), "given away, not copied");
        conn.execute("DELETE FROM batchsse_undo WHERE id = 1", [])
            .unwrap();
        assert_eq!(
            read_kept(&conn, part(1, 0), &mut into, Some(&mut kept)).unwrap(),
            None
        );
    }
}
