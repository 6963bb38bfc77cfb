//! Publish and relay on the Redis that production teams run: TLS with
//! certificates made here by `openssl` (a CA, a server, a client, and a CA
//! nobody trusts), and ACL users with the README's minimal rules. Real
//! `redis-server` processes on free ports, killed by pid.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::util::*;

/// Runs `batchsse ARGS` with `env` to its exit: (code, stdout, stderr).
fn run_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut p = spawn(args, move |c| {
        c.env_remove("BATCHSSE_PUBLISH")
            .env_remove("BATCHSSE_REDIS_PASSWORD");
        for (k, v) in env {
            c.env(k, v);
        }
    });
    let code = p.wait().code();
    let out = p.stdout();
    (code, out, p.stderr())
}

/// Certificates made by `openssl` in a temporary folder: `ca.pem` (with
/// `ca.key`), `server.pem`/`server.key` for 127.0.0.1 signed by it,
/// `client.pem`/`client.key` signed by it, and `other-ca.pem`, which
/// signed nothing here.
struct Certs(tempfile::TempDir);

impl Certs {
    fn make() -> Option<Certs> {
        if Command::new("openssl").arg("version").output().is_err() {
            skip_unless_ci("openssl is not installed (apt-get install openssl)");
            return None;
        }
        let certs = Certs(tempfile::tempdir().expect("tempdir"));
        std::fs::write(
            certs.path("ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("write ext");
        for ca in ["ca", "other-ca"] {
            certs.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=batchsse test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ]);
        }
        for leaf in ["server", "client"] {
            certs.openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &format!("{leaf}.key"),
                "-out",
                &format!("{leaf}.csr"),
            ]);
            certs.openssl(&[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &format!("{leaf}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                "ext",
                "-out",
                &format!("{leaf}.pem"),
            ]);
        }
        Some(certs)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.0.path())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

/// A Redis with TLS on its own port (and plain TCP on `port`, for the
/// test's own reads): `rediss://127.0.0.1:TLS_PORT/0`. With `clients`, it
/// wants a client certificate signed by the CA.
fn tls_redis(certs: &Certs, clients: bool) -> Option<(Redis, String)> {
    let tls_port = free_port().to_string();
    let args: Vec<String> = [
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &certs.arg("server.pem"),
        "--tls-key-file",
        &certs.arg("server.key"),
        "--tls-ca-cert-file",
        &certs.arg("ca.pem"),
        "--tls-auth-clients",
        if clients { "yes" } else { "no" },
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let redis = Redis::start_with(&args)?;
    Some((redis, format!("rediss://127.0.0.1:{tls_port}/0")))
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
/// must be the run's, in order; returns its stderr.
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
    // It has served the run to its end: a signal in its linger is a clean exit.
    mirror.signal("TERM");
    assert_eq!(mirror.wait().code(), Some(0), "{}", mirror.stderr());
    mirror.stderr()
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
    assert!(
        err.contains(&format!("publishing every event to {url}")),
        "{err}"
    );
    relay_serves(&url, &run_id, &["--redis-ca", &ca], &[], &lines);
}

#[test]
fn a_certificate_that_fails_is_refused_at_start_in_plain_words() {
    let Some(certs) = Certs::make() else { return };
    let Some((_redis, url)) = tls_redis(&certs, true) else {
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
    // A CA that did not sign the server's certificate; then the system's
    // roots, which did not either.
    for extra in [&["--redis-ca", &other][..], &[]] {
        let (code, _, err) = attempt(extra);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(
            err.contains("not signed by a CA this side trusts") && err.contains("--redis-ca"),
            "{extra:?}: {err}"
        );
    }
    // The right CA, but the server wants a client certificate.
    let (code, _, err) = attempt(&["--redis-ca", &ca]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("the server wants a client certificate"),
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
    acl_user(
        &redis,
        "brelay",
        "relay-s3cret",
        &[RELAY_RULES, &["-multi"]].concat(),
    );
    let args = [
        "relay",
        &relay_url,
        "--run",
        &run_id,
        "--listen",
        "127.0.0.1:0",
    ];
    let (code, _, err) = run_env(&args, &env);
    assert_eq!(code, Some(2), "refused at start: {err}");
    assert!(err.contains("NOPERM") && err.contains("multi"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}
