//! Opening the database for a run, and saying who holds a lock when one
//! is met, before the run or during it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::error::UsageError;
use crate::plan::{self, sqlite_message};
use crate::platform::{Sight, open_by_others};

/// Opens an existing database read-write (never creating one) and checks it
/// is a SQLite file we may write.
pub fn open_db(path: &Path, busy_timeout: Duration) -> Result<Connection, UsageError> {
    open(path, busy_timeout, true)
}

/// [`open_db`] for `checkpoint clear` and `undo clear`, which write only
/// batchsse's own tables: a trigger of the user's on one of them (which a
/// run refuses) does not fire, so it cannot keep them from being cleared.
pub fn open_db_to_tidy(path: &Path, busy_timeout: Duration) -> Result<Connection, UsageError> {
    let conn = open(path, busy_timeout, true)?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        false,
    )
    .map_err(|e| UsageError::new(format!("cannot turn triggers off: {}", sqlite_message(&e))))?;
    Ok(conn)
}

/// [`open_db`] for a command that only reads (`checkpoint list`): a
/// read-only file is fine, and no write lock is taken.
pub fn open_db_to_read(path: &Path, busy_timeout: Duration) -> Result<Connection, UsageError> {
    open(path, busy_timeout, false)
}

/// The file of `conn`'s main database, as SQLite opened it; `None` for
/// one in memory. rusqlite's own `path()` gives none for a path that is not
/// UTF-8, which would hide the file from the look for other processes.
pub fn file_of(conn: &Connection) -> Option<std::path::PathBuf> {
    if let Some(p) = conn.path() {
        return (!p.is_empty()).then(|| p.into());
    }
    // SAFETY: the open connection's handle; SQLite's answer, a C string
    // (or NULL), lives while the connection does and is copied at once.
    let bytes = unsafe {
        let name = rusqlite::ffi::sqlite3_db_filename(conn.handle(), c"main".as_ptr());
        if name.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(name).to_bytes()
    };
    (!bytes.is_empty()).then(|| crate::platform::path_from_bytes(bytes))
}

/// The file of `conn` as one shell word, for the commands a message names
/// (`batchsse undo --db … --run …`): the path SQLite opened, bytes and
/// all, so the command pasted reaches that file from any folder.
pub fn shell_word_of(conn: &Connection) -> String {
    file_of(conn).map_or_else(|| "FILE".into(), |p| crate::human::shell_path(&p))
}

/// What holds `name` in the main database (`table`, `view`, `index`,
/// `trigger`), if anything does: a user's object may take the name of one
/// of batchsse's own tables.
pub fn object_kind(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        "SELECT type FROM main.sqlite_schema WHERE name = ?1 COLLATE NOCASE",
        [name],
        |r| r.get(0),
    )
    .optional()
}

/// Refuses, before anything runs, a trigger of the user's on one of
/// batchsse's own `tables` (batchsse makes none in the file): it would run
/// at every write batchsse makes there, fail the step with its own text if
/// it raises, or change what batchsse records. `or` names the way to run
/// without those tables.
pub(super) fn refuse_triggers_on(
    conn: &Connection,
    tables: &[&str],
    or: &str,
) -> Result<(), UsageError> {
    use rusqlite::OptionalExtension;
    let names = serde_json::to_string(tables).unwrap_or_default();
    let found: Option<(String, String)> = conn
        .query_row(
            "SELECT name, tbl_name FROM main.sqlite_schema WHERE type = 'trigger'
             AND lower(tbl_name) IN (SELECT value FROM json_each(?1)) ORDER BY name LIMIT 1",
            [names],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| {
            UsageError::new(format!(
                "cannot read the triggers of the database: {}",
                run_time_message(conn, &e)
            ))
        })?;
    let Some((trigger, table)) = found else {
        return Ok(());
    };
    Err(UsageError::new(format!(
        "the trigger {} is on {}, one of batchsse's own tables, where batchsse makes none: it would run at batchsse's writes there, and could fail the run or change what batchsse records. Nothing was run. Drop it (in the sqlite3 shell: DROP TRIGGER {}); or {or}",
        crate::human::quoted(&trigger),
        crate::human::shown(&table),
        plan::quote(&trigger)
    )))
}

/// What keeps `name`, one of batchsse's own tables, from being written as
/// batchsse writes it, if anything does: something else by that name (a
/// view), a column of `needed` missing, or a column not among `known`
/// that must be set (`NOT NULL`, no default), which no write of batchsse
/// sets. `None` when the name is free, or the table is as batchsse made it.
pub(super) fn not_as_made(
    conn: &Connection,
    name: &str,
    needed: &[&str],
    known: &[&str],
) -> rusqlite::Result<Option<String>> {
    match object_kind(conn, name)?.as_deref() {
        None => return Ok(None),
        Some("table") => {}
        Some(kind) => return Ok(Some(format!("{name} is a {kind}, not batchsse's table"))),
    }
    let columns: Vec<(String, bool)> = conn
        .prepare(
            "SELECT lower(name), \"notnull\" AND dflt_value IS NULL AND pk = 0 FROM pragma_table_info(?1)",
        )?
        .query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let missing: Vec<&str> = needed
        .iter()
        .filter(|c| !columns.iter().any(|(n, _)| n == *c))
        .copied()
        .collect();
    if !missing.is_empty() {
        return Ok(Some(format!(
            "the table {name} has no column {} (not as batchsse makes it)",
            missing.join(", ")
        )));
    }
    let unset = columns
        .iter()
        .find(|(n, must)| *must && !known.contains(&n.as_str()));
    Ok(unset.map(|(n, _)| {
        format!(
            "the table {name} has a column {} that must be set, which batchsse never sets (not as batchsse makes it)",
            crate::human::quoted(n)
        )
    }))
}

/// Refuses a `--db` that is missing, cannot be reached, or is no file.
fn is_a_file(path: &Path) -> Result<(), UsageError> {
    let shown = crate::human::shown_path(path);
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(UsageError::new(format!(
            "no such database: {shown} (batchsse never creates one; check the path)"
        ))),
        // A symbolic link loop, a folder on the way that may not be read.
        Err(e) => Err(UsageError::new(format!(
            "cannot reach the database {shown} ({e}); check the path and its folders' permissions"
        ))),
        Ok(m) if !m.is_file() => Err(UsageError::new(format!(
            "{shown} is not a file; --db takes a SQLite database file"
        ))),
        Ok(_) => Ok(()),
    }
}

fn open(path: &Path, busy_timeout: Duration, write: bool) -> Result<Connection, UsageError> {
    let shown = crate::human::shown_path(path);
    is_a_file(path)?;
    let access = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let flags = access | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)
        .map_err(|e| UsageError::new(format!("cannot open {shown}: {}", sqlite_message(&e))))?;
    wait_for_locks(&mut conn, path, busy_timeout)
        .map_err(|e| UsageError::new(format!("cannot set the busy timeout: {e}")))?;
    let locked = || {
        UsageError::new(format!(
            "{shown} is locked by another connection{}, still after --busy-timeout {} ms; wait for it to finish or raise --busy-timeout",
            lock_holders(path),
            busy_timeout.as_millis()
        ))
    };
    let is_lock = |e: &rusqlite::Error| {
        matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    };
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| {
        if is_lock(&e) {
            locked()
        } else if let Some(why) = wal_side_files_refused(&e, path) {
            UsageError::new(why)
        } else {
            UsageError::new(format!("{shown}: {}", plan::db_open_message(&e)))
        }
    })?;
    if !write {
        return Ok(conn);
    }
    let read_only = || {
        UsageError::new(format!(
            "{shown} is read-only; batchsse needs write access to the file and its directory (for the journal)"
        ))
    };
    if conn.is_readonly("main").unwrap_or(false) {
        return Err(read_only());
    }
    if !journal_can_be_made(&conn, path) {
        return Err(UsageError::new(format!(
            "{shown} is in a folder batchsse may not write to, where SQLite must make its journal; give write access to the folder (or move the file)"
        )));
    }
    // Take the write lock once (and let it go) so a database another
    // process holds is reported now, before anything runs, not mid-plan.
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK") {
        return Err(match e.sqlite_error_code() {
            _ if is_lock(&e) => locked(),
            // A WAL file's `-shm` or `-wal` that may not be written makes
            // the connection read-only although the file itself is not.
            Some(rusqlite::ErrorCode::ReadOnly) => wal_side_files_refused(&e, path)
                .map(UsageError::new)
                .unwrap_or_else(read_only),
            _ => UsageError::new(format!("{shown}: {}", plan::db_open_message(&e))),
        });
    }
    Ok(conn)
}

/// What to say when `e`, met reading the schema of the database at `path`,
/// is SQLite failing to open or write the `-wal` or `-shm` file of a WAL
/// database (a folder, or files, this user may not write to).
fn wal_side_files_refused(e: &rusqlite::Error, path: &Path) -> Option<String> {
    let cannot = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)
    );
    // The header's write and read versions are 2 in WAL mode.
    let mut header = [0u8; 20];
    let wal = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
        .is_ok_and(|()| header[18] == 2 && header[19] == 2);
    (cannot && wal).then(|| {
        format!(
            "{} is in WAL mode, where SQLite must make or write its -wal and -shm files beside it even to read, and it cannot ({}); give write access to its folder and those files, or run as their owner",
            crate::human::shown_path(path),
            sqlite_message(e)
        )
    })
}

/// Whether SQLite can make the rollback journal it needs at the first
/// write: taking the lock (below) makes none, so a folder it may not
/// write to would fail the run only mid-plan. A WAL file's side files, or
/// a kept journal, may be there already; those are left to SQLite.
fn journal_can_be_made(conn: &Connection, path: &Path) -> bool {
    // SQLite follows symlinks: its journal goes beside the file itself.
    let real = std::fs::canonicalize(path);
    let path = real.as_deref().unwrap_or(path);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap_or_default();
    let journal = {
        let mut p = path.as_os_str().to_owned();
        p.push("-journal");
        std::path::PathBuf::from(p)
    };
    let needs_new = match mode.to_ascii_lowercase().as_str() {
        "delete" => true,
        "truncate" | "persist" => !journal.exists(),
        _ => false,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    !needs_new || crate::platform::may_create_in(dir) != Some(false)
}

/// `--busy-timeout`, for messages (a custom handler leaves SQLite's own
/// `PRAGMA busy_timeout` at 0). One runner per process.
static BUSY_TIMEOUT_MS: AtomicU64 = AtomicU64::new(0);
/// `--busy-timeout` as the runner set it: SQLite's own `PRAGMA
/// busy_timeout` says 0 under the custom handler, and a connection opened
/// with that waited for no lock at all.
pub fn busy_timeout() -> Duration {
    Duration::from_millis(BUSY_TIMEOUT_MS.load(Ordering::Relaxed))
}

/// The longest the run's connection may wait for a lock now, in ms, below
/// `--busy-timeout` (see [`WaitCap`]); `u64::MAX` for no such bound.
static WAIT_CAP_MS: AtomicU64 = AtomicU64::new(u64::MAX);

/// How the run waits for another connection's lock: a retry every
/// millisecond until `--busy-timeout` has passed. SQLite's own handler backs
/// off to sleeps of up to 100 ms, so a runner using it would take the lock
/// back long after the application let it go, wasting the turn the
/// governor's yield just gave the application, and the next one too.
/// `path` is the file as the user named it, as messages name it.
fn wait_for_locks(conn: &mut Connection, path: &Path, timeout: Duration) -> rusqlite::Result<()> {
    BUSY_TIMEOUT_MS.store(timeout.as_millis() as u64, Ordering::Relaxed);
    let file = path.to_owned();
    let (mut since, mut said) = (Instant::now(), false);
    // SAFETY: only kept to ask SQLite about this connection from its own
    // busy handler, which SQLite calls only while the connection is open.
    let db = unsafe { conn.handle() } as usize;
    conn.busy_handler(Some(move |n: i32| {
        // SAFETY: `db` is the open connection calling this handler.
        let interrupted =
            unsafe { rusqlite::ffi::sqlite3_is_interrupted(db as *mut rusqlite::ffi::sqlite3) };
        // Ctrl-C interrupts the connection, which SQLite's busy loop does
        // not look at: without this a wait went on to --busy-timeout.
        let timeout = timeout.min(Duration::from_millis(WAIT_CAP_MS.load(Ordering::Relaxed)));
        if timeout.is_zero() || interrupted != 0 {
            return false;
        }
        if n == 0 {
            (since, said) = (Instant::now(), false);
        }
        std::thread::sleep(Duration::from_millis(1));
        let waited = since.elapsed();
        if !said && waited >= SAY_WAIT_AFTER && waited < timeout {
            said = true;
            say_waiting(&file, timeout);
        }
        waited < timeout
    }))
}

/// A wait for another connection's lock this long is said on stderr: a
/// terminal that shows nothing for --busy-timeout (5 s, or a minute) looks
/// hung.
const SAY_WAIT_AFTER: Duration = Duration::from_secs(1);

/// "shop.sqlite is locked by another connection (open in pid 4242
/// (python3)); waiting for it, at most --busy-timeout 5000 ms (Ctrl-C stops)".
fn say_waiting(file: &Path, timeout: Duration) {
    let (shown, holders) = (crate::human::shown_path(file), lock_holders(file));
    crate::errln!(
        "batchsse: {shown} is locked by another connection{holders}; waiting for it, at most --busy-timeout {} ms (Ctrl-C stops)",
        timeout.as_millis()
    );
}

/// Runs `f` with the run's connection giving up at once on a lock, as a
/// checkpoint that would otherwise block the application's writers must.
pub(super) fn without_waiting<T>(f: impl FnOnce() -> T) -> T {
    let _cap = WaitCap::new(Duration::ZERO);
    f()
}

/// How long the tidy-up and wording at the end of a run or an undo (the
/// journal mode put back, what the checkpoint holds) wait for a lock:
/// after a step that failed waiting one out, each of those reads and
/// writes waited it out again, and the run ended only after five times
/// --busy-timeout. The undo record's own bookkeeping still waits it out.
pub(super) const WRAP_UP_WAIT: Duration = Duration::from_millis(250);

/// Runs `f` with the run's connection waiting at most `cap` for a lock.
pub(super) fn waiting_at_most<T>(cap: Duration, f: impl FnOnce() -> T) -> T {
    let _cap = WaitCap::new(cap);
    f()
}

/// While held, the run's connection waits at most `cap` for a lock (less
/// than --busy-timeout), as it was before once dropped.
struct WaitCap(u64);

impl WaitCap {
    fn new(cap: Duration) -> WaitCap {
        let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        WaitCap(WAIT_CAP_MS.swap(ms, Ordering::Relaxed))
    }
}

impl Drop for WaitCap {
    fn drop(&mut self) {
        WAIT_CAP_MS.store(self.0, Ordering::Relaxed);
    }
}

/// Names the other processes that have the database (or its journal) open,
/// as far as the system tells (see `platform`); empty where it cannot.
fn lock_holders(path: &Path) -> String {
    let Sight::Seen(others) = open_by_others(path) else {
        return String::new();
    };
    let holders: Vec<String> = others
        .into_iter()
        .map(|(pid, comm)| format!("pid {pid} ({comm})"))
        .collect();
    if holders.is_empty() {
        String::new()
    } else {
        format!(" (open in {})", holders.join(", "))
    }
}

/// `table`, one of batchsse's own, could not be read (`e`): the file
/// damaged, locked or unreadable, said as [`run_time_message`] says it;
/// else most likely the table was altered by hand, and `fix` says what to
/// do about that.
pub(super) fn unreadable(
    conn: &Connection,
    table: &str,
    e: &rusqlite::Error,
    fix: &str,
) -> UsageError {
    use rusqlite::ErrorCode::*;
    let by_hand = match e.sqlite_error_code() {
        Some(
            DatabaseCorrupt | DatabaseBusy | DatabaseLocked | ReadOnly | CannotOpen | DiskFull
            | SystemIoFailure | NotADatabase,
        ) => String::new(),
        _ => format!("; it may have been altered by hand ({fix})"),
    };
    let why = match e {
        // batchsse's own query, which tells the reader nothing.
        rusqlite::Error::SqlInputError { msg, .. } => crate::human::one_line(msg).into_owned(),
        e => run_time_message(conn, e),
    };
    UsageError::new(format!("cannot read {table}: {why}{by_hand}"))
}

/// An error met while running: SQLite's text, and for a lock another
/// process held past the busy timeout, who holds it and what to do, as
/// [`open_db`] says before the run.
pub fn run_time_message(conn: &Connection, e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy) => {}
        Some(rusqlite::ErrorCode::DiskFull) => {
            return format!(
                "{}: the disk that holds the database, its journal or the temporary folder has no room left (or the file reached a PRAGMA max_page_count); free some space",
                sqlite_message(e)
            );
        }
        Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            return format!(
                "{}: the file is damaged; restore it from a backup (in the sqlite3 shell, `PRAGMA integrity_check` says where it is damaged and `.recover` saves what can be read)",
                sqlite_message(e)
            );
        }
        // The file is open already: what cannot be opened now is the
        // journal SQLite makes beside it.
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen) => {
            return format!(
                "{}: batchsse needs write access to the file and to its directory (SQLite makes its journal there)",
                sqlite_message(e)
            );
        }
        _ => return sqlite_message(e),
    }
    let holders = conn
        .path()
        .map(|p| lock_holders(Path::new(p)))
        .unwrap_or_default();
    // With no other process in sight, the lock may be the run's own.
    if let Some(name) = attached_again(conn).filter(|_| holders.is_empty()) {
        return format!(
            "{}: the database the run works on is attached again as {}, and SQLite locks that name apart from main, so a step that uses it waits on the run's own transaction, however long --busy-timeout is; use main's tables instead of {}'s",
            sqlite_message(e),
            crate::human::quoted(&name),
            name
        );
    }
    // The connection's own setting: --busy-timeout, unless a plan's PRAGMA
    // changed it.
    let waited: i64 = conn
        .pragma_query_value(None, "busy_timeout", |r| r.get::<_, i64>(0))
        .ok()
        .filter(|ms| *ms > 0)
        .unwrap_or_else(|| BUSY_TIMEOUT_MS.load(Ordering::Relaxed) as i64);
    format!(
        "{} by another connection{holders}, still after --busy-timeout {waited} ms; wait for it to finish or raise --busy-timeout",
        sqlite_message(e)
    )
}

/// The name a step attached the run's own file under, if one did.
fn attached_again(conn: &Connection) -> Option<String> {
    // Asked while another may hold the lock: it must not wait it out again.
    let _cap = WaitCap::new(Duration::ZERO);
    let main = std::fs::canonicalize(conn.path()?).ok()?;
    let mut stmt = conn
        .prepare("SELECT name, file FROM pragma_database_list WHERE seq > 1")
        .ok()?;
    let found = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .ok()?
        .flatten()
        .find(|(_, file)| std::fs::canonicalize(file).is_ok_and(|f| f == main));
    found.map(|(name, _)| name)
}

/// Whether `table` of `main` has a column `column` (SQLite's names are
/// told apart without case): for batchsse's own tables, made by an
/// earlier release without a column a later one added.
pub(super) fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM pragma_table_info(?1) WHERE lower(name) = lower(?2)")?
        .exists([table, column])
}

/// Sets what `last_insert_rowid()` answers on `conn`: the plan's own
/// statements see the rowid their last insert made, not one of the run's
/// own writes made since (the checkpoint row after each step or chunk).
/// A step that inserts an order and the next that inserts its lines with
/// `last_insert_rowid()` got the checkpoint's rowid instead.
pub(super) fn set_last_rowid(conn: &Connection, rowid: i64) {
    // SAFETY: the handle is `conn`'s, open for as long as it is borrowed;
    // the call only sets a value of the connection.
    unsafe { rusqlite::ffi::sqlite3_set_last_insert_rowid(conn.handle(), rowid) }
}
