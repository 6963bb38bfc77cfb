//! Plans: loading a JSON plan or a SQL script, splitting scripts by
//! SQLite's own rule for a complete statement, and validating every step
//! before anything runs by compiling the whole plan against an empty
//! in-memory copy of the database's schema, bounded in time and memory.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use fallible_iterator::FallibleIterator;
use rusqlite::{Batch, Connection, OptionalExtension, types::Value};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::UsageError;

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
}

impl Step {
    /// PRAGMA, ATTACH and DETACH set up this connection only, so a resumed
    /// run does them again even when the checkpoint has them done.
    pub fn sets_up_connection(&self) -> bool {
        self.autocommit && sets_up_connection(&self.sql)
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
    pub size: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    name: Option<String>,
    #[serde(default)]
    foreign_keys: bool,
    steps: Vec<StepFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: Option<String>,
    sql: String,
    chunk: Option<ChunkFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChunkFile {
    table: String,
    key: Option<String>,
    size: Option<u64>,
}

/// SQLite's names for a table's rowid; a column of the same name hides it.
const ROWID_NAMES: [&str; 3] = ["rowid", "_rowid_", "oid"];

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
/// written to `db`: statements are rehearsed on an in-memory schema copy.
pub fn prepare(source: &Source, db: &Connection) -> Result<Plan, UsageError> {
    prepare_resumable(source, db, false)
}

/// As [`prepare`]. With `resume`, steps an earlier run of the plan finished (by the
/// checkpoint in `db`) are not rehearsed: they will be skipped, and their
/// effects are already in the schema, where running them again could fail
/// (`ADD COLUMN` twice). They are still parsed and checksummed, so an edit
/// is still caught.
pub fn prepare_resumable(
    source: &Source,
    db: &Connection,
    resume: bool,
) -> Result<Plan, UsageError> {
    let rehearsal = Rehearsal::new(db)?;
    let finished = |plan: &str| {
        if resume {
            crate::checkpoint::finished_steps(db, plan)
        } else {
            Default::default()
        }
    };
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
    if text.trim().is_empty() {
        return Err(UsageError::new(format!(
            "the plan {origin} is empty; give a JSON plan such as {{\"name\": \"x\", \"steps\": [{{\"sql\": \"…\"}}]}}"
        )));
    }
    let file: PlanFile = serde_json::from_str(text).map_err(|e| {
        UsageError::new(format!(
            "invalid plan {origin} at line {}, column {}: {}",
            e.line(),
            e.column(),
            strip_position(&e.to_string())
        ))
    })?;
    if file.steps.is_empty() {
        return Err(UsageError::new(format!(
            "the plan {origin} has no steps; add at least one {{\"sql\": \"…\"}} to \"steps\""
        )));
    }
    let plan_name = file
        .name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| origin.to_owned());
    let finished = finished(&plan_name);
    // So the authorizer sees the writes of foreign-key actions too.
    let _ = r
        .conn
        .pragma_update(None, "foreign_keys", file.foreign_keys);
    let mut steps = Vec::with_capacity(file.steps.len());
    for (index, s) in file.steps.into_iter().enumerate() {
        let name = match s.name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => step_name_from_sql(&s.sql).unwrap_or_else(|| format!("step {}", index + 1)),
        };
        let label = format!("step {} ({name:?})", index + 1);
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
        let sum = checksum(
            &s.sql,
            s.chunk
                .as_ref()
                .map(|c| (c.table.as_str(), c.key.as_deref().unwrap_or(""))),
        );
        let done = skipped_on_resume(&finished, index, &sum, &s.sql, &name, &plan_name)?;
        let (chunk, autocommit) = match s.chunk {
            None if done => (None, classify(&label, &s.sql)?),
            None => (None, r.rehearse_plain(&label, &s.sql)?),
            Some(c) if done => (Some(r.finished_chunk(&label, c)?), false),
            Some(c) => (Some(r.rehearse_chunked(&label, &s.sql, c)?), false),
        };
        steps.push(Step {
            index,
            name,
            checksum: sum,
            sql: s.sql,
            chunk,
            autocommit,
        });
    }
    Ok(Plan {
        name: plan_name,
        steps,
        foreign_keys: file.foreign_keys,
    })
}

fn prepare_sql(
    origin: &str,
    text: &str,
    r: &Rehearsal,
    finished: Finished,
) -> Result<Plan, UsageError> {
    if let Some(at) = text.find('\0') {
        return Err(UsageError::new(format!(
            "{origin}: line {} contains a NUL character, where SQLite would stop reading; remove it",
            text[..at].matches('\n').count() + 1
        )));
    }
    let mut steps = Vec::new();
    for piece in split_statements(text) {
        let index = steps.len();
        let label = format!("statement {}", index + 1);
        let sql = piece.trim().to_owned();
        let name = step_name_from_sql(&sql).unwrap_or_else(|| label.clone());
        let label = format!("{label} ({name:?})");
        let sum = checksum(&sql, None);
        let autocommit = classify(&label, &sql)?;
        if !skipped_on_resume(&finished, index, &sum, &sql, &name, origin)? {
            r.rehearse_script_statement(origin, &label, &sql)?;
        }
        steps.push(Step {
            index,
            name,
            checksum: sum,
            sql,
            chunk: None,
            autocommit,
        });
    }
    if steps.is_empty() {
        return Err(UsageError::new(format!(
            "the SQL script {origin} has no statements; give at least one"
        )));
    }
    Ok(Plan {
        name: origin.to_owned(),
        steps,
        foreign_keys: false,
    })
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
        Some(_) => Err(crate::checkpoint::edited(index, name, plan)),
    }
}

/// Splits a script into statements as the sqlite3 shell does, without
/// compiling anything: a statement ends at the first `;` that completes it,
/// so a `;` inside a string, a comment or a trigger's body stays inside.
/// "Completes" is decided by the state machine of SQLite's own
/// `sqlite3_complete` (complete.c), run once over the whole text, so the
/// cost stays linear however many `;` a string holds. An unclosed string or
/// comment makes the rest one piece. Pieces of only comments and `;` are
/// dropped.
fn split_statements(text: &str) -> Vec<&str> {
    // Tokens, and states as complete.c numbers them.
    const SEMI: usize = 0;
    const WS: usize = 1;
    const OTHER: usize = 2;
    const EXPLAIN: usize = 3;
    const CREATE: usize = 4;
    const TEMP: usize = 5;
    const TRIGGER: usize = 6;
    const END: usize = 7;
    const START: usize = 1;
    // After CREATE [TEMP] TRIGGER, only `; END ;` ends the statement.
    const TRANS: [[usize; 8]; 8] = [
        /* 0 invalid */ [1, 0, 2, 3, 4, 2, 2, 2],
        /* 1 start   */ [1, 1, 2, 3, 4, 2, 2, 2],
        /* 2 normal  */ [1, 2, 2, 2, 2, 2, 2, 2],
        /* 3 explain */ [1, 3, 3, 2, 4, 2, 2, 2],
        /* 4 create  */ [1, 4, 2, 2, 2, 4, 5, 2],
        /* 5 trigger */ [6, 5, 5, 5, 5, 5, 5, 5],
        /* 6 semi    */ [6, 6, 5, 5, 5, 5, 5, 7],
        /* 7 end     */ [1, 7, 5, 5, 5, 5, 5, 5],
    ];
    let is_id = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let b = text.as_bytes();
    let mut pieces = Vec::new();
    let (mut start, mut state, mut i) = (0, 0, 0);
    // The index of the last byte of the first `close` at or after `from`
    // (the end of a string or comment), or None when it never closes.
    let closing = |from: usize, close: &[u8]| {
        b.get(from..)
            .and_then(|rest| rest.windows(close.len()).position(|w| w == close))
            .map(|j| from + j + close.len() - 1)
    };
    while i < b.len() {
        let (token, last) = match b[i] {
            b';' => (SEMI, Some(i)),
            b' ' | b'\r' | b'\t' | b'\n' | b'\x0c' => (WS, Some(i)),
            b'/' if b.get(i + 1) == Some(&b'*') => (WS, closing(i + 2, b"*/")),
            // A `--` comment runs to the end of its line (or of the text).
            b'-' if b.get(i + 1) == Some(&b'-') => {
                (WS, Some(closing(i, b"\n").unwrap_or(b.len() - 1)))
            }
            b'[' => (OTHER, closing(i + 1, b"]")),
            q @ (b'`' | b'"' | b'\'') => (OTHER, closing(i + 1, &[q])),
            c if is_id(c) => {
                let n = b[i..].iter().take_while(|&&c| is_id(c)).count();
                let word = &b[i..i + n];
                let token = match word.len() {
                    3 if word.eq_ignore_ascii_case(b"end") => END,
                    4 if word.eq_ignore_ascii_case(b"temp") => TEMP,
                    6 if word.eq_ignore_ascii_case(b"create") => CREATE,
                    7 if word.eq_ignore_ascii_case(b"trigger") => TRIGGER,
                    7 if word.eq_ignore_ascii_case(b"explain") => EXPLAIN,
                    9 if word.eq_ignore_ascii_case(b"temporary") => TEMP,
                    _ => OTHER,
                };
                (token, Some(i + n - 1))
            }
            _ => (OTHER, Some(i)),
        };
        let Some(last) = last else {
            break; // an unclosed string or comment: the rest is one piece
        };
        state = TRANS[state][token];
        if token == SEMI && state == START {
            pieces.push(&text[start..=i]);
            start = i + 1;
        }
        i = last + 1;
    }
    pieces.push(&text[start..]);
    pieces.retain(|p| !is_blank(p));
    pieces
}

/// Only whitespace, comments and semicolons.
fn is_blank(sql: &str) -> bool {
    let mut s = sql;
    loop {
        s = skip_comments(s);
        match s.strip_prefix(';') {
            Some(rest) => s = rest,
            None => return s.is_empty(),
        }
    }
}

/// An in-memory database holding the real one's schema and nothing else.
struct Rehearsal {
    conn: Connection,
    /// False when some schema object could not be copied (a virtual table
    /// whose module this build lacks, say) or a statement could not be
    /// rehearsed; then only errors no schema could explain (syntax) are
    /// reported up front.
    complete: std::cell::Cell<bool>,
    /// When the current statement is cut short (read by the progress
    /// handler) and when the whole rehearsal's time is spent.
    deadline: Arc<Mutex<Instant>>,
    spent_at: Instant,
    /// Every column write SQLite's authorizer saw since last taken.
    writes: Writes,
}

/// Column writes seen by the authorizer while a statement compiled,
/// triggers' included: `(table, column, trigger)`, in the main schema.
#[derive(Clone, Default)]
struct Writes(Arc<Mutex<Vec<Write>>>);

/// A column write: `(table, column, the trigger that writes it)`.
type Write = (String, String, Option<String>);

impl Writes {
    fn take(&self) -> Vec<Write> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn record(&self, ctx: rusqlite::hooks::AuthContext<'_>) -> rusqlite::hooks::Authorization {
        if let rusqlite::hooks::AuthAction::Update {
            table_name,
            column_name,
        } = ctx.action
            && ctx.database_name == Some("main")
        {
            let seen = (
                table_name.to_owned(),
                column_name.to_owned(),
                ctx.accessor.map(str::to_owned),
            );
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(seen);
        }
        rusqlite::hooks::Authorization::Allow
    }
}

/// The rehearsal's bounds, so the check costs about the same whatever a
/// plan does. Only statements that may change the schema run, on empty
/// tables, so only one that makes its own data (`CREATE TABLE … AS` over a
/// recursive CTE) meets them; it is cut short and the copy marked
/// incomplete.
mod bounds {
    use std::time::Duration;
    /// All statements together, then…
    pub const TOTAL: Duration = Duration::from_millis(400);
    /// …each one after that (DDL on empty tables takes microseconds).
    pub const EACH_AFTER: Duration = Duration::from_millis(10);
    /// Pages of the in-memory copy and of its temp database: 32 MiB each.
    pub const PAGES: i64 = 8192;
    /// The longest string or blob a rehearsed statement may make.
    pub const LENGTH: i32 = 8 << 20;
}

impl Rehearsal {
    fn new(db: &Connection) -> Result<Self, UsageError> {
        let mut conn = Connection::open_in_memory()
            .map_err(|e| UsageError::new(format!("cannot open an in-memory database: {e}")))?;
        // As in the real run (and the sqlite3 shell); constraint errors on
        // the empty copy are not reported anyway, see `run_in_rehearsal`.
        let _ = conn.execute_batch("PRAGMA foreign_keys = OFF");
        // Sorts and temp tables spill to a file past the page cache instead
        // of growing in memory (this build keeps them in memory by default).
        let _ = conn.execute_batch(&format!(
            "PRAGMA temp_store = FILE; PRAGMA main.max_page_count = {p}; PRAGMA temp.max_page_count = {p}",
            p = bounds::PAGES
        ));
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, bounds::LENGTH)
            .map_err(|e| UsageError::new(format!("cannot bound the pre-run check: {e}")))?;
        let started = Instant::now();
        let deadline = Arc::new(Mutex::new(started + bounds::TOTAL));
        let cut = Arc::clone(&deadline);
        conn.progress_handler(
            1000,
            Some(move || Instant::now() > *cut.lock().unwrap_or_else(|p| p.into_inner())),
        )
        .map_err(|e| UsageError::new(format!("cannot bound the pre-run check: {e}")))?;
        let writes = Writes::default();
        let seen = writes.clone();
        conn.authorizer(Some(move |ctx: rusqlite::hooks::AuthContext<'_>| {
            seen.record(ctx)
        }))
        .map_err(|e| UsageError::new(format!("cannot set up the pre-run check: {e}")))?;
        let mut complete = true;
        let schema: Vec<(String, String)> = db
            .prepare(
                "SELECT type, sql FROM sqlite_schema
                 WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY rowid",
            )
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()
            })
            .map_err(|e| UsageError::new(db_open_message(&e)))?;
        for (kind, sql) in schema {
            if kind == "trigger" || kind == "view" {
                continue; // added below, once every table exists
            }
            complete &= conn.execute_batch(&sql).is_ok();
        }
        let later: Vec<String> = db
            .prepare(
                "SELECT sql FROM sqlite_schema WHERE type IN ('view','trigger') AND sql IS NOT NULL ORDER BY rowid",
            )
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect::<Result<_, _>>())
            .map_err(|e| UsageError::new(db_open_message(&e)))?;
        for sql in later {
            complete &= conn.execute_batch(&sql).is_ok();
        }
        Ok(Rehearsal {
            conn,
            complete: std::cell::Cell::new(complete),
            deadline,
            spent_at: started + bounds::TOTAL,
            writes,
        })
    }

    /// Sets when the next statement is cut short: at the end of the
    /// rehearsal's time, or a moment from now once that is spent.
    fn arm(&self) {
        let now = Instant::now();
        let at = if now < self.spent_at {
            self.spent_at
        } else {
            now + bounds::EACH_AFTER
        };
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// Checks and rehearses a plain step, which may hold several statements.
    /// Returns whether it must run outside a transaction.
    fn rehearse_plain(&self, label: &str, sql: &str) -> Result<bool, UsageError> {
        let mut autocommit = false;
        let mut count = 0;
        let mut batch = Batch::new(&self.conn, sql);
        loop {
            let stmt = match batch.next() {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(e) => return self.failure(label, sql, &e),
            };
            count += 1;
            if let Some(names) = parameter_names(&stmt) {
                return Err(UsageError::new(format!(
                    "{label} uses {names}, but only chunked steps get parameters (:lo and :hi); add a \"chunk\", or write the value into the SQL"
                )));
            }
            let text = stmt.expanded_sql().unwrap_or_default();
            let own = classify(label, &text)?;
            autocommit |= own;
            drop(stmt);
            self.run(label, &text)?;
        }
        if count == 0 {
            return Err(UsageError::new(format!(
                "{label} has no SQL statement, only comments or whitespace"
            )));
        }
        if autocommit && count > 1 {
            return Err(UsageError::new(format!(
                "{label} mixes a statement that must run outside a transaction (VACUUM, ATTACH, PRAGMA) with others; give it a step of its own"
            )));
        }
        Ok(autocommit)
    }

    /// Checks and rehearses one statement of a SQL script.
    fn rehearse_script_statement(
        &self,
        origin: &str,
        label: &str,
        sql: &str,
    ) -> Result<(), UsageError> {
        let stmt = match self.conn.prepare(sql) {
            Ok(stmt) => Some(stmt),
            Err(e) => {
                // An incomplete schema copy may explain it (then the real
                // run finds out); without one it is the script's error.
                self.failure(label, sql, &e)
                    .map_err(|e| UsageError::new(format!("{origin}: {}", e.0.trim_end())))?;
                None
            }
        };
        if let Some(stmt) = stmt {
            if let Some(names) = parameter_names(&stmt) {
                return Err(UsageError::new(format!(
                    "{origin}: {label} uses {names}; SQL scripts can't bind parameters. Write the value into the SQL, or use a JSON plan with a \"chunk\" for :lo/:hi"
                )));
            }
            drop(stmt);
            self.run(label, sql)?;
        }
        Ok(())
    }

    /// The chunking of a step the checkpoint records as done: it will be
    /// skipped, so its table may be gone or changed since; resolved as
    /// usual when it can be, as written otherwise.
    fn finished_chunk(&self, label: &str, c: ChunkFile) -> Result<Chunk, UsageError> {
        let size = chunk_size(label, &c)?;
        let resolved = self
            .table(label, &c.table)
            .and_then(|t| Ok((self.unique_key(label, &t, c.key.as_deref())?.0, t)));
        Ok(match resolved {
            Ok((mut chunk, table)) => {
                chunk.table = table;
                chunk.size = size;
                chunk
            }
            Err(_) => {
                let key = c.key.unwrap_or_else(|| "rowid".into());
                Chunk {
                    key_sql: quote(&key),
                    table: c.table,
                    key,
                    rowid: false,
                    size,
                }
            }
        })
    }

    /// Compiles and runs one statement on the copy. A statement that does
    /// not compile is the plan's error; one that compiles but fails on the
    /// empty tables (a constraint, a trigger's RAISE) depends on data, so it
    /// is left to the real run, and the copy may have drifted from then on.
    fn run(&self, label: &str, sql: &str) -> Result<(), UsageError> {
        self.arm();
        match run_in_rehearsal(&self.conn, sql) {
            Ok(()) => {}
            Err(Rehearsed::Compile(e)) => {
                self.failure(label, sql, &e)?;
            }
            // Cut short, it may have left the copy's schema behind the
            // real one's (a `CREATE TABLE … AS` of generated rows).
            Err(Rehearsed::Run | Rehearsed::Cut) => self.complete.set(false),
        }
        if first_keyword(sql) == "ATTACH" {
            // The attached file is not copied, so statements using it are
            // checked when they run.
            self.complete.set(false);
        }
        Ok(())
    }

    fn rehearse_chunked(&self, label: &str, sql: &str, c: ChunkFile) -> Result<Chunk, UsageError> {
        let size = chunk_size(label, &c)?;
        let table = self.table(label, &c.table)?;
        let (mut chunk, key_names) = self.unique_key(label, &table, c.key.as_deref())?;
        chunk.size = size;
        let key = chunk.key.clone();
        self.writes.take();
        let mut batch = Batch::new(&self.conn, sql);
        let stmt = match batch.next() {
            Ok(Some(s)) => s,
            Ok(None) => return Err(UsageError::new(format!("{label} has no SQL statement"))),
            Err(e) => {
                return Err(UsageError::new(format!(
                    "{label} is not valid SQL for this database: {}\n  in: {}",
                    sqlite_message(&e),
                    short(sql.trim(), 200)
                )));
            }
        };
        let lo = stmt.parameter_index(":lo").ok().flatten();
        let hi = stmt.parameter_index(":hi").ok().flatten();
        if lo.is_none() || hi.is_none() {
            return Err(UsageError::new(format!(
                "{label} is chunked but its SQL lacks :lo and :hi; add e.g. \"WHERE {key} BETWEEN :lo AND :hi\" so each chunk touches only its keys"
            )));
        }
        for i in 1..=stmt.parameter_count() {
            if let Some(p) = stmt.parameter_name(i)
                && p != ":lo"
                && p != ":hi"
            {
                return Err(UsageError::new(format!(
                    "{label} uses the parameter {p}, but a chunked step binds only :lo and :hi"
                )));
            }
        }
        // Compiled is checked: running it on the empty copy would change
        // nothing but rows, which the check has no use for.
        drop(stmt);
        self.refuse_key_writes(label, &table, &key_names)?;
        match batch.next() {
            Ok(None) => {}
            _ => {
                return Err(UsageError::new(format!(
                    "{label} is chunked and must be one statement; split the rest into steps of their own"
                )));
            }
        }
        chunk.table = table;
        Ok(chunk)
    }

    /// Refuses a chunked step that writes its own key (directly or through
    /// a trigger), as the authorizer saw while it compiled: the walk goes in
    /// key order, so a row whose key moved ahead would be visited again.
    fn refuse_key_writes(
        &self,
        label: &str,
        table: &str,
        key_names: &[String],
    ) -> Result<(), UsageError> {
        let hit = self.writes.take().into_iter().find(|(t, c, _)| {
            t.eq_ignore_ascii_case(table) && key_names.iter().any(|k| k.eq_ignore_ascii_case(c))
        });
        let Some((_, column, trigger)) = hit else {
            return Ok(());
        };
        let via = trigger.map_or_else(String::new, |t| format!(" (through trigger {t:?})"));
        let column = if column == "ROWID" {
            "rowid".into()
        } else {
            column
        };
        Err(UsageError::new(format!(
            "{label} changes its own chunk key: it writes {table}.{column}{via}. The walk goes in key order, so a row whose key moves ahead would be visited again and one that moves back skipped. Chunk by a key the step does not change (rowid, or another unique column), or make it a plain step"
        )))
    }

    /// The table's name as the schema spells it.
    fn table(&self, label: &str, name: &str) -> Result<String, UsageError> {
        let found: Option<String> = self
            .conn
            .query_row(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
                [name],
                |r| r.get(0),
            )
            .optional()
            .unwrap_or(None);
        found.ok_or_else(|| {
            UsageError::new(format!(
                "{label}: chunk.table {name:?} is not a table in this database{}; check the name",
                self.known_tables()
            ))
        })
    }

    fn known_tables(&self) -> String {
        let names: Vec<String> = self
            .conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .unwrap_or_default();
        if names.is_empty() {
            String::new()
        } else {
            format!(" (tables: {})", names.join(", "))
        }
    }

    /// Resolves the chunk key and checks that it is unique, as keyset
    /// pagination needs. The returned chunk has the key filled in; its
    /// table and size are the caller's to set. Also returns the names under
    /// which SQLite's authorizer reports a write to the key.
    fn unique_key(
        &self,
        label: &str,
        table: &str,
        key: Option<&str>,
    ) -> Result<(Chunk, Vec<String>), UsageError> {
        let columns: Vec<(String, String, i64)> = self
            .conn
            .prepare(&format!("PRAGMA table_info({})", quote(table)))
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(5)?)))?
                    .collect()
            })
            .unwrap_or_default();
        let without_rowid = self
            .conn
            .query_row(
                "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
                [table],
                |r| r.get::<_, bool>(0),
            )
            .unwrap_or(false);
        let pk: Vec<&(String, String, i64)> = columns.iter().filter(|c| c.2 > 0).collect();
        let is_column = |name: &str| columns.iter().any(|c| c.0.eq_ignore_ascii_case(name));
        // `INTEGER PRIMARY KEY DESC` is not a rowid alias, and a real
        // alias has no index of its own.
        let alias = match pk.as_slice() {
            [one]
                if one.1.eq_ignore_ascii_case("integer")
                    && !without_rowid
                    && !self.has_pk_index(table) =>
            {
                Some(one.0.clone())
            }
            _ => None,
        };
        // A column may be named rowid, _rowid_ or oid and hide the real
        // rowid behind that name: address it by a name no column takes, or
        // by its INTEGER PRIMARY KEY alias.
        let rowid_sql = (!without_rowid).then(|| {
            ROWID_NAMES
                .iter()
                .find(|n| !is_column(n))
                .map(|n| (*n).to_owned())
                .or_else(|| alias.as_deref().map(quote))
        });
        let rowid_chunk = |key: String, key_sql: String| {
            let names = std::iter::once("ROWID".to_owned()).chain(alias.clone());
            let chunk = Chunk {
                table: String::new(),
                key,
                key_sql,
                rowid: true,
                size: 0,
            };
            (chunk, names.collect())
        };
        let Some(wanted) = key else {
            return match rowid_sql {
                Some(Some(sql)) => Ok(rowid_chunk("rowid".into(), sql)),
                Some(None) => Err(UsageError::new(format!(
                    "{label}: {table} has columns named rowid, _rowid_ and oid, which hide its rowid; set chunk.key to a unique column"
                ))),
                None => Err(self.not_a_column(label, table, "rowid", &columns, &pk, true)),
            };
        };
        let Some(column) = columns.iter().find(|c| c.0.eq_ignore_ascii_case(wanted)) else {
            let is_rowid_name = ROWID_NAMES.iter().any(|a| a.eq_ignore_ascii_case(wanted));
            return match rowid_sql {
                Some(Some(sql)) if is_rowid_name => Ok(rowid_chunk(wanted.to_owned(), sql)),
                _ => Err(self.not_a_column(label, table, wanted, &columns, &pk, without_rowid)),
            };
        };
        let name = column.0.clone();
        let unique = (pk.len() == 1 && pk[0].0 == name) || self.has_unique_index(table, &name);
        if !unique {
            return Err(UsageError::new(format!(
                "{label}: chunk.key {name:?} is not unique in {table}; chunking needs a unique key (rowid, the primary key, or a column with a UNIQUE index)"
            )));
        }
        if alias.as_deref() == Some(name.as_str()) {
            // The alias is the rowid: walk it as one (dense arithmetic),
            // by a plain rowid name where one is free.
            let sql = match rowid_sql {
                Some(Some(sql)) => sql,
                _ => quote(&name),
            };
            return Ok(rowid_chunk(name, sql));
        }
        let chunk = Chunk {
            table: String::new(),
            key_sql: quote(&name),
            key: name.clone(),
            rowid: false,
            size: 0,
        };
        Ok((chunk, vec![name]))
    }

    fn not_a_column(
        &self,
        label: &str,
        table: &str,
        wanted: &str,
        columns: &[(String, String, i64)],
        pk: &[&(String, String, i64)],
        without_rowid: bool,
    ) -> UsageError {
        let hint = match (without_rowid, pk) {
            (true, [one]) => format!(
                "; {table} is WITHOUT ROWID, so use its primary key: \"key\": {:?}",
                one.0
            ),
            _ => format!(
                " (columns: {})",
                columns
                    .iter()
                    .map(|c| c.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        UsageError::new(format!(
            "{label}: chunk.key {wanted:?} is not a column of {table}{hint}"
        ))
    }

    fn has_pk_index(&self, table: &str) -> bool {
        self.conn
            .prepare(&format!("PRAGMA index_list({})", quote(table)))
            .and_then(|mut s| {
                s.query_map([], |r| r.get::<_, String>(3))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .is_ok_and(|origins| origins.iter().any(|o| o == "pk"))
    }

    fn has_unique_index(&self, table: &str, column: &str) -> bool {
        let indexes: Vec<(String, bool, bool)> = self
            .conn
            .prepare(&format!("PRAGMA index_list({})", quote(table)))
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(4)?)))?
                    .collect()
            })
            .unwrap_or_default();
        indexes.iter().any(|(idx, unique, partial)| {
            *unique
                && !*partial
                && self
                    .conn
                    .prepare(&format!("PRAGMA index_info({})", quote(idx)))
                    .and_then(|mut s| {
                        s.query_map([], |r| r.get::<_, Option<String>>(2))?
                            .collect()
                    })
                    .map(|cols: Vec<Option<String>>| {
                        cols.len() == 1 && cols[0].as_deref() == Some(column)
                    })
                    .unwrap_or(false)
        })
    }

    /// Turns a rehearsal error into a usage error, unless an incomplete
    /// schema copy could explain it.
    fn failure(&self, label: &str, sql: &str, e: &rusqlite::Error) -> Result<bool, UsageError> {
        if is_cut(e) {
            // The check's own bounds, not the plan's fault (a huge literal).
            self.complete.set(false);
            return Ok(false);
        }
        let msg = sqlite_message(e);
        let syntax = msg.contains("syntax error") || msg.contains("incomplete input");
        if self.complete.get() || syntax {
            return Err(UsageError::new(format!(
                "{label} is not valid SQL for this database: {msg}\n  in: {}\n  fix the statement; nothing was run",
                short(sql.trim(), 200)
            )));
        }
        Ok(false)
    }
}

fn chunk_size(label: &str, c: &ChunkFile) -> Result<u64, UsageError> {
    match c.size.unwrap_or(DEFAULT_CHUNK_SIZE) {
        0 => Err(UsageError::new(format!(
            "{label}: chunk.size must be at least 1"
        ))),
        size => Ok(size),
    }
}

/// "the parameter :v" / "the parameters :a, ?2" when a statement has any.
pub(crate) fn parameter_names(stmt: &rusqlite::Statement<'_>) -> Option<String> {
    let n = stmt.parameter_count();
    let names: Vec<String> = (1..=n)
        .map(|i| {
            stmt.parameter_name(i)
                .map_or_else(|| format!("?{i}"), str::to_owned)
        })
        .collect();
    match names.as_slice() {
        [] => None,
        [one] => Some(format!("the parameter {one}")),
        many => Some(format!("the parameters {}", many.join(", "))),
    }
}

/// Runs a statement on the rehearsal copy if it may change the schema, so
/// later statements compile against the schema they will meet. The rest is
/// only compiled: statements that change only rows (their effect on the
/// empty copy is of no use to the check, and one that generates its own
/// rows would cost as much as the real run), and those that would touch
/// files (ATTACH, VACUUM INTO) or that the real run handles itself.
fn run_in_rehearsal(conn: &Connection, sql: &str) -> Result<(), Rehearsed> {
    let word = first_keyword(sql);
    if changes_only_rows(sql) || matches!(word.as_str(), "ATTACH" | "DETACH" | "VACUUM") {
        return conn.prepare(sql).map(|_| ()).map_err(Rehearsed::Compile);
    }
    let mut stmt = conn.prepare(sql).map_err(Rehearsed::Compile)?;
    let mut rows = stmt.raw_query();
    loop {
        match rows.next() {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(e) if is_cut(&e) => return Err(Rehearsed::Cut),
            Err(_) => return Err(Rehearsed::Run),
        }
    }
}

/// The rehearsal's bounds stopped a statement: its time, pages or the
/// length of a value.
fn is_cut(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(OperationInterrupted | DiskFull | TooBig | OutOfMemory)
    )
}

/// A statement that changes rows, never the schema.
fn changes_only_rows(sql: &str) -> bool {
    matches!(
        first_keyword(sql).as_str(),
        "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "SELECT" | "VALUES" | "WITH"
    )
}

/// How a rehearsed statement failed.
enum Rehearsed {
    /// It does not compile against the schema: the plan is wrong.
    Compile(rusqlite::Error),
    /// It compiled but failed on the empty copy: depends on data.
    Run,
    /// The rehearsal's bounds stopped it.
    Cut,
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

/// The first keyword of a statement, upper-cased, after comments.
pub fn first_keyword(sql: &str) -> String {
    skip_comments(sql)
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// The statement after its leading whitespace and comments.
fn skip_comments(sql: &str) -> &str {
    let mut s = sql;
    loop {
        s = s.trim_start();
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

/// Quotes an SQL identifier.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// SQLite's own message, without rusqlite's wrapping.
pub fn sqlite_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(m)) => m.clone(),
        other => other.to_string(),
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
        _ => format!("cannot read the database schema: {}", sqlite_message(e)),
    }
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

    /// The splitter's oracle: SQLite's own sqlite3_complete, asked about
    /// every prefix that ends in `;` (quadratic, fine for a test).
    fn split_by_sqlite(text: &str) -> Vec<&str> {
        let complete = |sql: &str| {
            let c = std::ffi::CString::new(sql).unwrap();
            // SAFETY: a valid NUL-terminated string, only read.
            unsafe { rusqlite::ffi::sqlite3_complete(c.as_ptr()) != 0 }
        };
        let mut pieces = Vec::new();
        let mut start = 0;
        for (i, _) in text.match_indices(';') {
            if complete(&text[start..=i]) {
                pieces.push(&text[start..=i]);
                start = i + 1;
            }
        }
        pieces.push(&text[start..]);
        pieces.retain(|p| !is_blank(p));
        pieces
    }

    proptest::proptest! {
        #[test]
        fn scripts_split_exactly_where_sqlite3_complete_says(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                ";", " ", "\n", "\t", "x", "1", "_a", "é", "CREATE", "create", "TEMP",
                "temporary", "TRIGGER", "trigger", "END", "end", "EXPLAIN", "BEGIN",
                "--c", "/*", "*/", "-", "/", "'", "\"", "`", "[", "]", "endx", "tempo",
                "CREATE TRIGGER t AFTER INSERT ON a BEGIN ", "CREATE TEMP TRIGGER ",
                "EXPLAIN CREATE TRIGGER ", "SELECT 1; ", "END;", " END ;",
            ]), 0..40)
        ) {
            let text: String = parts.concat();
            proptest::prop_assert_eq!(split_statements(&text), split_by_sqlite(&text));
        }
    }

    #[test]
    fn scripts_split_like_the_sqlite3_shell_without_compiling() {
        let script = "-- lead\nUPDATE a SET s = 'x;y' ; /* c; */ INSERT INTO nope VALUES (1);;\n\
            CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a SET n = 1; DELETE FROM a; END;\n\
            -- only a comment;\n  ;\nSELECT \"a;b\" FROM a";
        let pieces: Vec<&str> = split_statements(script)
            .into_iter()
            .map(str::trim)
            .collect();
        assert_eq!(
            pieces,
            [
                "-- lead\nUPDATE a SET s = 'x;y' ;",
                "/* c; */ INSERT INTO nope VALUES (1);",
                "CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a SET n = 1; DELETE FROM a; END;",
                "SELECT \"a;b\" FROM a",
            ]
        );
        assert!(split_statements(" -- x;\n;; /* y */ ").is_empty());
        // Thousands of `;` inside one unclosed string: one pass, not one per `;`.
        let long = format!("SELECT 1; SELECT '{}", ";".repeat(200_000));
        assert_eq!(split_statements(&long).len(), 2);
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
            (
                r#"{"steps":[{"sql":"SELECT 1","sqll":"x"}]}"#,
                &["unknown field `sqll`"],
            ),
            (r#"{"name":"x","stepz":[]}"#, &["unknown field `stepz`"]),
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
        let attach = Source::Json {
            name: "p".into(),
            text: r#"{"steps":[{"sql":"ATTACH 'other.sqlite' AS o2"},{"sql":"INSERT INTO o2.archive SELECT id FROM o"}]}"#.into(),
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
