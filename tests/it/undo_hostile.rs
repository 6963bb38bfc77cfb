//! What a careless or hostile user does to an undo: edits its record by
//! hand, or starts two undos of the same plan at once. Neither may end in
//! rows taken back wrongly, or left out, while the undo says all is well.

use std::time::{Duration, Instant};

use crate::util::*;

/// An undo of `plan` serving on a free port, waiting for a client (an
/// event stream opened) before it takes anything back.
fn gated_undo(file: &str, plan: &str, extra: &[&str]) -> Proc {
    let gate = ["--listen", "127.0.0.1:0", "--wait-for-clients", "1"];
    Proc::start(&[&["undo", "--db", file, "--plan", plan], &gate[..], extra].concat())
}

/// A record edited by hand (a part cut short, emptied, of another type,
/// or gone from the middle of its step) is refused before anything is
/// taken back, rather than taken back in part with `finished ok`.
#[test]
fn a_record_altered_by_hand_is_refused_before_anything_is_taken_back() {
    let newest = "(SELECT max(id) FROM batchsse_undo)";
    for tamper in [
        format!(
            "UPDATE batchsse_undo SET rec = substr(rec, 1, length(rec) - 3) WHERE id = {newest}"
        ),
        format!("UPDATE batchsse_undo SET rec = NULL WHERE id = {newest}"),
        format!("UPDATE batchsse_undo SET rec = 'text' WHERE id = {newest}"),
        format!("UPDATE batchsse_undo SET chunk = -1 WHERE id = {newest}"),
        format!("UPDATE batchsse_undo SET rows = 'ten' WHERE id = {newest}"),
        "DELETE FROM batchsse_undo WHERE chunk = 1".to_owned(),
        "DELETE FROM batchsse_undo WHERE chunk = 0".to_owned(),
        // What this batchsse adds to find the rest: a part's checksum, and
        // the step's count of parts (its row, or the parts all gone).
        format!("UPDATE batchsse_undo SET rec_hash = NULL WHERE id = {newest}"),
        format!("UPDATE batchsse_undo SET rec_hash = 'x' WHERE id = {newest}"),
        "DELETE FROM batchsse_undo WHERE chunk = -3".to_owned(),
        "UPDATE batchsse_undo SET rows = 9 WHERE chunk = -3".to_owned(),
        "DELETE FROM batchsse_undo WHERE chunk >= 0".to_owned(),
    ] {
        let db = bumped();
        db.conn().execute_batch(&tamper).unwrap();
        let (code, err) = stopped_undo(&db, "bump");
        assert_eq!(code, 2, "{tamper}: {err}");
        assert!(err.contains("damaged"), "{tamper}: {err}");
        let clear = format!("batchsse undo clear --db {} --run", path_str(&db.path));
        assert!(err.contains(&clear), "{tamper}: {err}");
    }
}

/// A table or view of the user's that holds a name of the undo's own
/// tables is named, with what to do, before anything runs (exit 2): a run
/// with `--undo` failed at its first chunk (exit 1) with SQLite's message
/// and the whole script that makes the tables, and an undo with a bare
/// "no such column".
#[test]
fn a_name_of_the_undos_tables_taken_by_the_user_is_refused_before_anything_runs() {
    for (taken, says) in [
        (
            "CREATE TABLE batchsse_undo(x)",
            "the table batchsse_undo has no column run, plan",
        ),
        (
            "CREATE TABLE batchsse_undo_conflict(run)",
            "has no column tbl, k, why",
        ),
        (
            "CREATE VIEW batchsse_undo_probe AS SELECT 1 AS run",
            "batchsse_undo_probe is a view",
        ),
    ] {
        let db = TempDb::counters(20);
        db.conn().execute_batch(taken).unwrap();
        let before = db.bytes();
        let plan = db.file("plan.json", &counter_plan("taken", 5));
        let (code, _, err) =
            crate::util::run(&run_args(&db, path_str(&plan), &["--no-serve", "--undo"]));
        assert_eq!(code, 2, "{taken}: {err}");
        assert!(
            err.contains(says) && err.contains("another name"),
            "{taken}: {err}"
        );
        let file = path_str(&db.path);
        let (code, _, err) = crate::util::run(&["undo", "--db", file, "--plan", "taken"]);
        assert_eq!(code, 2, "{taken}: {err}");
        assert!(
            err.contains(says) && err.contains("no undo record"),
            "{taken}: {err}"
        );
        assert_eq!(db.bytes(), before, "{taken}");
    }
}

/// One bit flipped inside a part's record (its length kept) is found by
/// the part's checksum before anything is taken back. Unchecked, most
/// such records still decode: in this part's encoding bit 696 put a wrong
/// value back with `finished ok` and no conflict, bit 203 kept a row as a
/// false conflict; the others are its first and last.
#[test]
fn a_part_with_one_flipped_bit_is_refused_before_anything_is_taken_back() {
    let len = bumped().query_i64("SELECT length(rec) FROM batchsse_undo WHERE chunk = 3") as usize;
    for bit in [696, 203, 0, 8 * len - 1] {
        let db = bumped();
        let c = db.conn();
        let (id, mut rec): (i64, Vec<u8>) = c
            .query_row(
                "SELECT id, rec FROM batchsse_undo WHERE chunk = 3",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        rec[bit / 8] ^= 1 << (bit % 8);
        c.execute(
            "UPDATE batchsse_undo SET rec = ?1 WHERE id = ?2",
            rusqlite::params![rec, id],
        )
        .unwrap();
        let (code, err) = stopped_undo(&db, "bump");
        assert_eq!(code, 2, "bit {bit} of {len} bytes: {err}");
        assert!(
            err.contains(&format!("row {id} of batchsse_undo"))
                && err.contains("does not match the checksum"),
            "bit {bit}: {err}"
        );
        let clear = format!("batchsse undo clear --db {} --run", path_str(&db.path));
        assert!(err.contains(&clear), "{err}");
    }
}

/// The newest part of a step removed by hand leaves the others numbered
/// 0, 1, 2… as the run wrote them; the step's count of parts finds it,
/// in the last step of the run and in one before it.
#[test]
fn a_step_whose_newest_part_was_removed_is_refused() {
    for db in [bumped(), two_steps_bumped()] {
        refused_without_its_newest_part(&db);
    }
}

/// Removes the newest part of step 1 of plan `bump` in `db`, whose undo
/// must then be refused, the file untouched.
fn refused_without_its_newest_part(db: &TempDb) {
    db.conn()
        .execute_batch(
            "DELETE FROM batchsse_undo WHERE id = (SELECT max(id) FROM batchsse_undo WHERE chunk >= 0 AND step = 0)",
        )
        .unwrap();
    let (code, err) = stopped_undo(db, "bump");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("damaged"), "{err}");
    assert!(err.contains("the newest were removed"), "{err}");
}

/// Plan `bump` with two chunked steps over `t` of 40 counters, ten rows a
/// part: step 1 is not the run's last.
fn two_steps_bumped() -> TempDb {
    let db = TempDb::counters(40);
    let plan = db.file(
        "plan.json",
        r#"{"name":"bump","undo":true,"steps":[
            {"name":"a","sql":"UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":10}},
            {"name":"b","sql":"UPDATE t SET counter = counter + 10 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":10}}]}"#,
    );
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    db
}

/// A run killed with kill -9 in the middle of a step has as many parts as
/// it committed, and its count of them says so: the undo takes them back
/// without a word of damage, and a copy whose newest part is then removed
/// is refused.
#[test]
fn a_run_killed_in_the_middle_of_a_step_undoes_cleanly_and_its_newest_part_is_counted() {
    let db = TempDb::counters(60);
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    // Throttled for good once two chunks are in (the pause between chunks
    // outlasts the query's 100 ms cache, so the third never starts).
    let args = run_args(
        &db,
        path_str(&plan),
        &[
            "--undo",
            "--batch-size",
            "10",
            "--sleep",
            "150",
            "--throttle-query",
            "SELECT (SELECT count(*) FROM t WHERE counter = 1) >= 20",
            "--listen",
            "127.0.0.1:0",
            "--progress",
            "none",
        ],
    );
    let mut p = Proc::start(&args);
    wait_status(p.addr(), |s| s["throttled"] == "throttle-query");
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    assert_eq!(db.counter_spread(), (20, 40), "two chunks committed");
    let copy = TempDb::empty();
    std::fs::write(&copy.path, db.bytes()).unwrap();
    refused_without_its_newest_part(&copy);
    let (code, err) = undo_plan(&db, "bump", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("damaged"), "{err}");
    assert_eq!(db.counter_spread(), (0, 60), "{err}");
}

/// Records of a batchsse from before the checksums and the count of
/// parts (no such column, no count rows) are taken back unchecked, and a
/// run recorded by this one on the same table adds the column and is
/// checked: both undo.
#[test]
fn records_of_a_batchsse_from_before_the_checksum_still_undo() {
    for strip in [
        "ALTER TABLE batchsse_undo DROP COLUMN rec_hash",
        "UPDATE batchsse_undo SET rec_hash = NULL",
    ] {
        let db = bumped();
        db.conn()
            .execute_batch(&format!(
                "DELETE FROM batchsse_undo WHERE chunk = -3; {strip}"
            ))
            .unwrap();
        let plan = db.file("again.json", &counter_plan("again", 20));
        let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve", "--undo"]));
        assert_eq!(code, 0, "{strip}: {err}");
        assert_eq!(db.counter_spread(), (0, 40), "bumped twice");
        let (code, err) = undo_plan(&db, "again", &[]);
        assert_eq!(code, 0, "{strip}: {err}");
        let (code, err) = undo_plan(&db, "bump", &[]);
        assert_eq!(code, 0, "{strip}: {err}");
        assert_eq!(db.counter_spread(), (0, 40), "{strip}: {err}");
        assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 0, "{err}");
    }
}

/// Two undos of one plan at once share its parts, each taking the next
/// one left: a row one of them kept as a conflict is kept by the other
/// too, although the other began before the conflict was met.
#[test]
fn a_conflict_one_undo_keeps_is_kept_by_another_undo_of_the_same_plan() {
    let db = TempDb::counters(4);
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","undo":true,"steps":[
            {"name":"one","sql":"UPDATE t SET counter = 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":2}},
            {"name":"two","sql":"UPDATE t SET counter = 2"}]}"#,
    );
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--batch-size", "2"]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    // The application sets row 2 to the value step "one" wrote.
    db.conn()
        .execute_batch("UPDATE t SET counter = 1 WHERE id = 2")
        .unwrap();
    let file = path_str(&db.path);
    // The second undo reads the conflicts kept so far (none) and waits for
    // a client before it takes anything back.
    let mut second = gated_undo(file, "p", &["--progress", "plain"]);
    wait_status(second.addr(), |s| s["steps_total"] == 2);
    // The first takes back step "two" (keeping row 2) and the part of step
    // "one" over rows 3 and 4, then rests.
    let first = Proc::start(&[
        "undo",
        "--db",
        file,
        "--plan",
        "p",
        "--no-serve",
        "--progress",
        "plain",
        "--sleep",
        "3000",
    ]);
    let t0 = Instant::now();
    while db.query_i64("SELECT count(*) FROM batchsse_undo WHERE chunk >= 0") > 1 {
        assert!(t0.elapsed() < PATIENCE, "{}", first.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    first.wait_stderr("conflict in t at key 2");
    // The second takes back the part left, over rows 1 and 2.
    let _client = Stream::open(second.addr(), "/events", &[]);
    assert_eq!(second.wait().code(), Some(0), "{}", second.stderr());
    drop(first);
    let counters: Vec<i64> = db
        .conn()
        .prepare("SELECT counter FROM t ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(counters, [0, 1, 0, 0], "{}", second.stderr());
}

/// Two undos of one plan at once, each taking one part at a time when
/// told to (its own pause file, and a rest after each part but a step's
/// last to let the test set it), each under its own `--on-conflict` of
/// `ways`: row 60, which the run deleted then inserted again, is kept by
/// the `skip` one (the application changed it) and put back by the
/// `overwrite` one from the older part, which removes its row of
/// `batchsse_undo_conflict`; the next row kept (row 2, which the
/// application deleted) took the number that row freed, which the first
/// had read past, so it never held row 2 and kept it again from an older
/// part: twice in the table, and said and counted twice. `moves`: which
/// undo (0 or 1) takes parts until the part `(step, chunk)` is gone.
fn two_undos_taking_turns(moves: &[(usize, (i64, i64))], ways: [&str; 2]) -> TempDb {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER);
         INSERT INTO t VALUES (2, 0), (9, 0), (55, 0), (60, 0), (70, 0);
         CREATE TABLE src(id INTEGER PRIMARY KEY);
         INSERT INTO src VALUES (5), (60);",
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","undo":true,"steps":[
            {"name":"s1","sql":"UPDATE t SET v = v + 1 WHERE id IN (2, 9) AND id BETWEEN :lo AND :hi","chunk":{"table":"t","size":1}},
            {"name":"s2","sql":"UPDATE t SET v = v + 10 WHERE id = 2"},
            {"name":"s3","sql":"DELETE FROM t WHERE id IN (55, 60) AND id BETWEEN :lo AND :hi","chunk":{"table":"t","size":1}},
            {"name":"s4","sql":"INSERT INTO t SELECT id, 100 FROM src WHERE id BETWEEN :lo AND :hi","chunk":{"table":"src","size":1}}]}"#,
    );
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--batch-size", "1"]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    db.conn()
        .execute_batch("DELETE FROM t WHERE id = 2; UPDATE t SET v = 7 WHERE id = 60")
        .unwrap();
    let file = path_str(&db.path);
    let pauses: Vec<_> = (0..2).map(|i| db.file(&format!("pause{i}"), "")).collect();
    // Both read where the conflict table ends before either keeps a row.
    let undos: Vec<Proc> = pauses
        .iter()
        .zip(ways)
        .map(|(pause, way)| {
            let undo = Proc::start(&[
                "undo",
                "--db",
                file,
                "--plan",
                "p",
                "--no-serve",
                "--progress",
                "plain",
                "--on-conflict",
                way,
                "--pause-file",
                path_str(pause),
                "--sleep",
                "2000",
            ]);
            undo.wait_stderr("undo of run");
            undo
        })
        .collect();
    let conn = db.conn();
    conn.busy_timeout(PATIENCE).unwrap();
    let left = |(step, chunk): (i64, i64)| -> bool {
        conn.query_row(
            "SELECT count(*) FROM batchsse_undo WHERE step = ?1 AND chunk = ?2",
            [step, chunk],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            > 0
    };
    for &(who, part) in moves {
        std::fs::remove_file(&pauses[who]).unwrap();
        let t0 = Instant::now();
        while left(part) {
            assert!(t0.elapsed() < PATIENCE, "{}", undos[who].stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
        // In the rest that follows the part: no other part is begun.
        std::fs::write(&pauses[who], "").unwrap();
    }
    for (pause, mut undo) in pauses.iter().zip(undos) {
        let _ = std::fs::remove_file(pause);
        assert_eq!(undo.wait().code(), Some(0), "{}", undo.stderr());
    }
    db
}

#[test]
fn a_row_kept_by_another_undo_under_a_number_freed_is_held_not_kept_twice() {
    // The first keeps row 60 and the second puts it back, then keeps row
    // 2; or the second keeps row 60 and the first puts it back, then the
    // second keeps row 2. The first takes the part of row 2's older
    // change last.
    for (moves, ways) in [
        (&[(0, (3, 1)), (1, (0, 1))][..], ["skip", "overwrite"]),
        (
            &[(1, (3, 1)), (0, (2, 1)), (1, (0, 1))][..],
            ["overwrite", "skip"],
        ),
    ] {
        let db = two_undos_taking_turns(moves, ways);
        assert_eq!(
            db.query_i64("SELECT count(*) FROM batchsse_undo_conflict WHERE k = 2"),
            1,
            "{moves:?}"
        );
    }
}

/// A row that cannot go back because the application has since written
/// its `UNIQUE` value into another row is a conflict like any other under
/// `skip` (the default): kept as the run left it, named, counted, and
/// every other row put back, whether the run changed it (a chunk that
/// goes back in one statement) or deleted it (one `INSERT`). `abort`
/// stops there, and `overwrite`, which would have to change the
/// application's row, stops with the row named and what to do; both
/// leave the file as it was.
#[test]
fn a_row_whose_unique_value_a_later_row_holds_is_a_conflict_kept_under_skip() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT UNIQUE);
                 INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');";
    let steps = [
        r#"{"sql":"UPDATE t SET email = email || '.old' WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":10}}"#,
        r#"{"sql":"DELETE FROM t WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":10}}"#,
    ];
    for step in steps {
        let db = recorded_then(setup, step, "INSERT INTO t VALUES (4, 'b')");
        let after_run = emails(&db);
        for way in ["abort", "overwrite"] {
            let (code, err) = stopped_undo_with(&db, "p", &["--on-conflict", way]);
            assert_eq!(code, 1, "{step} {way}: {err}");
            assert!(err.contains("at key 2"), "{step} {way}: {err}");
        }
        let (_, err) = stopped_undo_with(&db, "p", &["--on-conflict", "abort"]);
        assert!(
            err.contains("--on-conflict skip") && !err.contains("or overwrite"),
            "abort points where overwrite stops too: {err}"
        );
        let (_, err) = stopped_undo_with(&db, "p", &["--on-conflict", "overwrite"]);
        assert!(err.contains("run the undo again"), "{err}");
        assert!(err.contains("--on-conflict skip"), "{err}");
        let (code, err) = stopped_undo_with(&db, "p", &["--dry-run"]);
        assert_eq!(code, 0, "{step} dry run: {err}");
        assert!(err.contains("1 conflict"), "{step} dry run: {err}");
        let (fin, out) = undo_json(&db, "p");
        assert_eq!(fin["data"]["conflicts"], 1, "{step}: {fin}");
        assert_eq!(fin["data"]["conflicts_as_left"], 1, "{step}: {fin}");
        assert_eq!(fin["data"]["rows_changed"], 2, "{step}: {fin}");
        assert!(
            out.contains("conflict in t at key 2")
                && out.contains("another row holds a value it would get back"),
            "{step}: {out}"
        );
        assert!(!out.contains("fully taken back"), "{step}: {out}");
        assert!(!out.contains("kept the application's row"), "{step}: {out}");
        if step.contains("DELETE") {
            // The row the run deleted stays deleted: there is no row to
            // put right, and nothing of the run's on one.
            assert!(
                out.contains("; kept the row out, deleted as the run left it")
                    && out.contains("all but 1 row the run deleted, which stays deleted")
                    && !out.contains("carries the run's change")
                    && !out.contains("the run's values"),
                "{step}: {out}"
            );
        } else {
            // Row 2 is the run's, not the application's (that is row 4),
            // and its change is still on it: the plan run again would
            // apply it twice.
            assert!(
                out.contains("kept its row as it is (the run's values")
                    && out.contains("all but 1 row kept as the run left it")
                    && out.contains("It still carries the run's change")
                    && out.contains("change it a second time: put that row right"),
                "{step}: {out}"
            );
        }
        // Row 2 as the run left it (changed, or gone), the rest put back,
        // the application's row kept.
        let row2 = after_run.iter().find(|(id, _)| *id == 2).cloned();
        let mut want = vec![
            (1, "a".to_owned()),
            (3, "c".to_owned()),
            (4, "b".to_owned()),
        ];
        want.extend(row2);
        want.sort();
        assert_eq!(emails(&db), want, "{step}");
    }
}

/// Rows kept because other rows hold their old values are counted, and
/// the warning speaks of them as many.
#[test]
fn rows_kept_as_the_run_left_them_are_counted_as_many() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT UNIQUE);
                 INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');";
    let step = r#"{"sql":"UPDATE t SET email = email || '.old'"}"#;
    let db = recorded_then(setup, step, "INSERT INTO t VALUES (4, 'b'), (5, 'c')");
    let (fin, out) = undo_json(&db, "p");
    assert_eq!(fin["data"]["conflicts"], 2, "{out}");
    assert!(
        out.contains("all but 2 rows kept as the run left them (other rows hold values")
            && out.contains("would change them a second time: put those rows right"),
        "{out}"
    );
}

/// A row whose `UNIQUE` value the application took, but whose later
/// change in the same chunk the undo has already put back (a `REPLACE`
/// that deleted it and inserted it anew, or an `UPDATE` of its key, which
/// the record holds as the old row deleted and a new one inserted), cannot
/// be kept as the run left it: that later change is gone with the row it
/// made. Keeping it would lose the row; the undo stops there instead, the
/// file untouched, and says why. So it does when the record is cut into
/// a part per change: a row deleted and the row inserted right after it
/// (a `REPLACE`, or two statements) stay in one part (cut between them,
/// the undo deleted the new row in one part, kept the old one out in the
/// next, and said it kept the row as the run left it, the row gone).
#[test]
fn a_row_whose_unique_value_is_taken_after_its_later_change_went_back_stops_the_undo() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT UNIQUE);
                 INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');";
    for sql in [
        "REPLACE INTO t(id, email) VALUES (2, 'b2')",
        "UPDATE t SET id = 20, email = 'b2' WHERE id = 2",
        "DELETE FROM t WHERE id = 2; INSERT INTO t VALUES (2, 'b2')",
    ] {
        for env in EVERY_WAY {
            // A build without the hook refuses a REPLACE.
            let hook_off = env.iter().any(|(k, _)| *k == "BATCHSSE_UNDO_HOOK");
            if hook_off && sql.starts_with("REPLACE") {
                continue;
            }
            let step = format!(r#"{{"sql":"{sql}"}}"#);
            let db = recorded_then_with(setup, &step, "INSERT INTO t VALUES (4, 'b')", env);
            let after_run = emails(&db);
            for extra in [&[][..], &["--dry-run"][..]] {
                let (code, err) = stopped_undo_with(&db, "p", extra);
                assert_eq!(code, 1, "{sql} {env:?} {extra:?}: {err}");
                assert!(err.contains("at key 2"), "{sql} {env:?}: {err}");
                assert!(err.contains("would lose the row"), "{sql} {env:?}: {err}");
            }
            assert_eq!(
                emails(&db),
                after_run,
                "{sql} {env:?}: the run's row is there"
            );
        }
    }
}

/// A row the run deleted whose key the application used again is a
/// conflict kept under `skip`, even when the same chunk of the run also
/// inserted another row of the table: that row is not this one at a new
/// key (the record marks those), so the undo goes on and puts everything
/// else back.
#[test]
fn a_deleted_row_whose_key_is_used_again_beside_a_row_inserted_is_a_conflict() {
    let setup = "CREATE TABLE k(sku TEXT PRIMARY KEY, n INT) WITHOUT ROWID;
                 CREATE TABLE r(id INTEGER PRIMARY KEY, n INT);
                 INSERT INTO k VALUES ('a', 1), ('b', 2);
                 INSERT INTO r VALUES (1, 1), (2, 2);";
    let step = r#"{"sql":"DELETE FROM k WHERE sku = 'a'; INSERT INTO k VALUES ('z', 26); DELETE FROM r WHERE id = 1; INSERT INTO r VALUES (9, 9)"}"#;
    let app = "INSERT INTO k VALUES ('a', 100); INSERT INTO r VALUES (1, 100)";
    let db = recorded_then(setup, step, app);
    let (fin, out) = undo_json(&db, "p");
    assert_eq!(fin["data"]["conflicts"], 2, "{out}");
    assert!(
        out.contains("the row the run deleted exists again"),
        "{out}"
    );
    assert_eq!(
        db.query_i64("SELECT n FROM k WHERE sku = 'a'")
            + db.query_i64("SELECT n FROM r WHERE id = 1"),
        200,
        "the application's rows kept"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM k WHERE sku = 'z'")
            + db.query_i64("SELECT count(*) FROM r WHERE id = 9"),
        0,
        "the rows the run inserted taken away"
    );
}

/// The same when the chunk changed another row's key: only the row
/// recorded right after a deleted one, marked as moved, is that row at
/// its new key. Any moved row of the table used to count, so the undo
/// stopped ("would lose the row") when the two rows fell in one part and
/// kept the conflict when a part ended between them: what it did hung on
/// where the record was cut (parts of one change each here).
#[test]
fn a_deleted_row_whose_key_is_used_again_beside_another_rows_key_change_is_a_conflict() {
    let setup = "CREATE TABLE u(id INTEGER PRIMARY KEY, n INT);
                 CREATE TABLE k(sku TEXT PRIMARY KEY, n INT) WITHOUT ROWID;
                 INSERT INTO u VALUES (1, 1), (2, 2), (3, 3);
                 INSERT INTO k VALUES ('a', 1), ('b', 2), ('c', 3);";
    let step = r#"{"sql":"DELETE FROM u WHERE id = 1; UPDATE u SET id = id + 10 WHERE id = 2; DELETE FROM k WHERE sku = 'a'; UPDATE k SET sku = 'z' WHERE sku = 'b'"}"#;
    let app = "INSERT INTO u VALUES (1, 100); INSERT INTO k VALUES ('a', 100);";
    let want = TempDb::with_sql(&format!(
        "{setup} DELETE FROM u WHERE id = 1; DELETE FROM k WHERE sku = 'a'; {app}"
    ));
    for env in EVERY_WAY {
        let db = recorded_then_with(setup, step, app, env);
        let (code, _, err) = run_with_env(&undo_of_plan(&db, "p", &[]), None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
        assert!(err.contains("2 conflicts"), "{env:?}: {err}");
        assert_eq!(
            content(&db),
            content(&want),
            "{env:?}: the moved rows back, the application's kept"
        );
    }
}

/// One row kept for the application and one as the run left it: the
/// last line says both in words that read, not "1 of the application's
/// row".
#[test]
fn an_undo_that_kept_one_row_of_each_kind_says_so_in_words_that_read() {
    let db = recorded_then(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT UNIQUE);
         INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');",
        r#"{"sql":"UPDATE t SET email = email || '.old' WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":10}}"#,
        "INSERT INTO t VALUES (4, 'b'); UPDATE t SET email = 'app' WHERE id = 3",
    );
    let (code, err) = undo_plan(&db, "p", &[]);
    assert_eq!(code, 0, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(
            "; 2 conflicts kept the application's row and 1 row as the run left it \
             (another row holds a value it would get back) \
             (every one is in the table batchsse_undo_conflict)"
        ),
        "{err}"
    );
}

/// A database made by `setup`, on which plan "p", recorded, ran `step`
/// (its JSON), and then the application ran `app`.
fn recorded_then(setup: &str, step: &str, app: &str) -> TempDb {
    recorded_then_with(setup, step, app, &[])
}

/// [`recorded_then`] with `env` set for the run.
fn recorded_then_with(setup: &str, step: &str, app: &str, env: &[(&str, &str)]) -> TempDb {
    let db = TempDb::with_sql(setup);
    let plan = db.file(
        "plan.json",
        &format!(r#"{{"name":"p","undo":true,"steps":[{step}]}}"#),
    );
    let args = run_args(&db, path_str(&plan), &["--no-serve"]);
    let (code, _, err) = run_with_env(&args, None, env);
    assert_eq!(code, 0, "{env:?}: {err}");
    db.conn().execute_batch(app).unwrap();
    db
}

/// Every way a record is made: through the pre-update hook or around the
/// chunks (as a build without the hook records), whole or cut into a part
/// per change.
const EVERY_WAY: [&[(&str, &str)]; 4] = {
    const OFF: (&str, &str) = ("BATCHSSE_UNDO_HOOK", "off");
    const ONE: (&str, &str) = ("BATCHSSE_UNDO_PART_BYTES", "1");
    [&[], &[OFF], &[ONE], &[ONE, OFF]]
};

/// `batchsse undo --plan PLAN` on `db` with JSON progress, which must
/// exit 0: its `finished` event and its whole output.
fn undo_json(db: &TempDb, plan: &str) -> (serde_json::Value, String) {
    let (code, out, err) = run(&undo_of_plan(db, plan, &["--progress", "json"]));
    assert_eq!(code, 0, "{err}");
    let fin = serde_json::from_str(out.lines().last().unwrap_or_default()).expect("finished");
    (fin, out)
}

fn emails(db: &TempDb) -> Vec<(i64, String)> {
    db.conn()
        .prepare("SELECT id, email FROM t ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `batchsse undo --plan PLAN` on `db`, which must stop with the file
/// byte for byte as it was; its exit code and stderr.
fn stopped_undo(db: &TempDb, plan: &str) -> (i32, String) {
    stopped_undo_with(db, plan, &[])
}

/// [`stopped_undo`] with more flags.
fn stopped_undo_with(db: &TempDb, plan: &str, extra: &[&str]) -> (i32, String) {
    let before = sha256(&db.path);
    let (code, _, err) = run(&undo_of_plan(db, plan, extra));
    assert_eq!(sha256(&db.path), before, "nothing written: {err}");
    (code, err)
}

/// `batchsse undo --plan PLAN --no-serve` on `db` with `env`: its exit
/// code and stderr.
fn undo_plan(db: &TempDb, plan: &str, env: &[(&str, &str)]) -> (i32, String) {
    let (code, _, err) = run_with_env(&undo_of_plan(db, plan, &[]), None, env);
    (code, err)
}

/// A table renamed since the run stops the undo before it writes, with
/// what to do.
#[test]
fn a_table_renamed_since_the_run_stops_the_undo_and_says_what_to_do() {
    let db = bumped();
    db.conn()
        .execute_batch("ALTER TABLE t RENAME TO counters")
        .unwrap();
    let (code, err) = stopped_undo(&db, "bump");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("renamed or dropped"), "{err}");
    assert!(
        err.contains("give a renamed table its old name back"),
        "{err}"
    );
}

/// An undo that stops at a step the run did not record takes back the
/// steps after it: their checkpoint goes, so running the plan again
/// applies them again, and the undo does not claim the plan is fully
/// taken back.
#[test]
fn an_undo_stopped_at_an_unrecorded_step_lets_the_steps_it_took_back_run_again() {
    let db = TempDb::counters(10);
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","undo":true,"steps":[
            {"sql":"UPDATE t SET counter = counter + 1"},
            {"sql":"CREATE INDEX t_counter ON t(counter)","undo":false},
            {"sql":"UPDATE t SET counter = counter + 10"}]}"#,
    );
    let args = run_args(&db, path_str(&plan), &["--no-serve"]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let (code, err) = undo_plan(&db, "p", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("is fully taken back"), "{err}");
    assert!(err.contains("still have undo records"), "{err}");
    // The step the undo stops at is not "already applied" by the undo.
    assert!(err.contains("skipped (not recorded by the run"), "{err}");
    assert!(!err.contains("already applied"), "{err}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 10, "{err}");
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT sum(counter) FROM t"),
        110,
        "step 3 applied again, step 1 not: {err}"
    );
}

/// A chunked step partly applied by a run without `--undo` cannot be
/// resumed recorded: an undo would take back only the recorded part, and
/// running the plan again would apply the other part twice. Refused before
/// anything runs, with the way on.
#[test]
fn resuming_with_undo_a_step_partly_applied_unrecorded_is_refused() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INT NOT NULL DEFAULT 0);
         INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100) SELECT i FROM s;
         CREATE TABLE flag(x); INSERT INTO flag VALUES (1);
         CREATE TRIGGER guard BEFORE UPDATE ON t WHEN NEW.id > 50 AND (SELECT count(*) FROM flag) > 0
           BEGIN SELECT RAISE(ABORT, 'not yet'); END;",
    );
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--batch-size", "10"]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 1, "stops at id 51: {err}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 50);
    db.conn().execute_batch("DELETE FROM flag").unwrap();
    let before = sha256(&db.path);
    for extra in [&["--undo"][..], &["--undo", "--dry-run"]] {
        let (code, _, err) = run(&[&args[..], extra].concat());
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains("\"undo\": false"), "{extra:?}: {err}");
        assert_eq!(sha256(&db.path), before, "nothing written");
    }
}

/// Recorded without the pre-update hook, the changes are staged in a TEMP
/// table, which would hide a table of the file with its name from the
/// step's own SQL: a step reading the user's `batchsse_stage` must read
/// the user's rows, and one writing it must write them.
#[test]
fn a_table_named_like_the_staging_table_is_the_users_own() {
    let db = TempDb::with_sql(
        "CREATE TABLE batchsse_stage(id INTEGER PRIMARY KEY, v INT);
         INSERT INTO batchsse_stage VALUES (1, 10), (2, 20), (3, 30);
         CREATE TABLE t(id INTEGER PRIMARY KEY, v INT);
         INSERT INTO t VALUES (1, 0), (2, 0);",
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","undo":true,"steps":[
            {"sql":"UPDATE t SET v = (SELECT count(*) FROM batchsse_stage)"},
            {"sql":"UPDATE batchsse_stage SET v = v + 1"}]}"#,
    );
    let off = [("BATCHSSE_UNDO_HOOK", "off")];
    let args = run_args(&db, path_str(&plan), &["--no-serve"]);
    let (code, _, err) = run_with_env(&args, None, &off);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(v) FROM t"), 6, "{err}");
    assert_eq!(db.query_i64("SELECT sum(v) FROM batchsse_stage"), 63);
    let (code, err) = undo_plan(&db, "p", &off);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(v) FROM t"), 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(v) FROM batchsse_stage"), 60);
}

/// Without the pre-update hook a changed row is staged with its old and
/// new values side by side, so a table of over 1,000 columns cannot be:
/// refused before anything runs, not failed at its step.
#[test]
fn a_table_too_wide_to_stage_is_refused_up_front_without_the_hook() {
    let cols: Vec<String> = (0..1200).map(|i| format!("c{i} INT")).collect();
    let db = TempDb::with_sql(&format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, {}); INSERT INTO t(id) VALUES (1), (2);",
        cols.join(", ")
    ));
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","undo":true,"steps":[{"sql":"UPDATE t SET c5 = 1"}]}"#,
    );
    let before = sha256(&db.path);
    let args = run_args(&db, path_str(&plan), &["--no-serve"]);
    let (code, _, err) = run_with_env(&args, None, &[("BATCHSSE_UNDO_HOOK", "off")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("more than this build can record"), "{err}");
    assert!(err.contains("\"undo\": false"), "{err}");
    assert_eq!(sha256(&db.path), before, "nothing written");
}

/// A table whose name holds a dot is a table of the file, not one of an
/// attached database: recorded, and taken back.
#[test]
fn a_table_named_with_a_dot_is_recorded_and_taken_back() {
    let db = TempDb::with_sql(
        r#"CREATE TABLE "a.b"(id INTEGER PRIMARY KEY, v INT); INSERT INTO "a.b" VALUES (1, 1), (2, 2);"#,
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","undo":true,"steps":[{"sql":"UPDATE \"a.b\" SET v = v * 10"}]}"#,
    );
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64(r#"SELECT sum(v) FROM "a.b""#), 30);
    let (code, err) = undo_plan(&db, "p", &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64(r#"SELECT sum(v) FROM "a.b""#), 3, "{err}");
}

/// The pre-run check cannot see into a database a step attaches; a
/// recorded step that writes one is stopped as SQLite compiles it, with
/// nothing of the step kept, rather than run unrecorded and left out of
/// the undo.
#[test]
fn a_recorded_write_to_a_database_a_step_attached_is_stopped() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 1);",
    );
    let aux = db.dir.path().join("aux.sqlite");
    rusqlite::Connection::open(&aux)
        .unwrap()
        .execute_batch("CREATE TABLE x(v); INSERT INTO x VALUES (1);")
        .unwrap();
    let plan = serde_json::json!({"name": "p", "undo": true, "steps": [
        {"sql": format!("ATTACH '{}' AS aux", path_str(&aux).replace('\'', "''")), "undo": false},
        {"sql": "UPDATE t SET v = 5; UPDATE aux.x SET v = 2"}]});
    let plan = db.file("plan.json", &plan.to_string());
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("it writes aux.x, a table of an attached database"),
        "{err}"
    );
    let aux_v: i64 = rusqlite::Connection::open(&aux)
        .unwrap()
        .query_row("SELECT v FROM x", [], |r| r.get(0))
        .unwrap();
    assert_eq!(aux_v, 1, "not written unrecorded: {err}");
    assert_eq!(db.query_i64("SELECT v FROM t"), 1, "the step rolled back");
}

/// An undo stopped part-way (here by `--on-conflict abort`) has taken back
/// some of a step's chunks while its checkpoint still says it is applied:
/// running the plan then is refused until the undo is finished, rather
/// than skipping the step as applied.
#[test]
fn a_plan_whose_undo_stopped_part_way_is_not_run_until_the_undo_ends() {
    let db = TempDb::counters(40);
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--batch-size", "10"]);
    let (code, _, err) = run(&[&args[..], &["--undo"]].concat());
    assert_eq!(code, 0, "{err}");
    // The application changes a row of the first chunk, which the undo
    // meets last.
    db.conn()
        .execute_batch("UPDATE t SET counter = 7 WHERE id = 3")
        .unwrap();
    let undo = undo_of_plan(&db, "bump", &[]);
    let (code, _, err) = run(&undo_of_plan(&db, "bump", &["--on-conflict", "abort"]));
    assert_eq!(code, 1, "{err}");
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE counter = 0"), 30);
    let before = sha256(&db.path);
    let (code, _, err) = run(&args);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("undo of plan \"bump\" is not finished"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "`batchsse undo --db {0} --plan bump` (or start over with `batchsse checkpoint clear --db {0} --plan bump`)",
            path_str(&db.path)
        )),
        "commands that work: {err}"
    );
    assert_eq!(sha256(&db.path), before, "nothing written");
    let (code, _, err) = run(&undo);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 1"),
        39,
        "{err}"
    );
    assert_eq!(db.query_i64("SELECT counter FROM t WHERE id = 3"), 8);
}

/// Runs plan "two" on `db` with `--undo` ([`two_steps_args`]): step a (a
/// counter + 1) in two parts of 50 rows, then step b (+ 10) in one.
/// Returns the plan's file.
fn two_steps_recorded(db: &TempDb) -> std::path::PathBuf {
    let plan = db.file(
        "plan.json",
        r#"{"name":"two","steps":[
            {"name":"a","sql":"UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":50}},
            {"name":"b","sql":"UPDATE t SET counter = counter + 10"}]}"#,
    );
    let args = two_steps_args(db, &plan);
    let (code, _, err) = run(&[&args[..], &["--undo"]].concat());
    assert_eq!(code, 0, "{err}");
    plan
}

/// A run of plan "two" without `--undo`.
fn two_steps_args<'a>(db: &'a TempDb, plan: &'a std::path::Path) -> Vec<&'a str> {
    // Fixed chunks: a in two parts, whatever the pace makes of its time.
    run_args(db, path_str(plan), &["--no-serve", "--batch-size", "50"])
}

/// An undo of plan "two" (see [`two_steps_recorded`]) killed once the
/// step it takes back `index`th (from 0) has had its first part go back,
/// while it sleeps before the next: with one run, 1 is step a, after b.
fn undo_killed_in_step(db: &TempDb, index: u64) {
    let mut undo = gated_undo(
        path_str(&db.path),
        "two",
        &["--sleep", "600000", "--progress", "none"],
    );
    let mut s = Stream::open(undo.addr(), "/events", &[]);
    loop {
        let e = s.until("step");
        if data(&e)["index"] == index && data(&e)["state"] == "running" {
            break;
        }
    }
    s.until("progress");
    undo.child.kill().unwrap();
    undo.child.wait().unwrap();
}

/// An undo killed between two steps (after the last part of one, before
/// the next one's first) leaves the step it took back whole free to run
/// again: its checkpoint went in its last part's transaction, not at the
/// end of the undo, which the kill never reached.
#[test]
fn an_undo_killed_between_two_steps_leaves_the_step_it_took_back_free_to_run() {
    let db = TempDb::counters(100);
    let plan = two_steps_recorded(&db);
    let args = two_steps_args(&db, &plan);
    undo_killed_in_step(&db, 1);
    assert_eq!(
        db.query_i64("SELECT sum(counter) FROM t"),
        50,
        "b taken back whole, a's first part too"
    );
    let (code, err) = undo_plan(&db, "two", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("fully taken back"), "{err}");
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 11"),
        100,
        "both steps ran again: {err}"
    );
}

/// A `WITHOUT ROWID` table keyed by text and a rowid table, whose keys
/// [`RENAME_SKUS`] and [`SHIFT_IDS`] change.
const KEYED: &str = "CREATE TABLE p(sku TEXT PRIMARY KEY, name TEXT) WITHOUT ROWID;
    INSERT INTO p VALUES ('OLD-1', 'widget'), ('OLD-2', 'gadget');
    CREATE TABLE u(id INTEGER PRIMARY KEY, name TEXT);
    INSERT INTO u VALUES (1, 'one'), (2, 'two');";
const RENAME_SKUS: &str = r#"{"sql":"UPDATE p SET sku = 'NEW-' || substr(sku, 5)"}"#;
const SHIFT_IDS: &str = r#"{"sql":"UPDATE u SET id = id + 10"}"#;

/// A row whose key the run changed, and whose old key the application
/// has used since, cannot go back: the row at its new key would be taken
/// away and the old one not put back, losing it while the undo said
/// `finished ok`. The undo stops there instead, the file as it was, for a
/// rowid table and a `WITHOUT ROWID` one alike.
#[test]
fn a_row_whose_old_key_the_application_took_since_stops_the_undo() {
    for (step, app) in [
        (RENAME_SKUS, "INSERT INTO p VALUES ('OLD-1', 'new widget')"),
        (SHIFT_IDS, "INSERT INTO u VALUES (1, 'app one')"),
    ] {
        let db = recorded_then(KEYED, step, app);
        let (code, err) = stopped_undo(&db, "p");
        assert_eq!(code, 1, "{step}: {err}");
        assert!(err.contains("holds its key"), "{step}: {err}");
        assert!(err.contains("would lose the row"), "{step}: {err}");
    }
}

/// A row whose key the run changed, and whose row at the new key the
/// application has changed (or deleted) since, cannot go back under
/// `skip`: the row at the new key is the application's and stays, so
/// putting the old one back would make the product exist twice (or bring
/// back one the application deleted). The undo stops there, the file as
/// it was; `overwrite` takes the row back to its old key whole.
#[test]
fn a_row_whose_new_key_row_the_application_changed_since_stops_the_undo() {
    for (step, app) in [
        (RENAME_SKUS, "UPDATE p SET name = 'app' WHERE sku = 'NEW-1'"),
        (RENAME_SKUS, "DELETE FROM p WHERE sku = 'NEW-2'"),
        (SHIFT_IDS, "UPDATE u SET name = 'app' WHERE id = 11"),
    ] {
        let db = recorded_then(KEYED, step, app);
        let (code, err) = stopped_undo(&db, "p");
        assert_eq!(code, 1, "{step} {app}: {err}");
        assert!(err.contains("exist twice"), "{step} {app}: {err}");
        // A dry run foresees the stop, and its counts are said as partial.
        let (code, err) = stopped_undo_with(&db, "p", &["--dry-run"]);
        assert_eq!(code, 1, "{step} {app}: {err}");
        assert!(err.contains("exist twice"), "{step} {app}: {err}");
        assert!(
            err.contains("conflicts before it stopped;"),
            "{step} {app}: {err}"
        );
        // Under abort, only overwrite can finish it: skip would stop here.
        let (code, err) = stopped_undo_with(&db, "p", &["--on-conflict", "abort"]);
        assert_eq!(code, 1, "{step} {app}: {err}");
        assert!(
            err.contains(
                "run it again with --on-conflict overwrite (the run changed this row's key"
            ) && !err.contains("--on-conflict skip"),
            "{step} {app}: {err}"
        );
        assert!(
            err.contains("--on-conflict overwrite"),
            "{step} {app}: {err}"
        );
        let (code, _, err) = run(&undo_of_plan(&db, "p", &["--on-conflict", "overwrite"]));
        assert_eq!(code, 0, "{step} {app}: {err}");
        assert_eq!(
            content(&db),
            content(&TempDb::with_sql(KEYED)),
            "{step} {app}"
        );
    }
}

/// The same when the run changed the row again at its new key, and the
/// record holds that later change in a part of its own (parts of one
/// change each): the first undo keeps the application's row there as a
/// conflict, in a part it commits, then stops at the key's change. The
/// `overwrite` it points at must then take the row back to its old key
/// whole, as it does when both changes are in one part: it skipped the
/// row kept by the earlier try and put the old one back beside it, the
/// row twice with `finished ok`.
#[test]
fn overwrite_after_a_stop_takes_back_a_moved_row_an_earlier_part_kept() {
    let setup = "CREATE TABLE u(id INTEGER PRIMARY KEY, n INT, note TEXT);
                 INSERT INTO u VALUES (1, 1, 'a'), (2, 2, 'b'), (3, 3, 'c');";
    let step =
        r#"{"sql":"UPDATE u SET id = id + 10 WHERE id = 2; UPDATE u SET n = n + 1 WHERE id = 12"}"#;
    for env in EVERY_WAY {
        let db = recorded_then_with(setup, step, "UPDATE u SET n = 999 WHERE id = 12", env);
        let (code, _, err) = run_with_env(&undo_of_plan(&db, "p", &[]), None, env);
        assert_eq!(code, 1, "{env:?}: {err}");
        assert!(err.contains("exist twice"), "{env:?}: {err}");
        let overwrite = undo_of_plan(&db, "p", &["--on-conflict", "overwrite"]);
        let (code, _, err) = run_with_env(&overwrite, None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
        assert_eq!(
            content(&db),
            content(&TempDb::with_sql(setup)),
            "{env:?}: the row back at its old key, once"
        );
        // Put back after all: no longer reported as kept, so with every
        // record gone batchsse's tables went too.
        let left = db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name LIKE 'batchsse%'");
        assert_eq!(left, 0, "{env:?}: {err}");
        assert!(!err.contains("kept"), "{env:?}: {err}");
    }
}

/// A `REPLACE` records each replaced row as deleted and its new row as
/// inserted, of the same key. The application's change to one new row
/// keeps that row (a conflict) and must not stop the undo from putting
/// back the other row it replaced: that one is another row, which cannot
/// exist twice.
#[test]
fn a_replaced_row_the_application_changed_since_does_not_stop_the_others() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
                 INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');";
    let step = r#"{"sql":"INSERT OR REPLACE INTO t(id, v) VALUES (1, 'A'), (2, 'B')"}"#;
    let db = recorded_then(setup, step, "UPDATE t SET v = 'app' WHERE id = 2");
    let (fin, out) = undo_json(&db, "p");
    assert_eq!(fin["data"]["conflicts"], 1, "{out}");
    assert!(!out.contains("exist twice"), "{out}");
    let want = TempDb::with_sql(&format!("{setup} UPDATE t SET v = 'app' WHERE id = 2"));
    assert_eq!(
        content(&db),
        content(&want),
        "row 1 back, row 2 the application's"
    );
}

/// A step that deletes a row and then inserts another into the same table
/// records them side by side, as a key's change is recorded, but they are
/// two rows: the application's change to the new one keeps it (a
/// conflict) and must not stop the undo from putting the deleted one back.
/// (`overwrite`, which the stop pointed at, would have deleted the
/// application's row.) Recorded either way.
#[test]
fn a_row_deleted_beside_another_inserted_comes_back_when_that_one_is_kept() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
                 INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');";
    let step = r#"{"name":"p","undo":true,"steps":[{"sql":"DELETE FROM t WHERE id = 1; INSERT INTO t(v) VALUES ('new')"}]}"#;
    for env in [&[][..], &[("BATCHSSE_UNDO_HOOK", "off")][..]] {
        let db = TempDb::with_sql(setup);
        let plan = db.file("plan.json", step);
        let (code, _, err) =
            run_with_env(&run_args(&db, path_str(&plan), &["--no-serve"]), None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
        db.conn()
            .execute_batch("UPDATE t SET v = 'app' WHERE id = 4")
            .unwrap();
        let (fin, out) = undo_json(&db, "p");
        assert_eq!(fin["data"]["conflicts"], 1, "{env:?}: {out}");
        let want = TempDb::with_sql(&format!("{setup} INSERT INTO t VALUES (4, 'app');"));
        assert_eq!(content(&db), content(&want), "{env:?}");
    }
}

/// Without the pre-update hook a key's change is staged as two rows, the
/// row deleted and the row inserted anew. A part cut between them (parts
/// end at 256 KiB, here at every row's old picture) would put the third
/// product back at its old key in one part while the other kept the
/// application's change at the new one: the product twice, the undo
/// ending ok. The two stay in one part (a part a product), and the undo
/// stops as it does for a small record (after taking back the newer
/// part); `overwrite` then takes every product back to its old key.
#[test]
fn a_key_change_recorded_without_the_hook_stays_in_one_part() {
    let setup = "CREATE TABLE p(sku TEXT PRIMARY KEY, price INT, pic BLOB) WITHOUT ROWID;
                 INSERT INTO p VALUES ('OLD-1', 1, randomblob(1500000)),
                   ('OLD-2', 2, randomblob(1500000)), ('OLD-3', 3, randomblob(1500000)),
                   ('OLD-4', 4, randomblob(1500000));";
    let db = TempDb::with_sql(setup);
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","undo":true,"steps":[{"sql":"UPDATE p SET sku = 'NEW-' || substr(sku, 5)"}]}"#,
    );
    let off = [("BATCHSSE_UNDO_HOOK", "off")];
    let (code, _, err) = run_with_env(&run_args(&db, path_str(&plan), &["--no-serve"]), None, &off);
    assert_eq!(code, 0, "{err}");
    let parts = db.query_i64("SELECT count(*) FROM batchsse_undo WHERE chunk >= 0");
    assert_eq!(
        parts, 4,
        "a part cut after each row, its old and new key together"
    );
    db.conn()
        .execute_batch("UPDATE p SET price = 33 WHERE sku = 'NEW-3'")
        .unwrap();
    let skus = || -> Vec<(String, i64)> {
        let c = db.conn();
        let mut stmt = c.prepare("SELECT sku, price FROM p ORDER BY sku").unwrap();
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    };
    // The newer part (the fourth row) goes back; the older one stops.
    let (code, _, err) = run(&undo_of_plan(&db, "p", &[]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("exist twice"), "{err}");
    let new = |i: i64| (format!("NEW-{i}"), i);
    let want = vec![new(1), new(2), ("NEW-3".into(), 33), ("OLD-4".into(), 4)];
    assert_eq!(skus(), want);
    let (code, _, err) = run(&undo_of_plan(&db, "p", &["--on-conflict", "overwrite"]));
    assert_eq!(code, 0, "{err}");
    let old: Vec<_> = (1..=4).map(|i| (format!("OLD-{i}"), i)).collect();
    assert_eq!(skus(), old);
}

/// A `VACUUM` numbers anew the rowids of a table with neither an `INTEGER
/// PRIMARY KEY` nor any index, by which the record finds its rows: with
/// rowids gone from the middle, an undo would write each old status into
/// the next row along (every row says 'archived', so none would look
/// changed). It is refused instead, dry run too, the file untouched, and
/// says what to do. A table with an index keeps its rowids (SQLite copies
/// the index as it is), so it is taken back as ever, and so is a run
/// recorded after the `VACUUM`.
#[test]
fn an_undo_after_a_vacuum_that_renumbered_rowids_is_refused() {
    let setup = "CREATE TABLE u(email TEXT, status TEXT);
                 INSERT INTO u VALUES ('a@x', 'new'), ('b@x', 'old'), ('c@x', 'new'), ('d@x', 'old');
                 DELETE FROM u WHERE email = 'b@x';
                 CREATE TABLE k(email TEXT PRIMARY KEY, status TEXT);
                 INSERT INTO k SELECT * FROM u;
                 DELETE FROM k WHERE email = 'a@x';";
    let archive = |t: &str| format!(r#"{{"sql":"UPDATE {t} SET status = 'archived'"}}"#);
    let db = recorded_then(setup, &archive("u"), "VACUUM");
    for extra in [&[][..], &["--dry-run"]] {
        let (code, err) = stopped_undo_with(&db, "p", extra);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains("the rowids of u were numbered anew"), "{err}");
        assert!(err.contains("Nothing was taken back"), "{err}");
        assert!(err.contains("batchsse undo clear --db"), "{err}");
    }
    let db = recorded_then(setup, &archive("k"), "VACUUM");
    let (code, _, err) = run(&undo_of_plan(&db, "p", &[]));
    assert_eq!(code, 0, "an indexed table keeps its rowids: {err}");
    let fresh = TempDb::with_sql(setup);
    fresh.conn().execute_batch("VACUUM").unwrap();
    let vacuumed = content(&fresh);
    assert_eq!(content(&db), vacuumed, "k as before the run");
    let db = fresh;
    let plan = db.file(
        "plan.json",
        &format!(r#"{{"name":"p","undo":true,"steps":[{}]}}"#, archive("u")),
    );
    run_undoable(&db, &plan);
    let (code, _, err) = run(&undo_of_plan(&db, "p", &[]));
    assert_eq!(code, 0, "recorded after the VACUUM: {err}");
    assert_eq!(content(&db), vacuumed);
}

/// The usual SQLite migration (Django's, Alembic's batch mode, Rails'):
/// the table copied into a new one, the old one dropped, the new one
/// renamed. The copy numbers the rows of a table with no `INTEGER PRIMARY
/// KEY` anew, and the record finds them by rowid: with a row deleted
/// before the copy, an undo wrote each old status into the next row along
/// (a constant `SET` matches every row's fingerprint) and said it was
/// done. It is refused instead, dry run too, the file untouched. A run
/// recorded after the migration is taken back as ever, and so is one in a
/// file with auto-vacuum, where dropping another table moves this one's
/// b-tree without renumbering it (its row in `sqlite_schema` stays).
#[test]
fn an_undo_after_a_migration_that_copied_its_table_is_refused() {
    let setup = "CREATE TABLE t(code TEXT PRIMARY KEY, status TEXT);
                 INSERT INTO t VALUES ('a', 'new'), ('b', 'old'), ('c', 'new2'), ('d', 'x');";
    let migrate = "DELETE FROM t WHERE code = 'a';
                   CREATE TABLE new__t(code TEXT PRIMARY KEY, status TEXT NOT NULL);
                   INSERT INTO new__t(code, status) SELECT code, status FROM t;
                   DROP TABLE t; ALTER TABLE new__t RENAME TO t;";
    let done = r#"{"sql":"UPDATE t SET status = 'done'"}"#;
    let db = recorded_then(setup, done, migrate);
    for extra in [&[][..], &["--dry-run"]] {
        let (code, err) = stopped_undo_with(&db, "p", extra);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains("table t was made anew since run"), "{err}");
        assert!(err.contains("Nothing was taken back"), "{err}");
        assert!(err.contains("batchsse undo clear --db"), "{err}");
    }
    let plan = db.file(
        "after.json",
        &format!(
            r#"{{"name":"after","undo":true,"steps":[{}]}}"#,
            done.replace("done", "later")
        ),
    );
    let migrated = content(&db);
    db.conn()
        .execute_batch("UPDATE t SET status = 'done'")
        .unwrap();
    let before_later = content(&db);
    run_undoable(&db, &plan);
    let (code, _, err) = run(&undo_of_plan(&db, "after", &[]));
    assert_eq!(code, 0, "recorded after the migration: {err}");
    assert_eq!(content(&db), before_later, "{migrated}");
    // Each drop moves the b-tree with the highest root page into the one
    // freed: with 20 tables made before t dropped, t's moves too.
    let made: String = (0..20).map(|i| format!("CREATE TABLE g{i}(x); ")).collect();
    let dropped: String = (0..20).map(|i| format!("DROP TABLE g{i}; ")).collect();
    let db = TempDb::with_sql(&format!("PRAGMA auto_vacuum = FULL; {made} {setup}"));
    let before = content(&db);
    let plan = db.file(
        "plan.json",
        &format!(r#"{{"name":"p","undo":true,"steps":[{done}]}}"#),
    );
    run_undoable(&db, &plan);
    let root = || db.query_i64("SELECT rootpage FROM sqlite_schema WHERE name = 't'");
    let was = root();
    db.conn().execute_batch(&dropped).unwrap();
    assert_ne!(root(), was, "t's b-tree moved");
    let (code, _, err) = run(&undo_of_plan(&db, "p", &[]));
    assert_eq!(code, 0, "auto-vacuum moved t's b-tree: {err}");
    db.conn().execute_batch(&made).unwrap();
    assert_eq!(content(&db), before, "{err}");
}

/// The other way to change a column (SQLite's own FAQ): the rows kept in
/// a backup table, the table dropped and created again, the rows copied
/// back. The new table takes the dropped one's b-tree root page back
/// from the freelist, so a root page could not tell it, and an undo wrote
/// each old status into the next row along and said it was done; its row
/// in `sqlite_schema` is a new one, and the undo is refused.
#[test]
fn an_undo_after_a_migration_that_dropped_and_made_its_table_again_is_refused() {
    let setup = "CREATE TABLE t(code TEXT PRIMARY KEY, status TEXT); CREATE TABLE z(x);
                 INSERT INTO t VALUES ('a', 'new'), ('b', 'old'), ('c', 'new2'), ('d', 'x');";
    let migrate = "DELETE FROM t WHERE code = 'a';
                   CREATE TEMP TABLE backup AS SELECT code, status FROM t; DROP TABLE t;
                   CREATE TABLE t(code TEXT PRIMARY KEY, status TEXT NOT NULL);
                   INSERT INTO t SELECT code, status FROM backup; DROP TABLE backup;";
    let db = recorded_then(setup, r#"{"sql":"UPDATE t SET status = 'done'"}"#, "");
    let root = || db.query_i64("SELECT rootpage FROM sqlite_schema WHERE name = 't'");
    let was = root();
    db.conn().execute_batch(migrate).unwrap();
    assert_eq!(root(), was, "the new t took the old one's root page");
    for extra in [&[][..], &["--dry-run"]] {
        let (code, err) = stopped_undo_with(&db, "p", extra);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains("table t was made anew since run"), "{err}");
    }
    // Where auto-vacuum moves b-trees on every drop, the copy is told too.
    let copy = "DELETE FROM t WHERE code = 'a';
                CREATE TABLE new__t(code TEXT PRIMARY KEY, status TEXT NOT NULL);
                INSERT INTO new__t(code, status) SELECT code, status FROM t;
                DROP TABLE t; ALTER TABLE new__t RENAME TO t;";
    let setup = format!("PRAGMA auto_vacuum = INCREMENTAL; {setup}");
    let db = recorded_then(&setup, r#"{"sql":"UPDATE t SET status = 'done'"}"#, copy);
    let (code, err) = stopped_undo_with(&db, "p", &[]);
    assert_eq!(code, 2, "auto-vacuum: {err}");
    assert!(err.contains("table t was made anew since run"), "{err}");
}

/// `VACUUM INTO` a copy swapped in for the file keeps every rowid (as the
/// README says), though it gives the tables new b-tree root pages: the
/// undo takes the run back rather than calling it a migration.
#[test]
fn an_undo_after_a_vacuum_into_swapped_in_takes_the_run_back() {
    let setup = "CREATE TABLE other(x); INSERT INTO other SELECT randomblob(3000);
                 CREATE INDEX other_x ON other(x);
                 CREATE TABLE t(code TEXT PRIMARY KEY, status TEXT);
                 INSERT INTO t VALUES ('a', 'new'), ('b', 'old'), ('c', 'new2'), ('d', 'x');
                 DELETE FROM t WHERE code = 'a';";
    let db = TempDb::with_sql(setup);
    let before = content(&db);
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","undo":true,"steps":[{"sql":"UPDATE t SET status = 'done'"}]}"#,
    );
    run_undoable(&db, &plan);
    let root = || db.query_i64("SELECT rootpage FROM sqlite_schema WHERE name = 't'");
    let was = root();
    let copy = db.dir.path().join("copy.db");
    db.conn()
        .execute("VACUUM INTO ?1", [path_str(&copy)])
        .unwrap();
    std::fs::rename(&copy, &db.path).unwrap();
    assert_ne!(root(), was, "the copy gave t another root page");
    let (code, _, err) = run(&undo_of_plan(&db, "p", &[]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(content(&db), before, "{err}");
}

/// An index given after the `VACUUM` to a table that had none when the
/// run was recorded does not bring back the rowids the `VACUUM` numbered
/// anew: the undo is still refused, the file untouched, rather than
/// writing each old status into the next row along.
#[test]
fn an_index_added_after_the_vacuum_does_not_hide_it() {
    let setup = "CREATE TABLE u(email TEXT, status TEXT);
                 INSERT INTO u VALUES ('a@x', 'new'), ('b@x', 'old'), ('c@x', 'new'), ('d@x', 'old');
                 DELETE FROM u WHERE email = 'b@x';";
    let step = r#"{"sql":"UPDATE u SET status = 'archived'"}"#;
    let db = recorded_then(setup, step, "VACUUM; CREATE INDEX u_email ON u(email)");
    let (code, err) = stopped_undo(&db, "p");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the rowids of u were numbered anew"), "{err}");
}

/// A copy of the file made through `.dump` numbers anew the rowids of
/// every table without an `INTEGER PRIMARY KEY`, with an index (here a
/// text key) or not: an undo there is refused too, the file untouched,
/// while a copy that keeps them (`VACUUM INTO`) is taken back.
#[test]
fn an_undo_in_a_copy_made_through_dump_is_refused() {
    let setup = "CREATE TABLE k(email TEXT PRIMARY KEY, status TEXT);
                 INSERT INTO k VALUES ('a@x', 'new'), ('b@x', 'old'), ('c@x', 'new'), ('d@x', 'old');
                 DELETE FROM k WHERE email = 'b@x';";
    let db = recorded_then(setup, r#"{"sql":"UPDATE k SET status = 'archived'"}"#, "");
    let copy = dump_copy(&db);
    let (code, err) = stopped_undo(&copy, "p");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the rowids of k were numbered anew"), "{err}");
    assert!(err.contains("made through .dump"), "{err}");
    let kept = TempDb::empty();
    db.conn()
        .execute("VACUUM INTO ?1", [path_str(&kept.path)])
        .unwrap();
    let (code, _, err) = run(&undo_of_plan(&kept, "p", &[]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(content(&kept), content(&TempDb::with_sql(setup)));
}

/// An undo that goes on from a killed try counts the rows that try kept
/// apart from its own, and its last line names them: it must not end
/// looking as if everything went back.
#[test]
fn an_undo_gone_on_from_a_killed_try_names_the_conflicts_that_try_kept() {
    let db = TempDb::counters(100);
    two_steps_recorded(&db);
    // Step b goes back first, keeping row 7.
    db.conn()
        .execute_batch("UPDATE t SET counter = 99 WHERE id = 7")
        .unwrap();
    undo_killed_in_step(&db, 1);
    // The same file twice over: one to go on with as a script reads it,
    // one as a person does.
    let seen = TempDb::empty();
    std::fs::copy(&db.path, &seen.path).unwrap();
    let (fin, _) = undo_json(&db, "two");
    assert_eq!(fin["data"]["conflicts"], 0, "{fin}");
    assert_eq!(fin["data"]["conflicts_earlier"], 1, "{fin}");
    assert_eq!(db.query_i64("SELECT counter FROM t WHERE id = 7"), 99);
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t WHERE id <> 7"), 0);
    let (code, err) = undo_plan(&seen, "two", &[]);
    assert_eq!(code, 0, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("; 1 conflict kept the application's row before this try"),
        "{last}"
    );
}

/// An interrupted `--plan` undo that had taken the newer of two runs
/// back whole no longer lists that run; going on, it still holds the row
/// that run's undo kept, so the older run's change to it is not put back
/// over the application's value (which happens to be what the older run
/// wrote), and counts it as kept before.
#[test]
fn an_undo_gone_on_after_a_newer_run_went_back_whole_still_holds_its_kept_rows() {
    let db = TempDb::counters(100);
    let plan = two_steps_recorded(&db);
    // The newer run's a in one part: the undo's only pause is in the
    // older's a.
    let newer = ["--no-serve", "--batch-size", "100", "--undo", "--force"];
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &newer));
    assert_eq!(code, 0, "{err}");
    db.conn()
        .execute_batch("UPDATE t SET counter = 1 WHERE id = 7")
        .unwrap();
    // The newer run's b, its a, the older's b, then the older's a (index
    // 3), whose part of rows 51-100 goes back first.
    undo_killed_in_step(&db, 3);
    let (fin, _) = undo_json(&db, "two");
    assert_eq!(db.query_i64("SELECT counter FROM t WHERE id = 7"), 1);
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t WHERE id <> 7"), 0);
    assert_eq!(fin["data"]["conflicts_earlier"], 1, "{fin}");
    assert_eq!(fin["data"]["conflicts"], 0, "{fin}");
    assert!(fin["data"].get("conflicts_as_left").is_none(), "{fin}");
}

/// Parts another undo took meanwhile cost no pause: an undo that read the
/// record, then found every part gone, ends at once instead of sleeping
/// its `--sleep` after each of them.
#[test]
fn an_undo_does_not_pause_on_parts_another_undo_took() {
    let db = bumped();
    let file = path_str(&db.path);
    let mut late = gated_undo(file, "bump", &["--progress", "plain", "--sleep", "4000"]);
    wait_status(late.addr(), |s| s["steps_total"] == 1);
    let (code, err) = undo_plan(&db, "bump", &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 0, "{err}");
    let t0 = Instant::now();
    let _client = Stream::open(late.addr(), "/events", &[]);
    assert_eq!(late.wait().code(), Some(0), "{}", late.stderr());
    // Four parts: 12 s or more of pauses if each were slept after.
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "{:?}: {}",
        t0.elapsed(),
        late.stderr()
    );
}

/// The undo writes with foreign keys off, to put rows back as the run
/// found them: a row it puts back whose parent the application deleted
/// since is said to dangle, counted against what dangled before it began.
#[test]
fn an_undo_says_which_rows_it_left_pointing_at_a_deleted_parent() {
    let db = TempDb::with_sql(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE p(id INTEGER PRIMARY KEY);
         CREATE TABLE c(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p(id));
         INSERT INTO p VALUES (1), (2), (3);
         INSERT INTO c VALUES (1, 1), (2, 2), (3, 2), (4, 3), (5, 99);",
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"purge","undo":true,"steps":[{"sql":"DELETE FROM c WHERE pid = 2"}]}"#,
    );
    let file = path_str(&db.path);
    let undo = |extra: &[&str]| {
        let args = [
            &["undo", "--db", file, "--plan", "purge", "--no-serve"],
            extra,
        ]
        .concat();
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{err}");
        err
    };
    let purge = || {
        let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
        assert_eq!(code, 0, "{err}");
    };
    // Row 5 dangled before: no word of it.
    purge();
    let err = undo(&[]);
    assert!(err.contains("checking the foreign keys of c,"), "{err}");
    assert!(!err.contains("whose foreign key"), "{err}");
    purge();
    db.conn()
        .execute_batch("PRAGMA foreign_keys = ON; DELETE FROM p WHERE id = 2")
        .unwrap();
    let before = sha256(&db.path);
    let err = undo(&["--dry-run"]);
    assert!(
        err.contains(
            "the undo would leave 2 rows in c whose foreign key would point at a row that is gone"
        ),
        "{err}"
    );
    assert_eq!(sha256(&db.path), before, "a dry run writes nothing");
    let err = undo(&[]);
    assert!(
        err.contains("the undo left 2 rows in c whose foreign key points at"),
        "{err}"
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM c"), 5, "{err}");
}

/// An undo that listed its run's parts, then found the record cleared and
/// another plan's run recorded in its place (SQLite gives a new row the
/// ids the cleared rows had), takes back nothing of that other run: the
/// other plan's rows stay changed and its record whole.
#[test]
fn an_undo_never_takes_back_another_runs_part_that_got_the_id_of_its_own() {
    let db = bumped();
    let file = path_str(&db.path);
    db.conn()
        .execute_batch(
            "CREATE TABLE u(id INTEGER PRIMARY KEY, counter INTEGER NOT NULL DEFAULT 0);
             INSERT INTO u(id) SELECT id FROM t;",
        )
        .unwrap();
    let mut late = gated_undo(file, "bump", &["--progress", "plain"]);
    wait_status(late.addr(), |s| s["steps_total"] == 1);
    clear_undo_by_hand(&db);
    let other = db.file(
        "other.json",
        r#"{"name":"other","steps":[{"sql":"UPDATE u SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"u","key":"id","size":10}}]}"#,
    );
    let args = run_args(
        &db,
        path_str(&other),
        &["--no-serve", "--undo", "--batch-size", "10"],
    );
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let record = "SELECT count(*) FROM batchsse_undo WHERE plan = 'other'";
    let parts = db.query_i64(record);
    let _client = Stream::open(late.addr(), "/events", &[]);
    late.wait();
    assert_eq!(
        db.query_i64("SELECT sum(counter) FROM u"),
        40,
        "{}",
        late.stderr()
    );
    assert_eq!(db.query_i64(record), parts, "{}", late.stderr());
}

/// An undo of a cleanup of rows that already pointed at nothing puts
/// them back as they were: its warning says they dangle without laying
/// it on the application, which did nothing, and so does an undo that
/// takes away a parent the run added and the application then used.
#[test]
fn the_dangling_warning_does_not_blame_the_application_for_what_the_run_found() {
    for (step, app) in [
        ("DELETE FROM c WHERE pid NOT IN (SELECT id FROM p)", ""),
        ("INSERT INTO p VALUES (2)", "INSERT INTO c VALUES (3, 2)"),
    ] {
        let db = TempDb::with_sql(
            "PRAGMA foreign_keys = OFF;
             CREATE TABLE p(id INTEGER PRIMARY KEY);
             CREATE TABLE c(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p(id));
             INSERT INTO p VALUES (1);
             INSERT INTO c VALUES (1, 1), (2, 9);",
        );
        let plan = db.file(
            "plan.json",
            &serde_json::json!({"name": "p", "undo": true, "steps": [{"sql": step}]}).to_string(),
        );
        let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
        assert_eq!(code, 0, "{err}");
        db.conn().execute_batch(app).unwrap();
        let (code, err) = undo_plan(&db, "p", &[]);
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains("the undo left 1 row in c whose"),
            "{step}: {err}"
        );
        assert!(!err.contains("the application deleted"), "{step}: {err}");
        assert!(err.contains("foreign_key_check"), "{step}: {err}");
    }
}

/// A table of nothing but its key (a set of ids): the rows a run added
/// go and the rows it deleted come back, in one statement each.
#[test]
fn a_table_of_only_its_key_is_taken_back() {
    let db = TempDb::with_sql(
        "CREATE TABLE ids(id INTEGER PRIMARY KEY);
         CREATE TABLE codes(code TEXT PRIMARY KEY) WITHOUT ROWID;
         INSERT INTO ids VALUES (1), (2);
         INSERT INTO codes VALUES ('a'), ('b');",
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","undo":true,"steps":[
            {"sql":"INSERT INTO ids VALUES (3), (4)"},
            {"sql":"DELETE FROM ids WHERE id = 1"},
            {"sql":"INSERT INTO codes VALUES ('c')"},
            {"sql":"DELETE FROM codes WHERE code = 'a'"}]}"#,
    );
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    let (code, err) = undo_plan(&db, "p", &[]);
    assert_eq!(code, 0, "{err}");
    let ids = "SELECT group_concat(id) FROM (SELECT id FROM ids ORDER BY id)";
    let codes = "SELECT group_concat(code) FROM (SELECT code FROM codes ORDER BY code)";
    let read = |sql| -> String { db.conn().query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        (read(ids), read(codes)),
        ("1,2".into(), "a,b".into()),
        "{err}"
    );
}

/// The row a stopped try kept (the application changed it at the key the
/// run moved it to) is put back by the `overwrite` the stop points at,
/// and no longer counted as kept. Its dry run, which must report what the
/// real one will, read the rows still kept once its transaction had
/// rolled back, so it counted that row among them (`conflicts_earlier`
/// 1) where the real overwrite then counted none. Recorded either way.
#[test]
fn a_dry_run_of_overwrite_counts_the_rows_kept_before_as_the_real_one_does() {
    let setup = "CREATE TABLE u(id INTEGER PRIMARY KEY, n INT);
                 INSERT INTO u VALUES (1, 1), (2, 2), (3, 3);";
    let steps =
        r#"{"sql":"UPDATE u SET id = id + 10 WHERE id = 2"},{"sql":"UPDATE u SET n = n + 1"}"#;
    for env in [&[][..], &[("BATCHSSE_UNDO_HOOK", "off")][..]] {
        let db = recorded_then_with(setup, steps, "UPDATE u SET n = 999 WHERE id = 12", env);
        let (code, err) = undo_plan(&db, "p", env);
        assert_eq!(code, 1, "{env:?}: {err}");
        assert!(err.contains("exist twice"), "{env:?}: {err}");
        let kept = db.query_i64("SELECT count(*) FROM batchsse_undo_conflict");
        assert_eq!(kept, 1, "{env:?}: the stopped try kept row 12: {err}");
        let mut counts = Vec::new();
        for dry in [true, false] {
            let mut extra = vec!["--on-conflict", "overwrite", "--progress", "json"];
            if dry {
                extra.push("--dry-run");
            }
            let (code, out, err) = run_with_env(&undo_of_plan(&db, "p", &extra), None, env);
            assert_eq!(code, 0, "{env:?} dry {dry}: {err}");
            let last = out.lines().last().unwrap_or_default();
            let fin: serde_json::Value = serde_json::from_str(last).expect("finished");
            counts.push(fin["data"]["conflicts_earlier"].clone());
        }
        assert_eq!(counts[0], counts[1], "{env:?}: the dry run foretells");
        assert_eq!(counts[1], serde_json::Value::Null, "{env:?}: none kept");
        assert_eq!(content(&db), content(&TempDb::with_sql(setup)), "{env:?}");
    }
}

/// A row the application deleted is kept as a conflict once, whichever
/// try of the undo meets it first. A skip try kept row 3 (gone) at the
/// run's later change of it, then stopped at a key's change in the part
/// holding the earlier one; the `overwrite` it points at, which does not
/// hold the rows kept before (it puts back those it can), met row 3 again
/// there, found it gone again and kept it a second time: two rows for it
/// in `batchsse_undo_conflict`, counted once in `conflicts` and again in
/// `conflicts_earlier`. (An overwrite killed between two parts did the
/// same.) Recorded either way, the row's earlier change taken back row by
/// row or in one statement.
#[test]
fn a_gone_row_an_earlier_try_kept_is_not_kept_again_by_overwrite() {
    let setup = "CREATE TABLE u(id INTEGER PRIMARY KEY, n INT);
                 INSERT INTO u VALUES (1, 1), (2, 2), (3, 3);";
    // The earlier change of row 3 in the part of the key's change (taken
    // back row by row), or in a chunk of its own (in one statement).
    let row_by_row = r#"{"sql":"UPDATE u SET id = id + 10 WHERE id = 2; UPDATE u SET n = n * 10 WHERE id = 3"},{"sql":"UPDATE u SET n = n + 1"}"#;
    let bulk = r#"{"sql":"UPDATE u SET n = n * 10 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"u"}},{"sql":"UPDATE u SET id = id + 10 WHERE id = 2"},{"sql":"UPDATE u SET n = n + 1"}"#;
    let app = "UPDATE u SET n = 999 WHERE id = 12; DELETE FROM u WHERE id = 3";
    let ways = [&[][..], &[("BATCHSSE_UNDO_HOOK", "off")][..]];
    for (steps, env) in [row_by_row, bulk]
        .into_iter()
        .flat_map(|s| ways.map(|w| (s, w)))
    {
        let db = recorded_then_with(setup, steps, app, env);
        let (data, out) = stopped_then_overwritten(&db, env);
        assert_eq!(
            (data["conflicts"].clone(), data["conflicts_earlier"].clone()),
            (serde_json::json!(0), serde_json::json!(1)),
            "{env:?}: row 3, kept by the first try: {out}"
        );
        let kept = db.query_i64("SELECT count(*) FROM batchsse_undo_conflict WHERE k = 3");
        assert_eq!(kept, 1, "{env:?}: row 3 kept once");
        let want = TempDb::with_sql(&format!("{setup} DELETE FROM u WHERE id = 3;"));
        assert_eq!(content(&db), content(&want), "{env:?}");
    }
}

/// Plan `p` on `db` taken back: stopped by a row that would exist twice,
/// then again with `--on-conflict overwrite`; its `finished` data, and
/// every line it printed.
fn stopped_then_overwritten(db: &TempDb, env: &[(&str, &str)]) -> (serde_json::Value, String) {
    let (code, err) = undo_plan(db, "p", env);
    assert_eq!(code, 1, "{env:?}: {err}");
    assert!(err.contains("exist twice"), "{env:?}: {err}");
    let extra = ["--on-conflict", "overwrite", "--progress", "json"];
    let (code, out, err) = run_with_env(&undo_of_plan(db, "p", &extra), None, env);
    assert_eq!(code, 0, "{env:?}: {err}");
    let fin: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).expect("finished");
    (fin["data"].clone(), out)
}

/// A row this try keeps is not counted among those kept before it. The
/// conflict table numbers its rows as SQLite does, the highest plus one:
/// an `overwrite` that put back the row an earlier try kept last (row 12,
/// changed by the application at the key the run moved it to) removed
/// that highest row, and the row it kept next (row 4, which the
/// application deleted) took its number, under the mark of the rows kept
/// before the try: `conflicts` 1 and `conflicts_earlier` 1 for one row.
/// Recorded either way.
#[test]
fn a_row_kept_after_an_earlier_one_was_put_back_counts_as_this_trys() {
    let setup = "CREATE TABLE u(id INTEGER PRIMARY KEY, n INT);
                 INSERT INTO u VALUES (1, 1), (2, 2), (3, 3), (4, 4);";
    let steps = r#"{"sql":"UPDATE u SET n = n * 10 WHERE id = 4"},{"sql":"UPDATE u SET id = id + 10 WHERE id = 2"},{"sql":"UPDATE u SET n = n + 1 WHERE id <> 4"}"#;
    let app = "UPDATE u SET n = 999 WHERE id = 12; DELETE FROM u WHERE id = 4";
    for env in [&[][..], &[("BATCHSSE_UNDO_HOOK", "off")][..]] {
        let db = recorded_then_with(setup, steps, app, env);
        let (data, out) = stopped_then_overwritten(&db, env);
        assert_eq!(
            (data["conflicts"].clone(), data["conflicts_earlier"].clone()),
            (serde_json::json!(1), serde_json::Value::Null),
            "{env:?}: row 4, kept by this try alone: {out}"
        );
        let kept = db.query_i64("SELECT count(*) FROM batchsse_undo_conflict");
        assert_eq!(kept, 1, "{env:?}");
        let want = TempDb::with_sql(&format!("{setup} DELETE FROM u WHERE id = 4;"));
        assert_eq!(content(&db), content(&want), "{env:?}");
    }
}

/// A dry run's one transaction that cannot begin (another process holds
/// the write lock past --busy-timeout) says who holds the lock and what
/// to do, as a run's steps do, not SQLite's bare "database is locked".
#[test]
fn a_dry_run_undo_locked_out_at_its_start_says_what_to_do() {
    let db = bumped();
    let before = db.bytes();
    let extra = words("--dry-run --busy-timeout 1000 --progress none");
    let mut p = gated_undo(path_str(&db.path), "bump", &extra);
    let app = db.conn();
    app.execute_batch("BEGIN IMMEDIATE").expect("take the lock");
    let mut s = Stream::open(p.addr(), "/events", &[]);
    let code = p.wait_for(Duration::from_secs(20)).code();
    app.execute_batch("ROLLBACK").expect("let the lock go");
    let err = p.stderr();
    assert_eq!(code, Some(1), "{err}");
    let said =
        "the dry run's transaction could not begin: database is locked by another connection";
    assert!(
        err.contains(said)
            && err.contains(
                "still after --busy-timeout 1000 ms; wait for it to finish or raise --busy-timeout"
            ),
        "{err}"
    );
    let finished = data(&s.until("finished"));
    assert_eq!(finished["status"], "failed", "{finished}");
    assert!(
        finished["error"].as_str().is_some_and(|e| e.contains(said)),
        "{finished}"
    );
    assert_eq!(db.bytes(), before);
}

/// An application's `VACUUM` between two parts of an undo numbers anew the
/// rowids of a table with neither an `INTEGER PRIMARY KEY` nor an index,
/// as one before the undo does (which the undo refuses as it begins). The
/// parts still to go find their rows by the old rowids, and every row of
/// the run's holds the same status, so their checks cannot tell: the undo
/// must stop at the next part (exit 1, that part rolled back) rather than
/// write each old status into the row after it, and the same command then
/// refuses as an undo after a `VACUUM` does.
#[test]
fn a_vacuum_between_two_parts_of_an_undo_stops_it() {
    const TOKEN: &str = "c0ntrol";
    let db = TempDb::with_sql(
        "CREATE TABLE s(name TEXT, status TEXT);
         INSERT INTO s WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
             SELECT 'n' || i, 'st' || i FROM n;",
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","undo":true,"steps":[{"sql":"UPDATE s SET status = 'archived' WHERE rowid BETWEEN :lo AND :hi","chunk":{"table":"s","size":10}}]}"#,
    );
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--batch-size", "10"],
    ));
    assert_eq!(code, 0, "{err}");
    // Rows below the rest, gone: a VACUUM moves every later row down.
    db.conn()
        .execute_batch("DELETE FROM s WHERE rowid <= 5")
        .unwrap();
    let mut args =
        words("undo --plan p --listen 127.0.0.1:0 --progress none --wait-for-clients 1 --sleep 50");
    args.extend_from_slice(&["--db", path_str(&db.path), "--control-token", TOKEN]);
    let mut p = Proc::start(&args);
    let base = format!("http://{}/", p.addr());
    let mut s = Stream::open(p.addr(), "/events", &[]);
    s.until("progress");
    let ctl = |what: &str| run(&["ctl", &base, what, "--control-token", TOKEN]);
    let (code, _, err) = ctl("pause");
    assert_eq!(code, 0, "{err}");
    s.until("control");
    let left = db.query_i64("SELECT count(*) FROM s WHERE status = 'archived'");
    assert!(left > 0, "parts left to take back");
    db.conn().execute_batch("VACUUM").unwrap();
    let (code, _, err) = ctl("resume");
    assert_eq!(code, 0, "{err}");
    let code = p.wait_for(Duration::from_secs(20)).code();
    let err = p.stderr();
    let wrong = db.query_i64(
        "SELECT count(*) FROM s WHERE status <> 'archived' AND status <> 'st' || substr(name, 2)",
    );
    assert_eq!(wrong, 0, "rows given another row's status: {err}");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the rowids of s were numbered anew"), "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM s WHERE status = 'archived'"),
        left,
        "the part under way rolled back: {err}"
    );
    let (code, err) = stopped_undo(&db, "p");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the rowids of s were numbered anew"), "{err}");
}

/// A step that reads `pragma_optimize` (the table-valued function of
/// `PRAGMA optimize`) runs the pragma, whose `ANALYZE` writes
/// `sqlite_stat1`: the check saw a read, so `--undo` recorded the run, and
/// its undo said the plan was fully taken back while the statistics
/// stayed. Recorded, it is refused before anything runs, as `ANALYZE` and
/// `PRAGMA optimize` are; with `"undo": false` it runs.
#[test]
fn a_step_reading_pragma_optimize_is_refused_under_undo() {
    let db = TempDb::counters(2000);
    db.conn()
        .execute_batch(
            "CREATE INDEX tc ON t(counter);
             CREATE VIEW opt AS SELECT * FROM pragma_optimize(0x10002);",
        )
        .unwrap();
    let before = sha256(&db.path);
    for read in [
        "SELECT count(*) FROM pragma_optimize(0x10002)",
        "SELECT count(*) FROM opt",
    ] {
        let steps =
            serde_json::json!([{"sql": "UPDATE t SET counter = 1 WHERE id < 10"}, {"sql": read}]);
        let plan = serde_json::json!({"name": "p", "steps": steps}).to_string();
        let plan = db.file("plan.json", &plan);
        let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve", "--undo"]));
        assert_eq!(code, 2, "{read}: {err}");
        assert!(
            err.contains("step 2") && err.contains("sqlite_stat1"),
            "{read}: {err}"
        );
        assert_eq!(sha256(&db.path), before, "{read}: nothing run: {err}");
    }
    let steps = serde_json::json!([{"sql": "UPDATE t SET counter = 1 WHERE id < 10"},
        {"sql": "SELECT count(*) FROM pragma_optimize(0x10002)", "undo": false}]);
    let plan = db.file(
        "plan.json",
        &serde_json::json!({"name": "p", "steps": steps}).to_string(),
    );
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve", "--undo"]));
    assert_eq!(code, 0, "{err}");
    let stats = "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'";
    assert_eq!(db.query_i64(stats), 1, "{err}");
}

/// A step that writes one of SQLite's own tables (an `AUTOINCREMENT`
/// table's counter in `sqlite_sequence`), itself or by a trigger, is
/// refused before anything runs: the record holds none of their rows, so
/// an undo said the plan was fully taken back while the counter stayed as
/// the step set it. With `"undo": false` it runs, and an undo stops at it.
#[test]
fn a_step_writing_sqlites_own_tables_is_refused_unless_it_opts_out() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v);
                 INSERT INTO t(v) VALUES (1), (2);
                 CREATE TABLE gone(id INTEGER PRIMARY KEY);
                 CREATE TRIGGER reset AFTER INSERT ON gone
                 BEGIN UPDATE sqlite_sequence SET seq = 0 WHERE name = 't'; END;";
    for write in [
        "UPDATE sqlite_sequence SET seq = 1000 WHERE name = 't'",
        "INSERT INTO gone VALUES (1)",
    ] {
        for env in [&[][..], &[("BATCHSSE_UNDO_HOOK", "off")][..]] {
            let db = TempDb::with_sql(setup);
            let before = sha256(&db.path);
            let plan = |opt_out: &str| {
                let steps =
                    format!(r#"[{{"sql":"UPDATE t SET v = v + 1"}},{{{opt_out}"sql":"{write}"}}]"#);
                db.file("plan.json", &format!(r#"{{"name":"p","steps":{steps}}}"#))
            };
            let recorded = plan("");
            let args = run_args(&db, path_str(&recorded), &["--no-serve", "--undo"]);
            let (code, _, err) = run_with_env(&args, None, env);
            assert_eq!(code, 2, "{write} {env:?}: {err}");
            let says = ["step 2", "sqlite_sequence", "\"undo\": false"];
            assert!(
                says.iter().all(|s| err.contains(s)),
                "{write} {env:?}: {err}"
            );
            assert_eq!(sha256(&db.path), before, "nothing run: {err}");
            // Opted out, it runs; the undo stops at it and says so.
            let opted = plan(r#""undo":false,"#);
            let args = run_args(&db, path_str(&opted), &["--no-serve", "--undo"]);
            let (code, _, err) = run_with_env(&args, None, env);
            assert_eq!(code, 0, "{write} {env:?}: {err}");
            let (code, _, err) = run_with_env(&undo_of_plan(&db, "p", &[]), None, env);
            assert_eq!(code, 0, "{write} {env:?}: {err}");
            assert!(err.contains("stops at step 2"), "{write} {env:?}: {err}");
            assert!(
                err.contains("is not fully taken back"),
                "{write} {env:?}: {err}"
            );
        }
    }
}

/// Such a table's undo leaves its primary key out of the write when no
/// row needs it back (rewriting a key column rewrites its index: the undo
/// took three times as long), and puts it back when the run changed it,
/// exactly as it was: a case the `NOCASE` key compares equal, and an
/// integer that became a real in a key of no type, which compare equal
/// too. Each way of recording, each with the key changed and not.
#[test]
fn a_primary_key_beside_the_rowid_goes_back_exactly_as_it_was() {
    let setup = "CREATE TABLE n(code TEXT PRIMARY KEY COLLATE NOCASE, v TEXT);
                 INSERT INTO n VALUES ('abc', '1'), ('Def', '2'), ('ghi', '3');
                 CREATE TABLE k(key PRIMARY KEY, v TEXT);
                 INSERT INTO k VALUES (1, 'a'), (2.5, 'b'), ('x', 'c');";
    let changed = r#"[{"sql":"UPDATE n SET code = upper(code), v = 'X' WHERE rowid BETWEEN :lo AND :hi","chunk":{"table":"n","size":2}},
                      {"sql":"UPDATE k SET key = key + 0.0, v = 'Y' WHERE typeof(key) = 'integer'"}]"#;
    let kept = r#"[{"sql":"UPDATE n SET v = 'X' WHERE rowid BETWEEN :lo AND :hi","chunk":{"table":"n","size":2}},
                   {"sql":"UPDATE k SET v = 'Y'"}]"#;
    for env in EVERY_WAY {
        for steps in [changed, kept] {
            let db = TempDb::with_sql(setup);
            let before = content(&db);
            let plan = db.file(
                "plan.json",
                &format!(r#"{{"name":"p","undo":true,"steps":{steps}}}"#),
            );
            let args = run_args(&db, path_str(&plan), &["--no-serve"]);
            let (code, _, err) = run_with_env(&args, None, env);
            assert_eq!(code, 0, "{env:?}: {err}");
            assert_ne!(content(&db), before, "{env:?}: the run changed the file");
            let (code, err) = undo_plan(&db, "p", env);
            assert_eq!(code, 0, "{env:?}: {err}");
            assert_eq!(content(&db), before, "{env:?} {steps}: {err}");
            let kinds =
                db.query_i64("SELECT count(*) FROM k WHERE key = 1 AND typeof(key) = 'integer'");
            assert_eq!(kinds, 1, "{env:?}: {err}");
        }
    }
}

/// A rowid table with a primary key that is not its rowid (`code TEXT
/// PRIMARY KEY`) has its rows found by rowid. The application deletes the
/// row with the highest rowid and adds another, which SQLite gives the
/// same rowid, holding in the column the run changed the value the run
/// wrote there. The undo wrote the deleted row's old value into the
/// application's new row and said the plan was fully taken back: the row
/// the run changed is gone, and the new one must stay as the application
/// wrote it. Each way of recording (the pre-update hook; without it, reads
/// around a chunk, or TEMP triggers for a plain step).
#[test]
fn a_row_added_at_the_rowid_of_a_deleted_one_keeps_its_values() {
    let setup = "CREATE TABLE t(code TEXT PRIMARY KEY NOT NULL, v TEXT);
         INSERT INTO t VALUES ('a', '1'), ('b', '2'), ('c', '3');";
    let chunked = r#"{"name":"x","steps":[{"sql":"UPDATE t SET v = 'X' WHERE rowid BETWEEN :lo AND :hi","chunk":{"table":"t","size":2}}]}"#;
    let plain = r#"{"name":"x","steps":[{"sql":"UPDATE t SET v = 'X'"}]}"#;
    let off = [("BATCHSSE_UNDO_HOOK", "off")];
    for env in [&[][..], &off[..]] {
        for plan in [chunked, plain] {
            let db = TempDb::with_sql(setup);
            let file = db.file("plan.json", plan);
            let args = run_args(&db, path_str(&file), &["--no-serve", "--undo"]);
            let (code, _, err) = run_with_env(&args, None, env);
            assert_eq!(code, 0, "{err}");
            db.conn()
                .execute_batch("DELETE FROM t WHERE code = 'c'; INSERT INTO t VALUES ('z', 'X');")
                .unwrap();
            assert_eq!(db.query_i64("SELECT rowid FROM t WHERE code = 'z'"), 3);
            let undo = undo_of_plan(&db, "x", &["--progress", "plain"]);
            let (code, _, err) = run_with_env(&undo, None, env);
            assert_eq!(code, 0, "{env:?} {plan}: {err}");
            let rows = db.query_text("SELECT group_concat(code || '=' || v, ' ') FROM t");
            assert_eq!(rows, "a=1 b=2 z=X", "{env:?} {plan}: {err}");
            assert!(err.contains("1 conflict"), "{env:?} {plan}: {err}");
            assert!(!err.contains("fully taken back"), "{env:?} {plan}: {err}");
        }
    }
}

/// The same table, where the run deleted the row with the highest rowid
/// and the application then added a row under another primary key, which
/// SQLite gives that rowid. The undo took the new row for the deleted one
/// come back: under `overwrite` it deleted the application's row and put
/// the run's back, exit 0; under `skip` it said "the row the run deleted
/// exists again". The application's row stays, and the deleted one is
/// kept as a conflict that stays deleted (soak42).
#[test]
fn a_row_added_at_the_rowid_of_a_row_the_run_deleted_is_not_taken_for_it() {
    let setup = "CREATE TABLE t(code TEXT PRIMARY KEY NOT NULL, n INT);
         INSERT INTO t VALUES ('a', 1), ('b', 3);";
    let (step, app) = (
        r#"{"sql":"DELETE FROM t WHERE n = 3"}"#,
        "INSERT INTO t VALUES ('app', 5)",
    );
    let off = [("BATCHSSE_UNDO_HOOK", "off")];
    for env in [&[][..], &off[..]] {
        for how in ["skip", "overwrite"] {
            let db = recorded_then_with(setup, step, app, env);
            assert_eq!(db.query_i64("SELECT rowid FROM t WHERE code = 'app'"), 2);
            let undo = undo_of_plan(&db, "p", &["--progress", "plain", "--on-conflict", how]);
            let (code, _, err) = run_with_env(&undo, None, env);
            assert_eq!(code, 0, "{env:?} {how}: {err}");
            let rows = db.query_text("SELECT group_concat(code || '=' || n, ' ') FROM t");
            assert_eq!(rows, "a=1 app=5", "{env:?} {how}: {err}");
            assert!(err.contains("1 conflict"), "{env:?} {how}: {err}");
            assert!(!err.contains("exists again"), "{env:?} {how}: {err}");
            let why = db.query_text("SELECT why FROM batchsse_undo_conflict");
            assert!(
                why.contains("stays deleted: its rowid holds a row added since"),
                "{why}"
            );
        }
    }
}
