//! What every request handler shares: the server's settings from the
//! command line, the event log, and the count of stream clients that the
//! wait-for-clients gate and `/status` read.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::events::log::EventLog;
use crate::lifecycle::{Cancel, Steering};

/// How the server answers, from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub token: Option<String>,
    /// `--control-token`: `POST /control` is off without one.
    pub control_token: Option<String>,
    pub cors: Option<String>,
    pub max_clients: usize,
    pub keep_alive: Duration,
    /// Where the server listens, once bound: on a loopback address only
    /// loopback names (and `allow_hosts`) may be in `Host`, against DNS
    /// rebinding.
    pub listen: Option<std::net::SocketAddr>,
    /// `--allow-host`: more names `Host` may carry (a reverse proxy's).
    pub allow_hosts: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: None,
            control_token: None,
            cors: None,
            max_clients: 10_000,
            keep_alive: Duration::from_secs(15),
            listen: None,
            allow_hosts: Vec::new(),
        }
    }
}

/// What every request handler shares.
pub struct State {
    pub log: Arc<EventLog>,
    pub config: Config,
    clients: AtomicUsize,
    client_count: watch::Sender<usize>,
    /// The run's cancel and steering, for `POST /control`; none for a
    /// server that only shows a run.
    pub control: Option<(Arc<Cancel>, Arc<Steering>)>,
    /// A relay's: the log is a copy of a run published to Redis, which may
    /// trail what a client has already seen elsewhere.
    pub relayed: bool,
}

impl State {
    /// A server that can steer its run (`POST /control`).
    pub fn steered(
        log: Arc<EventLog>,
        config: Config,
        cancel: Arc<Cancel>,
        steering: Arc<Steering>,
    ) -> Arc<State> {
        Arc::new(State {
            control: Some((cancel, steering)),
            ..Self::plain(log, config)
        })
    }

    /// A relay's server: it only shows the run (`POST /control` is
    /// refused), from a log copied from Redis.
    pub fn relayed(log: Arc<EventLog>, config: Config) -> Arc<State> {
        Arc::new(State {
            relayed: true,
            ..Self::plain(log, config)
        })
    }

    /// A server with neither control nor a relay's log, for tests.
    #[cfg(test)]
    pub fn watching_for_tests(log: Arc<EventLog>) -> Arc<State> {
        Arc::new(Self::plain(log, Config::default()))
    }

    fn plain(log: Arc<EventLog>, config: Config) -> State {
        State {
            log,
            config,
            clients: AtomicUsize::new(0),
            client_count: watch::channel(0).0,
            control: None,
            relayed: false,
        }
    }

    /// Stream clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::SeqCst)
    }

    /// Wakes whenever the number of stream clients changes.
    pub fn watch_clients(&self) -> watch::Receiver<usize> {
        self.client_count.subscribe()
    }

    /// A slot for one more stream client, or `None` at `max_clients`.
    pub(super) fn try_add_client(self: &Arc<Self>) -> Option<ClientGuard> {
        let max = self.config.max_clients;
        self.clients
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.client_count.send_replace(self.clients());
        Some(ClientGuard(self.clone()))
    }
}

/// Counts a stream client for as long as its stream lives.
pub struct ClientGuard(Arc<State>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::SeqCst);
        self.0.client_count.send_replace(self.0.clients());
    }
}
