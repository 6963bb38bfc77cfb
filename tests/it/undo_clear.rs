//! `batchsse undo clear` never leaves a plan whose remaining record an
//! undo would take for the whole of what the plan applied: the undo would
//! clear the checkpoint and say "fully taken back" while the cleared run's
//! change stays, and the plan's next run would apply it a second time.

use crate::util::*;

/// Plan `res`: a chunked `a = a + 1000` over `t`'s 200 rows, recorded
/// (run in chunks of 10 rows: [`plan_args`]).
const RES: &str = r#"{"name":"res","undo":true,"steps":[{"name":"bump",
    "sql":"UPDATE t SET a = a + 1000 WHERE id BETWEEN :lo AND :hi",
    "chunk":{"table":"t","key":"id"}}]}"#;

fn plan_args<'a>(db: &'a TempDb, plan: &'a str) -> Vec<&'a str> {
    run_args(
        db,
        plan,
        &["--no-serve", "--progress", "plain", "--batch-size", "10"],
    )
}

/// The recorded runs, oldest first.
fn recorded(db: &TempDb) -> Vec<String> {
    let (code, out, err) = run(&["undo", "list", "--db", path_str(&db.path), "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_str().unwrap().to_owned())
        .collect()
}

/// `t` of 200 rows after plan `res` stopped at row 81 (run R1: 80 rows,
/// as a run killed part-way leaves it, made deterministic by a trigger
/// that fails the ninth chunk) and was resumed (run R2: the other 120).
/// Returns the plan's path and [R1, R2].
fn resumed() -> (TempDb, std::path::PathBuf, Vec<String>) {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER NOT NULL DEFAULT 0);
         INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 200) SELECT i FROM s;
         CREATE TRIGGER stop BEFORE UPDATE ON t WHEN NEW.id = 81 BEGIN SELECT RAISE(ABORT, 'stop'); END;",
    );
    let plan = db.file("res.json", RES);
    let (code, _, err) = run(&plan_args(&db, path_str(&plan)));
    assert_eq!(code, 1, "stopped part-way: {err}");
    db.conn().execute_batch("DROP TRIGGER stop").unwrap();
    assert_eq!(at(&db, 1000), 80, "{err}");
    let (code, _, err) = run(&plan_args(&db, path_str(&plan)));
    assert_eq!(code, 0, "resumed: {err}");
    assert_eq!(at(&db, 1000), 200, "{err}");
    let runs = recorded(&db);
    assert_eq!(runs.len(), 2, "{runs:?}");
    (db, plan, runs)
}

/// How many rows of `t` hold `a`.
fn at(db: &TempDb, a: i64) -> i64 {
    db.query_i64(&format!("SELECT count(*) FROM t WHERE a = {a}"))
}

/// The reproduction: a run killed part-way (R1) and its resume (R2) share
/// the step. `undo clear --run R1` removed R1 alone; `undo --plan` then
/// took back R2's 120 rows, said the plan was fully taken back and
/// cleared its checkpoint, and the plan's next run took R1's 80 rows to
/// 2000. Now either run alone is refused, nothing removed; `--plan`
/// removes both, and the plan stays applied: the undo has nothing to take
/// back, and a run skips it.
#[test]
fn clearing_one_of_a_run_and_its_resume_is_refused_and_plan_clears_both() {
    let (db, plan, runs) = resumed();
    let dbp = path_str(&db.path);
    let before = db.bytes();
    for (run_id, other) in [(&runs[0], &runs[1]), (&runs[1], &runs[0])] {
        let (code, out, err) = run(&["undo", "clear", "--db", dbp, "--run", run_id]);
        assert_eq!(code, 2, "{out}{err}");
        assert!(
            err.contains(&format!(
                "cannot clear the undo record of run {run_id} (plan \"res\") alone: it shares step 1 with run {other}, whose record stays"
            )) && err.contains("Nothing was removed")
                && err.contains(&format!("(`batchsse undo --db {dbp} --plan res`)"))
                && err.contains(&format!("(`batchsse undo clear --db {dbp} --plan res`: the plan then stays applied and checkpointed")),
            "{err}"
        );
        assert_eq!(db.bytes(), before, "nothing removed");
    }

    let (code, out, err) = run(&["undo", "clear", "--db", dbp, "--plan", "res"]);
    assert_eq!(code, 0, "{err}");
    for r in &runs {
        assert!(
            out.contains(&format!(
                "removed the undo record of run {r} (plan \"res\", "
            )),
            "{out}"
        );
    }
    assert!(
        out.contains("plan \"res\" stays applied and checkpointed, and can no longer be taken back: its next run skips what it applied")
            && out.contains("dropped the undo tables"),
        "{out}"
    );
    let (code, _, err) = run(&["undo", "--db", dbp, "--plan", "res", "--no-serve"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no undo record of plan \"res\""), "{err}");
    let (code, _, err) = run(&plan_args(&db, path_str(&plan)));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("skipped (already applied)"), "{err}");
    assert_eq!(at(&db, 1000), 200, "applied once, not twice: {err}");
}

/// Two `--force` runs of a plan both recorded its one step: clearing the
/// first left the second to pass for all of it, and the undo said "fully
/// taken back" over the first run's change.
#[test]
fn clearing_the_first_of_two_forced_runs_is_refused() {
    let db = TempDb::counters(40);
    let plan = db.file("plan.json", &counter_plan("twice", 10));
    let dbp = path_str(&db.path);
    for _ in 0..2 {
        let args = run_args(&db, path_str(&plan), &["--no-serve", "--undo", "--force"]);
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{err}");
    }
    let runs = recorded(&db);
    let before = db.bytes();
    let (code, _, err) = run(&["undo", "clear", "--db", dbp, "--run", &runs[0]]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "it shares step 1 with run {}, whose record stays",
            runs[1]
        )),
        "{err}"
    );
    assert_eq!(db.bytes(), before, "nothing removed");
    // Taken back together, newest first, both runs' changes go.
    let (code, _, err) = run(&undo_of_plan(&db, "twice", &[]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("plan \"twice\" is fully taken back"), "{err}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 0, "{err}");
}

/// An undo of the newer run only leaves the step taken back in part
/// ("undoing"): the older run's record is what the plan's undo still has
/// to take back. Clearing it left the plan refused, pointing at an undo
/// that found no record, and `checkpoint clear`, the only way out, applied
/// the older run's part again. Now `--run`, `--plan` and `--all` are
/// refused, nothing removed, `--older-than` keeps it, and the undo
/// finishes.
#[test]
fn a_record_an_undo_stopped_in_stays_until_the_undo_finishes() {
    let (db, plan, runs) = resumed();
    let dbp = path_str(&db.path);
    let (code, _, err) = run(&["undo", "--db", dbp, "--run", &runs[1], "--no-serve"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("is not fully taken back"), "{err}");
    assert_eq!((at(&db, 1000), at(&db, 0)), (80, 120), "{err}");
    let before = db.bytes();
    let finish = format!("Finish the undo with `batchsse undo --db {dbp} --plan res`");
    for which in [&["--run", &runs[0]][..], &["--plan", "res"], &["--all"]] {
        let args = [&["undo", "clear", "--db", dbp][..], which].concat();
        let (code, out, err) = run(&args);
        assert_eq!(code, 2, "{which:?}: {out}{err}");
        assert!(
            err.contains("an undo of plan \"res\" stopped part-way")
                && err.contains("leaving step 1 taken back only in part")
                && err.contains(&format!("the plan's record (run {})", runs[0]))
                && err.contains("Nothing was removed")
                && err.contains(&finish)
                && err.contains(&format!(
                    "`batchsse checkpoint clear --db {dbp} --plan res` gives up on both"
                )),
            "{which:?}: {err}"
        );
        assert_eq!(db.bytes(), before, "{which:?}: nothing removed");
    }
    let (code, out, err) = run(&["undo", "clear", "--db", dbp, "--older-than", "0"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "kept the undo record of run {} (plan \"res\"): an undo of the plan stopped part-way, leaving step 1 taken back only in part",
        runs[0]
        )) && !out.contains("removed"),
        "{out}"
    );
    assert_eq!(recorded(&db), [runs[0].clone()]);

    let (code, _, err) = run(&undo_of_plan(&db, "res", &[]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("plan \"res\" is fully taken back"), "{err}");
    assert_eq!(at(&db, 0), 200, "{err}");
    let (code, _, err) = run(&plan_args(&db, path_str(&plan)));
    assert_eq!(code, 0, "{err}");
    assert_eq!(at(&db, 1000), 200, "applied once: {err}");
}

/// `--older-than` keeps an old run that shares a step with a newer one,
/// with a line naming it, and never fails for it: other old runs go. Once
/// both are old, they go together.
#[test]
fn older_than_keeps_an_old_run_that_shares_a_step_with_a_newer_one() {
    let (db, plan, runs) = resumed();
    let dbp = path_str(&db.path);
    let other = db.file(
        "other.json",
        r#"{"name":"other","undo":true,"steps":[{"sql":"UPDATE t SET a = a + 1 WHERE id = 1"}]}"#,
    );
    let (code, _, err) = run(&run_args(&db, path_str(&other), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    let all = recorded(&db);
    assert_eq!(all.len(), 3, "{all:?}");
    let age = |run: &str| {
        db.conn()
            .execute(
                "UPDATE batchsse_undo SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-3 days') WHERE run = ?1",
                [run],
            )
            .unwrap();
    };
    age(&runs[0]);
    age(&all[2]);
    let bytes = db.query_i64(&format!(
        "SELECT sum(bytes) FROM batchsse_undo WHERE run = '{}'",
        all[2]
    ));
    let (code, out, err) = run(&["undo", "clear", "--db", dbp, "--older-than", "2d"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "removed the undo record of run {} (plan \"other\", {bytes} bytes) from {dbp}; it can no longer be taken back\n\
             kept the undo record of run {} (plan \"res\"): it shares step 1 with run {}, whose record stays, and an undo of the plan would take that record for all the plan applied there; take the plan back (`batchsse undo --db {dbp} --plan res`), or clear its records together (`batchsse undo clear --db {dbp} --plan res`)\n",
            all[2], runs[0], runs[1]
        )
    );
    assert_eq!(recorded(&db), runs, "both runs of res stay");
    age(&runs[1]);
    let (code, out, err) = run(&["undo", "clear", "--db", dbp, "--older-than", "2d"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.matches("removed the undo record of run").count(),
        2,
        "{out}"
    );
    assert!(!out.contains("kept"), "{out}");
    let (code, _, err) = run(&plan_args(&db, path_str(&plan)));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("skipped (already applied)"), "{err}");
}

/// `--plan` of a plan run without a checkpoint says that its next run
/// would apply it again; a plan with no record is refused with the names
/// there are; `--plan` goes with no other choice.
#[test]
fn undo_clear_plan_says_what_it_leaves_and_refuses_a_name_with_no_record() {
    let db = TempDb::counters(20);
    let plan = db.file("plan.json", &counter_plan("loose", 10));
    let dbp = path_str(&db.path);
    let args = run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--undo", "--no-checkpoint"],
    );
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let before = db.bytes();
    let (code, _, err) = run(&["undo", "clear", "--db", dbp, "--plan", "lose"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "no undo record of plan \"lose\" in {dbp}; recorded plans: \"loose\" (`batchsse undo list --db {dbp}` shows their runs)"
        )),
        "{err}"
    );
    let (code, _, err) = run(&["undo", "clear", "--db", dbp, "--plan", "loose", "--all"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    assert_eq!(db.bytes(), before, "nothing removed");
    let (code, out, err) = run(&["undo", "clear", "--db", dbp, "--plan", "loose"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("plan \"loose\" stays applied, and can no longer be taken back; {dbp} holds no checkpoint of it (a run with --no-checkpoint keeps none), so its next run would apply it again")),
        "{out}"
    );
}

/// A step a run and its resume both left part-way is not resumed without
/// `--undo`; the refusal named `undo clear --run` of one of them, which
/// is now refused itself. It names `--plan`, which works: the plan then
/// resumes unrecorded, and every row is changed once.
#[test]
fn a_step_two_runs_left_part_way_names_the_clear_that_works() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER NOT NULL DEFAULT 0);
         INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 200) SELECT i FROM s;
         CREATE TRIGGER stop BEFORE UPDATE ON t WHEN NEW.id IN (81, 151) BEGIN SELECT RAISE(ABORT, 'stop'); END;",
    );
    let plan = db.file("res.json", RES);
    let dbp = path_str(&db.path);
    let (code, _, err) = run(&plan_args(&db, path_str(&plan)));
    assert_eq!(code, 1, "{err}");
    db.conn()
        .execute_batch(
            "DROP TRIGGER stop; CREATE TRIGGER stop BEFORE UPDATE ON t WHEN NEW.id = 151
             BEGIN SELECT RAISE(ABORT, 'stop'); END;",
        )
        .unwrap();
    let (code, _, err) = run(&plan_args(&db, path_str(&plan)));
    assert_eq!(code, 1, "{err}");
    db.conn().execute_batch("DROP TRIGGER stop").unwrap();
    assert_eq!((at(&db, 1000), recorded(&db).len()), (150, 2), "{err}");
    let unrecorded = r#"{"name":"res","steps":[{"name":"bump",
        "sql":"UPDATE t SET a = a + 1000 WHERE id BETWEEN :lo AND :hi",
        "chunk":{"table":"t","key":"id"}}]}"#;
    let unrecorded = db.file("unrecorded.json", unrecorded);
    let (code, _, err) = run(&plan_args(&db, path_str(&unrecorded)));
    assert_eq!(code, 2, "{err}");
    let clear = format!("batchsse undo clear --db {dbp} --plan res");
    assert!(
        err.contains(&format!("give up on the record with `{clear}`")),
        "{err}"
    );
    let (code, _, err) = run(&["undo", "clear", "--db", dbp, "--plan", "res"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&plan_args(&db, path_str(&unrecorded)));
    assert_eq!(code, 0, "{err}");
    assert_eq!(at(&db, 1000), 200, "every row once: {err}");
}

/// The command in backquotes after `lead` in `err`, as its words (the
/// plan's name and the path here need no quoting), `batchsse` left off.
fn quoted_command<'a>(err: &'a str, lead: &str) -> Vec<&'a str> {
    let at = err
        .find(lead)
        .unwrap_or_else(|| panic!("no {lead:?} in: {err}"));
    let rest = &err[at + lead.len()..];
    let command = &rest[..rest.find('`').expect("closing backquote")];
    command.split_whitespace().skip(1).collect()
}

/// A plan's name may begin with a hyphen (`"name": "--all"`): the
/// commands batchsse prints name it after `--plan`, where it was read as
/// an option (`checkpoint clear --plan --all`: "a value is required"), so
/// the command a failed run says to run next could not run.
#[test]
fn a_plan_named_like_an_option_can_be_cleared_with_the_printed_command() {
    for name in ["--all", "-x"] {
        let db = TempDb::counters(40);
        let plan = serde_json::json!({"name": name, "steps": [{
            "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
            "chunk": {"table": "t", "key": "id", "size": 10},
            "expect_changes": {"max": 25}}]});
        let plan = db.file("plan.json", &plan.to_string());
        let args = run_args(
            &db,
            path_str(&plan),
            &["--no-serve", "--undo", "--batch-size", "10"],
        );
        let (code, _, err) = run(&args);
        assert_eq!(code, 1, "{err}");
        // Take the run's rows back part-way, then clear the plan's record.
        let clear = quoted_command(&err, "start over after `");
        assert_eq!(clear[..2], ["checkpoint", "clear"], "{err}");
        let (code, out, cleared) = run(&clear);
        assert_eq!(code, 0, "{name}: {clear:?}: {cleared}");
        assert!(out.contains("removed the checkpoint of plan"), "{out}");
        let (code, _, err) = run(&args);
        assert_eq!(code, 1, "{err}");
        let (code, _, undone) = run(&undo_of_plan(&db, name, &[]));
        assert_eq!(code, 0, "{name}: {undone}");
        let (code, _, err) = run(&["undo", "clear", "--db", path_str(&db.path), "--plan", name]);
        assert_eq!(code, 2, "nothing left to clear: {err}");
        assert!(err.contains("no undo record of plan"), "{err}");
    }
}

/// `batchsse undo --db FILE list` (the flag before the subcommand, as
/// `batchsse undo --db FILE --plan NAME` takes it) is refused, and the
/// error says where the flag goes: clap alone said the subcommand "cannot
/// be used with '--db <PATH>'", as if `list` took no `--db`.
#[test]
fn undo_flags_before_list_or_clear_are_refused_naming_the_order_that_works() {
    let db = TempDb::with_sql("CREATE TABLE t (id INTEGER PRIMARY KEY);");
    for sub in ["list", "clear"] {
        let (code, _, err) = run(&["undo", "--db", path_str(&db.path), sub]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(&format!(
                "tip: `{sub}` takes its flags after its name: batchsse undo {sub} --db PATH"
            )),
            "{err}"
        );
    }
}

/// The tip is not given of a flag the subcommand does not take: `undo
/// --dry-run list` was told that `list` "takes its flags after its name",
/// and `list --dry-run` is refused in turn.
#[test]
fn undo_flags_the_subcommand_lacks_get_no_tip_to_move_them() {
    let db = TempDb::with_sql("CREATE TABLE t (id INTEGER PRIMARY KEY);");
    for args in [
        &["--dry-run", "list"][..],
        &["--plan", "p", "list"],
        &["--dry-run", "clear", "--all"],
    ] {
        let args = [&["undo"][..], args].concat();
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("cannot be used with"), "{args:?}: {err}");
        assert!(
            !err.contains("takes its flags after its name"),
            "{args:?}: {err}"
        );
    }
    let (code, _, err) = run(&["undo", "--plan", "p", "--db", path_str(&db.path), "clear"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("tip: `clear` takes its flags after its name"),
        "{err}"
    );
}
