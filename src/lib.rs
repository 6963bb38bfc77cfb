//! batchsse as a library: the parts the binary wires together, public so
//! that integration tests and benchmarks can reuse the SSE parser and the
//! sample data. The command line in `main.rs` is the supported interface.

pub mod app;
pub mod cli;
pub mod dashboard;
pub mod demo;
pub mod direct;
pub mod error;
pub mod event;
pub mod event_log;
pub mod fanout;
pub mod human;
pub mod lifecycle;
pub mod plan;
pub mod run;
pub mod server;
pub mod sse;
pub mod terminal;
pub mod watch;
