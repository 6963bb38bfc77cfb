//! The commands a message names, pasted into a shell as printed, reach the
//! file they name, whatever its name: bytes that are not UTF-8, a control
//! character, a leading `-`.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use crate::util::*;

/// Runs `line`, a command batchsse printed, as bash runs it in the C
/// locale (cron's, a container's), in `dir`, with `batchsse` this build:
/// (exit code, stderr).
fn pasted(line: &str, dir: &Path) -> (i32, String) {
    assert!(line.starts_with("batchsse "), "{line}");
    let mut bash = Command::new("bash");
    bash.arg("-c")
        .arg(format!("batchsse() {{ \"$0\" \"$@\"; }}; {line}"))
        .arg(BIN)
        .env("LC_ALL", "C");
    code_and_stderr(bash.current_dir(dir))
}

/// Runs `cmd` without a token or colours: (exit code, stderr).
fn code_and_stderr(cmd: &mut Command) -> (i32, String) {
    let out = cmd
        .env_remove("BATCHSSE_TOKEN")
        .env("NO_COLOR", "1")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), err)
}

/// The first command of `err` between backquotes that starts with `start`.
fn named<'a>(err: &'a str, start: &str) -> &'a str {
    err.split('`')
        .find(|c| c.starts_with(start))
        .unwrap_or_else(|| panic!("no `{start}…` in: {err}"))
}

/// `batchsse ARGS…` with `db` (any bytes), run in `dir`: (code, stderr).
fn run_on(dir: &Path, args: &[&str], db: &OsStr, after: &[&str]) -> (i32, String) {
    code_and_stderr(
        Command::new(BIN)
            .args(args)
            .arg(db)
            .args(after)
            .current_dir(dir),
    )
}

/// `undo --db X` without `--run` or `--plan` names `undo list --db X`,
/// which pasted must list that file: X is written as bash reads it back in
/// any locale (a C1 control as its UTF-8 bytes, not `\u0085`, which the C
/// locale leaves as it is), bytes that are not UTF-8 kept (they were made
/// U+FFFD), and a relative path that begins with `-` made `./-…`, which
/// `--db` does not take for an option.
#[cfg(unix)]
#[test]
fn the_undo_list_command_named_reaches_the_file() {
    use std::os::unix::ffi::OsStrExt;
    let db = TempDb::counters(3);
    for name in [
        &b"caf\xe9's.sqlite"[..],
        "a\u{85}b.sqlite".as_bytes(),
        b"-x.sqlite",
    ] {
        let name = OsStr::from_bytes(name);
        std::fs::copy(&db.path, db.dir.path().join(name)).unwrap();
        let mut given = std::ffi::OsString::from("--db=");
        given.push(name);
        let (code, err) = run_on(db.dir.path(), &["undo"], &given, &[]);
        assert_eq!(code, 2, "{err}");
        let (code, said) = pasted(named(&err, "batchsse undo list"), db.dir.path());
        assert_eq!(code, 0, "{name:?}: {err}\npasted: {said}");
    }
}

/// `checkpoint clear --plan` of a plan with no checkpoint names
/// `checkpoint list --db …`; an undo stopped part-way refuses the plan's
/// run naming `undo --db … --plan …`: pasted, both reach a file whose name
/// is not UTF-8 (its bytes were made U+FFFD, so they found no database).
#[cfg(unix)]
#[test]
fn commands_named_by_checkpoints_reach_a_file_whose_name_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let db = TempDb::counters(40);
    let odd = db.dir.path().join(OsStr::from_bytes(b"caf\xe9.sqlite"));
    std::fs::rename(&db.path, &odd).unwrap();
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let run = ["run", "--plan", path_str(&plan), "--no-serve"];
    let batches = ["--batch-size", "10"];
    let (code, err) = run_on(
        db.dir.path(),
        &[&run[..], &["--db"]].concat(),
        odd.as_os_str(),
        &[&batches[..], &["--undo"]].concat(),
    );
    assert_eq!(code, 0, "{err}");
    let clear = ["checkpoint", "clear", "--plan", "nope", "--db"];
    let (code, err) = run_on(db.dir.path(), &clear, odd.as_os_str(), &[]);
    assert_eq!(code, 2, "{err}");
    let (code, said) = pasted(named(&err, "batchsse checkpoint list"), db.dir.path());
    assert_eq!(code, 0, "{err}\npasted: {said}");
    // The application changes a row of the first chunk, which the undo
    // meets last: the undo stops there.
    let conn = rusqlite::Connection::open(&odd).unwrap();
    conn.execute_batch("UPDATE t SET counter = 7 WHERE id = 3")
        .unwrap();
    let undo = [
        "undo",
        "--plan",
        "bump",
        "--no-serve",
        "--on-conflict",
        "abort",
        "--db",
    ];
    let (code, err) = run_on(db.dir.path(), &undo, odd.as_os_str(), &[]);
    assert_eq!(code, 1, "{err}");
    let (code, err) = run_on(
        db.dir.path(),
        &[&run[..], &["--db"]].concat(),
        odd.as_os_str(),
        &batches,
    );
    assert_eq!(code, 2, "{err}");
    let command = format!("{} --no-serve", named(&err, "batchsse undo --db"));
    let (code, said) = pasted(&command, db.dir.path());
    assert_eq!(code, 0, "{err}\npasted: {said}");
    let left: i64 = conn
        .query_row("SELECT count(*) FROM t WHERE counter = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "taken back");
}
