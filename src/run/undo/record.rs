//! Recording a run for undo: TEMP triggers on every table of the main
//! database, made on the batch's connection before each recorded step,
//! write each changed row's key and old (and new) values into
//! `batchsse_undo_row`; each chunk's range of those rows is then noted in
//! `batchsse_undo`, all inside the chunk's transaction.

use std::cell::Cell;

use rusqlite::{Connection, params};

use super::store::{self, UNRECORDED, op};
use crate::error::UsageError;
use crate::plan::{Plan, Step, first_keyword, quote, sqlite_message};

/// How a table's rows are found again: the key to record, and the other
/// columns to restore.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub table: String,
    /// The key as SQL: a rowid name no column hides, its `INTEGER PRIMARY
    /// KEY`, or the single primary key of a `WITHOUT ROWID` table.
    pub key: String,
    pub columns: Vec<String>,
}

/// The tables of the main database (not SQLite's, not batchsse's), each
/// with its shape or why it cannot be recorded.
pub fn shapes(conn: &Connection) -> rusqlite::Result<Vec<(String, Result<Shape, String>)>> {
    let tables: Vec<(String, String, bool)> = conn
        .prepare(
            "SELECT name, type, wr FROM pragma_table_list
             WHERE schema = 'main' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'batchsse_%'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (name, kind, without_rowid) in tables {
        let shape = match kind.as_str() {
            "table" => shape(conn, &name, without_rowid)?,
            "virtual" => Err("it is a virtual table, which triggers cannot watch".into()),
            _ => continue, // views and shadow tables are written through others
        };
        out.push((name, shape));
    }
    Ok(out)
}

fn shape(
    conn: &Connection,
    table: &str,
    without_rowid: bool,
) -> rusqlite::Result<Result<Shape, String>> {
    // (name, declared type, pk position, hidden: 0 = an ordinary column)
    let cols: Vec<(String, String, i64, i64)> = conn
        .prepare(&format!(
            "SELECT name, type, pk, hidden FROM pragma_table_xinfo({})",
            lit(table)
        ))?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let cols: Vec<_> = cols.into_iter().filter(|c| c.3 == 0).collect();
    let pk: Vec<&(String, String, i64, i64)> = cols.iter().filter(|c| c.2 > 0).collect();
    let is_col = |n: &str| cols.iter().any(|c| c.0.eq_ignore_ascii_case(n));
    let key_col: Option<String> = if without_rowid {
        match pk.as_slice() {
            [one] => Some(one.0.clone()),
            _ => {
                return Ok(Err(
                    "it is a WITHOUT ROWID table with a primary key of several columns, which the undo record cannot key yet".into(),
                ));
            }
        }
    } else {
        None
    };
    let key = match &key_col {
        Some(k) => quote(k),
        None => match ["rowid", "_rowid_", "oid"].iter().find(|n| !is_col(n)) {
            Some(n) => (*n).to_owned(),
            None => match pk.as_slice() {
                [one] if one.1.eq_ignore_ascii_case("integer") => quote(&one.0),
                _ => {
                    return Ok(Err(
                        "its columns rowid, _rowid_ and oid hide its rowid".into()
                    ));
                }
            },
        },
    };
    let columns = cols
        .iter()
        .map(|c| c.0.clone())
        .filter(|c| key_col.as_deref() != Some(c.as_str()) && quote(c) != key)
        .collect();
    Ok(Ok(Shape {
        table: table.to_owned(),
        key,
        columns,
    }))
}

/// An SQL string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The TEMP triggers that record changes to one table: `n` keeps names
/// apart.
fn triggers(n: usize, s: &Shape) -> String {
    let (t, k) = (lit(&s.table), &s.key);
    let on = format!("ON main.{}", quote(&s.table));
    let into = "INSERT INTO batchsse_undo_row(tbl, op, k, col, old, new)";
    let deleted = |row: &str| {
        if s.columns.is_empty() {
            format!(
                "{into} VALUES ({t}, {}, {row}.{k}, NULL, NULL, NULL);",
                op::DELETE
            )
        } else {
            let values: Vec<String> = s
                .columns
                .iter()
                .map(|c| {
                    format!(
                        "({t}, {}, {row}.{k}, {}, {row}.{}, NULL)",
                        op::DELETE,
                        lit(c),
                        quote(c)
                    )
                })
                .collect();
            format!("{into} VALUES {};", values.join(", "))
        }
    };
    let inserted = |row: &str| {
        format!(
            "{into} VALUES ({t}, {}, {row}.{k}, NULL, NULL, NULL);",
            op::INSERT
        )
    };
    let updated: String = s
        .columns
        .iter()
        .map(|c| {
            let q = quote(c);
            format!(
                "{into} SELECT {t}, {}, OLD.{k}, {}, OLD.{q}, NEW.{q} WHERE OLD.{q} IS NOT NEW.{q};",
                op::UPDATE,
                lit(c)
            )
        })
        .collect();
    // A changed key is the old row deleted and the new one inserted.
    format!(
        "CREATE TEMP TRIGGER batchsse_undo_i{n} AFTER INSERT {on} BEGIN {ins} END;
         CREATE TEMP TRIGGER batchsse_undo_d{n} AFTER DELETE {on} BEGIN {del} END;
         CREATE TEMP TRIGGER batchsse_undo_u{n} AFTER UPDATE {on} WHEN OLD.{k} IS NEW.{k} BEGIN {upd} END;
         CREATE TEMP TRIGGER batchsse_undo_m{n} AFTER UPDATE {on} WHEN OLD.{k} IS NOT NEW.{k} BEGIN {del_old} {ins_new} END;",
        ins = inserted("NEW"),
        del = deleted("OLD"),
        upd = if updated.is_empty() { "SELECT 1;".into() } else { updated },
        del_old = deleted("OLD"),
        ins_new = inserted("NEW"),
    )
}

/// Refuses, before anything runs, a step `run --undo` cannot record: one
/// that changes the schema or runs outside a transaction, one that may
/// replace rows (REPLACE deletes without telling triggers), or one that
/// writes a table the triggers cannot watch or key.
pub fn refuse_unrecordable(conn: &Connection, plan: &Plan) -> Result<(), UsageError> {
    let shapes = shapes(conn).map_err(|e| UsageError::new(sqlite_message(&e)))?;
    for step in plan.steps.iter().filter(|s| s.undo) {
        if let Some(why) = why_unrecordable(step, &shapes) {
            return Err(UsageError::new(format!(
                "step {} ({:?}) cannot be recorded for --undo: {why}. Give the step \"undo\": false to run it unrecorded (an undo then stops at it), or run without --undo",
                step.index + 1,
                step.name
            )));
        }
    }
    Ok(())
}

fn why_unrecordable(step: &Step, shapes: &[(String, Result<Shape, String>)]) -> Option<String> {
    let word = first_keyword(&step.sql);
    if step.autocommit {
        return Some(format!("{word} runs outside a transaction"));
    }
    if !matches!(
        word.as_str(),
        "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "WITH" | "SELECT"
    ) {
        return Some(format!(
            "{word} changes the schema, which the undo record cannot take back"
        ));
    }
    let upper = step.sql.to_ascii_uppercase();
    let words: Vec<&str> = upper
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .collect();
    if word == "REPLACE" || words.windows(2).any(|w| w == ["OR", "REPLACE"]) {
        return Some(
            "REPLACE deletes the rows it replaces without firing the triggers that record them"
                .into(),
        );
    }
    for table in &step.writes {
        if table.contains('.') && !table.starts_with("temp.") {
            return Some(format!("it writes {table}, in an attached database"));
        }
        if let Some((_, Err(why))) = shapes.iter().find(|(n, _)| n.eq_ignore_ascii_case(table)) {
            return Some(format!("it writes {table}, and {why}"));
        }
    }
    None
}

/// This run's recording: arms the triggers for a step, and notes each
/// chunk's records in the chunk's transaction.
pub struct Recorder<'c> {
    conn: &'c Connection,
    pub run_id: String,
    plan: String,
    /// Records written so far, for `finished`.
    bytes: Cell<u64>,
    chunk: Cell<i64>,
    armed: Cell<usize>,
}

impl<'c> Recorder<'c> {
    pub fn new(conn: &'c Connection, run_id: String, plan: &str) -> Self {
        Recorder {
            conn,
            run_id,
            plan: plan.to_owned(),
            bytes: Cell::new(0),
            chunk: Cell::new(0),
            armed: Cell::new(0),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    /// Makes the tables and (again: an earlier step may have changed the
    /// schema) the triggers, before `step` runs. A step that opts out is
    /// noted instead, so an undo stops at it.
    pub fn arm(&self, step: &Step) -> rusqlite::Result<()> {
        self.disarm();
        store::create(self.conn)?;
        if !step.undo {
            self.note(step, UNRECORDED, (1, 0), (0, 0))?;
            return Ok(());
        }
        let shapes = shapes(self.conn)?;
        let mut sql = String::new();
        let mut n = 0;
        for (_, s) in &shapes {
            if let Ok(s) = s {
                sql += &triggers(n, s);
                n += 1;
            }
        }
        self.conn.execute_batch(&sql)?;
        self.armed.set(n);
        self.chunk.set(0);
        Ok(())
    }

    /// Drops the triggers (the run's last step is over).
    pub fn disarm(&self) {
        for n in 0..self.armed.get() {
            for kind in ["i", "d", "u", "m"] {
                let _ = self.conn.execute_batch(&format!(
                    "DROP TRIGGER IF EXISTS temp.batchsse_undo_{kind}{n}"
                ));
            }
        }
        self.armed.set(0);
    }

    /// Where the next record will go: call before the chunk's work.
    pub fn mark(&self) -> rusqlite::Result<i64> {
        self.conn
            .prepare_cached("SELECT ifnull(max(rec), 0) FROM batchsse_undo_row")?
            .query_row([], |r| r.get(0))
    }

    /// Notes the records made since `mark` as the step's next chunk.
    pub fn chunk_done(&self, step: &Step, mark: i64, rows: u64) -> rusqlite::Result<()> {
        let last = self.mark()?;
        let no = self.chunk.get();
        self.chunk.set(no + 1);
        let bytes: f64 = self
            .conn
            .prepare_cached(
                "SELECT total(length(tbl) + ifnull(length(col), 0) + ifnull(length(CAST(k AS BLOB)), 0)
                   + ifnull(length(CAST(old AS BLOB)), 0) + ifnull(length(CAST(new AS BLOB)), 0) + 4)
                 FROM batchsse_undo_row WHERE rec BETWEEN ?1 AND ?2",
            )?
            .query_row(params![mark + 1, last], |r| r.get(0))?;
        self.bytes.set(self.bytes.get() + bytes as u64);
        self.note(step, no, (mark + 1, last), (rows, bytes as u64))
    }

    /// `sizes`: the rows the chunk changed and the bytes it recorded.
    fn note(
        &self,
        step: &Step,
        chunk: i64,
        (first, last): (i64, i64),
        sizes: (u64, u64),
    ) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO batchsse_undo (run, plan, step, name, chunk, first, last, rows, bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                self.run_id,
                self.plan,
                step.index as i64,
                step.name,
                chunk,
                first,
                last,
                sizes.0 as i64,
                sizes.1 as i64
            ])?;
        Ok(())
    }
}
