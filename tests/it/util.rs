//! Helpers shared by the integration tests and the benchmarks (which
//! include this file as a module of their own): temporary databases, a
//! guard around the real binary, and a small HTTP/1.1 client that reads the
//! SSE stream byte for byte.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchsse::sse::{ParsedEvent, Parser};
use rusqlite::Connection;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_batchsse");

/// A limit for anything a test waits on, so a broken build fails rather
/// than hangs.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A temporary folder with a database in it.
pub struct TempDb {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TempDb {
    /// An empty folder; `path` names a database not created yet.
    pub fn empty() -> TempDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("test.sqlite");
        TempDb { dir, path }
    }

    /// A database made by running `sql`.
    pub fn with_sql(sql: &str) -> TempDb {
        let db = TempDb::empty();
        db.conn().execute_batch(sql).expect("setup SQL");
        db
    }

    /// The sample shop with `rows` orders.
    pub fn shop(rows: u64) -> TempDb {
        let db = TempDb::empty();
        batchsse::demo::create_sample_db(&db.path, rows).expect("sample db");
        db
    }

    /// `t(id INTEGER PRIMARY KEY, counter INTEGER)` with ids 1..=rows, all
    /// counters 0: a non-idempotent `counter = counter + 1` shows any row
    /// updated twice or missed.
    pub fn counters(rows: u64) -> TempDb {
        TempDb::with_sql(&format!(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INTEGER NOT NULL DEFAULT 0);
             INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < {rows}) SELECT i FROM s;"
        ))
    }

    /// Like [`TempDb::counters`], in WAL mode, with 200 bytes of padding a
    /// row, so a few thousand rows fill megabytes of WAL.
    pub fn padded_wal(rows: u64) -> TempDb {
        TempDb::with_sql(&format!(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE t(id INTEGER PRIMARY KEY, counter INTEGER NOT NULL DEFAULT 0, pad TEXT);
             INSERT INTO t(id, pad) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < {rows})
               SELECT i, printf('%.200c', 'x') FROM s;"
        ))
    }

    pub fn conn(&self) -> Connection {
        Connection::open(&self.path).expect("open test db")
    }

    /// Writes a file next to the database and returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    /// Sets the database's modification time an hour back, as nobody had
    /// written it lately (a file written within the last minute starts a
    /// run at the live pace).
    pub fn age(&self) {
        age_file(&self.path);
    }

    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap_or_default()
    }

    pub fn query_i64(&self, sql: &str) -> i64 {
        self.conn().query_row(sql, [], |r| r.get(0)).expect(sql)
    }

    pub fn query_text(&self, sql: &str) -> String {
        self.conn().query_row(sql, [], |r| r.get(0)).expect(sql)
    }

    /// `(count of counter = 1, count of others)` over table `t`.
    pub fn counter_spread(&self) -> (i64, i64) {
        (
            self.query_i64("SELECT count(*) FROM t WHERE counter = 1"),
            self.query_i64("SELECT count(*) FROM t WHERE counter <> 1"),
        )
    }
}

impl AsRef<Path> for TempDb {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// What `undo clear --all` does, done by hand: it refuses while another
/// batchsse has the file open (where the system tells), so a record
/// cleared under a live run or undo comes from elsewhere (another system,
/// or by hand).
pub fn clear_undo_by_hand(db: &TempDb) {
    db.conn()
        .execute_batch("DROP TABLE batchsse_undo; DROP TABLE batchsse_undo_conflict;")
        .expect("drop the undo tables");
}

/// A JSON plan with one chunked `counter = counter + 1` step over `t`.
/// Sets a file's modification time an hour back (see [`TempDb::age`]).
pub fn age_file(path: &Path) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open to age");
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .expect("set mtime");
}

pub fn counter_plan(name: &str, size: u64) -> String {
    serde_json::json!({
        "name": name,
        "steps": [{
            "name": "bump counters",
            "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
            "chunk": {"table": "t", "key": "id", "size": size}
        }]
    })
    .to_string()
}

/// Two plans over [`TempDb::counters`]' rows that change some rows alike:
/// `older` adds 1 to every counter (chunks of 10), `newer` 10 to the
/// first three. Taken back oldest first, the newer run's undo leaves those
/// three rows carrying the older run's change.
pub fn older_and_newer(db: &TempDb) -> (PathBuf, PathBuf) {
    let older = db.file("older.json", &counter_plan("older", 10));
    let newer = db.file(
        "newer.json",
        r#"{"name": "newer", "steps": [{"name": "ten", "sql": "UPDATE t SET counter = counter + 10 WHERE id <= 3"}]}"#,
    );
    (older, newer)
}

/// `undo --db DB --plan PLAN --no-serve`, then `extra`.
pub fn undo_of_plan<'a>(db: &'a TempDb, plan: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let undo = [
        "undo",
        "--db",
        path_str(&db.path),
        "--plan",
        plan,
        "--no-serve",
    ];
    [&undo[..], extra].concat()
}

/// `t` of 40 counters bumped by a recorded run (`--undo`) of plan `bump`,
/// ten rows a part: four parts in the record.
pub fn bumped() -> TempDb {
    let db = TempDb::counters(40);
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    run_undoable_in_tens(&db, &plan);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM batchsse_undo WHERE chunk >= 0"),
        4
    );
    db
}

/// The real binary, running; killed when dropped.
pub struct Proc {
    pub child: Child,
    stderr: Arc<Mutex<String>>,
    /// When each stderr line arrived.
    stderr_times: Arc<Mutex<Vec<(Instant, String)>>>,
    pub addr: Option<SocketAddr>,
}

impl Proc {
    /// Starts `batchsse ARGS`; when the server is on, waits for the
    /// `listening on` line and records the address.
    pub fn start(args: &[&str]) -> Proc {
        Self::start_with(args, |_| {})
    }

    pub fn start_with(args: &[&str], tweak: impl FnOnce(&mut Command)) -> Proc {
        let mut p = spawn(args, tweak);
        if args.contains(&"--no-serve") {
            return p;
        }
        let start = Instant::now();
        while start.elapsed() < PATIENCE {
            let first = p
                .stderr_times
                .lock()
                .unwrap()
                .first()
                .map(|(_, l)| l.clone());
            if let Some(line) = first {
                p.addr = line
                    .strip_prefix("batchsse: listening on http://")
                    .and_then(|rest| rest.trim_end_matches('/').parse().ok());
                break;
            }
            if p.child.try_wait().ok().flatten().is_some() {
                // Exited before saying anything; let the last lines land.
                std::thread::sleep(Duration::from_millis(50));
                if p.stderr_times.lock().unwrap().is_empty() {
                    break;
                }
                continue;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        p
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
            .unwrap_or_else(|| panic!("no listening line; stderr so far:\n{}", self.stderr()))
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// When the first stderr line containing `needle` arrived.
    pub fn stderr_time(&self, needle: &str) -> Option<Instant> {
        let lines = self.stderr_times.lock().unwrap();
        lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
    }

    /// Waits until the process has said `needle` on stderr, failing the
    /// test after [`PATIENCE`]: what it says reaches the test a moment
    /// after what it does (a commit, a served event).
    pub fn wait_stderr(&self, needle: &str) {
        let end = Instant::now() + PATIENCE;
        while !self.stderr().contains(needle) {
            assert!(
                Instant::now() < end,
                "never said {needle:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the exit, failing the test after `limit`.
    pub fn wait_for(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the stderr thread catch the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            if start.elapsed() > limit {
                panic!(
                    "batchsse did not exit within {limit:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait(&mut self) -> ExitStatus {
        self.wait_for(PATIENCE)
    }

    /// Everything the process printed on stdout (after it exited).
    pub fn stdout(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut s);
        }
        s
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `batchsse ARGS` to completion: (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    run_with_stdin(args, None)
}

pub fn run_with_stdin(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    run_with_env(args, stdin, &[])
}

/// Runs a command line batchsse printed for the user to type
/// (`batchsse undo --db … --run …`) as a shell runs it, with `batchsse`
/// this build: (exit code, stdout, stderr). The line serves on the
/// default port, which a user's own run or another test may hold, so
/// `--listen 127.0.0.1:0` goes after it.
pub fn run_as_typed(line: &str) -> (i32, String, String) {
    assert!(line.starts_with("batchsse "), "{line}");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "batchsse() {{ \"$0\" \"$@\" --listen 127.0.0.1:0; }}; {line}"
        ))
        .arg(BIN)
        .env_remove("BATCHSSE_TOKEN")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`run_with_stdin`] with more environment variables.
pub fn run_with_env(
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("BATCHSSE_TOKEN")
        .env("NO_COLOR", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn batchsse");
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    if let Some(text) = stdin {
        let mut i = child.stdin.take().unwrap();
        let _ = i.write_all(text.as_bytes());
    }
    let Some(status) = wait_or_kill(&mut child) else {
        panic!(
            "batchsse {args:?} did not exit within {RUN_LIMIT:?}, so it was killed; stderr:\n{}",
            String::from_utf8_lossy(&err.join().unwrap())
        );
    };
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    )
}

/// How long [`run`] lets the binary go before it kills it: a hang fails
/// its test, with what the binary printed, instead of holding up the
/// whole suite.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Reads a pipe to its end on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// The child's exit status, or `None` once it has been killed for
/// running past [`RUN_LIMIT`].
fn wait_or_kill(child: &mut Child) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `batchsse ARGS` to completion with its standard error on a
/// pseudo-terminal, as a person at a terminal sees it (bars and all):
/// (exit code, what the terminal got, escape sequences taken out).
#[cfg(unix)]
pub fn run_on_terminal(args: &[&str]) -> (i32, String) {
    let t = Terminal::start(args, 120, &[]);
    let (code, got) = t.finish();
    (code, without_escapes(&got))
}

/// `batchsse ARGS` with its standard error on a pseudo-terminal `cols`
/// wide (40 rows), read as it comes; killed when dropped.
#[cfg(unix)]
pub struct Terminal {
    pub child: Child,
    got: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Set to close the terminal.
    hang_up: Arc<std::sync::atomic::AtomicBool>,
    /// The terminal's end for typing on (closed with it).
    keys: Mutex<Option<std::fs::File>>,
}

/// Reads the terminal into `sink` until no process holds it open (EIO),
/// or `close` asks for it to be closed.
#[cfg(unix)]
fn read_terminal(
    master: std::os::fd::OwnedFd,
    sink: &Mutex<Vec<u8>>,
    close: &std::sync::atomic::AtomicBool,
) {
    use std::os::fd::AsRawFd;
    let mut master = std::fs::File::from(master);
    let mut buf = [0u8; 4096];
    let end = Instant::now() + PATIENCE * 2;
    while !close.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < end {
        let mut fd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the length given.
        if unsafe { libc::poll(&mut fd, 1, 20) } <= 0 {
            continue;
        }
        match master.read(&mut buf) {
            Ok(n @ 1..) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
}

#[cfg(unix)]
impl Terminal {
    pub fn start(args: &[&str], cols: u16, env: &[(&str, &str)]) -> Terminal {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        Terminal::spawn(cmd, cols, env)
    }

    /// [`Terminal::start`], then the shell command `then` on the same
    /// terminal once batchsse has exited (the exit code is batchsse's): a
    /// look at what it left the terminal in (`stty -a`).
    pub fn start_then(args: &[&str], cols: u16, then: &str) -> Terminal {
        let script =
            format!("trap : INT QUIT; ulimit -c 0; \"$0\" \"$@\"; code=$?; {then}; exit $code");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).arg(BIN).args(args);
        Terminal::spawn(cmd, cols, &[])
    }

    fn spawn(mut cmd: Command, cols: u16, env: &[(&str, &str)]) -> Terminal {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: 40,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two descriptors, which are then owned here.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        // Else the child holds this end open too, and closing it here
        // would not close the terminal.
        // SAFETY: sets a flag on a descriptor owned here.
        unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        cmd.env("TERM", "xterm")
            .env("NO_COLOR", "1")
            .env_remove("COLUMNS")
            .env_remove("BATCHSSE_TOKEN")
            .env_remove("GITHUB_ACTIONS")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(slave));
        // Its own session, with this terminal as its controlling one (as
        // a shell's job has): closing the terminal hangs it up.
        // SAFETY: setsid and ioctl are async-signal-safe; stderr (fd 2) is
        // the terminal by the time this runs.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::setsid() < 0 || libc::ioctl(2, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn batchsse");
        drop(cmd); // the last copy of the terminal's other end: EOF once the child exits
        let got = Arc::new(Mutex::new(Vec::new()));
        let hang_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sink, close) = (got.clone(), hang_up.clone());
        let keys = master.try_clone().map(std::fs::File::from).ok();
        let reader = std::thread::spawn(move || read_terminal(master, &sink, &close));
        Terminal {
            child,
            got,
            reader: Some(reader),
            hang_up,
            keys: Mutex::new(keys),
        }
    }

    /// Types `keys` on the terminal, as a person would: `\x03` is Ctrl-C,
    /// which the terminal echoes as `^C` and turns into SIGINT.
    pub fn type_keys(&self, keys: &[u8]) {
        if let Some(k) = self.keys.lock().unwrap().as_mut() {
            k.write_all(keys).expect("type on the terminal");
        }
    }

    /// Closes the terminal, as a person closing its window does: the
    /// kernel sends SIGHUP, and every later write to it fails.
    pub fn hang_up(&self) {
        self.keys.lock().unwrap().take();
        self.hang_up
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every byte the terminal got so far.
    pub fn got(&self) -> Vec<u8> {
        self.got.lock().unwrap().clone()
    }

    /// What the terminal got so far, escape sequences taken out.
    pub fn text(&self) -> String {
        without_escapes(&self.got.lock().unwrap())
    }

    /// Waits until the terminal shows `needle`, failing the test after
    /// [`PATIENCE`].
    pub fn wait_for(&self, needle: &str) {
        let end = Instant::now() + PATIENCE;
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < end,
                "the terminal never showed {needle:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the exit: (exit code, every byte the terminal got).
    pub fn finish(mut self) -> (i32, Vec<u8>) {
        let end = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > end {
                panic!(
                    "batchsse on a terminal still running after {PATIENCE:?}:\n{}",
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            r.join().expect("terminal reader");
        }
        let got = std::mem::take(&mut *self.got.lock().unwrap());
        (status.code().unwrap_or(-1), got)
    }
}

#[cfg(unix)]
impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Columns a character takes: none for a joiner, a variation selector or
/// a combining mark (drawn over the one before), two for CJK and emoji.
fn cell_width(c: char) -> usize {
    match u32::from(c) {
        0x200b..=0x200d | 0xfe00..=0xfe0f | 0x0300..=0x036f => 0,
        0x1100..=0x115f
        | 0x2e80..=0xa4cf
        | 0xac00..=0xd7a3
        | 0xf900..=0xfaff
        | 0xff00..=0xff60
        | 0xffe0..=0xffe6
        | 0x1f300..=0x1faff
        | 0x20000..=0x3fffd => 2,
        _ => 1,
    }
}

/// What a terminal `cols` wide shows once it has drawn `bytes`, every
/// line that scrolled by included, trailing blanks trimmed: enough of a
/// VT100 for indicatif (text with auto-wrap, CR, LF, cursor up and down,
/// erase in line and below; other sequences are ignored).
pub fn screen(bytes: &[u8], cols: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut rows: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col, mut wrap, mut joining) = (0usize, 0usize, false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() != Some(&'[') {
                    chars.next();
                    continue;
                }
                chars.next();
                let mut params = String::new();
                let mut end = ' ';
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() || c == '@' || c == '~' {
                        end = c;
                        break;
                    }
                    params.push(c);
                }
                let n = params.parse::<usize>().unwrap_or(1).max(1);
                wrap = false;
                match end {
                    'A' => row = row.saturating_sub(n),
                    'B' => row += n,
                    'G' => col = (n - 1).min(cols - 1),
                    'K' => {
                        let line = &mut rows[row];
                        match params.as_str() {
                            "2" => line.clear(),
                            "1" => line.iter_mut().take(col + 1).for_each(|c| *c = ' '),
                            _ => line.truncate(col),
                        }
                    }
                    'J' => {
                        rows[row].truncate(col);
                        rows.truncate(row + 1);
                    }
                    _ => {}
                }
            }
            '\r' => (col, wrap) = (0, false),
            '\n' => (row, wrap) = (row + 1, false),
            c if c.is_control() => {}
            c => {
                // A joined emoji is drawn as one, two columns wide, as
                // modern terminals (kitty, WezTerm, iTerm2, Windows
                // Terminal) do.
                let w = if joining { 0 } else { cell_width(c) };
                joining = c == '\u{200d}';
                if w == 0 {
                    continue; // drawn over the character before it
                }
                if wrap || col + w > cols {
                    (row, col, wrap) = (row + 1, 0, false);
                }
                while rows.len() <= row {
                    rows.push(Vec::new());
                }
                let line = &mut rows[row];
                while line.len() < col + w {
                    line.push(' ');
                }
                line[col] = c;
                if w == 2 {
                    line[col + 1] = '\0'; // the right half of a wide character
                }
                if col + w == cols {
                    wrap = true;
                } else {
                    col += w;
                }
            }
        }
        while rows.len() <= row {
            rows.push(Vec::new());
        }
    }
    let mut lines: Vec<String> = rows
        .into_iter()
        .map(|r| {
            r.into_iter()
                .filter(|&c| c != '\0')
                .collect::<String>()
                .trim_end()
                .to_owned()
        })
        .collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// Terminal output as text: CSI sequences (`ESC [ … letter`) removed, and
/// every carriage return a line end.
fn without_escapes(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => out.push('\n'),
            c => out.push(c),
        }
    }
    out
}

/// A response read off a real socket.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// Sends raw bytes and reads the whole response (until the body ends).
pub fn raw(addr: SocketAddr, request: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(request).expect("send");
    let mut r = BufReader::new(s);
    read_response(&mut r, true).expect("response")
}

/// `GET path` with extra headers; reads the whole body.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    raw(addr, &request("GET", path, headers))
}

pub fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    req.into_bytes()
}

fn read_response(r: &mut impl BufRead, with_body: bool) -> std::io::Result<Response> {
    let (status, headers) = read_head(r)?;
    let mut body = Vec::new();
    if with_body {
        let chunked = headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
        if chunked {
            while let Some(chunk) = read_chunk(r)? {
                body.extend(chunk);
            }
        } else if let Some(len) = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
        {
            body.resize(len, 0);
            r.read_exact(&mut body)?;
        } else {
            r.read_to_end(&mut body)?;
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn read_head(r: &mut impl BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok((status, headers))
}

/// One chunk of a chunked body; `None` at the end.
fn read_chunk(r: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
    let mut buf = vec![0; size + 2];
    r.read_exact(&mut buf)?;
    buf.truncate(size);
    Ok((size > 0).then_some(buf))
}

/// A live `/events` connection, read as it arrives.
pub struct Stream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    parser: Parser,
    pending: std::collections::VecDeque<ParsedEvent>,
    /// Every body byte received so far, exactly as sent.
    pub bytes: Vec<u8>,
    pub ended: bool,
}

/// How long a [`Stream`] waits for its next event. Keep-alive comments
/// every 15 s keep the socket's read timeout from ever firing, so a run
/// that hangs would otherwise hold its test for good.
const EVENT_LIMIT: Duration = Duration::from_secs(120);

impl Stream {
    pub fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Stream {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(&request("GET", path, headers)).expect("send");
        let mut reader = BufReader::new(s);
        let (status, headers) = read_head(&mut reader).expect("response head");
        let chunked = headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
        Stream {
            status,
            headers,
            reader,
            chunked,
            parser: Parser::new(),
            pending: Default::default(),
            bytes: Vec::new(),
            ended: status != 200,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next event, or `None` once the stream has ended.
    pub fn next_event(&mut self) -> Option<ParsedEvent> {
        let since = Instant::now();
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.ended {
                return None;
            }
            assert!(
                since.elapsed() < EVENT_LIMIT,
                "no event for {EVENT_LIMIT:?}, only keep-alives; the stream's end:\n{}",
                String::from_utf8_lossy(&self.bytes[self.bytes.len().saturating_sub(2000)..])
            );
            let chunk = if self.chunked {
                read_chunk(&mut self.reader).expect("read chunk")
            } else {
                let mut buf = vec![0; 8192];
                // A read cut short by a signal (a stop and continue of
                // the whole test, say) is tried again, as std's own
                // read_exact would.
                let n = loop {
                    match self.reader.read(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        other => break other.expect("read"),
                    }
                };
                buf.truncate(n);
                (n > 0).then_some(buf)
            };
            match chunk {
                None => self.ended = true,
                Some(bytes) => {
                    self.bytes.extend_from_slice(&bytes);
                    let evs = self.parser.feed(&bytes);
                    self.pending.extend(evs);
                }
            }
        }
    }

    /// Reads until the next event named `name` and returns it.
    pub fn until(&mut self, name: &str) -> ParsedEvent {
        loop {
            match self.next_event() {
                Some(e) if e.event == name => return e,
                Some(_) => {}
                None => panic!("stream ended before a {name:?} event"),
            }
        }
    }

    /// Reads everything to the end of the stream.
    pub fn rest(&mut self) -> Vec<ParsedEvent> {
        std::iter::from_fn(|| self.next_event()).collect()
    }

    pub fn comments(&self) -> usize {
        self.parser.comments()
    }
}

/// An event's id as a number.
pub fn id(e: &ParsedEvent) -> u64 {
    e.id.as_deref()
        .and_then(|i| i.parse().ok())
        .expect("numeric id")
}

pub fn data(e: &ParsedEvent) -> Value {
    serde_json::from_str(&e.data).expect("event data is JSON")
}

/// Asserts ids run 1, 2, 3, … (or from `first`) without gap or repeat.
pub fn assert_contiguous(events: &[ParsedEvent], first: u64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            id(e),
            first + i as u64,
            "event {i} of {}: {e:?}",
            events.len()
        );
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The SHA-256 of a file's bytes, hex.
pub fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap_or_default();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sends raw bytes; the response status, or `None` if the server closed
/// the connection without one.
pub fn raw_status(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(PATIENCE)).ok()?;
    let _ = s.write_all(request);
    let mut r = BufReader::new(s);
    read_head(&mut r).ok().map(|(status, _)| status)
}

/// Starts `batchsse ARGS` without waiting for a `listening on` line (for
/// `watch`, which prints none); stdout and stderr are collected as usual.
pub fn spawn(args: &[&str], tweak: impl FnOnce(&mut Command)) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("BATCHSSE_TOKEN")
        .env("NO_COLOR", "1");
    tweak(&mut cmd);
    let mut child = cmd.spawn().expect("spawn batchsse");
    let stderr = Arc::new(Mutex::new(String::new()));
    let stderr_times = Arc::new(Mutex::new(Vec::new()));
    if let Some(err) = child.stderr.take() {
        let sink = stderr.clone();
        let times = stderr_times.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                times.lock().unwrap().push((Instant::now(), line.clone()));
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
    }
    Proc {
        child,
        stderr,
        stderr_times,
        addr: None,
    }
}

/// A localhost port nothing listens on right now (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Polls `/status` until `pred` holds (bounded by PATIENCE).
pub fn wait_status(addr: SocketAddr, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = get(addr, "/status", &[]).json();
        if pred(&v) {
            return v;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "/status never matched; last: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `p`'s stderr holds `n` lines containing `needle`; returns them.
pub fn stderr_lines(p: &Proc, needle: &str, n: usize) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let lines: Vec<String> = p
            .stderr()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(start.elapsed() < PATIENCE, "{}", p.stderr());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The `data` of every `progress` event in `--progress json` output.
pub fn progress_data(out: &str) -> Vec<Value> {
    json_lines(out)
        .into_iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| e["data"].clone())
        .collect()
}

/// Parses NDJSON output: every line must be one JSON object.
pub fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}"));
            assert!(v.is_object(), "not an object: {l}");
            v
        })
        .collect()
}

/// `(id, event, data)` of an NDJSON line, to compare with a stream event.
pub fn line_triple(v: &Value) -> (u64, String, Value) {
    (
        v["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric id: {v}")),
        v["event"]
            .as_str()
            .unwrap_or_else(|| panic!("no event: {v}"))
            .to_owned(),
        v["data"].clone(),
    )
}

/// The same triple for an event read off the stream.
pub fn event_triple(e: &ParsedEvent) -> (u64, String, Value) {
    (id(e), e.event.clone(), data(e))
}

/// Command-line words from one string: `words("--batch-size 10 --sleep 5")`.
pub fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// `batchsse run --db DB --plan PLAN` followed by `extra`; `db` is a
/// [`TempDb`] or the path of any database file.
pub fn run_args<'a>(
    db: &'a (impl AsRef<Path> + ?Sized),
    plan: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec!["run", "--db", path_str(db.as_ref()), "--plan", plan];
    a.extend_from_slice(extra);
    a
}

/// Runs `plan` on `db` with `--undo` and no server, which must succeed.
pub fn run_undoable(db: &TempDb, plan: &Path) {
    let (code, _, err) = run(&run_args(db, path_str(plan), &["--no-serve", "--undo"]));
    assert_eq!(code, 0, "{err}");
}

/// [`run_undoable`] in chunks of 10 whatever the machine's speed (they
/// adapt otherwise), for tests that count or stop at parts.
pub fn run_undoable_in_tens(db: &TempDb, plan: &Path) {
    let args = run_args(
        db,
        path_str(plan),
        &["--no-serve", "--undo", "--batch-size", "10"],
    );
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
}

/// Starts a run of `plan` with the server on a free port and no terminal
/// output, then `extra`.
pub fn serving(db: &TempDb, plan: &str, extra: &[&str]) -> Proc {
    let mut a = run_args(db, plan, &["--listen", "127.0.0.1:0", "--progress", "none"]);
    a.extend_from_slice(extra);
    Proc::start(&a)
}

/// Waits until process `pid` has the file `path` open (by its /proc fd
/// table), failing the test after PATIENCE or if the process exits first.
pub fn wait_until_open(p: &mut Proc, path: &Path) {
    let want = std::fs::canonicalize(path).expect("canonical path");
    let fds = PathBuf::from(format!("/proc/{}/fd", p.child.id()));
    let start = Instant::now();
    loop {
        let open = std::fs::read_dir(&fds).is_ok_and(|d| {
            d.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == want))
        });
        if open {
            return;
        }
        if let Some(status) = p.child.try_wait().expect("try_wait") {
            panic!(
                "batchsse exited ({status}) before opening {}; stderr:\n{}",
                path.display(),
                p.stderr()
            );
        }
        assert!(
            start.elapsed() < PATIENCE,
            "batchsse never opened {}; stderr:\n{}",
            path.display(),
            p.stderr()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// For a test that cannot observe what it checks on this machine: a failure
/// in CI (which must be able to), a printed skip elsewhere.
pub fn skip_unless_ci(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "this test cannot run in CI: {why}"
    );
    eprintln!("skipped: {why}");
}

/// A private `redis-server` for one test, on its own free port, with
/// persistence off (`--save ''`, `--appendonly no`): a restart comes back
/// empty, as a Redis that lost its data would. Killed by its pid when
/// dropped.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    password: Option<String>,
    /// More `redis-server` arguments (TLS, replication).
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts a server and waits until it answers; `None` (after a printed
    /// skip, or a failure with `CI` set) when `redis-server` is missing.
    pub fn start() -> Option<Redis> {
        Self::launch(None, &[])
    }

    /// The same, with `--requirepass PASSWORD`.
    pub fn start_with_password(password: &str) -> Option<Redis> {
        Self::launch(Some(password), &[])
    }

    /// The same, with more `redis-server` arguments. They are given from
    /// the first start, so a port they also need (a cluster node's bus,
    /// the port + 10000) found taken is a reason to try another port too.
    pub fn start_with(extra: &[String]) -> Option<Redis> {
        Self::launch(None, extra)
    }

    fn launch(password: Option<&str>, extra: &[String]) -> Option<Redis> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            skip_unless_ci("redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let mut r = Redis {
            port: 0,
            child: None,
            password: password.map(str::to_owned),
            extra: extra.to_vec(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        // Another process may take the free port before the server binds
        // it (or hold one the server needs besides): then try another one.
        for _ in 0..8 {
            r.port = free_port();
            if r.spawn() {
                return Some(r);
            }
        }
        panic!("redis-server would not start; its log:\n{}", r.log());
    }

    /// Starts the server on `self.port`; false if it exited before it
    /// answered (the port was taken).
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let logfile = self.dir.path().join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(self.dir.path())
        .arg("--logfile")
        .arg(&logfile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        cmd.args(&self.extra);
        let mut child = cmd.spawn().expect("spawn redis-server");
        let start = Instant::now();
        while start.elapsed() < PATIENCE {
            if child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            if self.ping() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "redis-server on port {port} did not answer within {PATIENCE:?}; its log:\n{}",
            self.log()
        );
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The URL with the password: `redis://:PASSWORD@127.0.0.1:PORT/0`.
    pub fn url_with_password(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}/0", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Whether a server answers `PING` on the port (any reply counts, so
    /// `-NOAUTH` from a server with a password does too).
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        line.starts_with('+') || line.starts_with('-')
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL to its pid: no goodbye to its clients,
    /// nothing saved) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server could not start again on port {}; its log:\n{}",
            self.port,
            self.log()
        );
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Certificates made by `openssl` in a temporary folder: `ca.pem` (with
/// `ca.key`), `server.pem`/`server.key` for 127.0.0.1 signed by it,
/// `client.pem`/`client.key` signed by it, and `other-ca.pem`, which
/// signed nothing here.
pub struct Certs(tempfile::TempDir);

impl Certs {
    pub fn make() -> Option<Certs> {
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
            certs.ca(ca, &format!("batchsse test {ca}"));
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
            certs.sign(leaf, "2", &format!("{leaf}.pem"));
        }
        Some(certs)
    }

    /// Signs `LEAF.csr` with the CA, valid for `days` (negative: expired
    /// that long ago), into `out`.
    fn sign(&self, leaf: &str, days: &str, out: &str) {
        self.openssl(&[
            "x509",
            "-req",
            "-days",
            days,
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
            out,
        ]);
    }

    /// `expired-LEAF.pem`: the certificate of `server` or `client` (its
    /// key, its names), signed by the CA, but expired a day ago.
    pub fn expired(&self, leaf: &str) -> String {
        let out = format!("expired-{leaf}.pem");
        self.sign(leaf, "-1", &out);
        self.arg(&out)
    }

    /// `twin-ca.pem`: a CA with the same name as `ca.pem` but its own key,
    /// as a CA made again would be: it signed nothing here.
    pub fn twin_ca(&self) -> String {
        self.ca("twin-ca", "batchsse test ca");
        self.arg("twin-ca.pem")
    }

    /// `NAME.pem` and `NAME.key`: a self-signed CA whose common name is
    /// `cn`.
    fn ca(&self, name: &str, cn: &str) {
        self.req_x509(name, &format!("/CN={cn}"), &[]);
    }

    /// `NAME.pem` and `NAME.key`: a self-signed certificate for 127.0.0.1,
    /// as `openssl req -x509` makes it, with `-addext` `extra` if given.
    pub fn self_signed(&self, name: &str, extra: Option<&str>) -> (String, String) {
        let mut ext = vec!["-addext", "subjectAltName=IP:127.0.0.1"];
        if let Some(e) = extra {
            ext.extend(["-addext", e]);
        }
        self.req_x509(name, "/CN=127.0.0.1", &ext);
        (
            self.arg(&format!("{name}.pem")),
            self.arg(&format!("{name}.key")),
        )
    }

    /// `openssl req -x509` of a new 2048-bit RSA key for two days, subject
    /// `subj`, into `NAME.pem` and `NAME.key`, with `more` arguments.
    fn req_x509(&self, name: &str, subj: &str, more: &[&str]) {
        let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
        let mut args = vec![
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subj,
        ];
        args.extend_from_slice(more);
        args.extend(["-keyout", &key, "-out", &pem]);
        self.openssl(&args);
    }

    /// `LEAF-enc.key`: `LEAF.key` encrypted with a passphrase (PKCS#8).
    pub fn encrypted_key(&self, leaf: &str) -> String {
        let (key, out) = (format!("{leaf}.key"), format!("{leaf}-enc.key"));
        self.openssl(&[
            "pkcs8",
            "-topk8",
            "-in",
            &key,
            "-out",
            &out,
            "-passout",
            "pass:hunter2",
        ]);
        self.arg(&out)
    }

    /// A copy of `name` (a certificate, or a key when it ends in `.key`)
    /// in DER, as `openssl … -outform der` writes it.
    pub fn der(&self, name: &str) -> String {
        let out = format!("{name}.der");
        let kind = if name.ends_with(".key") {
            "pkey"
        } else {
            "x509"
        };
        self.openssl(&[kind, "-in", name, "-outform", "der", "-out", &out]);
        self.arg(&out)
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

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// `redis-server` arguments for TLS on `tls_port` with these
    /// certificates; with `clients`, a client certificate is required.
    pub fn server_args(&self, tls_port: &str, clients: bool) -> Vec<String> {
        [
            "--tls-port",
            tls_port,
            "--tls-cert-file",
            &self.arg("server.pem"),
            "--tls-key-file",
            &self.arg("server.key"),
            "--tls-ca-cert-file",
            &self.arg("ca.pem"),
            "--tls-auth-clients",
            if clients { "yes" } else { "no" },
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    pub fn arg(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

/// A Redis with TLS on its own port (and plain TCP on `port`, for the
/// test's own reads): `rediss://127.0.0.1:TLS_PORT/0`. With `clients`, it
/// wants a client certificate signed by the CA.
pub fn tls_redis(certs: &Certs, clients: bool) -> Option<(Redis, String)> {
    let tls_port = free_port().to_string();
    let redis = Redis::start_with(&certs.server_args(&tls_port, clients))?;
    Some((redis, format!("rediss://127.0.0.1:{tls_port}/0")))
}

/// Makes `path` immutable (`chattr +i`: root ignores file modes, so this
/// is how a test makes a file or folder it may not write to) until the
/// guard drops, even when the test fails. `None`: not possible here, and
/// the caller skips, which in CI is a failure.
pub fn immutable(path: &Path) -> Option<Immutable<'_>> {
    let made = Command::new("chattr")
        .arg("+i")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        assert!(
            std::env::var_os("CI").is_none(),
            "chattr +i is needed for this test in CI"
        );
        eprintln!("skipped: chattr +i is not available here (needs root on ext4)");
        return None;
    }
    Some(Immutable(path))
}

/// See [`immutable`].
pub struct Immutable<'a>(&'a Path);

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(self.0).status();
    }
}

/// Every user table's rows (with the rowid where there is one), sorted: two
/// databases with the same content give the same text.
pub fn content(db: &TempDb) -> String {
    let c = db.conn();
    let tables: Vec<(String, bool)> = c
        .prepare("SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'batchsse_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = String::new();
    for (t, without_rowid) in tables {
        let q = t.replace('"', "\"\"");
        let sql = if without_rowid {
            format!("SELECT * FROM \"{q}\"")
        } else {
            format!("SELECT rowid, * FROM \"{q}\"")
        };
        let mut stmt = c.prepare(&sql).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        out += &format!("{t}:\n{}\n", rows.join("\n"));
    }
    out
}

/// A copy of the file made as the `sqlite3` shell's `.dump` makes one:
/// each table made and filled by its columns alone, so the rows of one
/// without an `INTEGER PRIMARY KEY` get new rowids, then the indexes.
pub fn dump_copy(db: &TempDb) -> TempDb {
    let copy = TempDb::empty();
    let c = copy.conn();
    c.execute("ATTACH ?1 AS s", [path_str(&db.path)]).unwrap();
    let schema: Vec<(String, String, String)> = c
        .prepare("SELECT type, name, sql FROM s.sqlite_schema WHERE sql NOT NULL ORDER BY type = 'index', rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (kind, name, sql) in schema {
        c.execute_batch(&sql).unwrap();
        if kind == "table" {
            let q = name.replace('"', "\"\"");
            c.execute_batch(&format!("INSERT INTO main.\"{q}\" SELECT * FROM s.\"{q}\""))
                .unwrap();
        }
    }
    copy
}

/// A file and a plan of two steps, "first" slow enough for a
/// `--throttle-query` to be asked before "second", and that query (`hold`):
/// with `--throttle-query hold` the run waits after the first step until
/// the test makes the table `go` hold a row.
pub fn held_after_first_step() -> (TempDb, PathBuf, &'static str) {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INTEGER NOT NULL DEFAULT 0);
         INSERT INTO t(id) VALUES (1), (2), (3);
         CREATE TABLE go(x);",
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"two","steps":[
            {"name":"first","sql":"UPDATE t SET counter = counter + 1 WHERE (WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 8000000) SELECT count(*) FROM s) > 0"},
            {"name":"second","sql":"UPDATE t SET counter = counter + 10"}]}"#,
    );
    let hold = "SELECT (SELECT sum(counter) FROM t) = 3 AND NOT EXISTS (SELECT 1 FROM go)";
    (db, plan, hold)
}

/// `log(ts, msg)`: no INTEGER PRIMARY KEY, 1,000 rows with gaps in their
/// rowids (every `ts` ending in 5 deleted), with an index on `ts` when
/// `indexed`; beside it the plan `purge`, which deletes the even `ts` and
/// walks `log` by rowid in chunks of 100.
pub fn gapped_log(indexed: bool) -> TempDb {
    let index = if indexed {
        "CREATE INDEX log_ts ON log(ts);"
    } else {
        ""
    };
    let db = TempDb::with_sql(&format!(
        "CREATE TABLE log(ts INT, msg TEXT);
         {index}
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
         INSERT INTO log SELECT i, 'm' FROM n;
         DELETE FROM log WHERE ts % 10 = 5;"
    ));
    db.file(
        "plan.json",
        r#"{"name":"purge","steps":[{"sql":"DELETE FROM log WHERE ts % 2 = 0 AND rowid BETWEEN :lo AND :hi","chunk":{"table":"log","size":100}}]}"#,
    );
    db
}

/// Runs the plan beside `db` (`plan.json`) with `--no-serve` and `extra`:
/// its exit code and standard error.
pub fn purge(db: &TempDb, extra: &[&str]) -> (i32, String) {
    let plan = db.dir.path().join("plan.json");
    let mut args = run_args(db, path_str(&plan), &["--no-serve"]);
    args.extend_from_slice(extra);
    let (code, _, err) = run(&args);
    (code, err)
}

/// The purge of [`gapped_log`] (`plan`, its `plan.json`), live: chunks of
/// 100 and 1.5 s between two, so another process can act between them.
pub fn gapped_args<'a>(db: &'a TempDb, plan: &'a Path) -> Vec<&'a str> {
    run_args(
        db,
        path_str(plan),
        &["--no-serve", "--batch-size", "100", "--sleep", "1500"],
    )
}

/// A count that turns 1 once a walk by rowid has probed its table, that
/// is, once its first chunk has committed.
pub const WALK_PROBED: &str =
    "SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_walk_probe'";

/// Starts the run `args` and, from another connection, waits until the
/// count `ready` is above 0 (a chunk committed), then runs `sql` while the
/// run sleeps before its next chunk: the run's exit code and standard
/// error.
pub fn between_two_chunks(
    db: &TempDb,
    args: &[&str],
    ready: &str,
    sql: &str,
) -> (Option<i32>, String) {
    let mut p = Proc::start(args);
    let conn = db.conn();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let start = std::time::Instant::now();
    while conn.query_row(ready, [], |r| r.get::<_, i64>(0)).unwrap() == 0 {
        assert!(start.elapsed() < PATIENCE, "{}", p.stderr());
        std::thread::sleep(Duration::from_millis(5));
    }
    conn.execute_batch(sql).unwrap();
    let status = p.wait();
    (status.code(), p.stderr())
}
