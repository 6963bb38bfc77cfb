//! A hostile user's databases and plans: what SQLite lets a plan do that
//! would break the run's promises, and files that are not what they seem.

use crate::util::*;

/// Runs the SQL script at `script` on `db` with no server (and `extra`
/// flags): (exit code, stdout, stderr).
fn run_sql(db: &TempDb, script: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "run",
        "--db",
        path_str(&db.path),
        "--sql",
        path_str(script),
        "--no-serve",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// With no rollback journal SQLite cannot undo a failed step: a run whose
/// plan turned it off kept most of a failed `UPDATE` while saying it rolled
/// back, and a resumed chunk would be applied twice.
#[test]
fn a_plan_that_turns_the_rollback_journal_off_is_refused_before_anything_runs() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INTEGER NOT NULL DEFAULT 0, pad BLOB);
         INSERT INTO t(id, pad) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 20000)
           SELECT i, zeroblob(500) FROM s;
         CREATE TRIGGER late BEFORE UPDATE ON t WHEN new.id = 19999
           BEGIN SELECT RAISE(ABORT, 'stop late'); END;",
    );
    let before = sha256(&db.path);
    for pragma in [
        "PRAGMA journal_mode = OFF;",
        "pragma main.JOURNAL_MODE('Memory');",
    ] {
        let script = db.file(
            "off.sql",
            &format!("{pragma}\nPRAGMA cache_size = 5;\nUPDATE t SET counter = counter + 1;\n"),
        );
        let (code, out, err) = run_sql(&db, &script, &[]);
        assert_eq!(code, 2, "{pragma}: {err}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains("statement 1")
                && err.contains("journal_mode to OFF or MEMORY")
                && err.contains("remove it"),
            "{err}"
        );
        assert_eq!(sha256(&db.path), before, "{pragma} changed the database");
    }
    // Reading the mode, or choosing one that rolls back, still runs.
    let plan = db.file(
        "wal.json",
        r#"{"steps":[{"sql":"PRAGMA journal_mode = WAL"},{"sql":"PRAGMA journal_mode"},{"sql":"UPDATE t SET counter = 1 WHERE id < 10"}]}"#,
    );
    let (code, _, err) = run(&[
        "run",
        "--db",
        path_str(&db.path),
        "--plan",
        path_str(&plan),
        "--no-serve",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 9);
}

/// `ctl` piped to a reader that is gone (`| head -0`, `| true`) panicked
/// (exit 101) after the run had taken its command.
#[test]
fn ctl_whose_reader_is_gone_says_its_command_was_taken_with_exit_0() {
    const TOKEN: &str = "c0ntrol-gone";
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("gone", 1));
    let p = serving(
        &db,
        path_str(&plan),
        &[
            "--batch-size",
            "1",
            "--sleep",
            "1000",
            "--control-token",
            TOKEN,
        ],
    );
    let base = format!("http://{}/", p.addr());
    for (action, paused) in [(&["pause"][..], true), (&["resume", "--json"], false)] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = std::process::Command::new(BIN)
            .args(["ctl", &base])
            .args(action)
            .args(["--control-token", TOKEN])
            .stdout(writer)
            .output()
            .expect("run ctl");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{action:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        wait_status(p.addr(), |s| s["paused"] == paused);
    }
}

/// Ctrl-C or SIGTERM while the demo fills its shop killed the process
/// before anything could delete the temporary folder: a large shop (GBs
/// at `--rows 100000000`) stayed behind in the system's temp folder.
#[test]
fn a_demo_stopped_while_it_fills_its_shop_leaves_no_folder_behind() {
    for sig in ["INT", "TERM"] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut p = spawn(
            &["demo", "--rows", "100000000", "--listen", "127.0.0.1:0"],
            |c| {
                c.env("TMPDIR", tmp.path());
            },
        );
        let filling = || {
            std::fs::read_dir(tmp.path())
                .into_iter()
                .flatten()
                .flatten()
                .any(|d| d.path().join("shop.sqlite").exists())
        };
        let start = std::time::Instant::now();
        while !filling() {
            assert!(
                start.elapsed() < PATIENCE,
                "no shop.sqlite in the temp folder"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        p.signal(sig);
        let status = p.wait();
        assert_eq!(status.code(), Some(130), "SIG{sig}: {}", p.stderr());
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "SIG{sig} left {left:?}");
    }
}

/// A damaged file, or a folder where SQLite keeps its journal, was refused
/// with SQLite's bare words ("database disk image is malformed", "disk
/// I/O error"), which say nothing of what to do.
#[test]
fn a_damaged_database_or_a_folder_at_its_journal_says_what_to_do() {
    let db = TempDb::counters(2000);
    let plan = db.file("plan.json", &counter_plan("damaged", 100));
    let whole = db.bytes();
    let page = db.query_i64("PRAGMA page_size") as usize;
    assert!(whole.len() > 2 * page, "more than one page");
    // The first page only: the schema names pages that are gone.
    std::fs::write(&db.path, &whole[..page]).unwrap();
    let before = sha256(&db.path);
    let dbp = path_str(&db.path);
    let commands = [
        vec!["run", "--db", dbp, "--plan", path_str(&plan), "--no-serve"],
        vec!["checkpoint", "list", "--db", dbp],
    ];
    for args in commands {
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("the file is damaged") && err.contains("restore it from a backup"),
            "{err}"
        );
        assert_eq!(sha256(&db.path), before);
    }
    std::fs::write(&db.path, &whole).unwrap();
    let journal = db.dir.path().join("test.sqlite-journal");
    std::fs::create_dir(&journal).unwrap();
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("-journal, -wal or -shm beside it") && err.contains("check the disk"),
        "{err}"
    );
    assert_eq!(db.bytes(), whole);
    std::fs::remove_dir(&journal).unwrap();
    // A damaged page of the table, met only once the step reads it.
    let mut torn = whole.clone();
    let at = torn.len() - page;
    torn[at..].fill(0xff);
    std::fs::write(&db.path, &torn).unwrap();
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the file is damaged; restore it from a backup"),
        "{err}"
    );
    assert_eq!(db.bytes(), torn);
}

/// The commands a refusal gives work as they are printed: they said
/// `--db FILE`, and an empty `--sql -` was called a plan.
#[test]
fn refusals_name_the_file_in_the_commands_they_give() {
    let db = TempDb::counters(2);
    let dbp = path_str(&db.path);
    let (code, _, err) = run(&["undo", "--db", dbp]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("(`batchsse undo list --db {dbp}` shows them)")),
        "{err}"
    );
    let (code, _, err) = run(&["undo", "--db", dbp, "--run", "nope", "--no-serve"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "`batchsse undo list --db {dbp}` shows what is recorded"
        )),
        "{err}"
    );
    let (code, _, err) = run(&["undo", "clear", "--db", dbp, "--run", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("`batchsse undo list --db {dbp}` shows them")),
        "{err}"
    );
    let plan = db.file("plan.json", &counter_plan("kept", 2));
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["checkpoint", "clear", "--db", dbp, "--plan", "kep"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("(see `batchsse checkpoint list --db {dbp}`)")),
        "{err}"
    );
    let (code, _, err) = run_with_stdin(&["run", "--db", dbp, "--sql", "-"], Some(" \n"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("the SQL script on standard input is empty"),
        "{err}"
    );
}

/// A step summary file that is a FIFO no one reads blocked the run at its
/// end forever, past SIGTERM (its signal only cuts a linger short then).
#[test]
fn a_step_summary_fifo_no_one_reads_is_warned_about_not_waited_on() {
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("fifo", 10));
    let fifo = db.dir.path().join("summary");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: no mkfifo");
        return;
    }
    let args = run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--progress", "github"],
    );
    let mut p = spawn(&args, |c| {
        c.env("GITHUB_ACTIONS", "true")
            .env("GITHUB_STEP_SUMMARY", &fifo);
    });
    let status = p.wait_for(std::time::Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", p.stderr());
    assert!(
        p.stderr()
            .contains("::warning::cannot append the step summary to"),
        "{}",
        p.stderr()
    );
    assert_eq!(db.counter_spread(), (10, 0));
}

/// A script written for the sqlite3 shell often holds its dot-commands:
/// `.bail on` ran into the next statement and the two were refused as one
/// syntax error, quoting both.
#[test]
fn a_sqlite3_shell_command_in_a_script_is_named_as_one() {
    let db = TempDb::counters(3);
    let script = db.file(
        "shell.sql",
        "-- made for sqlite3\nUPDATE t SET counter = 1;\n.timeout 5000\nUPDATE t SET counter = 2;\n",
    );
    let before = sha256(&db.path);
    let (code, _, err) = run_sql(&db, &script, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("shell.sql: line 3 is a command of the sqlite3 shell (.timeout), not SQL")
            && err.contains("remove it"),
        "{err}"
    );
    assert_eq!(sha256(&db.path), before);
}

/// A step that dropped or emptied batchsse's checkpoint ran: it wiped the
/// records of every plan, and the same plan run again applied its first
/// step a second time.
#[test]
fn a_step_that_writes_batchsse_s_own_tables_is_refused_before_anything_runs() {
    let db = TempDb::counters(10);
    let first = db.file("first.json", &counter_plan("first", 10));
    let (code, _, err) = run(&run_args(&db, path_str(&first), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    let before = sha256(&db.path);
    for evil in [
        "DELETE FROM batchsse_checkpoint",
        "DROP TABLE BatchSSE_Checkpoint",
        "UPDATE batchsse_checkpoint SET state = 'done'",
        "ALTER TABLE batchsse_checkpoint RENAME TO kept",
        "CREATE TRIGGER gone AFTER UPDATE ON t BEGIN DELETE FROM batchsse_checkpoint; END;\nUPDATE t SET counter = counter + 1",
    ] {
        let plan = serde_json::json!({
            "name": "evil",
            "steps": [{"sql": "UPDATE t SET counter = counter + 1"}, {"sql": evil}]
        });
        let plan = db.file("evil.json", &plan.to_string());
        let (code, out, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
        assert_eq!(code, 2, "{evil}: {err}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains("step 2")
                && err.contains("batchsse_checkpoint")
                && err.contains("one of batchsse's own tables"),
            "{evil}: {err}"
        );
        assert_eq!(sha256(&db.path), before, "{evil} changed the database");
    }
}

/// A step that attaches a database that is not there failed only when it
/// ran (exit 1, after the steps before it had committed), blaming write
/// access: the run opens databases without creating them.
#[test]
fn attaching_a_database_that_does_not_exist_is_refused_before_anything_runs() {
    let db = TempDb::counters(3);
    let other = db.dir.path().join("archive.sqlite");
    let plan = serde_json::json!({"steps": [
        {"sql": "UPDATE t SET counter = counter + 1"},
        {"sql": format!("ATTACH '{}' AS archive", path_str(&other))},
        {"sql": "CREATE TABLE archive.t AS SELECT * FROM main.t"}
    ]});
    let plan = db.file("plan.json", &plan.to_string());
    let before = sha256(&db.path);
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "step 2 (\"ATTACH '{}' AS archive\") attaches",
            path_str(&other)
        )) && err.contains("which does not exist")
            && err.contains("touch "),
        "{err}"
    );
    assert_eq!(sha256(&db.path), before);
    assert!(!other.exists(), "nothing made");
    std::fs::write(&other, b"").unwrap();
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 0, "an empty file is an empty database: {err}");
    assert_eq!(db.counter_spread(), (3, 0));
}

/// A plan that attaches the database it runs on a second time, and uses
/// that name in a step that writes: SQLite gives the second name its own
/// locks, so the step waits on the run's own transaction and fails. The
/// message blamed another connection and said to raise --busy-timeout,
/// which can never help; it names the attachment and the way out.
#[test]
fn a_step_that_uses_the_run_s_own_file_attached_again_says_so() {
    let db = TempDb::counters(3);
    let plan = serde_json::json!({"steps": [
        {"sql": format!("ATTACH '{}' AS again", path_str(&db.path))},
        {"sql": "UPDATE t SET counter = (SELECT count(*) FROM again.t)"}
    ]});
    let plan = db.file("plan.json", &plan.to_string());
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--busy-timeout", "200"],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("attached again as \"again\"") && !err.contains("raise --busy-timeout"),
        "{err}"
    );
    assert_eq!(db.counter_spread(), (0, 3));
}

/// A `DETACH` of a name no step attached (`archve` for `archive`) failed
/// only when it ran, exit 1, after the steps before it had committed. The
/// check refuses it when no step before it attaches a database; after an
/// `ATTACH` it is left to the run, and the right name runs (and resumes).
#[test]
fn detaching_a_database_no_step_attached_is_refused_before_anything_runs() {
    let db = TempDb::counters(3);
    let other = db.dir.path().join("archive.sqlite");
    std::fs::write(&other, b"").unwrap();
    let plan = |steps: serde_json::Value| {
        db.file(
            "plan.json",
            &serde_json::json!({"name": "d", "steps": steps}).to_string(),
        )
    };
    let before = sha256(&db.path);
    for (detach, says) in [
        ("DETACH archve", "no such database: archve"),
        ("DETACH DATABASE main", "cannot detach database main"),
    ] {
        let steps = serde_json::json!([
            {"sql": "UPDATE t SET counter = counter + 1"},
            {"sql": detach}]);
        let (code, _, err) = run(&run_args(&db, path_str(&plan(steps)), &["--no-serve"]));
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(&format!(
                "step 2 (\"{detach}\") could only fail as it ran ({says})"
            )) && err.contains("no step before it attaches a database"),
            "{err}"
        );
        assert_eq!(sha256(&db.path), before, "{detach}: untouched");
    }
    let steps = serde_json::json!([
        {"sql": format!("ATTACH '{}' AS archive", path_str(&other))},
        {"sql": "UPDATE t SET counter = counter + 1"},
        {"sql": "DETACH archive"}]);
    let (code, _, err) = run(&run_args(&db, path_str(&plan(steps)), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.counter_spread(), (3, 0), "every row updated once");
}

/// A file named by an expression (`'arch' || 'ive.sqlite'`) is not seen by
/// the check before the run, so such an ATTACH fails as it runs: its
/// message blamed write access, when the file was not there at all.
#[test]
fn an_attached_file_made_of_an_expression_that_is_missing_is_said_so() {
    let db = TempDb::counters(3);
    let other = db.dir.path().join("archive.sqlite");
    let dir = path_str(db.dir.path());
    let plan = serde_json::json!({"steps": [
        {"sql": "UPDATE t SET counter = counter + 1"},
        {"sql": format!("ATTACH '{dir}' || '/archive.sqlite' AS archive")}
    ]});
    let plan = db.file("plan.json", &plan.to_string());
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("unable to open database: {}", path_str(&other)))
            && err.contains("does not exist")
            && err.contains("batchsse never creates a database"),
        "{err}"
    );
    assert!(!other.exists(), "nothing made");
}

/// A `--db` that is a loop of symbolic links is said as what it is, not
/// as a missing file; a huge `--nice-ratio` is shown as written, not as
/// 309 digits.
#[test]
fn a_link_loop_and_a_huge_nice_ratio_are_said_plainly() {
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("plainly", 5));
    let (a, b) = (db.dir.path().join("a"), db.dir.path().join("b"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let (code, _, err) = run(&run_args(&a, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("no such database"), "{err}");
    assert!(err.contains("cannot reach the database"), "{err}");
    assert!(err.to_lowercase().contains("symbolic links"), "{err}");
    let before = sha256(&db.path);
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--nice-ratio", "1e308"],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("got 1e308"), "{err}");
    assert!(err.len() < 200, "{err}");
    assert_eq!(sha256(&db.path), before);
}

/// A step that turns `count_changes` on made the run's own writes (its
/// checkpoint) fail with "Execute returned results" after the step had
/// committed; it is refused before anything runs. Off, it still runs.
#[test]
fn a_step_that_turns_count_changes_on_is_refused_before_anything_runs() {
    let db = TempDb::counters(20);
    let before = sha256(&db.path);
    for (i, (pragma, code)) in [
        ("PRAGMA count_changes = 1;", 2),
        ("pragma main.COUNT_CHANGES('yes');", 2),
        ("PRAGMA count_changes = 0;", 0),
    ]
    .into_iter()
    .enumerate()
    {
        let script = db.file(
            &format!("count{i}.sql"),
            &format!("{pragma}\nUPDATE t SET counter = counter + 1;\n"),
        );
        let (got, _, err) = run_sql(&db, &script, &[]);
        assert_eq!(got, code, "{pragma}: {err}");
        if code == 2 {
            assert!(
                err.contains("statement 1") && err.contains("sets PRAGMA count_changes"),
                "{err}"
            );
            assert_eq!(sha256(&db.path), before, "{pragma} changed the database");
        }
    }
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 20);
}

/// A step that turns `query_only` on made itself fail, at its own
/// checkpoint, with a hint about the file's permissions; it is refused
/// before anything runs. Turning it off, or reading it, still runs.
#[test]
fn a_step_that_turns_query_only_on_is_refused_before_anything_runs() {
    let db = TempDb::counters(20);
    let before = sha256(&db.path);
    for (i, pragma) in [
        "PRAGMA query_only = 1;",
        "pragma main.QUERY_ONLY('On');",
        "PRAGMA query_only = yes;",
    ]
    .iter()
    .enumerate()
    {
        let script = db.file(
            &format!("on{i}.sql"),
            &format!("{pragma}\nUPDATE t SET counter = counter + 1;\n"),
        );
        let (code, _, err) = run_sql(&db, &script, &[]);
        assert_eq!(code, 2, "{pragma}: {err}");
        assert!(
            err.contains("statement 1") && err.contains("sets PRAGMA query_only"),
            "{err}"
        );
        assert!(!err.contains("write access"), "{err}");
        assert_eq!(sha256(&db.path), before, "{pragma} changed the database");
    }
    let script = db.file(
        "off.sql",
        "PRAGMA query_only = 0;\nPRAGMA query_only;\nUPDATE t SET counter = counter + 1;\n",
    );
    let (code, _, err) = run_sql(&db, &script, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 20);
}

/// SQLite reads a boolean pragma's value that starts with a digit as the
/// number its leading digits make (`1.5`, `'1x'`, hexadecimal `0x1`, all
/// on; `256`, kept in a byte, off), and a journal mode as the first one
/// whose name it begins (`of` is OFF, `MEM` MEMORY). Such spellings turned
/// `count_changes` or `query_only` on, or the journal off, past the check
/// that knew only `1`, `on` and `off`: the run then failed at its own
/// checkpoint ("Execute returned results"), or ran with no journal to roll
/// back a failed chunk. They are refused before anything runs; a value
/// SQLite reads as off still runs.
#[test]
fn pragma_values_sqlite_reads_as_on_or_unjournaled_are_refused_in_any_spelling() {
    let db = TempDb::counters(20);
    let before = sha256(&db.path);
    for (i, (pragma, said)) in [
        ("PRAGMA count_changes = 1.5;", "sets PRAGMA count_changes"),
        ("PRAGMA count_changes = 0x1;", "sets PRAGMA count_changes"),
        ("PRAGMA query_only = '1x';", "sets PRAGMA query_only"),
        ("PRAGMA journal_mode = of;", "journal_mode to OFF or MEMORY"),
        (
            "PRAGMA journal_mode = 'MEM';",
            "journal_mode to OFF or MEMORY",
        ),
        ("PRAGMA count_changes = 256;", ""),
        ("PRAGMA query_only = ' 1';", ""),
    ]
    .into_iter()
    .enumerate()
    {
        let script = db.file(
            &format!("spelled{i}.sql"),
            &format!("{pragma}\nUPDATE t SET counter = counter + 1;\n"),
        );
        let (code, _, err) = run_sql(&db, &script, &["--no-checkpoint"]);
        if said.is_empty() {
            assert_eq!(code, 0, "{pragma}: SQLite reads it as off: {err}");
            continue;
        }
        assert_eq!(code, 2, "{pragma}: {err}");
        assert!(
            err.contains("statement 1") && err.contains(said),
            "{pragma}: {err}"
        );
        assert_eq!(sha256(&db.path), before, "{pragma} changed the database");
    }
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 40);
}

/// A file as an application that registers a collation of its own
/// (Android's `LOCALIZED`) makes it: an index of `items` is ordered by
/// it, a column of `notes` is declared with it (and a unique one of
/// `tags`), an insert into `orders` adds an item by trigger, and `codes`
/// is a `WITHOUT ROWID` table keyed by it. SQLite cannot make such a
/// schema without the collation, but reads it without one, all but
/// `codes`.
fn app_collated() -> TempDb {
    let db = TempDb::empty();
    let conn = db.conn();
    conn.create_collation("LOCALIZED", |a, b| a.cmp(b))
        .expect("register the application's collation");
    conn.execute_batch(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER NOT NULL DEFAULT 0);
         CREATE INDEX items_name ON items(name COLLATE LOCALIZED);
         CREATE TABLE notes(id INTEGER PRIMARY KEY, label TEXT COLLATE LOCALIZED, n INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT NOT NULL);
         CREATE TRIGGER order_adds_item AFTER INSERT ON orders
           BEGIN INSERT INTO items(name) VALUES (new.item); END;
         CREATE TABLE other(id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         CREATE TABLE tags(code TEXT COLLATE LOCALIZED UNIQUE, n INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE codes(code TEXT PRIMARY KEY COLLATE LOCALIZED, n INTEGER) WITHOUT ROWID;
         INSERT INTO codes VALUES ('a', 1);
         INSERT INTO items(name, qty) VALUES ('pear', 1), ('apple', 2), ('fig', 3);
         INSERT INTO notes(label) VALUES ('x'), ('y');
         INSERT INTO other(v) VALUES (10), (20);
         INSERT INTO tags(code) VALUES ('a'), ('b');",
    )
    .expect("the application's schema");
    db
}

/// A step that needed a collation only the application that made the
/// file has (an index ordered by it, a column compared by it) passed the
/// check, then failed with SQLite's bare "no such collation sequence"
/// (exit 1), after the steps before it had committed. It is refused before
/// anything runs, saying what and why, with `--dry-run` and `--undo` too.
#[test]
fn a_step_that_needs_an_application_s_own_collation_is_refused_before_anything_runs() {
    let db = app_collated();
    let before = sha256(&db.path);
    for (evil, says) in [
        (
            "UPDATE items SET name = upper(name)",
            "items.items_name (LOCALIZED)",
        ),
        (
            "DELETE FROM items WHERE qty > 2",
            "items.items_name (LOCALIZED)",
        ),
        (
            "INSERT INTO orders(item) VALUES ('kiwi')",
            "items.items_name (LOCALIZED)",
        ),
        (
            "UPDATE notes SET n = 1 WHERE label = 'x'",
            "a column it compares",
        ),
        ("VACUUM", "is a VACUUM"),
        (
            // SQLite cannot read it at all ("no query solution").
            "INSERT INTO other(v) SELECT n FROM codes",
            "the PRIMARY KEY of codes (LOCALIZED) is ordered by one",
        ),
    ] {
        let plan = serde_json::json!({
            "name": "app",
            "steps": [{"sql": "UPDATE other SET v = v + 1"}, {"name": "evil", "sql": evil}]
        });
        let plan = db.file("app.json", &plan.to_string());
        for extra in [&[][..], &["--dry-run"], &["--undo"]] {
            let mut args = run_args(&db, path_str(&plan), &["--no-serve"]);
            args.extend_from_slice(extra);
            let (code, out, err) = run(&args);
            assert_eq!(code, 2, "{evil} {extra:?}: {err}");
            assert!(out.is_empty(), "{out}");
            assert!(
                err.contains("step 2 (\"evil\")")
                    && err.contains(says)
                    && err.contains("LOCALIZED")
                    && err.contains("an application registers")
                    && err.contains("batchsse cannot run it")
                    && err.contains("Nothing was run"),
                "{evil}: {err}"
            );
            assert_eq!(sha256(&db.path), before, "{evil} changed the database");
        }
    }
}

/// A `--throttle-query` that needs such a collation got SQLite's bare "no
/// such collation sequence" (or, reading a table keyed by one, "no query
/// solution"); it is refused naming the collation and what to do, exit 2,
/// the file untouched, and the query rewritten as it says runs.
#[test]
fn a_throttle_query_that_needs_an_application_s_own_collation_is_refused_by_name() {
    let db = app_collated();
    let plan = serde_json::json!({"name": "app", "steps": [{"sql": "UPDATE other SET v = v + 1"}]});
    let plan = db.file("app.json", &plan.to_string());
    let before = sha256(&db.path);
    for (query, says) in [
        ("SELECT count(*) > 5 FROM notes WHERE label = 'x'", "it"),
        (
            "SELECT count(*) > 5 FROM codes",
            "it (the PRIMARY KEY of codes (LOCALIZED) orders a WITHOUT ROWID table",
        ),
    ] {
        let flags = ["--no-serve", "--throttle-query", query];
        let (code, out, err) = run(&run_args(&db, path_str(&plan), &flags));
        assert_eq!(code, 2, "{query}: {err}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains("--throttle-query needs a collation batchsse does not have: LOCALIZED.")
                && err.contains(&format!("or it reads a table or index ordered by {says}"))
                && err.contains("an application registers")
                && err.contains("COLLATE NOCASE")
                && err.contains("leave --throttle-query out. Nothing was run"),
            "{query}: {err}"
        );
        assert_eq!(sha256(&db.path), before, "{query} changed the database");
    }
    let query = "SELECT count(*) > 5 FROM notes WHERE label COLLATE NOCASE = 'x'";
    let flags = ["--no-serve", "--throttle-query", query];
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &flags));
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(v) FROM other"), 32);
}

/// A chunk key declared with such a collation passed the check when the
/// step compared it by another (`COLLATE BINARY`), then failed at the
/// walk's first query, which orders the keys by their own collation.
#[test]
fn a_chunk_key_declared_with_an_application_s_own_collation_is_refused_before_anything_runs() {
    let db = app_collated();
    let before = sha256(&db.path);
    let plan = serde_json::json!({"steps": [{
        "sql": "UPDATE tags SET n = n + 1 WHERE code COLLATE BINARY BETWEEN :lo AND :hi",
        "chunk": {"table": "tags", "key": "code"}
    }]});
    let plan = db.file("key.json", &plan.to_string());
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("chunk.key \"code\" of tags")
            && err.contains("LOCALIZED")
            && err.contains("Chunk by rowid"),
        "{err}"
    );
    assert_eq!(sha256(&db.path), before);
}

/// Steps that leave the application's collation alone still run on its
/// file: they write other tables, or columns its index leaves out, or read
/// its tables, chunked by rowid with an undo record (the walk's count had
/// failed on such an index); `undo` takes them back, and `checkpoint` and
/// `undo list` read the file.
#[test]
fn steps_that_leave_an_application_s_own_collation_alone_still_run() {
    let db = app_collated();
    let plan = serde_json::json!({
        "name": "app",
        "steps": [
            {"sql": "UPDATE other SET v = v + 1"},
            {"sql": "UPDATE items SET qty = qty * 10 WHERE rowid BETWEEN :lo AND :hi", "chunk": {"table": "items"}},
            {"sql": "UPDATE notes SET n = n + 1"},
            {"sql": "INSERT INTO other(v) SELECT qty FROM items WHERE name = 'fig' ORDER BY name"}
        ]
    });
    let plan = db.file("app.json", &plan.to_string());
    let sums = "SELECT (SELECT sum(v) FROM other) * 1000 + (SELECT sum(qty) FROM items)";
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--dry-run"],
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64(sums), 30_006);
    run_undoable(&db, &plan);
    assert_eq!(db.query_i64(sums), 62_060);
    assert_eq!(db.query_i64("SELECT sum(n) FROM notes"), 2);
    for args in [
        &["checkpoint", "list", "--db", path_str(&db.path)][..],
        &["undo", "list", "--db", path_str(&db.path)],
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("app"), "{args:?}: {out}");
    }
    let (code, _, err) = run(&[
        "undo",
        "--db",
        path_str(&db.path),
        "--plan",
        "app",
        "--no-serve",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64(sums), 30_006);
    assert_eq!(db.query_i64("SELECT sum(n) FROM notes"), 0);
}

/// `checkpoint list` numbers steps from 1, so a step of the largest
/// integer, written into batchsse's tables by hand or by a damaged copy,
/// made it panic ("attempt to add with overflow"), in the checkpoint's
/// rows as in the TEMP rows kept for a step no row records. It lists them.
#[test]
fn checkpoint_list_of_a_step_numbered_past_any_plan_does_not_panic() {
    let db = TempDb::counters(3);
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","steps":[{"sql":"CREATE TEMP TABLE todo AS SELECT id FROM t"},{"sql":"INSERT INTO t(id) VALUES (1)"}]}"#,
    );
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(
        code, 1,
        "the second step fails, the first's record kept: {err}"
    );
    let max = i64::MAX;
    for moved in [
        format!("UPDATE batchsse_setup SET step = {max}"),
        format!("UPDATE batchsse_checkpoint SET step = {max}"),
    ] {
        db.conn().execute_batch(&moved).unwrap();
        let (code, out, err) = run(&["checkpoint", "list", "--db", path_str(&db.path)]);
        assert_eq!(code, 0, "{moved}: {err}");
        assert!(out.contains(&format!("step {max}")), "{moved}: {out}");
        assert!(!err.contains("panicked"), "{moved}: {err}");
    }
}
