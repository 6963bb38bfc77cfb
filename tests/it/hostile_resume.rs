//! Runs that meet an earlier run's checkpoint of the same plan: none may
//! apply again what that run applied without saying so.

use std::path::{Path, PathBuf};

use crate::util::*;

/// The counters' plan "bump" (chunks of 10), its run stopped part-way:
/// a trigger of the test's, dropped after, fails the chunk holding id 50,
/// so 40 rows are committed and checkpointed.
fn stopped_part_way(db: &TempDb) -> PathBuf {
    db.conn()
        .execute_batch(
            "CREATE TRIGGER stop BEFORE UPDATE ON t WHEN old.id = 50
             BEGIN SELECT RAISE(ABORT, 'stopped for the test'); END;",
        )
        .unwrap();
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    assert_eq!(run(&plan_args(db, &plan, "")).0, 1);
    db.conn().execute_batch("DROP TRIGGER stop").unwrap();
    plan
}

/// A run of `plan` on `db` in chunks of 10, plain progress, and `extra`.
fn plan_args<'a>(db: &'a TempDb, plan: &'a Path, extra: &'a str) -> Vec<&'a str> {
    let mut a = run_args(
        db,
        path_str(plan),
        &words("--no-serve --progress plain --batch-size 10"),
    );
    a.extend(words(extra));
    a
}

#[test]
fn a_run_without_a_checkpoint_says_it_ignores_the_plan_s_earlier_one() {
    // A run stopped part-way, then the same plan with --no-checkpoint: it
    // applies the first chunks again, and leaves the old checkpoint for a
    // later run to go on from, which would apply the rest again too.
    let db = TempDb::counters(100);
    let plan = stopped_part_way(&db);
    let args = |extra| plan_args(&db, &plan, extra);
    let (code, _, err) = run(&args("--no-checkpoint"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: plan \"bump\" has a checkpoint in this file")
            && err.contains("--no-checkpoint ignores it")
            && err.contains("batchsse checkpoint clear --db")
            && err.contains("--plan bump"),
        "{err}"
    );
    // A plan with no checkpoint here says nothing of one.
    let other = db.file("other.json", &counter_plan("other", 10));
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&other),
        &words("--no-serve --progress plain --no-checkpoint"),
    ));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("checkpoint"), "{err}");
}

#[test]
fn a_dry_run_of_a_stopped_plan_says_which_of_its_rows_an_earlier_run_changed() {
    // The resumed step counts the rows the earlier run committed, as the
    // real resume does; the dry run must not pass them off as rows it
    // would change.
    let db = TempDb::counters(100);
    let plan = stopped_part_way(&db);
    let args = |extra| plan_args(&db, &plan, extra);
    let (code, _, err) = run(&args("--dry-run"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "dry run finished: 100 rows would change, 40 of them already changed by an earlier run"
        ),
        "{err}"
    );
}
