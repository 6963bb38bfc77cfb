//! What a run says and how it travels: typed events (`event`), the
//! append-only log that every reader follows by cursor (`log`), and the
//! server-sent-events framing (`sse`); `chunk_times` keeps the chunk
//! histogram that `/metrics` shows.

pub mod chunk_times;
pub mod event;
pub mod log;
pub mod schema;
pub mod sse;

pub use event::*;
