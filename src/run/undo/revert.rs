//! Applying one recorded part back: its entries newest first, each checked
//! for a later change by the application (a conflict) before the row is
//! put back as it was.

use std::collections::{HashMap, HashSet};

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use super::codec::{Entry, Layout, Record, op, print, put_value};
use crate::plan::quote;
use crate::run::expect::shown;

/// A row the undo left as the application has it.
pub struct Conflict<'r> {
    pub table: &'r str,
    /// The key's value; several columns' as one text, `(a, b)`.
    pub key: Value,
    pub why: String,
}

/// What to do with a conflict: `Err` stops the undo (and rolls the part
/// back).
pub type OnKept<'a> = dyn FnMut(Conflict<'_>) -> Result<(), String> + 'a;

/// Puts records back on one connection, keeping each kind of statement's
/// SQL.
pub struct Reverter<'c> {
    conn: &'c Connection,
    overwrite: bool,
    sql: HashMap<(usize, u8, Vec<usize>), [String; 2]>,
}

impl<'c> Reverter<'c> {
    pub fn new(conn: &'c Connection, overwrite: bool) -> Self {
        Reverter {
            conn,
            overwrite,
            sql: HashMap::new(),
        }
    }

    /// Applies `rec` newest first; returns the rows put back. Each row in
    /// conflict goes to `kept` once.
    pub fn apply(&mut self, rec: &Record, kept: &mut OnKept<'_>) -> Result<u64, String> {
        self.sql.clear();
        let sql = |e: rusqlite::Error| crate::run::db::run_time_message(self.conn, &e);
        // A row changed several times is one row: counted with sets, unless
        // the record promises one entry per row.
        let mut rows: HashSet<(usize, Vec<u8>)> = HashSet::new();
        let mut conflicts: HashSet<(usize, Vec<u8>)> = HashSet::new();
        let mut reverted = 0u64;
        for e in rec.entries.iter().rev() {
            let layout = &rec.tables[e.table];
            let why = self.entry(layout, e).map_err(sql)?;
            let id = || (e.table, encoded(&e.key));
            if !rec.unique {
                rows.insert(id());
            }
            match why {
                None => reverted += 1,
                Some(why) if rec.unique || conflicts.insert(id()) => kept(Conflict {
                    table: &layout.table,
                    key: key_value(&e.key),
                    why,
                })?,
                Some(_) => {}
            }
        }
        if !rec.unique {
            reverted = (rows.len() - conflicts.len()) as u64;
        }
        Ok(reverted)
    }

    /// Puts one entry back; why it is a conflict, if it is one and was
    /// not overwritten.
    fn entry(&mut self, l: &Layout, e: &Entry) -> rusqlite::Result<Option<String>> {
        let [read, write] = self.statements(l, e);
        let n = if e.op == op::DELETE {
            0
        } else {
            e.columns.len()
        };
        let now: Option<Vec<Value>> = self
            .conn
            .prepare_cached(&read)?
            .query_row(params_from_iter(&e.key), |r| {
                (0..n).map(|i| r.get(i)).collect()
            })
            .optional()?;
        let why = match (e.op, &now) {
            (op::DELETE, None) => None,
            (op::DELETE, Some(_)) => Some("the row the run deleted exists again".to_owned()),
            (op::INSERT, None) => return Ok(Some("the row the run inserted is gone".into())),
            (op::INSERT, Some(now)) => (Some(print(&encoded(now))) != e.print)
                .then(|| "the row the run inserted has been changed since".to_owned()),
            (_, None) => return Ok(Some("the row is gone".into())),
            (_, Some(now)) => (Some(print(&encoded(now))) != e.print).then(|| {
                let cols: Vec<String> = e
                    .columns
                    .iter()
                    .zip(now)
                    .map(|(&c, v)| format!("{} is {}", l.columns[c], shown(v)))
                    .collect();
                format!("{} now, not what the run wrote", cols.join(", "))
            }),
        };
        if why.is_some() && !self.overwrite {
            return Ok(why);
        }
        if e.op == op::DELETE && now.is_some() {
            // Overwritten: the application's row goes, the run's comes back.
            let delete = self.statements(
                l,
                &Entry {
                    op: op::INSERT,
                    columns: Vec::new(),
                    ..e.clone()
                },
            )[1]
            .clone();
            self.conn
                .prepare_cached(&delete)?
                .execute(params_from_iter(&e.key))?;
        }
        let mut stmt = self.conn.prepare_cached(&write)?;
        match e.op {
            op::INSERT => stmt.execute(params_from_iter(&e.key))?,
            op::DELETE => stmt.execute(params_from_iter(e.key.iter().chain(&e.old)))?,
            _ => stmt.execute(params_from_iter(e.old.iter().chain(&e.key)))?,
        };
        Ok(None)
    }

    /// The entry's two statements: one reads the row's columns the entry
    /// restores (for an insert, all of them; for a delete, whether the key
    /// exists), one puts it back.
    fn statements(&mut self, l: &Layout, e: &Entry) -> [String; 2] {
        let id = (e.table, e.op, e.columns.clone());
        if let Some(s) = self.sql.get(&id) {
            return s.clone();
        }
        let t = format!("main.{}", quote(&l.table));
        let by = if l.int_key {
            format!("{} = ?1", l.key[0])
        } else {
            let each: Vec<String> = (0..l.key.len())
                .map(|i| format!("{} IS ?{}", l.key[i], i + 1))
                .collect();
            each.join(" AND ")
        };
        let cols: Vec<String> = e.columns.iter().map(|&c| quote(&l.columns[c])).collect();
        let read = match e.op {
            _ if e.op == op::DELETE || cols.is_empty() => format!("SELECT 1 FROM {t} WHERE {by}"),
            _ => format!("SELECT {} FROM {t} WHERE {by}", cols.join(", ")),
        };
        let write = match e.op {
            op::INSERT => format!("DELETE FROM {t} WHERE {by}"),
            op::DELETE => {
                let names: Vec<&str> = l
                    .key
                    .iter()
                    .map(String::as_str)
                    .chain(cols.iter().map(String::as_str))
                    .collect();
                let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
                format!(
                    "INSERT INTO {t}({}) VALUES ({})",
                    names.join(", "),
                    marks.join(", ")
                )
            }
            _ => {
                let n = cols.len();
                let set: Vec<String> = cols
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c} = ?{}", i + 1))
                    .collect();
                let by: Vec<String> = (0..l.key.len())
                    .map(|i| {
                        let op = if l.int_key { "=" } else { "IS" };
                        format!("{} {op} ?{}", l.key[i], n + i + 1)
                    })
                    .collect();
                format!(
                    "UPDATE {t} SET {} WHERE {}",
                    set.join(", "),
                    by.join(" AND ")
                )
            }
        };
        let s = [read, write];
        self.sql.insert(id, s.clone());
        s
    }
}

/// Values' encodings, one after the other.
fn encoded(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        put_value(&mut out, v.into());
    }
    out
}

/// A key as one value: a composite key's as the text `(a, b)`.
fn key_value(key: &[Value]) -> Value {
    match key {
        [one] => one.clone(),
        _ => {
            let each: Vec<String> = key.iter().map(shown).collect();
            Value::Text(format!("({})", each.join(", ")))
        }
    }
}
