//! Who else uses the database, as far as a process can tell from outside
//! SQLite: another process that has the file open (/proc, Linux only), a
//! POSIX lock another process holds on the file or its WAL index (every
//! Unix: SQLite's own locks, so a connection between its requests in WAL
//! mode, and any transaction under way in either mode), and the files'
//! modification time (a write, by anyone, lately). The governor paces by
//! these; commits show in `PRAGMA data_version`, which it reads itself.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::platform::{Sight, open_by_others};

/// How often the watcher looks for other processes with the file open…
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// …unless a look takes longer than this share of the time between looks.
const LOOK_SHARE: u32 = 50;

/// A look taken ahead (see [`look_ahead`]) stands for the governor's
/// first only while it is this fresh: no staler than the watcher's looks.
const AHEAD_FRESH: Duration = LOOK_EVERY;

/// The look [`look_ahead`] began: the file (canonical), and the look,
/// which ends with its answer and when it was taken.
type Ahead = (PathBuf, JoinHandle<(Sight, Instant)>);

static AHEAD: Mutex<Option<Ahead>> = Mutex::new(None);

/// Begins the first look for other processes with `path` open on a thread
/// of its own, so that it overlaps the pre-run check instead of following
/// it: on its own it took ~0.8 ms of every run's start (a tenth of what a
/// run of a million rows adds to its statement, on a fast machine). The
/// governor takes its answer (see [`Neighbours::open_elsewhere`]).
pub fn look_ahead(path: &Path) {
    let Ok(db) = std::fs::canonicalize(path) else {
        return; // no file: the pre-run check says so
    };
    let at = db.clone();
    let look = move || (open_by_others(&at), Instant::now());
    let thread = std::thread::Builder::new().name("batchsse-first-look".into());
    if let Ok(look) = thread.spawn(look) {
        *AHEAD.lock().unwrap_or_else(|p| p.into_inner()) = Some((db, look));
    }
}

/// The answer of the look begun ahead, and when it was taken, if it was
/// of `path` and is fresh; taken once, and only by a look at its file
/// (so no other file's look, a test's, takes it away).
fn looked_ahead(path: &Path) -> Option<(Sight, Instant)> {
    let db = std::fs::canonicalize(path).ok()?;
    let (_, look) = {
        let mut ahead = AHEAD.lock().unwrap_or_else(|p| p.into_inner());
        ahead.take_if(|(of, _)| *of == db)?
    };
    let (sight, at) = look.join().ok()?;
    (at.elapsed() < AHEAD_FRESH).then_some((sight, at))
}

/// What the locks of other processes say right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Locks {
    /// Another process holds some lock on the database or its WAL index:
    /// it has the file open in WAL mode, or is in a transaction.
    pub any: bool,
    /// Another process is writing: it holds the rollback journal's
    /// RESERVED or PENDING lock, or the WAL's write lock.
    pub writing: bool,
    /// Another process is inside a transaction, reading or writing: a
    /// chunk begun now could make its write fail at once (SQLite gives a
    /// transaction that read first no busy wait for the write lock).
    pub busy: bool,
}

pub(super) struct Neighbours {
    path: PathBuf,
    probe: probe::Probe,
    watcher: Option<Watcher>,
    /// A look found that this system cannot tell who has the file open.
    blind: bool,
    /// When the answer of the last [`Neighbours::open_elsewhere`] was
    /// taken: the watcher's first look comes `LOOK_EVERY` after it.
    looked: Option<Instant>,
}

impl Neighbours {
    /// `wal`: the database is in WAL mode, where every open connection
    /// holds a lock, so only the WAL index's locks tell a transaction.
    pub(super) fn new(path: &Path, wal: bool) -> Neighbours {
        Neighbours {
            path: path.to_owned(),
            probe: probe::Probe::new(path, wal),
            watcher: None,
            blind: false,
            looked: None,
        }
    }

    /// From now on, looks for other processes with the file open on a
    /// thread of its own (see [`Watcher`]), until this is dropped; not
    /// where a look has found that the system cannot tell.
    pub(super) fn watch(&mut self) {
        if self.watcher.is_none() && !self.blind {
            // A look taken ahead may be most of `LOOK_EVERY` old already.
            let age = self.looked.map_or(Duration::ZERO, |at| at.elapsed());
            self.watcher = Watcher::start(&self.path, LOOK_EVERY.saturating_sub(age));
        }
    }

    /// The watcher's last look found another process with the file open.
    pub(super) fn open_lately(&self) -> bool {
        self.watcher
            .as_ref()
            .is_some_and(|w| w.open.load(Ordering::Relaxed))
    }

    /// The database or one of its side files was written within `within`.
    /// An empty `-wal` does not count: SQLite makes one when a connection
    /// opens a WAL database whose last user closed it (the run's own
    /// connection, too), and one emptied by a checkpoint leaves the
    /// database file itself written.
    pub(super) fn written_within(&self, within: Duration) -> bool {
        ["", "-wal", "-journal"].iter().any(|suffix| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(suffix);
            std::fs::metadata(PathBuf::from(name)).is_ok_and(|m| {
                let fresh = m.modified().is_ok_and(|t| {
                    SystemTime::now()
                        .duration_since(t)
                        .map_or(true, |age| age < within)
                });
                fresh && (*suffix != "-wal" || m.len() > 0)
            })
        })
    }

    /// Whether another process has the file open; `None` where the
    /// system cannot tell (see `platform`), which [`Neighbours::watch`]
    /// then remembers.
    pub(super) fn open_elsewhere(&mut self) -> Option<bool> {
        let (sight, at) = looked_ahead(&self.path)
            .unwrap_or_else(|| (open_by_others(&self.path), Instant::now()));
        self.looked = Some(at);
        match sight {
            Sight::Seen(v) => Some(!v.is_empty()),
            Sight::Blind => {
                self.blind = true;
                None
            }
        }
    }

    pub(super) fn locks(&mut self) -> Locks {
        self.probe.locks()
    }
}

/// Looks for other processes that have the file open, on a thread of its
/// own, until dropped. A look reads where every descriptor of every
/// process points: ~30 ms beside a server holding 10,000 sockets, which
/// on the batch's own thread, once a second, slowed a run by 5–8% on a
/// busy machine (the fan-out benchmark). The looks come every
/// `LOOK_EVERY`, or further apart when they are slow, so they take at
/// most one `LOOK_SHARE`th of a core.
struct Watcher {
    /// What the last look found: another process has the file open.
    open: Arc<AtomicBool>,
    /// Dropped with the watcher, which ends the thread's wait.
    _stop: mpsc::Sender<()>,
}

impl Watcher {
    /// `None` where the thread cannot start: the run then sees others by
    /// their commits and locks only. The first look comes after `first`
    /// (`LOOK_EVERY` after the run's own look).
    fn start(path: &Path, first: Duration) -> Option<Watcher> {
        let open = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let (path, found) = (path.to_owned(), open.clone());
        let look = move || {
            let mut pause = first;
            while stopped.recv_timeout(pause) == Err(RecvTimeoutError::Timeout) {
                let began = Instant::now();
                match open_by_others(&path) {
                    Sight::Seen(v) => found.store(!v.is_empty(), Ordering::Relaxed),
                    // Nothing to look at any more (no /proc): what was
                    // seen last no longer holds.
                    Sight::Blind => return found.store(false, Ordering::Relaxed),
                }
                pause = next_look(began.elapsed());
            }
        };
        std::thread::Builder::new()
            .name("batchsse-neighbours".into())
            .spawn(look)
            .ok()?;
        Some(Watcher { open, _stop: stop })
    }
}

/// How long the watcher waits after a look that took `took`.
fn next_look(took: Duration) -> Duration {
    LOOK_EVERY.max(took * LOOK_SHARE)
}

#[cfg(unix)]
mod probe {
    //! `fcntl(F_GETLK)` on the bytes SQLite's unix VFS locks. POSIX locks
    //! belong to a process, so the probe never sees the run's own.
    use std::fs::File;
    use std::mem::ManuallyDrop;
    use std::os::fd::AsRawFd;
    use std::path::{Path, PathBuf};

    use super::Locks;

    /// The rollback journal's lock bytes: PENDING, RESERVED, then the
    /// 510-byte SHARED range (SQLite's os_unix.c).
    const PENDING: i64 = 0x4000_0000;
    const DB_LOCKS: i64 = 512;
    /// The WAL index's lock bytes: write, checkpoint, recover, five read
    /// marks (held through a transaction), then the one every open
    /// connection holds (DMS).
    const SHM_LOCKS: i64 = 120;
    const SHM_TX_LEN: i64 = 8;
    const SHM_LEN: i64 = 9;

    pub(super) struct Probe {
        /// Never closed: closing any descriptor of a file drops every
        /// POSIX lock this process holds on it, SQLite's included. One of
        /// each per run, so nothing piles up.
        db: Option<ManuallyDrop<File>>,
        shm: Option<ManuallyDrop<File>>,
        shm_path: PathBuf,
        wal: bool,
    }

    impl Probe {
        pub(super) fn new(path: &Path, wal: bool) -> Probe {
            let mut shm_path = path.as_os_str().to_owned();
            shm_path.push("-shm");
            Probe {
                db: File::open(path).ok().map(ManuallyDrop::new),
                shm: None,
                shm_path: PathBuf::from(shm_path),
                wal,
            }
        }

        pub(super) fn locks(&mut self) -> Locks {
            if self.shm.is_none() && self.shm_path.exists() {
                self.shm = File::open(&self.shm_path).ok().map(ManuallyDrop::new);
            }
            let db = |start, len| self.db.as_deref().is_some_and(|f| held(f, start, len));
            let shm = |start, len| self.shm.as_deref().is_some_and(|f| held(f, start, len));
            let db_any = db(PENDING, DB_LOCKS);
            let shm_tx = shm(SHM_LOCKS, SHM_TX_LEN);
            Locks {
                any: db_any || shm_tx || shm(SHM_LOCKS + SHM_TX_LEN, SHM_LEN - SHM_TX_LEN),
                writing: db(PENDING, 2) || shm(SHM_LOCKS, 1),
                busy: if self.wal { shm_tx } else { db_any },
            }
        }
    }

    /// Another process holds a lock that overlaps `len` bytes at `start`.
    fn held(file: &File, start: i64, len: i64) -> bool {
        // SAFETY: `flock` is plain data, all zeroes is a valid value, and
        // F_GETLK only writes into the struct it is given.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_WRLCK as _;
        lock.l_whence = libc::SEEK_SET as _;
        lock.l_start = start as _;
        lock.l_len = len as _;
        // SAFETY: a valid descriptor and a valid `flock`.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
        // F_UNLCK is an int on Linux and a short (as `l_type` is) on macOS.
        rc == 0 && lock.l_type != libc::F_UNLCK as libc::c_short
    }
}

#[cfg(not(unix))]
mod probe {
    //! Elsewhere SQLite locks with the platform's own calls, which have no
    //! way to ask without taking: nothing is seen, and the governor goes
    //! by commits, recent writes and its quiet time.
    use std::path::Path;

    use super::Locks;

    pub(super) struct Probe;

    impl Probe {
        pub(super) fn new(_: &Path, _: bool) -> Probe {
            Probe
        }

        pub(super) fn locks(&mut self) -> Locks {
            Locks::default()
        }
    }
}

#[cfg(all(test, unix))]
pub(super) mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    use super::*;

    /// A Python child that opens the file, runs `sql` (statements split at
    /// `;`), says so, and holds
    /// the connection until its stdin closes. `None` (the test skipped)
    /// without python3, unless `CI` is set.
    pub(in crate::run) fn holder(path: &Path, sql: &str) -> Option<Child> {
        let script = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
for sql in sys.argv[2].split(';'):
    c.execute(sql).fetchall()
print('ready', flush=True)
sys.stdin.read()
"#;
        let spawned = crate::platform::spawn_alone(
            Command::new("python3")
                .args(["-c", script])
                .arg(path)
                .arg(sql)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        );
        let Ok(mut child) = spawned else {
            assert!(std::env::var_os("CI").is_none(), "python3 is needed");
            eprintln!("skipped: no python3 to hold a connection open");
            return None;
        };
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        BufReader::new(out).read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready");
        Some(child)
    }

    pub(in crate::run) fn release(mut child: Child) {
        drop(child.stdin.take());
        child.wait().expect("the holder exits");
    }

    fn db(wal: bool) -> (tempfile::TempDir, PathBuf, rusqlite::Connection) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("n.sqlite");
        let c = rusqlite::Connection::open(&path).expect("open");
        let mode = if wal { "WAL" } else { "DELETE" };
        c.query_row(&format!("PRAGMA journal_mode = {mode}"), [], |_| Ok(()))
            .expect("mode");
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
            .expect("table");
        (dir, path, c)
    }

    #[test]
    fn looks_come_every_second_or_further_apart_when_slow() {
        let ms = Duration::from_millis;
        assert_eq!(next_look(ms(2)), LOOK_EVERY);
        assert_eq!(next_look(ms(20)), LOOK_EVERY);
        assert_eq!(next_look(ms(30)), ms(1500));
        assert_eq!(next_look(ms(200)), ms(10_000));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_watcher_sees_a_process_open_the_file_and_close_it() {
        let (_dir, path, _c) = db(false);
        let mut n = Neighbours::new(&path, false);
        n.watch();
        let until = |want: bool| {
            let start = Instant::now();
            while n.open_lately() != want {
                assert!(start.elapsed() < 4 * LOOK_EVERY, "never saw open = {want}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        assert!(!n.open_lately(), "only this process yet");
        let Some(other) = holder(&path, "SELECT 1") else {
            return;
        };
        until(true);
        release(other);
        until(false);
    }

    /// The tests that take a look ahead, one at a time: it is one per
    /// process.
    static AHEAD_TESTS: Mutex<()> = Mutex::new(());

    #[cfg(target_os = "linux")]
    #[test]
    fn the_first_look_takes_the_look_begun_ahead_of_its_own_file_only() {
        let _one = AHEAD_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let (_dir, path, _c) = db(false);
        let (_other_dir, other, _o) = db(false);
        let Some(child) = holder(&path, "SELECT 1") else {
            return;
        };
        let mut n = Neighbours::new(&path, false);
        // Another file's look (nobody has it open) is not this one's, nor
        // taken by it.
        look_ahead(&other);
        assert_eq!(n.open_elsewhere(), Some(true), "looked afresh");
        assert!(AHEAD.lock().unwrap().is_some(), "left for its own file");
        // This file's, taken while the child had it, answers the first
        // look even after the child has gone; the next looks afresh.
        look_ahead(&path);
        let start = Instant::now();
        while !AHEAD
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|a| a.1.is_finished())
        {
            assert!(start.elapsed() < Duration::from_secs(10), "no look");
            std::thread::sleep(Duration::from_millis(5));
        }
        release(child);
        assert_eq!(n.open_elsewhere(), Some(true), "the look ahead's answer");
        assert_eq!(n.open_elsewhere(), Some(false), "taken once");
    }

    /// The first look taken ahead may be most of a second old: the
    /// watcher's first look then comes a second after it was taken, not
    /// a second after the run began, which would leave a process that
    /// opened the file meanwhile unseen for up to two.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_watcher_looks_first_a_second_after_the_look_taken_ahead() {
        let _one = AHEAD_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let (_dir, path, _c) = db(false);
        // A child that opens the file only when told to.
        let script = "import sqlite3, sys\nsys.stdin.readline()\nc = sqlite3.connect(sys.argv[1])\nc.execute('SELECT 1').fetchall()\nprint('ready', flush=True)\nsys.stdin.read()\n";
        let Ok(mut child) = crate::platform::spawn_alone(
            Command::new("python3")
                .args(["-c", script])
                .arg(&path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        ) else {
            assert!(std::env::var_os("CI").is_none(), "python3 is needed");
            return;
        };
        look_ahead(&path);
        // On a loaded machine the look itself may take a while: had it not
        // ended before the child opens the file, it would see the child.
        let began = Instant::now();
        while !AHEAD
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|(_, look)| look.is_finished())
        {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "the look never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let taken = Instant::now();
        // Old enough that a first look a second after now would come too
        // late, young enough to stay fresh while the child opens the file.
        std::thread::sleep(Duration::from_millis(450));
        let mut stdin = child.stdin.take().expect("stdin");
        std::io::Write::write_all(&mut stdin, b"open\n").expect("told");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        BufReader::new(out).read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready");
        let mut n = Neighbours::new(&path, false);
        assert_eq!(n.open_elsewhere(), Some(false), "the look taken ahead");
        n.watch();
        while !n.open_lately() {
            let waited = taken.elapsed();
            assert!(waited < LOOK_EVERY * 13 / 10, "unseen after {waited:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(stdin);
        child.wait().expect("the child exits");
    }

    #[test]
    fn the_probe_sees_a_wal_connection_between_its_requests_until_it_closes() {
        let (_dir, path, _mine) = db(true);
        let mut n = Neighbours::new(&path, true);
        assert_eq!(n.locks(), Locks::default(), "only this process yet");
        let Some(child) = holder(&path, "SELECT * FROM t") else {
            return;
        };
        let seen = n.locks();
        assert!(seen.any && !seen.writing && !seen.busy, "{seen:?}");
        release(child);
        assert_eq!(n.locks(), Locks::default(), "gone with its process");
    }

    #[test]
    fn the_probe_sees_a_rollback_transaction_and_a_writer_while_they_last() {
        let (_dir, path, _mine) = db(false);
        let mut n = Neighbours::new(&path, false);
        let Some(reader) = holder(&path, "BEGIN; SELECT * FROM t") else {
            return;
        };
        let seen = n.locks();
        release(reader);
        let Some(writer) = holder(&path, "BEGIN IMMEDIATE") else {
            return;
        };
        let writing = n.locks();
        release(writer);
        assert!(seen.any && seen.busy && !seen.writing, "{seen:?}");
        assert!(
            writing.any && writing.writing && writing.busy,
            "{writing:?}"
        );
        assert_eq!(n.locks(), Locks::default());
    }

    #[test]
    fn a_write_shows_in_the_modification_time() {
        let (_dir, path, _mine) = db(false);
        let n = Neighbours::new(&path, false);
        assert!(n.written_within(Duration::from_secs(60)));
        age(&path, 3600);
        assert!(!n.written_within(Duration::from_secs(60)));
    }

    /// Sets `path`'s modification time `secs` back.
    fn age(path: &Path, secs: u64) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open")
            .set_modified(SystemTime::now() - Duration::from_secs(secs))
            .expect("mtime");
    }

    #[test]
    fn an_empty_wal_made_just_now_is_no_write_but_one_with_frames_is() {
        let (_dir, path, mine) = db(true);
        drop(mine); // the last connection: SQLite removes the -wal
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        assert!(!wal.exists());
        age(&path, 3600);
        let n = Neighbours::new(&path, true);
        assert!(!n.written_within(Duration::from_secs(60)));
        // Opening the file again makes an empty -wal: nobody wrote.
        let reader = rusqlite::Connection::open(&path).expect("open");
        let rows: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("read");
        assert_eq!(rows, 1);
        assert_eq!(std::fs::metadata(&wal).expect("-wal").len(), 0);
        assert!(!n.written_within(Duration::from_secs(60)));
        // A commit puts frames in it.
        reader
            .execute("INSERT INTO t VALUES (2)", [])
            .expect("write");
        assert!(std::fs::metadata(&wal).expect("-wal").len() > 0);
        assert!(n.written_within(Duration::from_secs(60)));
    }
}
