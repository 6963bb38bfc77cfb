//! What the undo record can key: each table of the main database with the
//! key that finds its rows again and the columns an undo restores, and
//! the steps `run --undo` refuses before anything runs.

use rusqlite::{Connection, OptionalExtension};

use super::codec::Layout;
use crate::error::UsageError;
use crate::human::{quoted, shown};
use crate::plan::{Plan, Step, first_keyword, quote};

/// The tables of the main database (not SQLite's, not batchsse's), each
/// with its layout or why it cannot be recorded.
pub fn shapes(conn: &Connection) -> rusqlite::Result<Vec<(String, Result<Layout, String>)>> {
    let tables: Vec<(String, String, bool)> = conn
        .prepare("SELECT name, type, wr FROM pragma_table_list WHERE schema = 'main'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (name, kind, without_rowid) in tables {
        if super::store::not_recorded(name.as_bytes()) {
            continue;
        }
        let shape = match kind.as_str() {
            "table" => shape(conn, &name, without_rowid)?,
            "virtual" => Err("it is a virtual table, which triggers cannot watch".into()),
            _ => continue, // views and shadow tables are written through others
        };
        out.push((name, shape));
    }
    Ok(out)
}

/// The layouts of the tables the record can key.
pub fn layouts(conn: &Connection) -> rusqlite::Result<Vec<Layout>> {
    Ok(shapes(conn)?
        .into_iter()
        .filter_map(|(_, s)| s.ok())
        .collect())
}

/// One column: name, declared type, position in the primary key (0: not
/// in it), whether it is NOT NULL.
type Column = (String, String, i64, bool);

fn shape(
    conn: &Connection,
    table: &str,
    without_rowid: bool,
) -> rusqlite::Result<Result<Layout, String>> {
    // Hidden columns (generated ones) cannot be written; they follow.
    let cols: Vec<Column> = conn
        .prepare(&format!(
            "SELECT name, type, pk, \"notnull\" FROM pragma_table_xinfo({}) WHERE hidden = 0",
            lit(table)
        ))?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    // `INTEGER PRIMARY KEY DESC` is an ordinary column with an index of
    // its own, not the rowid (SQLite's documented quirk).
    let pk_index: bool = conn.query_row(
        &format!(
            "SELECT count(*) FROM pragma_index_list({}) WHERE origin = 'pk'",
            lit(table)
        ),
        [],
        |r| r.get(0),
    )?;
    let mut pk: Vec<&Column> = cols.iter().filter(|c| c.2 > 0).collect();
    pk.sort_by_key(|c| c.2);
    let is_col = |n: &str| cols.iter().any(|c| c.0.eq_ignore_ascii_case(n));
    let rowid_name = crate::plan::free_rowid_name(is_col);
    let (key, int_key): (Vec<String>, bool) = match (without_rowid, pk.as_slice()) {
        (false, [one]) if one.1.eq_ignore_ascii_case("integer") && !pk_index => {
            (vec![one.0.clone()], true)
        }
        (false, _) if rowid_name.is_some() => (Vec::new(), true),
        (_, []) => {
            return Ok(Err(
                "its columns rowid, _rowid_ and oid hide its rowid, and it has no primary key"
                    .into(),
            ));
        }
        // A rowid table's other primary key may hold NULLs, which key no row.
        (false, keys) if keys.iter().any(|c| !c.3) => {
            return Ok(Err(
                "its columns rowid, _rowid_ and oid hide its rowid, and its primary key may hold NULLs (declare it NOT NULL)"
                    .into(),
            ));
        }
        (_, keys) => (keys.iter().map(|c| c.0.clone()).collect(), false),
    };
    let columns = cols
        .iter()
        .map(|c| c.0.clone())
        .filter(|c| !key.contains(c))
        .collect();
    // A free rowid name goes bare (no column has it); columns go quoted.
    let key = match (key.is_empty(), rowid_name) {
        (true, Some(n)) => vec![n.to_owned()],
        _ => key.iter().map(|k| quote(k)).collect(),
    };
    Ok(Ok(Layout {
        table: table.to_owned(),
        key,
        int_key,
        columns,
    }))
}

/// The collation each key column of `l`'s table is compared by in its
/// primary key, which keeps the key unique: a column's own may call two
/// keys equal (`k TEXT COLLATE NOCASE, PRIMARY KEY (k COLLATE BINARY)`
/// holds 'abc' and 'ABC'), and finding a row by it would find both. None
/// for a rowid, or a key column the primary key's index does not name.
pub fn key_collations(conn: &Connection, l: &Layout) -> rusqlite::Result<Vec<Option<String>>> {
    if l.int_key {
        return Ok(Vec::new());
    }
    let index: Option<String> = conn
        .query_row(
            "SELECT name FROM pragma_index_list(?1, 'main') WHERE origin = 'pk'",
            [&l.table],
            |r| r.get(0),
        )
        .optional()?;
    let columns: Vec<(String, String)> = match index {
        Some(index) => conn
            .prepare("SELECT name, coll FROM pragma_index_xinfo(?1, 'main') WHERE key = 1")?
            .query_map([index], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(l.key
        .iter()
        .map(|k| {
            let named = |(name, _): &&(String, String)| quote(name).eq_ignore_ascii_case(k);
            columns.iter().find(named).map(|(_, coll)| coll.clone())
        })
        .collect())
}

/// The columns (indices into `l.columns`) of the primary key a table
/// found by its bare rowid declares (`code TEXT PRIMARY KEY`): none for
/// any other. Each update of such a row records them too, unchanged or
/// not, so the fingerprint tells the row from another the application
/// adds at the same rowid (SQLite gives a new row the highest rowid plus
/// one, so deleting the last row and adding one reuses its rowid), whose
/// changed columns may well hold what the run wrote.
pub fn identity(conn: &Connection, l: &Layout) -> rusqlite::Result<Vec<usize>> {
    if !l.by_bare_rowid() {
        return Ok(Vec::new());
    }
    let pk: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info(?1, 'main') WHERE pk > 0")?
        .query_map([&l.table], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok((0..l.columns.len())
        .filter(|&j| pk.iter().any(|c| *c == l.columns[j]))
        .collect())
}

/// `changed` (column indices, rising) with the `identity` columns added,
/// when it holds any: see [`identity`].
pub fn with_identity(changed: &mut Vec<usize>, identity: &[usize]) {
    if changed.is_empty() || identity.is_empty() {
        return;
    }
    changed.extend_from_slice(identity);
    changed.sort_unstable();
    changed.dedup();
}

/// An SQL string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Refuses, before anything runs, a step `run --undo` cannot record: one
/// that changes the schema or runs outside a transaction, one that writes
/// a table that cannot be watched or keyed, and, unless the pre-update hook
/// records (it sees the rows REPLACE deletes; triggers and the update hook
/// do not), one that may replace rows.
pub fn refuse_unrecordable(conn: &Connection, plan: &Plan) -> Result<(), UsageError> {
    let taken = super::store::not_ours(conn).map_err(|e| super::store::unreadable(conn, &e))?;
    if let Some(why) = taken {
        return Err(UsageError::new(format!(
            "cannot record for --undo: {why}. Give it another name, or drop it if it holds nothing you need; or run without --undo"
        )));
    }
    crate::run::db::refuse_triggers_on(conn, &super::store::TABLES, "run without --undo")?;
    let schema = |e: rusqlite::Error| {
        UsageError::new(format!(
            "cannot read the tables' columns for --undo: {}",
            crate::run::run_time_message(conn, &e)
        ))
    };
    let shapes = shapes(conn).map_err(schema)?;
    let replacing = if super::preupdate() {
        None
    } else {
        Some(replacing_tables(conn).map_err(schema)?)
    };
    let most = conn
        .limit(rusqlite::limits::Limit::SQLITE_LIMIT_COLUMN)
        .unwrap_or(i32::MAX);
    for step in plan.steps.iter().filter(|s| s.undo) {
        let why = why_unrecordable(step, &shapes, replacing.as_deref()).or_else(|| {
            replacing
                .as_ref()
                .and_then(|_| too_wide(step, &shapes, most))
        });
        if let Some(why) = why {
            let opt_out = if plan.script {
                "A SQL script's statements cannot say \"undo\": false: put the script in a JSON plan to give that step \"undo\": false and run it unrecorded (an undo then stops at it)"
            } else {
                "Give the step \"undo\": false to run it unrecorded (an undo then stops at it)"
            };
            return Err(UsageError::new(format!(
                "step {} ({}) cannot be recorded for --undo: {why}. {opt_out}, or run without --undo",
                step.index + 1,
                quoted(&step.name)
            )));
        }
    }
    Ok(())
}

/// Refuses, before anything runs, to resume recorded a chunked step that
/// an earlier run applied in part without a record (a run without
/// `--undo`, or one whose record was cleared): an undo would take back
/// only the recorded part, and then clear the step's checkpoint, so
/// running the plan again would apply the other part twice.
pub fn refuse_unrecorded_part(
    conn: &Connection,
    plan: &Plan,
    resume: &crate::run::checkpoint::Resume,
) -> Result<(), UsageError> {
    for step in plan.steps.iter().filter(|s| s.undo) {
        if resume.chunk_position(step).is_none() || !recorded_by(conn, plan, step)?.is_empty() {
            continue;
        }
        return Err(UsageError::new(format!(
            "step {} ({}) was applied in part by a run that did not record it (one without --undo, or whose record was cleared), so an undo could not take it back whole, and running the plan again after one would apply that part twice. Give the step \"undo\": false to resume it unrecorded (an undo then stops at it), or resume without --undo",
            step.index + 1,
            quoted(&step.name)
        )));
    }
    Ok(())
}

/// Refuses, before anything runs, to resume without `--undo` a chunked
/// step that a recorded run applied in part: an undo would take back only
/// the recorded part, and then clear the step's checkpoint, so running the
/// plan again would apply the rest twice.
pub fn refuse_unrecorded_rest(
    conn: &Connection,
    plan: &Plan,
    resume: &crate::run::checkpoint::Resume,
) -> Result<(), UsageError> {
    for step in &plan.steps {
        if resume.chunk_position(step).is_none() {
            continue;
        }
        let runs = recorded_by(conn, plan, step)?;
        let Some(run) = runs.first() else {
            continue;
        };
        // Several runs recorded the step (a resume of a resume): `undo
        // clear` removes none of their records alone, only the plan's.
        let give_up = match runs.len() {
            1 => format!("--run {run}"),
            _ => format!("--plan {}", crate::human::shell_word(&plan.name)),
        };
        return Err(UsageError::new(format!(
            "step {} ({}) was applied in part by a run recorded for undo (run {run}), so resumed without --undo its rest would not be recorded: an undo would take back only the recorded part, and running the plan again after one would apply the rest twice. Resume with --undo; or take the part back first with `batchsse undo --db {db} --plan {}`, then run the plan again; or give up on the record with `batchsse undo clear --db {db} {give_up}`",
            step.index + 1,
            quoted(&step.name),
            crate::human::shell_word(&plan.name),
            db = crate::run::db::shell_word_of(conn),
        )));
    }
    Ok(())
}

/// The runs whose record holds parts of `step` of `plan`.
fn recorded_by(conn: &Connection, plan: &Plan, step: &Step) -> Result<Vec<String>, UsageError> {
    let runs = || -> rusqlite::Result<Vec<String>> {
        if !super::store::exists(conn)? {
            return Ok(Vec::new());
        }
        conn.prepare(
            "SELECT DISTINCT run FROM batchsse_undo WHERE plan = ?1 AND step = ?2 AND chunk <> ?3 ORDER BY run",
        )?
        .query_map(
            rusqlite::params![plan.name, step.index as i64, super::store::UNRECORDED],
            |r| r.get(0),
        )?
        .collect()
    };
    runs().map_err(|e| super::store::unreadable(conn, &e))
}

/// Without the pre-update hook, a step is staged (unless it is a chunked
/// `UPDATE` of its own rowid table only, which is read around): in a TEMP
/// table of three columns and, per written table, its key and its
/// columns' old and new values, within SQLite's `most` columns.
fn too_wide(step: &Step, shapes: &[(String, Result<Layout, String>)], most: i32) -> Option<String> {
    let layout = |t: &str| {
        let found = shapes.iter().find(|(n, _)| n.eq_ignore_ascii_case(t));
        found.and_then(|(_, s)| s.as_ref().ok())
    };
    let around = match (&step.chunk, step.writes.as_slice()) {
        (Some(c), [t]) => t.eq_ignore_ascii_case(&c.table) && layout(t).is_some_and(|l| l.int_key),
        _ => false,
    };
    if around {
        return None;
    }
    step.writes.iter().find_map(|t| {
        let l = layout(t)?;
        let width = 3 + l.key.len() + 2 * l.columns.len();
        (width > usize::try_from(most).unwrap_or(usize::MAX)).then(|| {
            format!(
                "it writes {}, whose {} columns are more than this build can record (one built without SQLite's pre-update hook, or with BATCHSSE_UNDO_HOOK=off, keeps each changed row's old and new values side by side, at most {most} columns)",
                shown(t),
                l.columns.len() + l.key.len()
            )
        })
    })
}

/// Tables where a write may replace rows: their definition resolves
/// conflicts by REPLACE (`UNIQUE … ON CONFLICT REPLACE`), or a trigger on
/// them uses `INSERT OR REPLACE` / `REPLACE INTO`.
pub(super) fn replacing_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let defs: Vec<(String, String, String)> = conn
        .prepare(
            "SELECT type, tbl_name, sql FROM sqlite_schema
             WHERE type IN ('table', 'trigger') AND sql IS NOT NULL",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok(defs
        .into_iter()
        .filter(|(kind, _, sql)| {
            let pair = |a: &str, b: &str| words(sql).windows(2).any(|w| w[0] == a && w[1] == b);
            match kind.as_str() {
                "table" => pair("CONFLICT", "REPLACE"),
                _ => pair("OR", "REPLACE") || pair("REPLACE", "INTO"),
            }
        })
        .map(|(_, table, _)| table)
        .collect())
}

/// The words of some SQL, upper-cased, its comments left out (one between
/// `OR` and `REPLACE` must not hide them). Quoted text is read as words
/// too, which can only refuse more.
fn words(sql: &str) -> Vec<String> {
    uncommented(sql)
        .to_ascii_uppercase()
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `sql` with each comment made a space; quoted strings and names stay
/// whole (a `--` inside one is no comment), as SQLite reads them.
fn uncommented(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(c) = rest.chars().next() {
        let (end, comment) = match c {
            '\'' | '"' | '`' | '[' => {
                let close = if c == '[' { ']' } else { c };
                (rest[1..].find(close).map_or(rest.len(), |i| i + 2), false)
            }
            '-' if rest.starts_with("--") => (rest.find('\n').unwrap_or(rest.len()), true),
            '/' if rest.starts_with("/*") => {
                (rest[2..].find("*/").map_or(rest.len(), |i| i + 4), true)
            }
            _ => (c.len_utf8(), false),
        };
        out.push_str(if comment { " " } else { &rest[..end] });
        rest = &rest[end..];
    }
    out
}

/// `replacing`: the tables that resolve conflicts by REPLACE, when
/// replacing cannot be recorded.
fn why_unrecordable(
    step: &Step,
    shapes: &[(String, Result<Layout, String>)],
    replacing: Option<&[String]>,
) -> Option<String> {
    let word = first_keyword(&step.sql);
    if step.temp_only {
        // Its TEMP tables go with the connection: nothing to take back.
        return None;
    }
    if step.autocommit {
        return Some(format!("{word} runs outside a transaction"));
    }
    // VALUES and EXPLAIN only read, as SELECT does: nothing to record.
    if !matches!(
        word.as_str(),
        "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "WITH" | "SELECT" | "VALUES" | "EXPLAIN"
    ) {
        return Some(format!(
            "{word} changes the schema, which the undo record cannot take back"
        ));
    }
    // Any statement of the step, after a WITH too.
    let replaces = words(&step.sql)
        .windows(2)
        .any(|w| w == ["OR", "REPLACE"] || w == ["REPLACE", "INTO"]);
    if replacing.is_some() && replaces {
        return Some(
            "REPLACE deletes the rows it replaces without telling the triggers and hooks that record them in this build (one built without SQLite's pre-update hook, or with BATCHSSE_UNDO_HOOK=off)"
                .into(),
        );
    }
    if replacing.is_some() && step.inserts_selected_rowids() {
        return Some(
            "it inserts what a SELECT gives and calls last_insert_rowid(), and in this build (one built without SQLite's pre-update hook, or with BATCHSSE_UNDO_HOOK=off) the triggers that record it make SQLite read the whole SELECT before inserting a row, so last_insert_rowid() would answer the insert before the statement for every row, not each row's insert before it as without --undo. A build with the pre-update hook records it as it runs without --undo (see the README's \"Take it back\")"
                .into(),
        );
    }
    for table in &step.writes {
        match table.split_once(crate::plan::OTHER_SCHEMA) {
            // A TEMP table goes with the connection: nothing to take back.
            Some(("temp", _)) => continue,
            Some((db, t)) => {
                let (db, t) = (shown(db), shown(t));
                return Some(format!("it writes {db}.{t}, in an attached database"));
            }
            None => {}
        }
        let name = shown(table);
        // SQLite's own tables (`sqlite_sequence`, `sqlite_stat1`) are left
        // out of the record: SQLite writes `sqlite_sequence` beside every
        // insert into an `AUTOINCREMENT` table, whose counter an undo
        // leaves as it is. A step's own write there would stay unseen.
        let own = table.as_bytes();
        if super::store::not_recorded(own) && !super::store::is_own(own) {
            return Some(format!(
                "it writes {name}, one of SQLite's own tables (sqlite_sequence holds the counters of AUTOINCREMENT tables), whose rows the undo record does not hold, so an undo would leave what the step wrote there"
            ));
        }
        match shapes.iter().find(|(n, _)| n.eq_ignore_ascii_case(table)) {
            Some((_, Err(why))) => return Some(format!("it writes {name}, and {why}")),
            // A table a step before makes is not there yet: it is keyed
            // when its step begins.
            None if super::store::is_own(table.as_bytes()) => {
                return Some(format!("it writes {name}, which is batchsse's own"));
            }
            _ => {}
        }
        if replacing.is_some_and(|r| r.iter().any(|n| n.eq_ignore_ascii_case(table))) {
            return Some(format!(
                "it writes {name}, whose definition (ON CONFLICT REPLACE) or a trigger (INSERT OR REPLACE) may replace rows, which deletes them without telling the triggers and hooks that record them in this build (one built without SQLite's pre-update hook, or with BATCHSSE_UNDO_HOOK=off)"
            ));
        }
    }
    None
}
