//! `batchsse relay`: serves a run published to Redis, from any host, with
//! the run's own ids and bytes. Its event log is filled from Redis instead
//! of by a runner, and the same server code serves it; the lifecycle is a
//! run's without the run: connect → listen → follow the stream →
//! `finished` → linger → drain → exit.

use std::process::ExitCode;

use crate::cli::RelayArgs;
use crate::cli::config::RelayConfig;
use crate::error::{UsageError, exit};
use crate::events::log::EventLog;
use crate::lifecycle;
use crate::relay::source::Source;
use crate::serve as server;

pub fn run(args: RelayArgs) -> anyhow::Result<ExitCode> {
    let config = RelayConfig::from_args(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let code = rt.block_on(serve(config))?;
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(ExitCode::from(code))
}

async fn serve(config: RelayConfig) -> Result<u8, UsageError> {
    let RelayConfig {
        target,
        which,
        serve: s,
    } = config;
    let source = Source::open(target, &which).await?;
    let listener = server::bind(s.addr).await?;
    super::announce(&listener, &s, None);
    let log = std::sync::Arc::new(EventLog::new());
    let mut config = s.config;
    config.listen = listener.local_addr().ok();
    let state = server::State::relayed(log.clone(), config);
    let filling = tokio::spawn(source.fill(which, log.clone()));
    let signals = lifecycle::count_signals();
    let stop = {
        let (log, mut signals) = (log.clone(), signals);
        async move {
            tokio::select! {
                () = lifecycle::stop_after_linger(log, s.linger, signals.clone()) => {}
                // Before `finished`, a signal stops the relay itself.
                _ = signals.wait_for(|n| *n > 0) => {}
            }
        }
    };
    server::serve(listener, state, stop, s.drain).await;
    filling.abort();
    // A signal during the linger only cuts it short, as for `run`.
    Ok(if log.finished_id().is_some() {
        exit::OK
    } else {
        crate::errln!("batchsse: relay stopped before the run finished");
        exit::INTERRUPTED
    })
}
