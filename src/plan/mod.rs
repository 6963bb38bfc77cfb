//! Plans: loading a JSON plan or a SQL script, splitting scripts by
//! SQLite's own rule for a complete statement, and validating every step
//! before anything runs by compiling the whole plan against an empty
//! in-memory copy of the database's schema, bounded in time and memory.

mod bounds;
mod check;
mod collation;
mod huge;
mod named;
mod order;
mod split;

use rusqlite::{Connection, types::Value};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::UsageError;
use crate::human::quoted;
pub use check::Own;
use check::Rehearsal;
pub(crate) use check::{OTHER_SCHEMA, parameter_names};
pub(crate) use collation::{missing_collation, query_refusal};
pub(crate) use order::{key_order, order_shown};
use split::split_statements;

/// Where a plan came from, before it is checked against a database.
#[derive(Debug, Clone)]
pub enum Source {
    Json { name: String, text: String },
    Sql { name: String, text: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: String,
    pub steps: Vec<Step>,
    pub foreign_keys: bool,
    /// `"undo": true`: record every step so the run can be taken back, as
    /// `run --undo` does.
    pub undo: bool,
    /// A SQL script (`--sql`), whose steps cannot say `"undo": false`.
    pub script: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub index: usize,
    pub name: String,
    pub sql: String,
    pub chunk: Option<Chunk>,
    /// Statements SQLite refuses inside a transaction (VACUUM, ATTACH, some
    /// PRAGMAs) run on their own, in autocommit mode.
    pub autocommit: bool,
    /// Identifies the step's work for checkpoints: its SQL and chunking.
    pub checksum: String,
    /// What must hold after the step, or it fails.
    pub expect: Expect,
    /// `"undo": false`: this step is not recorded, so an undo stops at it.
    pub undo: bool,
    /// The tables the step writes (triggers' and foreign-key actions'
    /// writes included), as the pre-run check saw: those of `main` by name,
    /// others with their schema (see [`OTHER_SCHEMA`]).
    pub writes: Vec<String>,
    /// The columns (table, column) of the main database the step may
    /// update, likewise; `None` when the check could not see them all.
    pub updates: Option<Vec<(String, String)>>,
    /// It writes nothing but the TEMP schema (makes, fills or drops TEMP
    /// tables, views or triggers), which lives with the connection.
    pub temp_only: bool,
}

/// A step's expectations: checked after it (`sql`), and while it runs
/// (`max`, then `min` at its end).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expect {
    /// A read-only query whose first column must be truthy in every row.
    pub sql: Option<String>,
    /// The most rows the step may change.
    pub max: Option<u64>,
    /// The fewest rows the step must change.
    pub min: Option<u64>,
}

impl Step {
    /// Whether [`Step::writes`] names every table the step writes: not
    /// where the check's schema copy was incomplete (after an `ATTACH`,
    /// whose file it does not copy), as `updates` says.
    pub fn writes_seen(&self) -> bool {
        self.updates.is_some()
    }

    /// PRAGMA, ATTACH, DETACH and a step that writes only TEMP tables set
    /// up this connection only, so a resumed run does them again even when
    /// the checkpoint has them done.
    pub fn sets_up_connection(&self) -> bool {
        (self.autocommit && sets_up_connection(&self.sql)) || self.temp_only
    }

    /// Whether, by its text, the step reads `last_insert_rowid()` before
    /// any insert of its own: `""` in its SQL, `" in its expect"` after
    /// SQL that inserts nothing. For a resume from a checkpoint that does
    /// not hold the rowid (see `run::checkpoint`), which only the text
    /// can tell about.
    pub fn reads_rowid_first(&self) -> Option<&'static str> {
        for statement in split_statements(&self.sql) {
            if bounds::calls(statement, "last_insert_rowid") {
                return Some("");
            }
            if bounds::inserts(statement) {
                return None;
            }
        }
        let expect = self.expect.sql.as_deref().unwrap_or_default();
        bounds::calls(expect, "last_insert_rowid").then_some(" in its expect")
    }

    /// Whether, by its text, a statement of the step inserts rows a
    /// `SELECT` gives (or may give) and calls `last_insert_rowid()`: with
    /// a trigger on the table, SQLite reads the whole `SELECT` before it
    /// inserts a row, so the function answers the insert before the
    /// statement for every row, not each row's insert before it.
    pub fn inserts_selected_rowids(&self) -> bool {
        split_statements(&self.sql).into_iter().any(|s| {
            bounds::inserts(s) && bounds::selects(s) && bounds::calls(s, "last_insert_rowid")
        })
    }

    /// Whether, by its text, a statement of the step inserts, as what
    /// sets `last_insert_rowid()` (one that inserts no row, or into a
    /// WITHOUT ROWID table, does not: the text cannot tell).
    pub fn inserts(&self) -> bool {
        split_statements(&self.sql).into_iter().any(bounds::inserts)
    }
}

fn sets_up_connection(sql: &str) -> bool {
    matches!(first_keyword(sql).as_str(), "PRAGMA" | "ATTACH" | "DETACH")
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub table: String,
    /// The key as SQL: a name of the real rowid that no column shadows
    /// (`rowid`, `_rowid_` or `oid`), or a quoted column name.
    pub key_sql: String,
    pub key: String,
    /// The walk is over the table's real rowid (the default key, or an
    /// `INTEGER PRIMARY KEY` alias of it), so dense rowids chunk by
    /// arithmetic and every row has a key.
    pub rowid: bool,
    /// The rowid walked keeps its numbers through a `VACUUM` or a copy
    /// through `.dump` whatever the table's indexes: it is an `INTEGER
    /// PRIMARY KEY`, or a virtual table's own. A bare rowid walk that is
    /// not may be renumbered between two chunks (see `run::walk_probe`).
    pub stable_rowid: bool,
    pub size: u64,
    /// The statement is an `UPDATE` of the walked table and writes no
    /// other itself (its triggers may): a chunk changes at most the rows
    /// it holds, so one that changes more changes rows outside its chunk
    /// (`WHERE id BETWEEN :lo AND :hi + 1`), which other chunks change
    /// again.
    pub contained: bool,
    /// A [`contained`](Chunk::contained) step none of whose triggers
    /// writes the walked table: every row a chunk changes in it must be
    /// one of the chunk's, which SQLite's update hook tells by rowid (`WHERE
    /// id BETWEEN :lo AND :hi + 1 AND active` changes fewer rows than the
    /// chunk holds, and still one of the next chunk's). Checked at every
    /// chunk of a table with rowids, and by a try on one key before the run.
    pub fenced: bool,
    /// The statement inserts into the walked table (itself, through a
    /// trigger or as an upsert), which only a rowid walk may: SQLite gives
    /// new rows rowids past the largest, where the walk stops, until the
    /// table holds the largest rowid there is (see `run::chunk`).
    pub inserts: bool,
    /// Keys the walk's comparisons find equal may be two rows: the key
    /// column's collation is coarser than the one of its unique index (a
    /// `NOCASE` column a `BINARY` index keeps unique holds 'a' and 'A'). A
    /// chunk's `BETWEEN` then holds every row equal to its last key, more
    /// than the walk stepped over, so its rows are counted.
    pub peers: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    name: Option<String>,
    // `null` is "not said", as for a step's "undo" and the plan's "name".
    foreign_keys: Option<bool>,
    undo: Option<bool>,
    steps: Vec<Object<StepFile>>,
}

impl Shape for PlanFile {
    const EXAMPLE: &str = "a plan object such as {\"name\": \"x\", \"steps\": [{\"sql\": \"…\"}]}";
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: Option<String>,
    sql: String,
    chunk: Option<Object<ChunkFile>>,
    expect: Option<String>,
    expect_changes: Option<Object<ChangesFile>>,
    undo: Option<bool>,
}

impl Shape for StepFile {
    const EXAMPLE: &str = "a step object such as {\"sql\": \"UPDATE …\"}";
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesFile {
    #[serde(default, deserialize_with = "max_rows")]
    max: Option<u64>,
    #[serde(default, deserialize_with = "min_rows")]
    min: Option<u64>,
}

/// The fields of a plan that count rows: `chunk.size`, then
/// `expect_changes.max` and `.min`.
const ROW_FIELDS: [Rows; 3] = [
    Rows("chunk.size", 1),
    Rows("expect_changes.max", 0),
    Rows("expect_changes.min", 0),
];

fn max_rows<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_option(ROW_FIELDS[1])
}

fn min_rows<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_option(ROW_FIELDS[2])
}

fn size_rows<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_option(ROW_FIELDS[0])
}

/// A count of rows (the field, and the fewest it takes), said as such when
/// it is not one (serde's own words would be "expected u64", and nothing
/// of what to write).
#[derive(Clone, Copy)]
struct Rows(&'static str, u64);

impl<'de> serde::de::Visitor<'de> for Rows {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{} as a whole number of rows, {} or more, written without quotes or a decimal point, such as 1000",
            self.0, self.1
        )
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_u64(self)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        u64::try_from(v)
            .map(Some)
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
    }
}

impl Shape for ChangesFile {
    const EXAMPLE: &str = "an object such as {\"max\": 1000} or {\"min\": 1, \"max\": 1000}";
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChunkFile {
    table: String,
    key: Option<String>,
    #[serde(default, deserialize_with = "size_rows")]
    size: Option<u64>,
}

impl Shape for ChunkFile {
    const EXAMPLE: &str = "an object such as {\"table\": \"orders\", \"size\": 1000}";
}

/// A part of a plan file that must be a JSON object, and what one looks like.
trait Shape {
    const EXAMPLE: &str;
}

/// `T` read from a JSON object only. serde's derive also takes an array of
/// the fields in order, so `"expect_changes": [1000]` would quietly be a
/// `max`, and `["x", false, false, [...]]` a whole plan.
struct Object<T>(T);

impl<'de, T: Deserialize<'de> + Shape> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ObjectOnly(std::marker::PhantomData))
    }
}

struct ObjectOnly<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de> + Shape> serde::de::Visitor<'de> for ObjectOnly<T> {
    type Value = Object<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(T::EXAMPLE)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Object)
    }
}

/// SQLite's names for a table's rowid; a column of the same name hides it.
pub const ROWID_NAMES: [&str; 3] = ["rowid", "_rowid_", "oid"];

/// The first of SQLite's names for a table's rowid that none of its
/// columns takes (`is_column`), if any.
pub fn free_rowid_name(is_column: impl Fn(&str) -> bool) -> Option<&'static str> {
    ROWID_NAMES.into_iter().find(|n| !is_column(n))
}

/// The chunk size when a plan gives none.
pub const DEFAULT_CHUNK_SIZE: u64 = 1000;

impl Source {
    pub fn name(&self) -> &str {
        match self {
            Source::Json { name, .. } | Source::Sql { name, .. } => name,
        }
    }
}

/// Parses and checks a plan against the database it will run on. Nothing is
/// written to `db`: statements are checked on an in-memory schema copy.
pub fn prepare(source: &Source, db: &Connection) -> Result<Plan, UsageError> {
    prepare_resumable(source, db, |_| false, |_| Finished::new())
}

/// As [`prepare`], for a run that resumes: `finished` gives, by plan name,
/// the steps an earlier run finished (from the checkpoint). Those are not
/// rehearsed: they will be skipped, and their effects are already in the
/// schema, where running them again could fail (`ADD COLUMN` twice). They
/// are still parsed and checksummed, so an edit is still caught. A step
/// that writes a table `own` names (batchsse's checkpoint, its undo
/// record) is refused.
pub fn prepare_resumable(
    source: &Source,
    db: &Connection,
    own: Own,
    finished: impl FnOnce(&str) -> Finished,
) -> Result<Plan, UsageError> {
    let rehearsal = Rehearsal::new(db, own)?;
    match source {
        Source::Json { name, text } => prepare_json(name, text, &rehearsal, finished),
        Source::Sql { name, text } => prepare_sql(name, text, &rehearsal, finished(name)),
    }
}

/// Step index -> checksum, for the steps a checkpoint records as done.
pub type Finished = std::collections::HashMap<usize, String>;

fn prepare_json(
    origin: &str,
    text: &str,
    r: &Rehearsal,
    finished: impl FnOnce(&str) -> Finished,
) -> Result<Plan, UsageError> {
    // In messages: the file's name on one line (see `human::shown`).
    let plan_file = crate::human::shown(origin);
    if text.trim().is_empty() {
        return Err(UsageError::new(format!(
            "the plan {plan_file} is empty; give a JSON plan such as {{\"name\": \"x\", \"steps\": [{{\"sql\": \"…\"}}]}}"
        )));
    }
    let Object(file) = serde_json::from_str::<Object<PlanFile>>(text)
        .map_err(|e| invalid_json(&plan_file, text, &e))?;
    if file.steps.is_empty() {
        return Err(UsageError::new(format!(
            "the plan {plan_file} has no steps; add at least one {{\"sql\": \"…\"}} to \"steps\""
        )));
    }
    let plan_name = file
        .name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| origin.to_owned());
    let finished = finished(&plan_name);
    // So the authorizer sees the writes of foreign-key actions too.
    let foreign_keys = file.foreign_keys.unwrap_or(false);
    r.set_foreign_keys(foreign_keys);
    let mut steps = Vec::with_capacity(file.steps.len());
    for (index, Object(s)) in file.steps.into_iter().enumerate() {
        let name = match s.name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => step_name_from_sql(&s.sql).unwrap_or_else(|| format!("step {}", index + 1)),
        };
        let label = format!("step {} ({})", index + 1, quoted(&name));
        if s.sql.trim().is_empty() {
            return Err(UsageError::new(format!(
                "{label} has no SQL; fill in \"sql\""
            )));
        }
        if s.sql.contains('\0') {
            return Err(UsageError::new(format!(
                "{label}: its SQL contains a NUL character (\\u0000), where SQLite would stop reading; remove it"
            )));
        }
        let done = |sum: &str, sql: &str, name: &str| {
            skipped_on_resume(&finished, index, sum, sql, name, &plan_name)
        };
        steps.push(json_step(r, index, name, &label, s, done)?);
    }
    Ok(Plan {
        name: plan_name,
        steps,
        foreign_keys,
        undo: file.undo.unwrap_or(false),
        script: false,
    })
}

/// One step of a JSON plan, checked (or, when `done` says a resumed run
/// skips it, only resolved).
fn json_step(
    r: &Rehearsal,
    index: usize,
    name: String,
    label: &str,
    s: StepFile,
    done: impl FnOnce(&str, &str, &str) -> Result<bool, UsageError>,
) -> Result<Step, UsageError> {
    let walk = s.chunk.map(|Object(c)| c);
    let sum = checksum(
        &s.sql,
        walk.as_ref()
            .map(|c| (c.table.as_str(), c.key.as_deref().unwrap_or(""))),
    );
    // A done step that writes only TEMP tables is done again (see
    // [`Step::sets_up_connection`]), so it is checked as a new one.
    let done = done(&sum, &s.sql, &name)? && !(walk.is_none() && r.only_temp(label, &s.sql));
    r.take_writes();
    let (chunk, autocommit) = match walk {
        None if done => (None, classify(label, &s.sql)?),
        None => (None, r.rehearse_plain(label, &s.sql)?),
        Some(c) if done => (Some(r.finished_chunk(label, c)?), false),
        Some(c) => (Some(r.rehearse_chunked(label, &s.sql, c)?), false),
    };
    let (writes, updates) = r.take_writes();
    let updates = updates.filter(|_| !done);
    let temp_only = !done && chunk.is_none() && check::only_temp_writes(&writes);
    let changes = s.expect_changes.map(|Object(c)| c);
    let expect = expectations(label, s.expect, changes, autocommit)?;
    if let (Some(sql), false) = (&expect.sql, done) {
        r.check_expect(label, sql)?;
    }
    Ok(Step {
        index,
        name,
        checksum: sum,
        sql: s.sql,
        chunk,
        autocommit,
        expect,
        undo: s.undo.unwrap_or(true),
        writes,
        updates,
        temp_only,
    })
}

fn prepare_sql(
    origin: &str,
    text: &str,
    r: &Rehearsal,
    finished: Finished,
) -> Result<Plan, UsageError> {
    let plan_file = crate::human::shown(origin);
    if let Some(at) = text.find('\0') {
        return Err(UsageError::new(format!(
            "{plan_file}: line {} contains a NUL character, where SQLite would stop reading; remove it",
            text[..at].matches('\n').count() + 1
        )));
    }
    let mut steps = Vec::new();
    for piece in split_statements(text) {
        refuse_shell_command(&plan_file, text, piece)?;
        let index = steps.len();
        let label = format!("statement {}", index + 1);
        let sql = piece.trim().to_owned();
        let name = step_name_from_sql(&sql).unwrap_or_else(|| label.clone());
        let label = format!("{label} ({})", quoted(&name));
        let sum = checksum(&sql, None);
        let autocommit = classify(&label, &sql)?;
        r.take_writes();
        let skipped = skipped_on_resume(&finished, index, &sum, &sql, &name, origin)?
            && !r.only_temp(&label, &sql);
        if !skipped {
            r.rehearse_script_statement(&plan_file, &label, &sql)?;
        }
        let (writes, updates) = r.take_writes();
        let temp_only = !skipped && check::only_temp_writes(&writes);
        steps.push(Step {
            index,
            name,
            checksum: sum,
            sql,
            chunk: None,
            autocommit,
            expect: Expect::default(),
            undo: true,
            writes,
            updates: updates.filter(|_| !skipped),
            temp_only,
        });
    }
    if steps.is_empty() {
        return Err(UsageError::new(format!(
            "the SQL script {plan_file} has no statements; give at least one"
        )));
    }
    Ok(Plan {
        name: origin.to_owned(),
        steps,
        foreign_keys: false,
        undo: false,
        script: true,
    })
}

/// Refuses a piece of script `text` that is a sqlite3 shell command
/// (`.bail on`, `.timeout 5000`): not SQL, it ran into the next statement
/// and was reported as a syntax error of both.
fn refuse_shell_command(origin: &str, text: &str, piece: &str) -> Result<(), UsageError> {
    let rest = skip_comments(piece);
    if !rest.starts_with('.') || !rest[1..].starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Ok(());
    }
    let at = piece.as_ptr() as usize - text.as_ptr() as usize + (piece.len() - rest.len());
    let command = rest.split_whitespace().next().unwrap_or(rest);
    Err(UsageError::new(format!(
        "{origin}: line {} is a command of the sqlite3 shell ({command}), not SQL; batchsse runs the SQL statements only, so remove it",
        text[..at].matches('\n').count() + 1
    )))
}

/// Whether a resumed run will skip step `index`: the checkpoint has it
/// done, as it is now, and it does not set up the connection (those run
/// again). A done step that has since been edited is refused here, before
/// the check of the steps could blame the edit on the schema.
fn skipped_on_resume(
    finished: &Finished,
    index: usize,
    sum: &str,
    sql: &str,
    name: &str,
    plan: &str,
) -> Result<bool, UsageError> {
    match finished.get(&index) {
        None => Ok(false),
        Some(done) if done == sum => Ok(!sets_up_connection(sql)),
        Some(_) => Err(edited(index, name, plan)),
    }
}

/// A step's `expect` and `expect_changes`, checked for sense.
fn expectations(
    label: &str,
    sql: Option<String>,
    changes: Option<ChangesFile>,
    autocommit: bool,
) -> Result<Expect, UsageError> {
    // `{}`, or a bound given as `null` (a template's missing value),
    // would hold the step to nothing while the plan says it is held.
    if changes
        .as_ref()
        .is_some_and(|c| c.max.is_none() && c.min.is_none())
    {
        return Err(UsageError::new(format!(
            "{label}: expect_changes holds neither max nor min, so it would check nothing; give {{\"max\": N}} (the most rows the step may change) or {{\"min\": M}}, or remove it"
        )));
    }
    let (max, min) = changes.map_or((None, None), |c| (c.max, c.min));
    if let (Some(max), Some(min)) = (max, min)
        && min > max
    {
        return Err(UsageError::new(format!(
            "{label}: expect_changes.min ({min}) is more than expect_changes.max ({max}); no run could meet both"
        )));
    }
    let expect = Expect { sql, max, min };
    if autocommit && expect != Expect::default() {
        return Err(UsageError::new(format!(
            "{label} runs outside a transaction (VACUUM, ATTACH, PRAGMA), so nothing could be rolled back when an expectation fails; remove \"expect\" and \"expect_changes\" from it"
        )));
    }
    if expect.sql.as_deref().is_some_and(|q| q.contains('\0')) {
        return Err(UsageError::new(format!(
            "{label}: its \"expect\" contains a NUL character (\\u0000), where SQLite would stop reading and check less than it says; remove it"
        )));
    }
    if expect.sql.as_deref().is_some_and(|q| q.trim().is_empty()) {
        return Err(UsageError::new(format!(
            "{label}: \"expect\" is empty; give a query whose first column must be true, e.g. \"SELECT count(*) = 0 FROM t WHERE price < 0\""
        )));
    }
    Ok(expect)
}

fn chunk_size(label: &str, c: &ChunkFile) -> Result<u64, UsageError> {
    match c.size.unwrap_or(DEFAULT_CHUNK_SIZE) {
        0 => Err(UsageError::new(format!(
            "{label}: chunk.size must be at least 1"
        ))),
        size => Ok(size),
    }
}

/// Says whether a statement must run outside a transaction, and refuses
/// transaction control, which batchsse owns.
fn classify(label: &str, sql: &str) -> Result<bool, UsageError> {
    match first_keyword(sql).as_str() {
        "BEGIN" | "COMMIT" | "END" | "ROLLBACK" | "SAVEPOINT" | "RELEASE" => {
            Err(UsageError::new(format!(
                "{label} controls transactions ({}); batchsse runs each step in its own transaction, so remove it",
                short(sql.trim(), 40)
            )))
        }
        "VACUUM" | "ATTACH" | "DETACH" | "PRAGMA" => Ok(true),
        _ => Ok(false),
    }
}

/// Step `index` was applied by an earlier run of `plan` and edited since.
pub fn edited(index: usize, name: &str, plan: &str) -> UsageError {
    UsageError::new(format!(
        "step {} ({}) has changed since it was applied by plan {}; \
         revert the edit, give the plan a new \"name\" to start fresh, or pass --force to run the whole plan again",
        index + 1,
        quoted(name),
        quoted(plan)
    ))
}

/// Whether pragma `name` acts when it is only read, given no value:
/// SQLite calls `PRAGMA optimize` read-only, and it may run `ANALYZE`.
/// (The others here SQLite already calls writes; they are named so that
/// no later SQLite's change of mind lets one through.)
pub fn pragma_acts(name: &str) -> bool {
    ACTING.iter().any(|p| name.eq_ignore_ascii_case(p))
}

/// The pragmas that act when only read (see [`pragma_acts`]).
const ACTING: [&str; 4] = [
    "optimize",
    "wal_checkpoint",
    "incremental_vacuum",
    "shrink_memory",
];

/// The pragma that acts when read ([`pragma_acts`]) whose table-valued
/// function `table` is: `pragma_optimize` compiles as a read, yet runs
/// `PRAGMA optimize`, whose `ANALYZE` writes.
pub fn acting_pragma_table(table: &str) -> Option<&str> {
    let prefix = table.get(..7)?;
    let name = &table[7..];
    (prefix.eq_ignore_ascii_case("pragma_") && pragma_acts(name)).then_some(name)
}

/// The table-valued function of a pragma that acts when read
/// ([`acting_pragma_table`]) that query `sql` may read, as its text names
/// it: for a query the check before the run could not compile.
pub fn reads_acting_pragma(sql: &str) -> Option<String> {
    ACTING
        .iter()
        .map(|p| format!("pragma_{p}"))
        .find(|t| bounds::may_name(sql, t))
}

/// Whether a text that is not a JSON plan begins as SQL does: with a
/// statement's first keyword, after comments.
fn looks_like_sql(text: &str) -> bool {
    const FIRST: [&str; 16] = [
        "SELECT", "UPDATE", "INSERT", "DELETE", "REPLACE", "WITH", "CREATE", "DROP", "ALTER",
        "PRAGMA", "BEGIN", "ATTACH", "VACUUM", "ANALYZE", "REINDEX", "VALUES",
    ];
    FIRST.contains(&first_keyword(text).as_str())
}

/// The first keyword of a statement, upper-cased, after comments.
pub fn first_keyword(sql: &str) -> String {
    skip_comments(sql)
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// The statement after its leading whitespace and comments, and the
/// byte-order mark a script saved on Windows starts with (which SQLite
/// skips, so `PRAGMA` after one is still a `PRAGMA`).
fn skip_comments(sql: &str) -> &str {
    let mut s = sql;
    loop {
        s = s.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return s;
        }
    }
}

/// A step name from its SQL: the first line that is not a comment.
fn step_name_from_sql(sql: &str) -> Option<String> {
    skip_comments(sql)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| short(l.trim_end_matches(';').trim_end(), 60))
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

/// A short hex digest of some text.
pub fn short_digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Of a step as written: its SQL and, when chunked, the table and key as
/// the plan spells them (so it needs no schema: a finished step whose table
/// is gone still has one).
fn checksum(sql: &str, chunk: Option<(&str, &str)>) -> String {
    let mut h = Sha256::new();
    h.update(sql.trim().as_bytes());
    if let Some((table, key)) = chunk {
        h.update(b"\0chunk\0");
        h.update(table.as_bytes());
        h.update(b"\0");
        h.update(key.as_bytes());
    }
    h.finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A table of [`Step::writes`] as a message names it: `aux.t` for one of
/// another schema, each part as [`crate::human::shown`] shows it.
pub fn written_shown(w: &str) -> String {
    match w.split_once(OTHER_SCHEMA) {
        Some((db, t)) => format!("{}.{}", crate::human::shown(db), crate::human::shown(t)),
        None => crate::human::shown(w).into_owned(),
    }
}

/// Quotes an SQL identifier.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// SQLite's own message, without rusqlite's wrapping, on one line
/// ([`crate::human::one_line`]): SQLite builds its messages from names
/// (`UNIQUE constraint failed: TABLE.COLUMN`, `no such table: T`), and a
/// line feed in a name must not start a line that looks like batchsse's.
/// A trigger's `RAISE` message too: SQLite takes any expression there, so
/// it may carry a row's values (`RAISE(ABORT, 'bad name: ' || new.name)`),
/// which whoever wrote the row chose.
pub fn sqlite_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(m)) => crate::human::one_line(m).into_owned(),
        other => crate::human::one_line(&other.to_string()).into_owned(),
    }
}

/// Explains an error met while first reading the database.
pub fn db_open_message(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            "the file is not a SQLite database (or is encrypted); check the --db path".into()
        }
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            "the database is locked by another process; wait for it or raise --busy-timeout".into()
        }
        Some(rusqlite::ErrorCode::DatabaseCorrupt) => format!(
            "the file is damaged ({}); restore it from a backup (in the sqlite3 shell, `PRAGMA integrity_check` says where it is damaged and `.recover` saves what can be read)",
            sqlite_message(e)
        ),
        Some(rusqlite::ErrorCode::SystemIoFailure) => format!(
            "SQLite could not read or write the file, or the -journal, -wal or -shm beside it ({}); check the disk, and that those beside it are files (or absent)",
            sqlite_message(e)
        ),
        _ => format!("cannot read the database schema: {}", sqlite_message(e)),
    }
}

/// A plan that is not JSON, or not a plan's JSON, as its error says it.
fn invalid_json(origin: &str, text: &str, e: &serde_json::Error) -> UsageError {
    // serde_json counts lines by LF and columns in bytes.
    let stop = text
        .split_inclusive('\n')
        .take(e.line().saturating_sub(1))
        .map(str::len)
        .sum::<usize>()
        + e.column();
    let msg = e.to_string();
    let msg = strip_position(&msg);
    let what = huge::said(text, stop)
        .or_else(|| named::said(text, stop, msg))
        .unwrap_or_else(|| msg.into());
    UsageError::new(format!(
        "invalid plan {origin} at line {}, column {}: {what}{}",
        e.line(),
        // 0 when nothing was read yet (a plan that opens with `[`).
        e.column().max(1),
        if looks_like_sql(text) {
            "; it looks like a SQL script: give it with --sql instead of --plan"
        } else {
            ""
        }
    ))
}

/// serde_json appends " at line L column C"; we print the position first.
fn strip_position(msg: &str) -> &str {
    msg.rfind(" at line ").map_or(msg, |i| &msg[..i])
}

/// A key value as carried in checkpoints and bound to `:lo`/`:hi`.
pub type Key = Value;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_table_is_named_with_its_schema_on_one_line() {
        assert_eq!(written_shown("t"), "t");
        assert_eq!(written_shown("a\nb"), r"a\nb");
        assert_eq!(written_shown("aux\0t\u{1b}[2J"), r"aux.t\u{1b}[2J");
    }

    #[test]
    fn parameters_are_named_as_written() {
        let sql = |text: &str| Source::Sql {
            name: "fix.sql".into(),
            text: text.into(),
        };
        let e = prepare(
            &sql("UPDATE orders SET total = 1;\nUPDATE orders SET total = :a + ?2;"),
            &shop(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("fix.sql: statement 2 (\"UPDATE orders SET total = :a + ?2\") uses the parameters :a, ?2;"),
            "{e}"
        );
    }

    fn db(schema: &str) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(schema).unwrap();
        c
    }

    fn shop() -> Connection {
        db(
            "CREATE TABLE orders(id INTEGER PRIMARY KEY, total REAL, code TEXT UNIQUE, note TEXT);
            CREATE TABLE kv(k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID;
            INSERT INTO orders(total) VALUES (1.5);",
        )
    }

    fn json(text: &str) -> Result<Plan, UsageError> {
        prepare(
            &Source::Json {
                name: "plan.json".into(),
                text: text.into(),
            },
            &shop(),
        )
    }

    fn err(text: &str) -> String {
        json(text).expect_err("plan must be refused").to_string()
    }

    #[test]
    fn a_good_plan_loads_with_names_kinds_and_keys() {
        let p = json(
            r#"{"name":"p","steps":[
              {"name":"add","sql":"ALTER TABLE orders ADD COLUMN cents INTEGER"},
              {"sql":"UPDATE orders SET cents = total*100 WHERE id BETWEEN :lo AND :hi",
               "chunk":{"table":"orders","key":"id","size":10}},
              {"sql":"UPDATE kv SET v = v + 1 WHERE k BETWEEN :lo AND :hi","chunk":{"table":"kv","key":"k"}},
              {"sql":"VACUUM"}]}"#,
        )
        .unwrap();
        assert_eq!(p.name, "p");
        assert_eq!(p.steps.len(), 4);
        assert_eq!(
            p.steps[1].name,
            "UPDATE orders SET cents = total*100 WHERE id BETWEEN :lo AN…"
        );
        let c = p.steps[1].chunk.as_ref().unwrap();
        assert_eq!(
            (c.key.as_str(), c.key_sql.as_str(), c.size),
            ("id", "rowid", 10)
        );
        let c = p.steps[2].chunk.as_ref().unwrap();
        assert_eq!((c.key_sql.as_str(), c.size), ("\"k\"", DEFAULT_CHUNK_SIZE));
        assert!(p.steps[3].autocommit && !p.steps[0].autocommit);
        assert_ne!(p.steps[1].checksum, p.steps[2].checksum);
    }

    #[test]
    fn the_rehearsal_sees_columns_added_by_earlier_steps() {
        // Without rehearsing the ALTER, the UPDATE would not compile.
        json(r#"{"steps":[{"sql":"ALTER TABLE orders ADD COLUMN x INT"},{"sql":"UPDATE orders SET x = 1"}]}"#)
            .unwrap();
        let e = err(r#"{"steps":[{"sql":"UPDATE orders SET x = 1"}]}"#);
        assert!(
            e.contains("no such column: x") && e.contains("step 1"),
            "{e}"
        );
    }

    #[test]
    fn bad_plans_are_refused_with_the_step_and_the_fix() {
        let cases: &[(&str, &[&str])] = &[
            ("", &["empty"]),
            ("{\"steps\": [", &["line 1", "column"]),
            (r#"{"steps":[]}"#, &["no steps"]),
            // The plan file's own type names must not show.
            ("[]", &["expected a plan object such as"]),
            (
                r#"{"steps":[1]}"#,
                &["step 1 is 1, where a step object such as"],
            ),
            (
                r#"{"steps":[{"sql":"SELECT 1","expect":"SELECT 1\u0000 AND 0"}]}"#,
                &["step 1", "\"expect\" contains a NUL character"],
            ),
            (
                r#"{"steps":[{"sql":"SELECT 1","expect_changes":{"max":1.5}}]}"#,
                &["floating point `1.5`, expected expect_changes.max as a whole number of rows"],
            ),
            (
                r#"{"steps":[{"sql":"SELECT 1","expect_changes":{"min":-1}}]}"#,
                &["integer `-1`, expected expect_changes.min as a whole number of rows, 0 or more"],
            ),
            (
                r#"{"steps":[{"sql":"SELECT 1","expect_changes":{"max":"10"}}]}"#,
                &[
                    "string \"10\", expected expect_changes.max",
                    "without quotes",
                ],
            ),
            (
                r#"{"steps":[{"sql":"SELECT 1","expect_changes":{"max":1e3}}]}"#,
                &["expected expect_changes.max as a whole number"],
            ),
            (
                r#"{"steps":[{"sql":"SELECT 1","expect_changes":5}]}"#,
                &["expect_changes of step 1 is 5, where an object such as {\"max\": 1000}"],
            ),
            (
                r#"{"steps":[{"sql":"SELECT 1","chunk":"orders"}]}"#,
                &["chunk of step 1 is \"orders\", where an object such as {\"table\": \"orders\""],
            ),
            (
                r#"{"steps":[{"sql":"SELECT 1","sqll":"x"}]}"#,
                &["unknown field `sqll` in step 1"],
            ),
            (
                r#"{"name":"x","stepz":[]}"#,
                &["unknown field `stepz` in the plan"],
            ),
            (r#"{"steps":[{"sql":"  "}]}"#, &["step 1", "no SQL"]),
            (
                r#"{"steps":[{"sql":"-- only a comment"}]}"#,
                &["no SQL statement"],
            ),
            (
                r#"{"steps":[{"sql":"UPDTE orders SET total = 1"}]}"#,
                &["step 1", "syntax error", "UPDTE"],
            ),
            (
                r#"{"steps":[{"name":"n","sql":"UPDATE orders SET total=1","chunk":{"table":"orders"}}]}"#,
                &["step 1 (\"n\")", ":lo and :hi"],
            ),
            (
                r#"{"steps":[{"sql":"UPDATE nope SET a=1 WHERE rowid BETWEEN :lo AND :hi","chunk":{"table":"nope"}}]}"#,
                &["\"nope\" is not a table", "tables: kv, orders"],
            ),
            (
                r#"{"steps":[{"sql":"UPDATE orders SET total=1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"orders","key":"idd"}}]}"#,
                &["\"idd\" is not a column"],
            ),
            (
                r#"{"steps":[{"sql":"UPDATE orders SET total=1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"orders","key":"note"}}]}"#,
                &["not unique"],
            ),
            (
                r#"{"steps":[{"sql":"UPDATE kv SET v=1 WHERE k BETWEEN :lo AND :hi","chunk":{"table":"kv"}}]}"#,
                &["WITHOUT ROWID", "\"key\": \"k\""],
            ),
            (
                r#"{"steps":[{"sql":"UPDATE orders SET total=1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"orders","size":0}}]}"#,
                &["at least 1"],
            ),
            (
                r#"{"steps":[{"sql":"UPDATE orders SET total=:x"}]}"#,
                &["uses the parameter :x, but only chunked steps get parameters"],
            ),
            (
                r#"{"steps":[{"sql":"BEGIN; UPDATE orders SET total=1; COMMIT"}]}"#,
                &["controls transactions"],
            ),
            (
                r#"{"steps":[{"sql":"UPDATE orders SET total=1; VACUUM"}]}"#,
                &["step of its own"],
            ),
            (
                r#"{"steps":[{"sql":"UPDATE orders SET total=1 WHERE id BETWEEN :lo AND :hi; SELECT 1","chunk":{"table":"orders"}}]}"#,
                &["one statement"],
            ),
        ];
        for (plan, needles) in cases {
            let e = err(plan);
            for n in *needles {
                assert!(e.contains(n), "plan {plan:?}: {e:?} lacks {n:?}");
            }
            assert!(!e.contains("struct "), "plan {plan:?}: {e:?}");
        }
    }

    #[test]
    fn sql_scripts_split_by_sqlite_itself() {
        let text = "-- header\nUPDATE orders SET note = 'a;b'; /* c; */\nALTER TABLE orders ADD COLUMN y INT;\n\nUPDATE orders\n  SET y = 1;\n";
        let p = prepare(
            &Source::Sql {
                name: "fix.sql".into(),
                text: text.into(),
            },
            &shop(),
        )
        .unwrap();
        let names: Vec<_> = p.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "UPDATE orders SET note = 'a;b'",
                "ALTER TABLE orders ADD COLUMN y INT",
                "UPDATE orders"
            ]
        );
        assert_eq!(p.name, "fix.sql");
        assert!(p.steps[0].sql.contains("'a;b'"));
    }

    #[test]
    fn sql_script_errors_name_the_statement() {
        let src = Source::Sql {
            name: "s.sql".into(),
            text: "UPDATE orders SET total = 1;\nUPDATE orders SET nope = 1;".into(),
        };
        let e = prepare(&src, &shop()).unwrap_err().to_string();
        assert!(
            e.contains("statement 2") && e.contains("no such column: nope"),
            "{e}"
        );
        let empty = Source::Sql {
            name: "s.sql".into(),
            text: " -- nothing\n".into(),
        };
        assert!(
            prepare(&empty, &shop())
                .unwrap_err()
                .to_string()
                .contains("no statements")
        );
    }

    #[test]
    fn statements_that_fail_only_on_empty_tables_are_left_to_the_real_run() {
        let db = db("CREATE TABLE o(id INTEGER PRIMARY KEY);
                     CREATE TABLE i(id INTEGER PRIMARY KEY, o INT REFERENCES o(id));
                     CREATE TABLE n(x INT NOT NULL);
                     INSERT INTO o VALUES (1);");
        let plan = |sql: &str| Source::Json {
            name: "p".into(),
            text: serde_json::json!({"steps": [{"sql": sql}]}).to_string(),
        };
        // A foreign key to a parent that exists, and NOT NULL from a subquery
        // that is only NULL on the empty copy.
        prepare(&plan("INSERT INTO i(o) VALUES (1)"), &db).unwrap();
        prepare(
            &plan("INSERT INTO n(x) VALUES ((SELECT max(id) FROM o))"),
            &db,
        )
        .unwrap();
        // Still refused: what no data could fix.
        assert!(prepare(&plan("INSERT INTO n(y) VALUES (1)"), &db).is_err());
        // ATTACH: statements on the attached file are checked when they run.
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.sqlite");
        std::fs::write(&other, b"").unwrap();
        let steps = serde_json::json!({"steps": [
            {"sql": format!("ATTACH '{}' AS o2", other.display())},
            {"sql": "INSERT INTO o2.archive SELECT id FROM o"}
        ]});
        let attach = Source::Json {
            name: "p".into(),
            text: steps.to_string(),
        };
        prepare(&attach, &db).unwrap();
    }

    #[test]
    fn first_keyword_skips_comments() {
        assert_eq!(first_keyword("  -- x\n /* y */ vacuum"), "VACUUM");
        assert_eq!(first_keyword("pragma foo"), "PRAGMA");
        assert_eq!(first_keyword(""), "");
    }

    #[test]
    fn rehearsal_writes_nothing_to_the_real_database() {
        let real = shop();
        prepare(
            &Source::Json {
                name: "p".into(),
                text: r#"{"steps":[{"sql":"DELETE FROM orders"},{"sql":"DROP TABLE kv"}]}"#.into(),
            },
            &real,
        )
        .unwrap();
        let n: i64 = real
            .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        real.query_row("SELECT count(*) FROM kv", [], |r| r.get::<_, i64>(0))
            .unwrap();
    }
}
