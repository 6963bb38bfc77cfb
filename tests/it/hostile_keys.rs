//! Walks by a key other than the rowid whose order is not what it was:
//! a key column whose collation or type changed between a stop and the
//! resume, and keys that compare equal under the column's collation
//! though its unique index keeps them apart. None may skip or repeat a
//! row, nor finish ok with counts that do not add up.

use serde_json::json;

use crate::util::*;

/// The plan bumping `v` of every row of `t`, walked by `k` in chunks of 5.
fn bump_by_k(db: &TempDb) -> std::path::PathBuf {
    let plan = json!({"name": "bump", "steps": [{
        "name": "bump",
        "sql": "UPDATE t SET v = v + 1 WHERE k BETWEEN :lo AND :hi",
        "chunk": {"table": "t", "key": "k", "size": 5},
    }]});
    db.file("plan.json", &plan.to_string())
}

/// Runs `plan` on `db` with chunks of 5, no server, plain progress.
fn run_bump(db: &TempDb, plan: &std::path::Path) -> (i32, String) {
    let (code, _, err) = run(&run_args(
        db,
        path_str(plan),
        &words("--no-serve --progress plain --batch-size 5"),
    ));
    (code, err)
}

/// `t` keyed by `k` declared `decl`, holding `keys`, stopped part-way by
/// a trigger of the test's at the row whose `k` is `stop` (dropped
/// after): the chunks before it are committed and checkpointed.
fn stopped(decl: &str, keys: &[&str], stop: &str) -> (TempDb, std::path::PathBuf) {
    let db = TempDb::with_sql(&format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, k {decl} UNIQUE, v INTEGER NOT NULL DEFAULT 0);
         CREATE TRIGGER stop BEFORE UPDATE ON t WHEN old.k = {stop}
         BEGIN SELECT RAISE(ABORT, 'stopped for the test'); END;"
    ));
    for k in keys {
        db.conn()
            .execute(&format!("INSERT INTO t(k) VALUES ({k})"), [])
            .unwrap();
    }
    let plan = bump_by_k(&db);
    let (code, err) = run_bump(&db, &plan);
    assert_eq!(code, 1, "{err}");
    db.conn().execute_batch("DROP TRIGGER stop").unwrap();
    (db, plan)
}

/// `(rows bumped once, rows bumped never or twice)` of `t`.
fn spread(db: &TempDb) -> (i64, i64) {
    (
        db.query_i64("SELECT count(*) FROM t WHERE v = 1"),
        db.query_i64("SELECT count(*) FROM t WHERE v <> 1"),
    )
}

/// Makes `t` again with `k` declared `decl`, its rows copied, as SQLite's
/// documented way to change a column's type or collation does.
fn rebuild(db: &TempDb, decl: &str) {
    db.conn()
        .execute_batch(&format!(
            "CREATE TABLE t2(id INTEGER PRIMARY KEY, k {decl} UNIQUE, v INTEGER NOT NULL DEFAULT 0);
             INSERT INTO t2 SELECT id, k, v FROM t;
             DROP TABLE t;
             ALTER TABLE t2 RENAME TO t;"
        ))
        .unwrap();
}

/// 'A'..'Z' then 'ax'..'zx', as SQL literals: in BINARY order the upper
/// case first, under NOCASE each letter's two keys side by side.
fn letters() -> Vec<String> {
    let upper = (b'A'..=b'Z').map(|c| format!("'{}'", c as char));
    let lower = (b'a'..=b'z').map(|c| format!("'{}x'", c as char));
    upper.chain(lower).collect()
}

#[test]
fn a_resume_after_the_key_s_collation_changed_is_refused() {
    // 'A'..'Z' then 'ax'..'zx' in BINARY order; the run stops at 'N',
    // having bumped 'A'..'J'. Under NOCASE the walk after 'J' would go
    // 'jx', 'K', 'kx', …: 'ax'..'ix', never bumped, lie before it.
    let keys = letters();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (db, plan) = stopped("TEXT", &keys, "'N'");
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE v = 1"), 10);
    rebuild(&db, "TEXT COLLATE NOCASE");
    let before = sha256(&db.path);
    let (code, err) = run_bump(&db, &plan);
    assert_eq!(code, 2, "the resume must not walk by another order: {err}");
    assert!(
        err.contains("orders k otherwise now")
            && err.contains("BINARY")
            && err.contains("NOCASE")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(sha256(&db.path), before, "nothing written");
    // Put back as it was, the resume goes on and bumps every row once.
    rebuild(&db, "TEXT");
    let (code, err) = run_bump(&db, &plan);
    assert_eq!(code, 0, "{err}");
    assert_eq!(spread(&db), (52, 0), "{err}");
}

#[test]
fn a_resume_after_the_key_s_type_changed_is_refused() {
    // Integers 1..40, stopped at 21 (1..20 bumped). Made TEXT, the keys
    // are '1'..'40' in text order: after the last key, 20 (compared as
    // '20'), come '21'..'29', '3', '30'..'39', '4', '40': 3 and 4, bumped
    // already, would be bumped again.
    let keys: Vec<String> = (1..=40).map(|i| i.to_string()).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (db, plan) = stopped("INTEGER", &keys, "21");
    rebuild(&db, "TEXT");
    let before = sha256(&db.path);
    let (code, err) = run_bump(&db, &plan);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("INTEGER") && err.contains("TEXT"), "{err}");
    assert_eq!(sha256(&db.path), before, "nothing written");
}

#[test]
fn a_walk_by_a_key_with_peers_under_its_collation_counts_every_row_it_visits() {
    // k is NOCASE, kept unique by a BINARY index: 'a' and 'A' are two rows
    // the walk's comparisons find equal. A chunk's BETWEEN holds both;
    // the walk stepped over one. The step, done, must say it visited all
    // 78 rows of 78, as it changed them, in chunks of any size.
    for size in ["1", "2", "3"] {
        let db = TempDb::with_sql(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT COLLATE NOCASE, v INTEGER NOT NULL DEFAULT 0);
             CREATE UNIQUE INDEX t_k ON t(k COLLATE BINARY);
             INSERT INTO t(k) WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < 25)
               SELECT char(65 + i) FROM c UNION ALL SELECT char(97 + i) FROM c
               UNION ALL SELECT char(97 + i) || 'x' FROM c;",
        );
        let plan = bump_by_k(&db);
        let args = ["--no-serve", "--progress", "json", "--batch-size", size];
        let (code, out, err) = run(&run_args(&db, path_str(&plan), &args));
        assert_eq!(code, 0, "{err}");
        assert_eq!(spread(&db), (78, 0), "chunks of {size}");
        let done = json_lines(&out)
            .into_iter()
            .find(|l| l["event"] == "step" && l["data"]["state"] == "done")
            .unwrap_or_else(|| panic!("no done step: {out}"));
        let d = &done["data"];
        assert_eq!(
            (&d["done"], &d["total"], &d["changed"]),
            (&json!(78), &json!(78), &json!(78)),
            "chunks of {size}: {d}"
        );
    }
}

/// [`gapped_log`], its purge stopped at `ts` 700 by a trigger of the
/// test's (dropped after): the rows below 700 are purged and checkpointed.
fn stopped_purge() -> TempDb {
    let db = gapped_log(true);
    db.conn()
        .execute_batch(
            "CREATE TRIGGER stop BEFORE DELETE ON log WHEN old.ts = 700
             BEGIN SELECT RAISE(ABORT, 'stopped for the test'); END;",
        )
        .unwrap();
    let (code, err) = purge(&db, &[]);
    assert_eq!(code, 1, "{err}");
    db.conn().execute_batch("DROP TRIGGER stop").unwrap();
    db
}

/// Makes `log` again as SQLite's way to change a column does: copied into
/// a new table (its rows numbered anew from 1), renamed, indexed again.
const MAKE_LOG_AGAIN: &str = "BEGIN IMMEDIATE;
     CREATE TABLE log2(ts INT, msg TEXT);
     INSERT INTO log2 SELECT ts, msg FROM log;
     DROP TABLE log;
     ALTER TABLE log2 RENAME TO log;
     CREATE INDEX log_ts ON log(ts);
     COMMIT;";

#[test]
fn a_walk_by_rowid_is_not_resumed_after_its_table_was_made_again() {
    // The table copied into a new one, as SQLite's way to change a column
    // does: its rows are numbered anew from 1 (the gaps closed), so rows
    // past 700 that the walk has not reached now lie below its last rowid.
    let db = stopped_purge();
    db.conn().execute_batch(MAKE_LOG_AGAIN).unwrap();
    let before = sha256(&db.path);
    let (code, err) = purge(&db, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("log has since been made again") && err.contains("Nothing was run"),
        "{err}"
    );
    assert_eq!(sha256(&db.path), before, "the file untouched");
    let (code, err) = purge(&db, &["--force"]);
    assert_eq!(code, 0, "{err}");
    let evens = db.query_i64("SELECT count(*) FROM log WHERE ts % 2 = 0");
    assert_eq!(evens, 0, "{err}");
}

#[test]
fn a_walk_by_rowid_is_resumed_after_its_table_gained_a_column_or_index() {
    // Neither makes the table again: its rowids stay, and so does the walk.
    let db = stopped_purge();
    db.conn()
        .execute_batch("ALTER TABLE log ADD COLUMN extra INT; CREATE INDEX log_msg ON log(msg);")
        .unwrap();
    let (code, err) = purge(&db, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming after"), "{err}");
    let evens = db.query_i64("SELECT count(*) FROM log WHERE ts % 2 = 0");
    assert_eq!(evens, 0, "{err}");
}

#[test]
fn a_table_made_again_between_two_chunks_of_a_walk_by_rowid_stops_it() {
    // Another process makes the table again while the run sleeps between
    // chunks: the step stops before its next chunk, as after a VACUUM.
    let db = gapped_log(true);
    let plan = db.dir.path().join("plan.json");
    let (code, err) =
        between_two_chunks(&db, &gapped_args(&db, &plan), WALK_PROBED, MAKE_LOG_AGAIN);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("log was made again while this step walked it by rowid"),
        "{err}"
    );
}

#[test]
fn a_key_s_collation_changed_between_two_chunks_stops_the_walk() {
    // Another process makes the table again, k NOCASE, while the run
    // sleeps after its first chunk ('A'..'E'): the next chunk would go on
    // after 'E' in the new order, past 'ax'..'ex', never bumped.
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT UNIQUE, v INTEGER NOT NULL DEFAULT 0);",
    );
    for k in letters() {
        db.conn()
            .execute(&format!("INSERT INTO t(k) VALUES ({k})"), [])
            .unwrap();
    }
    let plan = bump_by_k(&db);
    let args = run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--batch-size", "5", "--sleep", "1500"],
    );
    let bumped = "SELECT count(*) FROM t WHERE v = 1";
    let remade = "BEGIN IMMEDIATE;
         CREATE TABLE t2(id INTEGER PRIMARY KEY, k TEXT COLLATE NOCASE UNIQUE, v INTEGER NOT NULL DEFAULT 0);
         INSERT INTO t2 SELECT id, k, v FROM t;
         DROP TABLE t;
         ALTER TABLE t2 RENAME TO t;
         COMMIT;";
    let (code, err) = between_two_chunks(&db, &args, bumped, remade);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("t was made again while this step walked it by k"),
        "{err}"
    );
    assert_eq!(spread(&db), (5, 47), "only the first chunk: {err}");
}
