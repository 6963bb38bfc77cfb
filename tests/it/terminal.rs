//! A person at a terminal: what the screen shows at the end of a run that
//! went wrong (Ctrl-C, the terminal closed, a lock held by another
//! process), on terminals narrow and wide. The run's stderr is a real
//! pseudo-terminal, so indicatif draws its bars; [`screen`] replays the
//! bytes on a small terminal model to see what is left on the screen.
#![cfg(unix)]

use crate::util::*;

/// `counters(rows)` walked in chunks of `size`, each row costing
/// `work` steps of a recursive query, so a chunk takes a while.
fn slow_plan(db: &TempDb, size: u64, work: u64) -> std::path::PathBuf {
    let sql = format!(
        "UPDATE t SET counter = counter + 1 + 0 * (WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < {work} + t.id * 0) SELECT count(*) FROM r) WHERE id BETWEEN :lo AND :hi"
    );
    let plan = serde_json::json!({
        "name": "slow",
        "steps": [
            {"name": "slow walk", "sql": sql, "chunk": {"table": "t", "key": "id", "size": size}},
            {"name": "after", "sql": "UPDATE t SET counter = counter + 1"}
        ]
    });
    db.file("slow.json", &plan.to_string())
}

/// A row of the screen that is a progress bar.
fn is_bar(row: &str) -> bool {
    row.starts_with("run  [") || row.starts_with("step [") || row.contains("] 0/2 steps")
}

/// Ctrl-C while the bars are drawn: its notice is printed above them, in
/// full, not drawn over by their next redraw, and once the run has
/// stopped no bar is left on the screen; the last lines say what happened.
#[test]
fn ctrl_c_under_the_bars_leaves_its_notice_whole_and_no_bar_behind() {
    let db = TempDb::counters(400);
    db.age();
    let plan = slow_plan(&db, 40, 50_000);
    let t = Terminal::start(
        &[
            "run",
            "--db",
            path_str(&db.path),
            "--plan",
            path_str(&plan),
            "--no-serve",
            "--batch-size",
            "40",
        ],
        100,
        &[],
    );
    t.wait_for("rows/s");
    t.signal("INT");
    let (code, got) = t.finish();
    let rows = screen(&got, 100);
    let shown = rows.join("\n");
    assert_eq!(code, 130, "{shown}");
    // In a chunk, most likely; in the moment between two, it says so.
    let notices = [
        "batchsse: interrupted; stopping, with a chunk under way rolled back (press Ctrl-C again to quit at once)",
        "batchsse: interrupted; stopping, with nothing under way to roll back (press Ctrl-C again to quit at once)",
    ];
    // 104 or 105 columns: two rows of a terminal 100 wide.
    assert!(
        rows.windows(2)
            .any(|w| notices.contains(&format!("{}{}", w[0], w[1]).as_str())),
        "the notice is not whole on the screen:\n{shown}"
    );
    assert!(
        !rows.iter().any(|r| is_bar(r)),
        "a bar is left on the screen:\n{shown}"
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with("batchsse: cancelled: 0/2 steps")),
        "{shown}"
    );
}

/// Ctrl-C typed under the bars: the `^C` the terminal echoes after the
/// last bar, which fills its line, must not leave a bar behind. Nor may
/// an Enter typed first, which the terminal would echo as a line feed,
/// a row below where the bars' next draw counts from.
#[test]
fn a_typed_ctrl_c_or_enter_under_the_bars_leaves_no_bar_behind() {
    for keys in [&b"\x03"[..], b"\r\x03"] {
        let db = TempDb::counters(400);
        db.age();
        let plan = slow_plan(&db, 40, 50_000);
        let args = run_args(&db, path_str(&plan), &["--no-serve", "--batch-size", "40"]);
        let t = Terminal::start(&args, 100, &[]);
        t.wait_for("rows/s");
        for k in keys {
            t.type_keys(&[*k]);
            std::thread::sleep(std::time::Duration::from_millis(400));
        }
        let (code, got) = t.finish();
        let rows = screen(&got, 100);
        let shown = rows.join("\n");
        assert_eq!(code, 130, "{keys:?}: {shown}");
        assert!(
            !rows.iter().any(|r| is_bar(r)),
            "{keys:?}: a bar is left on the screen:\n{shown}"
        );
    }
}

/// The terminal closed (or the SSH session dropped) mid-chunk: SIGHUP
/// stops the run as Ctrl-C does, the chunk under way rolled back, and
/// every viewer gets `finished` (a killed process would leave them a
/// stream cut short and no word of how the run ended).
#[test]
fn a_closed_terminal_cancels_the_run_and_tells_its_viewers() {
    let db = TempDb::counters(400);
    db.age();
    let plan = slow_plan(&db, 40, 50_000);
    let mut p = serving(&db, path_str(&plan), &["--batch-size", "40"]);
    let mut s = Stream::open(p.addr(), "/events", &[]);
    s.until("progress");
    p.signal("HUP");
    let last = s.rest().pop().expect("events after the hang-up");
    assert_eq!(last.event, "finished");
    assert_eq!(data(&last)["status"], "cancelled", "{}", last.data);
    assert_eq!(p.wait().code(), Some(130), "{}", p.stderr());
    // Whole chunks only: every row bumped once or not at all.
    let (once, none) = db.counter_spread();
    assert_eq!(once % 40, 0, "{once} rows bumped");
    assert_eq!(once + none, 400);
}

/// Under `nohup`, SIGHUP stays ignored: the run outlives its terminal.
#[test]
fn under_nohup_a_hang_up_leaves_the_run_going() {
    use std::os::unix::process::CommandExt;
    let db = TempDb::counters(400);
    db.age();
    let plan = slow_plan(&db, 40, 50_000);
    let args = run_args(&db, path_str(&plan), &["--batch-size", "40", "--no-serve"]);
    let mut p = Proc::start_with(&args, |c| {
        // SAFETY: only sets a signal's disposition, which is
        // async-signal-safe, between fork and exec.
        unsafe {
            c.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                Ok(())
            });
        }
    });
    let end = std::time::Instant::now() + PATIENCE;
    while !p.stderr().contains("rows/s") {
        assert!(std::time::Instant::now() < end, "{}", p.stderr());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    p.signal("HUP");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        p.child.try_wait().expect("try_wait").is_none(),
        "a hang-up under nohup stopped the run:\n{}",
        p.stderr()
    );
    assert!(!p.stderr().contains("interrupted"), "{}", p.stderr());
    p.signal("TERM");
    assert_eq!(p.wait().code(), Some(130), "{}", p.stderr());
}

/// The terminal window closed under the bars: the kernel's SIGHUP stops
/// the run as Ctrl-C does, though every write to the terminal now fails
/// (nothing may panic on it), and the viewers get `finished`.
#[test]
fn closing_the_terminal_window_under_the_bars_cancels_cleanly() {
    let db = TempDb::counters(400);
    db.age();
    let plan = slow_plan(&db, 40, 50_000);
    let args = run_args(
        &db,
        path_str(&plan),
        &["--batch-size", "40", "--listen", "127.0.0.1:0"],
    );
    let t = Terminal::start(&args, 100, &[]);
    t.wait_for("rows/s");
    let addr = t
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("batchsse: listening on http://"))
        .and_then(|a| a.trim_end_matches('/').parse().ok())
        .expect("the listening line");
    let mut s = Stream::open(addr, "/events", &[]);
    s.until("progress");
    t.hang_up();
    let last = s.rest().pop().expect("events after the hang-up");
    assert_eq!(data(&last)["status"], "cancelled", "{}", last.data);
    let (code, _) = t.finish();
    assert_eq!(code, 130);
}

const WAITING: &str = "is locked by another connection";

/// Another process holds the write lock before the run: after a second
/// the terminal says who holds it and how long the run will wait, instead
/// of showing nothing until --busy-timeout has passed; once the lock is
/// free the run goes on.
#[test]
fn a_lock_held_elsewhere_is_said_while_the_run_waits_for_it() {
    let db = TempDb::counters(100);
    db.age();
    let plan = db.file("plan.json", &counter_plan("wait", 50));
    let app = db.conn();
    app.execute_batch("BEGIN IMMEDIATE").expect("take the lock");
    let args = run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--busy-timeout", "30000"],
    );
    let mut p = Proc::start(&args);
    p.wait_stderr(WAITING);
    let said = p.stderr();
    // Only Linux tells who has the file open.
    let named = !cfg!(target_os = "linux")
        || said.contains(&format!("(open in pid {} (", std::process::id()));
    assert!(
        named && said.contains("waiting for it, at most --busy-timeout 30000 ms (Ctrl-C stops)"),
        "{said}"
    );
    app.execute_batch("COMMIT").expect("let the lock go");
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    assert_eq!(db.counter_spread(), (100, 0));
}

/// The line said while the run waits for a lock names the database as it
/// was typed, as the error does once the wait is over (it named SQLite's
/// absolute path of the file).
#[test]
fn the_lock_waiting_line_names_the_database_as_typed() {
    let db = TempDb::counters(10);
    db.file("plan.json", &counter_plan("wait", 5));
    let app = db.conn();
    app.execute_batch("BEGIN IMMEDIATE").expect("take the lock");
    let args = words("run --db test.sqlite --plan plan.json --no-serve --busy-timeout 2000");
    let mut p = spawn(&args, |c| {
        c.current_dir(db.dir.path());
    });
    let code = p.wait().code();
    let err = p.stderr();
    assert_eq!(code, Some(2), "{err}");
    let waiting = err.lines().find(|l| l.contains("waiting for it"));
    assert!(
        waiting.is_some_and(|l| l.starts_with("batchsse: test.sqlite is locked by another")),
        "{err}"
    );
    // Who holds it is still found from the name as typed.
    let holder = format!("(open in pid {} (", std::process::id());
    assert!(
        !cfg!(target_os = "linux") || waiting.is_some_and(|l| l.contains(&holder)),
        "{err}"
    );
    assert!(
        err.contains("test.sqlite is locked by another connection")
            && err.contains("still after --busy-timeout 2000 ms"),
        "{err}"
    );
    let dir = db.dir.path().to_string_lossy();
    assert!(!err.contains(&*dir), "{err}");
    app.execute_batch("ROLLBACK").expect("let the lock go");
}

/// Ctrl-C while a chunk waits for another process's lock stops the run
/// at once, as the waiting line promises, not once --busy-timeout has
/// passed (SQLite's busy loop never looked at the interrupt).
#[test]
fn ctrl_c_stops_a_run_waiting_for_a_lock_at_once() {
    let db = TempDb::counters(100);
    db.age();
    let plan = db.file("plan.json", &counter_plan("wait", 10));
    let args = run_args(
        &db,
        path_str(&plan),
        &[
            "--no-serve",
            "--busy-timeout",
            "120000",
            "--batch-size",
            "10",
            "--sleep",
            "300",
        ],
    );
    let mut p = Proc::start(&args);
    p.wait_stderr("rows/s");
    let app = db.conn();
    app.execute_batch("BEGIN IMMEDIATE").expect("take the lock");
    p.wait_stderr(WAITING);
    p.signal("INT");
    let status = p.wait_for(std::time::Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{}", p.stderr());
    app.execute_batch("COMMIT").expect("let the lock go");
    let (once, none) = db.counter_spread();
    assert!(once > 0 && once % 10 == 0 && once + none == 100, "{once}");
}

/// On terminals 40, 80 and 200 columns wide each bar is one line, the
/// run's bar naming the step and the step's bar its ETA: a bar wider than
/// the terminal wraps, and each redraw then takes two lines for it.
#[test]
fn the_bars_fit_narrow_and_wide_terminals_on_one_line_each() {
    for cols in [40u16, 80, 200] {
        let db = TempDb::counters(400);
        db.age();
        let plan = slow_plan(&db, 40, 50_000);
        let args = run_args(&db, path_str(&plan), &["--no-serve", "--batch-size", "40"]);
        let t = Terminal::start(&args, cols, &[]);
        t.wait_for("ETA ");
        let width = usize::from(cols);
        // The screen once a whole redraw has landed: the run's bar, then
        // whatever follows it.
        let end = std::time::Instant::now() + PATIENCE;
        let (rows, at) = loop {
            let rows = screen(&t.got(), width);
            let at = rows.iter().rposition(|r| r.starts_with("run "));
            if let Some(at) =
                at.filter(|&at| rows.len() > at + 1 && rows[at + 1..].concat().contains("ETA "))
            {
                break (rows, at);
            }
            assert!(std::time::Instant::now() < end, "{rows:#?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let shown = rows.join("\n");
        assert_eq!(
            rows.len(),
            at + 2,
            "{cols} columns: a bar took two lines:\n{shown}"
        );
        assert!(
            rows[at].contains("0/2 steps") && rows[at].contains("[1/2] slow"),
            "{shown}"
        );
        assert!(
            rows[at + 1].starts_with("step ") && rows[at + 1].contains("ETA "),
            "{shown}"
        );
        t.signal("INT");
        let (code, _) = t.finish();
        assert_eq!(code, 130);
    }
}

/// A demo stopped with Ctrl-C says how to go on with a command that does
/// (the demo again would refuse the kept shop, or start a fresh one), and
/// pasted into a shell that command finishes the plan; a demo whose shop
/// is deleted on exit names no way to go on.
#[test]
fn a_stopped_demo_names_a_command_that_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("my shop");
    let demo = |keep: Option<&str>| {
        let mut args = vec![
            "demo",
            "--rows",
            "4000",
            "--sleep",
            "300",
            "--no-serve",
            "--progress",
            "plain",
        ];
        args.extend(keep.map(|k| ["--keep", k]).into_iter().flatten());
        let p = Proc::start(&args);
        p.wait_stderr("rows/s");
        p.signal("INT");
        p
    };
    let mut p = demo(None);
    assert_eq!(p.wait().code(), Some(130));
    assert!(!p.stderr().contains("go on"), "{}", p.stderr());
    let mut p = demo(Some(path_str(&keep)));
    assert_eq!(p.wait().code(), Some(130));
    let err = p.stderr();
    let command = err
        .split("what committed is checkpointed: `")
        .nth(1)
        .and_then(|rest| rest.split_once("` goes on from where this run stopped"))
        .unwrap_or_else(|| panic!("no command to go on:\n{err}"))
        .0;
    let pasted = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "\"$0\" {} --no-serve",
            command.strip_prefix("batchsse ").expect(command)
        ))
        .arg(BIN)
        .output()
        .expect("bash");
    let said = String::from_utf8_lossy(&pasted.stderr);
    assert_eq!(pasted.status.code(), Some(0), "{command}: {said}");
    assert!(said.contains("resuming plan \"reprice-2026\""), "{said}");
}

/// An undo that kept more conflicts than it lists names, past the first
/// 100, a command that lists them all; pasted into a shell, it is
/// `sqlite3 FILE SQL`, and the SQL gives every one.
#[test]
fn an_undo_past_its_first_100_conflicts_names_a_command_that_lists_them_all() {
    let db = TempDb::counters(150);
    let plan = db.file("plan.json", &counter_plan("many", 50));
    run_undoable(&db, &plan);
    db.conn()
        .execute_batch("UPDATE t SET counter = 5")
        .expect("the application's change");
    let (code, _, err) = run(&[
        "undo",
        "--db",
        path_str(&db.path),
        "--plan",
        "many",
        "--no-serve",
        "--progress",
        "plain",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err.matches("; kept the application's row").count(),
        100,
        "{err}"
    );
    let command = err
        .split_once(
            "more conflicts: every one is in the table batchsse_undo_conflict; to list them: ",
        )
        .and_then(|(_, rest)| rest.lines().next())
        .unwrap_or_else(|| panic!("no command for the rest:\n{err}"));
    // The words a shell makes of it.
    let words = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -- {command}; printf '%s\\0' \"$@\""))
        .output()
        .expect("bash");
    let words: Vec<String> = String::from_utf8(words.stdout)
        .unwrap()
        .split_terminator('\0')
        .map(str::to_owned)
        .collect();
    assert_eq!(words.len(), 3, "{command}: {words:?}");
    assert_eq!(words[0], "sqlite3");
    assert_eq!(
        std::fs::canonicalize(&words[1]).unwrap(),
        std::fs::canonicalize(&db.path).unwrap()
    );
    let listed: i64 = db
        .conn()
        .query_row(&format!("SELECT count(*) FROM ({})", words[2]), [], |r| {
            r.get(0)
        })
        .unwrap_or_else(|e| panic!("{}: {e}", words[2]));
    assert_eq!(listed, 150);
}

/// A pause ended by a cancel does not say the run goes on: the line
/// before the run's last says it is no longer paused, and why.
#[test]
fn a_pause_ended_by_a_cancel_does_not_say_going_on() {
    let db = TempDb::counters(400);
    db.age();
    let plan = slow_plan(&db, 40, 50_000);
    let mut p = Proc::start(&run_args(
        &db,
        path_str(&plan),
        &[
            "--listen",
            "127.0.0.1:0",
            "--progress",
            "plain",
            "--control-token",
            "tok",
            "--batch-size",
            "40",
        ],
    ));
    let url = format!("http://{}/", p.addr());
    for (action, said) in [("pause", "batchsse: paused: "), ("cancel", "cancelled: ")] {
        let (code, _, err) = run(&["ctl", &url, action, "--control-token", "tok"]);
        assert_eq!(code, 0, "{err}");
        p.wait_stderr(said);
    }
    assert_eq!(p.wait().code(), Some(130));
    let err = p.stderr();
    assert!(
        err.contains("batchsse: no longer paused: cancelled after "),
        "{err}"
    );
    assert!(!err.contains("going on"), "{err}");
}

/// Ctrl-C typed on a terminal without bars (plain lines; the pre-run
/// check): the `^C` the terminal echoes is written over, not run into the
/// notice ("^Cbatchsse: interrupted").
#[test]
fn a_typed_ctrl_c_is_not_run_into_the_notice() {
    let db = TempDb::counters(400);
    db.age();
    let plan = slow_plan(&db, 40, 50_000);
    let args = run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--batch-size", "40", "--progress", "plain"],
    );
    let t = Terminal::start(&args, 100, &[]);
    t.wait_for("rows/s");
    t.type_keys(b"\x03");
    let (code, got) = t.finish();
    let rows = screen(&got, 100);
    assert_eq!(code, 130, "{rows:#?}");
    assert!(
        rows.iter()
            .any(|r| r.starts_with("batchsse: interrupted; stopping")),
        "{rows:#?}"
    );
    // The pre-run check, waiting for a lock.
    let app = db.conn();
    app.execute_batch("BEGIN IMMEDIATE").expect("take the lock");
    let t = Terminal::start(&args, 100, &[]);
    t.wait_for("is locked by another connection");
    t.type_keys(b"\x03");
    let (code, got) = t.finish();
    let rows = screen(&got, 100);
    assert_eq!(code, 130, "{rows:#?}");
    assert_eq!(
        rows.last().map(String::as_str),
        Some("batchsse: interrupted during the pre-run check; nothing was written"),
        "{rows:#?}"
    );
}

/// A step named with joined emoji (👨‍👩‍👧‍👦, which the bars measure two
/// columns wide and many terminals draw eight) and CJK: the bar still
/// fits its line, and the lines above the bars are all left whole.
#[test]
fn joined_emoji_and_cjk_in_a_name_keep_the_bars_on_their_lines() {
    let db = TempDb::counters(400);
    db.age();
    let family = "👨\u{200d}👩\u{200d}👧\u{200d}👦";
    let name = format!("émoji {family} family step {family}{family}{family} 家族 and more text");
    let sql = "UPDATE t SET counter = counter + 1 + 0 * (WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 50000 + t.id * 0) SELECT count(*) FROM r) WHERE id BETWEEN :lo AND :hi";
    let plan = serde_json::json!({"name": "emoji", "steps": [
        {"name": "first", "sql": "UPDATE t SET counter = 0 WHERE id = 1"},
        {"name": name, "sql": sql, "chunk": {"table": "t", "key": "id", "size": 40}}
    ]});
    let plan = db.file("emoji.json", &plan.to_string());
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--batch-size", "40"]);
    let t = Terminal::start(&args, 80, &[]);
    t.wait_for("ETA ");
    let end = std::time::Instant::now() + PATIENCE;
    let rows = loop {
        let rows = screen(&t.got(), 80);
        let at = rows.iter().rposition(|r| r.starts_with("run "));
        if at.is_some_and(|at| rows.len() > at + 1 && rows[at + 1..].concat().contains("ETA ")) {
            break rows;
        }
        assert!(std::time::Instant::now() < end, "{rows:#?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let at = rows.iter().rposition(|r| r.starts_with("run ")).unwrap();
    assert!(
        rows.len() == at + 2 && rows[at + 1].starts_with("step ["),
        "a bar took two lines:\n{}",
        rows.join("\n")
    );
    t.signal("INT");
    let (code, got) = t.finish();
    assert_eq!(code, 130);
    let rows = screen(&got, 80);
    let shown = rows.join("\n");
    for line in [
        "batchsse: plan \"emoji\" on test.sqlite: 2 steps",
        "[1/2] first: done",
        "[2/2] émoji",
        "batchsse: interrupted; stopping",
        "batchsse: what committed is checkpointed",
    ] {
        assert!(
            rows.iter().any(|r| r.starts_with(line)),
            "{line:?} is gone:\n{shown}"
        );
    }
    assert!(
        !rows.iter().any(|r| is_bar(r) || r.starts_with("step ")),
        "{shown}"
    );
}

/// A chunk that fails names its keys, so the row that broke it can be
/// found: the last lines say where to look, not only what SQLite said.
#[test]
fn a_failed_chunk_names_its_keys() {
    // The first chunk of a rowid walk is bound from the smallest integer,
    // but named by the keys it holds.
    for (bad, keys, spread) in [(37, "31 to 40", (30, 70)), (7, "1 to 10", (0, 100))] {
        let db = TempDb::counters(100);
        db.age();
        let plan = serde_json::json!({"name": "breaks", "steps": [{
            "name": "bump",
            "sql": format!("UPDATE t SET counter = CASE WHEN id = {bad} THEN NULL ELSE counter + 1 END WHERE id BETWEEN :lo AND :hi"),
            "chunk": {"table": "t", "key": "id", "size": 10}
        }]});
        let plan = db.file("breaks.json", &plan.to_string());
        let (code, _, err) = run(&run_args(
            &db,
            path_str(&plan),
            &["--no-serve", "--batch-size", "10", "--progress", "plain"],
        ));
        assert_eq!(code, 1, "{err}");
        let said =
            format!("failed: NOT NULL constraint failed: t.counter (in the chunk of id {keys})");
        assert!(
            err.lines()
                .any(|l| l.starts_with("[1/1] bump: FAILED after ") && l.ends_with(&said)),
            "{err}"
        );
        assert_eq!(db.counter_spread(), spread);
    }
}

/// A Ctrl-\\ typed under the bars (SIGQUIT, whose default ends the
/// process with no handler of its own) leaves the terminal echoing: a
/// shell without job control (`sh`, a script) does not put its settings
/// back after a program killed by a signal.
#[test]
fn a_ctrl_backslash_under_the_bars_leaves_the_terminal_echoing() {
    let db = TempDb::counters(400);
    db.age();
    let plan = slow_plan(&db, 40, 50_000);
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--batch-size", "40"]);
    let t = Terminal::start_then(&args, 100, "stty -a <&2 >&2");
    t.wait_for("rows/s");
    t.type_keys(b"\x1c");
    let (code, got) = t.finish();
    let text = String::from_utf8_lossy(&got);
    assert_eq!(code, 128 + libc::SIGQUIT, "{text}");
    let stty = text.rsplit_once("speed ").map_or("", |(_, s)| s);
    let words: Vec<&str> = stty.split_whitespace().collect();
    assert!(
        words.contains(&"echo") && !words.contains(&"-echo"),
        "{text}"
    );
}

/// The echo the bars turn off comes back however the run ends: finished,
/// stopped by Ctrl-C, or quit at once by a second Ctrl-C (an exit that
/// drops nothing). `stty` run on the same terminal afterwards says
/// `echo`, not `-echo`, else the person's next typing would be invisible.
#[test]
fn the_terminal_echoes_again_however_the_run_ends() {
    let echoing = |got: &[u8]| {
        let text = String::from_utf8_lossy(got);
        let stty = text.rsplit_once("speed ").map(|(_, s)| s.to_owned());
        let stty = stty.unwrap_or_else(|| panic!("no stty output:\n{text}"));
        let words: Vec<&str> = stty.split_whitespace().collect();
        assert!(
            words.contains(&"echo") != words.contains(&"-echo"),
            "{stty}"
        );
        words.contains(&"echo")
    };
    let db = TempDb::counters(400);
    db.age();
    let plan = slow_plan(&db, 40, 50_000);
    let flags = [
        "--no-serve",
        "--batch-size",
        "40",
        "--busy-timeout",
        "60000",
    ];
    let args = run_args(&db, path_str(&plan), &flags);
    // Stopped by a Ctrl-C typed on the terminal.
    let t = Terminal::start_then(&args, 100, "stty -a <&2 >&2");
    t.wait_for("rows/s");
    t.type_keys(b"\x03");
    let (code, got) = t.finish();
    assert_eq!(code, 130, "{}", String::from_utf8_lossy(&got));
    assert!(echoing(&got), "stopped: the echo is back");
    // Quit at once by a second, while the run's first read waits for a
    // lock (as in `a_second_ctrl_c_quits_at_once_without_committing`).
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut gated = args.clone();
    gated.extend(["--listen", &listen, "--wait-for-clients", "1"]);
    gated.retain(|a| *a != "--no-serve");
    let t = Terminal::start_then(&gated, 100, "stty -a <&2 >&2");
    t.wait_for("0/2 steps");
    let holder = db.conn();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut s = Stream::open(listen.parse().unwrap(), "/events", &[]);
    s.until("start");
    std::thread::sleep(std::time::Duration::from_millis(300));
    t.type_keys(b"\x03");
    std::thread::sleep(std::time::Duration::from_millis(300));
    t.type_keys(b"\x03");
    let (code, got) = t.finish();
    holder.execute_batch("ROLLBACK").unwrap();
    let text = String::from_utf8_lossy(&got);
    assert_eq!(code, 130, "{text}");
    assert!(text.contains("quitting now"), "{text}");
    assert!(echoing(&got), "quit at once: the echo is back");
    // Finished.
    let db = TempDb::counters(40);
    let plan = slow_plan(&db, 40, 1_000);
    let args = run_args(&db, path_str(&plan), &["--no-serve"]);
    let t = Terminal::start_then(&args, 100, "stty -a <&2 >&2");
    let (code, got) = t.finish();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&got));
    assert!(echoing(&got), "finished: the echo is back");
}

/// What the last bar drawn before `of` counted: "5" for `/5 steps  ` in
/// "run  [====] 5/5 steps  00:00:00", "1,900" for `/2,000 rows`. The
/// terminal's bytes, every frame included: the bars are cleared at the
/// end, but each frame was on the screen until the next.
fn last_drawn<'a>(text: &'a str, of: &str) -> Option<&'a str> {
    let before = &text[..text.rfind(of)?];
    let start = before
        .rfind(|c: char| !c.is_ascii_digit() && c != ',')
        .map_or(0, |i| i + 1);
    Some(&before[start..])
}

/// A plan run again finds every step applied: its five steps end skipped
/// within a few milliseconds, well under the run bar's redraw (its clock's
/// tick), and the bar was last drawn at "0/5 steps" under five "skipped"
/// lines. Each step's end draws it at its true count. (Without that, a
/// tick that happens to land after the last step draws it right: the
/// test can pass by chance then, never fail by chance now.)
#[test]
fn a_plan_run_again_leaves_its_bar_at_every_step_skipped() {
    let db = TempDb::counters(50);
    db.age();
    let step = |i: u32| {
        let sql = format!("UPDATE t SET counter = counter + 1 WHERE id = {i}");
        serde_json::json!({"name": format!("s{i}"), "sql": sql})
    };
    let steps: Vec<_> = (1..=5).map(step).collect();
    let plan = serde_json::json!({"name": "again", "steps": steps}).to_string();
    let plan = db.file("again.json", &plan);
    let args = run_args(&db, path_str(&plan), &["--no-serve"]);
    let (code, _, err) = run(&[&args[..], &["--progress", "none"]].concat());
    assert_eq!(code, 0, "{err}");
    let (code, text) = run_on_terminal(&args);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("[5/5] s5: skipped (already applied)"),
        "{text}"
    );
    // Two spaces: the bar, not the final line ("5/5 steps, 0 rows").
    assert_eq!(last_drawn(&text, "/5 steps  "), Some("5"), "{text}");
}

/// A walk of 2,000 rows in chunks of 10 ends in a few tens of
/// milliseconds, its chunks far faster than the bars' 20 draws a second:
/// the step's bar was last drawn short of its end ("1,900/2,000 rows")
/// and the run's at "0/2 steps" under the step's "done" line. Each bar is
/// drawn at its true count as the step ends.
#[test]
fn a_fast_walk_leaves_its_bars_at_every_row_and_step_done() {
    let db = TempDb::counters(2000);
    db.age();
    let plan = serde_json::json!({
        "name": "fast",
        "steps": [
            {"name": "walk", "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
             "chunk": {"table": "t", "key": "id", "size": 10}},
            {"name": "after", "sql": "UPDATE t SET counter = counter + 1 WHERE id = 1"}
        ]
    });
    let plan = db.file("fast.json", &plan.to_string());
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--batch-size", "10"]);
    let (code, text) = run_on_terminal(&args);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("[1/2] walk: done, 2,000 rows changed"),
        "{text}"
    );
    assert_eq!(last_drawn(&text, "/2,000 rows"), Some("2,000"), "{text}");
    assert_eq!(last_drawn(&text, "/2 steps  "), Some("2"), "{text}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 2001);
}

/// Paused (here by the pause file), the step's bar no longer shows the
/// rate and ETA from before the pause, which stood still on the screen
/// for as long as it lasted; the next chunk after it gives them again.
#[test]
fn a_paused_steps_bar_says_paused_instead_of_its_old_eta() {
    let db = TempDb::counters(400);
    db.age();
    let plan = slow_plan(&db, 40, 50_000);
    let hold = db.dir.path().join("hold");
    let flags = [
        "--no-serve",
        "--batch-size",
        "40",
        "--pause-file",
        path_str(&hold),
    ];
    let t = Terminal::start(&run_args(&db, path_str(&plan), &flags), 100, &[]);
    t.wait_for("ETA");
    std::fs::write(&hold, "").unwrap();
    t.wait_for("batchsse: throttled (pause-file)");
    // Past the bars' next draw.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let rows = screen(&t.got(), 100);
    let bar = rows.iter().rev().find(|r| r.starts_with("step ["));
    assert!(
        bar.is_some_and(|b| b.ends_with("paused") && !b.contains("ETA") && !b.contains("rows/s")),
        "{bar:?} in:\n{}",
        rows.join("\n")
    );
    // The run's bar says so too, not "throttled".
    assert!(
        rows.iter()
            .rev()
            .find(|r| r.starts_with("paused ["))
            .is_some(),
        "{}",
        rows.join("\n")
    );
    // Resumed: the word goes, before the next chunk (a slow one) ends.
    std::fs::remove_file(&hold).unwrap();
    t.wait_for("batchsse: no longer throttled (pause-file)");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let rows = screen(&t.got(), 100);
    let bar = rows.iter().rev().find(|r| r.starts_with("step ["));
    assert!(bar.is_some_and(|b| !b.ends_with("paused")), "{bar:?}");
    t.signal("INT");
    let (code, got) = t.finish();
    assert_eq!(code, 130, "{}", screen(&got, 100).join("\n"));
}
