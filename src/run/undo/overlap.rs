//! Which runs recorded after the runs an undo takes back changed the same
//! tables. Rows both changed are no longer as the undone run left them, so
//! its undo reports them as conflicts, though no application wrote them;
//! and the newer run's undo, once it comes, puts back what the older run
//! wrote, so they carry its change with no record left (that undo marks
//! and counts them: see `store::kept_for_older`). Taken back newest
//! first, both go back whole: the undo says so before it begins.

use std::collections::{BTreeSet, HashMap};

use rusqlite::Connection;

use super::codec::layouts;
use super::store;

/// How much of a part the look reads first: its header (the tables'
/// names, keys and columns) fits unless the tables are many or wide.
const HEAD_BYTES: usize = 4096;

/// A run recorded after the undone ones that changed some of their tables.
pub struct Newer {
    pub run: String,
    pub plan: String,
    /// The tables both changed, by name.
    pub tables: Vec<String>,
    /// The runs of the undo but its oldest whose first part was recorded
    /// after this run's, newest first: taken back newest first, they come
    /// before it (a `--plan` undo of runs it came between).
    pub after: Vec<String>,
}

/// The runs other than `runs` (newest first) and not of `plan` (the undo
/// names those itself) that recorded a part after the first part of
/// `runs` and changed one of the tables `runs` changed; newest first.
pub fn newer_runs(conn: &Connection, runs: &[String], plan: &str) -> rusqlite::Result<Vec<Newer>> {
    let list = serde_json::to_string(runs).unwrap_or_else(|_| "[]".into());
    let after =
        "id > (SELECT min(id) FROM batchsse_undo WHERE run IN (SELECT value FROM json_each(?1)))
        AND run NOT IN (SELECT value FROM json_each(?1)) AND plan <> ?2";
    let theirs = parts(conn, after, rusqlite::params![list, plan])?;
    // Most undos have no newer run: their own parts are then not read.
    if theirs.is_empty() {
        return Ok(Vec::new());
    }
    let (mut ours, mut first) = (BTreeSet::new(), HashMap::new());
    let own = "run IN (SELECT value FROM json_each(?1))";
    for (id, run, _) in parts(conn, own, rusqlite::params![list])? {
        first.entry(run).or_insert(id);
        ours.extend(part_tables(conn, id)?);
    }
    // The oldest is left to the undo itself, after the newer run's.
    let ours_after = |their_first: i64| -> Vec<String> {
        runs[..runs.len().saturating_sub(1)]
            .iter()
            .filter(|r| first.get(*r).is_some_and(|&id| id > their_first))
            .cloned()
            .collect()
    };
    let mut found: Vec<Newer> = Vec::new();
    let mut their_first = HashMap::new();
    for (id, run, _) in &theirs {
        their_first.entry(run.clone()).or_insert(*id);
    }
    for (id, run, their_plan) in theirs.into_iter().rev() {
        let shared = part_tables(conn, id)?
            .into_iter()
            .filter(|t| ours.contains(t));
        match found.iter_mut().find(|n| n.run == run) {
            Some(n) => n.tables.extend(shared),
            None => found.push(Newer {
                after: ours_after(their_first[&run]),
                run,
                plan: their_plan,
                tables: shared.collect(),
            }),
        }
    }
    for n in &mut found {
        n.tables.sort();
        n.tables.dedup();
    }
    found.retain(|n| !n.tables.is_empty());
    Ok(found)
}

/// The parts (id, run, plan) where `cond` holds, with `params` bound,
/// oldest first.
fn parts(
    conn: &Connection,
    cond: &str,
    params: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Vec<(i64, String, String)>> {
    let sql = format!(
        "SELECT id, run, plan FROM {} WHERE {cond} ORDER BY id",
        store::CHUNKS
    );
    conn.prepare(&sql)?
        .query_map(params, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect()
}

/// The tables part `id` changed, read from its header: the first
/// [`HEAD_BYTES`] of it, or all of it where the header is longer. A part
/// with no record (stopped undo) or one it cannot read names none.
fn part_tables(conn: &Connection, id: i64) -> rusqlite::Result<Vec<String>> {
    let blob = match conn.blob_open(rusqlite::MAIN_DB, store::CHUNKS, "rec", id, true) {
        Ok(blob) => blob,
        Err(_) => return Ok(Vec::new()),
    };
    let mut head = vec![0u8; blob.len().min(HEAD_BYTES)];
    blob.read_at_exact(&mut head, 0)?;
    let found = match layouts(&head) {
        Ok(l) => l,
        Err(_) if blob.len() > head.len() => {
            let mut all = vec![0u8; blob.len()];
            blob.read_at_exact(&mut all, 0)?;
            layouts(&all).unwrap_or_default()
        }
        Err(_) => Vec::new(),
    };
    Ok(found.into_iter().map(|l| l.table).collect())
}
