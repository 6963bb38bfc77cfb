//! The undo tables come and go with the records they hold: a run that
//! recorded nothing leaves none behind, and a run recording while its
//! records are cleared (by hand, or by `undo clear` where it cannot see
//! the run) goes on.

use std::time::{Duration, Instant};

use crate::util::*;

fn has_undo_table(db: &TempDb) -> bool {
    db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_undo'") > 0
}

/// A run of `plan` slow enough to act on while it goes: chunks of 10
/// rows, a second apart.
fn slow_run(db: &TempDb, plan: &std::path::Path, extra: &[&str]) -> Proc {
    let mut args = vec!["--no-serve", "--batch-size", "10", "--sleep", "1000"];
    args.extend_from_slice(extra);
    Proc::start(&run_args(db, path_str(plan), &args))
}

/// [`slow_run`] with `--undo`, once its first part is recorded.
fn recording(db: &TempDb, plan: &std::path::Path) -> Proc {
    let p = slow_run(db, plan, &["--undo"]);
    wait_until(&p, || {
        has_undo_table(db) && db.query_i64("SELECT count(*) FROM batchsse_undo") > 0
    });
    p
}

/// Polls until `ready` holds, failing the test after `PATIENCE`.
fn wait_until(p: &Proc, ready: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !ready() {
        assert!(t0.elapsed() < PATIENCE, "{}", p.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A recorded run that fails at its first chunk has nothing to take
/// back: no undo table stays behind.
#[test]
fn a_recorded_run_that_committed_nothing_leaves_no_undo_tables() {
    let db = TempDb::counters(40);
    let plan = db.file(
        "plan.json",
        r#"{"name":"bad","steps":[{"sql":"UPDATE t SET counter = NULL WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":10}}]}"#,
    );
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve", "--undo"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("NOT NULL"), "{err}");
    assert!(!has_undo_table(&db), "{err}");
}

/// `batchsse undo` of a run still recording is refused, the file left as
/// the run has it: the run would go on changing rows after the undo took
/// back what it had so far. A dry run, which writes nothing, may look;
/// once the run has ended, the undo takes all of it back. (Two undos at
/// once share the parts: see `undo_hostile`.)
#[test]
fn an_undo_beside_a_live_run_is_refused() {
    let db = TempDb::counters(40);
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let file = path_str(&db.path);
    let mut p = recording(&db, &plan);
    let undo = ["undo", "--db", file, "--plan", "bump", "--no-serve"];
    let (code, _, err) = run(&undo);
    assert_eq!(code, 2, "refused under the live run: {err}");
    assert!(err.contains("a run still going"), "{err}");
    assert!(err.contains("Nothing was taken back"), "{err}");
    assert!(err.contains("then undo"), "{err}");
    let (code, _, err) = run(&[&undo[..], &["--dry-run"]].concat());
    assert_eq!(code, 0, "a dry run may look: {err}");
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    assert_eq!(
        db.query_i64("SELECT sum(counter) FROM t"),
        40,
        "the run went on whole"
    );
    let (code, _, err) = run(&undo);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 0);
}

/// A run of a plan while an undo of it is under way is refused, the file
/// left alone: between two of the undo's steps it would apply again the
/// one just taken back, while the undo goes on to take back the steps
/// before it. A dry run may look, a run of another plan may go, and once
/// the undo has ended the plan runs again.
#[test]
fn a_run_of_a_plan_beside_its_live_undo_is_refused() {
    let db = TempDb::counters(40);
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let file = path_str(&db.path);
    let again = run_args(&db, path_str(&plan), &["--no-serve", "--undo"]);
    let (code, _, err) = run(&again);
    assert_eq!(code, 0, "{err}");
    db.conn()
        .execute_batch("CREATE TABLE side(x)")
        .expect("side table");
    let other = db.file(
        "other.json",
        r#"{"name":"other","steps":[{"sql":"INSERT INTO side VALUES (1)"}]}"#,
    );
    // Held before its first part until a client comes.
    let mut u = Proc::start(&words(&format!(
        "undo --db {file} --plan bump --listen 127.0.0.1:0 --progress none --wait-for-clients 1"
    )));
    let before = sha256(&db.path);
    let (code, _, err) = run(&again);
    assert_eq!(code, 2, "refused beside the live undo: {err}");
    assert!(
        err.contains("an undo of plan \"bump\" still going"),
        "{err}"
    );
    assert!(err.contains("Nothing ran"), "{err}");
    assert!(err.contains("then run the plan"), "{err}");
    assert_eq!(sha256(&db.path), before, "the file as it was");
    let (code, _, err) = run(&[&again[..], &["--dry-run"]].concat());
    assert_eq!(code, 0, "a dry run may look: {err}");
    let (code, _, err) = run(&run_args(&db, path_str(&other), &["--no-serve"]));
    assert_eq!(code, 0, "another plan may run: {err}");
    let _s = Stream::open(u.addr(), "/events", &[]).rest();
    assert_eq!(u.wait_for(PATIENCE).code(), Some(0), "{}", u.stderr());
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 0);
    let (code, _, err) = run(&again);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 40);
}

/// `undo clear` while a run records is refused; the tables dropped under
/// it by hand (or where the clear cannot see the run): the run goes on recording (it does not fail on a missing table), and its
/// record, now without its first parts, is refused as incomplete instead
/// of being taken back in part.
#[test]
fn clearing_every_record_during_a_recorded_run_does_not_break_the_run() {
    let db = TempDb::counters(40);
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let file = path_str(&db.path);
    let mut p = recording(&db, &plan);
    let (code, _, err) = run(&["undo", "clear", "--db", file, "--all"]);
    assert_eq!(code, 2, "refused under the live run: {err}");
    assert!(err.contains("a run or an undo still going"), "{err}");
    clear_undo_by_hand(&db);
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    // The run does not offer an undo that would be refused.
    let said = p.stderr();
    assert!(!said.contains("to take this run back"), "{said}");
    assert!(
        said.contains(
            "this run cannot be taken back: its undo record is incomplete (step 1: its first"
        ),
        "{said}"
    );
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 40);
    let before = sha256(&db.path);
    let (code, _, err) = run(&["undo", "--db", file, "--plan", "bump", "--no-serve"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is damaged"), "{err}");
    assert!(
        err.contains(&format!("`batchsse undo clear --db {file} --run ")),
        "a command that works: {err}"
    );
    assert!(
        err.contains("part(s) are gone") && err.contains("while the run was still recording"),
        "what most likely happened: {err}"
    );
    assert_eq!(sha256(&db.path), before, "nothing taken back");
}

/// The same between two steps: the first step's record is gone whole,
/// the second's is complete. An undo of the run must not take back the
/// second step alone and call the run taken back; the run must not offer
/// one either.
#[test]
fn clearing_the_records_between_two_steps_is_not_a_run_taken_back() {
    let (db, plan, hold) = held_after_first_step();
    let file = path_str(&db.path);
    // Held after the first step (slow enough for the query to be asked
    // again before the second) until the test says go.
    let mut p = Proc::start(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--undo", "--throttle-query", hold],
    ));
    wait_until(&p, || p.stderr().contains("throttled (throttle-query)"));
    clear_undo_by_hand(&db);
    db.conn()
        .execute_batch("INSERT INTO go VALUES (1)")
        .unwrap();
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 33);
    let said = p.stderr();
    assert!(!said.contains("to take this run back"), "{said}");
    assert!(
        said.contains("this run cannot be taken back: its undo record is incomplete (step 1"),
        "{said}"
    );
    let before = sha256(&db.path);
    let (code, _, err) = run(&["undo", "--db", file, "--plan", "two", "--no-serve"]);
    assert_eq!(code, 2, "not taken back in part: {err}");
    assert!(err.contains("is damaged"), "{err}");
    assert!(err.contains("while the run was still recording"), "{err}");
    assert_eq!(sha256(&db.path), before, "nothing taken back");
}

/// `checkpoint clear` while a run of the file is going is refused: the run
/// would fail at its next chunk with its checkpoint gone, and the plan run
/// again as told would bump the rows it had bumped a second time.
#[test]
fn checkpoint_clear_under_a_live_run_is_refused() {
    let db = TempDb::counters(40);
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let file = path_str(&db.path);
    let mut p = slow_run(&db, &plan, &["--undo"]);
    wait_until(&p, || {
        db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_checkpoint'") > 0
    });
    let before = db.query_i64("SELECT count(*) FROM batchsse_checkpoint");
    let (code, _, err) = run(&["checkpoint", "clear", "--db", file, "--all"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a run or an undo still going"), "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM batchsse_checkpoint"),
        before
    );
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 40);
    let (code, _, err) = run(&["checkpoint", "clear", "--db", file, "--all"]);
    assert_eq!(code, 0, "once the run ended: {err}");
    // A run that has finished and lingers for late viewers is no run
    // going on.
    let mut p = serving(&db, path_str(&plan), &["--linger", "30"]);
    Stream::open(p.addr(), "/events", &[]).until("finished");
    // `finished` goes out just before the run lets go of its connection.
    let t0 = Instant::now();
    let cleared = loop {
        let (code, _, err) = run(&["checkpoint", "clear", "--db", file, "--all"]);
        if code == 0 || t0.elapsed() > Duration::from_secs(10) {
            break (code, err);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(cleared.0, 0, "while the run lingers: {}", cleared.1);
    p.signal("TERM");
    p.wait();
}

/// `undo clear --run` while an undo of that run is going is refused: the
/// undo would take a part gone for one another undo took, and say
/// `finished ok` with the rest of the run still applied.
#[test]
fn undo_clear_under_a_live_undo_is_refused() {
    let db = bumped();
    let file = path_str(&db.path);
    // Another run's record keeps the tables when this one's is cleared.
    db.conn()
        .execute_batch("CREATE TABLE u(id INTEGER PRIMARY KEY, v INT); INSERT INTO u VALUES (1, 0)")
        .unwrap();
    let other = db.file(
        "other.json",
        r#"{"name":"other","steps":[{"sql":"UPDATE u SET v = 5"}]}"#,
    );
    let (code, _, err) = run(&run_args(&db, path_str(&other), &["--no-serve", "--undo"]));
    assert_eq!(code, 0, "{err}");
    let id: String = db
        .conn()
        .query_row(
            "SELECT run FROM batchsse_undo WHERE plan = 'bump' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut p = Proc::start(&[
        "undo",
        "--db",
        file,
        "--run",
        &id,
        "--no-serve",
        "--sleep",
        "1500",
    ]);
    wait_until(&p, || db.query_i64("SELECT sum(counter) FROM t") < 40);
    let (code, _, err) = run(&["undo", "clear", "--db", file, "--run", &id]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a run or an undo still going"), "{err}");
    assert!(err.contains("Nothing was removed"), "{err}");
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    assert_eq!(
        db.query_i64("SELECT sum(counter) FROM t"),
        0,
        "{}",
        p.stderr()
    );
}

/// Where the clear cannot see the run (another system, or the table
/// dropped by hand), the run that fails for it must not tell the user to
/// run the same command again to go on: that would apply its chunks twice.
#[test]
fn a_run_whose_checkpoint_vanished_says_a_new_run_starts_over() {
    let db = TempDb::counters(40);
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let mut p = slow_run(&db, &plan, &["--progress", "plain"]);
    wait_until(&p, || {
        db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_checkpoint'") > 0
    });
    db.conn()
        .execute_batch("DROP TABLE batchsse_checkpoint")
        .unwrap();
    assert_eq!(p.wait().code(), Some(1), "{}", p.stderr());
    let said = p.stderr();
    assert!(said.contains("was removed while this run ran"), "{said}");
    assert!(
        !said.contains("run the same command again to go on"),
        "{said}"
    );

    // Its rows deleted, the table kept for another plan's: the chunk that
    // finds them gone says so, not that another run is applying the plan.
    let db = TempDb::counters(40);
    let other = db.file("other.json", &counter_plan("other", 40));
    let (code, _, err) = run(&run_args(&db, path_str(&other), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let mut p = slow_run(&db, &plan, &["--progress", "plain"]);
    wait_until(&p, || {
        db.query_i64("SELECT count(*) FROM batchsse_checkpoint WHERE plan = 'bump'") > 0
    });
    db.conn()
        .execute_batch("DELETE FROM batchsse_checkpoint WHERE plan = 'bump'")
        .unwrap();
    assert_eq!(p.wait().code(), Some(1), "{}", p.stderr());
    let said = p.stderr();
    assert!(
        said.contains("so this run stopped rather than go on unrecorded"),
        "{said}"
    );
    assert!(!said.contains("another batchsse run is applying"), "{said}");
}

/// The record dropped while an undo rests between parts (by hand, or by
/// `undo clear` where it cannot see the undo) removes what it
/// had left to take back: it stops saying so, not that one of the user's
/// tables was renamed, and what it took back stays taken back.
#[test]
fn clearing_the_record_during_an_undo_stops_it_with_what_happened() {
    let db = bumped();
    let file = path_str(&db.path);
    let mut p = Proc::start(&[
        "undo",
        "--db",
        file,
        "--plan",
        "bump",
        "--no-serve",
        "--sleep",
        "1500",
    ]);
    wait_until(&p, || {
        db.query_i64("SELECT count(*) FROM batchsse_undo WHERE chunk >= 0") < 4
    });
    clear_undo_by_hand(&db);
    assert_eq!(p.wait().code(), Some(1), "{}", p.stderr());
    let said = p.stderr();
    assert!(
        said.contains("the undo record was removed while the undo ran"),
        "{said}"
    );
    assert!(!said.contains("its old name back"), "{said}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 30, "{said}");
}

/// A run that recorded nothing drops the empty undo tables as it ends,
/// but never with a record another process wrote after it looked: the
/// look and the drop are one transaction.
#[test]
fn a_run_ending_never_drops_a_record_written_while_it_looked() {
    let db = TempDb::counters(40);
    db.conn()
        .execute_batch("PRAGMA journal_mode = WAL")
        .unwrap();
    let done = db.file("done.json", &counter_plan("done", 10));
    let (code, _, err) = run(&run_args(&db, path_str(&done), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    // Empty undo tables, as a recorded run leaves them (an undo that
    // takes the last record back drops them): made from a recorded file's.
    let recorded = bumped();
    let made: Vec<String> = recorded
        .conn()
        .prepare(
            "SELECT sql FROM sqlite_schema WHERE name LIKE 'batchsse_undo%' AND sql IS NOT NULL",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    db.conn().execute_batch(&made.join(";\n")).unwrap();
    assert_eq!(db.query_i64("SELECT count(*) FROM batchsse_undo"), 0);
    // A recorded run of a plan already applied records nothing; it takes
    // the write lock once as it opens, then waits for a client.
    let mut p = Proc::start(&run_args(
        &db,
        path_str(&done),
        &[
            "--listen",
            "127.0.0.1:0",
            "--wait-for-clients",
            "1",
            "--undo",
            "--busy-timeout",
            "60000",
        ],
    ));
    let addr = p.addr();
    // Meanwhile another process writes a record, not committed yet, so the
    // run finds the tables empty at its end.
    let other = db.conn();
    other
        .execute_batch(
            "BEGIN IMMEDIATE;
             INSERT INTO batchsse_undo (run, plan, step, name, chunk, rows, bytes)
             VALUES ('other', 'other', 0, 'step', -2, 0, 0);",
        )
        .unwrap();
    let _client = Stream::open(addr, "/events", &[]);
    // Time for it to look, and to wait for the lock.
    std::thread::sleep(Duration::from_millis(1000));
    other.execute_batch("COMMIT").unwrap();
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    assert!(has_undo_table(&db), "{}", p.stderr());
    assert_eq!(
        db.query_i64("SELECT count(*) FROM batchsse_undo WHERE run = 'other'"),
        1
    );
}

/// The look for a live run compared paths: through another name of the
/// same file (a hard link here; a container's mount of it alike), `undo
/// clear` and `checkpoint clear` removed the record and the checkpoint of
/// a run still going, which then applied its plan a second time when run
/// again. The file is the same one by its device and inode: refused.
#[test]
fn clearing_through_another_name_of_the_file_is_refused_under_a_live_run() {
    let db = TempDb::counters(40);
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let alias = db.dir.path().join("alias.sqlite");
    std::fs::hard_link(&db.path, &alias).expect("hard link");
    let mut p = recording(&db, &plan);
    for clear in [
        &["undo", "clear", "--db", path_str(&alias), "--all"][..],
        &["checkpoint", "clear", "--db", path_str(&alias), "--all"][..],
    ] {
        let (code, _, err) = run(clear);
        assert_eq!(code, 2, "{clear:?}: refused under the live run: {err}");
        assert!(err.contains("a run or an undo still going"), "{err}");
    }
    let left =
        "SELECT (SELECT count(*) FROM batchsse_undo) * (SELECT count(*) FROM batchsse_checkpoint)";
    assert!(db.query_i64(left) > 0, "nothing removed");
    p.signal("INT");
    p.wait_for(PATIENCE);
}

/// A migration that copies a table into a new one (the usual SQLite way to
/// change a column) while a run recording it sleeps between two chunks:
/// the parts recorded before it find their rows by rowids the copy
/// numbered anew, those after it by the new ones. The undo takes the
/// newer parts back and stops at the first older one (exit 1), rather
/// than writing each old status into another row.
#[test]
fn an_undo_stops_at_the_parts_recorded_before_a_migration_copied_their_table() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(code TEXT PRIMARY KEY, status TEXT);
         INSERT INTO t WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 40)
           SELECT printf('k%02d', i), printf('old-k%02d', i) FROM s;",
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"mid","steps":[{"sql":"UPDATE t SET status = 'done' WHERE code BETWEEN :lo AND :hi","chunk":{"table":"t","key":"code","size":10}}]}"#,
    );
    let mut p = recording(&db, &plan);
    let c = db.conn();
    c.busy_timeout(Duration::from_secs(20)).unwrap();
    c.execute_batch(
        "BEGIN IMMEDIATE; DELETE FROM t WHERE code = 'k01';
         CREATE TABLE new__t(code TEXT PRIMARY KEY, status TEXT NOT NULL);
         INSERT INTO new__t(code, status) SELECT code, status FROM t;
         DROP TABLE t; ALTER TABLE new__t RENAME TO t; COMMIT;",
    )
    .unwrap();
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    let (code, _, err) = run(&undo_of_plan(&db, "mid", &["--progress", "plain"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("table t was made anew since run"), "{err}");
    let wrong = db.query_i64("SELECT count(*) FROM t WHERE status NOT IN ('done', 'old-' || code)");
    assert_eq!(wrong, 0, "a row got another's status: {err}");
    let back = db.query_i64("SELECT count(*) FROM t WHERE status = 'old-' || code");
    assert!(
        back >= 10,
        "the parts after the migration went back: {back}: {err}"
    );
}
