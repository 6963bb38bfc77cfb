//! kill -9 in the middle of a record of many parts (each chunk cut into
//! parts of 64 bytes by `BATCHSSE_UNDO_PART_BYTES`, a testing aid): during
//! the run, between two chunks or while a chunk's parts wait to commit,
//! and during the undo, between two parts or while one waits to commit.
//! The record must always explain the table exactly, and the undo must
//! bring every table back with no inverse applied twice. (Linux: the
//! kill at a commit finds it in /proc/locks.)

#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::util::*;

/// `t`: counters that step 1 bumps by 1 and step 2 by 10, chunk by chunk,
/// so a row is 0, 1 or 11 and an inverse applied twice leaves another
/// value or a conflict; `u`: rows a plain step deletes, moves to another
/// key and changes (a key's change is two entries, which a part keeps
/// together).
const TABLES: &str = "
    CREATE TABLE t(id INTEGER PRIMARY KEY, counter INTEGER NOT NULL DEFAULT 0);
    INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 240) SELECT i FROM s;
    CREATE TABLE u(id INTEGER PRIMARY KEY, n INT, note TEXT);
    INSERT INTO u WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 60)
      SELECT i, i * 3, 'note ' || i FROM s;";

const PLAN: &str = r#"{"name":"parts","steps":[
    {"name":"one","sql":"UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":40}},
    {"name":"ten","sql":"UPDATE t SET counter = counter + 10 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":40}},
    {"name":"plain","sql":"DELETE FROM u WHERE id % 7 = 0; UPDATE u SET id = id + 1000 WHERE id % 5 = 0; UPDATE u SET n = n + 1, note = NULL WHERE id % 2 = 0"}]}"#;

/// Parts of 64 bytes: a chunk of 40 rows is cut into several.
const PARTS: (&str, &str) = ("BATCHSSE_UNDO_PART_BYTES", "64");

/// The ways a run records, each tested: SQLite's pre-update hook, and
/// (without it) reading around a chunk or staging by TEMP triggers.
const HOOK: &[(&str, &str)] = &[PARTS];
const NO_HOOK: &[(&str, &str)] = &[PARTS, ("BATCHSSE_UNDO_HOOK", "off")];

/// Where a process is killed once it has sent its `n`th progress event.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// At once, while it sleeps before its next chunk (or part).
    Between,
    /// Once its next write waits to commit (a chunk's or a part's, with
    /// all it wrote): a reader holds the file, so the commit cannot take
    /// the lock it needs.
    AtCommit,
}

/// Kill points, taken in turn by the processes of a run of [`PLAN`]: its
/// twelve chunks, six a step, are committed up to 1, 2, 4, 7 (across
/// the steps), 9, 10 and 11 when they are killed, never right after a
/// step's last chunk, which no sleep follows.
const RUN_KILLS: [(usize, Kill); 7] = [
    (1, Kill::AtCommit),
    (1, Kill::Between),
    (2, Kill::AtCommit),
    (3, Kill::Between),
    (2, Kill::AtCommit),
    (1, Kill::Between),
    (1, Kill::AtCommit),
];

/// The same for its undo: the plain step's 12 parts, then the 36 of step
/// "ten" are taken back up to 1, 3, 7, 13 (across the steps), 14, 16 and
/// 19 when killed.
const UNDO_KILLS: [(usize, Kill); 7] = [
    (1, Kill::AtCommit),
    (2, Kill::Between),
    (4, Kill::AtCommit),
    (6, Kill::Between),
    (1, Kill::AtCommit),
    (2, Kill::Between),
    (3, Kill::AtCommit),
];

/// How a process of [`killed`] ended.
enum Ended {
    /// By itself, with exit 0, before the kill point.
    Done,
    /// Killed; `pages`: inside a commit whose journal holds pages (a
    /// commit can wait for its lock before it journals any, and a write
    /// that changed nothing journals none).
    Killed { pages: bool },
}

/// Runs `args` (with `env`) serving the stream, and kills it as `kill`
/// says after `n` progress events.
fn killed(db: &TempDb, args: &[&str], env: &[(&str, &str)], (n, kill): (usize, Kill)) -> Ended {
    let mut a = args.to_vec();
    a.extend_from_slice(&words(
        "--listen 127.0.0.1:0 --wait-for-clients 1 --sleep 100 --progress none",
    ));
    let mut p = Proc::start_with(&a, |c| {
        c.envs(env.iter().copied());
    });
    let mut s = Stream::open(p.addr(), "/events", &[]);
    let mut seen = 0;
    while seen < n {
        match s.next_event() {
            Some(e) if e.event == "progress" => seen += 1,
            Some(e) if e.event == "finished" => {
                assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
                return Ended::Done;
            }
            Some(_) => {}
            None => panic!("the stream ended early: {}", p.stderr()),
        }
    }
    let (reader, pages) = match kill {
        Kill::Between => (None, false),
        Kill::AtCommit => {
            let reader = hold_shared(db);
            if !wait_for_commit(db, &mut p) {
                return Ended::Done;
            }
            let journal = format!("{}-journal", path_str(&db.path));
            let pages = std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0);
            (Some(reader), pages)
        }
    };
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    drop(reader); // the next to open the file rolls the killed commit back
    Ended::Killed { pages }
}

/// A connection inside a read transaction: a writer's commit waits for
/// it to end.
fn hold_shared(db: &TempDb) -> Connection {
    let c = db.conn();
    c.execute_batch("BEGIN").unwrap();
    let _: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    c
}

/// Waits until `p` holds SQLite's pending lock on the file, as a commit
/// does while it waits for readers to leave (a write that spilled from the
/// cache would too: either way inside a transaction); false when `p`
/// ended first, having nothing left to commit. Read from /proc/locks: a
/// reader in this process would not see it, as SQLite shares one
/// process's locks among its connections.
fn wait_for_commit(db: &TempDb, p: &mut Proc) -> bool {
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&db.path).unwrap());
    let (pid, file) = (p.child.id().to_string(), format!(":{ino}"));
    let start = Instant::now();
    loop {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let pending = locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let covers = |a: &str, b: &str| {
                let lo = a.parse::<u64>().unwrap_or(u64::MAX);
                let hi = if b == "EOF" {
                    u64::MAX
                } else {
                    b.parse().unwrap_or(0)
                };
                lo <= PENDING_BYTE && PENDING_BYTE <= hi
            };
            matches!(f[..], [_, "POSIX", _, "WRITE", p, f, a, b]
                if p == pid && f.ends_with(&file) && covers(a, b))
        });
        if pending {
            return true;
        }
        if p.child.try_wait().unwrap().is_some() {
            assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
            return false;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "no commit began: {}",
            p.stderr()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The byte SQLite's unix VFS locks for writing as a writer waits to
/// commit.
const PENDING_BYTE: u64 = 0x4000_0000;

/// What is wrong with the record as it stands beside `t`, if anything:
/// each run's parts of a step numbered 0, 1, 2… and counted by one row,
/// the entries of steps "one" and "ten" left in the record as many as the
/// rows of `t` that still carry each step's change, and no conflict kept
/// (no application writes here: a conflict is an inverse applied twice).
fn record_vs_table(db: &TempDb) -> Option<String> {
    let kept = conflicts(db);
    if kept > 0 {
        return Some(format!("{kept} conflicts kept"));
    }
    let c = db.conn();
    let bad_counter: i64 = c
        .query_row(
            "SELECT count(*) FROM t WHERE counter NOT IN (0, 1, 11)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if bad_counter > 0 {
        return Some(format!("{bad_counter} counters changed twice"));
    }
    if !c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'batchsse_undo'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .is_ok_and(|n| n == 1)
    {
        let bumped: i64 = c
            .query_row("SELECT count(*) FROM t WHERE counter <> 0", [], |r| {
                r.get(0)
            })
            .unwrap();
        return (bumped > 0).then(|| format!("no record, but {bumped} counters bumped"));
    }
    let numbering: Option<String> = c
        .query_row(
            "SELECT group_concat(run || ' step ' || step || ': ' || held || ' parts numbered '
                 || lo || '..' || hi || ', counted ' || ifnull(counted, 'by no row'), '; ')
             FROM (SELECT run, step, count(*) FILTER (WHERE chunk >= 0) AS held,
                     min(chunk) FILTER (WHERE chunk >= 0) AS lo, max(chunk) FILTER (WHERE chunk >= 0) AS hi,
                     count(DISTINCT chunk) FILTER (WHERE chunk >= 0) AS numbers,
                     count(*) FILTER (WHERE chunk = -3) AS counts, max(rows) FILTER (WHERE chunk = -3) AS counted
                   FROM batchsse_undo GROUP BY run, step)
             WHERE held > 0 AND (lo <> 0 OR hi <> held - 1 OR numbers <> held OR counts <> 1 OR counted <> held)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if let Some(bad) = numbering {
        return Some(bad);
    }
    let entries = |step: i64| -> i64 {
        c.query_row(
            "SELECT ifnull(sum(rows), 0) FROM batchsse_undo WHERE step = ?1 AND chunk >= 0",
            [step],
            |r| r.get(0),
        )
        .unwrap()
    };
    let carrying = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    let one = carrying("SELECT count(*) FROM t WHERE counter IN (1, 11)");
    let ten = carrying("SELECT count(*) FROM t WHERE counter = 11");
    (entries(0) != one || entries(1) != ten).then(|| {
        format!(
            "the record holds {} and {} entries of steps one and ten, the table {one} and {ten} rows changed by them",
            entries(0),
            entries(1)
        )
    })
}

/// The conflicts kept by undos of the file.
fn conflicts(db: &TempDb) -> i64 {
    let c = db.conn();
    let exists: bool = c
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'batchsse_undo_conflict'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    match exists {
        true => c
            .query_row("SELECT count(*) FROM batchsse_undo_conflict", [], |r| {
                r.get(0)
            })
            .unwrap(),
        false => 0,
    }
}

fn run_cmd<'a>(db: &'a TempDb, plan: &'a std::path::Path) -> Vec<&'a str> {
    run_args(db, path_str(plan), &["--undo", "--batch-size", "40"])
}

fn undo_cmd(db: &TempDb) -> Vec<&str> {
    vec!["undo", "--db", path_str(&db.path), "--plan", "parts"]
}

/// Runs `cmd` killed at `points` in turn, checking the record against
/// the table after each kill, until a process ends by itself; then runs
/// it to its end. Returns how many were killed, and how
/// many of those inside a commit with pages in its journal.
fn kill_until_done(
    db: &TempDb,
    cmd: &[&str],
    env: &[(&str, &str)],
    points: &[(usize, Kill)],
) -> (usize, usize) {
    let (mut kills, mut in_commit) = (0, 0);
    for &point in points {
        let Ended::Killed { pages } = killed(db, cmd, env, point) else {
            return (kills, in_commit);
        };
        kills += 1;
        in_commit += usize::from(pages);
        if let Some(bad) = record_vs_table(db) {
            panic!("after kill {kills} ({point:?}): {bad}");
        }
    }
    let (code, _, err) = run_with_env(&[cmd, &["--no-serve"]].concat(), None, env);
    assert_eq!(code, 0, "{err}");
    (kills, in_commit)
}

/// The file after the plan ran whole, recorded the same way, without a
/// kill: its tables, and the entries recorded for each step.
fn unkilled(env: &[(&str, &str)]) -> (String, Vec<i64>) {
    let db = TempDb::with_sql(TABLES);
    let plan = db.file("plan.json", PLAN);
    let mut args = run_cmd(&db, &plan);
    args.push("--no-serve");
    let (code, _, err) = run_with_env(&args, None, env);
    assert_eq!(code, 0, "{err}");
    (content(&db), entries_by_step(&db))
}

fn entries_by_step(db: &TempDb) -> Vec<i64> {
    let c = db.conn();
    let mut stmt = c
        .prepare("SELECT sum(rows) FROM batchsse_undo WHERE chunk >= 0 GROUP BY step ORDER BY step")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A run killed again and again, between chunks and while a chunk of many
/// parts waits to commit, then gone on to its end: the tables as one run
/// without a kill leaves them, the record holding the same entries, and
/// the undo brings every table back.
fn run_killed_mid_record(env: &[(&str, &str)]) {
    let (whole, whole_entries) = unkilled(env);
    let db = TempDb::with_sql(TABLES);
    let before = content(&db);
    let plan = db.file("plan.json", PLAN);
    let (kills, in_commit) = kill_until_done(&db, &run_cmd(&db, &plan), env, &RUN_KILLS);
    // A kill between chunks that came late would let one more chunk in,
    // and the last kill point past the run's end.
    assert!(
        kills + 1 >= RUN_KILLS.len(),
        "the run ended after {kills} kills"
    );
    assert!(in_commit >= 3, "{in_commit} kills inside a chunk's commit");
    assert_eq!(content(&db), whole, "every change made exactly once");
    assert_eq!(record_vs_table(&db), None);
    assert_eq!(
        entries_by_step(&db),
        whole_entries,
        "every change recorded once"
    );
    let parts = db.query_i64("SELECT count(*) FROM batchsse_undo WHERE chunk >= 0 AND step = 0");
    assert!(parts >= 9, "step one in {parts} parts: several a chunk");
    let undo = [&undo_cmd(&db)[..], &["--no-serve"]].concat();
    let (code, _, err) = run_with_env(&undo, None, env);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("damaged"), "{err}");
    assert_eq!(conflicts(&db), 0, "{err}");
    assert_eq!(content(&db), before, "every table as before the run");
}

#[test]
fn a_run_killed_inside_chunks_of_many_parts_records_each_change_once() {
    run_killed_mid_record(HOOK);
}

#[test]
fn recorded_without_the_hook_a_run_killed_inside_chunks_of_many_parts_records_each_change_once() {
    run_killed_mid_record(NO_HOOK);
}

/// An undo of a record of many parts killed again and again, between two
/// parts and while a part waits to commit, then gone on to its end:
/// every table as before the run, and not one conflict, which an inverse
/// applied twice would be (the row no longer holds the value it expects).
fn undo_killed_mid_record(env: &[(&str, &str)]) {
    let db = TempDb::with_sql(TABLES);
    let before = content(&db);
    let plan = db.file("plan.json", PLAN);
    let mut args = run_cmd(&db, &plan);
    args.push("--no-serve");
    let (code, _, err) = run_with_env(&args, None, env);
    assert_eq!(code, 0, "{err}");
    let parts = db.query_i64("SELECT count(*) FROM batchsse_undo WHERE chunk >= 0");
    assert!(parts >= 20, "{parts} parts");
    let (kills, in_commit) = kill_until_done(&db, &undo_cmd(&db), env, &UNDO_KILLS);
    assert_eq!(
        kills,
        UNDO_KILLS.len(),
        "the undo ended after {kills} kills"
    );
    assert!(in_commit >= 3, "{in_commit} kills inside a part's commit");
    assert_eq!(conflicts(&db), 0, "no inverse applied twice");
    assert_eq!(content(&db), before, "every table as before the run");
    let (code, out, _) = run(&["undo", "list", "--db", path_str(&db.path)]);
    assert_eq!(code, 0);
    assert!(out.contains("no undo records"), "{out}");
}

#[test]
fn an_undo_killed_between_and_inside_parts_takes_each_back_once() {
    undo_killed_mid_record(HOOK);
}

#[test]
fn recorded_without_the_hook_an_undo_killed_between_and_inside_parts_takes_each_back_once() {
    undo_killed_mid_record(NO_HOOK);
}
