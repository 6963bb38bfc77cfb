//! Everything batchsse does differently on Linux, on other Unix systems
//! (macOS) and on Windows, in one place: nothing outside this file asks
//! which system it runs on.
//!
//! | What | Linux | macOS, other Unix | Windows |
//! |---|---|---|---|
//! | Who else has the database open ([`open_by_others`], [`open_by_this_program`]): the live pace, the names in a lock message, `checkpoint clear` and `undo clear` refused under a live run, batchsse's emptied tables dropped after a complete undo | scans `/proc/*/fd` (without a `/proc`: cannot tell) | cannot tell ([`Sight::Blind`]) | cannot tell ([`Sight::Blind`]) |
//! | Whether `watch --pid`'s process still runs ([`process_alive`]) | `/proc/PID/stat` (a zombie counts as gone) | `kill(pid, 0)` (a zombie counts as running) | `OpenProcess` + `WaitForSingleObject` |
//! | Whether the server `watch --pid` reached is another run's ([`another_run`]) | `/proc`: a live process of this program (by name) that the pid did not start | cannot tell (followed) | cannot tell (followed) |
//! | What stops a run ([`StopSignals`]) | Ctrl-C (SIGINT), SIGTERM, SIGHUP (unless ignored, as under `nohup`) | the same | Ctrl-C, Ctrl-Break |
//! | Whether SQLite may make its journal beside the file ([`may_create_in`]) | `access(W_OK)` | `access(W_OK)` | cannot tell (found at the first write) |
//! | A database's path from SQLite's bytes ([`path_from_bytes`]) | any bytes | any bytes | UTF-8 |
//! | Appending to a file named by the environment ([`open_to_append`]) | a FIFO no one reads is refused at once (`O_NONBLOCK`) | the same | opened as asked |
//! | Open files a server may hold ([`raise_open_file_limit`], [`can_open_files`], [`out_of_files`], [`system_out_of_files`]) | soft limit raised to the hard one | the same (macOS: at most 10,240 if the hard one is refused) | no such limit on sockets |
//! | A reader of standard output or standard error that is gone, told without a write ([`reader_gone`]) | poll's `POLLERR`/`POLLHUP` | the same | cannot tell (found at the next write) |
//! | Keys typed under the bars ([`Unechoed`]) | not echoed (termios `ECHO` off while the bars are drawn, in the foreground) | the same | the console echoes only what a program reads: nothing to do |
//!
//! Where the system cannot tell who else has the file open, the run does
//! not take the file for idle: it starts at the live pace, and goes to
//! the idle pace only once 5 s pass with no commit from another
//! connection (`PRAGMA data_version`, which works everywhere); its
//! messages say why. On Windows, `taskkill /F` (or closing the console)
//! ends a run without a rollback of its own: SQLite rolls the open chunk
//! back from its journal the next time the file is opened, as after a
//! power cut.

use std::path::Path;

/// A path from the bytes SQLite keeps it in: any bytes on Unix, UTF-8 on
/// Windows (where SQLite converts the name).
pub fn path_from_bytes(bytes: &[u8]) -> std::path::PathBuf {
    #[cfg(unix)]
    return <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes).into();
    #[cfg(not(unix))]
    return String::from_utf8_lossy(bytes).into_owned().into();
}

/// What this system can tell about the other processes that have a file
/// open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sight {
    /// The other processes (pid, name) that have it open; empty: none.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Seen(Vec<(u32, String)>),
    /// This system gives batchsse no way to list them.
    Blind,
}

/// The other processes (pid, name) that have the database `path` or one of
/// its side files (`-wal`, `-shm`, `-journal`) open.
pub fn open_by_others(path: &Path) -> Sight {
    #[cfg(target_os = "linux")]
    return proc_scan(path, None).map_or(Sight::Blind, Sight::Seen);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        Sight::Blind
    }
}

/// The other processes of this same program (by name) that have `path`
/// open for writing: a run or an undo on the file (a run that has ended
/// and lingers only reads it), as far as the system tells (empty where it
/// cannot).
pub fn open_by_this_program(path: &Path) -> Vec<u32> {
    #[cfg(target_os = "linux")]
    {
        let Some(me) = proc_comm("self") else {
            return Vec::new();
        };
        proc_scan(path, Some(&me))
            .unwrap_or_default()
            .into_iter()
            .map(|(pid, _)| pid)
            .collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        Vec::new()
    }
}

/// The first argument process `pid` was started with after the program's
/// name (its subcommand, for this program), as far as the system tells.
pub fn first_argument(pid: u32) -> Option<String> {
    arguments(pid)?.into_iter().nth(1)
}

/// The arguments process `pid` was started with, its program's name
/// first, as far as the system tells.
pub fn arguments(pid: u32) -> Option<Vec<String>> {
    #[cfg(target_os = "linux")]
    {
        let line = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let line = line.strip_suffix(&[0]).unwrap_or(&line);
        let args = line.split(|b| *b == 0);
        Some(
            args.map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// The path `given` names for process `pid`, which was given it: a
/// relative one from its working directory, and one of its own
/// descriptors (`/dev/stdin`, `/dev/fd/N`, `/proc/self/…`) as its, not
/// this process's (`--plan /dev/stdin < plan.json`). As far as the system
/// tells.
pub fn path_seen_by(pid: u32, given: &str) -> Option<std::path::PathBuf> {
    #[cfg(target_os = "linux")]
    {
        let given = Path::new(given);
        // Joined only when there is more: `join("")` would add a `/`.
        let own = |from: &str, to: String| {
            let rest = given.strip_prefix(from).ok()?;
            let to = std::path::PathBuf::from(to);
            Some(match rest.as_os_str().is_empty() {
                true => to,
                false => to.join(rest),
            })
        };
        own("/dev/stdin", format!("/proc/{pid}/fd/0"))
            .or_else(|| own("/dev/stdout", format!("/proc/{pid}/fd/1")))
            .or_else(|| own("/dev/stderr", format!("/proc/{pid}/fd/2")))
            .or_else(|| own("/dev/fd", format!("/proc/{pid}/fd")))
            .or_else(|| own("/proc/self", format!("/proc/{pid}")))
            .or_else(|| own("/proc/thread-self", format!("/proc/{pid}/task/{pid}")))
            .or_else(|| {
                Some(
                    std::fs::read_link(format!("/proc/{pid}/cwd"))
                        .ok()?
                        .join(given),
                )
            })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (pid, given);
        None
    }
}

/// The device and inode of the regular file `path` names (links
/// followed), the same under each of its names, a hard link's included;
/// `None` for anything else (a pipe, a terminal), or where the system
/// does not tell.
pub fn regular_file_id(path: &Path) -> Option<(u64, u64)> {
    #[cfg(target_os = "linux")]
    {
        let meta = std::fs::metadata(path).ok()?;
        meta.is_file().then(|| file_id(&meta))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

/// Scans `/proc` for processes other than this one with a descriptor
/// open on `path` or a file whose name starts with it. A process whose
/// descriptors we may not read is skipped; `None` without a `/proc`.
/// `writers_named`: only processes of that name, and only descriptors of
/// the file itself open for writing, under any of its names.
#[cfg(target_os = "linux")]
fn proc_scan(path: &Path, writers_named: Option<&str>) -> Option<Vec<(u32, String)>> {
    #[cfg(test)]
    let _alone = SPAWNING.lock().unwrap_or_else(|p| p.into_inner());
    let procs = std::fs::read_dir("/proc").ok()?;
    let (Ok(db), Ok(meta)) = (std::fs::canonicalize(path), std::fs::metadata(path)) else {
        return Some(Vec::new());
    };
    let db = Target {
        path: db.to_string_lossy().into_owned(),
        id: file_id(&meta),
        writing: writers_named.is_some(),
    };
    let me = std::process::id();
    let mut found = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let comm = || {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            comm.trim().to_owned()
        };
        // Read first where it decides: few processes are this program's.
        let name = writers_named.map(|_| comm());
        if writers_named.is_some_and(|want| name.as_deref() != Some(want)) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if holds(fds, &db) {
            found.push((pid, name.unwrap_or_else(comm)));
        }
    }
    Some(found)
}

/// The file [`proc_scan`] looks for.
#[cfg(target_os = "linux")]
struct Target {
    /// Its canonical path.
    path: String,
    /// Its device and inode: the same file under another name (a hard
    /// link, or a container's mount of it, whose processes' descriptors
    /// name it by their own paths).
    id: (u64, u64),
    /// Only the file itself, open for writing (a run or an undo).
    writing: bool,
}

#[cfg(target_os = "linux")]
fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Whether a process's descriptors (`/proc/PID/fd`) hold `db`. A writer
/// opens the file itself read-write (a reader of a WAL file may open its
/// side files so too). A process whose first descriptor may not be read
/// (another user's) is passed over at once: the rest are refused alike,
/// and one such process can hold thousands.
#[cfg(target_os = "linux")]
fn holds(fds: std::fs::ReadDir, db: &Target) -> bool {
    for fd in fds.flatten() {
        let found = match std::fs::read_link(fd.path()) {
            Ok(t) if db.writing => {
                let same = t.to_string_lossy() == db.path
                    || std::fs::metadata(fd.path()).is_ok_and(|m| file_id(&m) == db.id);
                same && writable(&fd.path())
            }
            Ok(t) => t.to_string_lossy().starts_with(&db.path),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return false,
            Err(_) => false, // closed since it was listed
        };
        if found {
            return true;
        }
    }
    false
}

/// Whether the descriptor behind `/proc/PID/fd/N` is open for writing:
/// the link's owner write bit is.
#[cfg(target_os = "linux")]
fn writable(fd: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(fd).is_ok_and(|m| m.permissions().mode() & 0o200 != 0)
}

/// Whether process `pid` still runs.
pub fn process_alive(pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    if let Some(state) = proc_stat_after_name(pid) {
        return !(state.starts_with('Z') || state.starts_with('X'));
    }
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(windows)]
    {
        windows_process_alive(pid)
    }
}

/// Whether process `pid` is, as far as the system tells, another run of
/// this program than `run`'s: a live process of this same program (by
/// name) that is neither `run` nor one `run` started (itself, or through
/// a wrapper such as `timeout`, `sudo` or `sh -c`, which leave `$!` the
/// wrapper's pid). `watch --pid` then knows the server it reached is
/// another run's (one still lingering on the port). False wherever that
/// cannot be told: on other systems, and for a `pid` that is no such
/// process here (a run in a container, whose pids mean nothing outside
/// it, or on another machine behind a relay), so a run is never turned
/// away for want of a way to see it.
pub fn another_run(pid: u32, run: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        let same_program =
            proc_comm("self").is_some_and(|me| proc_comm(&pid.to_string()) == Some(me));
        pid != run && same_program && process_alive(pid) && !descends_from(pid, run)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (pid, run);
        false
    }
}

/// The command name of process `who` (a pid, or `self`), as `/proc`
/// keeps it; `None` where it cannot be read or is empty.
#[cfg(target_os = "linux")]
fn proc_comm(who: &str) -> Option<String> {
    let name = std::fs::read_to_string(format!("/proc/{who}/comm")).ok()?;
    Some(name.trim().to_owned()).filter(|n| !n.is_empty())
}

/// Process `pid`'s `/proc/PID/stat` after its command name (which is in
/// parentheses and may hold spaces): its state first, then its parent.
#[cfg(target_os = "linux")]
fn proc_stat_after_name(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.trim_start().to_owned())
}

/// Whether `run` is `pid`'s parent, or its parent's, and so on up.
#[cfg(target_os = "linux")]
fn descends_from(pid: u32, run: u32) -> bool {
    // After the command's name: the state, then the parent.
    let parent = |p: u32| -> Option<u32> {
        proc_stat_after_name(p)?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let mut at = pid;
    // A cycle cannot be, but a bound costs nothing.
    for _ in 0..4096 {
        match parent(at) {
            Some(p) if p == run => return true,
            Some(p) if p > 0 && p != at => at = p,
            _ => return false,
        }
    }
    false
}

/// Whether this process may make a file in `dir` (as SQLite makes its
/// rollback journal beside the database): `access(W_OK)`, which also
/// answers no on a read-only mount or an immutable folder, even for root.
/// `None` where the system gives no such answer.
pub fn may_create_in(dir: &Path) -> Option<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: a valid NUL-terminated path, only read.
        Some(unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Which file `path` names now (its device and inode), to tell it from
/// a file moved into its place later; `None` where the system does not
/// say (then nothing is done that depends on it).
pub fn file_identity(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Opens `path` to append to it, made if missing, without waiting: on
/// Unix a FIFO no one reads fails at once (ENXIO) instead of blocking the
/// process, past Ctrl-C, until someone does.
pub fn open_to_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    options.open(path)
}

/// Lifts the soft limit of open files to the hard one, as a server needs:
/// a shell's usual soft 1,024 (macOS: 256) is far below `--max-clients`,
/// and past it `accept` fails, so a few hundred half-open connections
/// would lock every new client out. A refusal leaves the limit as it was.
pub fn raise_open_file_limit() {
    #[cfg(unix)]
    // SAFETY: plain calls on this process's own limits, with a valid struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let current = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            // macOS refuses more than OPEN_MAX when the hard limit is unlimited.
            lim.rlim_cur = lim.rlim_max.min(10_240).max(current);
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The terminal's settings before [`Unechoed::begin`] turned its echo
/// off, until they are put back.
#[cfg(unix)]
static ECHOED: std::sync::Mutex<Option<libc::termios>> = std::sync::Mutex::new(None);

/// Keys typed while the bars are drawn are not echoed: the terminal
/// echoes Enter as a line feed, which moves the cursor a row below where
/// the bars' next draw counts from, and that draw left a copy of the
/// first bar behind. What is typed still reaches the shell after the run.
/// The echo comes back when this is dropped, or at [`echo_again`] (an
/// exit that drops nothing).
pub struct Unechoed(());

impl Unechoed {
    /// On the terminal the bars are drawn on (standard error), with this
    /// process in its foreground; `None` anywhere else. The terminal
    /// echoes what is typed on it whoever reads it, so standard input
    /// need not be that terminal.
    pub fn begin() -> Option<Unechoed> {
        #[cfg(unix)]
        // SAFETY: plain calls on descriptor 2 with a valid struct, which
        // tcgetattr fills before it is read.
        unsafe {
            let fg = libc::isatty(2) == 1 && libc::tcgetpgrp(2) == libc::getpgrp();
            let mut was: libc::termios = std::mem::zeroed();
            if !fg || libc::tcgetattr(2, &mut was) != 0 || was.c_lflag & libc::ECHO == 0 {
                return None;
            }
            let mut quiet = was;
            quiet.c_lflag &= !libc::ECHO;
            *ECHOED.lock().unwrap_or_else(|p| p.into_inner()) = Some(was);
            set_terminal(&quiet);
            quit::arm();
            Some(Unechoed(()))
        }
        #[cfg(not(unix))]
        None
    }
}

impl Drop for Unechoed {
    fn drop(&mut self) {
        echo_again();
    }
}

/// Puts the terminal's echo back, if [`Unechoed`] took it away. Not from
/// the background (Ctrl-Z, then `bg`): the shell put its own settings
/// back when the run stopped, and its line editor is using the terminal
/// now.
pub fn echo_again() {
    #[cfg(unix)]
    quit::disarm();
    #[cfg(unix)]
    if let Some(was) = ECHOED.lock().unwrap_or_else(|p| p.into_inner()).take() {
        // SAFETY: plain calls on this process and descriptor 2.
        if unsafe { libc::tcgetpgrp(2) == libc::getpgrp() } {
            set_terminal(&was);
        }
    }
}

/// Has a panic put the terminal's echo back before Rust reports it: a
/// bug that panics while the bars are drawn must not leave the user's
/// terminal without echo, and a panic in another thread than the bars'
/// drops nothing of theirs on the way out. Never waits for the lock (the
/// panic may have come while this thread held it).
pub fn echo_again_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        #[cfg(unix)]
        {
            use std::sync::TryLockError;
            let echoed = match ECHOED.try_lock() {
                Ok(g) => Some(g),
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            // SAFETY: plain calls on this process and descriptor 2.
            let fg = unsafe { libc::tcgetpgrp(2) == libc::getpgrp() };
            if let Some(was) = echoed.and_then(|mut e| e.take()).filter(|_| fg) {
                set_terminal(&was);
            }
        }
        report(info);
    }));
}

/// A Ctrl-\\ (SIGQUIT) ends the process where it is, dropping nothing,
/// and a shell without job control (`sh`, a script) keeps the terminal as
/// the process left it: while the echo is off, SIGQUIT (where nothing
/// else handles it) first turns the echo back on, then ends the process
/// as it would have.
#[cfg(unix)]
mod quit {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Whether the handler below is SIGQUIT's.
    static ARMED: AtomicBool = AtomicBool::new(false);

    pub(super) fn arm() {
        // SAFETY: sigaction with valid structs; the handler calls only
        // async-signal-safe functions.
        unsafe {
            let mut was: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGQUIT, std::ptr::null(), &mut was) != 0
                || was.sa_sigaction != libc::SIG_DFL
            {
                return; // ignored, or someone else's
            }
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_quit as extern "C" fn(libc::c_int) as libc::sighandler_t;
            act.sa_flags = libc::SA_RESETHAND;
            if libc::sigaction(libc::SIGQUIT, &act, std::ptr::null_mut()) == 0 {
                ARMED.store(true, Ordering::SeqCst);
            }
        }
    }

    pub(super) fn disarm() {
        if ARMED.swap(false, Ordering::SeqCst) {
            // SAFETY: puts back the default action this module replaced.
            unsafe { libc::signal(libc::SIGQUIT, libc::SIG_DFL) };
        }
    }

    /// Turns the echo back on (in the foreground only, as `echo_again`),
    /// then raises SIGQUIT again, now with its default action.
    extern "C" fn on_quit(sig: libc::c_int) {
        // SAFETY: tcgetpgrp, getpgrp, tcgetattr, tcsetattr, signal and
        // raise are async-signal-safe; the struct is valid.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetpgrp(2) == libc::getpgrp() && libc::tcgetattr(2, &mut t) == 0 {
                t.c_lflag |= libc::ECHO;
                libc::tcsetattr(2, libc::TCSANOW, &t);
            }
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

/// Sets standard error's terminal to `t`, with SIGTTOU ignored meanwhile:
/// a run sent to the background (Ctrl-Z, `bg`) would otherwise be stopped
/// by the call.
#[cfg(unix)]
fn set_terminal(t: &libc::termios) {
    // SAFETY: sigaction with valid structs, restoring the action it read;
    // tcsetattr on descriptor 2 with a valid struct.
    unsafe {
        let mut ignore: libc::sigaction = std::mem::zeroed();
        ignore.sa_sigaction = libc::SIG_IGN;
        let mut old: libc::sigaction = std::mem::zeroed();
        let swapped = libc::sigaction(libc::SIGTTOU, &ignore, &mut old) == 0;
        libc::tcsetattr(2, libc::TCSANOW, t);
        if swapped {
            libc::sigaction(libc::SIGTTOU, &old, std::ptr::null_mut());
        }
    }
}

/// Whether this process can open `n` more files now (Unix: `/dev/null`
/// `n` times; elsewhere, and where that cannot be opened at all, taken
/// for yes); if not, the error that said so (see [`out_of_files`] and
/// [`system_out_of_files`]).
pub fn can_open_files(n: usize) -> Result<(), std::io::Error> {
    #[cfg(unix)]
    {
        let mut open = Vec::with_capacity(n);
        for _ in 0..n {
            match std::fs::File::open("/dev/null") {
                Ok(f) => open.push(f),
                Err(e) if out_of_files(&e) => return Err(e),
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = n;
        Ok(())
    }
}

/// One of the process's standard streams that a program writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// Whether `out` is a pipe (or socket) whose reader is gone (`watch
/// --progress json | grep -m1 …` once grep has its line), told without
/// writing to it: poll's error or hang-up on it. False where that cannot
/// be told (a terminal, a file, Windows).
pub fn reader_gone(out: Output) -> bool {
    #[cfg(unix)]
    {
        let mut fd = libc::pollfd {
            fd: match out {
                Output::Stdout => 1,
                Output::Stderr => 2,
            },
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the length given, no wait.
        let ready = unsafe { libc::poll(&mut fd, 1, 0) };
        ready == 1 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
    }
    #[cfg(not(unix))]
    {
        let _ = out;
        false
    }
}

/// Whether `e` says the process (or the whole system) may open no more
/// files: a socket is one too, so `bind` and `accept` fail this way.
pub fn out_of_files(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    return matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Whether `e` says the whole system's table of open files is full
/// (ENFILE), which no `ulimit` of this process raises.
pub fn system_out_of_files(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    return e.raw_os_error() == Some(libc::ENFILE);
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// A process we may not open still exists; one we may is running until
/// its handle is signalled.
#[cfg(windows)]
fn windows_process_alive(pid: u32) -> bool {
    use windows_sys::Win32::Foundation::{
        CloseHandle, ERROR_ACCESS_DENIED, GetLastError, WAIT_TIMEOUT,
    };
    use windows_sys::Win32::System::Threading::{
        OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SYNCHRONIZE, WaitForSingleObject,
    };
    let access = PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_SYNCHRONIZE;
    // SAFETY: plain Win32 calls on a handle we own and close.
    unsafe {
        let h = OpenProcess(access, 0, pid);
        if h.is_null() {
            return GetLastError() == ERROR_ACCESS_DENIED;
        }
        let running = WaitForSingleObject(h, 0) == WAIT_TIMEOUT;
        CloseHandle(h);
        running
    }
}

/// The requests to stop a run: Ctrl-C, SIGTERM and SIGHUP (the terminal
/// closed, an SSH session dropped) on Unix, Ctrl-C and Ctrl-Break on
/// Windows. Install inside the runtime; on Unix the handlers are in place
/// once [`StopSignals::install`] returns.
pub struct StopSignals {
    #[cfg(unix)]
    all: [Option<tokio::signal::unix::Signal>; 3],
    #[cfg(windows)]
    c: Option<tokio::signal::windows::CtrlC>,
    #[cfg(windows)]
    brk: Option<tokio::signal::windows::CtrlBreak>,
}

impl StopSignals {
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            // Under `nohup` SIGHUP is ignored, and must stay so: a handler
            // would stop the run the user meant to outlive the terminal.
            let hangup = (!hangup_ignored())
                .then(|| signal(SignalKind::hangup()).ok())
                .flatten();
            StopSignals {
                all: [
                    signal(SignalKind::interrupt()).ok(),
                    signal(SignalKind::terminate()).ok(),
                    hangup,
                ],
            }
        }
        #[cfg(windows)]
        {
            StopSignals {
                c: tokio::signal::windows::ctrl_c().ok(),
                brk: tokio::signal::windows::ctrl_break().ok(),
            }
        }
    }

    /// Resolves at the next request; never, if no handler could be
    /// installed.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        {
            let [int, term, hup] = &mut self.all;
            tokio::select! {
                Some(()) = maybe(int.as_mut().map(|s| s.recv())) => {}
                Some(()) = maybe(term.as_mut().map(|s| s.recv())) => {}
                Some(()) = maybe(hup.as_mut().map(|s| s.recv())) => {}
                else => std::future::pending::<()>().await,
            }
        }
        #[cfg(windows)]
        {
            tokio::select! {
                Some(()) = maybe(self.c.as_mut().map(|s| s.recv())) => {}
                Some(()) = maybe(self.brk.as_mut().map(|s| s.recv())) => {}
                else => std::future::pending::<()>().await,
            }
        }
    }
}

/// Whether this process was started with SIGHUP ignored (`nohup`).
#[cfg(unix)]
fn hangup_ignored() -> bool {
    // SAFETY: with a null new action, sigaction only reads the current one
    // into `old`, a plain C struct for which all zeroes is valid.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// The future's output, or never if there is none to wait for.
async fn maybe<F: Future<Output = Option<()>>>(f: Option<F>) -> Option<()> {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// In the unit tests, a process a test spawns holds, until it has
/// exec'd, a copy of every file the test process has open (the databases
/// of other tests included), and a look for other processes holding a
/// file, taken meanwhile, would see it there: tests spawn through
/// [`spawn_alone`], and looks wait for it.
#[cfg(test)]
static SPAWNING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Spawns `cmd` while no look for other processes holding a file runs
/// (see [`SPAWNING`]); `spawn` returns once the child has exec'd.
#[cfg(test)]
pub(crate) fn spawn_alone(cmd: &mut std::process::Command) -> std::io::Result<std::process::Child> {
    let _alone = SPAWNING.lock().unwrap_or_else(|p| p.into_inner());
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(process_alive(std::process::id()));
        let mut child = spawn_alone(&mut std::process::Command::new("true")).expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        assert!(!process_alive(pid));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn another_run_is_a_live_process_of_this_program_the_run_did_not_start() {
        let me = std::process::id();
        let parent = std::os::unix::process::parent_id();
        // Itself, or started by the run (here, this process by its parent).
        assert!(!another_run(me, me));
        assert!(!another_run(me, parent));
        // Not started by `run`: another run, if it is this program.
        let mut child =
            spawn_alone(std::process::Command::new("sleep").arg("30")).expect("spawn sleep");
        assert!(another_run(me, child.id()));
        // Another program, or no process at all, cannot be told for a run.
        assert!(!another_run(child.id(), me));
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert!(!another_run(child.id(), parent));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_process_holding_the_file_or_its_journal_is_seen_and_this_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("shop.sqlite");
        std::fs::write(&db, b"").expect("db");
        std::fs::write(dir.path().join("shop.sqlite-journal"), b"").expect("journal");
        let _mine = std::fs::File::open(&db).expect("open");
        assert_eq!(open_by_others(&db), Sight::Seen(Vec::new()));
        // `sleep` holds the journal open on descriptor 3 until killed.
        let mut holder = spawn_alone(
            std::process::Command::new("sh")
                .arg("-c")
                .arg("exec 3<\"$1\"; exec sleep 30")
                .arg("sh")
                .arg(dir.path().join("shop.sqlite-journal")),
        )
        .expect("spawn sh");
        let pid = holder.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let seen = loop {
            // Until `sleep` has replaced `sh`, which opened the journal.
            let s = open_by_others(&db);
            let slept = matches!(&s, Sight::Seen(v) if v.iter().any(|(_, n)| n == "sleep"));
            if slept || std::time::Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        holder.kill().expect("kill");
        holder.wait().expect("wait");
        assert_eq!(seen, Sight::Seen(vec![(pid, "sleep".to_owned())]));
    }

    /// A file moved into a path's place is another file, as the same file
    /// written to is not.
    #[cfg(unix)]
    #[test]
    fn a_file_moved_into_place_is_told_from_the_one_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, backup) = (dir.path().join("shop.sqlite"), dir.path().join("backup"));
        std::fs::write(&db, b"a").expect("db");
        let before = file_identity(&db);
        assert!(before.is_some());
        std::fs::write(&db, b"ab").expect("write");
        assert_eq!(file_identity(&db), before);
        std::fs::write(&backup, b"a").expect("backup");
        std::fs::rename(&backup, &db).expect("rename");
        assert_ne!(file_identity(&db), before);
        assert_eq!(file_identity(&dir.path().join("gone")), None);
    }
}
