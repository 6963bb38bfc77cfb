//! The keep-alive policy shared by both stream paths: when an idle stream
//! is owed a comment, what that comment is, and how the fan-out writer's
//! one timer serves every client at once.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// A stream that has written nothing for `every` gets [`KeepAlive::FRAME`],
/// a comment every client ignores, so that proxies and idle timeouts leave
/// the connection open and a client that left is found by a failed write.
///
/// A stream with its own timer (hyper's body) pings when [`due`] passes. The
/// fan-out writer has one timer for all its clients, set to the earliest
/// `due`; when it fires, the sweep pings every client idle for at least half
/// the period ([`due_in_sweep`]). Clients that joined or last wrote at
/// different times thus line up on one sweep instead of each waking the
/// writer, and none is pinged more often than every `every / 2`.
///
/// [`due`]: KeepAlive::due
/// [`due_in_sweep`]: KeepAlive::due_in_sweep
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    every: Duration,
}

impl KeepAlive {
    /// `sse::comment("keep-alive")`, built at compile time: a ping is then
    /// a reference count, not an allocation.
    pub const FRAME: Bytes = Bytes::from_static(b": keep-alive\n\n");

    pub fn new(every: Duration) -> KeepAlive {
        KeepAlive { every }
    }

    /// When a stream last written at `last_write` is owed a keep-alive.
    pub fn due(self, last_write: Instant) -> Instant {
        last_write + self.every
    }

    /// Whether a sweep at `now` pings a client last written at `last_write`.
    pub fn due_in_sweep(self, last_write: Instant, now: Instant) -> bool {
        now.duration_since(last_write) >= self.every / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::sse;

    #[test]
    fn the_frame_is_an_sse_comment() {
        assert_eq!(KeepAlive::FRAME, sse::comment("keep-alive"));
    }

    #[test]
    fn a_sweep_pings_clients_idle_for_half_the_period() {
        let k = KeepAlive::new(Duration::from_secs(15));
        let t = Instant::now();
        assert_eq!(k.due(t), t + Duration::from_secs(15));
        assert!(!k.due_in_sweep(t, t + Duration::from_millis(7_499)));
        assert!(k.due_in_sweep(t, t + Duration::from_millis(7_500)));
    }
}
