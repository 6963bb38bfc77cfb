//! The dashboard and `--cors` in a real headless Chromium: each test starts
//! the real `batchsse run`, lets `tests/browser/observe.mjs` (playwright-core)
//! open a page, and asserts on what the page rendered and requested.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::*;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
const PLAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sample-data/plan.json");
/// Longer than Chromium's default EventSource retry (3 s): a page that does
/// not close its stream on `finished` asks for `/events` again within it.
const SETTLE_MS: u64 = 3600;

/// One browser at a time: the machine is small and Chromium is heavy.
static BROWSER: Mutex<()> = Mutex::new(());

/// Why the browser tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    let chromium =
        std::env::var("BATCHSSE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium}; install it with `apt-get install chromium` (or set BATCHSSE_CHROMIUM)"
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no `node` on PATH; install Node.js 20 or later".into());
    }
    if !Path::new(MANIFEST)
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        return Some(
            "playwright-core is not installed; run `npm ci --prefix tests/browser`".into(),
        );
    }
    None
}

/// The browser lock, or `None` (skip) when no browser is installed. In CI
/// a missing browser is a failure, so the tests can never silently vanish.
fn browser() -> Option<MutexGuard<'static, ()>> {
    if let Some(why) = missing() {
        if std::env::var_os("CI").is_some() {
            panic!("browser test cannot run in CI: {why}");
        }
        eprintln!("skipping browser test: {why}");
        return None;
    }
    Some(BROWSER.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Node running observe.mjs on `url`; `finish` collects its JSON report.
struct Observer {
    child: std::process::Child,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

impl Observer {
    fn start(url: &str, opts: Value) -> Observer {
        let mut child = Command::new("node")
            .arg(Path::new(MANIFEST).join("tests/browser/observe.mjs"))
            .arg(url)
            .arg(opts.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node");
        let mut o = child.stdout.take().expect("stdout");
        let mut e = child.stderr.take().expect("stderr");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = o.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        });
        Observer {
            child,
            out: Some(out),
            err: Some(err),
        }
    }

    /// Waits until the page creates `path` (a `touch` action) or its
    /// script has ended first (a failed action, which `finish` reports).
    fn wait_file(&mut self, path: &Path) {
        let start = Instant::now();
        while !path.exists() {
            if self.child.try_wait().expect("try_wait node").is_some() {
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the page never created {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(mut self) -> Value {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait node") {
                break s;
            }
            if start.elapsed() > PATIENCE {
                let _ = self.child.kill();
                panic!("the browser script did not finish within {PATIENCE:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = self
            .out
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let err = self
            .err
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        assert!(status.success(), "observe.mjs failed ({status}):\n{err}");
        let v: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("observe.mjs printed no JSON ({e}):\n{out}\n{err}"));
        assert_eq!(
            v["page_errors"],
            json!([]),
            "script errors in the page: {v:#}"
        );
        v
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn observe(url: &str, opts: Value) -> Value {
    Observer::start(url, opts).finish()
}

/// `batchsse run` over the sample plan on a 2,000-order shop, slow enough
/// (20 chunks per chunked step) to watch.
fn start_run(db: &TempDb, sleep_ms: u64, extra: &[&str]) -> Proc {
    let sleep = sleep_ms.to_string();
    let mut args = vec!["--batch-size", "100", "--sleep", &sleep];
    args.extend_from_slice(extra);
    serving(db, PLAN, &args)
}

/// Old sessions the plan's purge step deletes.
fn old_sessions(db: &TempDb) -> i64 {
    db.query_i64("SELECT count(*) FROM sessions WHERE created_at < '2026-01-01'")
}

/// Rows the plan changed, counted in the database itself: every chunked
/// update bumps `orders.counter`, and the purge deletes the old sessions.
fn rows_changed(db: &TempDb, old_sessions_before: i64) -> i64 {
    db.query_i64("SELECT sum(counter) FROM orders") + old_sessions_before - old_sessions(db)
}

/// Each step's state as the page shows it, in order.
fn step_states(v: &Value) -> Vec<Value> {
    v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["state"].clone())
        .collect()
}

/// `2900` as the page shows it, `2,900`.
fn thousands(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The text of every `message` event, from the server's own replay.
fn messages(addr: SocketAddr, headers: &[(&str, &str)]) -> Vec<String> {
    let mut s = Stream::open(addr, "/events", headers);
    assert_eq!(s.status, 200);
    s.rest()
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| data(e)["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Polls `/status` until `ready` holds for it.
fn wait_status(addr: SocketAddr, headers: &[(&str, &str)], ready: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    loop {
        let s = get(addr, "/status", headers).json();
        if ready(&s) {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "status never got there: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The final state every complete run must show: all five steps done, the
/// ok banner with the row count the database shows, exactly the run's log.
fn assert_complete(v: &Value, rows: i64, log: &[String]) {
    assert_eq!(v["plan"], "reprice-2026", "{v:#}");
    let states = step_states(v);
    assert_eq!(states, vec![json!("done"); 5], "{v:#}");
    assert_eq!(v["overall"]["value"], 5, "{v:#}");
    assert_eq!(v["overall"]["max"], 5, "{v:#}");
    assert_eq!(v["banner"]["status"], "ok", "{v:#}");
    assert_eq!(v["banner"]["aria_live"], "polite");
    let banner = v["banner"]["text"].as_str().unwrap_or_default();
    let want = format!("{} rows changed", thousands(rows));
    assert!(
        banner.contains(&want) && banner.contains("5 / 5 steps"),
        "banner {banner:?}, want {want:?}"
    );
    assert!(!log.is_empty(), "the run logged no messages");
    assert_eq!(
        v["log"],
        json!(log),
        "the page's log must be the run's messages, once each"
    );
}

/// A reconnect (`req`, one of the page's `requests`) must resume with a
/// `Last-Event-ID` past the first event.
fn assert_resumes(req: &Value, v: &Value) {
    let from: u64 = req["last_event_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(
        from > 1,
        "the reconnect must resume with Last-Event-ID: {v:#}"
    );
}

/// No request to `/events` may start after the banner showed `finished`.
fn assert_no_request_after_end(v: &Value) {
    let end = v["ended_at"]
        .as_u64()
        .expect("the page showed a final banner");
    let reqs = v["requests"].as_array().expect("requests");
    assert!(!reqs.is_empty(), "the page never asked for /events");
    for r in reqs {
        assert!(
            r["at"].as_u64().unwrap_or(0) <= end,
            "/events requested after finished: {v:#}"
        );
    }
}

#[test]
fn the_dashboard_follows_a_whole_run_and_stops_at_finished() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let old = old_sessions(&db);
    // The run waits for the page's stream, so the page sees it live from
    // the first step; the linger keeps the replay available afterwards.
    let p = start_run(&db, 30, &["--wait-for-clients", "1", "--linger", "20"]);
    let url = format!("http://{}/", p.addr());
    let v = observe(&url, json!({"settle_ms": SETTLE_MS}));
    assert_complete(&v, rows_changed(&db, old), &messages(p.addr(), &[]));
    assert_no_request_after_end(&v);
    assert_eq!(
        v["requests"].as_array().map(Vec::len),
        Some(1),
        "one stream, no reconnects: {v:#}"
    );
    assert_eq!(v["conn"], "run over");
    assert_eq!(
        v["width"], v["viewport"],
        "the page must not scroll sideways"
    );
}

#[test]
fn a_late_page_with_a_token_replays_the_whole_run() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let old = old_sessions(&db);
    let auth = [("Authorization", "Bearer s3cret")];
    let p = start_run(&db, 30, &["--token", "s3cret", "--linger", "20"]);
    // Open the page only once the run is two steps in.
    wait_status(p.addr(), &auth, |s| s["steps_done"].as_u64() >= Some(2));
    let url = format!("http://{}/?token=s3cret", p.addr());
    let v = observe(&url, json!({"settle_ms": 500, "width": 390, "height": 800}));
    assert_complete(&v, rows_changed(&db, old), &messages(p.addr(), &auth));
    let first = &v["requests"][0];
    assert!(
        first["url"]
            .as_str()
            .unwrap_or_default()
            .contains("token=s3cret"),
        "{v:#}"
    );
    assert_eq!(
        first["last_event_id"],
        Value::Null,
        "a new page starts from id 1"
    );
    assert_eq!(
        v["width"], v["viewport"],
        "phone width: the page must not scroll sideways"
    );
}

/// A TCP proxy the test can cut: every connection through it is dropped at
/// once by `cut`, as a flaky network or a proxy restart would. With more
/// than one server it is a load balancer: after each cut, new connections
/// go to the next server.
struct Proxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    turn: Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    fn new(to: SocketAddr) -> Proxy {
        Self::balancing(vec![to])
    }

    fn balancing(servers: Vec<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let conns = Arc::new(Mutex::new(Vec::new()));
        let turn = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (keep, next) = (conns.clone(), turn.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().take(100) {
                let Ok(client) = client else { break };
                let n = next.load(std::sync::atomic::Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(servers[n % servers.len()]) else {
                    continue;
                };
                let mut list = keep.lock().unwrap_or_else(|p| p.into_inner());
                for s in [&client, &server] {
                    if let Ok(c) = s.try_clone() {
                        list.push(c);
                    }
                }
                pipe(&client, &server);
                pipe(&server, &client);
            }
        });
        Proxy { addr, conns, turn }
    }

    fn cut(&self) {
        self.turn.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        for s in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[test]
fn a_dropped_stream_resumes_without_duplicate_rows() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let old = old_sessions(&db);
    let auth = [("Authorization", "Bearer s3cret")];
    let p = start_run(
        &db,
        60,
        &[
            "--token",
            "s3cret",
            "--wait-for-clients",
            "1",
            "--linger",
            "20",
        ],
    );
    let proxy = Proxy::new(p.addr());
    let page = Observer::start(&format!("http://{}/?token=s3cret", proxy.addr), json!({}));
    // Cut mid-run, after the page has logged some messages.
    wait_status(p.addr(), &auth, |s| s["steps_done"].as_u64() >= Some(2));
    proxy.cut();
    let v = page.finish();
    assert_complete(&v, rows_changed(&db, old), &messages(p.addr(), &auth));
    let reqs = v["requests"].as_array().expect("requests");
    assert!(reqs.len() >= 2, "the page never reconnected: {v:#}");
    let resumed = &reqs[1];
    assert!(
        resumed["url"]
            .as_str()
            .unwrap_or_default()
            .contains("token=s3cret"),
        "{v:#}"
    );
    assert_resumes(resumed, &v);
    assert!(
        v["conn_history"]
            .as_array()
            .is_some_and(|h| h.contains(&json!("reconnecting…"))),
        "the page never said it was reconnecting: {v:#}"
    );
}

/// A page whose address now serves another run (the first was restarted,
/// or a balancer moved it): its stream names its run, so the new server
/// replays its own run whole, and the page starts over and shows that run
/// alone, not the first run's rows with the second's end.
#[test]
fn a_page_whose_address_serves_another_run_shows_that_run_whole() {
    let Some(_b) = browser() else { return };
    let (first_db, second_db) = (TempDb::shop(2000), TempDb::shop(2000));
    let old = old_sessions(&second_db);
    let gate = ["--wait-for-clients", "1", "--linger", "20"];
    let first = start_run(&first_db, 60, &gate);
    let second = start_run(&second_db, 20, &gate);
    let proxy = Proxy::balancing(vec![first.addr(), second.addr()]);
    let page = Observer::start(&format!("http://{}/", proxy.addr), json!({}));
    wait_status(first.addr(), &[], |s| s["steps_done"].as_u64() >= Some(2));
    proxy.cut();
    let v = page.finish();
    assert_complete(
        &v,
        rows_changed(&second_db, old),
        &messages(second.addr(), &[]),
    );
    let first_run = get(first.addr(), "/status", &[]).json()["run_id"].clone();
    let pinned = v["requests"].as_array().expect("requests").iter().any(|r| {
        let u = r["url"].as_str().unwrap_or_default();
        first_run
            .as_str()
            .is_some_and(|id| u.contains(&format!("run={id}")))
    });
    assert!(pinned, "the stream named its run: {v:#}");
}

/// A page locked out by `--max-clients` (its stream refused with 503)
/// says the server is full and where the run is, not "waiting for the run
/// to start…" while it runs; it keeps trying, and follows the run once a
/// slot frees.
#[test]
fn a_page_locked_out_by_max_clients_says_the_server_is_full_until_a_slot_frees() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    // A second between chunks: about 40 s in all, so the run is still
    // under way when the slot frees (a run that ended about 4 s in took the
    // server with it, and a page whose browser was that slow found none).
    let flags = ["--max-clients", "1", "--wait-for-clients", "1"];
    let p = start_run(&db, 1000, &flags);
    // The one slot, taken before the page comes; the run starts with it.
    let mut taken = Stream::open(p.addr(), "/events", &[]);
    taken.until("start");
    wait_status(p.addr(), &[], |s| s["steps_done"].as_u64() >= Some(1));
    let full = db.dir.path().join("full");
    let mut page = Observer::start(
        &format!("http://{}/", p.addr()),
        json!({"until": "actions", "timeout_ms": 20000, "actions": [
            {"wait": "#conn:has-text('server full')"},
            {"snapshot": "full"},
            {"touch": full},
            {"text": "#conn", "is": "live"},
            {"wait": ".step[data-state=running]"},
            {"snapshot": "in"},
        ]}),
    );
    page.wait_file(&full);
    // The slot frees: the server sees the stream gone at its next event.
    drop(taken);
    let v = page.finish();
    assert_eq!(v.get("action_error"), None, "{v:#}");
    let full = &v["snapshots"]["full"];
    let said = full["overall"]["text"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("the run is at ") && said.contains(" / 5 steps done"),
        "the run is under way, and the page must not say it waits to start: {said:?}"
    );
    assert_eq!(
        full["conn"], "server full: its one viewer slot is taken (--max-clients); retrying…",
        "{v:#}"
    );
    // In: the whole run so far, from its first event.
    let running = &v["snapshots"]["in"];
    assert_eq!(running["steps"][0]["state"], "done", "{v:#}");
    let said = running["overall"]["text"].as_str().unwrap_or_default();
    assert!(said.ends_with(" / 5 steps done"), "{said:?}");
    let tries = v["requests"].as_array().map_or(0, Vec::len);
    assert!(tries >= 2, "the page never tried again: {v:#}");
}

#[test]
fn the_page_says_when_the_server_is_gone() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let mut p = start_run(&db, 100, &["--wait-for-clients", "1"]);
    let page = Observer::start(
        &format!("http://{}/", p.addr()),
        json!({"settle_ms": SETTLE_MS}),
    );
    // Well into step 2: its `running` event went out at least two chunk
    // pauses (200 ms) ago, so the page has had it.
    wait_status(p.addr(), &[], |s| {
        s["step"].as_u64() == Some(1) && s["done"].as_u64() >= Some(300)
    });
    // A crash: no `finished` is ever sent.
    let _ = p.child.kill();
    let _ = p.child.wait();
    let v = page.finish();
    assert_eq!(v["banner"]["status"], "gone", "{v:#}");
    assert_eq!(v["conn"], "server gone", "{v:#}");
    // The page cannot tell a crash from an end it missed, and must not say
    // the run never reported one.
    let said = v["banner"]["text"].as_str().unwrap_or_default();
    assert!(
        said.contains("before this page received the run's end"),
        "{v:#}"
    );
    assert_no_request_after_end(&v);
    let running: Vec<&str> = v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["state"] == "running")
        .map(|s| s["text"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        running.len(),
        1,
        "the last state seen stays on screen: {v:#}"
    );
    // But not its time left, as if it still counted down.
    assert!(
        running[0].ends_with("ETA unknown: connection lost"),
        "{running:?}"
    );
    // Nor is "Steer this run…" offered: no server is left to steer.
    assert_eq!(v["steer"]["shown"], false, "{v:#}");
}

/// A page the way a Vue or React app would do it, served from another origin.
const OTHER_APP: &str = r#"<!doctype html><meta charset="utf-8"><title>another app</title>
<ol id="steps"></ol><ol id="log"></ol><div id="banner"></div><pre id="extra"></pre>
<script>
const base = "BASE";
const $ = (id) => document.getElementById(id);
const es = new EventSource(base + "/events");
const status = () => fetch(base + "/status").then((r) => r.json()).then((s) => "status " + s.state + " " + s.rows_changed, (e) => "status fetch failed: " + e);
es.addEventListener("start", (e) => {
  for (const s of JSON.parse(e.data).steps) {
    const li = document.createElement("li");
    li.dataset.state = "waiting";
    li.textContent = s.name;
    $("steps").append(li);
  }
});
es.addEventListener("step", (e) => { const d = JSON.parse(e.data); $("steps").children[d.index].dataset.state = d.state; });
es.onmessage = (e) => { const li = document.createElement("li"); li.textContent = JSON.parse(e.data).message; $("log").append(li); };
es.addEventListener("finished", async (e) => {
  es.close();
  const d = JSON.parse(e.data);
  $("extra").textContent = await status();
  $("banner").textContent = d.rows_changed + " rows";
  $("banner").dataset.status = d.status;
});
es.onerror = async () => {
  if (es.readyState !== EventSource.CLOSED || $("banner").dataset.status) return;
  $("extra").textContent = await status();
  $("banner").dataset.status = "blocked";
};
</script>"#;

/// Serves `OTHER_APP`, pointed at `server`, on `listener`: bound before
/// the run starts, since `--cors` must name the page's origin.
fn serve_other_app(listener: TcpListener, server: SocketAddr) {
    serve_page(
        listener,
        OTHER_APP.replace("BASE", &format!("http://{server}")),
    );
}

/// A run that allows a page served from another origin, with that page's
/// listener (bound first, since `--cors` names its origin) and origin.
fn run_for_another_origin(db: &TempDb, sleep_ms: u64) -> (Proc, TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind page server");
    let origin = format!("http://{}", listener.local_addr().expect("page addr"));
    let p = start_run(
        db,
        sleep_ms,
        &[
            "--cors",
            &origin,
            "--wait-for-clients",
            "1",
            "--linger",
            "20",
        ],
    );
    (p, listener, origin)
}

#[test]
fn a_page_on_another_origin_follows_the_run_only_with_cors() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let old = old_sessions(&db);

    // Without --cors the browser must refuse to hand the stream to the page.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind page server");
    let origin = format!("http://{}", listener.local_addr().expect("page addr"));
    let dry = [
        "--no-checkpoint",
        "--dry-run",
        "--wait-for-clients",
        "1",
        "--linger",
        "20",
    ];
    let closed = start_run(&db, 0, &dry);
    serve_other_app(listener, closed.addr());
    let v = observe(&format!("{origin}/"), json!({}));
    assert_eq!(v["banner"]["status"], "blocked", "{v:#}");
    assert!(
        v["extra"]
            .as_str()
            .unwrap_or_default()
            .starts_with("status fetch failed"),
        "{v:#}"
    );
    drop(closed);

    // With exactly the page's origin allowed, the page follows the run.
    let (p, listener, origin) = run_for_another_origin(&db, 30);
    serve_other_app(listener, p.addr());
    let v = observe(&format!("{origin}/"), json!({"settle_ms": SETTLE_MS}));
    let rows = rows_changed(&db, old);
    assert_eq!(v["banner"]["status"], "ok", "{v:#}");
    assert_eq!(v["banner"]["text"], format!("{rows} rows"), "{v:#}");
    assert_eq!(
        v["extra"],
        format!("status finished {rows}"),
        "/status must be readable too: {v:#}"
    );
    let states = step_states(&v);
    assert_eq!(states, vec![json!("done"); 5], "{v:#}");
    assert_eq!(v["log"], json!(messages(p.addr(), &[])), "{v:#}");
    assert_no_request_after_end(&v);
}

#[test]
fn a_failed_run_shows_the_failed_step_and_the_error() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(200);
    let sql = db.file(
        "fix.sql",
        "UPDATE orders SET counter = counter + 1;\nUPDATE orders SET qty = NULL WHERE id = 7;\nDELETE FROM sessions;\n",
    );
    let p = Proc::start(&[
        "run",
        "--db",
        path_str(&db.path),
        "--sql",
        path_str(&sql),
        "--listen",
        "127.0.0.1:0",
        "--progress",
        "none",
        "--wait-for-clients",
        "1",
        "--linger",
        "20",
    ]);
    let v = observe(&format!("http://{}/", p.addr()), json!({"dark": true}));
    assert_eq!(v["banner"]["status"], "failed", "{v:#}");
    let banner = v["banner"]["text"].as_str().unwrap_or_default();
    assert!(
        banner.contains("NOT NULL"),
        "the banner must carry the error: {banner:?}"
    );
    // The step after the failure never ran (the run sends nothing for it,
    // and `finished` is its last event): not run, not waiting for ever.
    let states = step_states(&v);
    assert_eq!(
        states,
        [json!("done"), json!("failed"), json!("not-run")],
        "{v:#}"
    );
    let failed = v["steps"][1]["text"].as_str().unwrap_or_default();
    assert!(
        failed.contains("NOT NULL"),
        "the failed step shows why: {failed:?}"
    );
    let unrun = v["steps"][2]["text"].as_str().unwrap_or_default();
    assert!(unrun.contains("not run"), "{unrun:?}");
    assert_eq!(v["overall"]["value"], 1, "{v:#}");
    // Nobody was on a control: the end leaves the focus where it was.
    assert_eq!(v["focus"], "body", "{v:#}");
}

#[test]
fn a_cancelled_run_shows_the_amber_banner_and_the_rows_kept() {
    let Some(_b) = browser() else { return };
    let db = TempDb::counters(100_000);
    let plan = db.file("plan.json", &counter_plan("cancel me", 100));
    let p = Proc::start(&run_args(
        &db,
        path_str(&plan),
        &words(
            "--listen 127.0.0.1:0 --progress none --batch-size 100 --sleep 20 --wait-for-clients 1 --linger 20",
        ),
    ));
    let addr = p.addr();
    // Ctrl-C once the page is watching and a few chunks are in.
    let pid = p.child.id().to_string();
    let interrupter = std::thread::spawn(move || {
        wait_status(addr, &[], |v: &Value| {
            v["done"].as_u64().unwrap_or(0) >= 500
        });
        let ok = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -INT failed");
    });
    let v = observe(&format!("http://{addr}/"), json!({}));
    interrupter.join().expect("the interrupter");
    assert_eq!(v["banner"]["status"], "cancelled", "{v:#}");
    let banner = v["banner"]["text"].as_str().unwrap_or_default();
    assert!(banner.starts_with("Cancelled"), "{banner:?}");
    // What the banner says was kept is what the file holds.
    let kept = db.query_i64("SELECT count(*) FROM t WHERE counter = 1");
    assert!((500..100_000).contains(&kept), "{kept} rows kept");
    let shown = format!("{} rows changed", thousands(kept));
    assert!(banner.contains(&shown), "{banner:?} should say {shown:?}");
    assert_eq!(v["page_errors"], json!([]), "{v:#}");
}

#[test]
fn a_page_on_another_origin_resumes_a_dropped_stream_with_last_event_id() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let old = old_sessions(&db);
    let (p, listener, origin) = run_for_another_origin(&db, 60);
    // The page reaches the run through a proxy that drops mid-run; the
    // browser's reconnect, cross-origin, carries Last-Event-ID.
    let proxy = Proxy::new(p.addr());
    serve_other_app(listener, proxy.addr);
    let page = Observer::start(&format!("{origin}/"), json!({}));
    wait_status(p.addr(), &[], |s| s["steps_done"].as_u64() >= Some(2));
    proxy.cut();
    let v = page.finish();
    let rows = rows_changed(&db, old);
    assert_eq!(v["banner"]["status"], "ok", "{v:#}");
    assert_eq!(v["banner"]["text"], format!("{rows} rows"), "{v:#}");
    // Every message once and in order, across the cut.
    assert_eq!(v["log"], json!(messages(p.addr(), &[])), "{v:#}");
    let states = step_states(&v);
    assert_eq!(states, vec![json!("done"); 5], "{v:#}");
    let gets: Vec<&Value> = v["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter(|r| r["method"] == "GET")
        .collect();
    assert!(gets.len() >= 2, "the page never reconnected: {v:#}");
    let from: u64 = gets[1]["last_event_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(from > 1, "the reconnect must carry Last-Event-ID: {v:#}");
    assert_eq!(v["page_errors"], json!([]), "{v:#}");
}

const CONTROL: &str = "c0ntrol";

/// Every `control` event the server logged, from its own replay (which
/// runs to `finished`).
fn control_events(addr: SocketAddr, headers: &[(&str, &str)]) -> Vec<Value> {
    let mut s = Stream::open(addr, "/events", headers);
    assert_eq!(s.status, 200);
    s.rest()
        .iter()
        .filter(|e| e.event == "control")
        .map(data)
        .collect()
}

/// Each logged command's action and who sent it.
fn actions_by(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("action"), s("by"))
        })
        .collect()
}

#[test]
fn the_dashboard_pauses_and_resumes_the_run_with_the_fragment_token() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let old = old_sessions(&db);
    let read = [("Authorization", "Bearer r3ad")];
    // Both tokens: the page reads with ?token= and steers with #control=.
    // 5 s between chunks until the page, paused, sets 20 ms: the run is
    // still going when the page pauses it (at 60 ms it ended on its own
    // about 3 s in, and a page slowed by that much had nothing to pause).
    let p = start_run(
        &db,
        5000,
        &[
            "--token",
            "r3ad",
            "--control-token",
            CONTROL,
            "--wait-for-clients",
            "1",
            "--linger",
            "20",
        ],
    );
    let go_on = db.dir.path().join("go-on");
    let url = format!("http://{}/?token=r3ad#control={CONTROL}", p.addr());
    let page = Observer::start(
        &url,
        json!({"timeout_ms": 15000, "actions": [
            {"wait": "#pause"},
            {"wait": ".step[data-state=running]"},
            {"snapshot": "before"},
            {"click": "#pause"},
            {"wait": "#throttle:has-text('Paused')"},
            {"snapshot": "paused"},
            {"wait_file": go_on},
            // Only the field changed goes in the body.
            {"fill": "#sleep", "value": "20"},
            {"click": "#apply"},
            {"wait": ":nth-match(#log li[data-level=control], 2)"},
            {"click": "#pause"},
            {"wait": "#pause:has-text('Pause')"},
            {"gone": "#throttle"},
            {"snapshot": "resumed"},
        ]}),
    );
    // Paused: the run holds still at a chunk boundary, and holds no lock.
    wait_status(p.addr(), &read, |s| s["throttled"] == "paused");
    let before = get(p.addr(), "/status", &read).json();
    std::thread::sleep(Duration::from_millis(300));
    let after = get(p.addr(), "/status", &read).json();
    assert_eq!(after["throttled"], "paused", "{after}");
    assert_eq!(after["paused"], true, "{after}");
    assert_eq!(
        (&before["step"], &before["done"], &before["steps_done"]),
        (&after["step"], &after["done"], &after["steps_done"]),
        "a paused run must not advance: {before} then {after}"
    );
    assert_eq!(after["state"], "running", "{after}");
    let other = db.conn();
    other.busy_timeout(Duration::ZERO).expect("busy_timeout");
    other
        .execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
        .expect("a paused run must leave the write lock free");
    std::fs::write(&go_on, "").expect("let the page go on");
    let v = page.finish();
    assert_eq!(v.get("action_error"), None, "{v:#}");
    assert_complete(&v, rows_changed(&db, old), &messages(p.addr(), &read));

    let steer = |name: &str| v["snapshots"][name]["steer"].clone();
    assert_eq!(steer("before")["controls"], true, "{v:#}");
    assert_eq!(steer("before")["pause"], "Pause", "{v:#}");
    assert_eq!(steer("before")["badge"], Value::Null, "{v:#}");
    assert_eq!(steer("paused")["pause"], "Resume", "{v:#}");
    assert_eq!(steer("paused")["badge"], "Paused", "{v:#}");
    assert_eq!(steer("resumed")["badge"], Value::Null, "{v:#}");
    // The running step's rate and ETA go while it is paused.
    let running = |name: &str| {
        let steps = v["snapshots"][name]["steps"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let step = steps.into_iter().find(|s| s["state"] == "running");
        step.map(|s| s["text"].as_str().unwrap_or_default().to_owned())
    };
    // (Before it, the step may not have shown its first chunk yet.)
    let paused = running("paused");
    assert!(
        paused
            .as_ref()
            .is_some_and(|t| t.ends_with("paused") && !t.contains("ETA") && !t.contains("rows/s")),
        "{paused:?}"
    );
    let resumed = running("resumed").unwrap_or_default();
    assert!(!resumed.ends_with("paused"), "{resumed:?}");
    // The token left the address bar at once, stays in this tab's session
    // storage, and travels only in the Authorization header.
    let address = steer("before")["address"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !address.contains(CONTROL) && address.contains("token=r3ad"),
        "{address}"
    );
    assert_eq!(steer("before")["stored_token"], CONTROL, "{v:#}");
    let posts = v["control_requests"].as_array().expect("control requests");
    let bodies: Vec<Value> = posts
        .iter()
        .map(|r| serde_json::from_str(r["body"].as_str().unwrap_or("null")).unwrap_or_default())
        .collect();
    assert_eq!(
        bodies,
        [
            json!({"pause": true}),
            json!({"sleep_ms": 20}),
            json!({"pause": false})
        ],
        "{v:#}"
    );
    for r in posts {
        assert_eq!(r["method"], "POST");
        assert_eq!(r["authorization"], format!("Bearer {CONTROL}"), "{r}");
        assert_eq!(r["client"], "dashboard", "{r}");
        assert!(
            !r["url"].as_str().unwrap_or_default().contains("token"),
            "{r}"
        );
    }
    for r in v["requests"].as_array().expect("requests") {
        assert!(
            !r["url"].as_str().unwrap_or_default().contains(CONTROL),
            "{r}"
        );
    }

    // The stream says the dashboard did it, and the page says so too.
    let events = control_events(p.addr(), &read);
    let dashboard = |a: &str| (a.to_owned(), "dashboard".to_owned());
    assert_eq!(
        actions_by(&events),
        [dashboard("pause"), dashboard("set"), dashboard("resume")],
        "{events:?}"
    );
    assert_eq!(events[1]["settings"]["sleep_ms"], 20, "{events:?}");
    let remote = |i: usize| events[i]["remote"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        v["control_log"][0],
        format!("paused from the dashboard ({})", remote(0)),
        "{v:#}"
    );
    assert_eq!(
        v["control_log"][2],
        format!("resumed from the dashboard ({})", remote(2)),
        "{v:#}"
    );
    // Each command's line is timed as every other line of the log is
    // (from its `ts_ms`; the page runs with the en-US locale).
    let times = v["control_log_times"]
        .as_array()
        .expect("control log times");
    assert_eq!(times.len(), 3, "{v:#}");
    for t in times {
        let t = t.as_str().unwrap_or_default();
        assert!(
            t.contains(':') && (t.ends_with(" AM") || t.ends_with(" PM")),
            "a control line without its time: {t:?} in {v:#}"
        );
    }
}

/// The pace form shows the pace in force: when the run changes pace
/// mid-run (here from idle to live, as another connection commits), the
/// `message` that says so carries the new settings, the inputs follow
/// them, and Apply sends a field that differs from them.
#[test]
fn the_pace_form_follows_a_change_of_pace_mid_run() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    db.conn()
        .execute_batch("CREATE TABLE app_log(at INTEGER)")
        .expect("the application's table");
    db.age();
    let args = format!("--control-token {CONTROL} --wait-for-clients 1 --linger 20");
    // 2 s between chunks, so the run is still going when the page applies
    // its pace (at 60 ms it ended on its own about 3 s in, and a page slowed
    // by that much was refused as too late); the page is done then.
    let p = start_run(&db, 2000, &words(&args));
    let url = format!("http://{}/#control={CONTROL}", p.addr());
    let page = Observer::start(
        &url,
        json!({"timeout_ms": 20000, "until": "actions", "actions": [
            {"wait": "#pause"},
            {"wait": "#log li:has-text('another connection is using the database')"},
            {"snapshot": "live"},
            // The idle pace's chunk time, which the run no longer has.
            {"fill": "#chunk-time", "value": "250"},
            {"click": "#apply"},
            {"wait": "#log li[data-level=control]"},
        ]}),
    );
    // An application that commits now and then for as long as the page
    // steers, so the run stays at the live pace meanwhile.
    wait_status(p.addr(), &[], |s| s["state"] == "running");
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let app = {
        let (writing, conn) = (writing.clone(), db.conn());
        std::thread::spawn(move || {
            conn.busy_timeout(Duration::from_secs(5))
                .expect("busy_timeout");
            let start = Instant::now();
            while writing.load(std::sync::atomic::Ordering::Relaxed) && start.elapsed() < PATIENCE {
                conn.execute("INSERT INTO app_log VALUES (1)", [])
                    .expect("the application's write");
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let v = page.finish();
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    app.join().expect("the application's thread");
    assert_eq!(v.get("action_error"), None, "{v:#}");
    let live = &v["snapshots"]["live"]["steer"]["inputs"];
    assert_eq!(
        (&live["chunk_time_ms"], &live["nice_ratio"]),
        (&json!("10"), &json!("1")),
        "the form must show the live pace the run said it took: {v:#}"
    );
    let bodies: Vec<&str> = v["control_requests"]
        .as_array()
        .expect("control requests")
        .iter()
        .map(|r| r["body"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(bodies, [r#"{"chunk_time_ms":250}"#], "{v:#}");
}

/// A run the page can steer with `CONTROL`, held until its stream connects,
/// that only the page's cancel ends: 5 s between its 40 chunks (a cancel
/// cuts the one under way short). At 60 ms it ended on its own about 3 s
/// in, and its end hides the controls, so a page slowed down by that much
/// found no #cancel or token field.
fn steerable_run(db: &TempDb) -> Proc {
    start_run(
        db,
        5000,
        &["--control-token", CONTROL, "--wait-for-clients", "1"],
    )
}

#[test]
fn cancel_from_the_dashboard_asks_first_and_then_ends_the_run() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let mut p = steerable_run(&db);
    let url = format!("http://{}/#control={CONTROL}", p.addr());
    let v = observe(
        &url,
        json!({"timeout_ms": 15000, "actions": [
            {"wait": "#cancel"},
            {"wait": ".step[data-state=running]"},
            {"dialogs": "dismiss"},
            {"click": "#cancel"},
            {"sleep_ms": 300},
            {"snapshot": "declined"},
            {"dialogs": "accept"},
            {"click": "#cancel"},
        ]}),
    );
    assert_eq!(v.get("action_error"), None, "{v:#}");
    let dialogs = v["dialogs"].as_array().expect("dialogs");
    assert_eq!(dialogs.len(), 2, "{v:#}");
    assert!(dialogs.iter().all(|d| d["type"] == "confirm"), "{v:#}");
    // Declined: nothing sent, the run goes on.
    assert_eq!(
        v["snapshots"]["declined"]["banner"]["status"],
        Value::Null,
        "{v:#}"
    );
    assert_eq!(
        v["control_requests"].as_array().map(Vec::len),
        Some(1),
        "{v:#}"
    );
    assert_eq!(v["banner"]["status"], "cancelled", "{v:#}");
    // The step under way shows as cancelled, not failed: those before it
    // done, those after it not run (the run never reached them).
    let states: Vec<&str> = v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["state"].as_str().unwrap_or_default())
        .collect();
    let at = states
        .iter()
        .position(|s| *s != "done")
        .expect("a step not done");
    assert_eq!(states[at], "cancelled", "{v:#}");
    assert!(
        at + 1 < states.len(),
        "no step left after the cancel: {v:#}"
    );
    assert!(states[at + 1..].iter().all(|s| *s == "not-run"), "{v:#}");
    let line = v["control_log"][0].as_str().unwrap_or_default();
    assert!(
        line.starts_with("cancelled the run from the dashboard ("),
        "{v:#}"
    );
    assert_eq!(
        v["steer"]["controls"], false,
        "nothing to steer after the end: {v:#}"
    );
    let status = p.wait();
    assert_eq!(status.code(), Some(130), "{}", p.stderr());
}

/// Pause and Resume from the keyboard alone: Space on the button, twice.
/// The button keeps the focus while its command is on its way (a disabled
/// button loses it to the page, so the second Space went nowhere and a
/// keyboard user had to find the button again).
#[test]
fn the_pause_button_keeps_the_focus_for_a_keyboard_user() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let p = steerable_run(&db);
    let url = format!("http://{}/#control={CONTROL}", p.addr());
    let v = observe(
        &url,
        json!({"timeout_ms": 15000, "until": "actions", "actions": [
            {"wait": "#pause"},
            {"wait": ".step[data-state=running]"},
            {"focus": "#pause"},
            {"keyboard": "Space"},
            {"snapshot": "sent"},
            {"text": "#pause", "is": "Resume"},
            {"snapshot": "paused"},
            {"keyboard": "Space"},
            {"text": "#pause", "is": "Pause"},
            {"snapshot": "resumed"},
        ]}),
    );
    assert_eq!(v.get("action_error"), None, "{v:#}");
    for name in ["sent", "paused", "resumed"] {
        assert_eq!(v["snapshots"][name]["focus"], "pause", "{name}: {v:#}");
    }
    let bodies: Vec<&str> = v["control_requests"]
        .as_array()
        .expect("control requests")
        .iter()
        .map(|r| r["body"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(bodies, [r#"{"pause":true}"#, r#"{"pause":false}"#], "{v:#}");
}

/// A keyboard user on Cancel when the run ends (here by that very Cancel,
/// pressed with Enter) is taken to the banner that says how it ended, not
/// left on the page itself as the controls go.
#[test]
fn the_end_takes_the_focus_from_the_cancel_button_to_the_banner() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let mut p = steerable_run(&db);
    let url = format!("http://{}/#control={CONTROL}", p.addr());
    let v = observe(
        &url,
        json!({"timeout_ms": 15000, "actions": [
            {"wait": "#cancel"},
            {"wait": ".step[data-state=running]"},
            {"dialogs": "accept"},
            {"focus": "#cancel"},
            {"keyboard": "Enter"},
            {"wait": "#banner[data-status]"},
            {"snapshot": "ended"},
        ]}),
    );
    assert_eq!(v.get("action_error"), None, "{v:#}");
    assert_eq!(
        v["snapshots"]["ended"]["banner"]["status"], "cancelled",
        "{v:#}"
    );
    assert_eq!(v["snapshots"]["ended"]["focus"], "banner", "{v:#}");
    assert_eq!(p.wait().code(), Some(130), "{}", p.stderr());
}

/// The same for the token field of "Steer this run…": a run that ends
/// (here by Ctrl-C) while someone types a token takes the field away.
#[test]
fn the_end_takes_the_focus_from_the_token_field_to_the_banner() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let p = steerable_run(&db);
    let typing = db.dir.path().join("typing");
    let mut page = Observer::start(
        &format!("http://{}/", p.addr()),
        json!({"timeout_ms": 15000, "actions": [
            {"wait": ".step[data-state=running]"},
            {"click": "#steer-login summary"},
            {"fill": "#control-token", "value": "half a tok"},
            {"touch": typing},
            {"wait": "#banner[data-status]"},
            {"snapshot": "ended"},
        ]}),
    );
    page.wait_file(&typing);
    p.signal("INT");
    let v = page.finish();
    assert_eq!(v.get("action_error"), None, "{v:#}");
    assert_eq!(
        v["snapshots"]["ended"]["banner"]["status"], "cancelled",
        "{v:#}"
    );
    assert_eq!(v["snapshots"]["ended"]["focus"], "banner", "{v:#}");
}

/// A step name too long for the log's step column, with a word no line
/// can break at.
const LONG_NAME: &str =
    "backfill orders.total_cents_for_every_order_placed_before_the_2026_price_change and check";

/// The log's step column shows a long name whole, wrapped, at a phone's
/// width and a desktop's: cut short with the rest in a tooltip, it was out
/// of reach of touch and keyboard (and at phone width not shown at all).
#[test]
fn a_long_step_name_in_the_log_is_shown_whole_at_any_width() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(200);
    let plan = json!({"name": "long names", "steps": [
        {"name": "first", "sql": "UPDATE orders SET counter = counter + 1"},
        // Fails, and the run logs its error against the step.
        {"name": LONG_NAME, "sql": "UPDATE orders SET qty = NULL WHERE id = 7"},
    ]});
    let plan = db.file("plan.json", &plan.to_string());
    let p = serving(
        &db,
        path_str(&plan),
        &["--wait-for-clients", "1", "--linger", "20"],
    );
    for width in [1000, 320] {
        let v = observe(&format!("http://{}/", p.addr()), json!({"width": width}));
        assert_eq!(v["banner"]["status"], "failed", "{v:#}");
        let wheres = v["log_where"].as_array().expect("log_where");
        let line = wheres
            .iter()
            .find(|w| w["text"] == LONG_NAME)
            .unwrap_or_else(|| panic!("no log line names the step: {v:#}"));
        assert_eq!(line["shown"], true, "{width} px: {v:#}");
        assert_eq!(line["cut"], false, "{width} px: {v:#}");
        assert_eq!(v["width"], v["viewport"], "{width} px scrolls sideways");
    }
}

/// The throttle badge's detail (why the run waits, and what to do) is on
/// the page, wrapped at a phone's width, not only in a hover tooltip.
#[test]
fn the_throttle_badge_says_why_in_words_at_phone_width() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let hold = db
        .dir
        .path()
        .join("hold-the-batch-until-the-nightly-backup-has-finished");
    std::fs::write(&hold, "").expect("the pause file");
    let p = start_run(
        &db,
        100,
        &["--wait-for-clients", "1", "--pause-file", path_str(&hold)],
    );
    let v = observe(
        &format!("http://{}/", p.addr()),
        json!({"until": "actions", "width": 320, "timeout_ms": 15000, "actions": [
            {"wait": "#throttle:has-text('Throttled (pause-file)')"},
            {"snapshot": "held"},
        ]}),
    );
    assert_eq!(v.get("action_error"), None, "{v:#}");
    let held = &v["snapshots"]["held"];
    assert_eq!(held["steer"]["badge"], "Throttled (pause-file)", "{v:#}");
    let why = held["steer"]["badge_detail"].as_str().unwrap_or_default();
    assert!(
        why.contains("hold-the-batch-until-the-nightly-backup-has-finished exists; remove it"),
        "{v:#}"
    );
    assert_eq!(held["width"], held["viewport"], "scrolls sideways: {v:#}");
}

/// What a screen reader is told of a paused run (the page's ARIA snapshot).
#[test]
fn what_a_screen_reader_hears_of_a_paused_run() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let p = steerable_run(&db);
    let url = format!("http://{}/#control={CONTROL}", p.addr());
    let v = observe(
        &url,
        json!({"timeout_ms": 15000, "until": "actions", "actions": [
            {"wait": "#pause"},
            {"wait": ".step[data-state=running]"},
            {"click": "#pause"},
            {"text": "#pause", "is": "Resume"},
            {"snapshot": "paused"},
        ]}),
    );
    assert_eq!(v.get("action_error"), None, "{v:#}");
    let aria = v["snapshots"]["paused"]["aria"]
        .as_str()
        .unwrap_or_default();
    // The button is named for what it does next; a toggle's "pressed" on
    // top ("Resume, pressed") said the opposite of the run's state.
    assert!(aria.contains(r#"button "Resume""#), "{aria}");
    assert!(!aria.contains("[pressed"), "{aria}");
    // Each step's state is said in words once: its icon (✓ done, ▶
    // running) and the dot before "live" are not read out as well.
    for glyph in ["✓", "▶", "●"] {
        assert!(!aria.contains(glyph), "{glyph} in {aria}");
    }
    assert!(aria.contains("add total_cents done"), "{aria}");
    // Spoken unasked: the badge, the banner and a refusal. Not the log: a
    // late page appends the whole history to it at once, and an undo logs
    // a hundred conflicts in a second, each read out in turn.
    assert_eq!(
        v["snapshots"]["paused"]["live"],
        json!(["throttle", "banner", "control-msg"]),
        "{v:#}"
    );
}

/// A page on another origin that tries to steer the run with the right
/// control token, and shows what came of it.
const STEERING_APP: &str = r#"<!doctype html><meta charset="utf-8"><title>another app</title>
<div id="banner"></div>
<script>
const b = document.getElementById("banner");
fetch("BASE/control", {
  method: "POST",
  headers: { "Authorization": "Bearer TOKEN", "Content-Type": "application/json" },
  body: JSON.stringify({ chunk_time_ms: 7 }),
}).then(
  async (r) => { b.textContent = r.status + " " + (await r.text()); b.dataset.status = "answered"; },
  (e) => { b.textContent = String(e); b.dataset.status = "refused"; },
);
</script>"#;

/// Serves `page` to every request on `listener`.
fn serve_page(listener: TcpListener, page: String) {
    std::thread::spawn(move || {
        for conn in listener.incoming().take(20) {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
}

#[test]
fn a_page_on_another_origin_steers_the_run_only_with_cors() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    // Held at the gate (no stream client) until the test reads the replay.
    let held = [
        "--dry-run",
        "--no-checkpoint",
        "--wait-for-clients",
        "1",
        "--linger",
        "20",
    ];
    for cors in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind page server");
        let origin = format!("http://{}", listener.local_addr().expect("page addr"));
        let mut flags = vec!["--control-token", CONTROL];
        flags.extend_from_slice(&held);
        if cors {
            flags.extend_from_slice(&["--cors", &origin]);
        }
        let p = start_run(&db, 0, &flags);
        let page = STEERING_APP
            .replace("BASE", &format!("http://{}", p.addr()))
            .replace("TOKEN", CONTROL);
        serve_page(listener, page);
        let v = observe(&format!("{origin}/"), json!({}));
        let events = control_events(p.addr(), &[]);
        if cors {
            assert_eq!(v["banner"]["status"], "answered", "{v:#}");
            assert!(
                v["banner"]["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("200 ")),
                "{v:#}"
            );
            assert_eq!(
                actions_by(&events),
                [("set".to_owned(), "http".to_owned())],
                "{events:?}"
            );
            // A dry run never waits between chunks (a sleep is refused),
            // but takes a chunk time.
            assert_eq!(events[0]["settings"]["chunk_time_ms"], 7, "{events:?}");
        } else {
            // The preflight fails, so the browser never sends the command.
            assert_eq!(v["banner"]["status"], "refused", "{v:#}");
            assert_eq!(events, Vec::<Value>::new(), "nothing may be steered: {v:#}");
        }
    }
}

#[test]
fn without_a_control_token_the_page_shows_no_controls_and_a_wrong_one_is_refused() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let old = old_sessions(&db);
    // Held at its gate until the page is done: a running run ended on its
    // own in about two seconds, and its end hides the controls, so a page
    // slowed down meanwhile found no #pause to click or no refusal shown.
    // The test's own stream, the second client, lets it go (at full speed:
    // nothing waits on it now).
    let p = start_run(
        &db,
        0,
        &[
            "--control-token",
            CONTROL,
            "--wait-for-clients",
            "2",
            "--linger",
            "20",
        ],
    );
    let refused = db.dir.path().join("refused");
    let mut page = Observer::start(
        &format!("http://{}/", p.addr()),
        json!({"timeout_ms": 15000, "actions": [
            // The run's start is in: the page shows its steps.
            {"text": "#overall-text", "is": "0 / 5 steps done"},
            {"snapshot": "none"},
            {"click": "#steer-login summary"},
            {"fill": "#control-token", "value": "wr0ng"},
            {"press": "#control-token", "key": "Enter"},
            {"wait": "#pause"},
            {"snapshot": "typed"},
            // From the keyboard: the token taken, the focus is on Pause.
            {"keyboard": "Space"},
            {"wait": "#control-msg:has-text('401')"},
            {"snapshot": "refused"},
            {"touch": path_str(&refused)},
        ]}),
    );
    page.wait_file(&refused);
    let _second = Stream::open(p.addr(), "/events", &[]);
    let v = page.finish();
    assert_eq!(v.get("action_error"), None, "{v:#}");
    assert_complete(&v, rows_changed(&db, old), &messages(p.addr(), &[]));
    let steer = |name: &str| v["snapshots"][name]["steer"].clone();
    assert_eq!(steer("none")["controls"], false, "{v:#}");
    assert_eq!(steer("none")["badge"], Value::Null, "{v:#}");
    assert_eq!(steer("typed")["controls"], true, "{v:#}");
    assert_eq!(steer("typed")["stored_token"], "wr0ng", "{v:#}");
    // The focus follows what the page offers: Pause once the token is
    // taken, the field again once it is refused (the control that had
    // it is gone, and a focus left to the page starts Tab over).
    assert_eq!(v["snapshots"]["typed"]["focus"], "pause", "{v:#}");
    assert_eq!(v["snapshots"]["refused"]["focus"], "control-token", "{v:#}");
    // The refusal is shown, the token forgotten, and the field offered again.
    let refused = steer("refused");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Refused (401)") && message.contains("control token was not accepted"),
        "{v:#}"
    );
    assert_eq!(refused["controls"], false, "{v:#}");
    assert_eq!(refused["token_field"], true, "{v:#}");
    assert_eq!(refused["stored_token"], Value::Null, "{v:#}");
    assert_eq!(control_events(p.addr(), &[]), Vec::<Value>::new());
    assert_eq!(v["control_log"], json!([]), "{v:#}");
}

/// `batchsse relay` for the sample plan's next run, lingering like the run.
fn plan_relay(redis: &Redis) -> Proc {
    let url = redis.url();
    let args = [
        "relay",
        &url,
        "--plan",
        "reprice-2026",
        "--listen",
        "127.0.0.1:0",
        "--linger",
        "20",
    ];
    Proc::start(&args)
}

#[test]
fn the_dashboard_behind_a_load_balancer_moves_between_relays_without_a_duplicate() {
    let Some(_b) = browser() else { return };
    let Some(redis) = Redis::start() else { return };
    let db = TempDb::shop(2000);
    let old = old_sessions(&db);
    // Two relays behind one address; the page opens on relay A before the
    // run starts, so it sees the whole run live.
    let (a, b) = (plan_relay(&redis), plan_relay(&redis));
    let balancer = Proxy::balancing(vec![a.addr(), b.addr()]);
    let page = Observer::start(&format!("http://{}/", balancer.addr), json!({}));
    wait_status(a.addr(), &[], |s| s["clients"].as_u64() >= Some(1));
    let p = start_run(&db, 60, &["--publish", &redis.url(), "--linger", "20"]);
    // Mid-run, relay A's connections drop and the balancer sends the
    // reconnect to relay B, with Last-Event-ID.
    wait_status(a.addr(), &[], |s| s["steps_done"].as_u64() >= Some(2));
    balancer.cut();
    let v = page.finish();
    // The page shows exactly the run: every row once, every message once.
    // (The page also drops repeated ids itself; that a relay resumes
    // exactly after Last-Event-ID is checked in tests/it/relay.rs.)
    assert_complete(&v, rows_changed(&db, old), &messages(p.addr(), &[]));
    assert_no_request_after_end(&v);
    // Pinned to the run once it started (`?run=`, a request of its own,
    // since the relay had no run yet when the page opened), the page's own
    // reconnect after the cut resumed with Last-Event-ID for that run.
    let reqs = v["requests"].as_array().expect("requests");
    let retry = reqs
        .iter()
        .find(|r| r["last_event_id"].is_string())
        .unwrap_or_else(|| panic!("the page never reconnected: {v:#}"));
    assert_resumes(retry, &v);
    let url = retry["url"].as_str().unwrap_or_default();
    assert!(url.contains("run="), "the reconnect names its run: {v:#}");
    // Relay B served it: its stream is the run's, message for message.
    assert_eq!(messages(b.addr(), &[]), messages(p.addr(), &[]));
}

/// A control token with a character no HTTP header can carry (a zero-width
/// space or a curly quote picked up in copying, a `+` the address decoded
/// to a space) is refused as a token, at once, and never kept: `fetch`
/// would throw on it, and the page took that for an unreachable server, on
/// every click. A good token typed after it steers the run.
#[test]
fn a_token_no_header_can_carry_is_refused_as_a_token_not_as_a_lost_server() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let mut p = steerable_run(&db);
    let url = format!("http://{}/#control={CONTROL}%E2%80%8B", p.addr());
    let v = observe(
        &url,
        json!({"timeout_ms": 15000, "actions": [
            {"wait": ".step[data-state=running]"},
            {"snapshot": "fragment"},
            {"wait": "#control-token"},
            {"fill": "#control-token", "value": format!("{CONTROL}\u{2019}")},
            {"press": "#control-token", "key": "Enter"},
            {"snapshot": "typed"},
            {"fill": "#control-token", "value": CONTROL},
            {"press": "#control-token", "key": "Enter"},
            {"dialogs": "accept"},
            {"click": "#cancel"},
        ]}),
    );
    for name in ["fragment", "typed"] {
        let steer = &v["snapshots"][name]["steer"];
        let message = steer["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("control token") && !message.contains("reach"),
            "{name}: the page must say what is wrong with the token: {v:#}"
        );
        assert_eq!(steer["stored_token"], Value::Null, "{name}: {v:#}");
        assert_eq!(steer["controls"], false, "{name}: {v:#}");
        assert_eq!(steer["token_field"], true, "{name}: {v:#}");
        assert!(
            !steer["address"]
                .as_str()
                .unwrap_or_default()
                .contains("control="),
            "{name}: {v:#}"
        );
    }
    assert_eq!(v.get("action_error"), None, "{v:#}");
    let posts = v["control_requests"].as_array().expect("control requests");
    assert_eq!(posts.len(), 1, "only the good token's cancel: {v:#}");
    assert_eq!(
        posts[0]["authorization"],
        format!("Bearer {CONTROL}"),
        "{v:#}"
    );
    assert_eq!(v["banner"]["status"], "cancelled", "{v:#}");
    assert_eq!(p.wait().code(), Some(130), "{}", p.stderr());
}

/// Text a run can carry into the page, shaped to run if it were ever taken
/// for HTML: any `alert` it ran would show up as a dialog.
const HOSTILE: &str = r#"<img src=x onerror=alert(1)>"'</script><script>alert(2)</script>&amp;"#;

/// Plan, step and file names, SQL text in an `expect` failure and the
/// message that carries it reach the page as text, never as markup; and an
/// undo of that run is titled as an undo.
#[test]
fn hostile_names_and_errors_are_shown_as_text_and_an_undo_as_an_undo() {
    let Some(_b) = browser() else { return };
    let shop = TempDb::shop(1000);
    let path = shop.dir.path().join("x<img src=x onerror=alert(3)>.sqlite");
    std::fs::rename(&shop.path, &path).expect("rename the database");
    let db = TempDb {
        dir: shop.dir,
        path,
    };
    let plan = json!({"name": HOSTILE, "undo": true, "steps": [
        {"name": format!("s1 {HOSTILE}"),
         "sql": "UPDATE orders SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
         "chunk": {"table": "orders", "key": "id", "size": 500}},
        {"name": format!("s2 {HOSTILE}"),
         "sql": "UPDATE orders SET counter = counter + 1 WHERE id < 10",
         "expect": format!("SELECT '{}' = 'no'", HOSTILE.replace('\'', "''"))},
    ]});
    let plan = db.file("plan.json", &plan.to_string());
    let gate = ["--wait-for-clients", "1", "--linger", "20"];
    let p = serving(&db, path_str(&plan), &gate);
    let v = observe(&format!("http://{}/", p.addr()), json!({}));
    drop(p);
    assert_eq!(v["dialogs"], json!([]), "markup ran: {v:#}");
    assert_eq!(v["plan"], HOSTILE, "{v:#}");
    assert_eq!(v["title"], format!("{HOSTILE} · batchsse"), "{v:#}");
    assert_eq!(v["db"], "x<img src=x onerror=alert(3)>.sqlite", "{v:#}");
    assert_eq!(v["steps"][0]["name"], format!("s1 {HOSTILE}"), "{v:#}");
    assert_eq!(v["steps"][1]["state"], "failed", "{v:#}");
    let expect = format!("expect SELECT '{}' = 'no'", HOSTILE.replace('\'', "''"));
    for shown in [&v["steps"][1]["text"], &v["banner"]["text"]] {
        assert!(
            shown.as_str().is_some_and(|t| t.contains(&expect)),
            "the expect failure, as text: {v:#}"
        );
    }
    assert_eq!(v["banner"]["status"], "failed", "{v:#}");
    let said = v["banner"]["text"].as_str().unwrap_or_default();
    assert!(said.contains("Undo record "), "the record's size: {v:#}");

    // The application changes an order the run changed: a conflict.
    db.conn()
        .execute("UPDATE orders SET counter = 5 WHERE id = 7", [])
        .expect("the application's write");
    let db_arg = path_str(&db.path);
    let mut args = vec!["undo", "--db", db_arg, "--plan", HOSTILE];
    args.extend_from_slice(&["--listen", "127.0.0.1:0", "--progress", "none"]);
    args.extend_from_slice(&gate);
    let u = Proc::start(&args);
    let v = observe(&format!("http://{}/", u.addr()), json!({}));
    assert_eq!(v["dialogs"], json!([]), "markup ran: {v:#}");
    assert_eq!(v["plan"], format!("Undo of {HOSTILE}"), "{v:#}");
    assert_eq!(v["title"], format!("Undo of {HOSTILE} · batchsse"), "{v:#}");
    assert_eq!(v["banner"]["status"], "ok", "{v:#}");
    let step = v["steps"][0]["name"].as_str().unwrap_or_default();
    assert!(step.ends_with(&format!("s1 {HOSTILE}")), "{v:#}");
    let said = v["banner"]["text"].as_str().unwrap_or_default();
    assert!(
        said.contains("1 conflict kept the application's row ("),
        "{v:#}"
    );
    assert_eq!(db.query_i64("SELECT sum(counter) FROM orders"), 5);
}

/// A plan or step named in Hebrew or Arabic is laid out right to left, so
/// its words, numbers and brackets stand in their order ("10%" at the end
/// of an Arabic name was shown as "%…10" in the page's left-to-right
/// flow), and a Latin name beside it stays left to right.
#[test]
fn names_in_a_right_to_left_script_are_laid_out_right_to_left() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(200);
    let step = |name: &str| json!({"name": name, "sql": "UPDATE orders SET counter = counter + 1"});
    let plan = json!({"name": "ترحيل الأسعار 2026", "steps": [
        step("עדכון מחירים (שלב 1)"),
        step("تحديث الأسعار (المرحلة 2): 10%"),
        step("reprice (step 3)"),
    ]});
    let plan = db.file("plan.json", &plan.to_string());
    let p = serving(
        &db,
        path_str(&plan),
        &["--wait-for-clients", "1", "--linger", "20"],
    );
    let v = observe(&format!("http://{}/", p.addr()), json!({}));
    assert_eq!(v["banner"]["status"], "ok", "{v:#}");
    assert_eq!(v["plan_dir"], "rtl", "{v:#}");
    let dirs: Vec<&Value> = v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| &s["dir"])
        .collect();
    assert_eq!(dirs, [&json!("rtl"), &json!("rtl"), &json!("ltr")], "{v:#}");
}

/// A row an undo kept as the run left it (another row holds the email it
/// would get back) is named so on the dashboard's banner, as on the
/// terminal's last line, not as the application's row.
#[test]
fn the_banner_names_a_row_an_undo_kept_as_the_run_left_it() {
    let Some(_b) = browser() else { return };
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT UNIQUE);
         INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');",
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","undo":true,"steps":[{"sql":"UPDATE t SET email = email || '.old'"}]}"#,
    );
    run_undoable(&db, &plan);
    db.conn()
        .execute("INSERT INTO t VALUES (4, 'b')", [])
        .expect("the application's write");
    let said = undo_banner(&db, "p");
    assert!(
        said.contains("1 conflict kept its row as the run left it (another row holds a value it would get back)"),
        "{said}"
    );
    assert!(!said.contains("the application's row"), "{said}");
}

/// The text of the dashboard's banner once an undo of `plan` on `db`,
/// served, has finished ok.
fn undo_banner(db: &TempDb, plan: &str) -> String {
    let mut args = vec!["undo", "--db", path_str(&db.path), "--plan", plan];
    args.extend_from_slice(&["--listen", "127.0.0.1:0", "--progress", "none"]);
    args.extend_from_slice(&["--wait-for-clients", "1", "--linger", "20"]);
    let u = Proc::start(&args);
    let v = observe(&format!("http://{}/", u.addr()), json!({}));
    assert_eq!(v["banner"]["status"], "ok", "{v:#}");
    v["banner"]["text"].as_str().unwrap_or_default().to_owned()
}

/// An undo that leaves rows carrying an older run's change (another
/// plan's run, taken back first, kept them) says how many on the banner.
#[test]
fn the_banner_counts_the_rows_an_undo_left_carrying_an_older_run() {
    let Some(_b) = browser() else { return };
    let db = TempDb::counters(40);
    let (older, newer) = older_and_newer(&db);
    run_undoable(&db, &older);
    run_undoable(&db, &newer);
    let file = path_str(&db.path);
    let (code, _, err) = run(&["undo", "--db", file, "--plan", "older", "--no-serve"]);
    assert_eq!(code, 0, "{err}");
    let said = undo_banner(&db, "newer");
    assert!(
        said.contains("3 rows still carry an older run's change (see the log)"),
        "{said}"
    );
}

/// The `<script setup>` of the README's Vue recipe (`BatchProgress.vue`),
/// as printed, without its `import` line.
fn readme_vue_script() -> String {
    let readme = include_str!("../../README.md");
    let sfc = readme
        .split("```vue\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("the README's Vue recipe");
    let script = sfc
        .split("<script setup>")
        .nth(1)
        .and_then(|s| s.split("</script>").next())
        .expect("its <script setup>");
    script
        .lines()
        .filter(|l| !l.starts_with("import "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A page on another origin running the README's Vue recipe verbatim, with
/// a stand-in for the little of Vue it uses (`ref`, `onMounted`,
/// `defineProps`), showing its refs where `observe.mjs` looks: `connection`
/// in `#conn`, and once it is no longer a passing state, in the banner.
const VUE_RECIPE_PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>the README's Vue recipe</title>
<span id="conn"></span><ol id="steps"></ol><ol id="log"></ol><div id="banner"></div>
<script>
const PROPS = PROPS_JSON;
const defineProps = () => PROPS;
const onMounted = (f) => f();
const onBeforeUnmount = () => {};
const ref = (value) => ({ value });
RECIPE
const PASSING = ["connecting…", "live", "reconnecting…"];
function show() {
  const $ = (id) => document.getElementById(id);
  if ($("conn").textContent !== connection.value) $("conn").textContent = connection.value;
  $("steps").replaceChildren(...steps.value.map((s) => {
    const li = document.createElement("li");
    li.dataset.state = s.state;
    li.textContent = s.name;
    return li;
  }));
  $("log").replaceChildren(...log.value.map((m) => {
    const li = document.createElement("li");
    li.textContent = m.message;
    return li;
  }));
  if (!PASSING.includes(connection.value) && !$("banner").dataset.status) {
    $("banner").textContent = connection.value;
    $("banner").dataset.status = result.value ? result.value.status : "ended";
  }
}
setInterval(show, 20);
</script>"#;

/// Serves the README's Vue recipe, following `server` with `token`, on
/// `listener`.
fn serve_vue_recipe(listener: TcpListener, server: SocketAddr, token: &str) {
    let props = json!({"server": format!("http://{server}"), "token": token});
    let page = VUE_RECIPE_PAGE
        .replace("PROPS_JSON", &props.to_string())
        .replace("RECIPE", &readme_vue_script());
    serve_page(listener, page);
}

/// The README's Vue recipe, as printed, follows a run to its end; and where
/// the browser refuses the stream for good (a wrong token, an origin the run
/// does not allow), it says so and stops, rather than showing
/// "reconnecting…" for ever while nothing reconnects.
#[test]
fn the_readmes_vue_recipe_follows_a_run_and_ends_on_a_refusal() {
    let Some(_b) = browser() else { return };
    let db = TempDb::shop(2000);
    let old = old_sessions(&db);
    let auth = [("Authorization", "Bearer s3cret")];
    let mut final_states = Vec::new();
    for (token, cors) in [("s3cret", true), ("wrong", true), ("s3cret", false)] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind page server");
        let origin = format!("http://{}", listener.local_addr().expect("page addr"));
        let mut flags = vec!["--token", "s3cret", "--wait-for-clients", "1"];
        flags.extend_from_slice(&["--linger", "20"]);
        if cors {
            flags.extend_from_slice(&["--cors", &origin]);
        }
        let p = start_run(&db, 20, &flags);
        serve_vue_recipe(listener, p.addr(), token);
        let opts = json!({"settle_ms": SETTLE_MS, "timeout_ms": 15000});
        let v = observe(&format!("{origin}/"), opts);
        assert_eq!(v["timed_out"], Value::Null, "no final state: {v:#}");
        if final_states.is_empty() {
            assert_eq!(v["banner"]["status"], "ok", "{v:#}");
            assert_eq!(step_states(&v), vec![json!("done"); 5], "{v:#}");
            assert_eq!(v["log"], json!(messages(p.addr(), &auth)), "{v:#}");
            assert_no_request_after_end(&v);
            assert_eq!(rows_changed(&db, old), 2900);
        }
        final_states.push(v["conn"].clone());
    }
    let [done, wrong_token, no_cors] = &final_states[..] else {
        unreachable!()
    };
    assert_eq!(done, "finished");
    let said = |v: &Value, what: &str| v.as_str().is_some_and(|s| s.contains(what));
    assert!(said(wrong_token, "token"), "{final_states:?}");
    assert!(said(no_cors, "--cors"), "{final_states:?}");
}

/// After `run --undo`, the banner says what `batchsse undo` can take back:
/// it stops at the newest step that ran unrecorded (`"undo": false`), so a
/// run with one takes back only the steps after it, or nothing at all, and
/// the banner must not say "can take this run back". The undo, run after,
/// does what the banner said.
#[test]
fn the_banner_says_an_undo_stops_at_a_step_that_ran_unrecorded() {
    let Some(_b) = browser() else { return };
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a INT, b INT, c INT);
         INSERT INTO t VALUES (1, 0, 0, 0);",
    );
    let step = |col: &str, undo: bool| json!({"name": format!("set {col}"), "undo": undo, "sql": format!("UPDATE t SET {col} = 1")});
    let gate = ["--undo", "--wait-for-clients", "1", "--linger", "20"];
    let plans = [
        json!({"name": "middle", "steps": [step("a", true), step("b", false), step("c", true)]}),
        json!({"name": "last", "steps": [step("a", true), step("b", false)]}),
    ];
    let mut said = Vec::new();
    for plan in &plans {
        let file = db.file("plan.json", &plan.to_string());
        let p = serving(&db, path_str(&file), &gate);
        let v = observe(&format!("http://{}/", p.addr()), json!({}));
        assert_eq!(v["banner"]["status"], "ok", "{v:#}");
        said.push(v["banner"]["text"].as_str().unwrap_or_default().to_owned());
        db.conn()
            .execute("UPDATE t SET a = 0, b = 0, c = 0", [])
            .expect("reset");
    }
    let want = [
        "batchsse undo can take back only the steps after step 2, which ran unrecorded (\"undo\": false)",
        "batchsse undo cannot take this run back: its step 2 ran unrecorded (\"undo\": false)",
    ];
    for (said, want) in said.iter().zip(want) {
        assert!(said.contains(want), "{said:?}, want {want:?}");
        assert!(!said.contains("can take this run back"), "{said:?}");
    }
    // The command to copy, where it takes something back.
    let command = format!("batchsse undo --db {} --run ", path_str(&db.path));
    assert!(said[0].contains(&command), "{:?}", said[0]);
    assert!(!said[1].contains("batchsse undo --db"), "{:?}", said[1]);

    // What the banner said of the first plan: its undo takes back c only.
    let fresh = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a INT, b INT, c INT);
         INSERT INTO t VALUES (1, 0, 0, 0);",
    );
    let file = fresh.file("plan.json", &plans[0].to_string());
    run_undoable(&fresh, &file);
    let undo = ["undo", "--db", path_str(&fresh.path), "--plan", "middle"];
    let (code, _, err) = run(&[&undo[..], &["--no-serve"]].concat());
    assert_eq!(code, 0, "{err}");
    let row = fresh.query_i64("SELECT a * 100 + b * 10 + c FROM t");
    assert_eq!(row, 110, "a and b stay, c is taken back: {err}");
}

/// An undo's conflict names the table and the row's key, which are the
/// user's data: markup in them reaches the dashboard's log as text.
#[test]
fn a_conflict_on_a_hostile_table_and_key_is_logged_as_text() {
    let Some(_b) = browser() else { return };
    let table = r#"<svg onload=alert(1)>"#;
    let key = r#"<img src=x onerror=alert(2)>"#;
    let db = TempDb::with_sql(&format!(
        r#"CREATE TABLE "{table}"(k TEXT PRIMARY KEY, v INT) WITHOUT ROWID;
           INSERT INTO "{table}" VALUES ('{key}', 0), ('plain', 0);"#
    ));
    let plan = json!({"name": "p", "undo": true, "steps": [
        {"name": "bump", "sql": format!(r#"UPDATE "{table}" SET v = v + 1"#)},
    ]});
    let plan = db.file("plan.json", &plan.to_string());
    run_undoable(&db, &plan);
    db.conn()
        .execute(
            &format!(r#"UPDATE "{table}" SET v = 9 WHERE k = ?1"#),
            [key],
        )
        .expect("the application's write");
    let mut args = vec!["undo", "--db", path_str(&db.path), "--plan", "p"];
    args.extend_from_slice(&["--listen", "127.0.0.1:0", "--progress", "none"]);
    args.extend_from_slice(&["--wait-for-clients", "1", "--linger", "20"]);
    let u = Proc::start(&args);
    let v = observe(&format!("http://{}/", u.addr()), json!({}));
    assert_eq!(v["dialogs"], json!([]), "markup ran: {v:#}");
    let logged = v["log"].as_array().expect("log").iter().any(|l| {
        l.as_str()
            .is_some_and(|l| l.contains(&format!("conflict in {table} at key \"{key}\"")))
    });
    assert!(logged, "the conflict, as text: {v:#}");
    assert_eq!(v["banner"]["status"], "ok", "{v:#}");
}

/// An undo's page cancels it as an undo: the button, the question and the
/// log line said "run" ("cancelled the run from the dashboard"), and the
/// question that the chunk under way rolls back.
#[test]
fn an_undo_s_page_cancels_it_as_an_undo() {
    let Some(_b) = browser() else { return };
    let db = bumped();
    let dbp = path_str(&db.path).to_owned();
    let mut p = Proc::start(&words(&format!(
        "undo --db {dbp} --plan bump --listen 127.0.0.1:0 --progress none --wait-for-clients 1 --sleep 5000 --control-token {CONTROL}"
    )));
    let url = format!("http://{}/#control={CONTROL}", p.addr());
    let v = observe(
        &url,
        json!({"timeout_ms": 15000, "actions": [
            {"text": "#plan", "is": "Undo of bump"},
            {"text": "#cancel", "is": "Cancel undo"},
            {"dialogs": "accept"},
            {"click": "#cancel"},
            {"wait": "#log li[data-level=control]"},
        ]}),
    );
    assert_eq!(v.get("action_error"), None, "{v:#}");
    let asked = v["dialogs"][0]["message"].as_str().unwrap_or_default();
    assert!(asked.starts_with("Cancel the undo? "), "{v:#}");
    assert!(asked.contains("the same undo command finishes it"), "{v:#}");
    let line = v["control_log"][0].as_str().unwrap_or_default();
    assert!(
        line.starts_with("cancelled the undo from the dashboard ("),
        "{v:#}"
    );
    assert_eq!(p.wait().code(), Some(130), "{}", p.stderr());
}

/// An undo takes back the run's chunks as they were recorded, so its page
/// offers no chunk time (the server would refuse it): the nice ratio and
/// the sleep stay, and a run's page keeps all three.
#[test]
fn an_undo_s_page_steers_its_yield_but_offers_no_chunk_time() {
    let Some(_b) = browser() else { return };
    let db = bumped();
    let dbp = path_str(&db.path).to_owned();
    // Sleeps long enough that the undo is still going when the page
    // applies its new sleep (which cuts the one under way short): with
    // 100 ms, its four parts could end first, and the form with them.
    // The nice ratio is given: left to the governor, it turns from the
    // live pace's 1 to the idle 0 once the undo has been alone for a few
    // seconds, which a slow browser start can outlast.
    let p = Proc::start(&words(&format!(
        "undo --db {dbp} --plan bump --listen 127.0.0.1:0 --progress none --wait-for-clients 1 --sleep 5000 --nice-ratio 1 --control-token {CONTROL}"
    )));
    let url = format!("http://{}/#control={CONTROL}", p.addr());
    let v = observe(
        &url,
        json!({"timeout_ms": 15000, "actions": [
            {"wait": "#pause"},
            // The controls show as the page loads (the token is in the
            // fragment); the undo's start, which hides the chunk time, may
            // come later.
            {"text": "#plan", "is": "Undo of bump"},
            {"snapshot": "undo"},
            {"fill": "#sleep", "value": "5"},
            {"click": "#apply"},
            {"wait": "#log li[data-level=control]"},
        ]}),
    );
    assert_eq!(v.get("action_error"), None, "{v:#}");
    let steer = &v["snapshots"]["undo"]["steer"];
    assert_eq!(
        steer["shown_inputs"],
        json!(["nice_ratio", "sleep_ms"]),
        "{v:#}"
    );
    let posts = v["control_requests"].as_array().expect("control requests");
    let bodies: Vec<Value> = posts
        .iter()
        .map(|r| serde_json::from_str(r["body"].as_str().unwrap_or("null")).unwrap_or_default())
        .collect();
    assert_eq!(bodies, [json!({"sleep_ms": 5})], "{v:#}");
    // Its log tells the new pace as an undo's: no chunk time, no batch size.
    let line = v["control_log"][0].as_str().unwrap_or_default();
    let said = "set the pace to the run's chunks, as recorded, nice ratio 1, sleep 5 ms from the dashboard";
    assert!(line.starts_with(said), "{v:#}");
    drop(p);
    let other = TempDb::counters(40);
    let plan = other.file("plan.json", &counter_plan("steer", 10));
    let run = serving(
        &other,
        path_str(&plan),
        &words(&format!(
            "--wait-for-clients 1 --batch-size 10 --sleep 2000 --control-token {CONTROL}"
        )),
    );
    let url = format!("http://{}/#control={CONTROL}", run.addr());
    let v = observe(
        &url,
        json!({"timeout_ms": 15000, "actions": [
            {"wait": "#pause"},
            {"text": "#plan", "is": "steer"},
            {"snapshot": "run"},
        ]}),
    );
    assert_eq!(
        v["snapshots"]["run"]["steer"]["shown_inputs"],
        json!(["chunk_time_ms", "nice_ratio", "sleep_ms"]),
        "{v:#}"
    );
}

/// Steps in the big plan below: enough that a page drawing event by event
/// would be slow to catch up, few enough for a quick test.
const MANY: usize = 1000;
/// The steps of the big plan after which the run holds (0-based).
const HOLDS: [usize; 2] = [299, 699];

/// A plan of [`MANY`] steps on `t` (100 rows): one-row updates, and every
/// tenth step a chunked update (its progress, and a message in the log),
/// the next tenth one that changes no row (its warning too). The steps at
/// [`HOLDS`] write `pause` (`VACUUM INTO`), so a run with `--pause-file
/// pause` holds right after each of them, until the test removes it.
fn many_steps(db: &TempDb) -> (PathBuf, PathBuf) {
    let pause = db.dir.path().join("pause");
    let steps: Vec<Value> = (0..MANY)
        .map(|i| {
            let name = format!("step {i}");
            if HOLDS.contains(&i) {
                let into = path_str(&pause).replace('\'', "''");
                return json!({"name": name, "sql": format!("VACUUM INTO '{into}'")});
            }
            let chunk = json!({"table": "t", "key": "id", "size": 30});
            match i % 10 {
                4 => json!({"name": name, "chunk": chunk,
                    "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi"}),
                9 => json!({"name": name, "chunk": chunk,
                    "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi AND counter < 0"}),
                _ => json!({"name": name, "sql": format!("UPDATE t SET counter = counter + 1 WHERE id = {}", i % 100 + 1)}),
            }
        })
        .collect();
    let plan = db.file(
        "many.json",
        &json!({"name": "many", "steps": steps}).to_string(),
    );
    (plan, pause)
}

/// The text of every `message` event up to event `last`, in order.
fn messages_through(addr: SocketAddr, last: u64) -> Vec<String> {
    let mut s = Stream::open(addr, "/events", &[]);
    let mut out = Vec::new();
    while let Some(e) = s.next_event() {
        if e.event == "message" {
            out.push(data(&e)["message"].as_str().unwrap_or_default().to_owned());
        }
        if id(&e) >= last {
            break;
        }
    }
    out
}

/// What the page must show of the big plan with `done` steps done and the
/// rest waiting: every row in plan order, the overall count, the run's
/// messages in order, and the log following its tail (`follows`) or left
/// where the reader scrolled it, at its top.
fn assert_many(v: &Value, done: usize, log: &[String], follows: bool) {
    let steps = v["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), MANY, "{:#}", v["overall"]);
    for (i, s) in steps.iter().enumerate() {
        let (state, bar) = if i < done {
            ("done", 1)
        } else {
            ("waiting", 0)
        };
        assert_eq!(s["name"], format!("step {i}"), "row {i}");
        assert_eq!(s["state"], state, "row {i}: {s}");
        assert_eq!(
            s["progress"],
            json!({"value": bar, "max": 1}),
            "row {i}: {s}"
        );
        let text = s["text"].as_str().unwrap_or_default();
        assert_eq!(text.contains("took"), i < done, "row {i}: {s}");
        if i < done && i % 10 == 4 && !HOLDS.contains(&i) {
            assert!(text.contains("100 / 100 rows 100 changed"), "row {i}: {s}");
        }
    }
    let want = format!("{done} / {MANY} steps done");
    assert_eq!(
        v["overall"],
        json!({"value": done, "max": MANY, "text": want})
    );
    assert_eq!(
        v["log"],
        json!(log),
        "the page's log must be the run's messages"
    );
    let scroll = &v["log_scroll"];
    assert_eq!(scroll["overflows"], true, "{scroll}");
    let (at, what) = match follows {
        true => (&scroll["from_end"], "the log must follow its tail"),
        false => (
            &scroll["top"],
            "the log must stay where the reader scrolled it",
        ),
    };
    assert!(
        at.as_f64().is_some_and(|d| d.abs() < 2.0),
        "{what}: {scroll}"
    );
}

/// Waits until the run holds at the pause file after `done` steps; its
/// messages so far.
fn held_after(p: &Proc, done: usize) -> Vec<String> {
    wait_status(p.addr(), &[], |s| {
        s["throttled"] == "pause-file" && s["steps_done"] == done
    });
    let last = get(p.addr(), "/status", &[]).json()["last_event_id"]
        .as_u64()
        .expect("last_event_id");
    messages_through(p.addr(), last)
}

/// A page that opens on the big plan's run held at its first hold, snapshots
/// it (`late`), then says so by creating the file returned, and snapshots
/// the run at its second hold (`live`), which it saw come live. The page
/// without frames has its reader scroll the log up in between.
fn held_page(url: &str, db: &TempDb, mut opts: Value) -> (Observer, PathBuf) {
    let frameless = opts["no_frames"] == true;
    let ready = db.dir.path().join(format!("caught-up-{frameless}"));
    let read_up = match frameless {
        true => json!({"scroll": "#log", "top": 0}),
        false => json!({"sleep_ms": 0}),
    };
    let shows =
        |done: usize| json!({"text": "#overall-text", "is": format!("{done} / {MANY} steps done")});
    opts["until"] = json!("actions");
    opts["actions"] = json!([
        shows(HOLDS[0] + 1), {"snapshot": "late"}, read_up, {"touch": path_str(&ready)},
        shows(HOLDS[1] + 1), {"wait": "#throttle"}, {"snapshot": "live"},
    ]);
    (Observer::start(url, opts), ready)
}

/// A page opened late on a run of many steps (the server replays all of it
/// at once) shows every row, the count and the log as the run left them:
/// held mid-run, where no `finished` follows the replay, then held again
/// after events that came live, in a page that draws frames and in one that
/// draws none (a hidden tab); and once the run is over.
#[test]
fn a_late_page_on_a_run_of_many_steps_shows_every_event_held_and_finished() {
    let Some(_b) = browser() else { return };
    let db = TempDb::counters(100);
    db.age();
    let (plan, pause) = many_steps(&db);
    let p = serving(
        &db,
        path_str(&plan),
        &["--pause-file", path_str(&pause), "--linger", "60"],
    );
    let first = held_after(&p, HOLDS[0] + 1);
    let url = format!("http://{}/", p.addr());
    let pages = [json!({}), json!({"no_frames": true})].map(|opts| held_page(&url, &db, opts));
    for (_, ready) in &pages {
        wait_for_file(ready);
    }
    std::fs::remove_file(&pause).expect("go on");
    let second = held_after(&p, HOLDS[1] + 1);
    // The page with frames follows the log's tail; the one without was
    // scrolled up by its reader.
    for ((page, _), follows) in pages.into_iter().zip([true, false]) {
        let v = page.finish();
        assert_eq!(v["action_error"], Value::Null, "{:#}", v["overall"]);
        let shot = |name: &str| &v["snapshots"][name];
        assert_many(shot("late"), HOLDS[0] + 1, &first, true);
        assert_many(shot("live"), HOLDS[1] + 1, &second, follows);
        assert_eq!(shot("live")["steer"]["badge"], "Throttled (pause-file)");
    }

    std::fs::remove_file(&pause).expect("go on");
    wait_status(p.addr(), &[], |s| s["state"] == "finished");
    let v = observe(&url, json!({}));
    assert_many(&v, MANY, &messages(p.addr(), &[]), true);
    assert_eq!(v["banner"]["status"], "ok", "{:#}", v["banner"]);
    let banner = v["banner"]["text"].as_str().unwrap_or_default();
    assert!(
        banner.contains(&format!("{MANY} / {MANY} steps")),
        "{banner}"
    );
}

/// Waits until `path` exists, failing the test after [`PATIENCE`].
fn wait_for_file(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < PATIENCE,
            "never created: {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A recorded run whose undo record lost parts while it ran (its tables
/// dropped by hand between two steps) cannot be taken back, as the
/// terminal says and `finished` (no `undo_command`) carries; the banner
/// said "batchsse undo can take this run back", which `batchsse undo`
/// then refused as damaged. It says the run cannot be taken back.
#[test]
fn the_banner_of_a_run_whose_undo_record_is_incomplete_offers_no_undo() {
    let Some(_b) = browser() else { return };
    let (db, plan, hold) = held_after_first_step();
    // Held after the first step until the test says go.
    let flags = ["--undo", "--throttle-query", hold, "--linger", "20"];
    let p = serving(&db, path_str(&plan), &flags);
    let status = |field: &str| get(p.addr(), "/status", &[]).json()[field].clone();
    let t0 = Instant::now();
    while status("throttled").is_null() {
        assert!(t0.elapsed() < PATIENCE, "never held: {}", p.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    clear_undo_by_hand(&db);
    db.conn()
        .execute_batch("INSERT INTO go VALUES (1)")
        .unwrap();
    while status("state") != "finished" {
        assert!(t0.elapsed() < PATIENCE, "never finished: {}", p.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(status("undo_command").is_null(), "{}", p.stderr());
    let v = observe(&format!("http://{}/", p.addr()), json!({}));
    assert_eq!(v["banner"]["status"], "ok", "{v:#}");
    let said = v["banner"]["text"].as_str().unwrap_or_default();
    assert!(said.contains("cannot take this run back"), "{said:?}");
    assert!(!said.contains("can take"), "{said:?}");
}
