//! A recorded run whose chunked step stopped after chunks that changed no
//! row: its resume and its undo take the step for recorded, as it was.

use std::path::{Path, PathBuf};

use crate::util::*;

/// Forty rows; the step renames rows past 12, so its first chunk of five
/// changes nothing, and a row already holding the name the step gives
/// row 14 stops it in the chunk after.
const SETUP: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, u TEXT UNIQUE);
    WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 40)
    INSERT INTO t SELECT i, 'u' || i FROM s;
    UPDATE t SET u = 'x14' WHERE id = 40;";

const PLAN: &str = r#"{"name": "rename", "steps": [
    {"sql": "UPDATE t SET u = 'x' || id WHERE id BETWEEN :lo AND :hi AND id > 12",
     "chunk": {"table": "t", "size": 5}}]}"#;

/// The run, stopped in its second chunk with its first committed; the
/// plan's path.
fn stopped(env: &[(&str, &str)]) -> (TempDb, PathBuf) {
    let db = TempDb::with_sql(SETUP);
    let plan = db.file("plan.json", PLAN);
    let (code, _, err) = run_with_env(&args(&db, &plan), None, env);
    assert_eq!(code, 1, "{env:?}: {err}");
    assert!(err.contains("UNIQUE constraint failed"), "{env:?}: {err}");
    (db, plan)
}

/// The run's command, chunks of five whatever the machine's speed.
fn args<'a>(db: &'a TempDb, plan: &'a Path) -> Vec<&'a str> {
    let extra = ["--no-serve", "--undo", "--batch-size", "5"];
    run_args(db, path_str(plan), &extra)
}

/// The run said to run the same command again once the cause is fixed;
/// that command was refused (exit 2), saying the step had been applied in
/// part by a run that did not record it.
#[test]
fn a_recorded_step_stopped_after_chunks_that_changed_nothing_resumes_recorded() {
    for env in [&[][..], &[("BATCHSSE_UNDO_HOOK", "off")][..]] {
        let (db, plan) = stopped(env);
        db.conn()
            .execute_batch("UPDATE t SET u = 'u40' WHERE id = 40")
            .unwrap();
        let (code, _, err) = run_with_env(&args(&db, &plan), None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
        assert_eq!(
            db.query_i64("SELECT count(*) FROM t WHERE u = 'x' || id"),
            28,
            "{env:?}"
        );
    }
}

/// The undo of such a run said the step had been applied by a run that
/// was not recorded and left its checkpoint, so the plan could not run
/// again with `--undo` (refused as above) until `checkpoint clear`.
#[test]
fn the_undo_of_a_run_stopped_after_chunks_that_changed_nothing_clears_its_checkpoint() {
    for env in [&[][..], &[("BATCHSSE_UNDO_HOOK", "off")][..]] {
        let (db, plan) = stopped(env);
        let (code, _, err) = run_with_env(&undo_of_plan(&db, "rename", &[]), None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
        assert!(err.contains("fully taken back"), "{env:?}: {err}");
        assert!(!err.contains("not recorded"), "{env:?}: {err}");
        let path = path_str(&db.path);
        let (_, out, _) = run(&["checkpoint", "list", "--db", path]);
        assert!(out.starts_with("no checkpoint recorded"), "{env:?}: {out}");
        db.conn()
            .execute_batch("UPDATE t SET u = 'u40' WHERE id = 40")
            .unwrap();
        let (code, _, err) = run_with_env(&args(&db, &plan), None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
    }
}
