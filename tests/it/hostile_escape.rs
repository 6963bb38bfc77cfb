//! A hostile user's chunked steps against the empty-chunk try: statements
//! that escape their chunk in ways a single try before the run missed.

use serde_json::json;

use crate::util::*;

fn run_plan(db: &TempDb, plan: &serde_json::Value, extra: &str) -> (i32, String, String) {
    let path = db.file("plan.json", &plan.to_string());
    let mut args = run_args(db, path_str(&path), &["--no-serve", "--progress", "plain"]);
    args.extend(words(extra));
    run(&args)
}

/// `t` of 20 counters at 0, each row `new`.
fn statuses() -> TempDb {
    TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INT NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'new', batch INT NOT NULL DEFAULT 0);
         INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 20) SELECT i FROM s;",
    )
}

/// The stray `OR` reaches only rows an earlier step of the plan marks:
/// tried before the run, on the file as it was, it changed nothing, and
/// the run then bumped row 7 once a chunk (four times) and said it
/// finished ok. Tried again as the step begins, it fails with none of its
/// chunks run; in one transaction (`--atomic`) nothing is kept.
#[test]
fn a_stray_or_that_reaches_rows_an_earlier_step_marks_stops_the_step_before_its_chunks() {
    let plan = json!({"name": "mark then bump", "steps": [
        {"name": "mark", "sql": "UPDATE t SET status = 'pending' WHERE id = 7"},
        {"name": "bump",
         "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi AND status = 'new' OR status = 'pending'",
         "chunk": {"table": "t", "size": 5}},
    ]});
    for flags in [
        "--batch-size 5",
        "--batch-size 5 --undo",
        "--batch-size 5 --atomic",
    ] {
        let db = statuses();
        let (code, _, err) = run_plan(&db, &plan, flags);
        assert_eq!(code, 1, "{flags}: {err}");
        assert!(
            err.contains("step 2 (\"bump\") failed: it changes rows outside its chunk")
                && err.contains("on the rows the steps before it left, it changed 1 row")
                && err.contains("None of its chunks ran"),
            "{flags}: says why: {err}"
        );
        assert_eq!(
            db.query_i64("SELECT count(*) FROM t WHERE counter <> 0"),
            0,
            "{flags}: no chunk of the step ran: {err}"
        );
        let marked = if flags.contains("atomic") { 0 } else { 1 };
        assert_eq!(
            db.query_i64("SELECT count(*) FROM t WHERE status = 'pending'"),
            marked,
            "{flags}: the step before it is kept, or with --atomic rolled back"
        );
    }
}

/// With an empty chunk the statement still writes row 7, but a NOT NULL
/// column it sets from `:hi` refuses the NULL: the try failed, was taken
/// for one that cannot run here, and every chunk then bumped row 7.
#[test]
fn a_chunked_step_whose_stray_write_a_constraint_stops_in_the_try_is_refused() {
    let db = statuses();
    let plan = json!({"name": "stamp", "steps": [
        {"name": "stamp",
         "sql": "UPDATE t SET counter = counter + 1, batch = :hi WHERE id BETWEEN :lo AND :hi OR id = 7",
         "chunk": {"table": "t", "size": 5}},
    ]});
    let before = sha256(&db.path);
    let (code, out, err) = run_plan(&db, &plan, "--batch-size 5");
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("step 1 (\"stamp\") changes rows outside its chunk")
            && err.contains("a constraint refused (NOT NULL constraint failed: t.batch)")
            && err.contains("Nothing was written"),
        "says why: {err}"
    );
    assert_eq!(sha256(&db.path), before, "database untouched");
}

/// A step whose empty chunk changes nothing runs as before after a step
/// that changes the rows it walks, in every kind of run.
#[test]
fn a_contained_chunked_step_after_a_marking_step_still_runs() {
    let plan = json!({"name": "mark then bump", "steps": [
        {"name": "mark", "sql": "UPDATE t SET status = 'pending' WHERE id = 7"},
        {"name": "bump",
         "sql": "UPDATE t SET counter = counter + 1, batch = :hi WHERE id BETWEEN :lo AND :hi AND (status = 'new' OR status = 'pending')",
         "chunk": {"table": "t", "size": 5}},
    ]});
    for flags in ["", "--atomic", "--dry-run", "--undo"] {
        let db = statuses();
        let (code, _, err) = run_plan(&db, &plan, &format!("--batch-size 5 {flags}"));
        assert_eq!(code, 0, "{flags}: {err}");
        let bumped = if flags == "--dry-run" { 0 } else { 20 };
        assert_eq!(
            db.query_i64("SELECT sum(counter) FROM t"),
            bumped,
            "{flags}"
        );
    }
}

/// A range one key too wide overlaps the next chunk: an empty chunk
/// (both bounds NULL) changes nothing, so the empty-chunk try passes it,
/// and the run bumped rows 6, 11 and 16 twice and finished ok. Tried on a
/// chunk of the first key alone, it changes row 2 as well: refused before
/// anything runs. So is a range shifted by one on a walk by another
/// unique key (which finished ok with row 1 never changed), one that
/// binds :lo and :hi where no key is compared with them, and an `OR`
/// whose literal hides behind `:hi`.
#[test]
fn a_step_that_strays_on_a_chunk_of_one_key_is_refused_before_the_run() {
    let unique_k = "CREATE TABLE t(id INTEGER PRIMARY KEY, k INT NOT NULL UNIQUE, counter INT NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'new');
         INSERT INTO t(id, k) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 20) SELECT 100 + i, i FROM s;";
    for (sql, key, flags, row) in [
        ("id BETWEEN :lo AND :hi + 1", "id", "", 2),
        ("id BETWEEN :lo AND :hi + 1", "id", "--undo", 2),
        ("id BETWEEN :lo AND :hi + 1", "id", "--atomic", 2),
        (
            "id > 0 AND :lo IS NOT NULL AND :hi IS NOT NULL",
            "id",
            "",
            2,
        ),
        (
            "id BETWEEN :lo AND :hi AND status = 'new' OR id = 7 + 0 * :hi",
            "id",
            "",
            7,
        ),
        ("k BETWEEN :lo + 1 AND :hi + 1", "k", "", 2),
    ] {
        let plan = json!({"name": "overlap", "steps": [
            {"name": "bump", "sql": format!("UPDATE t SET counter = counter + 1 WHERE {sql}"),
             "chunk": {"table": "t", "key": key, "size": 5}},
        ]});
        let db = if key == "k" {
            TempDb::with_sql(unique_k)
        } else {
            statuses()
        };
        let before = db.bytes();
        let (code, _, err) = run_plan(&db, &plan, &format!("--batch-size 5 {flags}"));
        assert_eq!(code, 2, "{sql} {flags}: {err}");
        assert!(
            err.contains(&format!(
                "changes rows outside its chunk: run on a chunk of one key ({key} = 1), it changed the row whose {key} is {row}"
            )) && err.contains(&format!("`{key} BETWEEN :lo AND :hi`"))
                && err.contains("Nothing was written"),
            "{sql} {flags}: says why: {err}"
        );
        assert_eq!(db.bytes(), before, "{sql} {flags}: database untouched");
    }
}

/// Where the table's own trigger writes it, rows of other chunks may
/// rightly change, and no row is checked; the count still is: a chunk of
/// an `UPDATE` of the walked table changes at most the rows it holds, so
/// the first that changes more is rolled back and the step fails.
#[test]
fn a_chunk_that_changes_more_rows_than_it_holds_fails_at_its_first_chunk() {
    let db = statuses();
    db.conn()
        .execute_batch(
            "CREATE TABLE log(n INT); CREATE TRIGGER t_seen AFTER UPDATE OF counter ON t
             BEGIN UPDATE t SET batch = batch + 1 WHERE id = 20 AND NEW.id = 20; INSERT INTO log VALUES (NEW.id); END;",
        )
        .unwrap();
    let plan = json!({"name": "overlap", "steps": [
        {"name": "bump", "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi + 1",
         "chunk": {"table": "t", "key": "id", "size": 5}},
    ]});
    let (code, _, err) = run_plan(&db, &plan, "--batch-size 5");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("it changed 6 rows of t in a chunk that holds 5")
            && err.contains("changes rows outside its chunk")
            && err.contains("`id BETWEEN :lo AND :hi`")
            && err.contains("in the chunk of id 1 to 5"),
        "says why and where: {err}"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter <> 0"),
        0,
        "the chunk was rolled back"
    );
}

/// Ctrl-C while the try before the run is under way: it had exited at
/// once, saying nothing was written, and left the pages SQLite had
/// spilled into the file with a hot journal beside it (a copy of the
/// file alone was damaged). The try's statement is interrupted and rolled
/// back before the exit, and the file is as it was.
#[test]
fn ctrl_c_during_the_try_before_the_run_leaves_the_file_as_it_was() {
    // 40 MB of rows, far past SQLite's page cache, and a stray OR that
    // reaches every row slowly (a random 200 kB blob a row).
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, pad TEXT);
         INSERT INTO t(pad) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 20000)
           SELECT printf('%.2000c', 'x') FROM s;",
    );
    let plan = db.file(
        "plan.json",
        &json!({"name": "slow", "steps": [{"name": "pad",
            "sql": "UPDATE t SET pad = pad || 'y' WHERE id BETWEEN :lo AND :hi OR length(hex(randomblob(200000))) > 0",
            "chunk": {"table": "t", "size": 100}}]})
        .to_string(),
    );
    let before = sha256(&db.path);
    let written = std::fs::metadata(&db.path).unwrap().modified().unwrap();
    let mut p = Proc::start(&run_args(&db, path_str(&plan), &["--no-serve"]));
    let start = std::time::Instant::now();
    // Until SQLite has spilled pages of the try into the file.
    while std::fs::metadata(&db.path).unwrap().modified().unwrap() == written {
        assert!(
            start.elapsed() < PATIENCE && p.child.try_wait().unwrap().is_none(),
            "the try never wrote the file: {}",
            p.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    p.signal("INT");
    assert_eq!(p.wait().code(), Some(130), "{}", p.stderr());
    assert!(p.stderr().contains("nothing was written"), "{}", p.stderr());
    let journal = db.dir.path().join("test.sqlite-journal");
    assert!(!journal.exists(), "no hot journal left: {}", p.stderr());
    assert_eq!(sha256(&db.path), before, "the file is as it was");
}

/// `t` of `rows` counters at 0, in a rowid table or, with `without_rowid`,
/// a WITHOUT ROWID one (whose writes SQLite's update hook does not see).
fn many(rows: u32, without_rowid: bool) -> TempDb {
    let kind = if without_rowid { " WITHOUT ROWID" } else { "" };
    TempDb::with_sql(&format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INT NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'new'){kind};
         INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < {rows}) SELECT i FROM s;"
    ))
}

/// A step missing its range changes every row with an empty chunk: the
/// try stops it after a thousand rows instead of rewriting the whole
/// table under the write lock first, and names the first row it changed.
/// A WITHOUT ROWID table's statement runs to its end, as before.
#[test]
fn a_step_missing_its_range_is_stopped_after_a_thousand_rows_in_the_try() {
    for (without_rowid, says) in [
        (
            false,
            "it changed at least 1,000 rows before the try stopped it (the first: rowid 1 of \"t\"), and it would change them again",
        ),
        (
            true,
            "it changed 5,000 rows, and it would change them again",
        ),
    ] {
        let db = many(5000, without_rowid);
        let plan = json!({"name": "no range", "steps": [
            {"name": "bump",
             "sql": "UPDATE t SET counter = counter + 1 WHERE :lo IS NULL OR id BETWEEN :lo AND :hi",
             "chunk": {"table": "t", "key": "id", "size": 500}},
        ]});
        let before = sha256(&db.path);
        let (code, _, err) = run_plan(&db, &plan, "");
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("step 1 (\"bump\") changes rows outside its chunk") && err.contains(says),
            "without rowid {without_rowid}: says how far it got: {err}"
        );
        assert_eq!(sha256(&db.path), before, "database untouched");
    }
}

/// The same stop as a step begins, on rows an earlier step marked, also
/// under `--undo` in a build without the pre-update hook, whose recording
/// shares the update hook with the try (it ran to its end there). Inside
/// the run's transaction (`--atomic`) the statement runs to its end.
#[test]
fn a_stray_or_reaching_many_marked_rows_is_stopped_as_the_step_begins() {
    let plan = json!({"name": "mark then bump", "steps": [
        {"name": "mark", "sql": "UPDATE t SET status = 'pending' WHERE id > 2000"},
        {"name": "bump",
         "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi AND status = 'new' OR status = 'pending'",
         "chunk": {"table": "t", "key": "id", "size": 500}},
    ]});
    let stopped =
        "it changed at least 1,000 rows before the try stopped it (the first: rowid 2001 of \"t\")";
    let whole = "it changed 3,000 rows, and it would change them again";
    for (flags, env, says) in [
        ("--undo", &[][..], stopped),
        ("", &[][..], stopped),
        ("--undo", &[("BATCHSSE_UNDO_HOOK", "off")][..], stopped),
        ("--atomic", &[][..], whole),
    ] {
        let db = many(5000, false);
        let path = db.file("plan.json", &plan.to_string());
        let mut args = run_args(&db, path_str(&path), &["--no-serve", "--progress", "plain"]);
        args.extend(words(flags));
        let (code, _, err) = run_with_env(&args, None, env);
        assert_eq!(code, 1, "{flags} {env:?}: {err}");
        assert!(
            err.contains("step 2 (\"bump\") failed: it changes rows outside its chunk")
                && err.contains(says),
            "{flags} {env:?}: says how far it got: {err}"
        );
        assert_eq!(
            db.query_i64("SELECT count(*) FROM t WHERE counter <> 0"),
            0,
            "{flags} {env:?}: no chunk of the step ran"
        );
    }
}

/// A text key compared in its column's collation (NOCASE) that only a
/// BINARY index keeps unique holds 'a' and 'A': the walk counts a chunk's
/// keys one by one, but `k BETWEEN :lo AND :hi` reaches every row equal to
/// its bounds, so a chunk of three keys ("A" to "B") changes four rows,
/// each row still once. That chunk was taken for one that strays, and a
/// step written just as the message asks failed, telling its author to
/// write what they wrote. A chunk may change the rows its bounds hold.
#[test]
fn a_chunk_whose_bounds_hold_more_rows_than_its_keys_counted_still_runs() {
    let plan = json!({"name": "nocase", "steps": [
        {"name": "bump", "sql": "UPDATE t SET counter = counter + 1 WHERE k BETWEEN :lo AND :hi",
         "chunk": {"table": "t", "key": "k", "size": 3}},
    ]});
    for flags in ["", "--undo", "--atomic"] {
        let db = TempDb::with_sql(
            "CREATE TABLE t(k TEXT COLLATE NOCASE NOT NULL, counter INT NOT NULL DEFAULT 0);
             CREATE UNIQUE INDEX t_k ON t(k COLLATE BINARY);
             INSERT INTO t(k) VALUES ('a'), ('A'), ('b'), ('B'), ('c'), ('C'), ('d'), ('D');",
        );
        let (code, _, err) = run_plan(&db, &plan, &format!("--batch-size 3 {flags}"));
        assert_eq!(code, 0, "{flags}: {err}");
        assert_eq!(
            db.query_i64("SELECT count(*) FROM t WHERE counter = 1"),
            8,
            "{flags}: every row once: {err}"
        );
    }
}

/// Ctrl-C during the try as a chunked step begins, in a run that is one
/// transaction: SQLite ends an interrupted UPDATE by rolling back the
/// whole transaction, the run's own included. The try took the interrupt
/// for a statement that cannot be tried, the step found its table empty
/// (the rows of the step before it were gone) and marked itself applied
/// in a savepoint that, with no transaction left around it, began one of
/// its own and committed it: the run said the step was done and exited 1,
/// and the next run skipped the step as already applied, leaving every
/// row it should have changed as it was, and finished ok. (A slow lower
/// bound, computed only when `:lo` is NULL, keeps the try going.)
#[test]
fn ctrl_c_during_the_try_as_a_step_begins_in_one_transaction_commits_nothing() {
    let slow = "(WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 6000000) SELECT count(*) FROM r)";
    let plan = json!({"name": "fill then bump", "steps": [
        {"name": "fill", "sql": "INSERT INTO t(id) VALUES (1), (2), (3)"},
        {"name": "bump",
         "sql": format!("UPDATE t SET counter = counter + 1 WHERE id BETWEEN coalesce(:lo, {slow}) AND :hi"),
         "chunk": {"table": "t", "size": 2}},
    ]});
    for flag in ["--atomic", "--dry-run"] {
        let db = TempDb::with_sql(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INT NOT NULL DEFAULT 0)",
        );
        let path = db.file("plan.json", &plan.to_string());
        let args = run_args(
            &db,
            path_str(&path),
            &["--no-serve", "--progress", "plain", flag],
        );
        let mut p = Proc::start(&args);
        p.wait_stderr("[2/2] bump: running");
        std::thread::sleep(std::time::Duration::from_millis(300));
        p.signal("INT");
        assert_eq!(p.wait().code(), Some(130), "{flag}: {}", p.stderr());
        assert_eq!(db.query_i64("SELECT count(*) FROM t"), 0, "{flag}");
        let marked =
            db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_checkpoint'");
        assert_eq!(marked, 0, "{flag}: no step is checkpointed: {}", p.stderr());
    }
}

/// `t` of 20 counters, rows 2, 7, 12 and 17 inactive (so the try on the
/// first key alone sees no stray), and `parent` 1 or 2 for the rows past 2.
fn actives() -> TempDb {
    TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INT NOT NULL DEFAULT 0, active INT NOT NULL DEFAULT 1, parent INT);
         INSERT INTO t(id, active, parent) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 20)
           SELECT i, i % 5 <> 2, CASE WHEN i > 2 THEN 1 + i % 2 END FROM s;",
    )
}

/// Strays a count cannot see, since the statement also leaves rows of its
/// own chunk alone, and the try on the first key alone does not meet
/// (row 2 inactive; the first row has no parent): each finished ok with
/// rows bumped twice or four times. SQLite's update hook tells the rowids
/// a chunk changed, and the first chunk to change one outside its range is
/// rolled back; the rows of the chunks before it were each changed once.
#[test]
fn a_chunk_that_changes_a_row_of_another_chunk_fails_though_it_changed_fewer_than_it_holds() {
    for (sql, flags, row) in [
        (
            "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi + 1 AND active",
            "",
            6,
        ),
        (
            "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi + 1 AND active",
            "--undo",
            6,
        ),
        (
            "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi + 1 AND active",
            "--atomic",
            6,
        ),
        (
            // Each child bumps its parent: chunked, once a chunk.
            "UPDATE t AS x SET counter = x.counter + 1 FROM t AS y WHERE y.id BETWEEN :lo AND :hi AND x.id = y.parent",
            "",
            1,
        ),
    ] {
        let db = actives();
        let plan = json!({"name": "strays", "steps": [
            {"name": "bump", "sql": sql, "chunk": {"table": "t", "key": "id", "size": 5}},
        ]});
        let (code, _, err) = run_plan(&db, &plan, &format!("--batch-size 5 {flags}"));
        assert_eq!(code, 1, "{sql} {flags}: {err}");
        assert!(
            err.contains(&format!(
                "it changed the row of t whose id is {row}, outside its chunk"
            )) && err.contains("`id BETWEEN :lo AND :hi`"),
            "{sql} {flags}: says which row and the way out: {err}"
        );
        assert_eq!(
            db.query_i64("SELECT count(*) FROM t WHERE counter > 1"),
            0,
            "{sql} {flags}: no row changed twice"
        );
    }
}

/// Rows of other chunks that the walked table's own triggers or foreign
/// keys change are the step's to change: a trigger that counts a child's
/// bumps in its parent, and a code renamed with the rows that refer to it
/// by `ON UPDATE CASCADE`.
#[test]
fn rows_of_other_chunks_changed_by_a_trigger_or_a_cascade_still_run() {
    let db = actives();
    db.conn()
        .execute_batch(
            "ALTER TABLE t ADD COLUMN bumps INT NOT NULL DEFAULT 0;
             CREATE TRIGGER count_bumps AFTER UPDATE OF counter ON t WHEN NEW.parent IS NOT NULL
             BEGIN UPDATE t SET bumps = bumps + 1 WHERE id = NEW.parent; END;",
        )
        .unwrap();
    let plan = json!({"name": "trigger", "steps": [
        {"name": "bump", "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
         "chunk": {"table": "t", "key": "id", "size": 5}},
    ]});
    let (code, _, err) = run_plan(&db, &plan, "--batch-size 5");
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(bumps) FROM t"), 18, "{err}");

    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, code TEXT UNIQUE, up TEXT REFERENCES t(code) ON UPDATE CASCADE);
         INSERT INTO t(id, code, up) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 20)
           SELECT i, 'c' || i, CASE WHEN i > 5 THEN 'c1' END FROM s;",
    );
    let plan = json!({"name": "cascade", "foreign_keys": true, "steps": [
        {"name": "rename", "sql": "UPDATE t SET code = 'k' || id WHERE id BETWEEN :lo AND :hi",
         "chunk": {"table": "t", "key": "id", "size": 5}},
    ]});
    let (code, _, err) = run_plan(&db, &plan, "--batch-size 5");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE up = 'k1'"),
        15,
        "the children follow their parent: {err}"
    );
}

/// The same strays on a walk by a unique key other than the rowid (keys
/// 10 to 200, rowids 1 to 20, row 2 inactive): the count and the try on
/// the first key alone let them through, and the run finished ok with
/// rows bumped twice. The hook keeps every rowid a chunk wrote, and the
/// table says which lie outside the chunk's keys: as many of them (the
/// chunk's index range read once) or a few (each looked up).
#[test]
fn a_chunk_walked_by_another_key_that_changes_a_row_of_another_chunk_fails() {
    for (sql, flags, key) in [
        (
            "UPDATE t SET counter = counter + 1 WHERE k BETWEEN :lo AND :hi + 10 AND active",
            "",
            "60",
        ),
        (
            "UPDATE t SET counter = counter + 1 WHERE k BETWEEN :lo AND :hi + 10 AND active",
            "--undo",
            "60",
        ),
        (
            // Few rows written of the chunk's 40: its first, and the next
            // chunk's first.
            "UPDATE t SET counter = counter + 1 WHERE k IN (:lo, :hi + 10) AND active",
            "",
            "410",
        ),
    ] {
        let db = actives();
        db.conn()
            .execute_batch(
                "INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 21 UNION ALL SELECT i+1 FROM s WHERE i < 100) SELECT i FROM s;
                 ALTER TABLE t ADD COLUMN k INT; UPDATE t SET k = id * 10; CREATE UNIQUE INDEX t_k ON t(k);",
            )
            .unwrap();
        let size = if key == "410" { 40 } else { 5 };
        let plan = json!({"name": "strays", "steps": [
            {"name": "bump", "sql": sql, "chunk": {"table": "t", "key": "k", "size": size}},
        ]});
        let (code, _, err) = run_plan(&db, &plan, &format!("--batch-size {size} {flags}"));
        assert_eq!(code, 1, "{sql} {flags}: {err}");
        assert!(
            err.contains(&format!(
                "it changed the row of t whose k is {key}, outside its chunk"
            )) && err.contains("`k BETWEEN :lo AND :hi`"),
            "{sql} {flags}: says which row and the way out: {err}"
        );
        assert_eq!(
            db.query_i64("SELECT count(*) FROM t WHERE counter > 1"),
            0,
            "{sql} {flags}: no row changed twice"
        );
    }
}

/// `t` of 20 counters, key `k` = `id * 10`, rows 2, 6 and 11 inactive: in
/// chunks of five, `… :hi + 1 AND active` reaches only an inactive row of
/// the next chunk until the third chunk (11 to 15), which changes row 16.
/// The try on the first key alone meets inactive row 2.
fn late_stray() -> TempDb {
    TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, k INT NOT NULL UNIQUE, counter INT NOT NULL DEFAULT 0, active INT NOT NULL DEFAULT 1);
         INSERT INTO t(id, k, active) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 20)
           SELECT i, i * 10, i NOT IN (2, 6, 11) FROM s;",
    )
}

/// `plan` on a fresh [`late_stray`] with `flags` and `env`: exit code,
/// the line that says why the step failed, the rows left, and the rows
/// the undo record holds (`None` without one).
fn late_stray_run(
    plan: &serde_json::Value,
    flags: &str,
    env: &[(&str, &str)],
) -> (i32, String, String, Option<i64>, TempDb) {
    let db = late_stray();
    let path = db.file("plan.json", &plan.to_string());
    let mut args = run_args(&db, path_str(&path), &["--no-serve", "--progress", "plain"]);
    args.extend(words(flags));
    let (code, _, err) = run_with_env(&args, None, env);
    let why = err
        .lines()
        .find_map(|l| l.find("failed: it").map(|at| &l[at..]))
        .unwrap_or(&err)
        .to_owned();
    let recorded = flags
        .contains("--undo")
        .then(|| db.query_i64("SELECT coalesce(sum(rows), 0) FROM batchsse_undo WHERE chunk >= 0"));
    (code, why, content(&db), recorded, db)
}

/// Under `--undo` in a build without SQLite's pre-update hook
/// (`BATCHSSE_UNDO_HOOK=off`), whose recording holds the update hook, no
/// chunk was checked row by row, and a step that changed a row of the next
/// chunk finished ok with row 16 bumped twice (160 by `k`); nor was the
/// try as a step begins run on a chunk of one key, which an earlier step
/// that activates row 2 makes stray. Both fail as they do unrecorded: the
/// same message, exit code and rows (those of the chunks before, or of the
/// steps before), the record holding those rows alone, and an undo puts
/// back the file as it was.
#[test]
fn recorded_without_the_pre_update_hook_a_chunk_that_strays_fails_as_unrecorded() {
    let bump = |key: &str, sql: &str| {
        json!({"name": "bump", "sql": format!("UPDATE t SET counter = counter + 1 WHERE {sql}"),
               "chunk": {"table": "t", "key": key, "size": 5}})
    };
    let by_id = bump("id", "id BETWEEN :lo AND :hi + 1 AND active");
    let by_k = bump("k", "k BETWEEN :lo AND :hi + 10 AND active");
    let activate = json!({"name": "activate", "sql": "UPDATE t SET active = 1 WHERE id = 2"});
    for (steps, says, kept) in [
        (
            json!([by_id]),
            "it changed the row of t whose id is 16, outside its chunk",
            8,
        ),
        (
            json!([by_k]),
            "it changed the row of t whose k is 160, outside its chunk",
            8,
        ),
        (
            json!([activate, by_id]),
            "run on a chunk of one key (id = 1), it changed the row whose id is 2",
            1,
        ),
    ] {
        let plan = json!({"name": "strays", "steps": steps});
        let original = content(&late_stray());
        let (code, why, rows, _, _) = late_stray_run(&plan, "--batch-size 5", &[]);
        assert_eq!(code, 1, "{says}: {why}");
        assert!(why.contains(says), "{says}: {why}");
        for env in [&[][..], &[("BATCHSSE_UNDO_HOOK", "off")][..]] {
            let (code_u, why_u, rows_u, recorded, db) =
                late_stray_run(&plan, "--batch-size 5 --undo", env);
            assert_eq!(
                (code_u, &why_u),
                (code, &why),
                "{says} {env:?}: fails as unrecorded"
            );
            assert_eq!(rows_u, rows, "{says} {env:?}: the same rows left");
            assert_eq!(
                recorded,
                Some(kept),
                "{says} {env:?}: the record holds the committed rows alone"
            );
            let undo = [
                "undo",
                "--db",
                path_str(&db.path),
                "--plan",
                "strays",
                "--no-serve",
            ];
            let (code, _, err) = run_with_env(&undo, None, env);
            assert_eq!(code, 0, "{says} {env:?}: {err}");
            assert_eq!(content(&db), original, "{says} {env:?}: taken back");
        }
    }
}
