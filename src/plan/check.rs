//! The pre-run check: every statement compiled against an empty in-memory
//! copy of the database's schema (schema statements run on it), bounded in
//! time and memory, with SQLite's authorizer watching what a step reads and
//! writes.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use fallible_iterator::FallibleIterator;
use rusqlite::{Batch, Connection, OptionalExtension};

use super::collation::{self, Missing};
use super::{
    Chunk, ChunkFile, ROWID_NAMES, chunk_size, classify, db_open_message, first_keyword, quote,
    short, sqlite_message,
};
use crate::error::UsageError;
use crate::human::{quoted, shown};

/// An in-memory database holding the real one's schema and nothing else.
pub(super) struct Rehearsal {
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
    /// Every column read and write SQLite's authorizer saw since last taken.
    seen: Seen,
    /// The collations the schema names that batchsse lacks (see
    /// [`collation`]).
    missing: Missing,
    /// batchsse's own tables, left out of the tables a message offers.
    own: Own,
}

/// What the check's authorizer refuses to compile, so the plan is refused
/// before anything runs.
#[derive(Clone, Debug, PartialEq)]
enum Denied {
    /// `load_extension()`: the run never enables extensions, so the step
    /// or `expect` would fail when it ran, after earlier steps had
    /// committed (see [`loads_extension`]).
    Extension,
    /// A journal mode that cannot roll a failed or interrupted chunk back
    /// (see [`UNJOURNALED`]).
    Journal,
    /// `PRAGMA query_only` on: every later write of the run would fail,
    /// the checkpoint's too (see [`READ_ONLY`]).
    QueryOnly,
    /// `PRAGMA count_changes` on (see [`COUNTING`]).
    Counting,
    /// A write to one of batchsse's own tables (see [`Own`]): the
    /// checkpoint or the undo record, which a step would lose or falsify.
    Own(String),
}

/// Whether a boolean pragma's value turns it on, as SQLite reads it
/// (`getSafetyLevel` in pragma.c): one that starts with a digit is the
/// number its leading digits make, kept in a byte (`1.5` and `0x1` are
/// on, `256` off); else only `on`, `yes` and `true`, spelled exactly.
fn truthy(value: &str) -> bool {
    match value.as_bytes().first() {
        Some(c) if c.is_ascii_digit() => leading_int(value) as u8 != 0,
        _ => ["on", "yes", "true"]
            .iter()
            .any(|t| value.eq_ignore_ascii_case(t)),
    }
}

/// The integer `z`'s leading digits make, as SQLite's `sqlite3Atoi` reads
/// it (`sqlite3GetInt32`): hexadecimal after `0x` (at most 8 digits, below
/// 2^31), else decimal (at most 10 digits, at most `i32::MAX`); 0 for one
/// out of that range.
fn leading_int(z: &str) -> i32 {
    let b = z.as_bytes();
    let digits = |from: usize, max: usize, is: fn(&u8) -> bool| -> Vec<u8> {
        let rest = b[from..].iter().skip_while(|&&c| c == b'0');
        rest.take(max).take_while(|c| is(c)).copied().collect()
    };
    let value = |d: &[u8], radix: u32| {
        d.iter().fold(0i64, |v, &c| {
            v * i64::from(radix) + i64::from((c as char).to_digit(radix).unwrap_or(0))
        })
    };
    if b.len() > 2 && b[0] == b'0' && matches!(b[1], b'x' | b'X') && b[2].is_ascii_hexdigit() {
        let d = digits(2, 9, u8::is_ascii_hexdigit);
        return match d.len() <= 8 && value(&d, 16) < 1 << 31 {
            true => value(&d, 16) as i32,
            false => 0,
        };
    }
    let d = digits(0, 11, u8::is_ascii_digit);
    match d.len() <= 10 && value(&d, 10) <= i64::from(i32::MAX) {
        true => value(&d, 10) as i32,
        false => 0,
    }
}

/// Whether `value` sets the journal mode to OFF or MEMORY, as SQLite reads
/// it (pragma.c): the first mode, in SQLite's order, whose name the value
/// begins (`of` is OFF, `mem` MEMORY).
fn unjournaled(value: &str) -> bool {
    let modes = ["delete", "persist", "off", "truncate", "memory", "wal"];
    let n = value.len();
    let mode = modes
        .iter()
        .find(|m| m.get(..n).is_some_and(|p| p.eq_ignore_ascii_case(value)));
    matches!(mode, Some(&"off" | &"memory"))
}

/// Why `PRAGMA query_only = ON` is refused.
const READ_ONLY: &str = "sets PRAGMA query_only, which makes every write after it fail, the run's own checkpoint of this step included: the step would fail, and the steps after it could not run. Remove it (a step that only reads needs no such pragma); nothing was run";

/// Why `PRAGMA count_changes = ON` is refused.
const COUNTING: &str = "sets PRAGMA count_changes, which makes every INSERT, UPDATE and DELETE after it answer with a row, the run's own writes of its checkpoint and undo record included, which then fail. Remove it: batchsse counts the rows each step changes itself (\"rows_changed\", and expect_changes to hold a step to a count); nothing was run";

/// Whether a table is one of batchsse's own (its checkpoint, its undo
/// record), as the runner, which makes them, tells.
pub type Own = fn(&str) -> bool;

fn denied(ctx: &rusqlite::hooks::AuthContext<'_>, is_own: Own) -> Option<Denied> {
    use rusqlite::hooks::AuthAction::*;
    let own = |table: &str| is_own(table).then(|| Denied::Own(table.to_owned()));
    match ctx.action {
        Function { function_name } => function_name
            .eq_ignore_ascii_case("load_extension")
            .then_some(Denied::Extension),
        Pragma {
            pragma_name,
            pragma_value: Some(value),
        } => pragma_denied(pragma_name, value, ctx.database_name),
        Insert { table_name }
        | Delete { table_name }
        | Update { table_name, .. }
        | DropTable { table_name }
        | AlterTable { table_name, .. }
        | CreateTrigger { table_name, .. }
        | CreateTempTrigger { table_name, .. } => own(table_name),
        _ => None,
    }
}

/// What a `PRAGMA name = value` on the schema `db` is refused for: one
/// that turns `query_only` or `count_changes` on, or the file's journal
/// off (see [`Denied`]).
fn pragma_denied(name: &str, value: &str, db: Option<&str>) -> Option<Denied> {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    if is("query_only") {
        truthy(value).then_some(Denied::QueryOnly)
    } else if is("count_changes") {
        truthy(value).then_some(Denied::Counting)
    } else {
        (is("journal_mode") && db != Some("temp") && unjournaled(value)).then_some(Denied::Journal)
    }
}

/// Column reads and writes seen by the authorizer while a statement
/// compiled, triggers' included, in the main schema.
#[derive(Clone, Default)]
struct Seen(
    Arc<Mutex<Vec<Access>>>,
    Tables,
    Columns,
    Setting,
    AfterTempTrigger,
    LastDenied,
    Attaching,
);

/// The file the last `ATTACH` compiled names, when it is a literal.
type Attaching = Arc<Mutex<Option<String>>>;

/// What the authorizer last refused (see [`Denied`]): SQLite's refusal
/// names neither a pragma nor a table.
type LastDenied = Arc<Mutex<Option<Denied>>>;

/// The last action was the creation of a TEMP trigger. For one on a table
/// of `main`, SQLite then checks an insert into main's schema table, but
/// writes the trigger into the TEMP schema.
type AfterTempTrigger = Arc<Mutex<bool>>;

/// Why the statement just compiled may set or change something, though
/// SQLite calls it read-only: the last `PRAGMA name = value` (or
/// `name(value)`, as `PRAGMA busy_timeout = 1`), a pragma that acts when
/// read (`PRAGMA optimize`), or a read of that one's table-valued function
/// (`pragma_optimize`).
type Setting = Arc<Mutex<Option<String>>>;

/// The columns of the main database's tables a statement updates, as
/// (table, column).
type Columns = Arc<Mutex<std::collections::BTreeSet<(String, String)>>>;

/// The tables a statement writes (inserts, updates, deletes): a table of
/// `main` by its name, any other as its schema, [`OTHER_SCHEMA`], its name
/// (a name may hold a dot, never a NUL).
type Tables = Arc<Mutex<std::collections::BTreeSet<String>>>;

/// Whether a statement failed to compile for calling `load_extension()`,
/// which the check's authorizer denies: SQLite says so in its own words.
fn loads_extension(e: &rusqlite::Error) -> bool {
    sqlite_message(e)
        .to_ascii_lowercase()
        .contains("not authorized to use function: load_extension")
}

/// Why a statement `sql` that failed with `e` for a function SQLite lacks
/// is refused, when `sql` does not name the function: a trigger, view or
/// generated column it uses calls one of an application's own. (One it
/// names is most often a typo, which SQLite's message shows as it is.)
fn app_function(e: &rusqlite::Error, sql: &str) -> Option<String> {
    let rusqlite::Error::SqliteFailure(_, Some(m)) = e else {
        return None;
    };
    let name = m.strip_prefix("no such function: ")?;
    let named = sql.to_lowercase().contains(&name.to_lowercase());
    (!named).then(|| {
        format!(
            "uses a trigger, view or generated column that calls {}, a function batchsse does not have ({}): an application registers such functions on its own connections; they are not stored in the file, and batchsse cannot run them. Run this step from the application. Nothing was run",
            crate::human::quoted(name),
            sqlite_message(e)
        )
    })
}

/// Why a statement calling `load_extension()` is refused.
const LOADS: &str = "calls load_extension() (itself, or in a trigger or view it uses), which a run cannot do: batchsse never enables SQLite extensions. Remove the call (a function an extension provides is not available to a plan); nothing was run";

impl Seen {
    /// Why a statement that failed to compile with `e` was refused by the
    /// authorizer, if it was.
    fn refusal(&self, e: &rusqlite::Error) -> Option<String> {
        if loads_extension(e) {
            return Some(LOADS.into());
        }
        if e.sqlite_error_code() != Some(rusqlite::ErrorCode::AuthorizationForStatementDenied) {
            return None;
        }
        match self.5.lock().unwrap_or_else(|p| p.into_inner()).take()? {
            Denied::Extension => Some(LOADS.into()),
            Denied::Journal => Some(UNJOURNALED.into()),
            Denied::QueryOnly => Some(READ_ONLY.into()),
            Denied::Counting => Some(COUNTING.into()),
            Denied::Own(table) => Some(format!(
                "writes, drops or alters {table} (itself, or by a trigger it fires), one of batchsse's own tables (the checkpoint and the undo record): the runs' records would be lost or made false, and a plan run again would apply steps twice. Remove that statement or trigger; `batchsse checkpoint clear` and `batchsse undo clear` remove records. Nothing was run"
            )),
        }
    }
}

/// Why `PRAGMA journal_mode = OFF` or `MEMORY` is refused: with no
/// journal SQLite cannot roll back a chunk that fails or is interrupted
/// (it keeps part of it, uncheckpointed, and a resumed run applies that
/// part again), and with one in memory a crash mid-chunk may corrupt the
/// file.
const UNJOURNALED: &str = "sets PRAGMA journal_mode to OFF or MEMORY, under which SQLite cannot roll back a step or chunk that fails or is interrupted (part of its changes would stay, and a resumed run would apply them again), nor survive a crash mid-transaction; remove it (DELETE, TRUNCATE, PERSIST and WAL are fine); nothing was run";

/// The schema table of `main`, as the authorizer names it.
const MAIN_SCHEMA_TABLE: &str = "sqlite_master";

/// Parts a written table of another schema than `main` from its schema
/// (see [`Tables`]).
pub(crate) const OTHER_SCHEMA: char = '\0';

/// One column a statement reads or writes, or (with `inserts` and an
/// empty `column`) a table it inserts into. SQLite names the rowid by its
/// `INTEGER PRIMARY KEY` alias, or else `ROWID`.
struct Access {
    write: bool,
    inserts: bool,
    table: String,
    column: String,
    /// The trigger (or view) that reads or writes it; `None` for the
    /// statement itself.
    by: Option<String>,
}

impl Seen {
    fn take(&self) -> Vec<Access> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn take_tables(&self) -> Vec<String> {
        let mut set = self.1.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *set).into_iter().collect()
    }

    /// The tables written since last taken, left in place.
    fn tables(&self) -> Vec<String> {
        let set = self.1.lock().unwrap_or_else(|p| p.into_inner());
        set.iter().cloned().collect()
    }

    fn take_columns(&self) -> Vec<(String, String)> {
        let mut set = self.2.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *set).into_iter().collect()
    }

    fn take_setting(&self) -> Option<String> {
        self.3.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Whether to refuse what `ctx` asks (see [`Denied`]), noting why, and
    /// the file an `ATTACH` names.
    fn deny(&self, ctx: &rusqlite::hooks::AuthContext<'_>, own: Own) -> bool {
        if let rusqlite::hooks::AuthAction::Attach { filename } = ctx.action {
            *self.6.lock().unwrap_or_else(|p| p.into_inner()) = Some(filename.to_owned());
        }
        let Some(why) = denied(ctx, own) else {
            return false;
        };
        *self.5.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        true
    }

    /// Notes a pragma that may set or change something, read as a pragma
    /// or through its table-valued function, as the reason to refuse the
    /// statement where only reads may go (an `expect`).
    fn note_pragma(&self, action: &rusqlite::hooks::AuthAction<'_>) {
        use rusqlite::hooks::AuthAction::{Pragma, Read};
        if let Pragma {
            pragma_name,
            pragma_value,
        } = *action
        {
            let setting = match pragma_value {
                Some(value) => Some(format!("PRAGMA {pragma_name} = {value}")),
                None => super::pragma_acts(pragma_name).then(|| format!("PRAGMA {pragma_name}")),
            }
            .map(|pragma| format!("is {pragma}, which may set or change something; read a pragma with its table-valued function instead, e.g. SELECT count(*) = 0 FROM pragma_foreign_key_check('t')"));
            if setting.is_some() {
                *self.3.lock().unwrap_or_else(|p| p.into_inner()) = setting;
            }
        }
        // Its table-valued function compiles as a read of a table, and
        // runs the pragma as it is read: `optimize` may run `ANALYZE`,
        // which writes `sqlite_stat1`, so the statement writes it (an
        // undo record cannot take that back).
        if let Read { table_name, .. } = *action
            && let Some(pragma) = super::acting_pragma_table(table_name)
        {
            self.1
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert("sqlite_stat1".to_owned());
            *self.3.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(reads_acting(&pragma.to_ascii_lowercase()));
        }
    }

    /// Notes the table an insert, delete or update writes (another
    /// schema's by its qualified name), but for the schema table a TEMP
    /// trigger's creation only checks.
    fn note_written(&self, ctx: &rusqlite::hooks::AuthContext<'_>, after_temp_trigger: bool) {
        use rusqlite::hooks::AuthAction::{Delete, Insert, Update};
        if let Insert { table_name } | Delete { table_name } | Update { table_name, .. } =
            ctx.action
        {
            let name = match ctx.database_name {
                Some("main") | None => table_name.to_owned(),
                Some(db) => format!("{db}{OTHER_SCHEMA}{table_name}"),
            };
            let only_checked = after_temp_trigger && name == MAIN_SCHEMA_TABLE;
            if !only_checked {
                self.1
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name);
            }
        }
    }

    fn record(
        &self,
        ctx: rusqlite::hooks::AuthContext<'_>,
        own: Own,
    ) -> rusqlite::hooks::Authorization {
        use rusqlite::hooks::AuthAction::{CreateTempTrigger, Insert, Read, Update};
        if self.deny(&ctx, own) {
            return rusqlite::hooks::Authorization::Deny;
        }
        let after_temp_trigger = std::mem::replace(
            &mut *self.4.lock().unwrap_or_else(|p| p.into_inner()),
            matches!(ctx.action, CreateTempTrigger { .. }),
        );
        self.note_pragma(&ctx.action);
        self.note_written(&ctx, after_temp_trigger);
        let (write, table, column) = match ctx.action {
            Update {
                table_name,
                column_name,
            } => (true, table_name, column_name),
            Read {
                table_name,
                column_name,
            } => (false, table_name, column_name),
            Insert { table_name } => (true, table_name, ""),
            _ => return rusqlite::hooks::Authorization::Allow,
        };
        let inserts = matches!(ctx.action, Insert { .. });
        if ctx.database_name == Some("main") {
            if write && !inserts {
                self.2
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((table.to_owned(), column.to_owned()));
            }
            let access = Access {
                write,
                inserts,
                table: table.to_owned(),
                column: column.to_owned(),
                by: ctx.accessor.map(str::to_owned),
            };
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(access);
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

/// A column as `PRAGMA table_xinfo` gives it (generated columns included).
struct Column {
    name: String,
    ty: String,
    pk: bool,
    /// VIRTUAL or STORED: computed from other columns, never written.
    generated: bool,
}

/// A table as the chunk walk sees it.
struct Shape {
    columns: Vec<Column>,
    /// The primary key, when it is one column.
    single_pk: Option<String>,
    without_rowid: bool,
    /// The `INTEGER PRIMARY KEY` column that is the rowid, if any.
    alias: Option<String>,
    /// A virtual table, which numbers its own rows.
    virtual_table: bool,
    /// How to name the real rowid: `None` for a `WITHOUT ROWID` table,
    /// `Some(None)` when columns hide every name of it and there is no alias.
    rowid_sql: Option<Option<String>>,
}

impl Shape {
    fn rowid_chunk(&self, key: String, key_sql: String) -> (Chunk, Vec<String>) {
        let names = std::iter::once("ROWID".to_owned()).chain(self.alias.clone());
        let chunk = Chunk {
            table: String::new(),
            key,
            key_sql,
            rowid: true,
            stable_rowid: self.alias.is_some() || self.virtual_table,
            size: 0,
            contained: false,
            fenced: false,
            inserts: false,
            peers: false,
        };
        (chunk, names.collect())
    }

    fn not_a_column(&self, label: &str, table: &str, wanted: &str) -> UsageError {
        let table = shown(table);
        let hint = match (self.without_rowid, &self.single_pk) {
            (true, Some(pk)) => {
                format!(
                    "; {table} is WITHOUT ROWID, so use its primary key: \"key\": {}",
                    serde_json::Value::from(pk.as_str())
                )
            }
            (true, None) => format!(
                "; {table} is WITHOUT ROWID and its primary key has several columns, so set \"key\" to a column with a UNIQUE index of its own (columns: {})",
                self.column_names()
            ),
            _ => format!(" (columns: {})", self.column_names()),
        };
        UsageError::new(format!(
            "{label}: chunk.key {} is not a column of {table}{hint}",
            quoted(wanted)
        ))
    }

    fn column_names(&self) -> String {
        self.columns
            .iter()
            .map(|c| shown(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Makes `db`'s tables, views and triggers (and `ANALYZE`'s statistics
/// table) in `copy`; false when some could not be made there (the copy is
/// then incomplete, and the check says less).
fn copy_schema(db: &Connection, copy: &Connection) -> Result<bool, UsageError> {
    let mut complete = true;
    // Only names that begin `sqlite_` are SQLite's own (`_` unescaped
    // is LIKE's wildcard, which would leave out a table `SQLiteLog`).
    // A virtual table makes its shadow tables itself: they are left
    // out, and it comes after the other tables (a `VACUUM` lists it
    // after its shadow tables, whose names it would then find taken).
    let schema: Vec<(String, String)> = db
        .prepare(
            "SELECT s.type, s.sql FROM sqlite_schema AS s
             LEFT JOIN pragma_table_list AS l ON l.schema = 'main' AND l.name = s.name
             WHERE s.sql IS NOT NULL AND s.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
               AND ifnull(l.type, '') <> 'shadow'
             ORDER BY ifnull(l.type, '') = 'virtual', s.rowid",
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
        complete &= copy.execute_batch(&sql).is_ok();
    }
    // `ANALYZE`'s statistics table is SQLite's own, which no `CREATE`
    // may make: an `ANALYZE` of the copy's empty tables makes it, so a
    // step that tunes the statistics compiles there too.
    let stats: bool = db
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_stat1')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| UsageError::new(db_open_message(&e)))?;
    if stats {
        complete &= copy.execute_batch("ANALYZE").is_ok();
    }
    let later: Vec<String> = db
        .prepare(
            "SELECT sql FROM sqlite_schema WHERE type IN ('view','trigger') AND sql IS NOT NULL ORDER BY rowid",
        )
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect::<Result<_, _>>())
        .map_err(|e| UsageError::new(db_open_message(&e)))?;
    for sql in later {
        complete &= copy.execute_batch(&sql).is_ok();
    }
    Ok(complete)
}

impl Rehearsal {
    pub(super) fn new(db: &Connection, own: Own) -> Result<Self, UsageError> {
        let mut conn = Connection::open_in_memory()
            .map_err(|e| UsageError::new(format!("cannot open an in-memory database: {e}")))?;
        // As in the real run (and the sqlite3 shell); constraint errors on
        // the empty copy are not reported anyway, see `run_in_rehearsal`.
        let _ = conn.execute_batch("PRAGMA foreign_keys = OFF");
        // Sorts and temp tables spill to a file past the page cache instead
        // of growing in memory. That is SQLite's default, but a build with
        // SQLITE_TEMP_STORE=2 (as libsqlite3-sys makes for SQLCipher)
        // keeps them in memory: said here, whatever the build.
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
        let seen = Seen::default();
        let recorder = seen.clone();
        conn.authorizer(Some(move |ctx: rusqlite::hooks::AuthContext<'_>| {
            recorder.record(ctx, own)
        }))
        .map_err(|e| UsageError::new(format!("cannot set up the pre-run check: {e}")))?;
        collation::stand_in(&conn);
        let complete = copy_schema(db, &conn)?;
        let missing = collation::withdraw(&conn);
        Ok(Rehearsal {
            conn,
            complete: std::cell::Cell::new(complete),
            deadline,
            spent_at: started + bounds::TOTAL,
            seen,
            missing,
            own,
        })
    }

    /// Makes foreign-key actions part of what a statement writes, as the
    /// plan's `foreign_keys` does for the real run.
    pub(super) fn set_foreign_keys(&self, on: bool) {
        let _ = self.conn.pragma_update(None, "foreign_keys", on);
    }

    /// What was rehearsed since last taken writes: the tables, and the
    /// columns it updates (`None` when the schema copy is incomplete, so
    /// some may have been missed).
    pub(super) fn take_writes(&self) -> (Vec<String>, Option<Vec<(String, String)>>) {
        let tables = self.seen.take_tables();
        let columns = self.seen.take_columns();
        (tables, self.complete.get().then_some(columns))
    }

    /// Checks a step's `expect` query: one statement that compiles against
    /// the schema as the step leaves it, binds nothing and only reads.
    pub(super) fn check_expect(&self, label: &str, sql: &str) -> Result<(), UsageError> {
        let bad = |why: String| {
            UsageError::new(format!(
                "{label}: its \"expect\" {why}\n  in: {}",
                short(sql.trim(), 200)
            ))
        };
        self.seen.take_setting();
        // As the run will refuse it (see `run::expect`), whether or not
        // SQLite compiles the read: it leaves out a CTE the query never
        // uses, and the copy lacks a database a step attaches.
        if let Some(table) = super::reads_acting_pragma(sql) {
            return Err(bad(reads_acting(table.trim_start_matches("pragma_"))));
        }
        let mut batch = Batch::new(&self.conn, sql);
        let mut stmt = match batch.next() {
            Ok(Some(s)) => s,
            Ok(None) => return Err(bad("has no SQL statement".into())),
            Err(e) => {
                let msg = sqlite_message(&e);
                return match self.refusal(&e, sql) {
                    Some(why) => Err(bad(why)),
                    // The copy may lack what it reads.
                    None if !self.complete.get() && !msg.contains("syntax") => Ok(()),
                    None => Err(bad(format!("is not valid SQL: {msg}"))),
                };
            }
        };
        if let Some(names) = parameter_names(&stmt) {
            return Err(bad(format!(
                "uses {names}; write the values into the query"
            )));
        }
        if let Some(why) = self.seen.take_setting() {
            return Err(bad(why));
        }
        if !stmt.readonly() || stmt.column_count() == 0 {
            return Err(bad(
                "must be a query that only reads, such as SELECT count(*) = 0 FROM t WHERE …"
                    .into(),
            ));
        }
        if let Some(msg) = self.unknown_database(&mut stmt) {
            return Err(bad(format!(
                "would fail when it ran: {msg}. The run's databases are main and temp, and a pragma's function takes a text argument as a database's name (pragma_journal_mode('wal') asks for one called wal): compare the pragma's value instead, as in SELECT journal_mode = 'wal' FROM pragma_journal_mode"
            )));
        }
        drop(stmt);
        match batch.next() {
            Ok(None) => Ok(()),
            _ => Err(bad("must be one statement".into())),
        }
    }

    /// SQLite's word for the database an `expect` names that the run does
    /// not have, found by starting it on the copy: a pragma's function
    /// looks its schema argument up only as it runs. Only while the copy
    /// is complete and nothing is attached, when its databases are the
    /// run's; any other error may come of the copy's empty tables.
    fn unknown_database(&self, stmt: &mut rusqlite::Statement<'_>) -> Option<String> {
        if !self.complete.get() {
            return None;
        }
        self.arm();
        match stmt.raw_query().next() {
            Err(e) if sqlite_message(&e).starts_with("unknown database") => {
                Some(sqlite_message(&e))
            }
            _ => None,
        }
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
    pub(super) fn rehearse_plain(&self, label: &str, sql: &str) -> Result<bool, UsageError> {
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
            let text = self.text_of(&stmt);
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

    /// A statement's text as SQLite read it. SQLite gives none longer than
    /// the bound on lengths the check sets ([`bounds::LENGTH`]), which a
    /// plan's own literal may pass, so the bound is lifted while it reads.
    fn text_of(&self, stmt: &rusqlite::Statement<'_>) -> String {
        use rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH;
        let bound = self.conn.set_limit(SQLITE_LIMIT_LENGTH, i32::MAX);
        let text = stmt.expanded_sql().unwrap_or_default();
        if let Ok(bound) = bound {
            let _ = self.conn.set_limit(SQLITE_LIMIT_LENGTH, bound);
        }
        text
    }

    /// Whether a plain step writes nothing but TEMP tables (see
    /// [`only_temp_writes`]), found by rehearsing it in a savepoint that is
    /// rolled back at once, so the copy is as it was. For a step a resumed
    /// run would skip: the checkpoint cannot say, and its TEMP tables went
    /// with the connection of the run that made them.
    pub(super) fn only_temp(&self, label: &str, sql: &str) -> bool {
        if self.conn.execute_batch("SAVEPOINT batchsse_probe").is_err() {
            return false;
        }
        let complete = self.complete.get();
        self.take_writes();
        let rehearsed = self.rehearse_plain(label, sql).is_ok();
        let (writes, _) = self.take_writes();
        let _ = self
            .conn
            .execute_batch("ROLLBACK TO batchsse_probe; RELEASE batchsse_probe");
        self.complete.set(complete);
        rehearsed && only_temp_writes(&writes)
    }

    /// Checks and rehearses one statement of a SQL script.
    pub(super) fn rehearse_script_statement(
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
    pub(super) fn finished_chunk(&self, label: &str, c: ChunkFile) -> Result<Chunk, UsageError> {
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
                    stable_rowid: false,
                    size,
                    contained: false,
                    fenced: false,
                    inserts: false,
                    peers: false,
                }
            }
        })
    }

    /// Compiles and runs one statement on the copy. A statement that does
    /// not compile is the plan's error; one that compiles but fails on the
    /// empty tables (a constraint, a trigger's RAISE) depends on data, so it
    /// is left to the real run, and the copy may have drifted from then on.
    fn run(&self, label: &str, sql: &str) -> Result<(), UsageError> {
        if first_keyword(sql) == "VACUUM"
            && let Some(why) = self.missing.vacuum_refusal(sql)
        {
            return Err(UsageError::new(format!(
                "{label} {why}\n  in: {}",
                short(sql.trim(), 200)
            )));
        }
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
        // Which columns it read or wrote is asked only of a chunked step's
        // statement, which is compiled, not run, after its own clearing:
        // kept, a plan of 100,000 plain steps held ~90 MB of them.
        drop(self.seen.take());
        if first_keyword(sql) == "DETACH" {
            self.detach(label, sql)?;
        }
        if first_keyword(sql) == "ATTACH" {
            // The attached file is not copied, so statements using it are
            // checked when they run.
            self.complete.set(false);
            let file = self.seen.6.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(file) = file.filter(|f| missing_database(f)) {
                return Err(UsageError::new(format!(
                    "{label} attaches {}, which does not exist: batchsse never creates a database, so the step would fail when it ran; fix the path, or make the database first (an empty file is one: `touch {}`)",
                    quoted(&file),
                    crate::human::shell_word(&file)
                )));
            }
        }
        Ok(())
    }

    /// Refuses a `DETACH` that must fail when it runs: while the copy is
    /// complete and no step before it attached anything (resumed runs
    /// attach again, see `sets_up_connection`), the copy's databases are
    /// the run's, `main` and `temp`, neither of which can be detached. Run
    /// on the copy only then, outside a transaction, so SQLite says why.
    fn detach(&self, label: &str, sql: &str) -> Result<(), UsageError> {
        if !self.complete.get() || !self.conn.is_autocommit() {
            return Ok(());
        }
        match self.conn.execute_batch(sql) {
            Ok(()) => Ok(()),
            Err(e) => Err(UsageError::new(format!(
                "{label} could only fail as it ran ({}): no step before it attaches a database, and main and temp cannot be detached. Fix the name to that of an ATTACH before it, or remove the step; nothing was run\n  in: {}",
                sqlite_message(&e),
                short(sql.trim(), 200)
            ))),
        }
    }

    pub(super) fn rehearse_chunked(
        &self,
        label: &str,
        sql: &str,
        c: ChunkFile,
    ) -> Result<Chunk, UsageError> {
        let size = chunk_size(label, &c)?;
        let table = self.table(label, &c.table)?;
        let (mut chunk, key_names) = self.unique_key(label, &table, c.key.as_deref())?;
        chunk.size = size;
        let key = chunk.key.clone();
        let inputs = if chunk.rowid {
            Vec::new()
        } else {
            self.refuse_collated_key(label, &table, &chunk)?;
            self.generated_key_inputs(&table, &key)
        };
        self.seen.take();
        let mut batch = Batch::new(&self.conn, sql);
        let stmt = match batch.next() {
            Ok(Some(s)) => s,
            Ok(None) => return Err(UsageError::new(format!("{label} has no SQL statement"))),
            Err(e) => {
                let why = self.refusal(&e, sql).unwrap_or_else(|| {
                    format!("is not valid SQL for this database: {}", sqlite_message(&e))
                });
                return Err(UsageError::new(format!(
                    "{label} {why}\n  in: {}",
                    short(sql.trim(), 200)
                )));
            }
        };
        let lo = stmt.parameter_index(":lo").ok().flatten();
        let hi = stmt.parameter_index(":hi").ok().flatten();
        if lo.is_none() || hi.is_none() {
            return Err(UsageError::new(format!(
                "{label} is chunked but its SQL lacks :lo and :hi; add e.g. \"WHERE {} BETWEEN :lo AND :hi\" so each chunk touches only its keys",
                shown(&key)
            )));
        }
        // A bare `?` has no name: nothing would bind it, so it would be NULL.
        for i in 1..=stmt.parameter_count() {
            let name = stmt.parameter_name(i);
            if !matches!(name, Some(":lo" | ":hi")) {
                let p = name.map_or_else(|| format!("?{i}"), str::to_owned);
                return Err(UsageError::new(format!(
                    "{label} uses the parameter {p}, but a chunked step binds only :lo and :hi; write the value into the SQL"
                )));
            }
        }
        self.refuse_odd_bounds(label, sql, (&table, &chunk), &key_names)?;
        if stmt.readonly() {
            return Err(UsageError::new(format!(
                "{label} is chunked but only reads; a chunked step changes rows, e.g. \"UPDATE {} SET … WHERE {} BETWEEN :lo AND :hi\"",
                shown(&table),
                shown(&key)
            )));
        }
        // Compiled is checked: running it on the empty copy would change
        // nothing but rows, which the check has no use for.
        drop(stmt);
        let seen = self.seen.take();
        self.refuse_key_writes(label, &table, (&key_names, &inputs), &seen)?;
        refuse_inserts_ahead(label, &table, &chunk, &seen)?;
        self.refuse_other_key(label, &table, &chunk, &key_names, &seen)?;
        chunk.contained = updates_only(&table, &seen);
        chunk.fenced = chunk.contained && !written_by_trigger(&table, &seen);
        chunk.inserts = inserted(&table, &seen).is_some();
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

    /// Refuses a chunk key declared with a collation batchsse lacks: the
    /// walk orders and compares keys by it, whatever the step compares by.
    fn refuse_collated_key(
        &self,
        label: &str,
        table: &str,
        chunk: &Chunk,
    ) -> Result<(), UsageError> {
        let key = &chunk.key_sql;
        let walk = format!(
            "SELECT {key} FROM main.{} WHERE {key} > ?1 ORDER BY {key} LIMIT 1",
            quote(table)
        );
        match self.conn.prepare(&walk) {
            Err(e) if collation::missing_collation(&e) => Err(UsageError::new(format!(
                "{label}: {}",
                collation::key_refusal(table, &chunk.key, &sqlite_message(&e))
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses a chunked step that writes its own key (directly or through
    /// a trigger), or for a generated key one of its `inputs`, as the
    /// authorizer saw while it compiled: the walk goes in key order, so a
    /// row whose key moved ahead would be visited again.
    fn refuse_key_writes(
        &self,
        label: &str,
        table: &str,
        (key_names, inputs): (&[String], &[String]),
        seen: &[Access],
    ) -> Result<(), UsageError> {
        let hit = seen.iter().find(|a| {
            a.write
                && a.table.eq_ignore_ascii_case(table)
                && (key_names.contains(&a.column) || inputs.contains(&a.column))
        });
        let Some(Access { column, by, .. }) = hit else {
            return Ok(());
        };
        let via = by
            .as_ref()
            .map_or_else(String::new, |t| format!(" (through trigger {})", quoted(t)));
        let moves = match key_names.first() {
            Some(key) if !key_names.contains(column) => {
                format!(", and its generated key {} may change with it", shown(key))
            }
            _ => String::new(),
        };
        let column = if column == "ROWID" { "rowid" } else { column };
        let (table, column) = (shown(table), shown(column));
        Err(UsageError::new(format!(
            "{label} changes its own chunk key: it writes {table}.{column}{via}{moves}. The walk goes in key order, so a row whose key moves ahead would be visited again and one that moves back skipped. Chunk by a key the step does not change (rowid, or another unique column), or make it a plain step"
        )))
    }

    /// Refuses a chunked step that reads its table but never the key the
    /// walk binds to `:lo` and `:hi`: it would compare the chunk's keys with
    /// another column and change the wrong rows, or none, and still finish
    /// ok. A column named like the rowid is the usual way in, since in the
    /// step's SQL that name means the column. Names are compared exactly:
    /// the authorizer spells a column as declared and the rowid `ROWID`.
    fn refuse_other_key(
        &self,
        label: &str,
        table: &str,
        chunk: &Chunk,
        key_names: &[String],
        seen: &[Access],
    ) -> Result<(), UsageError> {
        let reads: Vec<&Access> = seen
            .iter()
            .filter(|a| !a.write && a.by.is_none() && a.table.eq_ignore_ascii_case(table))
            .collect();
        if reads.is_empty() || reads.iter().any(|a| key_names.contains(&a.column)) {
            return Ok(());
        }
        let hiding = reads.iter().find(|a| {
            ROWID_NAMES
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&a.column))
        });
        let (key, key_sql) = (shown(&chunk.key), shown(&chunk.key_sql));
        let table = shown(table);
        Err(UsageError::new(match hiding {
            Some(a) if chunk.rowid => format!(
                "{label}: in {table}, {col} is a column, not the rowid the walk binds to :lo and :hi, so the step would compare rowids with that column and change the wrong rows or none. Write {key_sql} for the rowid (a name no column takes), or set chunk.key to the column you mean",
                col = shown(&a.column)
            ),
            _ => format!(
                "{label} reads {table} but never its chunk key {key}: the walk binds {table}.{key} to :lo and :hi, so the step must compare that key (e.g. WHERE {key_sql} BETWEEN :lo AND :hi), or set chunk.key to the column it compares"
            ),
        }))
    }

    /// The table's name as the schema spells it (`main.t` is `t`).
    fn table(&self, label: &str, name: &str) -> Result<String, UsageError> {
        let find = |schema: &str, name: &str| -> Option<String> {
            let sql = format!(
                "SELECT name FROM {schema}.sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE"
            );
            self.conn
                .query_row(&sql, [name], |r| r.get(0))
                .optional()
                .unwrap_or(None)
        };
        let dotted = name.split_once('.');
        let bare = dotted
            .filter(|(schema, _)| schema.eq_ignore_ascii_case("main"))
            .map(|(_, t)| t);
        if let Some(found) = find("main", name).or_else(|| bare.and_then(|t| find("main", t))) {
            return Ok(found);
        }
        let temp = match dotted {
            Some((schema, t)) if schema.eq_ignore_ascii_case("temp") => Some(t),
            Some(_) => None,
            None => find("temp", name).map(|_| name),
        };
        // `main.x` that main lacks is no table here, not another database's.
        let other = dotted.filter(|_| bare.is_none());
        Err(UsageError::new(match (temp, other) {
            (Some(t), _) => format!(
                "{label}: chunk.table {} is a TEMP table, which a walk cannot take: its chunks commit one by one to the file, and a TEMP table lives only in the run's connection. Make it a plain step (no \"chunk\"), or walk the file's table the TEMP table was made from",
                quoted(t)
            ),
            (None, Some((schema, _))) => format!(
                "{label}: chunk.table {} names a table of another database ({}), and a walk runs only on the tables of the file given with --db; run this step as a plan of its own with --db set to that file",
                quoted(name),
                quoted(schema)
            ),
            (None, None) => format!(
                "{label}: chunk.table {} is not a table in this database{}; check the name",
                quoted(name),
                self.known_tables()
            ),
        }))
    }

    fn known_tables(&self) -> String {
        let names: Vec<String> = self
            .conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect::<Result<Vec<String>, _>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|name| !(self.own)(name))
            .collect();
        if names.is_empty() {
            String::new()
        } else {
            format!(" (tables: {})", crate::human::shown_list(&names))
        }
    }

    /// What the walk needs to know of a table's columns and rowid.
    fn shape(&self, table: &str) -> Shape {
        let columns: Vec<Column> = self
            .conn
            .prepare(&format!("PRAGMA table_xinfo({})", quote(table)))
            .and_then(|mut s| {
                s.query_map([], |r| {
                    let hidden: i64 = r.get(6)?;
                    let column = Column {
                        name: r.get(1)?,
                        ty: r.get(2)?,
                        pk: r.get::<_, i64>(5)? > 0,
                        generated: matches!(hidden, 2 | 3),
                    };
                    Ok((column, hidden))
                })?
                // 1: a virtual table's hidden column, which no walk uses.
                .filter(|c| !matches!(c, Ok((_, 1))))
                .map(|c| c.map(|(c, _)| c))
                .collect()
            })
            .unwrap_or_default();
        let (without_rowid, virtual_table) = self
            .conn
            .query_row(
                "SELECT wr, type = 'virtual' FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
                [table],
                |r| Ok((r.get::<_, bool>(0)?, r.get::<_, bool>(1)?)),
            )
            .unwrap_or((false, false));
        let pk: Vec<&Column> = columns.iter().filter(|c| c.pk).collect();
        // `INTEGER PRIMARY KEY DESC` is not a rowid alias, and a real
        // alias has no index of its own.
        let alias = match pk.as_slice() {
            [one]
                if one.ty.eq_ignore_ascii_case("integer")
                    && !without_rowid
                    && !self.has_pk_index(table) =>
            {
                Some(one.name.clone())
            }
            _ => None,
        };
        let single_pk = match pk.as_slice() {
            [one] => Some(one.name.clone()),
            _ => None,
        };
        // A column may be named rowid, _rowid_ or oid and hide the real
        // rowid behind that name: address it by a name no column takes, or
        // by its INTEGER PRIMARY KEY alias.
        let is_column = |name: &str| columns.iter().any(|c| c.name.eq_ignore_ascii_case(name));
        let rowid_sql = (!without_rowid).then(|| {
            super::free_rowid_name(is_column)
                .map(str::to_owned)
                .or_else(|| alias.as_deref().map(quote))
        });
        Shape {
            columns,
            single_pk,
            without_rowid,
            alias,
            virtual_table,
            rowid_sql,
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
        let shape = self.shape(table);
        let Some(wanted) = key else {
            return match &shape.rowid_sql {
                Some(Some(sql)) => Ok(shape.rowid_chunk("rowid".into(), sql.clone())),
                Some(None) => Err(UsageError::new(format!(
                    "{label}: {} has columns named rowid, _rowid_ and oid, which hide its rowid; set chunk.key to a unique column",
                    shown(table)
                ))),
                None => Err(shape.not_a_column(label, table, "rowid")),
            };
        };
        let Some(column) = shape
            .columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(wanted))
        else {
            let is_rowid_name = ROWID_NAMES.iter().any(|a| a.eq_ignore_ascii_case(wanted));
            return match &shape.rowid_sql {
                Some(Some(sql)) if is_rowid_name => {
                    Ok(shape.rowid_chunk(wanted.to_owned(), sql.clone()))
                }
                _ => Err(shape.not_a_column(label, table, wanted)),
            };
        };
        let name = column.name.clone();
        let unique = shape.single_pk.as_deref() == Some(name.as_str())
            || self.has_unique_index(table, &name);
        if !unique {
            return Err(UsageError::new(format!(
                "{label}: chunk.key {} is not unique in {}; chunking needs a unique key (rowid, the primary key, or a column with a UNIQUE index)",
                quoted(&name),
                shown(table)
            )));
        }
        if shape.alias.as_deref() == Some(name.as_str()) {
            // The alias is the rowid: walk it as one (dense arithmetic),
            // by a plain rowid name where one is free.
            let sql = match &shape.rowid_sql {
                Some(Some(sql)) => sql.clone(),
                _ => quote(&name),
            };
            return Ok(shape.rowid_chunk(name, sql));
        }
        let chunk = Chunk {
            table: String::new(),
            key_sql: quote(&name),
            key: name.clone(),
            rowid: false,
            stable_rowid: false,
            size: 0,
            contained: false,
            fenced: false,
            inserts: false,
            peers: self.has_peers(table, &name),
        };
        Ok((chunk, vec![name]))
    }

    /// Refuses a chunked step that compares its key with `:lo` and `:hi`
    /// other than as the walk bounds its chunks: strictly, or (a key other
    /// than the rowid) under another collation than the column's.
    fn refuse_odd_bounds(
        &self,
        label: &str,
        sql: &str,
        (table, chunk): (&str, &Chunk),
        keys: &[String],
    ) -> Result<(), UsageError> {
        super::bounds::refuse_strict(label, sql, &chunk.key, keys)?;
        if chunk.rowid {
            return Ok(());
        }
        let own = self.collation_of(table, &chunk.key);
        super::bounds::refuse_collated(label, sql, (&chunk.key, keys), &own)
    }

    /// The collation `table`'s `column` is declared with (`BINARY` unless
    /// it says another, or cannot be told).
    fn collation_of(&self, table: &str, column: &str) -> String {
        super::order::declared(&self.conn, table, column)
            .map_or_else(|| "BINARY".into(), |(_, coll)| coll)
    }

    /// Whether `table`'s `column`, unique, may hold keys its own collation
    /// finds equal (see [`Chunk::peers`]): it is not `BINARY` (equal there
    /// is equal under any), and no unique index on it alone, over every
    /// row, compares by that collation.
    fn has_peers(&self, table: &str, column: &str) -> bool {
        let own = self.collation_of(table, column);
        if own.eq_ignore_ascii_case("BINARY") {
            return false;
        }
        let sql = "SELECT count(*) FROM pragma_index_list(?1) AS il
             JOIN pragma_index_xinfo(il.name) AS ix
             WHERE il.\"unique\" AND NOT il.partial AND ix.key
               AND ix.name = ?2 AND ix.coll = ?3 COLLATE NOCASE
               AND (SELECT count(*) FROM pragma_index_xinfo(il.name) AS k WHERE k.key) = 1";
        let same: i64 = self
            .conn
            .query_row(sql, rusqlite::params![table, column, own], |r| r.get(0))
            .unwrap_or(0);
        same == 0
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
        self.unique_index(table, column).is_some()
    }

    /// A UNIQUE index on `column` alone, over every row (not partial).
    fn unique_index(&self, table: &str, column: &str) -> Option<String> {
        let indexes: Vec<(String, bool, bool)> = self
            .conn
            .prepare(&format!("PRAGMA index_list({})", quote(table)))
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(4)?)))?
                    .collect()
            })
            .unwrap_or_default();
        let found = indexes.into_iter().find(|(idx, unique, partial)| {
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
        });
        found.map(|(idx, ..)| idx)
    }

    /// The columns a generated key is computed from, as SQLite itself
    /// sees them: an UPDATE of such a column rewrites the key's UNIQUE
    /// index (so do one of the rowid or the primary key, which count in
    /// too). Empty for a key that is not generated. The authorizer names
    /// only the columns a step writes, never the generated ones that
    /// change with them, so these are what a step must not write.
    fn generated_key_inputs(&self, table: &str, key: &str) -> Vec<String> {
        let shape = self.shape(table);
        if !shape.columns.iter().any(|c| c.generated && c.name == key) {
            return Vec::new();
        }
        let root: Option<i64> = self.unique_index(table, key).and_then(|idx| {
            self.conn
                .query_row(
                    "SELECT rootpage FROM sqlite_schema WHERE type = 'index' AND name = ?1",
                    [idx],
                    |r| r.get(0),
                )
                .ok()
        });
        let Some(root) = root else {
            return Vec::new(); // not unique: refused before this matters
        };
        let ordinary = shape.columns.iter().filter(|c| !c.generated);
        let mut inputs: Vec<(String, String)> =
            ordinary.map(|c| (c.name.clone(), quote(&c.name))).collect();
        if let Some(Some(rowid)) = &shape.rowid_sql {
            inputs.push(("ROWID".into(), rowid.clone()));
        }
        inputs
            .into_iter()
            .filter(|(_, sql)| self.rewrites_index(table, sql, root))
            .map(|(name, _)| name)
            .collect()
    }

    /// Whether `UPDATE table SET column = column` writes the index whose
    /// b-tree starts at page `root` (an `OpenWrite` of it in the program);
    /// true as well when that UPDATE does not compile, to be safe.
    fn rewrites_index(&self, table: &str, column_sql: &str, root: i64) -> bool {
        self.arm();
        let sql = format!(
            "EXPLAIN UPDATE main.{} SET {column_sql} = {column_sql}",
            quote(table)
        );
        let ops: rusqlite::Result<Vec<(String, i64, i64)>> =
            self.conn.prepare(&sql).and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(1)?, r.get(3)?, r.get(4)?)))?
                    .collect()
            });
        ops.map_or(true, |ops| {
            ops.iter()
                .any(|(op, p2, db)| op == "OpenWrite" && *p2 == root && *db == 0)
        })
    }

    /// Why a statement `sql` that failed to compile with `e` is refused,
    /// when the check refused it (see [`Seen::refusal`]) or it needs a
    /// function or a collation batchsse lacks.
    fn refusal(&self, e: &rusqlite::Error, sql: &str) -> Option<String> {
        self.seen
            .refusal(e)
            .or_else(|| app_function(e, sql))
            .or_else(|| {
                if self.missing.explains(e) {
                    return Some(self.missing.unreadable());
                }
                collation::missing_collation(e).then(|| {
                    self.missing
                        .refusal(&self.seen.tables(), &sqlite_message(e))
                })
            })
    }

    /// Turns a rehearsal error into a usage error, unless an incomplete
    /// schema copy could explain it.
    fn failure(&self, label: &str, sql: &str, e: &rusqlite::Error) -> Result<bool, UsageError> {
        if let Some(why) = self.refusal(e, sql) {
            return Err(UsageError::new(format!(
                "{label} {why}\n  in: {}",
                short(sql.trim(), 200)
            )));
        }
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

/// Whether the tables a step writes (as [`Rehearsal::take_writes`] gives
/// them) are all of the TEMP schema, its own schema table included (which
/// a `CREATE TEMP …` writes), and there is one at least.
pub(super) fn only_temp_writes(writes: &[String]) -> bool {
    !writes.is_empty()
        && writes.iter().all(|w| {
            w.split_once(OTHER_SCHEMA)
                .is_some_and(|(db, _)| db == "temp")
        })
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

/// Whether a chunked statement, as the authorizer `seen` it compile, is an
/// `UPDATE` of `table` that writes no other table itself (see
/// [`Chunk::contained`]). A `DELETE` is not seen, so never counts.
fn updates_only(table: &str, seen: &[Access]) -> bool {
    let own = |a: &&Access| a.write && a.by.is_none();
    let walked = |a: &&Access| !a.inserts && a.table.eq_ignore_ascii_case(table);
    let direct: Vec<&Access> = seen.iter().filter(own).collect();
    !direct.is_empty() && direct.iter().all(walked)
}

/// Whether a trigger the statement fires writes `table` (see
/// [`Chunk::fenced`]).
fn written_by_trigger(table: &str, seen: &[Access]) -> bool {
    seen.iter()
        .any(|a| a.write && a.by.is_some() && a.table.eq_ignore_ascii_case(table))
}

/// Refuses a chunked step that inserts into the table it walks (directly,
/// through a trigger or as an upsert) by a key other than the rowid: a row
/// it inserts with a key ahead of the walk, up to the largest key when the
/// step began, would be visited again and copied again. A rowid walk gives
/// new rows rowids above every existing one, past where the walk stops.
fn refuse_inserts_ahead(
    label: &str,
    table: &str,
    chunk: &Chunk,
    seen: &[Access],
) -> Result<(), UsageError> {
    if chunk.rowid {
        return Ok(());
    }
    let Some(Access { by, .. }) = inserted(table, seen) else {
        return Ok(());
    };
    let via = by
        .as_ref()
        .map_or_else(String::new, |t| format!(" (through trigger {})", quoted(t)));
    Err(UsageError::new(format!(
        "{label} inserts into {table}, the table it walks by {key}{via}: a row it inserts with a {key} ahead of the walk would be visited again, and copied again. Walk {table} by rowid (new rows get rowids past where the walk stops), or make it a plain step",
        table = shown(table),
        key = shown(&chunk.key)
    )))
}

/// What inserts into `table`, as the authorizer `seen` the statement
/// compile (itself, a trigger, an upsert), if anything does.
fn inserted<'a>(table: &str, seen: &'a [Access]) -> Option<&'a Access> {
    seen.iter()
        .find(|a| a.inserts && a.table.eq_ignore_ascii_case(table))
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

/// Whether `ATTACH` of `file` would fail for want of it, as the run opens
/// databases without creating them: not an in-memory or temporary one
/// (`:memory:`, `''`), nor a `file:` URI, whose path this does not read.
fn missing_database(file: &str) -> bool {
    let special = file.is_empty()
        || file == ":memory:"
        || file
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("file:"));
    !special && std::fs::metadata(file).is_err()
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

/// Why an `expect` that reads the table-valued function of pragma `p`
/// (lower case), which acts as it is read, is refused.
fn reads_acting(p: &str) -> String {
    format!(
        "reads pragma_{p}, which runs PRAGMA {p} as it is read, and that may write (PRAGMA optimize may run ANALYZE); leave it out of the expect"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan of many plain steps must not keep every column each one
    /// read or wrote until the end of the check.
    #[test]
    fn a_plain_step_s_column_accesses_are_not_kept() {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
            .unwrap();
        let r = Rehearsal::new(&db, |_| false).unwrap();
        for i in 0..3 {
            let sql = format!("UPDATE t SET v = v + 1 WHERE id = {i}");
            r.rehearse_plain("step", &sql).unwrap();
            let kept = r.seen.0.lock().unwrap().len();
            assert_eq!(kept, 0, "after step {i}");
        }
        // What a step writes is still told, for the checks that ask.
        assert!(r.take_writes().0.contains(&"t".to_owned()));
    }

    #[test]
    fn pragma_values_are_read_as_sqlite_reads_them() {
        for on in [
            "1",
            "1.5",
            "1x",
            "0x1",
            "0X0000001",
            "257",
            "00001",
            "2147483647",
            "ON",
            "yes",
            "True",
        ] {
            assert!(truthy(on), "{on}");
        }
        for off in [
            "0",
            "256",
            "0x",
            "0x100",
            "0x80000000",
            "0x123456789",
            "99999999999",
            "2147483648",
            " 1",
            "+1",
            "-1",
            "on ",
            "full",
            "",
        ] {
            assert!(!truthy(off), "{off}");
        }
        for off in ["off", "OF", "o", "memory", "MEM", "m"] {
            assert!(unjournaled(off), "{off}");
        }
        for kept in [
            "", "d", "delete", "p", "t", "truncate", "wal", "w", "offx", "memoryx",
        ] {
            assert!(!unjournaled(kept), "{kept}");
        }
    }
}
