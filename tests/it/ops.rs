//! The operator's tools: shell completions and the man page (checked by
//! bash and groff themselves), `checkpoint list|clear` on databases real
//! runs left behind, and `schema` checked by an independent validator
//! against every event of real runs.

use std::process::Command;

use serde_json::{Value, json};

use crate::util::*;

/// `tool` is on the PATH; otherwise the test is skipped, or fails in CI.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip_unless_ci(&format!("{tool} is not installed (.ci/run installs it)"));
    }
    found
}

// --- completions and man ---------------------------------------------------

#[test]
fn the_bash_completion_parses_and_registers_itself() {
    if !have("bash") {
        return;
    }
    let (code, script, err) = run(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("batchsse.bash");
    std::fs::write(&file, &script).expect("write");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .expect("bash -n");
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let check = format!("source {:?} && complete -p batchsse", file);
    let out = Command::new("bash")
        .args(["-c", &check])
        .output()
        .expect("bash -c");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.contains("-F _batchsse batchsse"), "{shown}");
    // It knows the subcommands and their flags.
    for word in [
        "checkpoint",
        "completions",
        "schema",
        "--pause-file",
        "--all",
    ] {
        assert!(script.contains(word), "no {word} in the bash completion");
    }
}

#[test]
fn every_shell_gets_a_script_and_an_unknown_one_is_a_usage_error() {
    for (shell, marker) in [
        ("bash", "complete -F _batchsse"),
        ("zsh", "#compdef batchsse"),
        ("fish", "complete -c batchsse"),
        ("elvish", "edit:completion:arg-completer[batchsse]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let (code, out, err) = run(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: no {marker:?}");
    }
    let (code, out, err) = run(&["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(
        err.contains("possible values: bash, elvish, fish, powershell, zsh"),
        "{err}"
    );
}

#[test]
fn the_man_page_renders_without_a_warning_and_covers_every_command() {
    if !have("groff") {
        return;
    }
    let (code, page, err) = run(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH batchsse 1"),
        "{page:.200}"
    );
    for section in [
        "BATCHSSE RUN",
        "BATCHSSE DEMO",
        "BATCHSSE WATCH",
        "BATCHSSE CHECKPOINT LIST",
        "BATCHSSE CHECKPOINT CLEAR",
        "BATCHSSE COMPLETIONS",
        "BATCHSSE MAN",
        "BATCHSSE SCHEMA",
        "EXIT STATUS",
    ] {
        assert!(
            page.contains(&format!(".SH \"{section}\"")),
            "no section {section}"
        );
    }
    assert!(
        page.contains("pause\\-file"),
        "run's options are in the page"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("batchsse.1");
    std::fs::write(&file, &page).expect("write");
    let out = Command::new("groff")
        .args(["-man", "-ww", "-z"])
        .arg(&file)
        .output()
        .expect("groff");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && warnings.is_empty(),
        "groff:\n{warnings}"
    );
}

// --- checkpoint list | clear ------------------------------------------------

/// `t` with 100 counters and a user table `notes`; then two real runs:
/// plan "alpha" (a plain step and a chunked one) finishes, plan "beta"
/// fails in its chunk holding id 60, after five 10-row chunks committed.
fn two_plans() -> TempDb {
    let db = TempDb::counters(100);
    db.conn()
        .execute_batch("CREATE TABLE notes(k TEXT PRIMARY KEY, v BLOB); INSERT INTO notes VALUES ('a', x'00ff'), ('b', NULL);")
        .expect("notes");
    let alpha = db.file(
        "alpha.json",
        &json!({"name": "alpha", "steps": [
            {"name": "note it", "sql": "INSERT INTO notes VALUES ('alpha ' || (SELECT count(*) FROM notes), 1)"},
            {"name": "bump", "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
             "chunk": {"table": "t", "key": "id", "size": 25}}
        ]})
        .to_string(),
    );
    let beta = db.file(
        "beta.json",
        &json!({"name": "beta", "steps": [
            {"name": "bump until 60", "sql": "UPDATE t SET counter = counter + CASE WHEN id >= 60 THEN NULL ELSE 1 END WHERE id BETWEEN :lo AND :hi",
             "chunk": {"table": "t", "key": "id", "size": 10}}
        ]})
        .to_string(),
    );
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&alpha),
        &words("--no-serve --progress none"),
    ));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&beta),
        &words("--no-serve --progress none --batch-size 10"),
    ));
    assert_eq!(code, 1, "beta fails at id 60: {err}");
    db
}

/// Every user table's rows, in rowid order, as text: what a clear must
/// never change.
fn user_rows(db: &TempDb) -> String {
    let conn = db.conn();
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'batchsse_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.sort();
    let mut out = String::new();
    for t in tables {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid"))
            .unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let cells: Vec<String> = (0..n)
                .map(|i| format!("{:?}", r.get::<_, rusqlite::types::Value>(i).unwrap()))
                .collect();
            out += &format!("{t}: {}\n", cells.join(" | "));
        }
    }
    out
}

fn checkpoint_rows(db: &TempDb) -> i64 {
    db.query_i64("SELECT count(*) FROM batchsse_checkpoint")
}

fn table_exists(db: &TempDb) -> bool {
    db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_checkpoint'") == 1
}

#[test]
fn list_shows_a_finished_plan_and_a_partial_one() {
    let db = two_plans();
    let (code, out, err) = run(&["checkpoint", "list", "--db", path_str(&db.path)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("plan \"alpha\": 2 steps recorded, 2 done, 0 partial"),
        "{out}"
    );
    assert!(
        out.contains("step 1 \"note it\": done, 1 row (1 changed)"),
        "{out}"
    );
    assert!(
        out.contains("step 2 \"bump\": done, 100 rows (100 changed)"),
        "{out}"
    );
    assert!(
        out.contains("plan \"beta\": 1 step recorded, 0 done, 1 partial"),
        "{out}"
    );
    assert!(
        out.contains("step 1 \"bump until 60\": partial up to key 50, 50 rows (50 changed)"),
        "{out}"
    );

    let (code, out, err) = run(&["checkpoint", "list", "--db", path_str(&db.path), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("one JSON document");
    let plans = v["plans"].as_array().expect("plans");
    assert_eq!(plans.len(), 2, "{v}");
    assert_eq!(plans[0]["plan"], "alpha");
    let alpha = plans[0]["steps"].as_array().unwrap();
    assert_eq!(alpha.len(), 2);
    assert_eq!(
        (alpha[1]["index"].clone(), alpha[1]["state"].clone()),
        (json!(1), json!("done"))
    );
    assert_eq!(
        (alpha[1]["done"].clone(), alpha[1]["last_key"].clone()),
        (json!(100), Value::Null)
    );
    let beta = &plans[1]["steps"][0];
    assert_eq!(plans[1]["plan"], "beta");
    assert_eq!(beta["state"], "partial", "{v}");
    assert_eq!(beta["last_key"], 50, "{v}");
    assert_eq!(
        (beta["done"].clone(), beta["changed"].clone()),
        (json!(50), json!(50))
    );
    assert!(beta["updated_at"].as_str().unwrap().ends_with('Z'), "{v}");
}

#[test]
fn clear_removes_one_plan_then_all_and_never_touches_user_tables() {
    let db = two_plans();
    let before = user_rows(&db);
    assert!(
        before.contains("notes: Text(\"alpha 2\") | Integer(1)"),
        "alpha ran: {before}"
    );
    let dbp = path_str(&db.path);

    let (code, out, err) = run(&["checkpoint", "clear", "--db", dbp, "--plan", "beta"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("removed the checkpoint of plan \"beta\" (1 step record)"),
        "{out}"
    );
    assert!(!out.contains("dropped"), "{out}");
    assert_eq!(checkpoint_rows(&db), 2, "alpha's two records stay");
    let (_, listed, _) = run(&["checkpoint", "list", "--db", dbp]);
    assert!(
        listed.contains("alpha") && !listed.contains("beta"),
        "{listed}"
    );

    // A plan with no records: refused, nothing written.
    let bytes = db.bytes();
    let (code, out, err) = run(&["checkpoint", "clear", "--db", dbp, "--plan", "beta"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        err.contains("no checkpoint recorded for plan \"beta\"; recorded plans: \"alpha\""),
        "{err}"
    );
    assert_eq!(db.bytes(), bytes, "database untouched");

    let (code, out, err) = run(&["checkpoint", "clear", "--db", dbp, "--all"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("plan \"alpha\" (2 step records)"), "{out}");
    assert!(
        out.contains("dropped the batchsse_checkpoint table"),
        "{out}"
    );
    assert!(!table_exists(&db));
    assert_eq!(user_rows(&db), before, "user tables unchanged");

    let (code, out, _) = run(&["checkpoint", "clear", "--db", dbp, "--all"]);
    assert_eq!(
        (code, out.trim()),
        (
            0,
            format!("no checkpoint recorded in {dbp}; nothing to clear").as_str()
        )
    );
    let (code, out, _) = run(&["checkpoint", "list", "--db", dbp, "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["plans"],
        json!([])
    );
}

/// An empty file (`touch shop.sqlite`, a path mistyped into a new file)
/// is an empty database: every housekeeping command finds nothing in it,
/// and leaves it as it was. `checkpoint clear --all` committed its empty
/// transaction, which wrote a 4 KiB SQLite header into it.
#[test]
fn housekeeping_on_an_empty_file_leaves_it_empty() {
    let db = TempDb::empty();
    std::fs::write(&db.path, b"").unwrap();
    let dbp = path_str(&db.path);
    for args in [
        &["checkpoint", "clear", "--db", dbp, "--all"][..],
        &["checkpoint", "list", "--db", dbp],
        &["undo", "clear", "--db", dbp, "--all"],
        &["undo", "clear", "--db", dbp, "--older-than", "0"],
        &["undo", "list", "--db", dbp],
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.starts_with("no "), "{args:?}: {out}");
        assert_eq!(db.bytes().len(), 0, "{args:?} wrote into the file");
    }
}

#[test]
fn clearing_the_last_plan_drops_the_table_and_the_next_run_starts_over() {
    let db = two_plans();
    let dbp = path_str(&db.path);
    for plan in ["alpha", "beta"] {
        let (code, _, err) = run(&["checkpoint", "clear", "--db", dbp, "--plan", plan]);
        assert_eq!(code, 0, "{err}");
    }
    assert!(!table_exists(&db), "dropped once empty");
    // alpha is no longer "already applied": it runs again.
    let plan = db.dir.path().join("alpha.json");
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &words("--no-serve --progress plain"),
    ));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("already applied"), "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM notes"),
        4,
        "note it ran again"
    );
    assert_eq!(
        db.query_i64("SELECT sum(counter) FROM t"),
        250,
        "alpha's 100 + beta's 50 + 100"
    );
}

#[test]
fn checkpoint_on_a_missing_or_bad_database_is_a_usage_error_that_creates_nothing() {
    let db = TempDb::empty();
    let dbp = path_str(&db.path);
    for args in [
        vec!["checkpoint", "list", "--db", dbp],
        vec!["checkpoint", "clear", "--db", dbp, "--all"],
    ] {
        let (code, out, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(
            err.contains("no such database") && err.contains("never creates one"),
            "{err}"
        );
        assert!(!db.path.exists(), "{args:?} created the file");
    }
    let (code, _, err) = run(&["checkpoint", "clear", "--db", dbp]);
    assert_eq!(code, 2);
    assert!(err.contains("--plan") && err.contains("--all"), "{err}");
    let (code, _, err) = run(&["checkpoint", "clear", "--db", dbp, "--plan", "x", "--all"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot be used with"), "{err}");
}

// --- schema ----------------------------------------------------------------

/// `batchsse schema`, compiled by an independent validator.
fn validator() -> jsonschema::Validator {
    let (code, out, err) = run(&["schema"]);
    assert_eq!(code, 0, "{err}");
    let schema: Value = serde_json::from_str(&out).expect("the schema is JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert!(
        jsonschema::meta::is_valid(&schema),
        "not a valid JSON Schema"
    );
    jsonschema::draft202012::new(&schema).expect("the schema compiles")
}

fn assert_valid(v: &jsonschema::Validator, line: &Value) {
    let errors: Vec<String> = v
        .iter_errors(line)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{line}\ndoes not validate:\n{}",
        errors.join("\n")
    );
}

/// A run with the server on and `--progress json`: `during` acts on its
/// stream before it ends; returns the exit code and its JSON lines.
fn served_json_run(
    db: &TempDb,
    plan: &str,
    extra: &[&str],
    during: impl FnOnce(&mut Proc, &mut Stream),
) -> (i32, Vec<Value>) {
    let mut args = run_args(
        db,
        plan,
        &words("--listen 127.0.0.1:0 --progress json --wait-for-clients 1"),
    );
    args.extend_from_slice(extra);
    let mut p = Proc::start(&args);
    let mut s = Stream::open(p.addr(), "/events", &[]);
    during(&mut p, &mut s);
    let code = p.wait().code().unwrap_or(-1);
    (code, json_lines(&p.stdout()))
}

/// Every kind of run there is, each to its end: (what, exit code, lines).
fn every_kind_of_run() -> Vec<(&'static str, i32, Vec<Value>)> {
    let mut runs = Vec::new();
    let db = TempDb::counters(100);
    let ok = db.file("ok.json", &counter_plan("ok", 10));
    let quiet = |extra: &'static str| {
        let mut w = words("--no-serve --progress json --batch-size 10");
        w.extend(words(extra));
        w
    };
    let (code, out, _) = run(&run_args(&db, path_str(&ok), &quiet("--dry-run")));
    runs.push(("dry run", code, json_lines(&out)));
    let (code, out, _) = run(&run_args(&db, path_str(&ok), &quiet("")));
    runs.push(("ok", code, json_lines(&out)));
    let (code, out, _) = run(&run_args(&db, path_str(&ok), &quiet("")));
    runs.push(("already applied", code, json_lines(&out)));

    let failing = db.file(
        "fails.json",
        &json!({"name": "fails", "steps": [
            {"name": "bump until 60", "sql": "UPDATE t SET counter = counter + CASE WHEN id >= 60 THEN NULL ELSE 1 END WHERE id BETWEEN :lo AND :hi",
             "chunk": {"table": "t", "key": "id", "size": 10}}]})
        .to_string(),
    );
    let (code, out, _) = run(&run_args(&db, path_str(&failing), &quiet("")));
    runs.push(("failed", code, json_lines(&out)));
    let (code, out, _) = run(&run_args(&db, path_str(&failing), &quiet("")));
    runs.push(("resumed, failed again", code, json_lines(&out)));

    let nulls = TempDb::with_sql(
        "CREATE TABLE u(id INTEGER PRIMARY KEY, k INTEGER UNIQUE, c INTEGER NOT NULL DEFAULT 0);
         INSERT INTO u(k) VALUES (1), (2), (NULL), (4), (NULL);",
    );
    let warn = nulls.file(
        "warn.json",
        &json!({"name": "warn", "steps": [{"sql": "UPDATE u SET c = c + 1 WHERE k BETWEEN :lo AND :hi",
            "chunk": {"table": "u", "key": "k", "size": 2}}]})
        .to_string(),
    );
    let (code, out, _) = run(&run_args(
        &nulls,
        path_str(&warn),
        &words("--no-serve --progress json"),
    ));
    runs.push(("warned", code, json_lines(&out)));

    let db = TempDb::counters(100);
    let plan = db.file("slow.json", &counter_plan("paused", 10));
    let pause = db.dir.path().join("pause");
    std::fs::write(&pause, "").expect("pause file");
    let flags = ["--pause-file", path_str(&pause), "--batch-size", "10"];
    let (code, lines) = served_json_run(&db, path_str(&plan), &flags, |_, s| {
        s.until("throttle");
        std::fs::remove_file(&pause).expect("remove the pause file");
    });
    runs.push(("throttled", code, lines));
    std::fs::write(&pause, "").expect("pause file");
    let plan = db.file("cancel.json", &counter_plan("cancelled", 10));
    let (code, lines) = served_json_run(&db, path_str(&plan), &flags, |p, s| {
        s.until("throttle");
        p.signal("TERM");
    });
    runs.push(("cancelled", code, lines));
    runs
}

#[test]
fn every_event_of_every_kind_of_run_validates_against_the_schema() {
    let v = validator();
    let mut seen = std::collections::BTreeSet::new();
    let runs = every_kind_of_run();
    for (what, code, lines) in &runs {
        assert!(lines.len() >= 3, "{what} (exit {code}): {lines:?}");
        for line in lines {
            assert_valid(&v, line);
            let event = line["event"].as_str().unwrap().to_owned();
            if event == "start" {
                assert_eq!(line["data"]["protocol"], 1, "{what}: {line}");
            }
            let detail = match event.as_str() {
                "finished" => line["data"]["status"].as_str().unwrap().to_owned(),
                "message" => line["data"]["status"].as_str().unwrap().to_owned(),
                "step" => line["data"]["state"].as_str().unwrap().to_owned(),
                "throttle" => line["data"]["active"].to_string(),
                "start" => format!("resumed={}", line["data"]["resumed"]),
                _ => String::new(),
            };
            seen.insert(format!("{event} {detail}"));
        }
    }
    let codes: Vec<i32> = runs.iter().map(|(_, c, _)| *c).collect();
    assert_eq!(codes, [0, 0, 0, 1, 1, 0, 0, 130], "{runs:?}");
    for want in [
        "start resumed=false",
        "start resumed=true",
        "step running",
        "step done",
        "step failed",
        "step skipped",
        "progress ",
        "message info",
        "message warn",
        "message error",
        "throttle true",
        "throttle false",
        "finished ok",
        "finished failed",
        "finished cancelled",
    ] {
        assert!(seen.contains(want), "no {want:?} among {seen:?}");
    }
}

#[test]
fn a_wrong_payload_fails_the_schema() {
    let v = validator();
    let db = TempDb::counters(20);
    let plan = db.file("ok.json", &counter_plan("ok", 10));
    let (code, out, err) = run(&run_args(
        &db,
        path_str(&plan),
        &words("--no-serve --progress json"),
    ));
    assert_eq!(code, 0, "{err}");
    let lines = json_lines(&out);
    let find = |name: &str| {
        lines
            .iter()
            .find(|l| l["event"] == name)
            .cloned()
            .expect(name)
    };
    let (start, step, finished) = (find("start"), find("step"), find("finished"));
    for good in [&start, &step, &finished] {
        assert_valid(&v, good);
    }
    let mut broken: Vec<(&str, Value)> = Vec::new();
    let mut no_run_id = start.clone();
    no_run_id["data"].as_object_mut().unwrap().remove("run_id");
    broken.push(("start without run_id", no_run_id));
    let mut no_ts = step.clone();
    no_ts["data"].as_object_mut().unwrap().remove("ts_ms");
    broken.push(("step without ts_ms", no_ts));
    let mut wrong_type = start.clone();
    wrong_type["data"]["dry_run"] = json!("no");
    broken.push(("dry_run as a string", wrong_type));
    let mut negative = step.clone();
    negative["data"]["done"] = json!(-1);
    broken.push(("negative done", negative));
    let mut state = step.clone();
    state["data"]["state"] = json!("paused");
    broken.push(("unknown step state", state));
    let mut status = finished.clone();
    status["data"]["status"] = json!("crashed");
    broken.push(("unknown finished status", status));
    let mut protocol = start.clone();
    protocol["data"]["protocol"] = json!(2);
    broken.push(("another protocol", protocol));
    let mut name = finished.clone();
    name["event"] = json!("error");
    broken.push(("an event named error", name));
    let mut swapped = step.clone();
    swapped["event"] = json!("finished");
    broken.push(("step data under finished", swapped));
    for (what, line) in broken {
        assert!(!v.is_valid(&line), "{what} validated: {line}");
    }
}
