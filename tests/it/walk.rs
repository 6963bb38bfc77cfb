//! The chunk walk never silently misses or repeats rows: keys hidden by a
//! column named like the rowid, steps that would move their own key, and
//! a pre-run check that stays bounded whatever the plan generates.

use serde_json::json;

use crate::util::*;

/// `legacy` with 1,000 rows keyed by `id`, and extra columns named as
/// `hiding` lists (each hiding one of SQLite's names for the rowid).
fn legacy(hiding: &[(&str, &str)]) -> TempDb {
    let extra: String = hiding
        .iter()
        .map(|(name, ty)| format!(", \"{name}\" {ty}"))
        .collect();
    let values: String = hiding.iter().map(|_| ", 7 - i").collect();
    TempDb::with_sql(&format!(
        "CREATE TABLE legacy(id INTEGER PRIMARY KEY{extra}, c INT DEFAULT 0);
         INSERT INTO legacy(id{cols}) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 1000) SELECT i{values} FROM s;",
        cols = hiding
            .iter()
            .map(|(n, _)| format!(", \"{n}\""))
            .collect::<String>(),
    ))
}

fn bump_plan(db: &TempDb, key: Option<&str>) -> String {
    let mut chunk = json!({"table": "legacy", "size": 100});
    if let Some(k) = key {
        chunk["key"] = json!(k);
    }
    let plan = json!({"name": "bump", "steps": [{
        "sql": "UPDATE legacy SET c = c + 1 WHERE id BETWEEN :lo AND :hi",
        "chunk": chunk,
    }]});
    db.file("plan.json", &plan.to_string())
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_column_named_rowid_does_not_hide_the_key_of_the_walk() {
    for ty in ["INTEGER", "TEXT"] {
        let db = legacy(&[("rowid", ty)]);
        let plan = bump_plan(&db, Some("id"));
        let (code, _, err) = run(&run_args(&db, &plan, &words("--no-serve --progress plain")));
        assert_eq!(code, 0, "rowid column of type {ty}: {err}");
        assert_eq!(
            db.query_i64("SELECT count(*) FROM legacy WHERE c = 1"),
            1000,
            "rowid column of type {ty}: every row bumped once; {err}"
        );
    }
}

#[test]
fn the_default_key_finds_the_rowid_under_whichever_name_is_free() {
    // rowid and _rowid_ taken: oid; all three taken: the INTEGER PRIMARY KEY.
    for hiding in [
        &[("rowid", "INTEGER"), ("_rowid_", "TEXT")][..],
        &[
            ("rowid", "INTEGER"),
            ("_rowid_", "TEXT"),
            ("oid", "INTEGER"),
        ][..],
    ] {
        let db = legacy(hiding);
        let plan = bump_plan(&db, None);
        let (code, _, err) = run(&run_args(&db, &plan, &words("--no-serve --progress plain")));
        assert_eq!(code, 0, "{hiding:?}: {err}");
        assert_eq!(
            db.query_i64("SELECT count(*) FROM legacy WHERE c = 1"),
            1000,
            "{hiding:?}: {err}"
        );
    }
}

#[test]
fn a_rowid_hidden_under_every_name_is_refused_before_anything_runs() {
    let db = TempDb::with_sql(
        "CREATE TABLE legacy(\"rowid\" INT, \"_rowid_\" INT, \"oid\" INT, id INT, c INT DEFAULT 0);
         INSERT INTO legacy(id) VALUES (1),(2),(3);",
    );
    let plan = bump_plan(&db, None);
    let before = db.bytes();
    let (code, _, err) = run(&run_args(&db, &plan, &words("--no-serve --progress plain")));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("rowid, _rowid_ and oid") && err.contains("chunk.key"),
        "names the problem and the fix: {err}"
    );
    assert_eq!(db.bytes(), before, "database untouched");
}

/// Runs the plan and expects exit 2 with `needle` in the message and the
/// database byte-identical.
fn refused(db: &TempDb, plan: serde_json::Value, needle: &str) {
    let path = db.file("plan.json", &plan.to_string());
    let before = db.bytes();
    // Bounded: without the check such a step walks the same rows forever.
    let mut p = Proc::start(&run_args(
        db,
        path_str(&path),
        &words("--no-serve --progress plain --batch-size 1"),
    ));
    let code = p.wait_for(PATIENCE).code();
    let err = p.stderr();
    assert_eq!(code, Some(2), "{plan}: {err}");
    assert!(
        err.contains("changes its own chunk key") && err.contains(needle),
        "{plan}: says why and names {needle}: {err}"
    );
    assert!(
        err.contains("rowid, or another unique column"),
        "the fix: {err}"
    );
    assert_eq!(db.bytes(), before, "database untouched");
}

fn chunked(table: &str, key: Option<&str>, sql: &str) -> serde_json::Value {
    let mut chunk = json!({"table": table});
    if let Some(k) = key {
        chunk["key"] = json!(k);
    }
    json!({"name": "moves", "steps": [{"sql": sql, "chunk": chunk}]})
}

#[test]
fn a_chunked_step_that_writes_its_own_key_is_refused_up_front() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(k TEXT PRIMARY KEY, c INT DEFAULT 0) WITHOUT ROWID;
         INSERT INTO t(k) VALUES ('a'),('b'),('c');
         CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE, n INT DEFAULT 0);
         INSERT INTO users(email) VALUES ('A@x'),('b@x');
         CREATE TABLE v(id INTEGER PRIMARY KEY, n INT DEFAULT 0);
         INSERT INTO v(n) VALUES (1),(2);
         CREATE TRIGGER v_move AFTER UPDATE OF n ON v BEGIN UPDATE v SET id = id + 100 WHERE id = new.id; END;",
    );
    // The issue's shape: a text key that grows, walked a row at a time.
    refused(
        &db,
        chunked(
            "t",
            Some("k"),
            "UPDATE t SET k = k || 'x', c = c + 1 WHERE k BETWEEN :lo AND :hi",
        ),
        "t.k",
    );
    refused(
        &db,
        chunked(
            "users",
            Some("email"),
            "UPDATE users SET email = lower(email) WHERE email BETWEEN :lo AND :hi",
        ),
        "users.email",
    );
    // The rowid walk, written as the alias or as the rowid itself.
    refused(
        &db,
        chunked(
            "users",
            None,
            "UPDATE users SET id = id + 10 WHERE id BETWEEN :lo AND :hi",
        ),
        "users.id",
    );
    refused(
        &db,
        chunked(
            "users",
            Some("id"),
            "UPDATE users SET rowid = rowid + 10 WHERE id BETWEEN :lo AND :hi",
        ),
        "users.rowid",
    );
    // Through a trigger the step sets off.
    refused(
        &db,
        chunked(
            "v",
            None,
            "UPDATE v SET n = n + 1 WHERE id BETWEEN :lo AND :hi",
        ),
        "v_move",
    );
}

#[test]
fn a_key_moved_by_a_foreign_key_cascade_is_refused_too() {
    let db = TempDb::with_sql(
        "CREATE TABLE p(id INTEGER PRIMARY KEY); INSERT INTO p VALUES (1),(2),(3);
         CREATE TABLE ch(id INTEGER PRIMARY KEY, pref INT UNIQUE REFERENCES p(id) ON UPDATE CASCADE);
         INSERT INTO ch(pref) VALUES (1),(2),(3);",
    );
    let mut plan = chunked(
        "ch",
        Some("pref"),
        "UPDATE p SET id = id + 100 WHERE id IN (SELECT pref FROM ch WHERE pref BETWEEN :lo AND :hi)",
    );
    plan["foreign_keys"] = json!(true);
    refused(&db, plan, "ch.pref");
}

#[test]
fn a_chunked_step_that_changes_another_unique_column_still_runs_once_per_row() {
    let db = TempDb::with_sql(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE, n INT DEFAULT 0);
         INSERT INTO users(email) VALUES ('A@x'),('B@x'),('c@x');",
    );
    let plan = chunked(
        "users",
        None,
        "UPDATE users SET email = lower(email), n = n + 1 WHERE id BETWEEN :lo AND :hi",
    );
    let path = db.file("plan.json", &plan.to_string());
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&path),
        &words("--no-serve --progress plain --batch-size 1"),
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM users WHERE n = 1 AND email = lower(email)"),
        3
    );
}

/// The peak resident memory (KiB) of a running process since its exec,
/// from /proc (not from wait4, whose figure for a spawned child can include
/// the spawning test process's own memory).
fn peak_rss_kib(pid: u32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn the_check_stays_small_for_a_step_that_generates_its_own_rows() {
    // 400,000 rows of 1 KB each made from nothing: the check used to do
    // this work in memory (436 MB) before the run could start.
    let db = TempDb::with_sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);");
    let generate = "INSERT INTO t(v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 400000) SELECT randomblob(1000) FROM s";
    // Still caught: a later step's mistake.
    let bad =
        json!({"name": "gen", "steps": [{"sql": generate}, {"sql": "UPDATE t SET nope = 1"}]});
    let path = db.file("bad.json", &bad.to_string());
    let before = db.bytes();
    let (code, _, err) = run(&run_args(&db, path_str(&path), &["--no-serve"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("step 2") && err.contains("no such column: nope"),
        "{err}"
    );
    assert_eq!(db.bytes(), before);
    // Past the check, the run waits for a client: its peak so far is the
    // check's (and the server's start).
    let good = json!({"name": "gen", "steps": [{"sql": generate}]});
    let path = db.file("good.json", &good.to_string());
    let p = serving(&db, path_str(&path), &["--wait-for-clients", "1"]);
    let rss_kib = peak_rss_kib(p.child.id());
    assert!(
        rss_kib < 64 * 1024,
        "peak RSS {rss_kib} KiB through the check"
    );
    drop(p);
    assert_eq!(db.bytes(), before, "nothing ran");
}

#[test]
fn the_check_cuts_short_a_schema_step_that_computes_for_minutes() {
    // Counting to a billion takes minutes; the check gives it a fraction
    // of a second and goes on to find the later step's syntax error.
    let db = TempDb::with_sql("CREATE TABLE t(id INTEGER PRIMARY KEY);");
    let plan = json!({"name": "cpu", "steps": [
        {"sql": "CREATE TABLE s AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 1000000000) SELECT sum(i) AS total FROM n"},
        {"sql": "UPDATE t SET id = WHERE"},
    ]});
    let path = db.file("plan.json", &plan.to_string());
    let mut p = Proc::start(&run_args(&db, path_str(&path), &["--no-serve"]));
    let status = p.wait_for(PATIENCE);
    assert_eq!(status.code(), Some(2), "{}", p.stderr());
    assert!(p.stderr().contains("step 2"), "{}", p.stderr());
}

/// `x` with 3,000 rows whose column `name` (of type `ty`) holds `value`
/// (SQL over `i`, 1 to 3,000): the issue's reproduction.
fn hidden(name: &str, ty: &str, value: &str) -> TempDb {
    TempDb::with_sql(&format!(
        "CREATE TABLE x(\"{name}\" {ty}, v INT DEFAULT 0);
         INSERT INTO x(\"{name}\") WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 3000) SELECT {value} FROM c;"
    ))
}

/// Runs a one-step chunked plan; returns exit code and stderr.
fn run_chunked(db: &TempDb, plan: serde_json::Value) -> (i32, String) {
    let path = db.file("plan.json", &plan.to_string());
    let (code, _, err) = run(&run_args(
        db,
        path_str(&path),
        &words("--no-serve --progress plain"),
    ));
    (code, err)
}

#[test]
fn a_step_that_says_rowid_where_a_column_takes_that_name_is_refused() {
    // A text column (no row changes), an oid holding 2*i (half of them), an
    // int rowid holding other numbers (none): each finished "ok" before.
    for (name, ty, value, free) in [
        ("rowid", "TEXT", "'r' || i", "_rowid_"),
        ("oid", "INTEGER", "2 * i", "rowid"),
        ("rowid", "INT", "i + 100000", "_rowid_"),
    ] {
        let db = hidden(name, ty, value);
        let sql = format!("UPDATE x SET v = v + 1 WHERE {name} BETWEEN :lo AND :hi");
        let before = db.bytes();
        let (code, err) = run_chunked(&db, chunked("x", None, &sql));
        assert_eq!(code, 2, "{name} {ty}: {err}");
        assert!(
            err.contains(&format!("{name} is a column, not the rowid"))
                && err.contains(&format!("Write {free} for the rowid"))
                && err.contains("chunk.key"),
            "{name} {ty}: names the column and the ways out: {err}"
        );
        assert_eq!(db.bytes(), before, "{name} {ty}: database untouched");
        // The way out it names works: every row changed once.
        let fixed = sql.replace(&format!("WHERE {name} "), &format!("WHERE {free} "));
        let (code, err) = run_chunked(&db, chunked("x", None, &fixed));
        assert_eq!(code, 0, "{name} {ty}: {err}");
        assert_eq!(db.query_i64("SELECT count(*) FROM x WHERE v = 1"), 3000);
    }
}

#[test]
fn a_step_that_compares_another_column_than_the_walks_key_is_refused() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(code TEXT UNIQUE, n INT, v INT DEFAULT 0);
         INSERT INTO t(code, n) VALUES ('a', 1), ('b', 2), ('c', 3);",
    );
    let before = db.bytes();
    let plan = chunked(
        "t",
        Some("code"),
        "UPDATE t SET v = 1 WHERE n BETWEEN :lo AND :hi",
    );
    let (code, err) = run_chunked(&db, plan);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("never its chunk key code") && err.contains("\"code\" BETWEEN :lo AND :hi"),
        "says which key the walk binds and how to compare it: {err}"
    );
    assert_eq!(db.bytes(), before, "database untouched");
    // A step on another table, bounded by this one's keys, is fine.
    let db = TempDb::with_sql(
        "CREATE TABLE users(id INTEGER PRIMARY KEY);
         CREATE TABLE orders(user_id INT, v INT DEFAULT 0);
         INSERT INTO users(id) VALUES (1), (2), (3);
         INSERT INTO orders(user_id) VALUES (1), (2), (3), (3);",
    );
    let plan = chunked(
        "users",
        None,
        "UPDATE orders SET v = 1 WHERE user_id BETWEEN :lo AND :hi",
    );
    let (code, err) = run_chunked(&db, plan);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT count(*) FROM orders WHERE v = 1"), 4);
}

#[test]
fn a_walk_that_changes_no_row_says_so_in_the_events_and_the_terminal() {
    let db = hidden("name", "TEXT", "'r' || i");
    let plan = chunked(
        "x",
        None,
        "UPDATE x SET v = 1 WHERE rowid BETWEEN :lo AND :hi AND v > 5",
    );
    let path = db.file("plan.json", &plan.to_string());
    let (code, out, _) = run(&run_args(
        &db,
        path_str(&path),
        &words("--no-serve --progress json"),
    ));
    assert_eq!(code, 0);
    let warned = json_lines(&out).into_iter().any(|l| {
        l["event"] == "message"
            && l["data"]["status"] == "warn"
            && l["data"]["message"].as_str().is_some_and(|m| {
                m.contains("visited 3,000 rows of x") && m.contains("changed none")
            })
    });
    assert!(warned, "a warn message in the events: {out}");
    let (code, err) = run_chunked(&db, plan.clone());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("already applied"),
        "the first run's checkpoint: {err}"
    );
    let path = db.file("plan.json", &plan.to_string());
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&path),
        &words("--no-serve --progress plain --force"),
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: visited 3,000 rows of x by rowid and changed none"),
        "the terminal says it: {err}"
    );
}

/// Writes `plan` to the database's folder and runs it with `extra`.
fn run_plan(db: &TempDb, plan: &serde_json::Value, extra: &[&str]) -> (i32, String, String) {
    let path = db.file("plan.json", &plan.to_string());
    run(&run_args(db, path_str(&path), extra))
}

/// A table keyed by a unique `n` with gaps (10, 20, …, 1000) and a rowid.
fn numbered() -> TempDb {
    TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER UNIQUE, v TEXT);
         INSERT INTO t(n, v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 100) SELECT i * 10, 'orig' FROM s;
         CREATE TABLE log(n INTEGER UNIQUE, v TEXT);
         INSERT INTO log VALUES (5, 'x');
         CREATE TRIGGER log_echo AFTER UPDATE OF v ON log WHEN new.v = 'seen' BEGIN INSERT INTO log VALUES (new.n + 501, 'echo'); END;",
    )
}

#[test]
fn a_chunked_step_that_inserts_ahead_of_its_own_walk_is_refused_up_front() {
    // Copying rows to n + 501 within t walked by n: the copies of the first
    // rows land ahead of the walk, which would copy them again (copies of
    // copies) and still finish ok.
    for (table, sql, via) in [
        (
            "t",
            "INSERT INTO t(n, v) SELECT n + 501, 'copy' FROM t WHERE n BETWEEN :lo AND :hi",
            "",
        ),
        (
            "t",
            "INSERT INTO t(n, v) SELECT n + 501, 'copy' FROM t WHERE n BETWEEN :lo AND :hi ON CONFLICT(n) DO UPDATE SET v = 'seen'",
            "",
        ),
        (
            "log",
            "UPDATE log SET v = 'seen' WHERE n BETWEEN :lo AND :hi",
            "through trigger \"log_echo\"",
        ),
    ] {
        let db = numbered();
        let plan = json!({"name": "copy", "steps": [{"sql": sql, "chunk": {"table": table, "key": "n", "size": 10}}]});
        let before = db.bytes();
        let (code, _, err) = run_plan(&db, &plan, &words("--no-serve --progress plain"));
        assert_eq!(code, 2, "{sql}: {err}");
        assert!(
            err.contains(&format!("inserts into {table}"))
                && err.contains(via)
                && err.contains("by rowid"),
            "{sql}: says why and the way out: {err}"
        );
        assert_eq!(db.bytes(), before, "{sql}: database untouched");
    }
}

#[test]
fn a_rowid_walk_that_inserts_into_its_table_copies_each_row_once() {
    let db = numbered();
    let plan = json!({"name": "copy", "steps": [{
        "sql": "INSERT INTO t(n, v) SELECT n + 501, 'copy' FROM t WHERE id BETWEEN :lo AND :hi",
        "chunk": {"table": "t", "size": 10},
    }]});
    let (code, _, err) = run_plan(
        &db,
        &plan,
        &words("--no-serve --progress plain --batch-size 10"),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE v = 'copy'"),
        100,
        "{err}"
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM t"), 200, "{err}");
}

#[test]
fn a_chunked_step_with_returning_runs_and_one_that_only_reads_is_refused() {
    let db = numbered();
    let plan = |sql: &str| {
        let plan =
            json!({"name": sql, "steps": [{"sql": sql, "chunk": {"table": "t", "size": 7}}]});
        db.file("plan.json", &plan.to_string())
    };
    // RETURNING works in a plain step; chunked, its rows are dropped too.
    let path = plan("UPDATE t SET v = 'seen' WHERE id BETWEEN :lo AND :hi RETURNING id, v");
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&path),
        &words("--no-serve --progress plain"),
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE v = 'seen'"),
        100,
        "{err}"
    );
    assert!(err.contains("100 rows changed"), "{err}");
    // A chunked SELECT would walk the table and change nothing.
    let path = plan("SELECT * FROM t WHERE id BETWEEN :lo AND :hi");
    let before = db.bytes();
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&path),
        &words("--no-serve --progress plain"),
    ));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("only reads") && err.contains("UPDATE t SET"),
        "{err}"
    );
    assert_eq!(db.bytes(), before, "database untouched");
}

#[test]
fn a_step_on_another_table_bounded_by_a_rowid_walk_misses_no_row_between_its_keys() {
    // Users 1..=61 with every third one deleted; each user had two orders,
    // and a few orders belong to no user at all (0, -7). Walking users,
    // the step must reach every order whose user_id is at most the largest
    // user id, whatever the chunk sizes: a plain UPDATE's result.
    let db = TempDb::with_sql(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE orders(id INTEGER PRIMARY KEY, user_id INT, flag INT DEFAULT 0);
         INSERT INTO users(id, name) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 61) SELECT i, 'u' FROM s;
         INSERT INTO orders(user_id) SELECT id FROM users UNION ALL SELECT id FROM users;
         INSERT INTO orders(user_id) VALUES (0), (-7), (62), (NULL);
         DELETE FROM users WHERE id % 3 = 0;",
    );
    for size in ["1", "7"] {
        db.conn()
            .execute_batch("UPDATE orders SET flag = 0")
            .unwrap();
        let plan = json!({"name": format!("flag-{size}"), "steps": [{
            "sql": "UPDATE orders SET flag = 1 WHERE user_id BETWEEN :lo AND :hi",
            "chunk": {"table": "users"},
        }]});
        let (code, _, err) = run_plan(
            &db,
            &plan,
            &["--no-serve", "--progress", "plain", "--batch-size", size],
        );
        assert_eq!(code, 0, "chunks of {size}: {err}");
        assert_eq!(
            db.query_i64("SELECT count(*) FROM orders WHERE flag = 1"),
            124,
            "chunks of {size}: every order of a user id up to 61, deleted users' too; {err}"
        );
        assert_eq!(
            db.query_i64(
                "SELECT count(*) FROM orders WHERE flag = 0 AND (user_id > 61 OR user_id IS NULL)"
            ),
            2,
            "chunks of {size}: none above the largest key; {err}"
        );
    }
}

#[test]
fn a_text_key_that_is_not_utf8_stops_the_walk_with_a_message_that_says_so() {
    // Bytes cast to text: the largest key (read as the walk begins) and
    // one in the middle (read at a chunk's boundary).
    for bytes in ["ff61", "62ff"] {
        let db = TempDb::with_sql(&format!(
            "CREATE TABLE t(k TEXT UNIQUE, v INT DEFAULT 0);
             INSERT INTO t(k) VALUES ('a'), ('b'), (CAST(x'{bytes}' AS TEXT)), ('c');"
        ));
        let plan = json!({"name": "u", "steps": [{
            "sql": "UPDATE t SET v = v + 1 WHERE k BETWEEN :lo AND :hi",
            "chunk": {"table": "t", "key": "k"},
        }]});
        let (code, _, err) = run_plan(
            &db,
            &plan,
            &words("--no-serve --progress plain --batch-size 1"),
        );
        assert_eq!(code, 1, "{bytes}: {err}");
        assert!(
            err.contains("t.k holds text that is not valid UTF-8")
                && err.contains("chunk by rowid"),
            "{bytes}: says what and the way out: {err}"
        );
    }
}

#[test]
fn a_step_on_another_table_bounded_by_a_text_key_is_warned_of_the_gaps() {
    let db = TempDb::with_sql(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE);
         CREATE TABLE orders(id INTEGER PRIMARY KEY, email TEXT, flag INT DEFAULT 0);
         INSERT INTO users(email) VALUES ('a@x'), ('c@x'), ('e@x');
         INSERT INTO orders(email) VALUES ('a@x'), ('b@x'), ('c@x'), ('e@x');",
    );
    let step = |key: &str, column: &str| {
        json!({"name": key, "steps": [{
            "sql": format!("UPDATE orders SET flag = 1 WHERE {column} BETWEEN :lo AND :hi"),
            "chunk": {"table": "users", "key": key},
        }]})
    };
    let (code, _, err) = run_plan(
        &db,
        &step("email", "email"),
        &words("--no-serve --progress plain --batch-size 1"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("writes orders but walks users by email")
            && err.contains("walk users by rowid"),
        "the gap is said, with the way out: {err}"
    );
    // b@x fell between two chunks: what the warning is about.
    assert_eq!(
        db.query_i64("SELECT count(*) FROM orders WHERE flag = 0"),
        1
    );
    // A rowid walk has no gaps, and no warning.
    let (code, _, err) = run_plan(
        &db,
        &step("rowid", "id"),
        &words("--no-serve --progress plain --batch-size 1"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("are not reached"), "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM orders WHERE flag = 0"),
        0
    );
}

#[test]
fn a_without_rowid_table_with_a_composite_key_and_no_chunk_key_says_what_to_set() {
    let db = TempDb::with_sql(
        "CREATE TABLE w(a INT, b TEXT, v INT DEFAULT 0, PRIMARY KEY(a, b)) WITHOUT ROWID;
         INSERT INTO w(a, b) VALUES (1, 'x'), (1, 'y'), (2, 'x');",
    );
    let plan = json!({"name": "w", "steps": [{
        "sql": "UPDATE w SET v = v + 1 WHERE a BETWEEN :lo AND :hi",
        "chunk": {"table": "w"},
    }]});
    let before = db.bytes();
    let (code, _, err) = run_plan(&db, &plan, &words("--no-serve --progress plain"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("WITHOUT ROWID and its primary key has several columns")
            && err.contains("UNIQUE index"),
        "says why there is no default key and what to set: {err}"
    );
    assert_eq!(db.bytes(), before, "database untouched");
}

/// `g` with 300 rows and two generated keys, each with a UNIQUE index:
/// `norm` (VIRTUAL, from `email`) and `code` (STORED, from `id`); the
/// 301st row has no email, so no `norm`. Setting a `note` rewrites the
/// email, through a trigger.
fn generated() -> TempDb {
    TempDb::with_sql(
        "CREATE TABLE g(id INTEGER PRIMARY KEY, email TEXT, c INT DEFAULT 0, note TEXT,
           norm TEXT AS (lower(email)) VIRTUAL,
           code INT GENERATED ALWAYS AS (id * 7 % 1009) STORED);
         CREATE UNIQUE INDEX g_norm ON g(norm);
         CREATE UNIQUE INDEX g_code ON g(code);
         INSERT INTO g(email) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 300) SELECT 'U' || i || '@x' FROM s;
         INSERT INTO g(email) VALUES (NULL);
         CREATE TRIGGER g_touch AFTER UPDATE OF note ON g BEGIN UPDATE g SET email = new.note || new.id WHERE id = new.id; END;",
    )
}

#[test]
fn a_generated_column_with_a_unique_index_is_a_walk_key_virtual_or_stored() {
    for (key, visited) in [("norm", 300), ("code", 301)] {
        let db = generated();
        let plan = chunked(
            "g",
            Some(key),
            &format!("UPDATE g SET c = c + 1 WHERE {key} BETWEEN :lo AND :hi"),
        );
        let (code, _, err) = run_plan(
            &db,
            &plan,
            &words("--no-serve --progress plain --batch-size 7"),
        );
        assert_eq!(code, 0, "{key}: {err}");
        assert_eq!(db.query_i64("SELECT count(*) FROM g WHERE c = 1"), visited);
        assert_eq!(db.query_i64("SELECT count(*) FROM g WHERE c > 1"), 0);
        if visited == 300 {
            // As for any key that is not the rowid: a NULL key is said.
            assert!(
                err.contains("1 row of g has a NULL norm and is not"),
                "{err}"
            );
        }
    }
}

/// A run walked by a generated key is recorded and taken back like any
/// other: every row as it was.
#[test]
fn a_run_walked_by_a_generated_key_can_be_taken_back() {
    for key in ["norm", "code"] {
        let db = generated();
        let dump = |db: &TempDb| -> Vec<(i64, i64)> {
            db.conn()
                .prepare("SELECT id, c FROM g ORDER BY id")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let before = dump(&db);
        let plan = chunked(
            "g",
            Some(key),
            &format!("UPDATE g SET c = c + 1 WHERE {key} BETWEEN :lo AND :hi"),
        );
        let (code, _, err) = run_plan(&db, &plan, &words("--no-serve --undo --batch-size 7"));
        assert_eq!(code, 0, "{key}: {err}");
        assert_ne!(dump(&db), before, "{key}");
        let file = path_str(&db.path);
        let (code, _, err) = run(&["undo", "--db", file, "--plan", "moves", "--no-serve"]);
        assert_eq!(code, 0, "{key}: {err}");
        assert_eq!(dump(&db), before, "{key}: {err}");
    }
}

#[test]
fn a_step_that_writes_what_a_generated_key_is_computed_from_is_refused() {
    let db = generated();
    // Directly: `norm` is lower(email).
    refused(
        &db,
        chunked(
            "g",
            Some("norm"),
            "UPDATE g SET email = email || 'x' WHERE norm BETWEEN :lo AND :hi",
        ),
        "g.email",
    );
    // Through the trigger that rewrites the email.
    refused(
        &db,
        chunked(
            "g",
            Some("norm"),
            "UPDATE g SET note = 'n' WHERE norm BETWEEN :lo AND :hi",
        ),
        "g.note, and its generated key norm may change with it",
    );
    // `code` is computed from the rowid.
    refused(
        &db,
        chunked(
            "g",
            Some("code"),
            "UPDATE g SET id = id + 1000 WHERE code BETWEEN :lo AND :hi",
        ),
        "g.id",
    );
}

/// A full-text table (a virtual table with shadow tables of its own) can
/// be walked, and still after a `VACUUM`, which lists it after its shadow
/// tables: the pre-run check rebuilds the schema with the virtual table
/// making its own shadow tables, not finding their names taken.
#[test]
fn a_full_text_table_is_walked_before_and_after_a_vacuum() {
    let db = TempDb::with_sql(
        "CREATE VIRTUAL TABLE doc USING fts5(body);
         INSERT INTO doc VALUES ('one'), ('two'), ('three');",
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","steps":[{"sql":"UPDATE doc SET body = upper(body) WHERE rowid BETWEEN :lo AND :hi","chunk":{"table":"doc","size":2}}]}"#,
    );
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--dry-run"]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    db.conn().execute_batch("VACUUM").unwrap();
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "after the VACUUM: {err}");
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM doc WHERE doc MATCH 'TWO' AND body = 'TWO'"),
        1
    );
}

/// A virtual table numbers its own rows, which a `VACUUM` leaves alone: a
/// walk of one stopped part-way writes no probe row and, vacuumed, goes on
/// where it stopped (an `INTEGER PRIMARY KEY` alike: see `safety`).
#[test]
fn a_stopped_walk_of_a_full_text_table_resumes_after_a_vacuum() {
    let db = TempDb::with_sql(
        "CREATE VIRTUAL TABLE doc USING fts5(body);
         INSERT INTO doc VALUES ('one'), ('two'), ('three'), ('four');
         DELETE FROM doc WHERE rowid = 2;
         CREATE TABLE flag(v INT); INSERT INTO flag VALUES (1);",
    );
    // Row 4 fails while the flag is up: the first chunk (1 and 3) commits.
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","steps":[{"sql":"UPDATE doc SET body = upper(body) || CASE WHEN rowid = 4 AND (SELECT v FROM flag) = 1 THEN abs(-9223372036854775807 - 1) ELSE '' END WHERE rowid BETWEEN :lo AND :hi","chunk":{"table":"doc","size":2}}]}"#,
    );
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--batch-size", "2"]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 1, "{err}");
    let probe =
        "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'batchsse\\_walk\\_%' ESCAPE '\\'";
    assert_eq!(db.query_i64(probe), 0, "no probe for a virtual table");
    db.conn()
        .execute_batch("UPDATE flag SET v = 0; VACUUM")
        .unwrap();
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming after"), "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM doc WHERE body = upper(body)"),
        3
    );
}

#[test]
fn a_chunked_step_that_changes_rows_outside_its_chunk_is_refused_up_front() {
    // `OR` binds looser than the range: without the check, row 7 gets
    // `+ 1` from each of the four chunks and the run says it finished.
    for (sql, changed, flags) in [
        (
            "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi OR id = 7",
            "changed 1 row (rowid 7 of \"t\"), and it would change it again",
            "",
        ),
        (
            "UPDATE t SET counter = counter + 1 WHERE id >= :lo AND id <= :hi OR counter = 0",
            "changed 20 rows (the first: rowid 1 of \"t\"), and it would change them again",
            "--dry-run",
        ),
        (
            "DELETE FROM t WHERE id BETWEEN :lo AND :hi OR id > 15",
            "changed 5 rows (the first: rowid 16 of \"t\")",
            "--undo",
        ),
        (
            // A running total of each chunk's rows, kept in another table:
            // with an empty chunk it still writes its row.
            "INSERT INTO stats(k, n) SELECT 'rows', count(*) FROM t WHERE id BETWEEN :lo AND :hi ON CONFLICT(k) DO UPDATE SET n = n + excluded.n",
            "changed 1 row (rowid 1 of \"stats\")",
            "",
        ),
    ] {
        let db = TempDb::counters(20);
        db.conn()
            .execute_batch("CREATE TABLE stats(k TEXT PRIMARY KEY, n INT)")
            .unwrap();
        if flags.is_empty() && changed.contains("again") {
            // The try takes the write lock as a chunk does, in WAL mode too.
            db.conn()
                .execute_batch("PRAGMA journal_mode = WAL")
                .unwrap();
        }
        let plan = json!({"name": "bump", "steps": [
            {"name": "first", "sql": "UPDATE t SET counter = 1"},
            {"name": "escapes", "sql": sql, "chunk": {"table": "t", "size": 5}},
        ]});
        let before = db.bytes();
        let mut args = words("--no-serve --progress plain");
        args.extend(words(flags));
        let (code, _, err) = run_plan(&db, &plan, &args);
        assert_eq!(code, 2, "{sql} {flags}: {err}");
        assert!(
            err.contains("step 2 (\"escapes\") changes rows outside its chunk")
                && err.contains(changed)
                && err.contains("WHERE rowid BETWEEN :lo AND :hi AND (…)")
                && err.contains("HAVING count(*) > 0"),
            "{sql}: says why and the way out: {err}"
        );
        assert_eq!(db.bytes(), before, "{sql}: database untouched");
    }
}

#[test]
fn a_chunked_step_that_changes_nothing_for_an_empty_chunk_still_runs() {
    // The running total that writes only for a chunk with rows, and a step
    // on a table an earlier step makes (the check cannot try it, the run
    // does).
    let db = TempDb::counters(20);
    db.conn()
        .execute_batch("CREATE TABLE stats(k TEXT PRIMARY KEY, n INT)")
        .unwrap();
    let plan = json!({"name": "sum", "steps": [
        {"sql": "INSERT INTO stats(k, n) SELECT 'rows', count(*) FROM t WHERE id BETWEEN :lo AND :hi HAVING count(*) > 0 ON CONFLICT(k) DO UPDATE SET n = n + excluded.n",
         "chunk": {"table": "t", "size": 3}},
        {"sql": "CREATE TABLE u(id INTEGER PRIMARY KEY, counter INT)"},
        {"sql": "INSERT INTO u SELECT id, counter FROM t"},
        {"sql": "UPDATE u SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
         "chunk": {"table": "u", "size": 3}},
    ]});
    let (code, _, err) = run_plan(&db, &plan, &words("--no-serve --progress plain"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT n FROM stats WHERE k = 'rows'"), 20);
    assert_eq!(db.query_i64("SELECT sum(counter) FROM u"), 20);
}

/// A WITHOUT ROWID table walked by its text primary key, in chunks of 2:
/// every row changed once, recorded or not. (Its writes reach no update
/// hook, so no rowid is asked of it: one build of the per-chunk check
/// asked, and failed every such step.)
#[test]
fn a_without_rowid_table_walks_by_its_key_in_chunks() {
    let plan = json!({"name": "kv", "steps": [{
        "sql": "UPDATE kv SET c = c + 1 WHERE k BETWEEN :lo AND :hi",
        "chunk": {"table": "kv", "key": "k", "size": 2},
    }]});
    for flags in ["", "--undo"] {
        let db = TempDb::with_sql(
            "CREATE TABLE kv(k TEXT PRIMARY KEY, c INT DEFAULT 0) WITHOUT ROWID;
             INSERT INTO kv(k) VALUES ('b'),('a'),('aa'),('Z'),('z'),(''),('a b');",
        );
        let args = format!("--no-serve --progress plain --batch-size 2 {flags}");
        let (code, _, err) = run_plan(&db, &plan, &words(&args));
        assert_eq!(code, 0, "{flags}: {err}");
        assert_eq!(
            db.query_i64("SELECT count(*) FROM kv WHERE c = 1"),
            7,
            "{flags}: every row once: {err}"
        );
    }
}

/// A walk by a random text key (a UUID's kind) on a table with rowids
/// rewrites pages all over the table at every chunk, 15-19 times the
/// time of a walk by rowid (`cargo bench --bench keyed_walk`): the run
/// says so and how to walk by rowid. A key that grows with the rowid,
/// and the rowid itself, are not warned about.
#[test]
fn a_walk_by_a_key_scattered_over_the_table_says_to_walk_by_rowid() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id TEXT PRIMARY KEY, seq INT UNIQUE, n INT NOT NULL DEFAULT 0);
         INSERT INTO t(id, seq) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 25000)
           SELECT lower(hex(randomblob(16))), i FROM s;",
    );
    for (key, warned) in [("id", true), ("seq", false), ("rowid", false)] {
        let plan = json!({"name": format!("by {key}"), "steps": [{
            "sql": format!("UPDATE t SET n = n + 1 WHERE {key} BETWEEN :lo AND :hi"),
            "chunk": {"table": "t", "key": key, "size": 5000},
        }]});
        let (code, _, err) = run_plan(&db, &plan, &words("--no-serve --progress plain"));
        assert_eq!(code, 0, "{key}: {err}");
        let says = "t is walked by id, whose order is not the order of its rows in the file";
        assert_eq!(err.contains(says), warned, "{key}: {err}");
        if warned {
            assert!(
                err.contains(
                    "walk t by rowid: \"key\": \"rowid\", with `WHERE rowid BETWEEN :lo AND :hi`"
                ),
                "{err}"
            );
        }
    }
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE n = 3"), 25000);
}

/// A walk's table named with its schema: `main.t` is the file's `t` and
/// runs; a TEMP table, or one of an attached database, is refused saying
/// why a walk cannot take it (it was "not a table in this database",
/// beside a list that held `t`), the file untouched.
#[test]
fn a_walk_of_main_t_runs_and_of_a_temp_or_attached_table_says_why_not() {
    let db = TempDb::counters(10);
    let other = db.dir.path().join("other.sqlite");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch(
            "CREATE TABLE u(id INTEGER PRIMARY KEY, n INT); INSERT INTO u VALUES (1, 0);",
        )
        .unwrap();
    let attach = format!("ATTACH '{}' AS aux", path_str(&other));
    let walk = |before: Option<&str>, sql: &str, table: &str| {
        let mut steps: Vec<serde_json::Value> = before
            .map(|b| serde_json::json!({"sql": b}))
            .into_iter()
            .collect();
        steps.push(serde_json::json!({"sql": sql, "chunk": {"table": table, "size": 3}}));
        let plan = serde_json::json!({"name": table, "steps": steps});
        let plan = db.file("plan.json", &plan.to_string());
        crate::util::run(&run_args(
            &db,
            path_str(&plan),
            &["--no-serve", "--no-checkpoint"],
        ))
    };
    for (before, sql, table, says) in [
        (
            Some("CREATE TEMP TABLE tt AS SELECT * FROM t"),
            "UPDATE tt SET counter = 1 WHERE id BETWEEN :lo AND :hi",
            "tt",
            "chunk.table \"tt\" is a TEMP table, which a walk cannot take",
        ),
        (
            None,
            "UPDATE temp.x SET counter = 1 WHERE id BETWEEN :lo AND :hi",
            "temp.x",
            "chunk.table \"x\" is a TEMP table",
        ),
        (
            Some(attach.as_str()),
            "UPDATE aux.u SET n = 1 WHERE id BETWEEN :lo AND :hi",
            "aux.u",
            "chunk.table \"aux.u\" names a table of another database (\"aux\")",
        ),
    ] {
        let before_hash = sha256(&db.path);
        let (code, _, err) = walk(before, sql, table);
        assert_eq!(code, 2, "{table}: {err}");
        assert!(err.contains(says), "{table}: {err}");
        assert_eq!(sha256(&db.path), before_hash, "{table}: untouched");
    }
    let (code, _, err) = walk(
        None,
        "UPDATE main.t SET counter = 7 WHERE id BETWEEN :lo AND :hi",
        "main.t",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE counter = 7"), 10);
}

/// A walk's table misspelt with its schema (`main.tt` for `t`) is a table
/// this database lacks: it was said to name "a table of another database
/// ("main")", with the advice to run the step on that file. It is said
/// to be no table here, with the tables there are, the file untouched.
#[test]
fn a_walk_of_main_and_a_table_it_lacks_says_there_is_no_such_table() {
    let db = TempDb::counters(5);
    let before = sha256(&db.path);
    let plan = serde_json::json!({"name": "typo", "steps": [
        {"sql": "UPDATE t SET counter = 1 WHERE id BETWEEN :lo AND :hi",
         "chunk": {"table": "main.tt", "size": 3}}]});
    let plan = db.file("plan.json", &plan.to_string());
    let (code, _, err) = crate::util::run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("chunk.table \"main.tt\" is not a table in this database")
            && err.contains("(tables: t)"),
        "{err}"
    );
    assert!(!err.contains("another database"), "{err}");
    assert_eq!(sha256(&db.path), before, "untouched");
}

/// The tables a misspelt walk's message offers are the user's: batchsse's
/// own (the checkpoint and undo record an earlier run left) were listed
/// among them, as if a walk could take one.
#[test]
fn a_walk_of_a_table_the_file_lacks_offers_only_the_users_tables() {
    let db = TempDb::counters(5);
    let first = serde_json::json!({"name": "first", "steps": [
        {"sql": "UPDATE t SET counter = counter + 1"}]});
    let first = db.file("first.json", &first.to_string());
    let args = run_args(&db, path_str(&first), &["--no-serve", "--undo"]);
    let (code, _, err) = crate::util::run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name LIKE 'batchsse%'") >= 2);
    let before = sha256(&db.path);
    let plan = serde_json::json!({"name": "typo", "steps": [
        {"sql": "UPDATE tt SET counter = 1 WHERE id BETWEEN :lo AND :hi",
         "chunk": {"table": "tt", "size": 3}}]});
    let plan = db.file("plan.json", &plan.to_string());
    let (code, _, err) = crate::util::run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("chunk.table \"tt\" is not a table in this database (tables: t);"),
        "{err}"
    );
    assert_eq!(sha256(&db.path), before, "untouched");
}
