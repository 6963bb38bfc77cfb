//! Collations a file's schema names that batchsse lacks: an application's
//! own (Android's `LOCALIZED`, say). The check's copy is built with
//! stand-ins, which are then withdrawn, so a statement that needs one fails
//! to compile on the copy as it would in the run, and is refused up front.

use rusqlite::Connection;

use crate::human::shown;

/// The collations the copy's schema names that batchsse lacks, and the
/// indexes they order.
pub(super) struct Missing {
    names: Vec<String>,
    indexes: Vec<Collated>,
}

/// An index of the copy that a collation batchsse lacks orders.
struct Collated {
    table: String,
    index: String,
    /// What made it, as `PRAGMA index_list` says: `c` (CREATE INDEX), `u`
    /// (a UNIQUE constraint), `pk` (the PRIMARY KEY).
    origin: String,
    collation: String,
}

impl Collated {
    /// As a person knows it: by its name, or by the constraint that made
    /// it (whose index has a name SQLite made up, and cannot be dropped).
    fn describe(&self) -> String {
        let Collated {
            table,
            index,
            origin,
            collation,
        } = self;
        let (table, index) = (shown(table), shown(index));
        let collation = shown(collation);
        match origin.as_str() {
            "pk" => format!("the PRIMARY KEY of {table} ({collation})"),
            "u" => format!("a UNIQUE constraint of {table} ({collation})"),
            _ => format!("{table}.{index} ({collation})"),
        }
    }
}

/// Lets the copy's schema be built whatever collations it names: one this
/// build lacks is given a stand-in in binary order (the copy holds no rows,
/// so the order never matters), until [`withdraw`].
pub(super) fn stand_in(conn: &Connection) {
    let _ = conn.collation_needed(|conn, name| conn.create_collation(name, |a, b| a.cmp(b)));
}

/// Removes the stand-ins, so that what needs them no longer compiles
/// (as in the run, whose connections have SQLite's own collations only);
/// returns their names and the indexes they order.
pub(super) fn withdraw(conn: &Connection) -> Missing {
    let _ = conn.collation_needed(|_, _| Ok(()));
    let names: Vec<String> = collations(conn)
        .into_iter()
        .filter(|name| !SQLITE_OWN.iter().any(|o| o.eq_ignore_ascii_case(name)))
        .collect();
    let indexes = names.iter().flat_map(|n| ordered_by(conn, n)).collect();
    for name in &names {
        let _ = conn.remove_collation(name.as_str());
    }
    Missing { names, indexes }
}

/// The collations built into SQLite, the only ones the run's connections
/// have.
const SQLITE_OWN: [&str; 3] = ["BINARY", "NOCASE", "RTRIM"];

/// The collations a connection has, as `PRAGMA collation_list` names them.
fn collations(conn: &Connection) -> Vec<String> {
    conn.prepare("SELECT name FROM pragma_collation_list")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .unwrap_or_default()
}

/// The indexes of `main` that `collation` orders: those a UNIQUE or
/// PRIMARY KEY constraint made included, a `WITHOUT ROWID` table's own,
/// which `sqlite_schema` does not list, too.
fn ordered_by(conn: &Connection, collation: &str) -> Vec<Collated> {
    conn.prepare(
        "SELECT DISTINCT t.name, i.name, i.origin FROM pragma_table_list AS t,
           pragma_index_list(t.name) AS i, pragma_index_xinfo(i.name) AS x
         WHERE t.schema = 'main' AND t.type = 'table' AND x.coll = ?1 COLLATE NOCASE
         ORDER BY t.name, i.name",
    )
    .and_then(|mut s| {
        s.query_map([collation], |r| {
            Ok(Collated {
                table: r.get(0)?,
                index: r.get(1)?,
                origin: r.get(2)?,
                collation: collation.to_owned(),
            })
        })?
        .collect()
    })
    .unwrap_or_default()
}

/// Whether a statement failed to compile for want of a collation.
pub(crate) fn missing_collation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_ERROR_MISSING_COLLSEQ
    )
}

impl Missing {
    /// Whether SQLite's "no query solution" comes of such a collation: a
    /// `WITHOUT ROWID` table is stored in the order of its PRIMARY KEY, so
    /// one whose key is ordered by a collation SQLite lacks cannot be read
    /// at all.
    pub(super) fn explains(&self, e: &rusqlite::Error) -> bool {
        self.indexes.iter().any(|c| c.origin == "pk")
            && super::sqlite_message(e).contains("no query solution")
    }

    /// Why a statement that [`Missing::explains`] cannot compile is refused.
    pub(super) fn unreadable(&self) -> String {
        let keys: Vec<String> = self
            .indexes
            .iter()
            .filter(|c| c.origin == "pk")
            .map(Collated::describe)
            .collect();
        format!(
            "reads a table SQLite cannot read without a collation batchsse does not have: a WITHOUT ROWID table is stored in the order of its PRIMARY KEY, and {} ordered by one. {APP_OWN} Run this step from the application. Nothing was run",
            if keys.len() == 1 {
                format!("{} is", keys[0])
            } else {
                format!("{} are", keys.join(", "))
            }
        )
    }

    /// Why a statement that needs a collation batchsse lacks is refused
    /// (SQLite's `message` names it): the indexes such a collation orders
    /// on the tables it `writes`, when there are any, or else what else
    /// needs one.
    pub(super) fn refusal(&self, writes: &[String], message: &str) -> String {
        let written: Vec<String> = self
            .indexes
            .iter()
            .filter(|c| writes.iter().any(|w| w.eq_ignore_ascii_case(&c.table)))
            .map(Collated::describe)
            .collect();
        if written.is_empty() {
            return format!(
                "needs a collation batchsse does not have ({message}): a column it compares is declared with it, a COLLATE in it names it, or it reads an index ordered by it (SQLite counts a bare `SELECT count(*) FROM t` on t's smallest index; `FROM t NOT INDEXED` counts the table). {APP_OWN} Compare by one of SQLite's own ({}), or run this step from the application. Nothing was run",
                SQLITE_OWN.join(", ")
            );
        }
        format!(
            "needs a collation batchsse does not have ({message}): it writes (itself, or by a trigger or foreign-key action) a table with an index ordered by one: {}. SQLite keeps an index in order for every row inserted or deleted and every indexed column updated, and a comparison with a column declared with the collation needs it too. {APP_OWN} Run this step from the application; or change only columns those indexes leave out, comparing without the collation; or drop such an index (not a constraint's) first and have the application create it again after the run. Nothing was run",
            written.join(", ")
        )
    }

    /// Why a `VACUUM` of `main` is refused when the schema names such a
    /// collation: it makes every table and index anew, as their SQL says,
    /// which compiles on the copy but fails in the run.
    pub(super) fn vacuum_refusal(&self, sql: &str) -> Option<String> {
        let names = crate::human::shown_list(&self.names);
        let schema = sql
            .split_whitespace()
            .nth(1)
            .map(|w| w.trim_end_matches(';'));
        let of_main = schema.is_none_or(|w| {
            ["", "main", "into"]
                .iter()
                .any(|m| w.eq_ignore_ascii_case(m))
        });
        (of_main && !names.is_empty()).then(|| {
            format!(
                "is a VACUUM, which makes every table and index of the file anew, as the schema says, and the schema names collations batchsse does not have: {names}. {APP_OWN} Leave the VACUUM to the application. Nothing was run"
            )
        })
    }
}

/// Why `sql`, a query that failed to compile with `e`, cannot run, if it
/// failed for want of collations batchsse does not have: it compiles on
/// `conn` once they are stood in for. `conn` is a fresh connection to the
/// same file, which has not read its schema yet: a `WITHOUT ROWID` table
/// keyed by such a collation is readable only if the stand-in was there
/// as the schema was read. Said after what names the query
/// (`--throttle-query needs …`), ending with what to do.
pub(crate) fn query_refusal(conn: &Connection, sql: &str, e: &rusqlite::Error) -> Option<String> {
    stand_in(conn);
    let compiles = conn.prepare(sql).is_ok();
    let missing = withdraw(conn);
    if !compiles || missing.names.is_empty() {
        return None;
    }
    let mut names = needed_by(conn, sql, &missing.names);
    if names.is_empty() {
        names = missing.names.clone();
    }
    // SQLite names the collation it lacks, unless it cannot read a
    // table at all ("no query solution"): one keyed by such a collation.
    let keys: Vec<String> = missing
        .indexes
        .iter()
        .filter(|c| !missing_collation(e) && c.origin == "pk" && names.contains(&c.collation))
        .map(Collated::describe)
        .collect();
    let unreadable = match keys.as_slice() {
        [] => String::new(),
        [one] => format!(
            " ({one} orders a WITHOUT ROWID table, which SQLite cannot read at all without it)"
        ),
        many => format!(
            " ({} order WITHOUT ROWID tables, which SQLite cannot read at all without it)",
            many.join(", ")
        ),
    };
    let (what, it) = match names.len() {
        1 => ("a collation", "it"),
        _ => ("collations", "one"),
    };
    Some(format!(
        "needs {what} batchsse does not have: {}. A column it compares is declared with {it}, a COLLATE in it names {it}, or it reads a table or index ordered by {it}{unreadable}. {}. Compare by one of SQLite's own ({}), named in the query (`WHERE name COLLATE NOCASE = 'x'`), or read other columns or tables",
        crate::human::shown_list(&names),
        app_function!(),
        SQLITE_OWN.join(", ")
    ))
}

/// Of the collations `names` (none of them on `conn`), those without
/// which `sql` does not compile when the others are stood in for.
fn needed_by(conn: &Connection, sql: &str, names: &[String]) -> Vec<String> {
    let needed = |name: &&String| {
        for other in names.iter().filter(|o| o != name) {
            let _ = conn.create_collation(other.as_str(), |a, b| a.cmp(b));
        }
        let fails = conn.prepare(sql).is_err();
        for other in names {
            let _ = conn.remove_collation(other.as_str());
        }
        fails
    };
    names.iter().filter(needed).cloned().collect()
}

/// Why a chunk key declared with such a collation is refused.
pub(super) fn key_refusal(table: &str, key: &str, message: &str) -> String {
    format!(
        "chunk.key {} of {} is declared with a collation batchsse does not have ({message}), and the walk orders and compares the keys by it, whatever the step compares by. {APP_OWN} Chunk by rowid (leave \"key\" out) or by another unique key, or run this step from the application. Nothing was run",
        crate::human::quoted(key),
        shown(table)
    )
}

/// What a collation that is not SQLite's own is, for any statement that
/// needs one.
macro_rules! app_function {
    () => {
        "Such a collation is a comparison function an application registers on its own connections: it is not stored in the file, and batchsse cannot run it"
    };
}
use app_function;

/// [`app_function`], and why a step that needs such a collation cannot run.
const APP_OWN: &str = concat!(app_function!(), ", so the step would fail when it ran.");
