//! `last_insert_rowid()` across a resume: the checkpoint keeps what it
//! answered the plan's own statements, so a resumed run, on its new
//! connection, goes on from it as the uninterrupted run would have.

use crate::util::*;

/// `orders` (41), `lines`, `m` (one row, `v` 0), `kv` (WITHOUT ROWID),
/// `t` (ids 1 to 12) and `log`, for the plans below.
const SHOP: &str = "CREATE TABLE orders(id INTEGER PRIMARY KEY, note TEXT);
     INSERT INTO orders VALUES (41, 'old');
     CREATE TABLE lines(id INTEGER PRIMARY KEY, order_id INT);
     CREATE TABLE m(id INTEGER PRIMARY KEY, v INT);
     INSERT INTO m VALUES (1, 0);
     CREATE TABLE kv(k TEXT PRIMARY KEY, v INT) WITHOUT ROWID;
     CREATE TABLE t(id INTEGER PRIMARY KEY);
     INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 12) SELECT i FROM s;
     CREATE TABLE log(id INTEGER PRIMARY KEY, prev INT, tid INT);";

/// A trigger that fails the first write to `table` (of `op`), so a first
/// run stops there with what came before committed.
fn once(op: &str, table: &str) -> String {
    format!("CREATE TRIGGER once BEFORE {op} ON {table} BEGIN SELECT RAISE(ABORT, 'not yet'); END;")
}

/// `run --no-serve` of `steps` as plan "rowid" on `db`, with `extra`.
fn run_steps(db: &TempDb, steps: &serde_json::Value, extra: &[&str]) -> (i32, String) {
    let plan = serde_json::json!({"name": "rowid", "steps": steps}).to_string();
    let plan = db.file("plan.json", &plan);
    let mut a = run_args(db, path_str(&plan), &["--no-serve", "--progress", "plain"]);
    a.extend_from_slice(extra);
    let (code, _, err) = run(&a);
    (code, err)
}

/// The tables of an uninterrupted run of `steps` with `extra`.
fn uninterrupted(steps: &serde_json::Value, extra: &[&str]) -> String {
    let db = TempDb::with_sql(SHOP);
    let (code, err) = run_steps(&db, steps, extra);
    assert_eq!(code, 0, "{steps}: {err}");
    content(&db)
}

/// Runs `steps` on a file where `block` fails the first run part-way,
/// then drops it and runs them again (with `extra` both times), resuming:
/// the file, once the resumed run succeeded.
fn stopped_then_resumed(block: &str, steps: &serde_json::Value, extra: &[&str]) -> TempDb {
    let db = TempDb::with_sql(SHOP);
    db.conn().execute_batch(block).unwrap();
    let (code, err) = run_steps(&db, steps, extra);
    assert_eq!(
        code, 1,
        "{steps}: the first run stops at the trigger: {err}"
    );
    db.conn().execute_batch("DROP TRIGGER once").unwrap();
    let (code, err) = run_steps(&db, steps, extra);
    assert_eq!(code, 0, "{steps}: {err}");
    assert!(err.contains("resuming plan"), "{steps}: {err}");
    db
}

/// A resume between steps: the step that reads `last_insert_rowid()`
/// runs on a new connection, where it answers 0. It was refused where
/// the rowid was an insert the earlier run applied (however many steps
/// between, or a TEMP-only step made again before it, or an `expect`),
/// and not where the text seemed to insert again before it while nothing
/// set the rowid (an insert into a WITHOUT ROWID table, a TEMP step made
/// again with no rows): there the line went to order 0, the run ok. Each
/// now resumes with the rowid the earlier run left, and ends as the run
/// that was never stopped.
#[test]
fn a_resume_between_steps_reads_the_rowid_the_earlier_run_left() {
    let order = serde_json::json!({"sql": "INSERT INTO orders(note) VALUES ('new')"});
    let line =
        serde_json::json!({"sql": "INSERT INTO lines(order_id) VALUES (last_insert_rowid())"});
    let cases = [
        (
            once("UPDATE", "m"),
            serde_json::json!([order, {"sql": "UPDATE m SET v = 1"},
                {"sql": "UPDATE m SET v = last_insert_rowid()"}, line]),
        ),
        (
            once("UPDATE", "m"),
            serde_json::json!([order, {"sql": "UPDATE m SET v = 7",
                "expect": "SELECT last_insert_rowid() = 42"}]),
        ),
        (
            once("INSERT", "lines"),
            serde_json::json!([order,
                {"sql": "CREATE TEMP TABLE cur AS SELECT last_insert_rowid() AS id"},
                {"sql": "INSERT INTO lines(order_id) SELECT id FROM cur"}, line]),
        ),
        (
            once("INSERT", "kv"),
            serde_json::json!([order, {"sql": "INSERT INTO kv VALUES ('a', 1)"}, line]),
        ),
        (
            once("INSERT", "lines"),
            serde_json::json!([order, {"sql": "INSERT INTO orders(note) VALUES ('pending'), ('pending')"},
                {"sql": "CREATE TEMP TABLE todo(id INTEGER PRIMARY KEY, order_id INT); INSERT INTO todo(order_id) SELECT id FROM orders WHERE note = 'pending'"},
                {"sql": "UPDATE orders SET note = 'done' WHERE id IN (SELECT order_id FROM todo)"},
                line]),
        ),
    ];
    for (block, steps) in &cases {
        let want = uninterrupted(steps, &[]);
        for extra in [&[][..], &["--undo"]] {
            let db = stopped_then_resumed(block, steps, extra);
            assert_eq!(content(&db), want, "{steps} {extra:?}");
        }
    }
    // What the first case's step 3 read: the order of step 1.
    let (_, steps) = &cases[0];
    let db = stopped_then_resumed(&cases[0].0, steps, &[]);
    assert_eq!(db.query_i64("SELECT v FROM m"), 42);
    assert_eq!(db.query_i64("SELECT order_id FROM lines"), 42);
}

/// Holds a run of `steps` (with `extra`) once `log` has `rows` rows,
/// between two chunks, then kills it with SIGKILL.
fn killed_part_way(db: &TempDb, steps: &serde_json::Value, rows: u64, extra: &[&str]) {
    let plan = serde_json::json!({"name": "rowid", "steps": steps}).to_string();
    let plan = db.file("plan.json", &plan);
    let hold = format!("SELECT (SELECT count(*) FROM log) >= {rows}");
    // A pause longer than the throttle query's 100 ms between two asks,
    // so it is asked afresh after every chunk.
    let mut a = run_args(
        db,
        path_str(&plan),
        &["--no-serve", "--progress", "plain", "--sleep", "120"],
    );
    a.extend_from_slice(&["--throttle-query", &hold]);
    a.extend_from_slice(extra);
    let mut p = Proc::start(&a);
    p.wait_stderr("throttled (throttle-query)");
    p.signal("KILL");
    p.wait();
    assert_eq!(db.query_i64("SELECT count(*) FROM log"), rows as i64);
}

/// A chunked step killed part-way whose statement reads the rowid its
/// own earlier chunks left: the first chunk of the resumed run read 0 (a
/// new connection), and the run finished ok; with an order inserted by
/// the step before, the resume was refused. Each resume now goes on from
/// the rowid the last committed chunk left, and ends as the run that was
/// never stopped, with `--undo` too.
#[test]
fn a_walk_killed_part_way_resumes_with_the_rowid_its_own_chunks_left() {
    let walk = serde_json::json!({
        "sql": "INSERT INTO log(prev, tid) SELECT last_insert_rowid(), id FROM t WHERE id BETWEEN :lo AND :hi",
        "chunk": {"table": "t", "size": 3}});
    let order = serde_json::json!({"sql": "INSERT INTO orders(note) VALUES ('new')"});
    let line = serde_json::json!({"sql": "INSERT INTO lines(order_id) VALUES (last_insert_rowid())",
        "expect": "SELECT last_insert_rowid() = (SELECT max(id) FROM lines)"});
    for steps in [
        serde_json::json!([walk]),
        serde_json::json!([order, walk, line]),
    ] {
        let want = uninterrupted(&steps, &["--batch-size", "3"]);
        for extra in [&[][..], &["--undo"]] {
            let mut args = vec!["--batch-size", "3"];
            args.extend_from_slice(extra);
            let db = TempDb::with_sql(SHOP);
            killed_part_way(&db, &steps, 6, &args);
            let (code, err) = run_steps(&db, &steps, &args);
            assert_eq!(code, 0, "{steps} {extra:?}: {err}");
            assert!(err.contains("continues after 6 committed rows"), "{err}");
            assert_eq!(content(&db), want, "{steps} {extra:?}");
        }
    }
    // The seventh row, the resumed run's first, read the sixth's rowid.
    let db = TempDb::with_sql(SHOP);
    let steps = serde_json::json!([walk]);
    killed_part_way(&db, &steps, 6, &["--batch-size", "3"]);
    let (code, err) = run_steps(&db, &steps, &["--batch-size", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT prev FROM log WHERE tid = 7"), 6);
}

/// An undo of the resumed run takes back the step that read the rowid,
/// and leaves the earlier run's step applied and checkpointed, with the
/// rowid it left: the plan run again reads it again (it was refused, the
/// earlier run's insert applied), and ends as the run never stopped.
#[test]
fn after_an_undo_of_the_resumed_run_the_plan_runs_again_from_the_rowid_kept() {
    let steps = serde_json::json!([
        {"sql": "INSERT INTO orders(note) VALUES ('new')"},
        {"sql": "INSERT INTO lines(order_id) VALUES (last_insert_rowid())"}]);
    let want = uninterrupted(&steps, &[]);
    // The first run unrecorded, its resume recorded.
    let db = TempDb::with_sql(SHOP);
    db.conn().execute_batch(&once("INSERT", "lines")).unwrap();
    assert_eq!(run_steps(&db, &steps, &[]).0, 1);
    db.conn().execute_batch("DROP TRIGGER once").unwrap();
    let (code, err) = run_steps(&db, &steps, &["--undo"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(content(&db), want);
    let (code, _, err) = run(&undo_of_plan(&db, "rowid", &[]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT count(*) FROM lines"), 0, "{err}");
    let (code, err) = run_steps(&db, &steps, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(content(&db), want);
}

/// Runs `steps` on a file where `block` fails the first run part-way,
/// then drops it, and the checkpoint's rowid column, as the table of an
/// earlier release, which kept no rowid, has none.
fn stopped_by_an_earlier_release(block: &str, steps: &serde_json::Value) -> TempDb {
    let db = TempDb::with_sql(SHOP);
    db.conn().execute_batch(block).unwrap();
    let (code, err) = run_steps(&db, steps, &[]);
    assert_eq!(
        code, 1,
        "{steps}: the first run stops at the trigger: {err}"
    );
    db.conn()
        .execute_batch(
            "DROP TRIGGER once; ALTER TABLE batchsse_checkpoint DROP COLUMN last_insert_rowid",
        )
        .unwrap();
    db
}

/// The checkpoint of an earlier release, which kept no rowid: a resume
/// is refused, nothing written (a dry run too), where a step still to
/// run reads `last_insert_rowid()` (in its SQL or its `expect`, however
/// far after the insert the earlier run applied, past a TEMP-only step
/// done again), and so is a walk resumed part-way whose statement reads
/// the rowid its own chunks left (it read 0, and finished ok). A step
/// that inserts before it reads, or names the function only in a comment
/// or a string, resumes; and from then on the table keeps the rowid.
/// `checkpoint list` reads the table as it is.
#[test]
fn a_checkpoint_of_an_earlier_release_refuses_only_a_resume_that_would_read_its_rowid() {
    let order = serde_json::json!({"sql": "INSERT INTO orders(note) VALUES ('new')"});
    let refused = [
        (
            once("UPDATE", "m"),
            serde_json::json!([order, {"sql": "UPDATE m SET v = 1"},
                {"sql": "UPDATE m SET v = last_insert_rowid()"}]),
            "step 3 (",
        ),
        (
            once("INSERT", "lines"),
            serde_json::json!([order, {"sql": "CREATE TEMP VIEW tv AS SELECT 1 AS x"},
                {"sql": "INSERT INTO lines(order_id) VALUES (Last_Insert_Rowid())"}]),
            "step 3 (",
        ),
        (
            once("UPDATE", "m"),
            serde_json::json!([order, {"sql": "UPDATE m SET v = 1",
                "expect": "SELECT last_insert_rowid() = 42"}]),
            "step 2 (",
        ),
    ];
    for (block, steps, step) in &refused {
        let db = stopped_by_an_earlier_release(block, steps);
        let before = sha256(&db.path);
        for extra in [&["--dry-run"][..], &[]] {
            let (code, err) = run_steps(&db, steps, extra);
            assert_eq!(code, 2, "{steps} {extra:?}: {err}");
            assert!(
                err.contains(step)
                    && err.contains("calls last_insert_rowid()")
                    && err.contains("this run resumes after step 1 (")
                    && err.contains("earlier release"),
                "{steps} {extra:?}: {err}"
            );
            assert_eq!(
                sha256(&db.path),
                before,
                "{steps} {extra:?}: nothing written"
            );
        }
        let (code, _, err) = run(&["checkpoint", "list", "--db", path_str(&db.path)]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(sha256(&db.path), before, "nothing written");
    }
    let resumes = [
        (
            serde_json::json!([order, {"sql":
                "INSERT INTO orders(note) VALUES ('second'); INSERT INTO lines(order_id) VALUES (last_insert_rowid())"}]),
            43,
        ),
        (
            serde_json::json!([order, {"sql":
                "INSERT INTO lines(order_id) SELECT max(id) FROM orders WHERE note <> 'last_insert_rowid' -- not last_insert_rowid()"}]),
            42,
        ),
    ];
    for (steps, line) in resumes {
        let db = stopped_by_an_earlier_release(&once("INSERT", "lines"), &steps);
        let (code, err) = run_steps(&db, &steps, &[]);
        assert_eq!(code, 0, "{steps}: {err}");
        assert_eq!(db.query_i64("SELECT order_id FROM lines"), line, "{steps}");
        // The earlier release's row knows none; the resumed step's insert
        // is known.
        assert_eq!(
            db.query_text(
                "SELECT group_concat(quote(last_insert_rowid), ',') FROM (SELECT last_insert_rowid FROM batchsse_checkpoint ORDER BY step)"
            ),
            "NULL,1",
            "{steps}"
        );
    }

    let walk = serde_json::json!([{
        "sql": "INSERT INTO log(prev, tid) SELECT last_insert_rowid(), id FROM t WHERE id BETWEEN :lo AND :hi",
        "chunk": {"table": "t", "size": 3}}]);
    let db = TempDb::with_sql(SHOP);
    killed_part_way(&db, &walk, 6, &["--batch-size", "3"]);
    db.conn()
        .execute_batch("ALTER TABLE batchsse_checkpoint DROP COLUMN last_insert_rowid")
        .unwrap();
    let before = sha256(&db.path);
    let (code, err) = run_steps(&db, &walk, &["--batch-size", "3"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("step 1 (") && err.contains("this run resumes it part-way"),
        "{err}"
    );
    assert_eq!(sha256(&db.path), before, "nothing written");
}

/// A TEMP-only step made again for a resume holds other rows than the
/// earlier run's (the file changed since), which are put back, and the
/// plan goes on from them: from the rowid the earlier run's row kept, as
/// the step after it reads. Its checkpoint row, written again, kept the
/// rowid the step made again left instead, so a resume after that one
/// (the step after it failing again) read that one: the line went to
/// another rowid than in the run never stopped.
#[test]
fn a_temp_step_put_back_keeps_the_rowid_of_the_rows_put_back_for_the_next_resume() {
    let steps = serde_json::json!([
        {"sql": "INSERT INTO orders(note) VALUES ('new')"},
        {"sql": "CREATE TEMP TABLE todo(id INTEGER PRIMARY KEY, tid INT); INSERT INTO todo(tid) SELECT id FROM t WHERE id > (SELECT count(*) FROM log)"},
        {"sql": "INSERT INTO lines(order_id) VALUES (last_insert_rowid())"}]);
    let want = uninterrupted(&steps, &[]);
    let db = TempDb::with_sql(SHOP);
    db.conn().execute_batch(&once("INSERT", "lines")).unwrap();
    assert_eq!(run_steps(&db, &steps, &[]).0, 1);
    // The application writes what the TEMP step reads: made again, it
    // holds 11 rows, not 12.
    db.conn()
        .execute_batch("INSERT INTO log(prev, tid) VALUES (0, 0)")
        .unwrap();
    let (code, err) = run_steps(&db, &steps, &[]);
    assert_eq!(code, 1, "the line still fails: {err}");
    assert!(err.contains("were put back"), "{err}");
    db.conn()
        .execute_batch("DROP TRIGGER once; DELETE FROM log")
        .unwrap();
    let (code, err) = run_steps(&db, &steps, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT order_id FROM lines"), 12, "{err}");
    assert_eq!(content(&db), want);
}

/// A checkpoint whose rowid column holds what batchsse never writes
/// there (text, by hand) is refused as unreadable, nothing run, as text
/// in any other of its columns is. It was taken for a rowid not known:
/// refused as written by an earlier release where a step reads the rowid,
/// and where the column was made NOT NULL, every resume failed its first
/// step (exit 1) writing NULL there.
#[test]
fn text_in_the_checkpoint_s_rowid_column_is_refused_as_altered_by_hand() {
    let order = serde_json::json!({"sql": "INSERT INTO orders(note) VALUES ('new')"});
    let update = serde_json::json!({"sql": "UPDATE m SET v = 1"});
    let line =
        serde_json::json!({"sql": "INSERT INTO lines(order_id) VALUES (last_insert_rowid())"});
    let not_null = "PRAGMA writable_schema = ON;
        UPDATE sqlite_schema SET sql = replace(sql, 'last_insert_rowid INTEGER,', 'last_insert_rowid INTEGER NOT NULL,')
        WHERE name = 'batchsse_checkpoint';
        PRAGMA writable_schema = OFF;";
    let cases = [
        ("", serde_json::json!([order, update, line])),
        (not_null, serde_json::json!([order, update])),
    ];
    for (altered, plan) in &cases {
        let db = TempDb::with_sql(SHOP);
        db.conn().execute_batch(&once("UPDATE", "m")).unwrap();
        assert_eq!(run_steps(&db, plan, &[]).0, 1);
        db.conn().execute_batch("DROP TRIGGER once").unwrap();
        db.conn().execute_batch(altered).unwrap();
        db.conn()
            .execute_batch("UPDATE batchsse_checkpoint SET last_insert_rowid = 'forty-two'")
            .unwrap();
        let before = sha256(&db.path);
        for extra in [&["--dry-run"][..], &[]] {
            let (code, err) = run_steps(&db, plan, extra);
            assert_eq!(code, 2, "{altered} {extra:?}: {err}");
            assert!(
                err.contains("cannot read batchsse_checkpoint")
                    && err.contains("last_insert_rowid")
                    && err.contains("altered by hand")
                    && !err.contains("earlier release"),
                "{altered} {extra:?}: {err}"
            );
            assert_eq!(sha256(&db.path), before, "{altered} {extra:?}");
        }
        let (code, out, err) = run(&["checkpoint", "list", "--json", "--db", path_str(&db.path)]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("\"plan\":\"rowid\""), "{out}");
    }
}

/// A checkpoint table whose rowid column was made a generated one (by
/// hand), which no run can write, is refused before anything runs, as a
/// table missing one of its other columns is. SQLite's list of a table's
/// columns leaves generated ones out: the run took the table for one of
/// an earlier release, and every run of any plan on the file failed its
/// first step (exit 1) adding the column again.
#[test]
fn a_generated_rowid_column_in_the_checkpoint_is_refused_before_anything_runs() {
    let steps = serde_json::json!([
        {"sql": "INSERT INTO orders(note) VALUES ('new')"},
        {"sql": "UPDATE m SET v = 1"}]);
    let db = TempDb::with_sql(SHOP);
    db.conn().execute_batch(&once("UPDATE", "m")).unwrap();
    assert_eq!(run_steps(&db, &steps, &[]).0, 1);
    db.conn()
        .execute_batch(
            "DROP TRIGGER once;
             ALTER TABLE batchsse_checkpoint DROP COLUMN last_insert_rowid;
             ALTER TABLE batchsse_checkpoint ADD COLUMN last_insert_rowid INTEGER GENERATED ALWAYS AS (7);",
        )
        .unwrap();
    let before = sha256(&db.path);
    let other = db.file(
        "other.json",
        r#"{"name": "other", "steps": [{"sql": "UPDATE m SET v = 2"}]}"#,
    );
    let plan = serde_json::json!({"name": "rowid", "steps": steps}).to_string();
    let plan = db.file("plan.json", &plan);
    let plans = [
        run_args(&db, path_str(&other), &["--no-serve"]),
        run_args(&db, path_str(&plan), &["--no-serve"]),
    ];
    for args in &plans {
        let (code, _, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("last_insert_rowid") && err.contains("generated"),
            "{args:?}: {err}"
        );
        assert_eq!(sha256(&db.path), before, "{args:?}");
    }
}

/// A unique index of the user's on the checkpoint table beside its
/// primary key: a step's row written over `INSERT OR REPLACE` deleted the
/// row of another step that kept the same value, as the rowid column
/// does for every step that inserts nothing, so a resume applied the
/// step whose row was gone a second time (the order inserted twice).
/// Refused before anything runs; one that holds (plan, step) is harmless.
#[test]
fn a_unique_index_on_the_checkpoint_beside_its_key_is_refused_before_anything_runs() {
    let steps = serde_json::json!([
        {"sql": "INSERT INTO orders(note) VALUES ('new')"},
        {"sql": "UPDATE m SET v = v + 1"},
        {"sql": "INSERT INTO lines(order_id) VALUES (last_insert_rowid())"}]);
    let want = uninterrupted(&steps, &[]);
    let setup = serde_json::json!({"name": "setup", "steps": [{"sql": "UPDATE m SET v = 0"}]});
    for (index, refused) in [
        ("(last_insert_rowid)", true),
        ("(done, changed)", true),
        ("(step, plan, name)", false),
    ] {
        let db = TempDb::with_sql(SHOP);
        let first = db.file("setup.json", &setup.to_string());
        assert_eq!(run(&run_args(&db, path_str(&first), &["--no-serve"])).0, 0);
        db.conn()
            .execute_batch(&format!(
                "CREATE UNIQUE INDEX mine ON batchsse_checkpoint{index}; {}",
                once("INSERT", "lines")
            ))
            .unwrap();
        let before = sha256(&db.path);
        let (code, err) = run_steps(&db, &steps, &[]);
        if !refused {
            assert_eq!(code, 1, "{index}: {err}");
            db.conn().execute_batch("DROP TRIGGER once").unwrap();
            let (code, err) = run_steps(&db, &steps, &[]);
            assert_eq!(code, 0, "{index}: {err}");
            assert_eq!(content(&db), want, "{index}");
            continue;
        }
        assert_eq!(code, 2, "{index}: {err}");
        assert!(
            err.contains("unique index") && err.contains("\"mine\""),
            "{index}: {err}"
        );
        assert_eq!(sha256(&db.path), before, "{index}");
    }
}
