//! Telling whether a table whose rows the record finds by their bare
//! rowid was made anew since: copied into a new table, the old one dropped
//! and the new one renamed, SQLite's way to change a column (Django,
//! Alembic's batch mode and Rails migrate so). The copy numbers its rows
//! anew, and an undo that went by the old rowids would put each row's old
//! values into another row, whose fingerprint a constant `SET` matches.
//!
//! Told by the table's b-tree, as a stopped walk tells it (see
//! `walk_probe`): the root page of each such table is kept, in the run's
//! probe row, with the first part recorded under it. In a file without
//! auto-vacuum only a `VACUUM` or a copy of the file moves a table's root,
//! and the probe rows tell those apart; with auto-vacuum, dropping any
//! table may move another's, so such a file is not asked.

use rusqlite::Connection;

use super::store::{self, PROBE};

/// After part `id` of `run` is written (in its transaction), with `rec`
/// its record: the root page of each table it finds by bare rowid, kept
/// with `id` where it differs from the last one kept.
pub fn note(conn: &Connection, run: &str, id: i64, rec: &[u8]) -> rusqlite::Result<()> {
    for table in store::bare_rowid_tables(rec)? {
        conn.prepare_cached(&format!(
            "UPDATE {PROBE} SET roots = json_insert(ifnull(roots, '[]'), '$[#]', json_array(?2, r.root, ?3))
             FROM (SELECT rootpage AS root FROM main.sqlite_schema
                   WHERE type = 'table' AND name = ?2 COLLATE NOCASE) AS r
             WHERE run = ?1 AND r.root IS NOT (
                 SELECT value ->> 1 FROM json_each(ifnull(roots, '[]'))
                 WHERE value ->> 0 = ?2 ORDER BY key DESC LIMIT 1)"
        ))?
        .execute(rusqlite::params![run, table, id])?;
    }
    Ok(())
}

/// The tables of part `id` of `run` (record `rec`) made anew since it was
/// recorded: their root page now is not the one kept for the part.
pub fn in_part(conn: &Connection, run: &str, id: i64, rec: &[u8]) -> rusqlite::Result<Vec<String>> {
    let tables: Vec<String> = store::bare_rowid_tables(rec)?.collect();
    if tables.is_empty() || !asked(conn, run)? {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for table in tables {
        if moved(conn, run, &table, Some(id))? {
            found.push(table);
        }
    }
    Ok(found)
}

/// The tables `run` found by bare rowid that were made anew since its last
/// part of each was recorded.
pub fn since_run(conn: &Connection, run: &str) -> rusqlite::Result<Vec<String>> {
    if !asked(conn, run)? {
        return Ok(Vec::new());
    }
    let tables: Vec<String> = conn
        .prepare(&format!(
            "SELECT DISTINCT value ->> 0 FROM {PROBE}, json_each(ifnull(roots, '[]')) WHERE run = ?1"
        ))?
        .query_map([run], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut found = Vec::new();
    for table in tables {
        if moved(conn, run, &table, None)? {
            found.push(table);
        }
    }
    Ok(found)
}

/// Whether the roots can tell: the file has no auto-vacuum, and no
/// `VACUUM` or copy of it since `run` (which move roots too, and which
/// the undo refuses or allows on their own terms).
fn asked(conn: &Connection, run: &str) -> rusqlite::Result<bool> {
    if !crate::run::db::has_column(conn, PROBE, "roots")? {
        return Ok(false);
    }
    let auto: i64 = conn.query_row("PRAGMA main.auto_vacuum", [], |r| r.get(0))?;
    Ok(auto == 0 && store::renumbered(conn, run)?.is_none())
}

/// Whether `table`'s root page now differs from the one kept for part
/// `upto` (the last one kept at or before it), or for the run's last part
/// (`None`). A table not there now is another error's to tell.
fn moved(conn: &Connection, run: &str, table: &str, upto: Option<i64>) -> rusqlite::Result<bool> {
    conn.prepare_cached(&format!(
        "SELECT (SELECT value ->> 1 FROM json_each(ifnull(p.roots, '[]'))
                 WHERE value ->> 0 = ?2 AND value ->> 2 <= ?3 ORDER BY key DESC LIMIT 1)
             <> (SELECT rootpage FROM main.sqlite_schema WHERE type = 'table' AND name = ?2 COLLATE NOCASE)
         FROM {PROBE} AS p WHERE run = ?1"
    ))?
    .query_row(
        rusqlite::params![run, table, upto.unwrap_or(i64::MAX)],
        |r| r.get::<_, Option<bool>>(0),
    )
    .map(|m| m.unwrap_or(false))
    .or_else(|e| match e {
        rusqlite::Error::QueryReturnedNoRows => Ok(false),
        e => Err(e),
    })
}

/// Why `run` cannot be taken back where `tables` were made anew.
pub fn why(tables: &[String], run: &str) -> String {
    let (table, was, its) = match tables.len() {
        1 => ("table", "was", "its"),
        _ => ("tables", "were", "their"),
    };
    format!(
        "{table} {} {was} made anew since run {run} was recorded (copied into a new table and renamed, as a migration that changes a column does), which numbers {its} rows anew, and the record finds {its} rows by rowid, so taking it back would put old values into other rows",
        crate::human::shown_list(tables)
    )
}

/// What to do then; `db` as the shell takes it.
pub fn what_now(db: &str, run: &str) -> String {
    format!(
        "this record can no longer be taken back safely: remove it with `batchsse undo clear --db {db} --run {}`. To keep this from happening, take runs back before such a migration, or give such tables an INTEGER PRIMARY KEY",
        crate::human::shell_word(run)
    )
}
