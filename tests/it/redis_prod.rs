//! Publish and relay on the Redis that production teams run: TLS with
//! certificates made here by `openssl` (a CA, a server, a client, and a CA
//! nobody trusts), and ACL users with the README's minimal rules. Real
//! `redis-server` processes on free ports, killed by pid.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::util::*;

/// Runs `batchsse ARGS` with `env` to its exit (within PATIENCE):
/// (code, stdout, stderr), each read to its end.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("BATCHSSE_PUBLISH")
        .env_remove("BATCHSSE_REDIS_PASSWORD")
        .env_remove("BATCHSSE_TOKEN")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run batchsse");
    let read_all = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read_all(Box::new(child.stdout.take().expect("stdout")));
    let err = read_all(Box::new(child.stderr.take().expect("stderr")));
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("batchsse {args:?} did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let (out, err) = (out.join().expect("stdout"), err.join().expect("stderr"));
    (status.code(), out, err)
}

/// The first `command` between backticks in `text`, run by `sh`: its stdout.
fn run_quoted(text: &str) -> String {
    let cmd = text.split('`').nth(1).expect("a command in backticks");
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `XLEN` of a run's stream, read over the plain port.
fn xlen(redis: &Redis, run_id: &str) -> usize {
    redis::cmd("XLEN")
        .arg(format!("batchsse:run:{run_id}"))
        .query(
            &mut redis::Client::open(redis.url())
                .and_then(|c| c.get_connection())
                .expect("connect to the test's Redis"),
        )
        .expect("XLEN")
}

/// A finished run of a counter plan published with `flags` (and `env`):
/// its `--progress json` lines and its run id.
fn publish(db: &TempDb, flags: &[&str], env: &[(&str, &str)]) -> (Vec<Value>, String, String) {
    let plan = db.file("plan.json", &counter_plan("prod", 10));
    let mut args = run_args(
        db,
        path_str(&plan),
        &["--listen", "127.0.0.1:0", "--progress", "json"],
    );
    args.extend_from_slice(flags);
    let (code, out, err) = run_env(&args, env);
    assert_eq!(code, Some(0), "run: {err}");
    let lines = json_lines(&out);
    let run_id = lines[0]["data"]["run_id"]
        .as_str()
        .expect("run_id")
        .to_owned();
    (lines, run_id, err)
}

/// A relay for `run_id` with `flags` (and `env`): every event it serves
/// must be the run's, in order; returns what it showed besides: its
/// stderr, `/status` and `/metrics`.
fn relay_serves(
    url: &str,
    run_id: &str,
    flags: &[&str],
    env: &[(&str, &str)],
    lines: &[Value],
) -> String {
    let mut args = vec![
        "relay",
        url,
        "--run",
        run_id,
        "--listen",
        "127.0.0.1:0",
        "--linger",
        "30",
    ];
    args.extend_from_slice(flags);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut mirror = Proc::start_with(&args, move |c| {
        c.env_remove("BATCHSSE_REDIS_PASSWORD");
        for (k, v) in env {
            c.env(k, v);
        }
    });
    let mut s = Stream::open(mirror.addr(), "/events", &[]);
    let got: Vec<_> = s.rest().iter().map(event_triple).collect();
    let want: Vec<_> = lines.iter().map(line_triple).collect();
    assert_eq!(got, want, "relay stderr:\n{}", mirror.stderr());
    let status = get(mirror.addr(), "/status", &[]).text();
    let metrics = get(mirror.addr(), "/metrics", &[]).text();
    // It has served the run to its end: a signal in its linger is a clean exit.
    mirror.signal("TERM");
    assert_eq!(mirror.wait().code(), Some(0), "{}", mirror.stderr());
    format!("{}\n{status}\n{metrics}", mirror.stderr())
}

/// Runs a plan of `db` publishing to `url` (with `extra` flags), which must
/// be refused at start (exit 2) with nothing run: what it said.
fn publish_refused(db: &TempDb, plan: &std::path::Path, url: &str, extra: &[&str]) -> String {
    let mut args = run_args(db, path_str(plan), &["--no-serve", "--publish", url]);
    args.extend_from_slice(extra);
    let before = sha256(&db.path);
    let (code, _, err) = run_env(&args, &[]);
    assert_eq!(code, Some(2), "{url} {extra:?}: {err}");
    assert_eq!(
        sha256(&db.path),
        before,
        "{url} {extra:?}: the file untouched"
    );
    err
}

#[test]
fn a_run_published_over_tls_is_relayed_event_for_event() {
    let Some(certs) = Certs::make() else { return };
    let Some((redis, url)) = tls_redis(&certs, false) else {
        return;
    };
    let db = TempDb::counters(100);
    let ca = certs.arg("ca.pem");
    let (lines, run_id, err) = publish(&db, &["--publish", &url, "--redis-ca", &ca], &[]);
    assert_eq!(
        xlen(&redis, &run_id),
        lines.len(),
        "every event in Redis once"
    );
    // The relay command it prints works as printed: with the CA.
    assert!(
        err.contains(&format!(
            "publishing every event to {url}; `batchsse relay {url} --redis-ca {ca} --plan prod`"
        )),
        "{err}"
    );
    relay_serves(&url, &run_id, &["--redis-ca", &ca], &[], &lines);
}

#[test]
fn a_server_back_mid_run_with_an_expired_certificate_is_named_on_both_sides() {
    // Redis restarted mid-run with a certificate renewed wrong: at start
    // that is exit 2 in plain words, but mid-run the relay said only that
    // the first connection dropped and retried in silence for good, and
    // the run's last line gave rustls's bare `invalid peer certificate`.
    use crate::relay::published_until_paused;
    let Some(certs) = Certs::make() else { return };
    let Some((mut redis, url)) = tls_redis(&certs, false) else {
        return;
    };
    let ca = certs.arg("ca.pem");
    let extra = ["--redis-ca", ca.as_str(), "--drain-timeout", "2"];
    let (mut run, mut s, mut seen, run_id, db) =
        published_until_paused(&redis, 100, "renewed", &url, &extra);
    let args = ["relay", &url, "--run", &run_id, "--redis-ca", &ca];
    let mut mirror = Proc::start(&[&args[..], &["--listen", "127.0.0.1:0"]].concat());
    let mut r = Stream::open(mirror.addr(), "/events", &[]);
    for _ in 0..seen.len() {
        r.next_event().expect("an event");
    }
    let expired = std::fs::read(certs.expired("server")).expect("read the expired certificate");
    std::fs::write(certs.path("server.pem"), expired).expect("swap the server's certificate");
    redis.restart();
    std::fs::remove_file(db.dir.path().join("pause")).expect("remove the pause file");
    seen.extend(s.rest());
    assert_eq!(run.wait().code(), Some(0), "{}", run.stderr());
    let said = "the server's TLS certificate has expired, or is not valid yet";
    let err = run.stderr();
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("not published") && last.contains(said),
        "{err}"
    );
    mirror.wait_stderr(said);
    mirror.signal("TERM");
    mirror.wait();
}

/// A relay told of a run its TLS Redis does not hold names a `redis-cli`
/// command that lists the runs there: with the relay's CA and client
/// certificate, without which `redis-cli --tls` cannot connect.
#[test]
fn a_missing_run_s_hint_over_tls_carries_the_certificates() {
    let Some(certs) = Certs::make() else { return };
    let Some((_redis, url)) = tls_redis(&certs, true) else {
        return;
    };
    let db = TempDb::counters(100);
    let (ca, cert, key) = (
        certs.arg("ca.pem"),
        certs.arg("client.pem"),
        certs.arg("client.key"),
    );
    let tls = [
        "--redis-ca",
        &ca,
        "--redis-cert",
        &cert,
        "--redis-key",
        &key,
    ];
    let mut flags = vec!["--publish", &url];
    flags.extend(tls);
    let (_, run_id, _) = publish(&db, &flags, &[]);
    let mut args = vec!["relay", &url, "--run", "nosuch", "--listen", "127.0.0.1:0"];
    args.extend(tls);
    let (code, _, err) = run_env(&args, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(run_quoted(&err).contains(&run_id), "{err}");
}

#[test]
fn a_certificate_that_fails_is_refused_at_start_in_plain_words() {
    let Some(certs) = Certs::make() else { return };
    let Some((redis, url)) = tls_redis(&certs, true) else {
        return;
    };
    let db = TempDb::counters(20);
    let plan = db.file("plan.json", &counter_plan("tls", 10));
    let attempt = |extra: &[&str]| {
        let mut args = run_args(&db, path_str(&plan), &["--no-serve", "--publish", &url]);
        args.extend_from_slice(extra);
        run_env(&args, &[])
    };
    let (ca, other) = (certs.arg("ca.pem"), certs.arg("other-ca.pem"));
    let (cert, key) = (certs.arg("client.pem"), certs.arg("client.key"));
    // A CA that did not sign the server's certificate; one of the same
    // name that did not either (rustls says BadSignature: it was "the TLS
    // handshake failed"); then the system's roots, which did not either.
    let twin = certs.twin_ca();
    for extra in [&["--redis-ca", &other][..], &["--redis-ca", &twin], &[]] {
        let (code, _, err) = attempt(extra);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(
            err.contains("not signed by a CA this side trusts") && err.contains("--redis-ca"),
            "{extra:?}: {err}"
        );
    }
    // TLS's port without TLS, and the plain port with it: each says so.
    let no_tls = url.replace("rediss://", "redis://");
    let plain_port = format!("rediss://127.0.0.1:{}/0", redis.port);
    for (publish, extra, says) in [
        (&no_tls, &[][..], "a port that wants TLS takes rediss://"),
        (
            &plain_port,
            &["--redis-ca", &ca][..],
            "with TLS on that port",
        ),
    ] {
        let err = publish_refused(&db, &plan, publish, extra);
        assert!(err.contains(says), "{err}");
    }
    // The right CA, but the server wants a client certificate.
    let (code, _, err) = attempt(&["--redis-ca", &ca]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("the server wants a client certificate") && err.contains("give --redis-cert"),
        "{err}"
    );
    // A client certificate the server's CA did not sign: the server's
    // refusal (an UnknownCA alert) was "the TLS handshake failed".
    let other_key = certs.arg("other-ca.key");
    let (code, _, err) = attempt(&[
        "--redis-ca",
        &ca,
        "--redis-cert",
        &other,
        "--redis-key",
        &other_key,
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("the server refused the client certificate")
            && err.contains("tls-ca-cert-file"),
        "{err}"
    );
    assert_eq!(db.counter_spread(), (0, 20), "nothing ran");
    // A key without its certificate is a usage error before connecting.
    let (code, _, err) = attempt(&["--redis-ca", &ca, "--redis-key", &key]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("together"), "{err}");
    let (code, _, err) = attempt(&[
        "--redis-ca",
        &ca,
        "--redis-cert",
        &cert,
        "--redis-key",
        &key,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(db.counter_spread(), (20, 0));
}

#[test]
fn an_expired_certificate_is_told_apart_on_either_side() {
    // The server's certificate expired: this side refuses it. The client's
    // expired: the server refuses it, with an alert that said the same
    // words ("the server's TLS certificate has expired … have it renewed"),
    // which sent the user to renew a certificate that was fine.
    let Some(certs) = Certs::make() else { return };
    let expired_server = certs.expired("server");
    let tls_port = free_port().to_string();
    let mut args = certs.server_args(&tls_port, true);
    let at = args
        .iter()
        .position(|a| a == "--tls-cert-file")
        .expect("cert flag");
    args[at + 1] = expired_server;
    let Some(_old) = Redis::start_with(&args) else {
        return;
    };
    let Some((_redis, url)) = tls_redis(&certs, true) else {
        return;
    };
    let db = TempDb::counters(20);
    let plan = db.file("plan.json", &counter_plan("tls", 10));
    let (ca, key) = (certs.arg("ca.pem"), certs.arg("client.key"));
    let expired_client = certs.expired("client");
    let old_url = format!("rediss://127.0.0.1:{tls_port}/0");
    let client = |cert: &str, url: &str| {
        let mut args = run_args(&db, path_str(&plan), &["--no-serve", "--publish", url]);
        let tls = ["--redis-ca", &ca, "--redis-cert", cert, "--redis-key", &key];
        args.extend_from_slice(&tls);
        run_env(&args, &[])
    };
    let (code, _, err) = client(&certs.arg("client.pem"), &old_url);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("the server's TLS certificate has expired") && err.contains("renewed"),
        "{err}"
    );
    let (code, _, err) = client(&expired_client, &url);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("the server refused the client certificate (--redis-cert)")
            && err.contains("expired")
            && !err.contains("server's TLS certificate"),
        "{err}"
    );
    assert_eq!(db.counter_spread(), (0, 20), "nothing ran");
}

#[test]
fn a_self_signed_server_certificate_made_as_a_ca_is_told_how_to_remake() {
    // `openssl req -x509` makes a CA certificate (CA:TRUE) by default, and
    // rustls takes no CA certificate as a server's, even one given with
    // --redis-ca; the user got "the TLS handshake failed (… CaUsedAsEndEntity)"
    // and the generic advice, which does not name the cause. The same
    // certificate made with CA:FALSE serves.
    let Some(certs) = Certs::make() else { return };
    let db = TempDb::counters(20);
    let plan = db.file("plan.json", &counter_plan("self", 10));
    let publish = |pem: &str, key: &str| {
        let tls_port = free_port().to_string();
        let args: Vec<String> = [
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            pem,
            "--tls-key-file",
            key,
            "--tls-auth-clients",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let redis = Redis::start_with(&args)?;
        let url = format!("rediss://127.0.0.1:{tls_port}/0");
        let mut args = run_args(&db, path_str(&plan), &["--no-serve", "--publish", &url]);
        args.extend_from_slice(&["--redis-ca", pem]);
        let done = run_env(&args, &[]);
        drop(redis);
        Some(done)
    };
    let (pem, key) = certs.self_signed("self", None);
    let Some((code, _, err)) = publish(&pem, &key) else {
        return;
    };
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("is a CA certificate") && err.contains("basicConstraints=critical,CA:FALSE"),
        "{err}"
    );
    assert_eq!(db.counter_spread(), (0, 20), "nothing ran");
    let (pem, key) = certs.self_signed("leaf", Some("basicConstraints=critical,CA:FALSE"));
    let Some((code, _, err)) = publish(&pem, &key) else {
        return;
    };
    assert_eq!(code, Some(0), "{err}");
}

/// The README's minimal ACL rules (keep them the same there).
const PUBLISHER_RULES: &[&str] = &[
    "resetkeys",
    "~batchsse:*",
    "-@all",
    "+ping",
    "+xadd",
    "+xrange",
    "+xrevrange",
    "+set",
    "+expire",
    "+del",
    "+xdel",
];
const RELAY_RULES: &[&str] = &[
    "resetkeys",
    "~batchsse:*",
    "-@all",
    "+ping",
    "+xread",
    "+xrange",
    "+xrevrange",
    "+get",
    "+exists",
    "+type",
    "+multi",
    "+exec",
];

fn acl_user(redis: &Redis, user: &str, password: &str, rules: &[&str]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(user)
        .arg("reset")
        .arg("on")
        .arg(format!(">{password}"));
    for r in rules {
        cmd.arg(*r);
    }
    let mut conn = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("connect to the test's Redis");
    let _: () = cmd.query(&mut conn).expect("ACL SETUSER");
}

#[test]
fn acl_users_with_the_minimal_rules_publish_and_relay_and_one_rule_fewer_fails() {
    let Some(redis) = Redis::start() else { return };
    let port = redis.port;
    acl_user(&redis, "bpub", "pub-s3cret", PUBLISHER_RULES);
    acl_user(&redis, "brelay", "relay-s3cret", RELAY_RULES);
    let db = TempDb::counters(60);
    // The publisher's password in the URL; the relay's from the environment.
    let pub_url = format!("redis://bpub:pub-s3cret@127.0.0.1:{port}/0");
    let (lines, run_id, err) = publish(&db, &["--publish", &pub_url], &[]);
    let out: String = lines.iter().map(Value::to_string).collect();
    assert!(!out.contains("\"error\""), "no refusal: {out}");
    assert_eq!(xlen(&redis, &run_id), lines.len());
    let relay_url = format!("redis://brelay@127.0.0.1:{port}/0");
    let env = [("BATCHSSE_REDIS_PASSWORD", "relay-s3cret")];
    let relay_err = relay_serves(&relay_url, &run_id, &[], &env, &lines);
    for text in [&err, &out, &relay_err] {
        assert!(!text.contains("s3cret"), "a password shown: {text}");
    }
    assert!(err.contains("redis://bpub@127.0.0.1"), "{err}");
    // A long run's stream drops what its log's compaction drops.
    let db = TempDb::counters(60);
    let flags = ["--publish", &pub_url, "--batch-size", "1"];
    let (lines, run_id, _) = publish(&db, &flags, &[("BATCHSSE_LOG_COMPACT_AT", "16")]);
    let out: String = lines.iter().map(Value::to_string).collect();
    assert!(!out.contains("xdel") && !out.contains("\"error\""), "{out}");
    assert!(xlen(&redis, &run_id) < lines.len() / 2, "{out}");
    // One command fewer for each: a clear refusal, in Redis's words.
    acl_user(
        &redis,
        "bpub",
        "pub-s3cret",
        &[PUBLISHER_RULES, &["-expire"]].concat(),
    );
    let db = TempDb::counters(20);
    let (lines, _, err) = publish(&db, &["--publish", &pub_url], &[]);
    let said: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "message" && l["data"]["status"] == "error")
        .collect();
    assert_eq!(said.len(), 1, "{lines:?}");
    let text = said[0]["data"]["message"].as_str().unwrap_or_default();
    assert!(text.contains("NOPERM") && text.contains("expire"), "{text}");
    assert!(err.contains("not published"), "{err}");
    // Each command a relay reads with is tried at start, so a rule fewer
    // is refused before it listens, not once it serves.
    for command in [
        "multi",
        "xread",
        "xrange",
        "xrevrange",
        "get",
        "exists",
        "type",
    ] {
        let fewer = format!("-{command}");
        acl_user(
            &redis,
            "brelay",
            "relay-s3cret",
            &[RELAY_RULES, &[fewer.as_str()]].concat(),
        );
        for which in [["--run", run_id.as_str()], ["--plan", "counters"]] {
            let mut args = vec!["relay", &relay_url, "--listen", "127.0.0.1:0"];
            args.extend_from_slice(&which);
            let (code, _, err) = run_env(&args, &env);
            assert_eq!(code, Some(2), "{fewer} {which:?}: refused at start: {err}");
            assert!(
                err.contains("NOPERM") && err.contains(command) && !err.contains("listening"),
                "{fewer} {which:?}: {err}"
            );
            assert!(!err.contains("s3cret"), "{err}");
        }
    }
}

/// A `redis-sentinel` watching the primary `main` at `primary_port`, on a
/// free port; killed (by pid) when dropped.
struct Sentinel {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(primary_port: u16) -> Sentinel {
        Sentinel::start_with(primary_port, "")
    }

    /// The same, with more lines of `sentinel.conf` (`sentinel auth-pass`).
    fn start_with(primary_port: u16, conf_extra: &str) -> Sentinel {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\n\
                 sentinel monitor main 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds main 2000\n\
                 sentinel failover-timeout main 10000\n{conf_extra}",
                dir.path().display(),
                dir.path().join("sentinel.log").display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server --sentinel");
        let s = Sentinel {
            port,
            child,
            _dir: dir,
        };
        // A sentinel with a password of its own answers NOAUTH once up.
        wait_for_redis("the sentinel", || {
            match s.ask::<String>(&mut redis::cmd("PING")) {
                Ok(_) => Some(()),
                Err(e) => (e.code() == Some("NOAUTH")).then_some(()),
            }
        });
        s
    }

    fn ask<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> redis::RedisResult<T> {
        let mut conn =
            redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?.get_connection()?;
        cmd.query(&mut conn)
    }

    /// The primary's port, as this sentinel names it.
    fn primary_port(&self) -> Option<u16> {
        let addr: Option<(String, String)> = self
            .ask(
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg("main"),
            )
            .ok()
            .flatten();
        addr.and_then(|(_, p)| p.parse().ok())
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` until it gives a value (bounded by PATIENCE).
fn wait_for_redis<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(start.elapsed() < PATIENCE, "{what} never got ready");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// One command on a plain node.
fn on<T: redis::FromRedisValue>(redis: &Redis, cmd: &mut redis::Cmd) -> redis::RedisResult<T> {
    let mut conn = redis::Client::open(redis.url())?.get_connection()?;
    cmd.query(&mut conn)
}

/// A primary, its replica (linked), and `n` sentinels watching them.
fn replicated(n: usize) -> Option<(Redis, Redis, Vec<Sentinel>)> {
    let (primary, mut replicas, sentinels) = replicated_by(1, n)?;
    Some((primary, replicas.remove(0), sentinels))
}

/// A primary, `r` replicas (linked), and `n` sentinels watching them.
fn replicated_by(r: usize, n: usize) -> Option<(Redis, Vec<Redis>, Vec<Sentinel>)> {
    let primary = Redis::start()?;
    let replica_of = [
        "--replicaof".to_string(),
        "127.0.0.1".into(),
        primary.port.to_string(),
    ];
    let mut replicas = Vec::new();
    for _ in 0..r {
        let replica = Redis::start_with(&replica_of)?;
        wait_for_redis("the replica's link", || {
            let info: String = on(&replica, redis::cmd("INFO").arg("replication")).ok()?;
            info.contains("master_link_status:up").then_some(())
        });
        replicas.push(replica);
    }
    let sentinels = (0..n).map(|_| Sentinel::start(primary.port)).collect();
    Some((primary, replicas, sentinels))
}

/// The `redis+sentinel://` URL of `sentinels`.
fn sentinel_url(sentinels: &[Sentinel]) -> String {
    let hosts: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    format!("redis+sentinel://{}/main/0", hosts.join(","))
}

/// `redis-cli MONITOR` on `redis`: each command it runs, as one line
/// (`TIME [DB CLIENT] "CMD" "ARG"…`), until dropped (killed by pid).
struct Monitor {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Monitor {
    fn start(redis: &Redis) -> Monitor {
        use std::io::BufRead;
        let mut child = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "monitor"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-cli monitor");
        let out = child.stdout.take().expect("monitor's stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let m = Monitor { child, lines };
        let ok = m.lines.recv_timeout(PATIENCE).expect("MONITOR answers");
        assert_eq!(ok, "OK", "MONITOR");
        m
    }

    /// The lines seen until `done` holds for one (that one included).
    fn until(&self, done: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self.lines.recv_timeout(PATIENCE).expect("a MONITOR line");
            let last = done(&line);
            seen.push(line);
            if last {
                return seen;
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn under_sentinel_a_deletion_counts_only_once_a_replica_has_it() {
    // A failover to a replica that missed an XDEL would bring the deleted
    // events back for good: the publisher had forgotten them. So each
    // XDEL is followed, on its connection, by a WAIT before anything else
    // is written there (a WAIT with no replica is a lost connection, and
    // the deletions are sent again).
    let Some((primary, _replica, sentinels)) = replicated(1) else {
        return;
    };
    let url = sentinel_url(&sentinels);
    let monitor = Monitor::start(&primary);
    let db = TempDb::counters(60);
    let flags = ["--publish", &url, "--batch-size", "1"];
    let (lines, run_id, err) = publish(&db, &flags, &[("BATCHSSE_LOG_COMPACT_AT", "16")]);
    let finished = format!("\"{}-0\"", lines.len());
    let seen = monitor.until(|l| l.contains("\"XADD\"") && l.contains(&finished));
    // The publisher's connection: the one that wrote the stream.
    let client = |l: &str| l.split(['[', ']']).nth(1).map(str::to_owned);
    let publisher = client(&seen[seen.len() - 1]);
    let mut mine = seen.iter().filter(|l| client(l) == publisher);
    let mut deletes = 0;
    while let Some(l) = mine.next() {
        if !l.contains("\"XDEL\"") {
            continue;
        }
        deletes += 1;
        let next = mine.find(|l| !l.contains("\"XDEL\""));
        assert!(
            next.is_some_and(|n| n.contains("\"WAIT\"")),
            "an XDEL not waited on: {next:?}\n{err}"
        );
    }
    assert!(deletes > 0, "the stream was compacted: {run_id}");
}

#[test]
fn a_sentinel_failover_mid_run_loses_and_doubles_nothing() {
    use crate::relay::published_until_paused;
    let Some((primary, replica, sentinels)) = replicated(3) else {
        return;
    };
    // Each sentinel must know the replica before a failover can pick it.
    for s in &sentinels {
        wait_for_redis("the sentinel's view of the replica", || {
            let replicas: Vec<redis::Value> = s
                .ask(redis::cmd("SENTINEL").arg("replicas").arg("main"))
                .ok()?;
            (!replicas.is_empty()).then_some(())
        });
    }
    let url = sentinel_url(&sentinels);
    let extra = ["--drain-timeout", "30"];
    let (mut run, mut s, mut seen, run_id, db) =
        published_until_paused(&primary, 200, "failover", &url, &extra);
    let pause = db.dir.path().join("pause");
    let mut mirror = Proc::start(&["relay", &url, "--run", &run_id, "--listen", "127.0.0.1:0"]);
    // The failover, while the run is paused: the replica becomes primary.
    let _: () = sentinels[0]
        .ask(redis::cmd("SENTINEL").arg("failover").arg("main"))
        .expect("SENTINEL FAILOVER");
    wait_for_redis("the failover", || {
        let role: Vec<redis::Value> = on(&replica, &mut redis::cmd("ROLE")).ok()?;
        let promoted = matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master");
        (promoted
            && sentinels
                .iter()
                .all(|s| s.primary_port() == Some(replica.port)))
        .then_some(())
    });
    std::fs::remove_file(&pause).expect("remove the pause file");
    seen.extend(s.rest());
    let status = run.wait();
    assert_eq!(status.code(), Some(0), "{}", run.stderr());
    assert_contiguous(&seen, 1);
    assert_eq!(db.counter_spread(), (200, 0));
    // The new primary holds every event once.
    crate::relay::assert_published(&replica, &run_id, &seen);
    // The relay, which followed the failover too, served the same run.
    let mut r = Stream::open(mirror.addr(), "/events", &[]);
    let relayed: Vec<_> = r.rest().iter().map(event_triple).collect();
    assert_eq!(relayed, seen.iter().map(event_triple).collect::<Vec<_>>());
    // A client that leaves the run mid-way resumes on the relay: no gap,
    // no duplicate.
    let half = (seen.len() / 2).to_string();
    let mut resumed = Stream::open(mirror.addr(), "/events", &[("Last-Event-ID", &half)]);
    assert_contiguous(&resumed.rest(), seen.len() as u64 / 2 + 1);
    mirror.signal("TERM");
    mirror.wait();
}

#[test]
fn a_relay_blocked_on_a_primary_that_is_made_a_replica_goes_on() {
    // A primary made a replica (REPLICAOF, a Cluster's failover) ends each
    // blocked command with UNBLOCKED, the relay's XREAD among them. That
    // is a failover under way, not a refusal: the relay exited 3, and its
    // viewers lost the rest of the run.
    use crate::relay::published_until_paused;
    let Some(primary) = Redis::start() else {
        return;
    };
    let replica_of = |r: &Redis| {
        [
            "--replicaof".to_string(),
            "127.0.0.1".into(),
            r.port.to_string(),
        ]
    };
    let Some(replica) = Redis::start_with(&replica_of(&primary)) else {
        return;
    };
    let linked = |r: &Redis| {
        wait_for_redis("the replica's link", || {
            let info: String = on(r, redis::cmd("INFO").arg("replication")).ok()?;
            info.contains("master_link_status:up").then_some(())
        })
    };
    linked(&replica);
    let url = primary.url();
    let (mut run, mut s, mut seen, run_id, db) =
        published_until_paused(&primary, 100, "demoted", &url, &["--drain-timeout", "30"]);
    let mut mirror = Proc::start(&["relay", &url, "--run", &run_id, "--listen", "127.0.0.1:0"]);
    let mut r = Stream::open(mirror.addr(), "/events", &[]);
    let mut relayed: Vec<_> = (0..seen.len())
        .map(|_| r.next_event().expect("an event"))
        .collect();
    // The replica is promoted first, so that the primary's demotion, sent
    // on the connection that has just seen the relay blocked, follows at
    // once, well within the relay's block.
    let promote = |r: &Redis| {
        let _: () = on(r, redis::cmd("REPLICAOF").arg("NO").arg("ONE")).expect("promote");
    };
    let admin = |r: &Redis| {
        redis::Client::open(r.url())
            .and_then(|c| c.get_connection())
            .expect("connect")
    };
    let demote = |conn: &mut redis::Connection, to: &Redis| {
        let mut cmd = redis::cmd("REPLICAOF");
        let _: () = cmd
            .arg("127.0.0.1")
            .arg(to.port)
            .query(conn)
            .expect("demote");
    };
    promote(&replica);
    let mut conn = admin(&primary);
    wait_for_redis("the relay's blocked XREAD", || {
        let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).ok()?;
        clients
            .lines()
            .any(|c| c.contains("flags=b") && c.contains("cmd=xread"))
            .then_some(())
    });
    demote(&mut conn, &replica);
    linked(&primary);
    mirror.wait_stderr("UNBLOCKED");
    // And back, once the old primary has the data again.
    promote(&primary);
    demote(&mut admin(&replica), &primary);
    linked(&replica);
    std::fs::remove_file(db.dir.path().join("pause")).expect("remove the pause file");
    seen.extend(s.rest());
    assert_eq!(run.wait().code(), Some(0), "{}", run.stderr());
    relayed.extend(r.rest());
    let triples =
        |evs: &[batchsse::sse::ParsedEvent]| evs.iter().map(event_triple).collect::<Vec<_>>();
    assert_eq!(triples(&relayed), triples(&seen), "{}", mirror.stderr());
    mirror.signal("TERM");
    assert_eq!(mirror.wait().code(), Some(0), "{}", mirror.stderr());
}

impl Sentinel {
    /// `SENTINEL SET main quorum N`: how many sentinels must agree that
    /// the primary is down before one of them fails over.
    fn quorum(&self, n: u32) {
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("SET").arg("main").arg("quorum").arg(n);
        self.ask::<()>(&mut cmd).expect("SENTINEL SET quorum");
    }

    /// How this sentinel flags the primary (`master,s_down,…`).
    fn primary_flags(&self) -> String {
        let info: std::collections::HashMap<String, String> = self
            .ask(redis::cmd("SENTINEL").arg("MASTER").arg("main"))
            .unwrap_or_default();
        info.get("flags").cloned().unwrap_or_default()
    }
}

#[test]
fn a_sentinel_primary_that_dies_mid_run_is_waited_for_until_the_failover() {
    // From the moment the sentinels flag a dead primary down until one of
    // them has promoted a replica, they name no primary that is up. The
    // crate says "Master with given name not found", which was taken for
    // a refusal: the publisher stopped for good and a relay exited 3; at
    // start, the user was told to fix the service's name.
    use crate::relay::{paused, publishing_run, run_id_of, until_paused};
    let Some((mut primary, replicas, sentinels)) = replicated_by(2, 3) else {
        return;
    };
    for s in &sentinels {
        wait_for_redis("the sentinel's view of the replicas", || {
            let known: Vec<redis::Value> = s
                .ask(redis::cmd("SENTINEL").arg("replicas").arg("main"))
                .ok()?;
            (known.len() == 2).then_some(())
        });
        // No failover until the test says so: no quorum of 4 out of 3.
        s.quorum(4);
    }
    let url = sentinel_url(&sentinels);
    let db = TempDb::counters(200);
    let pause = paused(&db);
    let mut run = publishing_run(&db, "crash", &url, &pause, &["--drain-timeout", "60"]);
    let mut s = Stream::open(run.addr(), "/events", &[]);
    let mut seen = until_paused(&mut s);
    let run_id = run_id_of(&seen[0]);
    crate::relay::wait_published(&primary, &run_id, seen.len());
    let mut mirror = Proc::start(&["relay", &url, "--run", &run_id, "--listen", "127.0.0.1:0"]);
    let mut r = Stream::open(mirror.addr(), "/events", &[]);
    let mut relayed: Vec<_> = (0..seen.len())
        .map(|_| r.next_event().expect("an event"))
        .collect();
    let dead = primary.port;
    primary.kill();
    std::fs::remove_file(&pause).expect("remove the pause file");
    wait_for_redis("the sentinels' word that the primary is down", || {
        sentinels
            .iter()
            .all(|s| s.primary_flags().contains("s_down"))
            .then_some(())
    });
    // At start, that is said as it is.
    let (code, _, err) = run_env(
        &["relay", &url, "--run", &run_id, "--listen", "127.0.0.1:0"],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "127.0.0.1:{dead}, the primary the sentinels name for \"main\", is down"
        )) && !err.contains("fix the SERVICE"),
        "{err}"
    );
    // Both meet the primary down (reconnections every 2 s at most).
    std::thread::sleep(std::time::Duration::from_secs(5));
    for s in &sentinels {
        s.quorum(2);
    }
    seen.extend(s.rest());
    let status = run.wait();
    let err = run.stderr();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("not published"), "{err}");
    assert_contiguous(&seen, 1);
    let promoted = replicas
        .iter()
        .find(|r| sentinels[0].primary_port() == Some(r.port))
        .expect("a replica promoted");
    crate::relay::assert_published(promoted, &run_id, &seen);
    relayed.extend(r.rest());
    let triples =
        |evs: &[batchsse::sse::ParsedEvent]| evs.iter().map(event_triple).collect::<Vec<_>>();
    assert_eq!(triples(&relayed), triples(&seen), "{}", mirror.stderr());
    mirror.signal("TERM");
    assert_eq!(mirror.wait().code(), Some(0), "{}", mirror.stderr());
}

#[test]
fn events_left_unpublished_at_exit_are_said_with_the_outage_s_last_cause() {
    // The primary dies; the sentinels promote its only replica, which has
    // no replica of its own, so no batch counts as published (WAIT 1). The
    // run's last line named the outage's first cause, the dropped
    // connection to the dead primary, and nothing said why events stayed
    // unpublished with a primary up.
    use crate::relay::{paused, publishing_run, run_id_of, until_paused};
    let Some((mut primary, replica, sentinels)) = replicated(3) else {
        return;
    };
    for s in &sentinels {
        wait_for_redis("the sentinel's view of the replica", || {
            let known: Vec<redis::Value> = s
                .ask(redis::cmd("SENTINEL").arg("replicas").arg("main"))
                .ok()?;
            (!known.is_empty()).then_some(())
        });
    }
    let url = sentinel_url(&sentinels);
    let db = TempDb::counters(50);
    let pause = paused(&db);
    let mut run = publishing_run(&db, "orphan", &url, &pause, &["--drain-timeout", "3"]);
    let mut s = Stream::open(run.addr(), "/events", &[]);
    let seen = until_paused(&mut s);
    crate::relay::wait_published(&primary, &run_id_of(&seen[0]), seen.len());
    primary.kill();
    wait_for_redis("the failover", || {
        sentinels
            .iter()
            .all(|s| s.primary_port() == Some(replica.port))
            .then_some(())
    });
    std::fs::remove_file(&pause).expect("remove the pause file");
    s.rest();
    let status = run.wait();
    let err = run.stderr();
    assert_eq!(status.code(), Some(0), "{err}");
    let last = err
        .lines()
        .find(|l| l.contains("were not published"))
        .unwrap_or_else(|| panic!("no word of unpublished events:\n{err}"));
    assert!(last.contains("no replica took the events"), "{err}");
}

/// A 3-primary Redis Cluster on free ports, made with
/// `redis-cli --cluster create`; its nodes are killed when dropped.
struct Cluster(Vec<Redis>);

impl Cluster {
    fn start() -> Option<Cluster> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let args: Vec<String> = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            nodes.push(Redis::start_with(&args)?);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            wait_for_redis("the cluster", || {
                let info: String = on(n, redis::cmd("CLUSTER").arg("INFO")).ok()?;
                info.contains("cluster_state:ok").then_some(())
            });
        }
        Some(Cluster(nodes))
    }

    fn url(&self) -> String {
        let addrs: Vec<String> = self
            .0
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", addrs.join(","))
    }

    /// The entry ids of a run's stream (under its hash tag), read from
    /// whichever node holds it.
    fn entry_ids(&self, run_id: &str) -> Vec<String> {
        let nodes: Vec<String> = self
            .0
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect();
        let mut conn = redis::cluster::ClusterClient::new(nodes)
            .and_then(|c| c.get_connection())
            .expect("connect to the cluster");
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(format!("batchsse:run:{{{run_id}}}"))
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .expect("XRANGE");
        entries.into_iter().map(|(id, _)| id).collect()
    }
}

#[test]
fn a_run_published_to_a_cluster_is_served_by_two_relays() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.url();
    let db = TempDb::counters(100);
    let (lines, run_id, err) = publish(&db, &["--publish", &url], &[]);
    assert!(
        err.contains(&format!("publishing every event to {url}")),
        "{err}"
    );
    let want: Vec<String> = (1..=lines.len()).map(|n| format!("{n}-0")).collect();
    assert_eq!(
        cluster.entry_ids(&run_id),
        want,
        "every event once, in order"
    );
    for _ in 0..2 {
        relay_serves(&url, &run_id, &[], &[], &lines);
    }
    // A client that read half on one relay resumes on another.
    let relays: Vec<Proc> = (0..2)
        .map(|_| Proc::start(&["relay", &url, "--run", &run_id, "--listen", "127.0.0.1:0"]))
        .collect();
    let half = lines.len() / 2;
    let mut first = Stream::open(relays[0].addr(), "/events", &[]);
    let before: Vec<_> = (0..half)
        .map(|_| first.next_event().expect("an event"))
        .collect();
    let last = id(&before[half - 1]).to_string();
    let mut second = Stream::open(relays[1].addr(), "/events", &[("Last-Event-ID", &last)]);
    let after = second.rest();
    assert_contiguous(&before, 1);
    assert_contiguous(&after, half as u64 + 1);
    let mut got: Vec<_> = before.iter().map(event_triple).collect();
    got.extend(after.iter().map(event_triple));
    assert_eq!(got, lines.iter().map(line_triple).collect::<Vec<_>>());
    // A relay by plan finds the run through the plan's key, in its own slot.
    let mut by_plan = Proc::start(&["relay", &url, "--plan", "prod", "--listen", "127.0.0.1:0"]);
    let found = format!("its latest, {run_id}, has finished");
    wait_for_redis("the relay by plan", || {
        by_plan.stderr().contains(&found).then_some(())
    });
    by_plan.signal("TERM");
    by_plan.wait();
    // One node's plain URL is refused at start, to a relay by run or by
    // plan and to a run alike, saying to give the cluster's: before, the
    // nodes that did not hold the key answered MOVED, and a relay by plan
    // through the node that held the plan's key waited forever, sure the
    // run had finished (its stream is under the Cluster's name).
    let plan = db.file("plain.json", &counter_plan("prod", 10));
    for n in &cluster.0 {
        let plain = format!("redis://127.0.0.1:{}/0", n.port);
        for which in [["--run", run_id.as_str()], ["--plan", "prod"]] {
            let args = [
                "relay",
                &plain,
                which[0],
                which[1],
                "--listen",
                "127.0.0.1:0",
            ];
            let (code, _, err) = run_env(&args, &[]);
            assert_eq!(code, Some(2), "{which:?}: {err}");
            assert!(
                err.contains("one of a Redis Cluster; give redis+cluster://"),
                "{which:?}: {err}"
            );
        }
        let err = publish_refused(&db, &plan, &plain, &[]);
        assert!(err.contains("one of a Redis Cluster"), "{err}");
    }
    // So are ACL users with the least rules, which may not run INFO (they
    // were let through: their keys came out under one node's names).
    for n in &cluster.0 {
        acl_user(n, "bpub", "pub-s3cret", PUBLISHER_RULES);
        acl_user(n, "brelay", "relay-s3cret", RELAY_RULES);
    }
    for n in &cluster.0 {
        let relay = format!("redis://brelay:relay-s3cret@127.0.0.1:{}/0", n.port);
        let args = ["relay", &relay, "--run", &run_id, "--listen", "127.0.0.1:0"];
        let (code, _, err) = run_env(&args, &[]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("one of a Redis Cluster; give redis+cluster://"),
            "{err}"
        );
        let publisher = format!("redis://bpub:pub-s3cret@127.0.0.1:{}/0", n.port);
        let err = publish_refused(&db, &plan, &publisher, &[]);
        assert!(err.contains("one of a Redis Cluster"), "{err}");
    }
    // A run it does not hold: the command it gives lists the runs of every
    // node, through whichever node it names (a scan lists that node's).
    for n in &cluster.0 {
        let one = format!("redis+cluster://127.0.0.1:{}", n.port);
        let args = ["relay", &one, "--run", "nosuch", "--listen", "127.0.0.1:0"];
        let (code, _, err) = run_env(&args, &[]);
        assert_eq!(code, Some(2), "{err}");
        assert!(run_quoted(&err).contains(&run_id), "{err}");
    }
    // A user the nodes do not know is a password to fix, not a Redis to start.
    let bad = url.replace("redis+cluster://", "redis+cluster://nobody:n0pe@");
    let plan = db.file("plan.json", &counter_plan("prod", 10));
    let err = publish_refused(&db, &plan, &bad, &[]);
    assert!(
        err.contains("fix the password") && !err.contains("n0pe"),
        "{err}"
    );
}

/// One slot of `cluster` on its way from one node to another, as
/// `redis-cli --cluster reshard` moves it: its keys already on the new
/// node, which owns the slot only once [`Moving::done`] says so. Until
/// then, the old node answers `ASK` for those keys.
struct Moving<'a> {
    cluster: &'a Cluster,
    slot: u64,
    from: &'a Redis,
    to: &'a Redis,
    to_id: String,
}

impl Cluster {
    /// Starts moving the slot of `key` to another node (`MIGRATING`,
    /// `IMPORTING`, its keys sent over with `MIGRATE`).
    fn start_moving(&self, key: &str) -> Moving<'_> {
        let moving = self.begin_moving(key);
        let keys = moving.keys_left();
        assert!(!keys.is_empty(), "no key in slot {}", moving.slot);
        for k in keys {
            moving.migrate(&k).expect("MIGRATE");
        }
        moving
    }

    /// Marks the slot of `key` as moving to another node (`MIGRATING`,
    /// `IMPORTING`), its keys still all on the old one.
    fn begin_moving(&self, key: &str) -> Moving<'_> {
        let slot: u64 = on(&self.0[0], redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).unwrap();
        let count = |n: &Redis| -> u64 {
            on(n, redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot)).unwrap()
        };
        let from = self
            .0
            .iter()
            .find(|n| count(n) > 0)
            .expect("the slot's node");
        let to = self
            .0
            .iter()
            .find(|n| n.port != from.port)
            .expect("another node");
        let id = |n: &Redis| -> String { on(n, redis::cmd("CLUSTER").arg("MYID")).unwrap() };
        let (from_id, to_id) = (id(from), id(to));
        let setslot = |n: &Redis, how: &str, node: &str| {
            let cmd = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(how)
                .arg(node)
                .clone();
            on::<()>(n, &mut cmd.clone()).expect("CLUSTER SETSLOT");
        };
        setslot(to, "IMPORTING", &from_id);
        setslot(from, "MIGRATING", &to_id);
        Moving {
            cluster: self,
            slot,
            from,
            to,
            to_id,
        }
    }
}

impl Moving<'_> {
    /// The keys of the slot that are still on the old node.
    fn keys_left(&self) -> Vec<String> {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("GETKEYSINSLOT").arg(self.slot).arg(100);
        on(self.from, &mut cmd).unwrap()
    }

    /// `MIGRATE`s one key to the new node, as a reshard does.
    fn migrate(&self, key: &str) -> redis::RedisResult<()> {
        let mut migrate = redis::cmd("MIGRATE");
        migrate
            .arg("127.0.0.1")
            .arg(self.to.port)
            .arg(key)
            .arg(0)
            .arg(5000);
        on::<()>(self.from, &mut migrate)
    }

    /// The new node owns the slot, on every node's word.
    fn done(self) {
        for n in &self.cluster.0 {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT")
                .arg(self.slot)
                .arg("NODE")
                .arg(&self.to_id);
            on::<()>(n, &mut cmd).expect("CLUSTER SETSLOT NODE");
        }
    }
}

/// A run publishing to a Cluster, held by its pause file once Redis has
/// every event it sent so far.
struct ClusterRun {
    url: String,
    _db: TempDb,
    pause: std::path::PathBuf,
    run: Proc,
    s: Stream,
    seen: Vec<batchsse::sse::ParsedEvent>,
    run_id: String,
}

impl ClusterRun {
    fn paused(cluster: &Cluster, plan: &str) -> ClusterRun {
        use crate::relay::{paused, publishing_run, run_id_of, until_paused};
        let url = cluster.url();
        let db = TempDb::counters(200);
        let pause = paused(&db);
        let extra = ["--drain-timeout", "30"];
        let run = publishing_run(&db, plan, &url, &pause, &extra);
        let mut s = Stream::open(run.addr(), "/events", &[]);
        let seen = until_paused(&mut s);
        let run_id = run_id_of(&seen[0]);
        wait_for_redis("the events before the pause", || {
            (cluster.entry_ids(&run_id).len() == seen.len()).then_some(())
        });
        ClusterRun {
            url,
            _db: db,
            pause,
            run,
            s,
            seen,
            run_id,
        }
    }

    /// Lets the run go on until it says `what` in a message.
    fn go_on_until(&mut self, what: &str) {
        std::fs::remove_file(&self.pause).expect("remove the pause file");
        loop {
            let e = self
                .s
                .next_event()
                .unwrap_or_else(|| panic!("the run's stream ended before it said {what:?}"));
            let said = (e.event == "message").then(|| data(&e)["message"].to_string());
            self.seen.push(e);
            if said.is_some_and(|m| m.contains(what)) {
                return;
            }
        }
    }

    /// Lets the run end, and checks that it exited 0 with every event
    /// published once, in order; gives its stderr.
    fn ends_published_whole(&mut self, cluster: &Cluster) -> String {
        self.seen.extend(self.s.rest());
        let status = self.run.wait();
        let err = self.run.stderr();
        assert_eq!(status.code(), Some(0), "{err}");
        assert!(!err.contains("not published"), "{err}");
        assert_contiguous(&self.seen, 1);
        let want: Vec<String> = (1..=self.seen.len()).map(|n| format!("{n}-0")).collect();
        assert_eq!(
            cluster.entry_ids(&self.run_id),
            want,
            "every event once, in order"
        );
        err
    }
}

#[test]
fn a_cluster_slot_that_moves_mid_run_loses_and_doubles_nothing() {
    // A reshard moves a slot's keys to another node; while it does, the
    // old node answers ASK for them. That is the Cluster at work, not a
    // wrong URL: the publisher stopped for good ("publishing stops here"),
    // and a relay exited 3, both saying to give redis+cluster://.
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let mut c = ClusterRun::paused(&cluster, "reshard");
    let args = [
        "relay",
        &c.url,
        "--run",
        &c.run_id,
        "--listen",
        "127.0.0.1:0",
    ];
    let mut mirror = Proc::start(&args);
    let mut r = Stream::open(mirror.addr(), "/events", &[]);
    let mut relayed: Vec<_> = (0..c.seen.len())
        .map(|_| r.next_event().expect("an event"))
        .collect();
    let moving = cluster.start_moving(&format!("{{{}}}", c.run_id));
    // The run goes on while the slot moves: both meet the ASK.
    c.go_on_until("Redis");
    wait_for_redis("the relay's word on the move", || {
        let err = mirror.stderr();
        (err.contains("lost Redis") || err.contains("relay stopped")).then_some(())
    });
    moving.done();
    let err = c.ends_published_whole(&cluster);
    // One move, one outage: said once each way, not once per batch that
    // met the ASK (each a message to every viewer).
    let said = |what: &str| {
        c.seen
            .iter()
            .filter(|e| e.event == "message" && data(e)["message"].to_string().contains(what))
            .count()
    };
    assert_eq!(said("lost the connection to Redis"), 1, "{err}");
    assert!(said("a slot of the Cluster is moving") == 1, "{err}");
    // (After the run's `finished`, on stderr.)
    let back = said("reconnected to Redis") + err.matches("reconnected to Redis").count();
    assert_eq!(back, 1, "{err}");
    relayed.extend(r.rest());
    let triples =
        |evs: &[batchsse::sse::ParsedEvent]| evs.iter().map(event_triple).collect::<Vec<_>>();
    assert_eq!(triples(&relayed), triples(&c.seen), "{}", mirror.stderr());
    mirror.signal("TERM");
    assert_eq!(mirror.wait().code(), Some(0), "{}", mirror.stderr());
}

#[test]
fn a_cluster_slot_moved_key_by_key_mid_run_takes_the_run_s_stream_whole() {
    // A reshard moves a slot's keys in batches, and the run's `alive` key
    // may go before its stream. The old node then answered ASK for the
    // publisher's batch, and the crate sent the batch again to the new
    // node with ASKING before its first command only: that XADD made the
    // run's stream there from one event, the reshard's MIGRATE of the
    // stream failed (BUSYKEY) with the slot half-moved, and once it was
    // moved anyway the stream there lacked its head and was published
    // again from event 1 (the whole one left behind on the old node).
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let mut c = ClusterRun::paused(&cluster, "keybykey");
    let run_id = c.run_id.clone();
    let moving = cluster.begin_moving(&format!("{{{run_id}}}"));
    let alive = format!("batchsse:alive:{{{run_id}}}");
    moving.migrate(&alive).expect("MIGRATE the alive key");
    c.go_on_until("a slot of the Cluster is moving");
    let stream = format!("batchsse:run:{{{run_id}}}");
    moving
        .migrate(&stream)
        .expect("MIGRATE the run's stream after its alive key");
    moving.done();
    let err = c.ends_published_whole(&cluster);
    assert!(!err.contains("was emptied"), "{err}");
}

#[test]
fn a_relay_started_on_a_cluster_that_is_down_is_told_to_wait_not_to_fix_its_acl() {
    // A relay tries each command it reads with at start; an answer that
    // passes (CLUSTERDOWN, LOADING) was followed by the README's ACL rules,
    // as if the user lacked a permission.
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.url();
    cluster.0[0].kill();
    wait_for_redis("the Cluster down", || {
        let info: String = on(&cluster.0[1], redis::cmd("CLUSTER").arg("INFO")).ok()?;
        info.contains("cluster_state:fail").then_some(())
    });
    let args = ["relay", &url, "--plan", "down", "--listen", "127.0.0.1:0"];
    let (code, _, err) = run_env(&args, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("CLUSTERDOWN") && err.contains("try again") && !err.contains("ACL"),
        "{err}"
    );
}

impl Cluster {
    /// A 2-node Cluster where the second node holds one slot, `key`'s,
    /// and the first every other one: a run's keys (under its hash tag)
    /// land on the first, and `key` on the second.
    fn split_by(key: &str) -> Option<Cluster> {
        let args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "60000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let nodes = vec![Redis::start_with(&args)?, Redis::start_with(&args)?];
        let cluster = |n: &Redis, args: &[String]| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg(args);
            on::<()>(n, &mut cmd).unwrap_or_else(|e| panic!("CLUSTER {args:?}: {e}"));
        };
        let words = |w: &str| w.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let slot: u16 = on(&nodes[0], redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).unwrap();
        for (from, to) in [(0, slot.checked_sub(1)), (slot + 1, Some(16383))] {
            if let Some(to) = to.filter(|to| *to >= from) {
                cluster(&nodes[0], &words(&format!("ADDSLOTSRANGE {from} {to}")));
            }
        }
        cluster(&nodes[1], &words(&format!("ADDSLOTS {slot}")));
        for (n, epoch) in nodes.iter().zip([1, 2]) {
            cluster(n, &words(&format!("SET-CONFIG-EPOCH {epoch}")));
        }
        cluster(
            &nodes[0],
            &words(&format!("MEET 127.0.0.1 {}", nodes[1].port)),
        );
        for n in &nodes {
            wait_for_redis("the cluster", || {
                let info: String = on(n, redis::cmd("CLUSTER").arg("INFO")).ok()?;
                info.contains("cluster_state:ok").then_some(())
            });
        }
        Some(Cluster(nodes))
    }
}

impl Cluster {
    /// A Cluster of one primary, which holds every slot: no key answers
    /// `MOVED` through it.
    fn single() -> Option<Cluster> {
        let args: Vec<String> = ["--cluster-enabled", "yes"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let node = Redis::start_with(&args)?;
        let mut add = redis::cmd("CLUSTER");
        add.arg("ADDSLOTSRANGE").arg(0).arg(16383);
        on::<()>(&node, &mut add).expect("CLUSTER ADDSLOTSRANGE");
        wait_for_redis("the cluster", || {
            let info: String = on(&node, redis::cmd("CLUSTER").arg("INFO")).ok()?;
            info.contains("cluster_state:ok").then_some(())
        });
        Some(Cluster(vec![node]))
    }
}

#[test]
fn a_plain_url_to_a_cluster_node_that_holds_every_probed_slot_is_refused_to_acl_users() {
    // A Cluster of one primary, and one whose first node holds every slot
    // but one: the 16 keys read with XRANGE (for a user that may not run
    // INFO) all fall in the node's own slots, none answered MOVED, and a
    // publisher with the README's least rules was let through, its keys
    // written under the names a relay given redis+cluster:// never reads.
    let clusters = [
        Cluster::single(),
        Cluster::split_by("batchsse:plan:p:latest"),
    ];
    for cluster in clusters.into_iter().flatten() {
        let n = &cluster.0[0];
        acl_user(n, "bpub", "pub-s3cret", PUBLISHER_RULES);
        acl_user(n, "brelay", "relay-s3cret", RELAY_RULES);
        let relay = format!("redis://brelay:relay-s3cret@127.0.0.1:{}/0", n.port);
        let args = ["relay", &relay, "--plan", "p", "--listen", "127.0.0.1:0"];
        let (code, _, err) = run_env(&args, &[]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("one of a Redis Cluster; give redis+cluster://"),
            "{err}"
        );
        let db = TempDb::counters(10);
        let plan = db.file("plain.json", &counter_plan("p", 10));
        let publisher = format!("redis://bpub:pub-s3cret@127.0.0.1:{}/0", n.port);
        let err = publish_refused(&db, &plan, &publisher, &[]);
        assert!(err.contains("one of a Redis Cluster"), "{err}");
    }
}

#[test]
fn in_a_cluster_the_plan_s_latest_key_is_set_even_if_its_first_write_fails() {
    // The plan's `latest` key lives in another slot than the run's keys,
    // so in a Cluster it is written in a round trip of its own, after the
    // run's first batch. When only that second round trip failed, the
    // resend went on after the events Redis held, `start` among them, and
    // the key that names the run was never written: relays by plan never
    // found the run.
    use crate::relay::{paused, publishing_run, until_paused};
    let latest = "batchsse:plan:kept:latest";
    let Some(cluster) = Cluster::split_by(latest) else {
        return;
    };
    let url = cluster.url();
    let holder = &cluster.0[1];
    let maxmemory = |bytes: &str| {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET").arg("maxmemory").arg(bytes);
        on::<()>(holder, &mut cmd).expect("CONFIG SET maxmemory");
    };
    // The key's node takes no write for now (OOM, which passes).
    maxmemory("1");
    let db = TempDb::counters(30);
    let pause = paused(&db);
    let mut run = publishing_run(&db, "kept", &url, &pause, &["--drain-timeout", "30"]);
    let mut s = Stream::open(run.addr(), "/events", &[]);
    let mut seen = until_paused(&mut s);
    let run_id = data(&seen[0])["run_id"]
        .as_str()
        .expect("run_id")
        .to_owned();
    while !seen
        .iter()
        .any(|e| e.event == "message" && e.data.contains("OOM"))
    {
        seen.push(s.next_event().expect("the run ended before Redis refused"));
    }
    maxmemory("0");
    std::fs::remove_file(&pause).expect("remove the pause file");
    s.rest();
    let status = run.wait();
    assert_eq!(status.code(), Some(0), "{}", run.stderr());
    let named: Option<String> = on(holder, redis::cmd("GET").arg(latest)).expect("GET");
    assert_eq!(named.as_deref(), Some(run_id.as_str()), "{}", run.stderr());
}

#[test]
fn a_cluster_whose_nodes_announce_addresses_out_of_reach_is_told_so() {
    // The node in the URL answers, but the addresses the Cluster gives for
    // its nodes (CLUSTER SLOTS) cannot be reached from here: a Cluster in
    // containers announcing inner addresses, or, over TLS, IP addresses
    // its certificates do not name. The crate says only that it found no
    // connection, and batchsse told the user to fix the password.
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let nowhere = free_port().to_string();
    for n in &cluster.0 {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET").arg("cluster-announce-port").arg(&nowhere);
        on::<()>(n, &mut cmd).expect("CONFIG SET cluster-announce-port");
    }
    // Every node's word on every node: the new port, no old one.
    wait_for_redis("the new addresses", || {
        let moved = cluster.0.iter().all(|n| {
            let slots: Vec<redis::Value> =
                on(n, redis::cmd("CLUSTER").arg("SLOTS")).unwrap_or_default();
            let said = format!("{slots:?}");
            cluster
                .0
                .iter()
                .all(|m| !said.contains(&format!("int({})", m.port)))
        });
        moved.then_some(())
    });
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("announce", 10));
    let url = cluster.url();
    let err = publish_refused(&db, &plan, &url, &[]);
    assert!(
        err.contains("CLUSTER SLOTS")
            && err.contains("cluster-announce")
            && !err.contains("fix the password"),
        "{err}"
    );
    assert_eq!(db.counter_spread(), (0, 10), "nothing ran");
}

#[test]
fn a_password_with_a_slash_is_refused_and_not_shown() {
    // Unescaped, a '/', '?' or '#' ends the host part: the password's start
    // was read as the host and echoed as a bad port.
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("slash", 10));
    for url in [
        "redis://pub:le4k3d/rest@127.0.0.1:1/0",
        "redis://pub:le4k3d?rest@127.0.0.1:1/0",
        "redis://:le4k3d#rest@127.0.0.1:1/0",
        "redis://pub:12345/le4k3d@127.0.0.1:1/0",
    ] {
        let err = publish_refused(&db, &plan, url, &[]);
        assert!(!err.contains("le4k3d"), "a password shown: {err}");
        assert!(
            err.contains("%2F") && err.contains("BATCHSSE_REDIS_PASSWORD"),
            "{err}"
        );
    }
    assert_eq!(db.counter_spread(), (0, 10), "nothing ran");
}

#[test]
fn a_url_s_query_or_fragment_is_refused_not_dropped() {
    // Other clients read `?db=2` (redis-py) or `#insecure` (the redis
    // crate); batchsse dropped both without a word: `?db=2` published to
    // database 0, where relays given `/2` never found the run.
    let Some(redis) = Redis::start() else {
        return;
    };
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("query", 10));
    let port = redis.port;
    for (url, says) in [
        (format!("redis://127.0.0.1:{port}?db=2"), "(…/2)"),
        (
            format!("redis://127.0.0.1:{port}/0?password=le4k3d"),
            "BATCHSSE_REDIS_PASSWORD",
        ),
        (
            format!("rediss://127.0.0.1:{port}/0#insecure"),
            "--redis-ca",
        ),
    ] {
        let err = publish_refused(&db, &plan, &url, &[]);
        assert!(
            err.contains("does not read") && err.contains(says),
            "{url}: {err}"
        );
        assert!(!err.contains("le4k3d"), "a password shown: {err}");
    }
    assert_eq!(db.counter_spread(), (0, 10), "nothing ran");
    let keys: Vec<String> = on(&redis, redis::cmd("KEYS").arg("*")).expect("KEYS");
    assert!(keys.is_empty(), "{keys:?}");
}

#[test]
fn a_password_in_the_environment_that_is_not_utf8_is_named() {
    // It was dropped without a word: the user who set it was told Redis
    // wants a password ("fix the password … or BATCHSSE_REDIS_PASSWORD").
    use std::os::unix::ffi::OsStrExt;
    let Some(redis) = Redis::start_with_password("s3cret") else {
        return;
    };
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("env", 10));
    let url = redis.url();
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--publish", &url]);
    let out = Command::new(BIN)
        .args(&args)
        .env_remove("BATCHSSE_PUBLISH")
        .env(
            "BATCHSSE_REDIS_PASSWORD",
            std::ffi::OsStr::from_bytes(b"s3\xffcret"),
        )
        .stdin(Stdio::null())
        .output()
        .expect("run batchsse");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("BATCHSSE_REDIS_PASSWORD is not UTF-8"),
        "{err}"
    );
    assert_eq!(db.counter_spread(), (0, 10), "nothing ran");
}

#[test]
fn pem_flags_without_tls_name_each_tls_scheme() {
    // Refused before any connection, so no Redis is needed. The message
    // named rediss:// and rediss+sentinel:// only, leaving a Cluster's
    // user to guess that rediss+cluster:// takes --redis-ca too.
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("pem", 10));
    for url in ["redis://127.0.0.1:1/0", "redis+cluster://127.0.0.1:1"] {
        let err = publish_refused(&db, &plan, url, &["--redis-ca", "ca.pem"]);
        assert!(
            err.contains("rediss://")
                && err.contains("rediss+sentinel://")
                && err.contains("rediss+cluster://"),
            "{url}: {err}"
        );
    }
}

#[test]
fn pem_files_that_cannot_serve_are_refused_naming_the_flag() {
    let Some(certs) = Certs::make() else { return };
    let Some((_redis, url)) = tls_redis(&certs, true) else {
        return;
    };
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("pem", 10));
    let (ca, other_key) = (certs.arg("ca.pem"), certs.arg("server.key"));
    let (cert, key) = (certs.arg("client.pem"), certs.arg("client.key"));
    let encrypted = certs.encrypted_key("client");
    let (ca_der, key_der) = (certs.der("ca.pem"), certs.der("client.key"));
    // Each was taken: a CA file with no certificate as no CA (so "not
    // signed by a CA this side trusts"), a certificate and key swapped as
    // a bad URL, another key as a failed handshake; a key encrypted with a
    // passphrase was said to hold no private key.
    let with_key = |k| vec!["--redis-ca", &ca, "--redis-cert", &cert, "--redis-key", k];
    for (extra, says) in [
        (
            with_key(&encrypted),
            format!("--redis-key {encrypted} is encrypted"),
        ),
        (
            vec!["--redis-ca", &key],
            format!("--redis-ca {key} holds no certificate"),
        ),
        (
            vec!["--redis-ca", &ca_der],
            format!(
                "--redis-ca {ca_der} is a DER (binary) certificate, and batchsse reads PEM: convert it with `openssl x509 -inform der -in {ca_der} -out CERT.pem`"
            ),
        ),
        (
            with_key(&key_der),
            format!("--redis-key {key_der} is a DER (binary) key"),
        ),
        (
            vec![
                "--redis-ca",
                &ca,
                "--redis-cert",
                &key,
                "--redis-key",
                &cert,
            ],
            format!("--redis-cert {key} holds no certificate"),
        ),
        (
            with_key(&ca),
            format!("--redis-key {ca} holds no private key"),
        ),
        (
            with_key(&other_key),
            format!("--redis-key {other_key} is not the private key of --redis-cert {cert}"),
        ),
    ] {
        let err = publish_refused(&db, &plan, &url, &extra);
        assert!(err.contains(&says), "{extra:?}: {err}");
    }
    assert_eq!(db.counter_spread(), (0, 10), "nothing ran");
}

#[test]
fn a_redis_refusal_at_start_names_the_fix_for_its_cause() {
    let Some(redis) = Redis::start() else { return };
    let sentinel = Sentinel::start(redis.port);
    let guarded = Sentinel::start_with(redis.port, "requirepass sentinel-pw\n");
    acl_user(
        &redis,
        "noping",
        "pw",
        &[&PUBLISHER_RULES[..3], &PUBLISHER_RULES[4..]].concat(),
    );
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("causes", 10));
    let (node, sentinels) = (
        format!("127.0.0.1:{}", redis.port),
        format!("127.0.0.1:{}", sentinel.port),
    );
    for (url, says) in [
        (
            format!("redis+sentinel://{sentinels}/mian"),
            "watch no primary of that name",
        ),
        (format!("redis+sentinel://{node}/main"), "not a sentinel"),
        (
            format!("redis+cluster://{node}"),
            "not a Redis Cluster node",
        ),
        (format!("redis://noping:pw@{node}/0"), "ACL rules"),
        (
            format!("redis+sentinel://:pw@127.0.0.1:{}/main", guarded.port),
            "the sentinels want a password",
        ),
    ] {
        let err = publish_refused(&db, &plan, &url, &[]);
        assert!(err.contains(says), "{url}: {err}");
        assert!(!err.contains("fix the password"), "{url}: {err}");
    }
    assert_eq!(db.counter_spread(), (0, 10), "nothing ran");
    // A run Redis does not hold: the command given asks a sentinel, which
    // has no keys to scan, for the primary.
    let url = format!("redis+sentinel://{sentinels}/main");
    let args = ["relay", &url, "--run", "nosuch", "--listen", "127.0.0.1:0"];
    let (code, _, err) = run_env(&args, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(run_quoted(&err).contains(&redis.port.to_string()), "{err}");
}

#[test]
fn under_sentinel_a_primary_with_a_password_serves_acl_users_and_a_replica_must_have_the_events() {
    const PW: &str = "node-s3cret";
    let Some(primary) = Redis::start_with_password(PW) else {
        return;
    };
    let port = primary.port.to_string();
    let auth = [
        "--masterauth",
        PW,
        "--requirepass",
        PW,
        "--replicaof",
        "127.0.0.1",
        &port,
    ];
    let Some(mut replica) = Redis::start_with(&auth.map(String::from)) else {
        return;
    };
    let admin = |r: &Redis| {
        redis::Client::open(r.url_with_password(PW))
            .and_then(|c| c.get_connection())
            .expect("connect with the password")
    };
    wait_for_redis("the replica's link", || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut admin(&replica))
            .ok()?;
        info.contains("master_link_status:up").then_some(())
    });
    let sentinel = Sentinel::start_with(primary.port, &format!("sentinel auth-pass main {PW}\n"));
    // The README's rules, with what Sentinel adds: WAIT, and the crate's
    // ROLE check of the primary it is given.
    for (user, rules) in [
        ("bpub", [PUBLISHER_RULES, &["+wait", "+role"]].concat()),
        ("brelay", [RELAY_RULES, &["+role"]].concat()),
    ] {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(user)
            .arg("reset")
            .arg("on")
            .arg(format!(">{user}-pw"));
        let _: () = cmd
            .arg(&rules)
            .query(&mut admin(&primary))
            .expect("ACL SETUSER");
    }
    let url = |user: &str| {
        format!(
            "redis+sentinel://{user}:{user}-pw@127.0.0.1:{}/main/0",
            sentinel.port
        )
    };
    // The node's password went to batchsse's own AUTH only, after the
    // crate's ROLE check had met NOAUTH: exit 2.
    let db = TempDb::counters(30);
    let (lines, run_id, _) = publish(&db, &["--publish", &url("bpub")], &[]);
    let out: String = lines.iter().map(Value::to_string).collect();
    assert!(!out.contains("\"error\""), "no refusal: {out}");
    let xlen: usize = redis::cmd("XLEN")
        .arg(format!("batchsse:run:{run_id}"))
        .query(&mut admin(&primary))
        .expect("XLEN");
    assert_eq!(xlen, lines.len(), "every event once");
    relay_serves(&url("brelay"), &run_id, &[], &[], &lines);
    // With no replica, no event counts as published: the first batch's
    // WAIT failed, and the reconnection took the primary's word for it.
    replica.kill();
    let db = TempDb::counters(30);
    let flags = ["--publish", &url("bpub"), "--drain-timeout", "3"];
    let (lines, _, err) = publish(&db, &flags, &[]);
    let none = format!("{} event(s) were not published", lines.len());
    assert!(
        err.contains(&none) && err.contains("no replica took") && !err.contains("reconnected"),
        "{err}"
    );
}

/// A Redis at its `maxclients` answers a new connection with an error and
/// closes it; the crate sees a broken pipe, and the start said "is Redis
/// running there? Start it", of a Redis that is running.
#[test]
fn a_redis_at_its_maxclients_is_named_as_full_not_as_missing() {
    use std::io::{Read, Write};
    let Some(redis) = Redis::start_with(&["--maxclients".into(), "1".into()]) else {
        return;
    };
    // The one client it takes, held for the test.
    let mut held = std::net::TcpStream::connect(redis.addr()).unwrap();
    held.write_all(b"PING\r\n").unwrap();
    let mut pong = [0u8; 7];
    held.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("full", 10));
    let url = redis.url();
    let err = publish_refused(&db, &plan, &url, &[]);
    assert!(
        err.contains("takes no more clients") && err.contains("maxclients"),
        "{err}"
    );
    assert!(!err.contains("is Redis running there"), "{err}");
    assert_eq!(db.counter_spread(), (0, 10), "nothing ran");
}

/// What the README's least rules need beside them on a Cluster (keep
/// them the same there): the `redis` crate asks a node for the others.
const CLUSTER_RULES: &[&str] = &["+cluster|slots", "+asking"];

#[test]
fn acl_users_with_the_least_rules_publish_and_relay_on_a_cluster_given_its_slots() {
    // The README's least rules alone were refused at start on a Cluster
    // (NOPERM cluster|slots), and the README did not say what to add.
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let hosts: Vec<String> = cluster
        .0
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let pub_url = format!("redis+cluster://bpub:pub-s3cret@{}", hosts.join(","));
    let relay_url = format!("redis+cluster://brelay:relay-s3cret@{}", hosts.join(","));
    for rules in [&[][..], CLUSTER_RULES] {
        for n in &cluster.0 {
            acl_user(n, "bpub", "pub-s3cret", &[PUBLISHER_RULES, rules].concat());
            acl_user(n, "brelay", "relay-s3cret", &[RELAY_RULES, rules].concat());
        }
        let db = TempDb::counters(30);
        if rules.is_empty() {
            let plan = db.file("plain.json", &counter_plan("p", 10));
            let err = publish_refused(&db, &plan, &pub_url, &[]);
            assert!(
                err.contains("NOPERM") && err.contains("cluster|slots"),
                "{err}"
            );
            let args = [
                "relay",
                &relay_url,
                "--plan",
                "p",
                "--listen",
                "127.0.0.1:0",
            ];
            let (code, _, err) = run_env(&args, &[]);
            assert_eq!(code, Some(2), "{err}");
            assert!(
                err.contains("NOPERM") && err.contains("cluster|slots"),
                "{err}"
            );
            continue;
        }
        let (lines, run_id, _) = publish(&db, &["--publish", &pub_url], &[]);
        let out: String = lines.iter().map(Value::to_string).collect();
        assert!(!out.contains("\"error\""), "no refusal: {out}");
        relay_serves(&relay_url, &run_id, &[], &[], &lines);
    }
}
