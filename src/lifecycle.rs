//! The one lifecycle of a process that runs a batch, in this order:
//!
//! 1. **check** — signals are caught from before the pre-run check; one
//!    there exits 130 at once, since nothing has been written;
//! 2. **wait for clients** — with `--wait-for-clients N`, the first step
//!    waits (no polling) until N stream clients are connected;
//! 3. **run** — the first Ctrl-C or SIGTERM cancels: SQLite's interrupt stops
//!    the running statement and the current chunk rolls back; a second
//!    quits at once (no transaction is ever committed by then);
//! 4. **finished** — the runner logs `finished`;
//! 5. **linger** — with `--linger`, late clients still get the whole
//!    replay; a signal cuts it short;
//! 6. **stop accepting**, then **drain** — open streams get their tail,
//!    bounded by `--drain-timeout`;
//! 7. **exit** with the run's status.
//!
//! [`Cancel`] is the runner's side of phase 3.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, InterruptHandle};

/// Cancellation shared between the signal handler and the runner: a flag,
/// SQLite's interrupt for the running statement, and a wake-up for sleeps.
#[derive(Default)]
pub struct Cancel {
    flag: AtomicBool,
    interrupt: Mutex<Option<InterruptHandle>>,
    wake: Condvar,
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let guard = self.interrupt.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = guard.as_ref() {
            h.interrupt();
        }
        self.wake.notify_all();
    }

    /// Sleeps up to `d`; true when woken by cancellation.
    pub fn sleep(&self, d: Duration) -> bool {
        // A huge --sleep is "until cancelled", not an overflow.
        let far = Duration::from_secs(100 * 365 * 24 * 3600);
        let deadline = Instant::now() + d.min(far);
        let mut guard = self.interrupt.lock().unwrap_or_else(|p| p.into_inner());
        while !self.is_cancelled() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            guard = self
                .wake
                .wait_timeout(guard, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        self.is_cancelled()
    }

    /// Lets `cancel` interrupt statements running on `conn`.
    pub fn attach(&self, conn: &Connection) {
        *self.interrupt.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(conn.get_interrupt_handle());
    }
}
