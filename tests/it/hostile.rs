//! What a hostile user tries: text that would pass for a GitHub workflow
//! command, floods of live commands, a server that never stops talking,
//! and flags and bodies that look harmless but are not.

use serde_json::Value;

use crate::util::*;

/// The lines GitHub would read as workflow commands: every physical line
/// (the runner splits on CR and LF alike) that starts with `::`, leading
/// blanks ignored, or that holds the older `##[` form anywhere (the runner
/// tries that form on every line that is not a `::` command, and looks for
/// it anywhere in the line).
fn commands(log: &str) -> Vec<&str> {
    log.split(['\n', '\r'])
        .filter(|l| l.trim_start().starts_with("::") || l.contains("##["))
        .collect()
}

/// A table of two rows whose names, and whose trigger's message, carry
/// CR, LF, `%` and `::`: the first step works, the second fails.
fn injecting() -> (TempDb, std::path::PathBuf) {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INT NOT NULL DEFAULT 0);
         INSERT INTO t(id) VALUES (1), (2);
         CREATE TABLE u(id INTEGER PRIMARY KEY, v INT);
         INSERT INTO u VALUES (1, 0);
         CREATE TRIGGER no_u BEFORE UPDATE ON u BEGIN
           SELECT RAISE(ABORT, 'refused 100%
::error::from-trigger::x');
         END;",
    );
    let plan = serde_json::json!({
        "name": "inject",
        "steps": [
            {"name": "bump\n::error::name-lf", "sql": "UPDATE t SET n = n + 1"},
            {"name": "touch u 50%\r::warning::name-cr\n  ::notice::indented", "sql": "UPDATE u SET v = 1"},
        ]
    });
    let path = db.file("plan.json", &plan.to_string());
    (db, path)
}

/// A fatal error in github mode, and all that stderr holds: the one
/// command `::error::batchsse: …`, the message escaped into it (which the
/// runner takes as a whole: it looks for `##[` only in a line that is not
/// a `::` command). Its text, for the caller to check.
fn only_the_fatal_error(err: &str) -> &str {
    assert_eq!(commands(err).len(), 1, "{err}");
    let line = err.trim_end_matches('\n');
    assert!(!line.contains(['\n', '\r']), "{err}");
    line.strip_prefix("::error::batchsse: ")
        .unwrap_or_else(|| panic!("not one error annotation: {err}"))
}

/// Exactly the commands batchsse means for this plan: a group per step,
/// its end, and one error annotation for the failed step, whose escaped
/// message still carries the trigger's words.
fn assert_only_meant_commands(log: &str) {
    let cmds = commands(log);
    let kinds: Vec<&str> = cmds
        .iter()
        .map(|c| match c {
            c if c.starts_with(r"::group::[1/2] bump\n::error::name-lf") => "group 1",
            c if c.starts_with(r"::group::[2/2] touch u 50%25\r::warning::name-cr\n") => "group 2",
            &"::endgroup::" => "endgroup",
            c if c.starts_with("::error title=step 2 (touch u 50%25%0D%3A%3Awarning") => "error",
            other => panic!("a command batchsse did not mean: {other:?} in:\n{log}"),
        })
        .collect();
    assert_eq!(
        kinds,
        ["group 1", "endgroup", "group 2", "endgroup", "error"],
        "{log}"
    );
    let error = cmds[4];
    assert!(
        error.ends_with(r": refused 100%25\n::error::from-trigger::x"),
        "{error}"
    );
    // The words are still there for a person, one line each.
    assert!(log.contains("from-trigger"), "{log}");
    assert!(log.contains("name-lf"), "{log}");
}

#[test]
fn in_github_mode_no_name_or_error_can_start_a_workflow_command() {
    let (db, plan) = injecting();
    let summary = db.dir.path().join("summary.md");
    let mut p = spawn(
        &run_args(
            &db,
            path_str(&plan),
            &["--no-serve", "--no-checkpoint", "--progress", "github"],
        ),
        |c| {
            c.env("GITHUB_STEP_SUMMARY", &summary);
        },
    );
    assert_eq!(p.wait().code(), Some(1), "{}", p.stderr());
    assert_only_meant_commands(&p.stderr());
    // The summary's table keeps its shape: every row has the header's
    // five cells, whatever the names held.
    let md = std::fs::read_to_string(&summary).unwrap();
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(rows.len(), 4, "{md}");
    for row in rows {
        let bars = row.matches('|').count() - row.matches("\\|").count();
        assert_eq!(bars, 6, "{row:?} in:\n{md}");
    }
}

#[test]
fn watch_in_github_mode_is_as_safe_as_the_run() {
    let (db, plan) = injecting();
    let run = serving(&db, path_str(&plan), &["--no-checkpoint", "--linger", "30"]);
    let url = format!("http://{}/", run.addr());
    let (code, _, err) = crate::util::run(&["watch", &url, "--progress", "github"]);
    assert_eq!(code, 1, "{err}");
    assert_only_meant_commands(&err);
    run.signal("TERM");
}

/// A CR or LF in a step's name is shown as `\r` or `\n` by every
/// terminal mode, the run's and `watch`'s: the name stays on its line, and
/// no line starts with what followed the break.
#[test]
fn a_line_break_in_a_step_name_keeps_the_name_on_its_line() {
    let (db, plan) = injecting();
    let lf = r"bump\n::error::name-lf";
    let cr = r"touch u 50%\r::warning::name-cr\n  ::notice::indented";
    let mut said = Vec::new();
    for mode in ["plain", "bar"] {
        let flags = ["--no-serve", "--no-checkpoint", "--progress", mode];
        let (code, _, err) = crate::util::run(&run_args(&db, path_str(&plan), &flags));
        assert_eq!(code, 1, "{mode}: {err}");
        said.push((mode, err));
    }
    let run = serving(&db, path_str(&plan), &["--no-checkpoint", "--linger", "30"]);
    let url = format!("http://{}/", run.addr());
    let (code, _, err) = crate::util::run(&["watch", &url, "--progress", "plain"]);
    assert_eq!(code, 1, "{err}");
    run.signal("TERM");
    said.push(("watch", err));
    for (mode, err) in said {
        assert!(err.contains(&format!("[1/2] {lf}: done")), "{mode}: {err}");
        assert!(
            err.contains(&format!("[2/2] {cr}: FAILED")),
            "{mode}: {err}"
        );
        assert!(
            err.contains(&format!("step 2 (\"{cr}\") failed")),
            "{mode}: {err}"
        );
        for line in err.lines() {
            assert!(
                !["::error::name-lf", "::warning::name-cr", "  ::notice"]
                    .iter()
                    .any(|broken| line.starts_with(broken)),
                "{mode}: a name broke its line: {line:?} in:\n{err}"
            );
        }
    }
}

/// A plan file whose name holds a line break is named on one line by the
/// messages about it, a JSON plan's and a SQL script's alike.
#[test]
fn a_line_break_in_a_plan_file_name_keeps_its_message_on_one_line() {
    let db = TempDb::counters(3);
    let plan = db.file("bad\nplan.json", r#"{"steps": ["#);
    let script = db.file("bad\rscript.sql", ".bail on\nUPDATE t SET counter = 1;");
    for (how, file, said) in [
        ("--plan", plan, r"invalid plan bad\nplan.json at line 1"),
        (
            "--sql",
            script,
            r"bad\rscript.sql: line 1 is a command of the sqlite3 shell",
        ),
    ] {
        let args = [
            "run",
            "--db",
            path_str(&db.path),
            how,
            path_str(&file),
            "--no-serve",
        ];
        let (code, _, err) = crate::util::run(&args);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(said), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

/// Names in messages are quoted as written: a joined emoji, an accent or
/// a double quote reads as itself, not as Rust's `\u{200d}` or `\"`.
#[test]
fn names_in_messages_read_as_written() {
    let db = TempDb::counters(3);
    let family = "👨\u{200d}👩\u{200d}👧";
    let (plan, step) = (format!("café {family}"), format!("say \"hi\" {family}"));
    let chunked = |table: &str| {
        serde_json::json!({"name": plan, "steps": [
            {"name": step, "sql": "UPDATE t SET counter = 1 WHERE id BETWEEN :lo AND :hi",
             "chunk": {"table": table}},
            {"name": format!("dup {family}"), "sql": "INSERT INTO t(id) VALUES (1)"}
        ]})
        .to_string()
    };
    let bad = db.file("bad.json", &chunked("naïve"));
    let (code, _, err) = crate::util::run(&run_args(&db, path_str(&bad), &["--no-serve"]));
    assert_eq!(code, 2, "{err}");
    let said = format!("step 1 ('{step}'): chunk.table \"naïve\" is not a table");
    assert!(err.contains(&said), "{err}");
    let good = db.file("good.json", &chunked("t"));
    let (code, _, err) = crate::util::run(&run_args(&db, path_str(&good), &["--no-serve"]));
    assert_eq!(code, 1, "{err}");
    let said = format!("step 2 (\"dup {family}\") failed: UNIQUE");
    assert!(err.contains(&said), "{err}");
    let path = path_str(&db.path);
    let (code, out, err) = crate::util::run(&["checkpoint", "list", "--db", path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("plan \"{plan}\": 1 step")), "{out}");
    assert!(out.contains(&format!("step 1 '{step}': done")), "{out}");
    let (code, _, e) = crate::util::run(&["checkpoint", "clear", "--db", path, "--plan", "x"]);
    assert_eq!(code, 2, "{e}");
    assert!(e.contains(&format!("recorded plans: \"{plan}\" (")), "{e}");
    for text in [err, out, e] {
        assert!(!text.contains("\\u{") && !text.contains("\\\""), "{text}");
    }
}

#[test]
fn the_older_command_form_inside_a_name_or_an_error_is_not_a_command_in_github_mode() {
    let db = TempDb::with_sql(
        "CREATE TABLE u(id INTEGER PRIMARY KEY, v INT);
         INSERT INTO u VALUES (1, 0);
         CREATE TRIGGER no_u BEFORE UPDATE ON u BEGIN
           SELECT RAISE(ABORT, 'refused ##[stop-commands]from-trigger');
         END;",
    );
    let plan = db.file(
        "plan.json",
        &serde_json::json!({"name": "old ##[add-mask]plan-name", "steps": [
            {"name": "a ##[warning]name-warning", "sql": "UPDATE u SET v = 1"}
        ]})
        .to_string(),
    );
    let (code, _, err) = crate::util::run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--no-checkpoint", "--progress", "github"],
    ));
    assert_eq!(code, 1, "{err}");
    let old_form: Vec<&str> = commands(&err)
        .into_iter()
        .filter(|l| !l.trim_start().starts_with("::"))
        .collect();
    assert_eq!(old_form, Vec::<&str>::new(), "{err}");
    for words in ["plan-name", "name-warning", "from-trigger"] {
        assert!(err.contains(words), "the words are still shown: {err}");
    }
    // Nor in an error that echoes the SQL, before anything runs.
    let bad = db.file(
        "bad.json",
        &serde_json::json!({"name": "bad", "steps": [
            {"name": "s", "sql": "UPDATE \"x ##[error]check\" SET v = 1"}
        ]})
        .to_string(),
    );
    let (code, _, err) = crate::util::run(&run_args(
        &db,
        path_str(&bad),
        &["--no-serve", "--progress", "github"],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("check"), "{err}");
    assert!(
        only_the_fatal_error(&err).contains("x ##[error]check"),
        "{err}"
    );
}

/// In a GitHub Actions job, stderr is the job's log whatever `--progress`
/// says: the README's own recipe runs `--progress json` (its errors on
/// stderr), and a job may force `--progress plain`. No text may start a
/// command there either.
#[test]
fn in_github_actions_no_text_starts_a_command_whatever_the_progress_mode() {
    let (db, plan) = injecting();
    for mode in ["plain", "json", "none", "bar"] {
        let mut p = spawn(
            &run_args(
                &db,
                path_str(&plan),
                &["--no-serve", "--no-checkpoint", "--progress", mode],
            ),
            |c| {
                c.env("GITHUB_ACTIONS", "true");
            },
        );
        assert_eq!(p.wait().code(), Some(1), "{mode}: {}", p.stderr());
        let err = p.stderr();
        assert_eq!(commands(&err), Vec::<&str>::new(), "{mode}: {err}");
        if mode != "json" {
            assert!(err.contains("from-trigger"), "{mode}: {err}");
        }
    }
    let bad = db.file(
        "bad.json",
        &serde_json::json!({"name": "bad", "steps": [
            {"name": "s", "sql": "UPDATE \"no\n::error::check-lf\" SET x = 1"}
        ]})
        .to_string(),
    );
    let before = db.bytes();
    for mode in ["plain", "json"] {
        let (code, _, err) = crate::util::run_with_env(
            &run_args(&db, path_str(&bad), &["--no-serve", "--progress", mode]),
            None,
            &[("GITHUB_ACTIONS", "true")],
        );
        assert_eq!(code, 2, "{mode}: {err}");
        assert!(err.contains("check-lf"), "{mode}: {err}");
        let text = only_the_fatal_error(&err);
        assert!(text.contains("no%0A::error::check-lf"), "{mode}: {err}");
    }
    assert_eq!(db.bytes(), before);
    // Any command's error, not only run's and watch's.
    let missing = db.dir.path().join("gone\n::error::path-lf.sqlite");
    for args in [
        vec!["undo", "--db", path_str(&missing), "--plan", "p"],
        vec!["checkpoint", "list", "--db", path_str(&missing)],
    ] {
        let (code, _, err) = crate::util::run_with_env(&args, None, &[("GITHUB_ACTIONS", "true")]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("path-lf"), "{err}");
        let text = only_the_fatal_error(&err);
        // The path is shown on its line, its line feed as `\n`.
        assert!(text.contains(r"gone\n::error::path-lf"), "{args:?}: {err}");
    }
}

#[test]
fn a_refused_plan_that_echoes_its_sql_starts_no_command_in_github_mode() {
    let db = TempDb::with_sql("CREATE TABLE t(id INTEGER PRIMARY KEY);");
    let plan = db.file(
        "plan.json",
        &serde_json::json!({"name": "bad", "steps": [
            {"name": "s", "sql": "UPDATE \"no\n::error::check-lf\r::warning::check-cr\" SET x = 1"}
        ]})
        .to_string(),
    );
    let before = db.bytes();
    let (code, _, err) = crate::util::run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--progress", "github"],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("check-lf"), "the error still names it: {err}");
    let text = only_the_fatal_error(&err);
    assert!(
        text.contains("no%0A::error::check-lf%0D::warning::check-cr"),
        "{err}"
    );
    assert_eq!(db.bytes(), before);
}

const TOKEN: &str = "c0ntrol";

/// `POST /control` with `authorization` (a whole header value) and `body`.
fn control(addr: std::net::SocketAddr, authorization: &str, body: &str) -> Response {
    let req = format!(
        "POST /control HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Authorization: {authorization}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw(addr, req.as_bytes())
}

/// A run held at the gate (nothing written) until a stream client comes,
/// with live control on and the log compacting at `compact_at` entries.
fn held(compact_at: &str, progress: &str, extra: &[&str]) -> (TempDb, Proc) {
    let db = TempDb::counters(500);
    let plan = db.file("plan.json", &counter_plan("steer", 50));
    let mut args = run_args(&db, path_str(&plan), &["--progress", progress]);
    args.extend(words(
        "--listen 127.0.0.1:0 --wait-for-clients 1 --batch-size 50",
    ));
    args.extend(["--control-token", TOKEN]);
    args.extend_from_slice(extra);
    let compact_at = compact_at.to_owned();
    let p = Proc::start_with(&args, move |c| {
        c.env("BATCHSSE_LOG_COMPACT_AT", compact_at);
    });
    (db, p)
}

/// The `control` events of a late client's replay up to id `last` (the
/// client also opens the gate).
fn late_controls(addr: std::net::SocketAddr, last: u64) -> Vec<Value> {
    let mut s = Stream::open(addr, "/events", &[]);
    let mut controls = Vec::new();
    while let Some(e) = s.next_event() {
        let id = id(&e);
        if e.event == "control" {
            controls.push(data(&e));
        }
        if id >= last {
            break;
        }
    }
    controls
}

#[test]
fn a_flood_of_set_commands_leaves_a_bounded_replay_with_the_latest_pace() {
    let (_db, p) = held("64", "none", &[]);
    let addr = p.addr();
    let bearer = format!("Bearer {TOKEN}");
    for n in 0..400 {
        let r = control(addr, &bearer, &format!("{{\"sleep_ms\": {n}}}"));
        assert_eq!(r.status, 200, "{}", r.text());
        if n == 200 {
            let r = control(addr, &bearer, r#"{"pause": true}"#);
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    let last = get(addr, "/status", &[]).json()["last_event_id"]
        .as_u64()
        .unwrap();
    assert!(last > 400, "every command was logged: {last}");
    let controls = late_controls(addr, last);
    // Less than the 64 entries a compaction waits for, the latest set
    // before them and the pause: 401 without compaction.
    assert!(
        controls.len() <= 66,
        "{} control events replayed",
        controls.len()
    );
    assert!(
        controls.iter().any(|c| c["action"] == "pause"),
        "the pause is kept"
    );
    assert_eq!(controls.last().unwrap()["settings"]["sleep_ms"], 399);
}

/// Pauses and resumes sent at once. Each command set its pause after its
/// `control` event was logged, outside the lock that orders the events,
/// so an earlier command could set its value last: `/status` (which
/// follows the events) said running while the run stayed paused, or
/// paused while it ran on.
#[test]
fn pauses_and_resumes_sent_at_once_leave_the_run_as_the_last_event_says() {
    let db = TempDb::counters(100_000);
    let plan = db.file("plan.json", &counter_plan("racing", 10));
    let flags = [
        "--batch-size",
        "10",
        "--sleep",
        "20",
        "--control-token",
        TOKEN,
    ];
    let p = serving(&db, path_str(&plan), &flags);
    let (addr, bearer) = (p.addr(), format!("Bearer {TOKEN}"));
    let mut rounds = 0;
    let mismatch = loop {
        let at_once = std::sync::Barrier::new(16);
        std::thread::scope(|s| {
            for n in 0..16 {
                let (at_once, bearer) = (&at_once, &bearer);
                s.spawn(move || {
                    at_once.wait();
                    control(addr, bearer, &format!("{{\"pause\": {}}}", n % 2 == 0))
                });
            }
        });
        // Time for the run to reach a chunk boundary and wait there, or not.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let status = get(addr, "/status", &[]).json();
        if status["paused"] != (status["throttled"] == "paused") {
            break Some(status);
        }
        rounds += 1;
        if rounds == 30 {
            break None;
        }
    };
    control(addr, &bearer, r#"{"cancel": true}"#);
    assert_eq!(mismatch, None, "after {rounds} rounds");
}

/// Pause and resume flapping: old ones compact to the latest, and a late
/// client's replay still ends in the run's state, as `/status` says it.
#[test]
fn a_flood_of_pauses_and_resumes_leaves_a_bounded_replay_that_ends_paused() {
    let (_db, p) = held("64", "none", &[]);
    let addr = p.addr();
    let bearer = format!("Bearer {TOKEN}");
    for n in 0..401 {
        let body = format!("{{\"pause\": {}}}", n % 2 == 0);
        let r = control(addr, &bearer, &body);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let status = get(addr, "/status", &[]).json();
    assert_eq!(status["paused"], true, "{status}");
    let last = status["last_event_id"].as_u64().unwrap();
    let actions: Vec<String> = late_controls(addr, last)
        .iter()
        .map(|c| c["action"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        actions.len() <= 65,
        "{} control events replayed",
        actions.len()
    );
    assert_eq!(
        actions.last().map(String::as_str),
        Some("pause"),
        "{actions:?}"
    );
}

/// A server on a free loopback port that answers its first request with a
/// 200 JSON body of `size` bytes (one object with a long string), written
/// until the reader hangs up; the thread returns how much it wrote.
fn talkative(size: usize) -> (String, std::thread::JoinHandle<usize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        let mut head = [0u8; 4096];
        let _ = std::io::Read::read(&mut tcp, &mut head);
        let mut written = 0;
        let mut send = |b: &[u8]| {
            let ok = std::io::Write::write_all(&mut tcp, b).is_ok();
            written += b.len();
            ok
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n{{\"pad\":\""
        );
        let pad = vec![b'x'; 64 * 1024];
        let mut left = size - 10;
        let mut ok = send(head.as_bytes());
        while ok && left > 0 {
            let n = left.min(pad.len());
            ok = send(&pad[..n]);
            left -= n;
        }
        if ok {
            send(b"\"}");
        }
        written
    });
    (url, t)
}

#[test]
fn ctl_reads_at_most_a_mebibyte_of_answer() {
    let size = 64 << 20;
    let (url, server) = talkative(size);
    let (code, out, err) = crate::util::run(&["ctl", &url, "pause", "--control-token", TOKEN]);
    assert_eq!(code, 3, "stdout {out:.200} stderr {err:.400}");
    assert!(err.contains("more than 1024 KiB"), "{err:.400}");
    assert!(server.join().unwrap() < size, "the rest was never read");
}

/// A plan that would change every row, and its database's bytes.
fn untouched_run(flags: &[&str]) -> (i32, String) {
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("p", 5));
    let before = db.bytes();
    let mut args = run_args(&db, path_str(&plan), &["--listen", "127.0.0.1:0"]);
    args.extend_from_slice(flags);
    let (code, _, err) = crate::util::run(&args);
    assert_eq!(db.bytes(), before, "{flags:?}: {err}");
    (code, err)
}

#[test]
fn server_flags_that_would_open_a_hole_are_refused_before_anything_runs() {
    let long = "t".repeat(20_000);
    for (flags, says) in [
        (vec!["--allow-host", ""], "--allow-host \"\""),
        (vec!["--allow-host", "http://proxy/"], "no scheme"),
        (
            vec!["--control-token", long.as_str()],
            "--control-token (or",
        ),
        (vec!["--token", long.as_str()], "--token (or"),
        (
            vec!["--token", "same", "--control-token", "same"],
            "same as --token",
        ),
    ] {
        let (code, err) = untouched_run(&flags);
        assert_eq!(code, 2, "{flags:.60?}: {err}");
        assert!(err.contains(says), "{flags:.60?}: {err}");
        assert!(!err.contains(&long), "the secret is not echoed");
    }
}

#[test]
fn the_longest_token_taken_can_be_sent() {
    let token = "t".repeat(4096);
    let (_db, p) = held("32768", "none", &["--token", &token]);
    let addr = p.addr();
    let status = get(
        addr,
        "/status",
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(status.status, 200, "{}", status.text());
    let r = get(addr, &format!("/status?token={token}"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn the_bearer_scheme_may_come_in_any_case_and_a_repeated_field_is_refused() {
    let (_db, p) = held("32768", "none", &[]);
    let addr = p.addr();
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let r = control(addr, &format!("{scheme} {TOKEN}"), r#"{"sleep_ms": 5}"#);
        assert_eq!(r.status, 200, "{scheme}: {}", r.text());
    }
    for body in [
        r#"{"pause": true, "pause": false}"#,
        r#"{"pause": false, "sleep_ms": 1, "pause": true}"#,
    ] {
        let r = control(addr, &format!("Bearer {TOKEN}"), body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(
            r.text().contains("\"pause\" is given twice"),
            "{}",
            r.text()
        );
    }
    assert_eq!(get(addr, "/status", &[]).json()["paused"], false);
    // Counted in the whole stream, as the run logs its own start meanwhile:
    // the three accepted commands are the only `control` events.
    let events = Stream::open(addr, "/events", &[]).rest();
    let controls: Vec<_> = events.iter().filter(|e| e.event == "control").collect();
    assert_eq!(controls.len(), 3, "nothing else was logged: {controls:?}");
    assert!(controls.iter().all(|e| data(e)["action"] == "set"));
}

#[test]
fn a_tiny_or_negative_zero_nice_ratio_reads_as_zero_everywhere() {
    let (_db, p) = held("32768", "plain", &["--nice-ratio=-0"]);
    let addr = p.addr();
    let r = control(
        addr,
        &format!("Bearer {TOKEN}"),
        r#"{"nice_ratio": 1e-320}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text().matches("\"nice_ratio\":0.0").count(),
        1,
        "{}",
        r.text()
    );
    let url = format!("http://{addr}/");
    let (code, out, err) = crate::util::run(&[
        "ctl",
        &url,
        "set",
        "--nice-ratio=-0.0",
        "--control-token",
        TOKEN,
    ]);
    assert_eq!(code, 0, "{err}");
    // Said as the run's terminal says it (not JSON's 0.0).
    assert!(out.contains("nice ratio 0,"), "{out}");
    let lines = stderr_lines(&p, "new pace", 2);
    for line in lines {
        assert!(line.contains("nice ratio 0,"), "{line:.200}");
    }
    let status = get(addr, "/status", &[]).text();
    assert!(status.contains("\"nice_ratio\":0.0"), "{status}");
}

/// The run's own line for a new pace says a batch size as `ctl` and the
/// pace messages do (2,500), not 2500.
#[test]
fn a_new_batch_size_is_said_with_thousands_on_the_runs_terminal() {
    let (_db, p) = held("32768", "plain", &[]);
    let url = format!("http://{}/", p.addr());
    let (code, out, err) = crate::util::run(&[
        "ctl",
        &url,
        "set",
        "--batch-size",
        "2500",
        "--control-token",
        TOKEN,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("batch size 2,500"), "{out}");
    let line = &stderr_lines(&p, "new pace", 1)[0];
    assert!(line.contains("batch size 2,500 from"), "{line:.200}");
}

#[test]
fn ctl_takes_any_route_of_the_run_and_never_sends_a_password() {
    let (_db, p) = held("32768", "none", &[]);
    let addr = p.addr();
    for route in ["status", "metrics", "control", "events", ""] {
        let url = format!("http://{addr}/{route}");
        let (code, out, err) =
            crate::util::run(&["ctl", &url, "set", "--sleep", "3", "--control-token", TOKEN]);
        assert_eq!(code, 0, "{url}: {out} {err}");
    }
    // A server that would see the request, if one were sent.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://user:pa55@{}/", listener.local_addr().unwrap());
    let (code, _, err) = crate::util::run(&["ctl", &url, "pause", "--control-token", TOKEN]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("USER:PASS@") && !err.contains("pa55"), "{err}");
    // It names the flag ctl has: ctl has no --token.
    assert!(
        err.contains("--control-token") && !err.contains("--token "),
        "{err}"
    );
    // watch's own flag is --token.
    let (code, _, err) = crate::util::run(&["watch", &url, "--connect-timeout", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--token") && !err.contains("--control-token"),
        "{err}"
    );
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "ctl or watch connected anyway");
}

/// serde's derive takes an array of a struct's fields, in order, as well
/// as the object: `"expect_changes": [1000]` would quietly be a `max`, and
/// a plan written as an array would run.
#[test]
fn a_plan_or_a_part_of_one_written_as_an_array_is_refused() {
    let db = TempDb::counters(10);
    let chunked = "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi";
    let before = db.bytes();
    for (plan, says) in [
        (
            serde_json::json!(["arr", false, false, [{"sql": "UPDATE t SET counter = 1"}]]),
            "invalid type: sequence, expected a plan object",
        ),
        (
            serde_json::json!({"steps": [[null, "UPDATE t SET counter = 1", null, null, null, null]]}),
            "step 1 is a list, where a step object",
        ),
        (
            serde_json::json!({"steps": [{"sql": chunked, "chunk": ["t", "id", 5]}]}),
            "chunk of step 1 is a list, where an object such as {\"table\"",
        ),
        (
            serde_json::json!({"steps": [{"sql": "UPDATE t SET counter = 1", "expect_changes": [1000]}]}),
            "expect_changes of step 1 is a list, where an object such as {\"max\"",
        ),
    ] {
        let path = db.file("plan.json", &plan.to_string());
        let (code, _, err) = crate::util::run(&run_args(&db, path_str(&path), &["--no-serve"]));
        assert_eq!(code, 2, "{plan}: {err}");
        assert!(err.contains(says), "{plan}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(db.bytes(), before, "{plan}");
    }
}

/// A value of the wrong type, or a field unknown, missing or given twice,
/// is named by its place in the plan (serde_json says neither which field
/// nor which step), and a huge value is cut short in the message rather
/// than written out whole on the terminal.
#[test]
fn a_mistyped_field_is_named_with_its_step_and_what_it_takes() {
    let db = TempDb::counters(10);
    let one = serde_json::json!({"sql": "UPDATE t SET counter = 1"});
    let huge = "x".repeat(300_000);
    let before = db.bytes();
    for (plan, says) in [
        (
            serde_json::json!({"foreign_keys": "true", "steps": [one]}),
            r#"the plan's foreign_keys is "true", where true or false goes"#,
        ),
        (
            serde_json::json!({"steps": one}),
            "the plan's steps is an object, where a list of steps goes",
        ),
        (
            serde_json::json!({"steps": [one, {"sql": "UPDATE t SET counter = 2", "undo": huge}]}),
            "undo of step 2 is \"xxxxxxxx",
        ),
        (
            serde_json::json!({"steps": [{"sql": "UPDATE t SET counter = 1", "chunk": {"table": 5}}]}),
            "chunk.table of step 1 is 5, where a string goes",
        ),
        (
            serde_json::json!({"steps": [one, {"sqll": "UPDATE t SET counter = 2"}]}),
            "unknown field `sqll` in step 2, expected one of",
        ),
        (
            serde_json::json!({"steps": [{"sql": "UPDATE t SET counter = 1", "chunk": {"key": "id"}}]}),
            "missing field `table` in chunk of step 1",
        ),
        (
            serde_json::json!({"steps": [one], huge.as_str(): 1}),
            "unknown field `xxxxxxxx",
        ),
        (
            serde_json::json!({"steps": [{"sql": "UPDATE t SET counter = 1", "expect_changes": {"max": huge}}]}),
            "invalid type: string \"xxxxxxxx",
        ),
        (serde_json::json!(huge), "invalid type: string \"xxxxxxxx"),
    ] {
        let path = db.file("plan.json", &plan.to_string());
        let (code, _, err) = crate::util::run(&run_args(&db, path_str(&path), &["--no-serve"]));
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(says), "{says} not in: {err:.600}");
        assert!(
            err.len() < 1000,
            "a message of {} bytes: {err:.600}",
            err.len()
        );
        assert_eq!(db.bytes(), before);
    }
}

/// A port no TCP port can be is refused at once: read as no port at all,
/// `:99999` sent `watch` and `ctl` to port 80, whatever answers there.
#[test]
fn watch_and_ctl_refuse_a_port_out_of_range() {
    for url in [
        "http://127.0.0.1:99999/",
        "127.0.0.1:65536",
        "http://[::1]:70000/events",
    ] {
        for args in [
            vec!["watch", url, "--connect-timeout", "0"],
            vec!["ctl", url, "pause", "--control-token", TOKEN],
        ] {
            let (code, _, err) = crate::util::run(&args);
            assert_eq!(code, 2, "{args:?}: {err}");
            assert!(err.contains("port must be 1 to 65535"), "{args:?}: {err}");
        }
    }
}

/// `demo --keep` at a path that cannot be a folder is bad usage, said
/// with the flag and the path, not a bare system error and exit 1.
#[test]
fn demo_keep_where_no_folder_can_be_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "mine").unwrap();
    for keep in [file.clone(), file.join("sub")] {
        let keep = path_str(&keep);
        let (code, _, err) = crate::util::run(&["demo", "--keep", keep, "--create-only"]);
        assert_eq!(code, 2, "{keep}: {err}");
        assert!(err.contains("--keep") && err.contains(keep), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
}

/// Two counter rows in a WAL database, for the tests of its side files.
fn two_counters_in_wal() -> TempDb {
    TempDb::with_sql(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, counter INTEGER NOT NULL DEFAULT 0);
         INSERT INTO t(id) VALUES (1), (2);",
    )
}

/// A WAL database in a folder batchsse may not write to: SQLite cannot make
/// the `-shm` and `-wal` files it needs even to read, and says only
/// "unable to open database file"; the message says why and what to do.
#[test]
fn a_wal_database_in_a_folder_no_one_may_write_to_is_refused_with_the_reason() {
    let db = two_counters_in_wal();
    let plan = db.file("plan.json", &counter_plan("wal-ro", 10));
    let before = sha256(&db.path);
    let Some(_guard) = immutable(db.dir.path()) else {
        return;
    };
    let db_path = path_str(&db.path);
    for args in [
        run_args(&db, path_str(&plan), &["--no-serve"]),
        vec!["checkpoint", "list", "--db", db_path],
        vec!["undo", "list", "--db", db_path],
    ] {
        let (code, _, err) = crate::util::run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("WAL mode") && err.contains("write access to its folder"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(sha256(&db.path), before);
}

/// A WAL database whose `-shm` may not be written (another user's, left by
/// the application that holds the file open): the file and its folder
/// are writable, so a message that blames them sends the user the wrong
/// way; it names the side files.
#[test]
fn a_wal_database_whose_shm_may_not_be_written_names_the_side_files() {
    let db = two_counters_in_wal();
    let plan = db.file("plan.json", &counter_plan("shm-ro", 10));
    // The application: while it holds the file open, its -shm stays.
    let app = db.conn();
    app.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .unwrap();
    let shm = db.dir.path().join("test.sqlite-shm");
    let before = sha256(&db.path);
    let Some(_guard) = immutable(&shm) else {
        return;
    };
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("WAL mode") && err.contains("-shm") && !err.contains("is read-only"),
        "{err}"
    );
    assert_eq!(sha256(&db.path), before);
}

/// Escape sequences in a plan (a step's name, its SQL echoed in an error)
/// reach the terminal as text: they cannot clear it, move the cursor to
/// overwrite a line, or retitle the window.
#[test]
fn control_characters_from_a_plan_reach_the_terminal_as_text() {
    let db = TempDb::counters(3);
    let plan = db.file(
        "plan.json",
        &serde_json::json!({"name": "esc", "steps": [
            {"name": "bump\u{1b}[2J\u{1b}]0;title\u{7}", "sql": "UPDATE t SET counter = 1"},
            {"sql": "UPDATE t SET counter = 2 -- x\r\u{1b}[1A\u{1b}[2Kfake\u{9b}31m"},
        ]})
        .to_string(),
    );
    let bad = db.file(
        "bad.json",
        &serde_json::json!({"steps": [{"sql": "UPDATE t SET counter = 3\n\u{1b}[1A\u{1b}[2Knothing wrong"}]})
            .to_string(),
    );
    let before = db.bytes();
    let (code, _, err) = crate::util::run(&run_args(&db, path_str(&bad), &["--no-serve"]));
    assert_eq!(code, 2, "{err}");
    assert_eq!(db.bytes(), before);
    let mut all = err;
    let (code, _, err) = crate::util::run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--progress", "plain", "--no-checkpoint"],
    ));
    assert_eq!(code, 0, "{err}");
    all.push_str(&err);
    assert!(
        !all.contains(['\u{1b}', '\u{7}', '\u{9b}', '\r']),
        "{all:?}"
    );
    assert!(all.contains("bump\\u{1b}[2J"), "still said: {all:?}");
    assert!(all.contains("\\u{1b}[2Knothing wrong"), "{all:?}");
}

/// `chunk.size` not written as a whole number says how to write it, as
/// `expect_changes` does, rather than serde's "expected u64".
#[test]
fn a_chunk_size_that_is_not_a_whole_number_says_how_to_write_one() {
    let db = TempDb::counters(10);
    let before = db.bytes();
    for size in ["1e3", "10.5", "\"100\"", "-1", "true"] {
        let plan = db.file(
            "plan.json",
            &format!(
                r#"{{"steps": [{{"sql": "UPDATE t SET counter = 1 WHERE id BETWEEN :lo AND :hi", "chunk": {{"table": "t", "size": {size}}}}}]}}"#
            ),
        );
        let (code, _, err) = crate::util::run(&run_args(&db, path_str(&plan), &["--no-serve"]));
        assert_eq!(code, 2, "{size}: {err}");
        assert!(
            err.contains("chunk.size as a whole number of rows, 1 or more")
                && err.contains("such as 1000")
                && !err.contains("u64"),
            "{size}: {err}"
        );
        assert_eq!(db.bytes(), before, "{size}");
    }
}

/// A number too large for any float (1e400) names its field and what the
/// field takes, wherever it is given, not only serde_json's "number out of
/// range".
#[test]
fn a_number_out_of_range_in_a_plan_names_its_field() {
    let db = TempDb::counters(10);
    let before = db.bytes();
    let sql = "UPDATE t SET counter = 1 WHERE id BETWEEN :lo AND :hi";
    let rows = "out of range: it takes a whole number of rows from";
    for (fields, said) in [
        (
            r#""chunk": {"table": "t", "size": 1e400}"#,
            "chunk.size of step 2 is 1e400, ",
        ),
        (
            r#""chunk": {"table": "t", "size": -1e400}"#,
            "chunk.size of step 2 is -1e400, ",
        ),
        (
            r#""expect_changes": {"max": 1e400}"#,
            "expect_changes.max of step 2 is 1e400, ",
        ),
        (
            r#""name": 1e400"#,
            "name of step 2 is 1e400, a number out of range, where a string goes",
        ),
        (
            r#""undo": -1e999"#,
            "undo of step 2 is -1e999, a number out of range, where true or false",
        ),
    ] {
        let plan = db.file(
            "plan.json",
            &format!("{{\"steps\": [{{\"sql\": \"{sql}\"}},\n {{\"sql\": \"{sql}\", {fields}}}]}}"),
        );
        let (code, _, err) = crate::util::run(&run_args(&db, path_str(&plan), &["--no-serve"]));
        assert_eq!(code, 2, "{fields}: {err}");
        assert!(
            err.contains(" at line 2, column ") && err.contains(said),
            "{fields}: {err}"
        );
        if said.ends_with(", ") {
            assert!(err.contains(&format!("{said}{rows}")), "{fields}: {err}");
        }
        assert_eq!(db.bytes(), before, "{fields}");
    }
    let plan = db.file("plan.json", r#"{"name": 1e400, "steps": []}"#);
    let (code, _, err) = crate::util::run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("the plan's name is 1e400, a number out of range"),
        "{err}"
    );
}

/// A checkpoint table altered by hand cannot be read: the way out the
/// message gives must work, and `checkpoint clear --all` is itself refused
/// on such a table, so it cannot be that way.
#[test]
fn the_way_out_of_an_altered_checkpoint_table_works() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY);
         CREATE TABLE batchsse_checkpoint(x);",
    );
    let path = path_str(&db.path);
    let before = db.bytes();
    let (code, _, err) = crate::util::run(&["checkpoint", "clear", "--db", path, "--all"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(db.bytes(), before);
    let (code, _, err) = crate::util::run(&["checkpoint", "list", "--db", path]);
    assert_eq!(code, 2, "{err}");
    assert!(
        !err.contains("checkpoint clear --all"),
        "a way out that is refused: {err}"
    );
    let sql = "DROP TABLE batchsse_checkpoint";
    assert!(err.contains(sql), "{err}");
    db.conn().execute_batch(sql).unwrap();
    let (code, out, err) = crate::util::run(&["checkpoint", "list", "--db", path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no checkpoint"), "{out}");
}

/// A token (or Redis URL) variable that is not UTF-8 is named, with what
/// to do; clap said only "invalid UTF-8 … in one or more arguments".
#[cfg(unix)]
#[test]
fn an_environment_variable_that_is_not_utf8_is_named() {
    use std::os::unix::ffi::OsStrExt;
    let db = TempDb::counters(3);
    let before = db.bytes();
    let plan = db.file("plan.json", &counter_plan("env", 10));
    for name in [
        "BATCHSSE_TOKEN",
        "BATCHSSE_CONTROL_TOKEN",
        "BATCHSSE_PUBLISH",
    ] {
        let out = std::process::Command::new(BIN)
            .args(run_args(&db, path_str(&plan), &["--no-serve"]))
            .env(name, std::ffi::OsStr::from_bytes(b"\xff"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains(&format!("the environment variable {name} is not UTF-8")),
            "{name}: {err}"
        );
    }
    assert_eq!(db.bytes(), before);
}

/// `null` for the plan's "undo" or "foreign_keys" is "not said" (off), as
/// it is for a step's "undo" and the plan's "name"; it was refused.
#[test]
fn null_plan_switches_are_off_as_a_steps_null_is_unsaid() {
    let db = TempDb::counters(5);
    let plan = db.file(
        "plan.json",
        &serde_json::json!({"name": "nulls", "undo": null, "foreign_keys": null, "steps": [
            {"sql": "UPDATE t SET counter = counter + 1", "undo": null}]})
        .to_string(),
    );
    let (code, _, err) = crate::util::run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 5);
    let recorded = "SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_undo'";
    assert_eq!(db.query_i64(recorded), 0, "null is not undo: true");
}

/// A view of the user's named as the checkpoint table is named before
/// anything runs (exit 2); the run failed at its first write, exit 1.
#[test]
fn a_view_named_as_the_checkpoint_table_is_refused_before_anything_runs() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INT NOT NULL DEFAULT 0);
         INSERT INTO t(counter) VALUES (0), (0);
         CREATE VIEW batchsse_checkpoint AS SELECT 1 AS x;",
    );
    let before = db.bytes();
    let plan = db.file("plan.json", &counter_plan("view", 10));
    let (code, _, err) = crate::util::run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("batchsse_checkpoint is a view") && err.contains("--no-checkpoint"),
        "{err}"
    );
    assert_eq!(db.bytes(), before);
    let flags = ["--no-serve", "--no-checkpoint"];
    let (code, _, err) = crate::util::run(&run_args(&db, path_str(&plan), &flags));
    assert_eq!(code, 0, "{err}");
}

/// A number of seconds past what a `Duration` holds is still a number of
/// seconds ≥ 0: it is taken as "a year" (as any beyond a year is), not
/// refused with a rule it meets.
#[test]
fn a_huge_number_of_seconds_is_taken_as_a_year_and_nan_is_refused() {
    let db = TempDb::counters(3);
    let plan = db.file("plan.json", &counter_plan("huge-secs", 10));
    let flags = "--no-serve --progress plain --progress-interval 1e20 --drain-timeout 1e300";
    let (code, _, err) = crate::util::run(&run_args(&db, path_str(&plan), &words(flags)));
    assert_eq!(code, 0, "{err}");
    for bad in ["NaN", "inf", "-1e300"] {
        let arg = format!("--progress-interval={bad}");
        let (code, _, err) =
            crate::util::run(&run_args(&db, path_str(&plan), &["--no-serve", &arg]));
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("--progress-interval takes"), "{bad}: {err}");
    }
}

/// A pace flag given a number that is not a whole one, or too large to be
/// read (`1e400`, 23 digits), says the range it takes, not clap's "invalid
/// digit found in string"; the database is untouched.
#[test]
fn a_pace_flag_that_is_not_a_whole_number_says_its_range() {
    let db = TempDb::counters(3);
    let plan = db.file("plan.json", &counter_plan("pace", 10));
    let before = db.bytes();
    for (flag, value, range) in [
        ("--batch-size", "1e400", "rows from 1 to 10000000"),
        (
            "--batch-size",
            "99999999999999999999999",
            "rows from 1 to 10000000",
        ),
        ("--chunk-time", "1e400", "ms from 1 to 600000"),
        ("--sleep", "2.5", "ms from 0 to 600000"),
    ] {
        let args = run_args(&db, path_str(&plan), &["--no-serve", flag, value]);
        let (code, _, err) = crate::util::run(&args);
        assert_eq!(code, 2, "{flag} {value}: {err}");
        let said = format!("'{value}' for '{flag} ");
        assert!(err.contains(&said), "{flag} {value}: {err}");
        assert!(
            err.contains(&format!("a whole number of {range}")),
            "{flag} {value}: {err}"
        );
    }
    assert_eq!(db.bytes(), before);
    let (code, _, err) =
        crate::util::run(&["ctl", "http://127.0.0.1:9/", "set", "--batch-size", "1e400"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("rows from 1 to 10000000, or `auto`; got \"1e400\""),
        "{err}"
    );
}

/// A plain step longer than the pre-run check lets a statement make (8 MiB)
/// is checked as written: its text was read back through SQLite, which
/// gives none past that bound, so the check refused it as "SQL is empty or
/// comment only", while the same statement in a SQL script ran.
#[test]
fn a_step_with_a_literal_of_many_mebibytes_is_checked_and_runs() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, s TEXT); INSERT INTO t(id) VALUES (1);",
    );
    let long = "x".repeat(9 << 20);
    let sql = format!("UPDATE t SET s = '{long}' WHERE id = 1");
    let plan = db.file(
        "plan.json",
        &serde_json::json!({"name": "long", "steps": [{"sql": sql}]}).to_string(),
    );
    let (code, _, err) = crate::util::run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 0, "{:.600}", err);
    assert_eq!(
        db.query_i64("SELECT length(s) FROM t WHERE id = 1"),
        9 << 20
    );
}

/// A plan that is not UTF-8 (Windows PowerShell's `>` writes UTF-16) says
/// what to do about it, from a file or from standard input.
#[test]
fn a_plan_that_is_not_utf8_says_to_save_it_as_utf8() {
    let db = TempDb::counters(3);
    let text = r#"{"steps": [{"sql": "UPDATE t SET counter = 1"}]}"#;
    let mut utf16 = vec![0xff, 0xfe];
    utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    let plan = db.dir.path().join("plan.json");
    std::fs::write(&plan, &utf16).unwrap();
    let before = db.bytes();
    let (code, _, err) = crate::util::run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("UTF-16") && err.contains("save it as UTF-8"),
        "{err}"
    );
    let latin1 = db.dir.path().join("fix.sql");
    std::fs::write(&latin1, b"UPDATE t SET counter = 1 -- caf\xe9\n").unwrap();
    let path = path_str(&db.path);
    let (code, _, err) = crate::util::run(&[
        "run",
        "--db",
        path,
        "--sql",
        path_str(&latin1),
        "--no-serve",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not UTF-8") && err.contains("save it as UTF-8"),
        "{err}"
    );
    // The same from standard input.
    let mut child = std::process::Command::new(BIN)
        .args(["run", "--db", path, "--plan", "-", "--no-serve"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&utf16).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("UTF-16") && err.contains("save it as UTF-8"),
        "{err}"
    );
    // The database given as the plan, and a folder, are named as such.
    for (plan, says) in [
        (path, "it is a SQLite database, not a plan"),
        (path_str(db.dir.path()), "it is a folder"),
    ] {
        let (code, _, err) = crate::util::run(&run_args(&db, plan, &["--no-serve"]));
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(says), "{err}");
    }
    // A file past the longest SQL SQLite takes is refused unread (this
    // one is sparse: its size costs no disk), as a stream is once that
    // much came, instead of filling the memory (`--plan /dev/zero`).
    let huge = db.dir.path().join("huge.sql");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1_000_000_001)
        .unwrap();
    for flag in ["--plan", "--sql"] {
        let (code, _, err) =
            crate::util::run(&["run", "--db", path, flag, path_str(&huge), "--no-serve"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("longest SQL SQLite takes"), "{err}");
    }
    assert_eq!(db.bytes(), before);
}

/// A SQL script given as `--plan` says to give it with `--sql`; a JSON
/// plan with a mistake does not.
#[test]
fn a_sql_script_given_as_the_plan_says_to_use_sql() {
    let db = TempDb::counters(3);
    let before = db.bytes();
    for (text, hinted) in [
        ("-- fix the counters\nUPDATE t SET counter = 1;\n", true),
        ("with x as (select 1) update t set counter = 1", true),
        (
            r#"{"steps": [{"sql": "UPDATE t SET counter = 1"},]}"#,
            false,
        ),
        ("steps: []", false),
    ] {
        let plan = db.dir.path().join("plan.json");
        std::fs::write(&plan, text).unwrap();
        let (code, _, err) = crate::util::run(&run_args(&db, path_str(&plan), &["--no-serve"]));
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("invalid plan"), "{err}");
        assert_eq!(err.contains("give it with --sql"), hinted, "{text}: {err}");
    }
    assert_eq!(db.bytes(), before);
}
