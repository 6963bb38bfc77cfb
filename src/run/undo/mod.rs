//! Taking a run back. `run --undo` records, on the batch's own connection,
//! the old values of every row each chunk changes (`record`), into tables
//! of the database file written in the chunk's own transaction (`store`);
//! `batchsse undo` applies them newest first, chunk by chunk (`apply`).
//!
//! The recording is done by TEMP triggers: SQLite's session extension would
//! need rusqlite's `session` feature, whose bindgen build needs libclang,
//! and the README's set-up must need only a Rust toolchain. A TEMP trigger
//! is seen only by the connection that made it, so the application's writes
//! are never recorded, while the writes of the plan's own triggers and
//! foreign-key actions are.

pub mod apply;
mod record;
pub mod store;

pub use record::{Recorder, refuse_unrecordable};
