//! `batchsse watch` and the script-facing conventions end to end: the real
//! binary follows a real run over HTTP; NDJSON output is compared with the
//! SSE stream of the same run; closed pipes never turn into panics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// Bumps every counter, then fails on a duplicate key: exit 1 at run time.
const FAILING_PLAN: &str = r#"{"name":"bad","steps":[
    {"name":"touch","sql":"UPDATE t SET counter = counter + 1"},
    {"name":"dup","sql":"INSERT INTO t(id) VALUES (1)"}]}"#;

/// Starts a run of `plan` on `db` with the server on a free port.
fn start_run(db: &TempDb, plan: &str, extra: &[&str]) -> Proc {
    let plan = db.file("plan.json", plan);
    serving(db, path_str(&plan), extra)
}

fn watch(url: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["watch", url, "--progress", "json"];
    args.extend_from_slice(extra);
    spawn(&args, |_| {})
}

/// Checks a watch's NDJSON: ids 1.. without gap or repeat, ending with
/// `finished` of `status`; returns the lines.
fn assert_full_run(out: &str, status: &str) -> Vec<Value> {
    let lines = json_lines(out);
    assert!(!lines.is_empty(), "watch printed nothing");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(
            l["id"].as_u64(),
            Some(i as u64 + 1),
            "line {i}: {l}\nall:\n{out}"
        );
    }
    assert_eq!(lines[0]["event"], "start", "{out}");
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "finished", "{out}");
    assert_eq!(last["data"]["status"], status, "{out}");
    lines
}

#[test]
fn watch_exits_with_the_runs_status_ok_and_failed() {
    for (plan, status, code) in [
        (counter_plan("good", 50), "ok", 0),
        (FAILING_PLAN.to_owned(), "failed", 1),
    ] {
        let db = TempDb::counters(300);
        let mut run = start_run(&db, &plan, &["--wait-for-clients", "1"]);
        // --pid of a live run changes nothing.
        let pid = run.child.id().to_string();
        let mut w = watch(&format!("http://{}/", run.addr()), &["--pid", &pid]);
        assert_eq!(w.wait().code(), Some(code), "watch stderr:\n{}", w.stderr());
        assert_full_run(&w.stdout(), status);
        assert_eq!(
            run.wait().code(),
            Some(code),
            "run stderr:\n{}",
            run.stderr()
        );
    }
}

/// A bare port, as `--listen` takes one, is the run on this machine.
#[test]
fn watch_takes_a_bare_port_as_listen_does() {
    let db = TempDb::counters(100);
    let mut run = start_run(&db, &counter_plan("good", 50), &["--wait-for-clients", "1"]);
    let port = run.addr().port().to_string();
    let mut w = watch(&port, &[]);
    assert_eq!(w.wait().code(), Some(0), "watch stderr:\n{}", w.stderr());
    assert_full_run(&w.stdout(), "ok");
    assert_eq!(run.wait().code(), Some(0), "run stderr:\n{}", run.stderr());
}

#[test]
fn watch_exits_130_when_the_run_is_interrupted() {
    let db = TempDb::counters(2000);
    let mut run = start_run(
        &db,
        &counter_plan("slow", 10),
        &words("--wait-for-clients 1 --batch-size 10 --sleep 50"),
    );
    let addr = run.addr();
    let mut w = watch(&format!("http://{addr}/events"), &[]);
    wait_status(addr, |s| s["done"].as_u64().unwrap_or(0) > 0);
    run.signal("INT");
    assert_eq!(
        run.wait().code(),
        Some(130),
        "run stderr:\n{}",
        run.stderr()
    );
    assert_eq!(w.wait().code(), Some(130), "watch stderr:\n{}", w.stderr());
    assert_full_run(&w.stdout(), "cancelled");
}

/// A SIGTERM (`timeout`, a CI runner stopping a step) interrupts watch as
/// Ctrl-C does: it says so and exits 130, as the exit status table says,
/// rather than dying of the signal (143) without a word.
#[test]
fn watch_stopped_by_sigterm_exits_130_and_says_so() {
    let db = TempDb::counters(100);
    let mut run = start_run(&db, &counter_plan("held", 10), &["--wait-for-clients", "2"]);
    let addr = run.addr();
    let mut w = watch(&format!("http://{addr}/"), &[]);
    wait_status(addr, |s| s["clients"] == 1);
    w.signal("TERM");
    assert_eq!(w.wait().code(), Some(130), "{}", w.stderr());
    assert!(
        w.stderr()
            .contains("watch interrupted; the run itself goes on"),
        "{}",
        w.stderr()
    );
    run.signal("INT");
    assert_eq!(run.wait().code(), Some(130));
}

#[test]
fn watch_started_before_the_run_waits_for_it() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let mut w = watch(&url, &["--connect-timeout", "30"]);
    // Past 2 s without a run it says it waits (once), rather than sit
    // silent for the whole --connect-timeout.
    let waiting = format!("batchsse: no run answers at {url}events yet (");
    let until = std::time::Instant::now() + PATIENCE;
    while !w.stderr().contains(&waiting) && std::time::Instant::now() < until {
        assert!(
            w.child.try_wait().expect("try_wait").is_none(),
            "watch gave up before the run started; stderr:\n{}",
            w.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        w.stderr()
            .contains("trying again for up to 30 s (--connect-timeout)"),
        "{}",
        w.stderr()
    );
    let db = TempDb::counters(300);
    let plan = db.file("plan.json", &counter_plan("late", 50));
    let listen = format!("127.0.0.1:{port}");
    let mut run = Proc::start(&run_args(
        &db,
        path_str(&plan),
        &[
            "--listen",
            &listen,
            "--wait-for-clients",
            "1",
            "--progress",
            "none",
        ],
    ));
    assert_eq!(w.wait().code(), Some(0), "watch stderr:\n{}", w.stderr());
    assert_full_run(&w.stdout(), "ok");
    assert_eq!(w.stderr().matches(&waiting).count(), 1, "{}", w.stderr());
    assert_eq!(run.wait().code(), Some(0));
}

/// A TCP proxy that forwards to `upstream` but cuts its first connection
/// after `cut_after` bytes of response; records each request head.
struct CutProxy {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

fn cut_proxy(upstream: SocketAddr, cut_after: usize) -> CutProxy {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        // Bounded: the test makes two connections; a few spare for safety.
        for (n, conn) in listener.incoming().take(5).enumerate() {
            let Ok(client) = conn else { return };
            let Ok(server) = TcpStream::connect(upstream) else {
                return;
            };
            for s in [&client, &server] {
                let _ = s.set_read_timeout(Some(PATIENCE));
            }
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = [0; 8192];
                let mut first = true;
                while let Ok(k) = c_in.read(&mut buf) {
                    if k == 0 || s_out.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    if first {
                        seen.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..k]).into_owned());
                        first = false;
                    }
                }
            });
            let limit = if n == 0 { cut_after } else { usize::MAX };
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0; 8192];
                let mut sent = 0;
                while let Ok(k) = s_in.read(&mut buf) {
                    let k = k.min(limit - sent);
                    if k == 0 || c_out.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    sent += k;
                }
                let _ = c_out.shutdown(Shutdown::Both);
                let _ = s_in.shutdown(Shutdown::Both);
            });
        }
    });
    CutProxy { addr, requests }
}

#[test]
fn a_cut_connection_resumes_without_duplicates_or_gaps() {
    let db = TempDb::counters(300);
    // Two clients: the direct reader below and the watch through the proxy.
    let mut run = start_run(
        &db,
        &counter_plan("cut", 10),
        &words("--wait-for-clients 2 --batch-size 10 --sleep 20"),
    );
    let addr = run.addr();
    let mut direct = Stream::open(addr, "/events", &[]);
    // Past the response head and the first events, inside a later frame.
    let proxy = cut_proxy(addr, 1000);
    let mut w = watch(&format!("http://{}/events", proxy.addr), &[]);
    assert_eq!(w.wait().code(), Some(0), "watch stderr:\n{}", w.stderr());
    let lines = assert_full_run(&w.stdout(), "ok");

    let requests = proxy.requests.lock().unwrap().clone();
    assert!(requests.len() >= 2, "watch never reconnected: {requests:?}");
    let resumed_at: u64 = requests[1]
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("last-event-id")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("reconnect sent no Last-Event-ID: {:?}", requests[1]));
    assert!(
        resumed_at >= 1 && resumed_at < lines.len() as u64,
        "cut should land mid-run; resumed at {resumed_at} of {}",
        lines.len()
    );

    // What the watch printed is exactly what a direct client received.
    let stream: Vec<_> = direct.rest().iter().map(event_triple).collect();
    let printed: Vec<_> = lines.iter().map(line_triple).collect();
    assert_eq!(printed, stream);
    assert_eq!(run.wait().code(), Some(0));
}

#[test]
fn after_the_end_watch_replays_or_reads_status_on_204() {
    let db = TempDb::counters(100);
    let mut run = start_run(&db, FAILING_PLAN, &["--linger", "30"]);
    let addr = run.addr();
    let all = Stream::open(addr, "/events", &[]).rest();
    let finished = id(all.last().expect("events"));

    // A late watch during --linger gets the whole run.
    let mut late = watch(&format!("http://{addr}/"), &[]);
    assert_eq!(late.wait().code(), Some(1), "{}", late.stderr());
    assert_full_run(&late.stdout(), "failed");

    // One that has already seen `finished` gets 204 and reads /status.
    let url = format!("http://{addr}/events?last_event_id={finished}");
    let mut w = watch(&url, &[]);
    assert_eq!(w.wait().code(), Some(1), "{}", w.stderr());
    assert_eq!(w.stdout(), "", "nothing new to print");
    assert!(
        w.stderr().contains("already finished (failed)"),
        "{}",
        w.stderr()
    );
    run.signal("INT");
    run.wait();
}

/// `?last_event_id=N` after the run's `start`: the steps' lines and the
/// step summary still name each step (every `step` and `progress` carries
/// its name), and say nothing false about how many steps there are.
#[test]
fn a_watch_from_the_middle_of_a_run_names_its_steps() {
    let db = TempDb::counters(100);
    let mut run = start_run(&db, FAILING_PLAN, &["--linger", "30"]);
    let addr = run.addr();
    let all = Stream::open(addr, "/events", &[]).rest();
    let after_start = id(&all[0]);
    let summary = db.dir.path().join("summary.md");
    let url = format!("http://{addr}/events?last_event_id={after_start}");
    let mut w = spawn(&["watch", &url, "--progress", "github"], |c| {
        c.env("GITHUB_STEP_SUMMARY", &summary);
    });
    assert_eq!(w.wait().code(), Some(1), "{}", w.stderr());
    let err = w.stderr();
    for line in [
        "::group::[1/?] touch",
        "[1/?] touch: done",
        "[2/?] dup: FAILED",
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(line)),
            "{line:?} in:\n{err}"
        );
    }
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(md.contains("| 1 | touch | done |"), "{md}");
    assert!(md.contains("| 2 | dup | **failed** |"), "{md}");
    assert!(!md.contains(" on \n"), "no empty plan or file name: {md}");
    run.signal("INT");
    run.wait();
}

/// A URL's `last_event_id` past anything this run gave out (copied from an
/// earlier run's page): the server replays the run from `start`, and watch
/// shows it and ends with its status instead of hiding every event as
/// "seen" and reconnecting until the server is gone.
#[test]
fn an_id_this_run_never_gave_out_shows_the_whole_run_and_its_status() {
    let db = TempDb::counters(100);
    let mut run = start_run(&db, FAILING_PLAN, &["--linger", "30"]);
    let addr = run.addr();
    let all = Stream::open(addr, "/events", &[]).rest();
    let beyond = id(all.last().expect("events")) + 1000;
    let url = format!("http://{addr}/events?last_event_id={beyond}");
    let mut w = watch(&url, &["--connect-timeout", "1"]);
    assert_eq!(w.wait().code(), Some(1), "{}", w.stderr());
    let lines = assert_full_run(&w.stdout(), "failed");
    assert_eq!(lines.len(), all.len());
    assert!(
        w.stderr()
            .contains(&format!("event {beyond} is not one this run gave out")),
        "{}",
        w.stderr()
    );
    run.signal("INT");
    run.wait();
}

#[test]
fn an_unreachable_url_exits_3_after_the_timeout() {
    let url = format!("http://127.0.0.1:{}/", free_port());
    let start = Instant::now();
    let mut w = watch(&url, &["--connect-timeout", "1"]);
    assert_eq!(w.wait().code(), Some(3), "{}", w.stderr());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "gave up early: {took:?}"
    );
    assert!(
        took < Duration::from_secs(6),
        "ignored the timeout: {took:?}"
    );
    let err = w.stderr();
    assert!(
        err.starts_with("batchsse: no batchsse run answered at") && err.contains("refused"),
        "{err}"
    );
}

#[test]
fn watch_with_pid_stops_waiting_once_the_run_has_exited() {
    // An empty plan fails its check: the run exits 2 and never listens.
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", r#"{"name":"empty","steps":[]}"#);
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}/");
    let args = ["run", "--db", path_str(&db.path), "--plan", path_str(&plan)];
    let mut run = spawn(&[&args[..], &["--listen", &listen]].concat(), |_| {});
    let pid = run.child.id().to_string();
    let gave_up = |w: &mut Proc| {
        // Without --pid this would retry for the whole --connect-timeout.
        let code = w.wait_for(Duration::from_secs(20)).code();
        assert_eq!(code, Some(3), "{}", w.stderr());
        let err = w.stderr();
        let says = format!("batchsse: the run (pid {pid}) exited before its stream at {url}events");
        assert!(err.starts_with(&says), "{err}");
    };
    // The run is not reaped yet (a zombie once it exits), as under a
    // parent that has not waited for it.
    gave_up(&mut watch(
        &url,
        &["--pid", &pid, "--connect-timeout", "300"],
    ));
    assert_eq!(run.wait().code(), Some(2), "{}", run.stderr());
    // Reaped: gone altogether.
    gave_up(&mut watch(
        &url,
        &["--pid", &pid, "--connect-timeout", "300"],
    ));
}

/// The README's CI script on a port where an earlier run still lingers
/// (`--linger`): its run exits 2 (the port is taken), and `watch --pid`
/// of it must not pass the other run's replay and "finished ok" off as
/// the run's own. It says once whose server that is, shows none of it,
/// and exits 3 once the run has exited, as for a run that never listened.
#[test]
fn watch_pid_does_not_follow_another_run_lingering_on_the_port() {
    let db = TempDb::counters(100);
    let mut other = start_run(&db, &counter_plan("other", 50), &["--linger", "60"]);
    let addr = other.addr();
    let done = wait_status(addr, |s| s["state"] == "finished");
    let other_run = done["run_id"].as_str().expect("a run id").to_owned();
    let mine = TempDb::counters(100);
    let plan = mine.file("plan.json", &counter_plan("mine", 50));
    let listen = addr.to_string();
    let extra = [
        "--listen",
        &listen,
        "--wait-for-clients",
        "1",
        "--progress",
        "none",
    ];
    let mut run = spawn(&run_args(&mine, path_str(&plan), &extra), |_| {});
    let pid = run.child.id().to_string();
    let mut w = watch(&format!("http://{addr}/"), &["--pid", &pid]);
    assert_eq!(w.wait().code(), Some(3), "{}", w.stderr());
    assert_eq!(w.stdout(), "", "an event of the other run was shown");
    let err = w.stderr();
    let whose = format!(
        "is another run's (run {other_run}, pid {}), not the run's (pid {pid})",
        other.child.id()
    );
    assert_eq!(err.matches(&whose).count(), 1, "said once: {err}");
    assert!(
        err.contains(&format!("the run (pid {pid}) exited before its stream")),
        "{err}"
    );
    assert_eq!(run.wait().code(), Some(2), "{}", run.stderr());
    assert!(run.stderr().contains("already in use"), "{}", run.stderr());
    // Its linger cut short.
    other.signal("INT");
    assert_eq!(other.wait().code(), Some(0), "{}", other.stderr());
}

/// `--pid` names a wrapper (`timeout`, `sudo`, `sh -c` leave `$!` theirs)
/// whose run can listen only once another run's linger is over: `watch`
/// waits that out, showing none of the other run, then follows the run
/// its process started, to its end.
#[test]
#[cfg(unix)]
fn watch_pid_waits_out_another_runs_linger_then_follows_the_runs_own() {
    let listen = format!("127.0.0.1:{}", free_port());
    let db = TempDb::counters(100);
    let plan = db.file("other.json", &counter_plan("other", 50));
    let extra = ["--listen", &listen, "--linger", "3", "--progress", "none"];
    let other = Proc::start(&run_args(&db, path_str(&plan), &extra));
    let done = wait_status(other.addr(), |s| s["state"] == "finished");
    let mine = TempDb::counters(100);
    let plan = mine.file("mine.json", &counter_plan("mine", 50));
    // Tries every 0.1 s, at most 300 times, while the port is taken (exit
    // 2); `timeout` (a wrapper of its own) ends a run no watch reached.
    let script = format!(
        "for i in $(seq 300); do timeout 60 \"$0\" run --db \"$1\" --plan \"$2\" \
         --listen {listen} --wait-for-clients 1 --progress none 2>/dev/null; rc=$?; \
         [ $rc = 2 ] || exit $rc; sleep 0.1; done; exit 9"
    );
    use std::os::unix::process::CommandExt;
    let mut sh = Command::new("sh")
        .args(["-c", &script, BIN, path_str(&mine.path), path_str(&plan)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("sh");
    let _group = KillGroup(sh.id());
    let pid = sh.id().to_string();
    let mut w = watch(&format!("http://{listen}/"), &["--pid", &pid]);
    assert_eq!(w.wait().code(), Some(0), "{}", w.stderr());
    let lines = assert_full_run(&w.stdout(), "ok");
    assert_eq!(lines[0]["data"]["plan"], "mine");
    assert_ne!(lines[0]["data"]["pid"], pid.parse::<u64>().unwrap());
    let err = w.stderr();
    let other_run = done["run_id"].as_str().unwrap();
    assert!(
        err.contains(&format!("is another run's (run {other_run}, pid ")),
        "{err}"
    );
    assert!(sh.wait().expect("wait for sh").success());
    drop(other);
}

/// Stops a process group (a shell and what it started) when dropped, so
/// a failed test leaves none of it behind.
#[cfg(unix)]
struct KillGroup(u32);

#[cfg(unix)]
impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

/// A `start` without `pid` (an older batchsse's, replayed by a relay)
/// cannot tell whose run it is: `watch --pid` follows it as before.
#[test]
fn watch_pid_follows_a_stream_whose_start_names_no_process() {
    let start = serde_json::json!({"run_id": "old", "plan": "p", "db": "x.sqlite", "ts_ms": 1,
        "steps": [{"index": 0, "name": "s", "kind": "sql"}], "dry_run": false, "resumed": false});
    let finished = serde_json::json!({"status": "ok", "steps_done": 1, "steps_total": 1,
        "rows_changed": 0, "elapsed_ms": 1, "dry_run": false, "ts_ms": 1});
    let (addr, _) = scripted_streams(vec![frames(&[("start", start), ("finished", finished)])]);
    // A live process that serves nothing: this test's.
    let pid = std::process::id().to_string();
    let mut w = watch(&format!("http://{addr}/"), &["--pid", &pid]);
    assert_eq!(w.wait().code(), Some(0), "{}", w.stderr());
    assert_full_run(&w.stdout(), "ok");
}

#[test]
fn watch_rejects_bad_input_with_exit_2() {
    for args in [
        &["watch", "https://127.0.0.1:1/"][..],
        &words("watch http://127.0.0.1:1/ --connect-timeout -1"),
        &["watch", "http://127.0.0.1:1/", "--token", ""],
        &words("watch http://127.0.0.1:1/ --pid 0"),
        &words("watch http://127.0.0.1:1/ --pid 4294967295"),
        &words("watch http://127.0.0.1:1/ --pid me"),
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(out, "");
        assert!(
            err.starts_with("batchsse: ") || err.starts_with("error: "),
            "{err}"
        );
    }
}

/// An https address, to `watch` or to `ctl`: both speak only the plain
/// http the run serves. `ctl` was told "https needs a proxy that speaks
/// http to watch", though it was not watching.
#[test]
fn an_https_address_is_refused_alike_by_watch_and_ctl() {
    for command in ["watch", "ctl"] {
        let mut args = vec![command, "https://127.0.0.1:1/"];
        if command == "ctl" {
            args.extend(["pause", "--control-token", "tok"]);
        }
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{command}: {err}");
        assert!(
            err.contains("batchsse serves plain http, the only kind watch and ctl speak; give the run's own http:// address"),
            "{command}: {err}"
        );
    }
}

/// Beyond a year is "forever": a huge number of seconds is taken as that,
/// not refused with "takes a number of seconds ≥ 0".
#[test]
fn a_huge_number_of_seconds_is_forever_not_refused() {
    let mut gone = Command::new("true").spawn().expect("spawn true");
    gone.wait().expect("wait true");
    let pid = gone.id().to_string();
    let url = format!("http://127.0.0.1:{}/", free_port());
    let (code, _, err) = run(&[
        "watch",
        &url,
        "--connect-timeout",
        "1e30",
        "--progress-interval",
        "1e300",
        "--pid",
        &pid,
    ]);
    assert_eq!(code, 3, "the run is gone, so watch gives up at once: {err}");
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("huge", 5));
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &[
            "--no-serve",
            "--progress-interval",
            "1e30",
            "--drain-timeout",
            "1e30",
        ],
    ));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_token_protected_run_needs_the_token() {
    let db = TempDb::counters(100);
    let mut run = start_run(
        &db,
        &counter_plan("tok", 50),
        &words("--token s3cret --linger 30"),
    );
    let url = format!("http://{}/", run.addr());
    let (code, _, err) = crate::util::run(&["watch", &url]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs a token"), "{err}");
    // A wrong token in the URL is sent, so it is the token that is refused.
    let (code, _, err) = crate::util::run(&["watch", &format!("{url}?token=wrong")]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("?token=*** refused the token (401 Unauthorized)"),
        "{err}"
    );
    let mut w = spawn(&["watch", &url, "--progress", "json"], |c| {
        c.env("BATCHSSE_TOKEN", "s3cret");
    });
    assert_eq!(w.wait().code(), Some(0), "{}", w.stderr());
    assert_full_run(&w.stdout(), "ok");
    run.signal("INT");
    run.wait();
}

/// A run that keeps answering 503 (its --max-clients taken) is named as
/// such when watch gives up, not as "no batchsse run answered … start
/// `batchsse run` first".
#[test]
fn a_run_with_every_client_slot_taken_is_named_as_such() {
    let db = TempDb::counters(40);
    let mut run = start_run(
        &db,
        &counter_plan("full", 1),
        &words("--max-clients 1 --wait-for-clients 1 --batch-size 1 --sleep 50"),
    );
    let mut one = Stream::open(run.addr(), "/events", &[]);
    assert_eq!(one.status, 200);
    let url = format!("http://{}/", run.addr());
    let mut w = watch(&url, &["--connect-timeout", "0.5"]);
    assert_eq!(w.wait().code(), Some(3), "{}", w.stderr());
    let err = w.stderr();
    assert!(
        err.contains("kept refusing") && err.contains("--max-clients"),
        "{err}"
    );
    assert!(!err.contains("start `batchsse run` first"), "{err}");
    one.rest();
    run.wait();
}

/// A token given in the URL (`?token=T`, as the server takes it) works,
/// and is never printed: watch's messages land in CI logs.
#[test]
fn a_token_in_the_url_is_sent_but_never_printed() {
    let db = TempDb::counters(100);
    let mut run = start_run(
        &db,
        &counter_plan("tok", 50),
        &words("--token s3cretTok --linger 30"),
    );
    let url = format!("http://{}/events?token=s3cretTok", run.addr());
    let mut w = watch(&url, &[]);
    assert_eq!(w.wait().code(), Some(0), "{}", w.stderr());
    assert_full_run(&w.stdout(), "ok");
    assert!(!w.stderr().contains("s3cretTok"), "{}", w.stderr());
    // The messages that name the URL: nobody answers, a bad last_event_id.
    let nobody = format!("http://127.0.0.1:{}/?token=s3cretTok&x=1", free_port());
    let bad = format!("{url}&last_event_id=x");
    for (url, code) in [(&nobody, 3), (&bad, 2)] {
        let (got, _, err) = crate::util::run(&["watch", url, "--connect-timeout", "0.3"]);
        assert_eq!(got, code, "{url}: {err}");
        assert!(!err.contains("s3cretTok"), "the token is printed: {err}");
        assert!(err.contains("token=***"), "{err}");
    }
    run.signal("INT");
    run.wait();
}

#[test]
fn run_progress_json_equals_the_sse_events() {
    let db = TempDb::counters(300);
    let plan = serde_json::json!({
        "name": "json ✓ \"quoted\"",
        "steps": [
            {"name": "reset\nall", "sql": "UPDATE t SET counter = 0"},
            {"name": "bump", "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
             "chunk": {"table": "t", "key": "id", "size": 50}}
        ]
    })
    .to_string();
    let file = db.file("plan.json", &plan);
    let mut run = Proc::start(&[
        "run",
        "--db",
        path_str(&db.path),
        "--plan",
        path_str(&file),
        "--listen",
        "127.0.0.1:0",
        "--wait-for-clients",
        "1",
        "--progress",
        "json",
    ]);
    let stream = Stream::open(run.addr(), "/events", &[]).rest();
    assert_eq!(run.wait().code(), Some(0), "{}", run.stderr());
    let lines = json_lines(&run.stdout());
    let printed: Vec<_> = lines.iter().map(line_triple).collect();
    let sent: Vec<_> = stream.iter().map(event_triple).collect();
    assert!(sent.iter().any(|(_, e, _)| e == "message"), "{sent:?}");
    assert_eq!(printed, sent);
}

/// A pipe whose reading end is already closed, like `| head` after it quit.
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    writer
}

#[test]
fn closed_stdout_or_stderr_never_panics() {
    let db = TempDb::counters(200);
    let plan = db.file("plan.json", &counter_plan("pipes", 20));
    let db_arg = path_str(&db.path);
    let plan_arg = path_str(&plan);
    let base = [
        "run",
        "--db",
        db_arg,
        "--plan",
        plan_arg,
        "--no-serve",
        "--no-checkpoint",
    ];

    // `batchsse run --progress json | head -0`: stdout gone, stderr captured.
    let out = Command::new(BIN)
        .args(base)
        .args(["--progress", "json"])
        .env_remove("BATCHSSE_TOKEN")
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("roken pipe"),
        "{err}"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 1"),
        200
    );

    // stderr gone: a finished run, a usage error and an unreachable watch
    // keep their exit statuses (a panic would make them 101).
    let unreachable = format!("http://127.0.0.1:{}/", free_port());
    for (args, code) in [
        (&base[..], 0),
        (&words("run --db no-such.sqlite --sql -")[..], 2),
        (&["watch", &unreachable, "--connect-timeout", "0"][..], 3),
    ] {
        let status = Command::new(BIN)
            .args(args)
            .args(["--progress", "plain"])
            .env_remove("BATCHSSE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(closed_pipe())
            .status()
            .expect("run");
        assert_eq!(status.code(), Some(code), "{args:?}");
    }
}

#[test]
fn watch_json_stops_when_its_reader_is_gone_and_the_run_goes_on() {
    // A run of ~200 s: 1,000 chunks with a 200 ms pause after each.
    let db = TempDb::counters(1000);
    let mut run = start_run(
        &db,
        &counter_plan("head", 1),
        &words("--wait-for-clients 1 --batch-size 1 --sleep 200"),
    );
    // `batchsse watch … --progress json | head -0`.
    let mut w = Proc::start_with(
        &[
            "watch",
            &format!("http://{}/", run.addr()),
            "--progress",
            "json",
        ],
        |c| {
            c.stdout(closed_pipe());
        },
    );
    let code = w.wait_for(Duration::from_secs(30)).code();
    assert_eq!(code, Some(141), "{}", w.stderr());
    assert!(!w.stderr().contains("panicked"), "{}", w.stderr());
    // The run did not notice: it is still going.
    let s = get(run.addr(), "/status", &[]).json();
    assert_eq!(s["state"], "running", "{s}");
    run.signal("INT");
    assert_eq!(run.wait().code(), Some(130));
}

/// `batchsse watch … 2>&1 | head -3`: the plain lines go to standard
/// error, whose reader was never looked at, so watch went on to the end
/// of the run. It now stops as `--progress json` does, for every mode that
/// writes to standard error.
#[test]
fn watch_plain_stops_when_the_reader_of_its_standard_error_is_gone() {
    stops_with_141(&["plain", "github"], || closed_pipe().into());
}

/// `batchsse watch … 2> log` on a full disk: the modes that write to
/// standard error went on to the end of the run, showing nothing and
/// exiting with the run's status, where `--progress json` exits 141.
#[test]
fn watch_stops_when_its_standard_error_cannot_be_written() {
    stops_with_141(&["plain", "github", "bar"], || dev_full().into());
}

/// Each watch in `modes`, its standard error `stderr()`, exits 141
/// while the run it follows goes on.
fn stops_with_141(modes: &[&str], stderr: impl Fn() -> Stdio) {
    let db = TempDb::counters(1000);
    let mut run = start_run(
        &db,
        &counter_plan("stderr", 1),
        &words("--wait-for-clients 1 --batch-size 1 --sleep 200"),
    );
    let url = format!("http://{}/", run.addr());
    for mode in modes {
        let mut w = spawn(&["watch", &url, "--progress", mode], |c| {
            c.stderr(stderr());
        });
        let code = w.wait_for(Duration::from_secs(30)).code();
        assert_eq!(code, Some(141), "{mode}");
    }
    let s = get(run.addr(), "/status", &[]).json();
    assert_eq!(s["state"], "running", "the run did not notice: {s}");
    run.signal("INT");
    assert_eq!(run.wait().code(), Some(130));
}

/// A file every write to fails as on a full disk.
fn dev_full() -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full")
}

#[test]
fn a_full_disk_under_json_output_is_said_once_and_the_run_goes_on() {
    let db = TempDb::counters(200);
    let plan = db.file("plan.json", &counter_plan("full", 20));
    let out = Command::new(BIN)
        .args(run_args(
            &db,
            path_str(&plan),
            &words("--no-serve --progress json"),
        ))
        .env_remove("BATCHSSE_TOKEN")
        .stdin(Stdio::null())
        .stdout(dev_full())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(
        err.matches("cannot write to standard output").count(),
        1,
        "{err}"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 1"),
        200
    );
}

#[test]
fn every_subcommand_has_help_with_examples_and_there_is_a_version() {
    for sub in ["run", "demo", "watch"] {
        let (code, out, _) = run(&[sub, "--help"]);
        assert_eq!(code, 0, "{sub}");
        assert!(
            out.contains("Examples:\n  batchsse "),
            "{sub} --help:\n{out}"
        );
    }
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    let commit = option_env!("BATCHSSE_COMMIT")
        .filter(|c| !c.is_empty())
        .map(|c| format!("commit {c}, "))
        .unwrap_or_default();
    assert_eq!(
        out.trim(),
        format!(
            "batchsse {} ({commit}SQLite {})",
            env!("CARGO_PKG_VERSION"),
            rusqlite::version()
        )
    );
    let (code, out, _) = run(&["-V"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("batchsse {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn plain_output_is_line_by_line_text_on_stderr_only() {
    let db = TempDb::counters(100);
    let mut run = start_run(
        &db,
        &counter_plan("plain", 50),
        &["--wait-for-clients", "1"],
    );
    let mut w = spawn(
        &[
            "watch",
            &format!("http://{}/", run.addr()),
            "--progress",
            "auto",
        ],
        |c| {
            c.env("TERM", "dumb");
        },
    );
    assert_eq!(w.wait().code(), Some(0));
    assert_eq!(w.stdout(), "", "human text belongs on stderr");
    let err = w.stderr();
    let lines: Vec<_> = BufReader::new(err.as_bytes())
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("batchsse: plan \"plain\"")),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("batchsse: finished ok")),
        "{err}"
    );
    assert!(
        !err.contains('\x1b'),
        "no escape codes off a terminal: {err:?}"
    );
    assert_eq!(run.wait().code(), Some(0));
}

#[test]
fn bars_asked_for_off_a_terminal_still_show_each_step_and_every_warning() {
    // `--progress bar` copied into a CI job: no bars can be drawn into a
    // log, but the lines meant above them must not be lost with them.
    let db = TempDb::counters(100);
    let plan = db.file(
        "plan.json",
        &serde_json::json!({"name": "quiet", "steps": [{
            "name": "bump none",
            "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi AND counter < 0",
            "chunk": {"table": "t", "key": "id", "size": 50}
        }]})
        .to_string(),
    );
    let (code, out, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--no-checkpoint", "--progress", "bar"],
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "", "human text belongs on stderr");
    for line in [
        "batchsse: plan \"quiet\"",
        "[1/1] bump none: done",
        "batchsse: warning: visited 100 rows of t by id and changed none",
        "batchsse: finished ok",
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(line)),
            "{line:?} in:\n{err}"
        );
    }
    assert!(
        !err.contains('\x1b'),
        "no escape codes off a terminal: {err:?}"
    );
}

/// The first `sh` block of the README's "In CI" section, for a run on
/// `port` (the README uses 7077).
fn readme_ci_script(port: u16) -> String {
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("\n## In CI\n").expect("an In CI section")..];
    let start = section.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let script = &section[start..];
    let script = &script[..script.find("```").expect("the block's end")];
    assert!(script.contains("127.0.0.1:7077"), "{script}");
    script.replace("127.0.0.1:7077", &format!("127.0.0.1:{port}"))
}

/// Runs the README's CI script in `dir` with this build's `batchsse` first
/// on PATH; returns (exit code, stdout + stderr, how long it took).
fn run_ci_script(dir: &std::path::Path) -> (Option<i32>, String, Duration) {
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_batchsse"))
        .parent()
        .expect("binary folder");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = dir.join("ci.sh");
    std::fs::write(&script, readme_ci_script(free_port())).expect("write script");
    let t0 = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("BATCHSSE_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("bash must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text, t0.elapsed())
}

#[test]
fn the_readme_ci_recipe_passes_a_good_batch_and_fails_fast_on_a_bad_plan() {
    let db = TempDb::shop(2_000);
    let dir = db.dir.path();
    std::fs::rename(&db.path, dir.join("shop.sqlite")).expect("name the db shop.sqlite");
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/sample-data/plan.json");
    std::fs::copy(sample, dir.join("plan.json")).expect("copy the sample plan");

    let (code, log, _) = run_ci_script(dir);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("batch exit status: 0"), "{log}");
    let result = std::fs::read_to_string(dir.join("batchsse-result.json")).expect("result");
    let finished: Value = serde_json::from_str(&result).expect("one JSON line");
    assert_eq!(finished["event"], "finished", "{result}");
    assert_eq!(finished["data"]["status"], "ok", "{result}");
    let events = std::fs::read_to_string(dir.join("batchsse-events.ndjson")).expect("events");
    assert_eq!(
        json_lines(&events).len() as u64,
        finished["id"].as_u64().unwrap()
    );

    // A plan that fails its check: the job fails with the run's 2, at once
    // rather than after watch's 30 s --connect-timeout, and nothing is written.
    std::fs::write(dir.join("plan.json"), r#"{"name":"typo","stepz":[]}"#).unwrap();
    let before = std::fs::read(dir.join("shop.sqlite")).unwrap();
    let (code, log, took) = run_ci_script(dir);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("batch exit status: 2"), "{log}");
    assert!(
        log.contains("stepz"),
        "the run's own message is in the log: {log}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}: {log}");
    assert_eq!(std::fs::read(dir.join("shop.sqlite")).unwrap(), before);
}

/// The pid of the child of `parent` whose command line holds `word`,
/// once there is one (within PATIENCE).
fn child_with(parent: u32, word: &str) -> u32 {
    let t0 = Instant::now();
    while t0.elapsed() < PATIENCE {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The parent is the second field after the command's name.
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, r)| r.split(' ').nth(1));
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if ppid == Some(&parent.to_string()) && String::from_utf8_lossy(&cmd).contains(word) {
                return pid;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no child of {parent} runs {word}");
}

/// The README's CI script whose `watch` alone is stopped (a `timeout`
/// around it, a person's Ctrl-C) while the run is still in its pre-run
/// check: `watch` exits 130, and the script must stop the run, which else
/// would wait at its `--wait-for-clients` gate for ever.
#[test]
#[cfg(unix)]
fn the_readme_ci_script_ends_when_its_watch_alone_is_stopped_before_the_run_listens() {
    let db = TempDb::counters(100);
    let dir = db.dir.path();
    std::fs::rename(&db.path, dir.join("shop.sqlite")).expect("name the db shop.sqlite");
    std::fs::write(dir.join("plan.json"), counter_plan("held", 10)).unwrap();
    // The run waits for this lock (under its 5 s --busy-timeout) before it listens.
    let lock = rusqlite::Connection::open(dir.join("shop.sqlite")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_batchsse"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::fs::write(dir.join("ci.sh"), readme_ci_script(free_port())).unwrap();
    let mut script = Command::new("bash")
        .arg("ci.sh")
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("BATCHSSE_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bash must be installed");
    let watch = child_with(script.id(), "watch");
    // Past the start of its signal handling (it dies of a TERM before).
    std::thread::sleep(Duration::from_millis(500));
    let ok = Command::new("kill")
        .args(["-TERM", &watch.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    std::thread::sleep(Duration::from_millis(500));
    lock.execute_batch("COMMIT").unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = script.try_wait().unwrap() {
            break Some(s);
        }
        if t0.elapsed() > Duration::from_secs(15) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.is_none() {
        // The run is a child of the script: stop it, then the script.
        let run = child_with(script.id(), "--plan");
        let _ = Command::new("kill")
            .args(["-TERM", &run.to_string()])
            .status();
        let _ = script.wait();
    }
    let status = status.expect("the script still waited for its run 15 s after watch stopped");
    assert_eq!(status.code(), Some(130));
}

/// The `run: |` lines of the README's GitHub Actions step in "In CI", as
/// the runner hands them to bash, for a run on `port`.
fn readme_actions_step(port: u16) -> String {
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("\n## In CI\n").expect("an In CI section")..];
    let yaml = &section[section.find("```yaml\n").expect("a yaml block")..];
    let yaml = &yaml[..yaml[3..].find("```").expect("the block's end")];
    let body = &yaml[yaml.find("run: |\n").expect("a run block") + "run: |\n".len()..];
    let indent = body.len() - body.trim_start().len();
    let script: String = body
        .lines()
        .take_while(|l| l.len() > indent && l[..indent].trim().is_empty())
        .map(|l| format!("{}\n", &l[indent..]))
        .collect();
    assert!(script.contains("127.0.0.1:7077"), "{script}");
    script.replace("127.0.0.1:7077", &format!("127.0.0.1:{port}"))
}

/// The README's GitHub Actions step, run as the runner runs it (`bash -e
/// -o pipefail`, stderr a pipe, `GITHUB_ACTIONS`, the summary and output
/// files set): the log folds by step and the outcome reaches the summary
/// and the outputs; a plan refused before its run is an error annotation.
#[test]
fn the_readme_actions_step_annotates_summarises_and_sets_outputs() {
    let db = TempDb::shop(2_000);
    let dir = db.dir.path();
    std::fs::rename(&db.path, dir.join("shop.sqlite")).expect("name the db shop.sqlite");
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/sample-data/plan.json");
    std::fs::copy(sample, dir.join("plan.json")).expect("copy the sample plan");
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_batchsse"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (summary, outputs) = (dir.join("summary.md"), dir.join("outputs.txt"));
    let step = || {
        std::fs::write(dir.join("step.sh"), readme_actions_step(free_port())).unwrap();
        let out = Command::new("bash")
            .args(["--noprofile", "--norc", "-eo", "pipefail", "step.sh"])
            .current_dir(dir)
            .env("PATH", &path)
            .env("GITHUB_ACTIONS", "true")
            .env("GITHUB_STEP_SUMMARY", &summary)
            .env("GITHUB_OUTPUT", &outputs)
            .env_remove("BATCHSSE_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("bash must be installed");
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        let got = (out.status.code(), log, read(&summary), read(&outputs));
        let _ = (
            std::fs::remove_file(&summary),
            std::fs::remove_file(&outputs),
        );
        got
    };
    let (code, log, md, out) = step();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("::group::[2/5] backfill total_cents\n"),
        "{log}"
    );
    assert!(
        md.contains("| 2 | backfill total\\_cents | done | 2,000 |"),
        "{md}"
    );
    assert!(
        out.contains("status=ok\n") && out.contains("rows_changed="),
        "{out}"
    );

    std::fs::write(dir.join("plan.json"), r#"{"name":"typo","stepz":[]}"#).unwrap();
    let (code, log, md, out) = step();
    assert_eq!(code, Some(2), "{log}");
    // One annotation, the run's: watch, which gave up because the run
    // exited first, says so on a plain line, not as a second error.
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("::")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].starts_with("::error::batchsse: ") && errors[0].contains("stepz"),
        "{log}"
    );
    assert!(log.contains("\nbatchsse: the run (pid "), "{log}");
    assert!(md.contains("### batchsse run: failed (exit 2)"), "{md}");
    assert_eq!(md.matches("### ").count(), 1, "{md}");
    assert!(!out.contains("status="), "{out}");
}

/// A hostile "event stream" on a free port: a `200 text/event-stream`
/// head, then `pattern` over and over (at most 64 MiB), then silence until
/// the client leaves (at most 30 s). It serves one connection.
fn endless_stream(pattern: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let _ = s.read(&mut [0; 4096]);
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
        let block = pattern.repeat((64 << 10) / pattern.len());
        let mut sent = 0;
        while sent < 64 << 20 {
            let bytes = if sent == 0 {
                head.as_bytes()
            } else {
                &block[..]
            };
            if s.write_all(bytes).is_err() {
                return;
            }
            sent += bytes.len();
        }
        let _ = s.read(&mut [0; 1]);
    });
    addr
}

#[test]
fn an_endless_line_or_event_ends_watch_with_exit_3_not_a_full_memory() {
    for (pattern, what) in [
        (&b"x"[..], "a line longer than 16 MiB"),
        (&b"data: endless\n"[..], "an event longer than 16 MiB"),
    ] {
        let addr = endless_stream(pattern);
        let t0 = Instant::now();
        let mut w = watch(&format!("http://{addr}/"), &["--connect-timeout", "30"]);
        let code = w.wait_for(Duration::from_secs(20)).code();
        let err = w.stderr();
        assert_eq!(code, Some(3), "{err}");
        let says = format!("batchsse: http://{addr}/events sent {what}");
        assert!(err.starts_with(&says), "{err}");
        assert!(err.contains("a batchsse stream?"), "{err}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "took {:?}",
            t0.elapsed()
        );
        assert_eq!(w.stdout(), "");
    }
}

#[test]
fn a_run_restarted_on_the_same_address_is_followed_to_its_own_end() {
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}/");
    let start = |db: &TempDb, plan: &str, extra: &[&str]| {
        let plan = db.file("plan.json", plan);
        let mut args = run_args(db, path_str(&plan), &["--listen", &listen]);
        args.extend_from_slice(&words("--progress none --wait-for-clients 1"));
        args.extend_from_slice(extra);
        Proc::start(&args)
    };
    // Run A: about 40 s (2,000 chunks, 20 ms apart), killed early.
    let db_a = TempDb::counters(2000);
    let mut a = start(
        &db_a,
        &counter_plan("a", 1),
        &words("--batch-size 1 --sleep 20"),
    );
    let mut w = watch(&url, &["--connect-timeout", "10"]);
    let seen = 20;
    wait_status(a.addr(), |s| s["last_event_id"].as_u64() >= Some(seen));
    a.signal("KILL");
    a.wait();
    // Run B: a handful of events, all with ids the watch has already seen
    // from A, so it must tell the runs apart by run id, not by event id.
    let db_b = TempDb::counters(10);
    let mut b = start(&db_b, &counter_plan("b", 100), &[]);
    assert_eq!(b.wait().code(), Some(0), "{}", b.stderr());
    assert_eq!(w.wait().code(), Some(0), "watch stderr:\n{}", w.stderr());

    let lines = json_lines(&w.stdout());
    let restart = lines
        .iter()
        .rposition(|l| l["event"] == "start")
        .expect("a start line");
    assert!(restart >= seen as usize, "{lines:#?}");
    let (of_a, of_b) = lines.split_at(restart);
    assert_ne!(of_a[0]["data"]["run_id"], of_b[0]["data"]["run_id"]);
    assert_eq!(of_a[0]["data"]["plan"], "a");
    assert_eq!(of_b[0]["data"]["plan"], "b");
    // B in full, from its id 1 to its own `finished`.
    let b_ids: Vec<_> = of_b.iter().map(|l| l["id"].as_u64().unwrap()).collect();
    assert_eq!(b_ids, (1..=b_ids.len() as u64).collect::<Vec<_>>());
    assert!(
        b_ids.len() < seen as usize,
        "B must be shorter than what A sent"
    );
    let last = of_b.last().unwrap();
    assert_eq!(
        (&last["event"], &last["data"]["status"]),
        (&"finished".into(), &"ok".into())
    );
    let err = w.stderr();
    let run_b = of_b[0]["data"]["run_id"].as_str().unwrap();
    assert!(
        err.contains(&format!(
            "batchsse: a new run started on this address (run {run_b}); following it"
        )),
        "{err}"
    );
}

/// A stand-in server: answers its first connections with `bodies` in turn,
/// each as a `200 text/event-stream` without a run id header, closing the
/// connection after the body; records each request head.
fn scripted_streams(bodies: Vec<String>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    scripted_streams_as(bodies, "text/event-stream")
}

/// [`scripted_streams`], sent as `content_type`.
fn scripted_streams_as(
    bodies: Vec<String>,
    content_type: &'static str,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for body in bodies {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let _ = s.set_read_timeout(Some(PATIENCE));
            let mut head = [0; 4096];
            let n = s.read(&mut head).unwrap_or(0);
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head[..n]).into_owned());
            let _ = s.write_all(
                format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\nconnection: close\r\n\r\n{body}")
                    .as_bytes(),
            );
        }
    });
    (addr, requests)
}

/// SSE frames for `events` (name, data), with ids from 1.
fn frames(events: &[(&str, Value)]) -> String {
    events
        .iter()
        .enumerate()
        .map(|(i, (name, data))| {
            let name = (*name != "message").then_some(*name);
            let frame = batchsse::sse::encode(Some(i as u64 + 1), name, &data.to_string());
            String::from_utf8(frame.expect("frame").to_vec()).expect("utf-8")
        })
        .collect()
}

#[test]
fn a_new_run_that_answers_before_its_start_is_logged_is_told_apart_by_its_start() {
    let start = |run_id: &str| {
        serde_json::json!({"run_id": run_id, "plan": run_id, "db": "x.sqlite", "ts_ms": 1,
            "steps": [{"index": 0, "name": "s", "kind": "sql"}], "dry_run": false, "resumed": false})
    };
    let message = serde_json::json!({"target": {}, "status": "info", "message": "m", "ts_ms": 1});
    let finished = serde_json::json!({"status": "ok", "steps_done": 1, "steps_total": 1,
        "rows_changed": 0, "elapsed_ms": 1, "dry_run": false, "ts_ms": 1});
    // Run A's server sends five events and dies; run B's answers the
    // reconnect before its `start` is logged (so without a run id header),
    // then sends its whole, shorter run.
    let mut a = vec![("start", start("run-a"))];
    a.extend(std::iter::repeat_n(("message", message.clone()), 4));
    let b = [("start", start("run-b")), ("finished", finished)];
    let (addr, requests) = scripted_streams(vec![frames(&a), frames(&b)]);
    let mut w = watch(&format!("http://{addr}/"), &["--connect-timeout", "2"]);
    assert_eq!(w.wait().code(), Some(0), "{}", w.stderr());
    let ids: Vec<_> = json_lines(&w.stdout())
        .iter()
        .map(|l| {
            (
                l["id"].as_u64().unwrap(),
                l["event"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<_> = [
        (1, "start"),
        (2, "message"),
        (3, "message"),
        (4, "message"),
        (5, "message"),
        (1, "start"),
        (2, "finished"),
    ]
    .iter()
    .map(|(i, e)| (*i, e.to_string()))
    .collect();
    assert_eq!(ids, want);
    assert!(
        w.stderr()
            .contains("batchsse: a new run started on this address (run run-b); following it"),
        "{}",
        w.stderr()
    );
    // The reconnect named the run its Last-Event-ID came from.
    let again = requests.lock().unwrap()[1].to_ascii_lowercase();
    assert!(again.contains("last-event-id: 5\r\n"), "{again}");
    assert!(again.contains("x-batchsse-run-id: run-a\r\n"), "{again}");
}

/// Odd but valid `text/event-stream` bytes (WHATWG): a BOM, CR-only and
/// CRLF line ends, comments, `retry:`, a field without a colon, an id with
/// NUL (ignored), `data` over two lines, and a last event cut before its
/// blank line (never dispatched: the reconnect gets it). `--progress json`
/// still prints one JSON object a line, and the exit is the run's.
#[test]
fn odd_but_valid_streams_are_read_as_a_browser_would_and_printed_one_line_an_event() {
    let start = serde_json::json!({"run_id": "odd", "plan": "p", "db": "x.sqlite", "ts_ms": 1,
        "steps": [{"index": 0, "name": "s", "kind": "sql"}], "dry_run": false, "resumed": false});
    let message = serde_json::json!({"target": {}, "status": "info", "message": "m", "ts_ms": 1});
    let finished = serde_json::json!({"status": "failed", "steps_done": 0, "steps_total": 1,
        "rows_changed": 0, "elapsed_ms": 1, "dry_run": false, "ts_ms": 1, "error": "boom"});
    let first = format!(
        "\u{feff}: hello\rretry: 100\rid: 1\revent: start\rdata: {start}\r\r\
         id: 2\r\ndata: {{\"target\":{{}},\r\ndata: \"status\":\"info\",\"message\":\"two lines\",\"ts_ms\":1}}\r\n\r\n\
         id: 3\0x\nid: 3\nnocolon\ndata:{message}\n\n\
         id: 4\nevent: finished\ndata: {finished}\n"
    );
    let second = format!("id: 4\nevent: finished\ndata: {finished}\n\n");
    let (addr, requests) = scripted_streams(vec![first, second]);
    let mut w = watch(&format!("http://{addr}/"), &["--connect-timeout", "2"]);
    assert_eq!(w.wait().code(), Some(1), "{}", w.stderr());
    let out = w.stdout();
    assert_eq!(out.lines().count(), 4, "one line an event:\n{out}");
    let got: Vec<_> = json_lines(&out)
        .iter()
        .map(|l| {
            (
                l["id"].as_u64().unwrap(),
                l["event"].clone(),
                l["data"].clone(),
            )
        })
        .collect();
    let two =
        serde_json::json!({"target": {}, "status": "info", "message": "two lines", "ts_ms": 1});
    assert_eq!(
        got,
        [
            (1, "start".into(), start),
            (2, "message".into(), two),
            (3, "message".into(), message),
            (4, "finished".into(), finished),
        ]
    );
    let again = requests.lock().unwrap()[1].to_ascii_lowercase();
    assert!(again.contains("last-event-id: 3\r\n"), "{again}");
}

/// In github mode every error gets one annotation: a failed step's (and
/// its repeat as the run's error message is not printed again), and an
/// error of the run's own, outside any step (an `--atomic` run that cannot
/// commit, an undo that cannot read its record), which had none.
#[test]
fn in_github_mode_every_error_is_annotated_once() {
    let db = TempDb::counters(10);
    let mut run = start_run(&db, FAILING_PLAN, &["--linger", "30"]);
    let (code, _, err) = crate::util::run(&[
        "watch",
        &format!("http://{}/", run.addr()),
        "--progress",
        "github",
    ]);
    assert_eq!(code, 1, "{err}");
    let errors = err.lines().filter(|l| l.starts_with("::error")).count();
    assert_eq!(errors, 1, "{err}");
    assert!(!err.contains("batchsse: error:"), "said twice: {err}");
    run.signal("INT");
    run.wait();

    let start = serde_json::json!({"run_id": "own", "plan": "p", "db": "x.sqlite", "ts_ms": 1,
        "steps": [{"index": 0, "name": "s", "kind": "sql"}], "dry_run": false, "resumed": false});
    let error = serde_json::json!({"target": {"db": "x.sqlite"}, "status": "error",
        "message": "the run's transaction could not commit: 100% full", "ts_ms": 1});
    let finished = serde_json::json!({"status": "failed", "steps_done": 1, "steps_total": 1,
        "rows_changed": 0, "elapsed_ms": 1, "dry_run": false, "ts_ms": 1,
        "error": "the run's transaction could not commit: 100% full"});
    let body = frames(&[("start", start), ("message", error), ("finished", finished)]);
    let (addr, _) = scripted_streams(vec![body]);
    let (code, _, err) =
        crate::util::run(&["watch", &format!("http://{addr}/"), "--progress", "github"]);
    assert_eq!(code, 1, "{err}");
    let annotations: Vec<&str> = err.lines().filter(|l| l.starts_with("::error")).collect();
    assert_eq!(
        annotations,
        ["::error::the run's transaction could not commit: 100%25 full"],
        "{err}"
    );
}

/// An undo stopped by a conflict under `--on-conflict abort` says its
/// error once, as a failed run does: it logged the error before the
/// step's failure, so a viewer annotated it twice in an Actions job (once
/// without the step's title) and said it twice on any terminal.
#[test]
fn an_undo_stopped_by_a_conflict_says_its_error_once() {
    let db = bumped();
    db.conn()
        .execute_batch("UPDATE t SET counter = 7 WHERE id = 5")
        .unwrap();
    let args = undo_of_plan(&db, "bump", &["--on-conflict", "abort"]);
    let args: Vec<&str> = args.into_iter().filter(|a| *a != "--no-serve").collect();
    let mut undo = Proc::start(
        &[
            &args[..],
            &["--listen", "127.0.0.1:0", "--wait-for-clients", "1"],
            &["--linger", "30", "--progress", "github"],
        ]
        .concat(),
    );
    let url = format!("http://{}/", undo.addr());
    let (code, _, err) = crate::util::run(&["watch", &url, "--progress", "github"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("conflict in t at key 5"), "{err}");
    let errors = err.lines().filter(|l| l.starts_with("::error")).count();
    assert_eq!(errors, 1, "one annotation: {err}");
    let (code, _, err) = crate::util::run(&["watch", &url, "--progress", "plain"]);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("batchsse: error:"), "said twice: {err}");
    undo.signal("INT");
    undo.wait();
    let own = undo.stderr();
    let errors = own.lines().filter(|l| l.starts_with("::error")).count();
    assert_eq!(errors, 1, "the undo's own output: {own}");
}

/// GitHub's runner trims a line's leading white space before it looks for
/// `::`, so the run's error, printed indented under its outcome, must not
/// become a command of its own when it begins with one (here from a
/// stream that is not batchsse's own), in github mode or any mode in an
/// Actions log.
#[test]
fn an_error_that_begins_with_a_command_is_not_one_under_the_outcome() {
    let start = serde_json::json!({"run_id": "own", "plan": "p", "db": "x.sqlite", "ts_ms": 1,
        "steps": [{"index": 0, "name": "s", "kind": "sql"}], "dry_run": false, "resumed": false});
    for error in ["::warning::pwned", "\u{3000}\t::add-mask::pwned"] {
        let finished = serde_json::json!({"status": "failed", "steps_done": 0, "steps_total": 1,
            "rows_changed": 0, "elapsed_ms": 1, "dry_run": false, "ts_ms": 1, "error": error});
        for progress in ["github", "plain", "json"] {
            let body = frames(&[("start", start.clone()), ("finished", finished.clone())]);
            let (addr, _) = scripted_streams(vec![body]);
            let (code, _, err) = run_with_env(
                &["watch", &format!("http://{addr}/"), "--progress", progress],
                None,
                &[("GITHUB_ACTIONS", "true")],
            );
            assert_eq!(code, 1, "{err}");
            assert!(err.contains("pwned"), "the error is shown: {err}");
            for line in err.lines() {
                assert!(
                    !line.trim_start().starts_with("::") || !line.contains("pwned"),
                    "{progress}: {line:?} in:\n{err}"
                );
            }
        }
    }
}

/// Media types are case-insensitive: a stream sent as
/// `Text/Event-Stream; charset=utf-8` is followed like any other.
#[test]
fn a_stream_whose_media_type_is_written_in_capitals_is_followed() {
    let start = serde_json::json!({"run_id": "caps", "plan": "p", "db": "x.sqlite", "ts_ms": 1,
        "steps": [], "dry_run": false, "resumed": false});
    let finished = serde_json::json!({"status": "ok", "steps_done": 0, "steps_total": 0,
        "rows_changed": 0, "elapsed_ms": 1, "dry_run": false, "ts_ms": 1});
    let body = frames(&[("start", start), ("finished", finished)]);
    let (addr, _) = scripted_streams_as(vec![body], "Text/Event-Stream; charset=UTF-8");
    let mut w = watch(&format!("http://{addr}/"), &["--connect-timeout", "2"]);
    assert_eq!(w.wait().code(), Some(0), "{}", w.stderr());
    assert_eq!(json_lines(&w.stdout()).len(), 2, "{}", w.stdout());
}

/// A run slowed to seconds (chunks of 10 rows, 20 ms apart) that waits
/// for one client.
fn slow_run_for_one_client(db: &TempDb) -> Proc {
    start_run(
        db,
        &counter_plan("slow", 10),
        &["--sleep", "20", "--wait-for-clients", "1"],
    )
}

/// A watch in github mode whose run is killed mid-step (`kill -9`, an
/// out-of-memory killer) closes the step's group before its error: a group
/// left open folds the error, and the rest of the job's step, out of sight.
#[test]
fn in_github_mode_a_run_killed_mid_step_leaves_no_group_open() {
    let db = TempDb::counters(2_000);
    let run = slow_run_for_one_client(&db);
    let url = format!("http://{}/", run.addr());
    let pid = run.child.id().to_string();
    let mut w = spawn(
        &["watch", &url, "--progress", "github", "--pid", &pid],
        |_| {},
    );
    let t0 = Instant::now();
    while w.stderr_time("::group::").is_none() {
        assert!(t0.elapsed() < PATIENCE, "no group: {}", w.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    run.signal("KILL");
    assert_eq!(w.wait_for(Duration::from_secs(20)).code(), Some(3));
    let err = w.stderr();
    let lines: Vec<&str> = err.lines().collect();
    let at = |p: &str| lines.iter().position(|l| l.starts_with(p));
    let (group, end, error) = (
        at("::group::[1/1] bump counters"),
        at("::endgroup::"),
        at("::error::batchsse: lost the stream"),
    );
    assert!(group.is_some() && error.is_some(), "{err}");
    assert!(group < end && end < error, "{err}");
}

/// A watch that loses its run (killed, or a relay that gave up) says so
/// within seconds and that it keeps trying, rather than sit silent for the
/// whole --connect-timeout before its last line.
#[test]
fn a_watch_that_lost_its_run_says_it_is_reconnecting() {
    let db = TempDb::counters(2_000);
    let run = slow_run_for_one_client(&db);
    let url = format!("http://{}/", run.addr());
    let args = [
        "watch",
        &url,
        "--progress",
        "plain",
        "--connect-timeout",
        "6",
    ];
    let mut w = spawn(&args, |_| {});
    w.wait_stderr("bump counters");
    run.signal("KILL");
    let killed = Instant::now();
    assert_eq!(w.wait_for(Duration::from_secs(20)).code(), Some(3));
    let said = w.stderr_time("trying to reconnect for up to 6 s");
    let err = w.stderr();
    let at = said.unwrap_or_else(|| panic!("never said it was reconnecting: {err}"));
    assert!(at - killed < Duration::from_secs(4), "said late: {err}");
    let (note, gave_up) = (
        err.find("trying to reconnect").unwrap(),
        err.find("could not reconnect within 6 s").expect(&err),
    );
    assert!(note < gave_up, "{err}");
}

/// An SSE server that is not batchsse, as a Node or Python app serves one:
/// each connection gets `body` (events without ids, none of batchsse's),
/// then is closed, or with `open` gets it again every 50 ms until the
/// client leaves. One connection at a time, at most 60 s; stopped and
/// joined on drop.
struct ForeignSse {
    addr: SocketAddr,
    served: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ForeignSse {
    fn start(body: &'static str, open: bool) -> ForeignSse {
        use std::sync::atomic::Ordering::Relaxed;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (n, halt) = (served.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + PATIENCE;
            while !halt.load(Relaxed) && Instant::now() < end {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                n.fetch_add(1, Relaxed);
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = s.read(&mut [0; 4096]);
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";
                let mut sent = s.write_all(head.as_bytes());
                while sent.is_ok() && !halt.load(Relaxed) && Instant::now() < end {
                    sent = s.write_all(body.as_bytes());
                    if !open {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        ForeignSse {
            addr,
            served,
            stop,
            thread: Some(thread),
        }
    }

    fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for ForeignSse {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `watch` pointed at an event stream that is not a batchsse run (an
/// app's own, on the wrong port) reconnected to it forever, or printed a
/// warning an event forever: now it gives up after a few of its events,
/// with exit 3 (what answered is not a batchsse run) and what to check.
#[test]
fn an_event_stream_that_is_not_a_batchsse_run_ends_watch_with_exit_3() {
    for (body, open) in [
        ("data: hello\n\ndata: world\n\n", false),
        ("event: price\ndata: {\"eur\": 3}\n\n", true),
    ] {
        let server = ForeignSse::start(body, open);
        let url = format!("http://{}/", server.addr);
        let t0 = Instant::now();
        let mut w = watch(&url, &["--connect-timeout", "30"]);
        let code = w.wait_for(Duration::from_secs(20)).code();
        let err = w.stderr();
        assert_eq!(code, Some(3), "{body:?}: {err}");
        let says = format!(
            "batchsse: http://{}/events serves an event stream that is not a batchsse run",
            server.addr
        );
        assert!(err.contains(&says), "{body:?}: {err}");
        assert!(err.contains("check the address"), "{body:?}: {err}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{body:?}: took {:?}",
            t0.elapsed()
        );
        assert!(server.served() <= 5, "{body:?}: {} tries", server.served());
        assert_eq!(w.stdout(), "", "{body:?}");
    }
}

/// A stand-in for another program on a port: answers every request with
/// `head` (a status line and headers) and `body`, then closes.
fn answering(head: &'static str, body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.set_read_timeout(Some(PATIENCE));
            let _ = s.read(&mut [0; 4096]);
            let reply = format!(
                "{head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes());
        }
    });
    addr
}

/// Another program on the port given: its 404 (or a page that is no event
/// stream) at `/events` said "give its base URL, e.g.
/// http://127.0.0.1:7077/", which is what was given (a port alone, or a
/// base URL). Then it says that server is no batchsse run; only for a URL
/// with a path of its own does it ask for the run's base URL.
#[test]
fn another_program_on_the_port_is_named_as_such_not_asked_for_the_url_given() {
    for head in [
        "HTTP/1.1 404 Not Found\r\ncontent-type: text/html",
        "HTTP/1.1 200 OK\r\ncontent-type: text/html",
    ] {
        let addr = answering(head, "<html>not here</html>");
        let port = addr.port().to_string();
        for given in [
            port.clone(),
            format!("http://{addr}/"),
            format!("http://{addr}/events"),
        ] {
            let mut w = watch(&given, &[]);
            assert_eq!(w.wait().code(), Some(3), "{given}: {}", w.stderr());
            let err = w.stderr();
            assert!(
                err.contains(&format!(
                    "the server at http://{addr}/ is not a batchsse run"
                )),
                "{given}: {err}"
            );
            assert!(!err.contains("base URL"), "{given}: {err}");
        }
        // `ctl` reads the URL as `watch` does, and says the same.
        let (code, _, err) = run(&["ctl", &port, "pause", "--control-token", "t"]);
        assert_eq!(code, 3, "{err}");
        assert!(
            err.contains(&format!(
                "the server at http://{addr}/ is not a batchsse run"
            )),
            "{err}"
        );
        // A path of its own: maybe a run's prefix (behind a proxy) mistyped.
        let mut w = watch(&format!("http://{addr}/batch/"), &[]);
        assert_eq!(w.wait().code(), Some(3), "{}", w.stderr());
        let err = w.stderr();
        assert!(
            err.contains(&format!("http://{addr}/batch/events")),
            "{err}"
        );
        assert!(err.contains("give the run's base URL"), "{err}");
    }
}

/// A server that answers with an empty event stream and closes it (a
/// proxy in front of nothing, say) was taken for a run's stream lost at
/// once: every try restarted the clock of --connect-timeout, and `watch`
/// retried forever. A stream that sent nothing is now a failed try.
#[test]
fn an_empty_event_stream_ends_watch_after_its_connect_timeout() {
    let server = ForeignSse::start("", false);
    let url = format!("http://{}/", server.addr);
    let t0 = Instant::now();
    let mut w = watch(&url, &["--connect-timeout", "2"]);
    let code = w.wait_for(Duration::from_secs(20)).code();
    let err = w.stderr();
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "no batchsse run answered at http://{}/events within 2 s (the server closed the stream without sending anything)",
            server.addr
        )),
        "{err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert!(server.served() > 1, "tried again meanwhile");
}

/// `watch --progress json | grep -m1 …` against a run that then sends
/// nothing for a while (here it waits for a second client): grep has its
/// line and is gone, but watch noticed only at its next write, so the
/// pipeline hung as long as the run stayed quiet. It now looks at every
/// frame, the run's keep-alives (every 15 s) included.
#[test]
fn watch_into_a_reader_that_left_ends_while_the_run_is_quiet() {
    let db = TempDb::counters(10);
    let mut run = start_run(
        &db,
        &counter_plan("quiet", 1),
        &words("--wait-for-clients 2"),
    );
    let url = format!("http://{}/", run.addr());
    let mut w = spawn(&["watch", &url, "--progress", "json"], |_| {});
    let mut out = w.child.stdout.take().expect("watch's stdout");
    // Every event so far is in the pipe by now, and the run sends no more.
    wait_status(run.addr(), |s| s["clients"] == 1);
    std::thread::sleep(Duration::from_millis(1500));
    let mut pending = vec![0u8; 1 << 16];
    let n = std::io::Read::read(&mut out, &mut pending).unwrap();
    assert!(String::from_utf8_lossy(&pending[..n]).contains("\"start\""));
    drop(out); // the reader is gone; the run waits on
    let code = w.wait_for(Duration::from_secs(40)).code();
    assert_eq!(code, Some(141), "{}", w.stderr());
    let s = get(run.addr(), "/status", &[]).json();
    assert_eq!(s["state"], "waiting", "the run did not notice: {s}");
    run.signal("INT");
    assert_eq!(run.wait().code(), Some(130));
}
