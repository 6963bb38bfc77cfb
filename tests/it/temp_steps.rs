//! A step that writes only TEMP tables is made again at every resume
//! (its tables went with the stopped run's connection); the rows they
//! held are kept in the file until the plan is done, and put back where
//! the step, made again, holds other rows, so the resume goes on from
//! the stopped run's.

use crate::util::*;

/// `orders(id, status, tag)` with `n` rows, the odd ones pending, and a
/// trigger that stops any update of `stop_at` while `flag` has a row.
fn orders(n: u64, stop_at: u64) -> TempDb {
    TempDb::with_sql(&format!(
        "CREATE TABLE flag(x); INSERT INTO flag VALUES (1);
         CREATE TABLE orders(id INTEGER PRIMARY KEY, status TEXT, tag);
         CREATE TRIGGER stop BEFORE UPDATE ON orders WHEN new.id = {stop_at} AND EXISTS (SELECT 1 FROM flag)
         BEGIN SELECT RAISE(ABORT, 'stopped'); END;
         INSERT INTO orders(id, status) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})
         SELECT i, CASE i % 2 WHEN 1 THEN 'pending' ELSE 'new' END FROM s;"
    ))
}

fn go(db: &TempDb, plan: &serde_json::Value, size: &str) -> (i32, String, String) {
    go_with(db, plan, size, &[])
}

/// [`go`] with more flags.
fn go_with(
    db: &TempDb,
    plan: &serde_json::Value,
    size: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let path = db.file("plan.json", &plan.to_string());
    let mut args = run_args(db, path_str(&path), &["--no-serve", "--batch-size", size]);
    args.extend_from_slice(extra);
    run(&args)
}

/// Checks a resume that put the stopped run's rows back and finished
/// with every pending order done.
fn resumed_whole(db: &TempDb, (code, _, err): (i32, String, String)) {
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("were put back"), "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM orders WHERE status = 'pending'"),
        0,
        "{err}"
    );
}

/// Runs `plan` until the `orders` trigger stops it (exit 1), then lets
/// the row it stopped at through: what a resume goes on from.
fn stop(db: &TempDb, plan: &serde_json::Value, size: &str) {
    let (code, _, err) = go(db, plan, size);
    assert_eq!(code, 1, "the trigger stops the run: {err}");
    db.conn().execute_batch("DELETE FROM flag").unwrap();
}

/// `n` with a comma between each three digits, as batchsse prints it.
fn grouped(n: i64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ours(db: &TempDb) -> String {
    db.query_text(
        "SELECT coalesce(group_concat(name), '') FROM sqlite_schema WHERE name LIKE 'batchsse_setup%'",
    )
}

/// The commonest TEMP table: a list of the rows to do. Made again on a
/// resume it lists only the rows the stopped run had not reached, and
/// the resume used to stop there. The stopped run's rows are put back
/// instead, whole (their rowids, BLOBs, REALs and NULLs as they were,
/// over several parts), and the random tag each row was given is the one
/// the stopped run drew: the plan finishes as one run would have.
#[test]
fn a_resumed_to_do_list_goes_on_from_the_rows_it_listed() {
    let db = orders(60_000, 30_001);
    let plan = serde_json::json!({"name": "todo", "steps": [
        {"sql": "CREATE TEMP TABLE todo(id INTEGER, note TEXT, b BLOB, r REAL, n);
                 CREATE INDEX temp.todo_id ON todo(id);
                 INSERT INTO todo(rowid, id, note, b, r, n)
                 SELECT id * 3, id, 'note ' || id, randomblob(4), id / 7.0, NULL FROM orders WHERE status = 'pending'"},
        {"sql": "UPDATE orders SET status = 'done', tag = (SELECT b FROM todo WHERE todo.id = orders.id)
                 WHERE id IN (SELECT id FROM todo) AND id BETWEEN :lo AND :hi",
         "chunk": {"table": "orders", "size": 1000}},
        {"sql": "CREATE TABLE seen AS SELECT rowid AS rid, * FROM todo"},
    ]});
    let (code, _, err) = go(&db, &plan, "1000");
    assert_eq!(code, 1, "{err}");
    assert!(
        db.query_i64("SELECT count(*) FROM batchsse_setup") > 1,
        "kept in several parts"
    );
    let kept = db.query_i64("SELECT sum(length(rows)) FROM batchsse_setup");
    let dbp = path_str(&db.path);
    let (code, out, err) = run(&["checkpoint", "list", "--db", dbp]);
    assert_eq!(code, 0, "{err}");
    let says = format!(
        "its TEMP tables' rows kept for a resume, {} bytes",
        grouped(kept)
    );
    assert!(out.contains(&says), "{says}: {out}");
    let (code, out, err) = run(&["checkpoint", "list", "--db", dbp, "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let steps = &listed["plans"][0]["steps"];
    assert_eq!(steps[0]["kept_bytes"], kept, "{out}");
    assert_eq!(steps[1]["kept_bytes"], 0, "{out}");
    db.conn().execute_batch("DELETE FROM flag").unwrap();
    let (code, _, err) = go(&db, &plan, "1000");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("the earlier run's 30,000 row(s), kept in the file, were put back"),
        "{err}"
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM seen"), 30_000, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM orders WHERE status = 'pending'"),
        0
    );
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM orders o JOIN seen s USING (id) WHERE o.tag IS NOT s.b OR typeof(s.b) <> 'blob'"
        ),
        0,
        "every row tagged by the stopped run's list"
    );
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM seen WHERE rid <> id * 3 OR r <> id / 7.0 OR n IS NOT NULL OR note <> 'note ' || id"
        ),
        0,
        "rowids and values as they were"
    );
    assert_eq!(ours(&db), "", "gone once the plan is done");
}

/// A TEMP table made again from rows a later step has already changed in
/// part (the average of `v`, which step 2 lowers) would hold another
/// average; the stopped run's is put back, and every row is lowered by
/// it. A step edited before the resume is made as it says now.
#[test]
fn a_resumed_average_is_the_stopped_runs_unless_the_step_is_edited() {
    for edited in [false, true] {
        let db = TempDb::with_sql(
            "CREATE TABLE flag(x); INSERT INTO flag VALUES (1);
             CREATE TABLE t(id INTEGER PRIMARY KEY, v REAL);
             CREATE TRIGGER stop BEFORE UPDATE ON t WHEN new.id = 7 AND EXISTS (SELECT 1 FROM flag)
             BEGIN SELECT RAISE(ABORT, 'stopped'); END;
             INSERT INTO t WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 10) SELECT i, i * 10 FROM s;",
        );
        let plan = |avg: &str| {
            serde_json::json!({"name": "avg", "steps": [
                {"sql": format!("CREATE TEMP TABLE avgv AS SELECT {avg}")},
                {"sql": "UPDATE t SET v = v - (SELECT a FROM avgv) WHERE id BETWEEN :lo AND :hi",
                 "chunk": {"table": "t", "size": 3}},
            ]})
        };
        stop(&db, &plan("avg(v) AS a FROM t"), "3");
        let again = match edited {
            false => plan("avg(v) AS a FROM t"),
            true => plan("50.0 AS a"),
        };
        let (code, _, err) = go(&db, &again, "3");
        assert_eq!(code, 0, "{err}");
        let want = match edited {
            false => "-45.0,-35.0,-25.0,-15.0,-5.0,5.0,15.0,25.0,35.0,45.0",
            true => "-45.0,-35.0,-25.0,-15.0,-5.0,5.0,20.0,30.0,40.0,50.0",
        };
        assert_eq!(
            db.query_text("SELECT group_concat(v) FROM t"),
            want,
            "edited {edited}: {err}"
        );
        assert_eq!(err.contains("were put back"), !edited, "{err}");
        assert_eq!(ours(&db), "");
    }
}

/// A TEMP table a TEMP trigger fires on cannot be filled again as it was
/// (the trigger would fire): its rows are not kept, and a resume whose
/// step makes other rows (here `random()`) stops there, nothing more
/// written, with what to do.
#[test]
fn a_resumed_temp_table_that_cannot_be_put_back_stops_the_resume() {
    let db = orders(10, 7);
    let plan = serde_json::json!({"name": "stamp", "steps": [
        {"sql": "CREATE TEMP TABLE run(stamp);
                 CREATE TEMP TRIGGER run_seen AFTER INSERT ON run BEGIN SELECT 1; END;
                 INSERT INTO run VALUES (random())"},
        {"sql": "UPDATE orders SET tag = (SELECT stamp FROM run) WHERE id BETWEEN :lo AND :hi",
         "chunk": {"table": "orders", "size": 3}},
    ]});
    let (code, _, err) = go(&db, &plan, "3");
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM batchsse_setup WHERE part >= 0"),
        0,
        "no rows kept, only a note that the step made the table"
    );
    db.conn().execute_batch("DELETE FROM flag").unwrap();
    let tags = "SELECT group_concat(coalesce(tag, '-')) FROM orders";
    let stopped = db.query_text(tags);
    let (code, _, err) = go(&db, &plan, "3");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("its TEMP tables hold other rows than the earlier run's did")
            && err.contains("something that differs at every run (the time, random())")
            && err.contains("may be edited before a resume"),
        "{err}"
    );
    assert_eq!(db.query_text(tags), stopped, "nothing more written");
}

/// The kept rows go with the plan's checkpoint: by `checkpoint clear`,
/// and by an undo that takes the run back whole, after which the file
/// holds none of batchsse's tables.
#[test]
fn the_kept_rows_go_with_the_checkpoint_and_with_an_undo() {
    let plan = serde_json::json!({"name": "todo", "steps": [
        {"sql": "CREATE TEMP TABLE todo AS SELECT id FROM orders WHERE status = 'pending'"},
        {"sql": "UPDATE orders SET status = 'done' WHERE id IN (SELECT id FROM todo) AND id BETWEEN :lo AND :hi",
         "chunk": {"table": "orders", "size": 10}},
    ]});
    for how in ["clear", "undo"] {
        let db = orders(100, 71);
        let before = db.query_text("SELECT group_concat(id || status) FROM orders");
        let path = db.file("plan.json", &plan.to_string());
        let extra: &[&str] = match how {
            "undo" => &["--no-serve", "--undo"],
            _ => &["--no-serve"],
        };
        let (code, _, err) = run(&run_args(&db, path_str(&path), extra));
        assert_eq!(code, 1, "{err}");
        assert_eq!(ours(&db), "batchsse_setup");
        let dbp = path_str(&db.path);
        let (code, _, err) = match how {
            "undo" => run(&["undo", "--db", dbp, "--plan", "todo", "--no-serve"]),
            _ => run(&["checkpoint", "clear", "--db", dbp, "--plan", "todo"]),
        };
        assert_eq!(code, 0, "{how}: {err}");
        assert_eq!(ours(&db), "", "{how}");
        if how == "undo" {
            assert_eq!(
                db.query_text("SELECT group_concat(id || status) FROM orders"),
                before
            );
        }
    }
}

/// A `batchsse_setup` of the user's (here a view) is refused before a
/// plan with a TEMP-only step runs, with what to do; a plan without one
/// runs.
#[test]
fn a_setup_table_of_the_users_is_refused_before_anything_runs() {
    let db = orders(10, 0);
    db.conn()
        .execute_batch("CREATE VIEW batchsse_setup AS SELECT 1 AS x")
        .unwrap();
    let hash = sha256(&db.path);
    let temp = serde_json::json!({"name": "p", "steps": [
        {"sql": "CREATE TEMP TABLE todo AS SELECT id FROM orders"},
        {"sql": "UPDATE orders SET status = 'done' WHERE id IN (SELECT id FROM todo)"},
    ]});
    let (code, _, err) = go(&db, &temp, "3");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("batchsse_setup is a view, not batchsse's table")
            && err.contains("the rows of the TEMP tables a step makes")
            && err.contains("--no-checkpoint"),
        "{err}"
    );
    assert_eq!(sha256(&db.path), hash, "untouched");
    let plain = serde_json::json!({"name": "q", "steps": [
        {"sql": "UPDATE orders SET status = 'done'"},
    ]});
    let (code, _, err) = go(&db, &plain, "3");
    assert_eq!(code, 0, "{err}");
}

/// A TEMP-only step reads the file without its write lock: made from a
/// long scan (here a count that would not end in time), it stopped the
/// application's writes as long as it ran. In WAL mode another connection
/// now writes while it runs, at once; Ctrl-C still stops it.
#[test]
fn a_temp_step_lets_the_application_write_while_it_reads() {
    let db = TempDb::with_sql(
        "PRAGMA journal_mode = WAL; CREATE TABLE app(v); CREATE TABLE t(id INTEGER PRIMARY KEY);",
    );
    let plan = serde_json::json!({"name": "long", "steps": [
        {"sql": "CREATE TEMP TABLE n AS WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 1000000000) SELECT count(*) AS c FROM s"},
        {"sql": "UPDATE t SET id = id"},
    ]});
    let path = db.file("plan.json", &plan.to_string());
    let mut run = serving(&db, path_str(&path), &[]);
    wait_status(run.addr(), |s| s["step"] == 0 && s["state"] == "running");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let app = db.conn();
    app.busy_timeout(std::time::Duration::ZERO).unwrap();
    app.execute("INSERT INTO app VALUES (1)", [])
        .expect("the application writes while the step reads");
    assert_eq!(
        get(run.addr(), "/status", &[]).json()["step"],
        0,
        "still running"
    );
    run.signal("INT");
    assert_eq!(run.wait().code(), Some(130));
}

/// A step that writes the file and also changes a TEMP table an earlier
/// TEMP-only step made (here it takes a held order off the to-do list)
/// is not done again on a resume, so the table made again lacks that
/// change: put back, the rows the TEMP-only step kept would bring the
/// held order back; and made again from rows the run has not changed
/// (the second round), the table held it again with nothing put back.
/// Either way the resume changed the held order and finished ok. It now
/// stops at the TEMP-only step, nothing more written, naming the step
/// that changed the table.
#[test]
fn a_temp_table_a_later_step_changed_stops_the_resume() {
    for todo in ["status = 'pending'", "id % 2 = 1"] {
        let db = orders(10, 7);
        let plan = held(&format!(
            "CREATE TEMP TABLE todo AS SELECT id FROM orders WHERE {todo}"
        ));
        let err = stops_for_the_held_order(&db, &plan, todo);
        assert!(err.contains("Start the plan over"), "{todo}: {err}");
    }
}

/// A plan whose step 2, which writes the file, takes order 9 off the
/// TEMP to-do list step 1 (`first`) made, and whose step 3 changes the
/// orders on the list until the trigger stops it at order 7.
fn held(first: &str) -> serde_json::Value {
    serde_json::json!({"name": "held", "steps": [
        {"sql": first},
        {"sql": "CREATE TABLE held(id); INSERT INTO held VALUES (9);
                 DELETE FROM todo WHERE id IN (SELECT id FROM held)"},
        {"sql": "UPDATE orders SET status = 'done' WHERE id IN (SELECT id FROM todo) AND id BETWEEN :lo AND :hi",
         "chunk": {"table": "orders", "size": 3}},
    ]})
}

/// Stops [`held`]'s `plan`, resumes it, and checks the resume stopped at
/// step 1 naming step 2, the held order and every other row as they
/// were; the resume's stderr.
fn stops_for_the_held_order(db: &TempDb, plan: &serde_json::Value, label: &str) -> String {
    stop(db, plan, "3");
    let statuses = "SELECT group_concat(status) FROM orders";
    let stopped = db.query_text(statuses);
    let (code, _, err) = go(db, plan, "3");
    assert_eq!(
        db.query_text("SELECT status FROM orders WHERE id = 9"),
        "pending",
        "{label}: the held order is left alone: {err}"
    );
    assert_eq!(code, 1, "{label}: {err}");
    assert!(
        err.contains("step 2 (") && err.contains("changed the TEMP table \"todo\" this step made"),
        "{label}: {err}"
    );
    assert_eq!(
        db.query_text(statuses),
        stopped,
        "{label}: nothing more written"
    );
    err
}

/// A TEMP-only step edited before a resume is made as it says now; the
/// rows a later TEMP-only step kept were made from what it made before
/// (here the to-do list less the order taken off it), so putting them
/// back would undo the edit: the order the edit leaves out was changed,
/// and the resume finished ok. The later step stops there instead,
/// nothing more written, saying why.
#[test]
fn rows_kept_after_a_step_edited_since_are_not_put_back() {
    let db = orders(10, 7);
    let plan = |todo: &str| {
        serde_json::json!({"name": "edit", "steps": [
            {"sql": format!("CREATE TEMP TABLE todo AS SELECT id FROM orders WHERE {todo}")},
            {"sql": "DELETE FROM todo WHERE id = 3"},
            {"sql": "UPDATE orders SET status = 'done' WHERE id IN (SELECT id FROM todo) AND id BETWEEN :lo AND :hi",
             "chunk": {"table": "orders", "size": 3}},
        ]})
    };
    stop(&db, &plan("status = 'pending'"), "3");
    let (code, _, err) = go(&db, &plan("status = 'pending' AND id <> 9"), "3");
    assert_eq!(
        db.query_text("SELECT status FROM orders WHERE id = 9"),
        "pending",
        "the order the edit leaves out is left alone: {err}"
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("step 1") && err.contains("edited") && !err.contains("were put back"),
        "{err}"
    );
}

/// Two TEMP tables of a step, one referring to the other, with foreign
/// keys on: the kept rows are put back whatever the reference does on a
/// delete. Emptying the parent first failed the resume, every time, with
/// "FOREIGN KEY constraint failed" (or, `ON DELETE CASCADE`, emptied the
/// child put back before it, and the resume stopped).
#[test]
fn kept_rows_of_temp_tables_that_refer_to_each_other_are_put_back() {
    for action in [
        "",
        "ON DELETE CASCADE",
        "ON DELETE RESTRICT",
        "ON DELETE SET NULL",
    ] {
        let db = orders(10, 7);
        let plan = serde_json::json!({"name": "fk", "steps": [
            {"sql": "PRAGMA foreign_keys = ON"},
            {"sql": format!("CREATE TEMP TABLE p(id INTEGER PRIMARY KEY);
                     CREATE TEMP TABLE c(pid REFERENCES p(id) {action}, n);
                     INSERT INTO p SELECT id FROM orders WHERE status = 'pending';
                     INSERT INTO c SELECT id, 1 FROM p")},
            {"sql": "UPDATE orders SET status = 'done' WHERE id IN (SELECT pid FROM c) AND id BETWEEN :lo AND :hi",
             "chunk": {"table": "orders", "size": 3}},
        ]});
        stop(&db, &plan, "3");
        resumed_whole(&db, go(&db, &plan, "3"));
    }
}

/// A TEMP-only step reads without the write lock, and writes its kept
/// rows and checkpoint row afterwards: another run of the plan that
/// wrote them in between must not be written over. Here run B reads
/// first, from the file before order 10 turns pending; run A, after it,
/// lists order 10, stops before reaching it, and keeps its list; B then
/// wrote its own list over A's, and the resume, putting B's back, left
/// order 10 pending and finished ok. B now stops, writing nothing. B's
/// scan takes seconds; A's whole run, and the half second B is given to
/// begin reading, much less.
#[test]
fn a_temp_step_does_not_write_over_what_another_run_kept_meanwhile() {
    let db = orders(10, 7);
    db.conn()
        .execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE slow(n); INSERT INTO slow VALUES (20000000);",
        )
        .unwrap();
    let plan = serde_json::json!({"name": "twice", "steps": [
        {"sql": "CREATE TEMP TABLE todo AS SELECT id FROM orders WHERE status = 'pending'
                 AND (WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < (SELECT n FROM slow))
                      SELECT count(*) FROM s) > 0"},
        {"sql": "UPDATE orders SET status = 'done' WHERE id IN (SELECT id FROM todo) AND id BETWEEN :lo AND :hi",
         "chunk": {"table": "orders", "size": 3}},
    ]});
    // B from a file of its own: A, run from `plan.json`, would be refused
    // before it ran as a second run of B's file.
    let path = db.file("b.json", &plan.to_string());
    let mut b = serving(&db, path_str(&path), &["--batch-size", "3"]);
    wait_status(b.addr(), |s| s["step"] == 0 && s["state"] == "running");
    std::thread::sleep(std::time::Duration::from_millis(500));
    db.conn()
        .execute_batch("UPDATE slow SET n = 1; UPDATE orders SET status = 'pending' WHERE id = 10;")
        .unwrap();
    let (code, _, err) = go(&db, &plan, "3");
    assert_eq!(code, 1, "A stops at order 7: {err}");
    assert_eq!(
        get(b.addr(), "/status", &[]).json()["step"],
        0,
        "B still reads"
    );
    assert_eq!(b.wait().code(), Some(1));
    db.conn().execute_batch("DELETE FROM flag").unwrap();
    let (code, _, err) = go(&db, &plan, "3");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_text("SELECT coalesce(group_concat(id), '') FROM orders WHERE status = 'pending'"),
        "",
        "order 10, on A's list, done: {err}"
    );
}

/// A TEMP table whose rows are not kept (a TEMP trigger fires on it)
/// that a later step writing the file changed: the note that stops the
/// resume was left only beside kept rows, so none was left, the table
/// made again held the held order again, and the resume changed it and
/// finished ok. It stops at the TEMP-only step, as where rows are kept.
#[test]
fn a_temp_table_not_kept_that_a_later_step_changed_stops_the_resume() {
    let db = orders(10, 7);
    let plan = held(
        "CREATE TEMP TABLE todo(id);
         CREATE TEMP TRIGGER todo_seen AFTER INSERT ON todo BEGIN SELECT 1; END;
         INSERT INTO todo SELECT id FROM orders WHERE id % 2 = 1",
    );
    stops_for_the_held_order(&db, &plan, "not kept");
    let (code, _, err) = go(&db, &plan, "3");
    assert_eq!(code, 1, "stops again: {err}");
    let dbp = path_str(&db.path);
    let (code, _, err) = run(&["checkpoint", "clear", "--db", dbp, "--plan", "held"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ours(&db), "", "the note goes with the checkpoint");
}

/// An undo that takes back the step that changed a TEMP table, while an
/// earlier step it cannot take back ("undo": false) keeps the TEMP-only
/// step checkpointed: the note that step left stayed, and running the
/// plan again failed at the TEMP-only step, saying the step taken back
/// "is not done again on a resume". It is done again: the run finishes.
/// Where the step left in place changed the table too, its change is
/// still noted, and the run stops.
#[test]
fn a_note_goes_with_an_undo_of_the_step_that_left_it() {
    for also in ["", "; DELETE FROM todo WHERE id = 1"] {
        let db = orders(10, 7);
        let plan = serde_json::json!({"name": "held", "steps": [
            {"sql": "CREATE TEMP TABLE todo AS SELECT id FROM orders WHERE id % 2 = 1"},
            {"sql": format!("UPDATE orders SET tag = 'x' WHERE id = 2{also}"), "undo": false},
            {"sql": "UPDATE orders SET tag = 'held' WHERE id = 9; DELETE FROM todo WHERE id = 9"},
            {"sql": "UPDATE orders SET status = 'done' WHERE id IN (SELECT id FROM todo) AND id BETWEEN :lo AND :hi",
             "chunk": {"table": "orders", "size": 3}},
        ]});
        let path = db.file("plan.json", &plan.to_string());
        let args = run_args(
            &db,
            path_str(&path),
            &["--no-serve", "--undo", "--batch-size", "3"],
        );
        let (code, _, err) = run(&args);
        assert_eq!(code, 1, "{also}: {err}");
        let dbp = path_str(&db.path);
        let (code, _, err) = run(&["undo", "--db", dbp, "--plan", "held", "--no-serve"]);
        assert_eq!(code, 0, "{also}: {err}");
        assert_eq!(
            db.query_text("SELECT group_concat(coalesce(tag, '-') || status) FROM orders"),
            "-pending,xnew,-pending,-new,-pending,-new,-pending,-new,-pending,-new",
            "{also}: taken back down to step 2: {err}"
        );
        db.conn().execute_batch("DELETE FROM flag").unwrap();
        let (code, _, err) = run(&args);
        if also.is_empty() {
            assert_eq!(code, 0, "{err}");
            assert_eq!(
                db.query_text(
                    "SELECT group_concat(id || status) FROM orders WHERE tag IS 'held' OR status = 'pending'"
                ),
                "9pending",
                "{err}"
            );
            assert_eq!(ours(&db), "");
        } else {
            assert_eq!(code, 1, "{also}: {err}");
            assert!(
                err.contains("step 2 (") && err.contains("changed the TEMP table \"todo\""),
                "{also}: {err}"
            );
        }
    }
}

/// An `expect` of a TEMP-only step held for the rows the stopped run
/// made; made again on a resume the to-do list has lost the rows done,
/// and the `expect`, checked on that before the stopped run's rows were
/// put back, failed the resume every time. Where they are put back, the
/// step leaves the rows its `expect` held for, so the resume goes on
/// (here one transaction, `--atomic`, too).
#[test]
fn an_expect_of_a_temp_step_does_not_fail_the_resume_that_puts_its_rows_back() {
    for extra in [&[][..], &["--atomic"][..]] {
        let db = orders(10, 7);
        let plan = serde_json::json!({"name": "exp", "steps": [
            {"sql": "CREATE TEMP TABLE todo AS SELECT id FROM orders WHERE status = 'pending'",
             "expect": "SELECT count(*) = 5 FROM todo"},
            {"sql": "UPDATE orders SET status = 'done' WHERE id IN (SELECT id FROM todo) AND id BETWEEN :lo AND :hi",
             "chunk": {"table": "orders", "size": 3}},
        ]});
        stop(&db, &plan, "3");
        resumed_whole(&db, go_with(&db, &plan, "3", extra));
    }
}

/// A run killed while it writes the rows its first TEMP-only step keeps
/// (a part a transaction, the step's checkpoint row last) leaves parts in
/// `batchsse_setup` and no checkpoint: `checkpoint clear`, by plan or
/// whole, said there was none to clear and left them in the file. They
/// are cleared with the plan's checkpoint.
#[test]
fn rows_kept_by_a_run_killed_before_its_first_checkpoint_are_cleared() {
    for which in ["--all", "--plan"] {
        let db =
            TempDb::with_sql("PRAGMA journal_mode = WAL; CREATE TABLE t(id INTEGER PRIMARY KEY);");
        // About 40 MB of rows, kept in 160 parts: the kill lands long
        // before the last one.
        let plan = serde_json::json!({"name": "big", "steps": [
            {"sql": "CREATE TEMP TABLE todo AS WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 400000)
                     SELECT i, randomblob(100) AS b FROM s"},
            {"sql": "UPDATE t SET id = id"},
        ]});
        let path = db.file("plan.json", &plan.to_string());
        let p = Proc::start(&run_args(&db, path_str(&path), &["--no-serve"]));
        let watch = db.conn();
        let kept = "SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_setup'
                    AND (SELECT count(*) FROM batchsse_setup) > 0";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while watch
            .query_row(kept, [], |r| r.get::<_, i64>(0))
            .unwrap_or(0)
            == 0
        {
            assert!(std::time::Instant::now() < deadline, "no part kept");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        p.signal("KILL");
        drop(p);
        assert_eq!(
            db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_checkpoint'"),
            0,
            "killed before the step's checkpoint row"
        );
        let dbp = path_str(&db.path);
        // Listed, with how to remove them: not "no checkpoint recorded"
        // alone, which left them unseen.
        let (code, out, err) = run(&["checkpoint", "list", "--db", dbp]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("plan \"big\": rows of the TEMP tables its step 1 made, ")
                && out.contains("checkpoint clear --db "),
            "{out}"
        );
        let (code, out, err) = run(&["checkpoint", "list", "--db", dbp, "--json"]);
        assert_eq!(code, 0, "{err}");
        let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
        let stray = &listed["kept_unrecorded"][0];
        assert_eq!(
            (&stray["plan"], &stray["index"]),
            (&"big".into(), &0.into()),
            "{out}"
        );
        assert!(stray["kept_bytes"].as_u64().unwrap() > 0, "{out}");
        let mut args = vec!["checkpoint", "clear", "--db", dbp, which];
        if which == "--plan" {
            args.push("big");
        }
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{which}: {err}");
        assert_eq!(ours(&db), "", "{which}: {out}");
        assert!(out.contains("\"big\""), "{which}: {out}");
    }
}

/// The TEMP tables of the user's whose names begin as batchsse's own
/// (`batchsse…`) or as SQLite's (`sqlite` and any character, a LIKE's
/// `_`) were left out of what a TEMP-only step made: not kept, made again
/// with fewer rows on the resume, and the plan finished ok from those.
#[test]
fn temp_tables_named_like_batchsses_or_sqlites_own_are_kept() {
    for t in ["batchsse_todo", "SQLiteTodo", "sqlite1"] {
        let db = orders(10, 7);
        let plan = serde_json::json!({"name": "named", "steps": [
            {"sql": format!("CREATE TEMP TABLE {t} AS SELECT id FROM orders WHERE status = 'pending'")},
            {"sql": format!("UPDATE orders SET status = 'done' WHERE id IN (SELECT id FROM {t}) AND id BETWEEN :lo AND :hi"),
             "chunk": {"table": "orders", "size": 3}},
            {"sql": format!("CREATE TABLE seen AS SELECT id FROM {t}")},
        ]});
        stop(&db, &plan, "3");
        let (code, _, err) = go(&db, &plan, "3");
        assert_eq!(code, 0, "{t}: {err}");
        assert_eq!(
            db.query_text("SELECT group_concat(id) FROM seen"),
            "1,3,5,7,9",
            "{t}: the stopped run's list: {err}"
        );
    }
}
