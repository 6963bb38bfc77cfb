//! Taking a run back. `run --undo` records, on the batch's own connection,
//! what every chunk changed (`record`, in the format of `codec`, for the
//! tables `shape` can key) into a table of the database file, written in
//! the chunk's own transaction (`store`); `batchsse undo` applies the
//! records newest first, chunk by chunk (`apply`, `revert`; a chunk's
//! record of one kind of change in one statement, `bulk`).
//!
//! No session extension: rusqlite's `session` feature builds through
//! bindgen, which needs libclang, and the README's set-up must need only a
//! Rust toolchain. The update hook and TEMP triggers are seen only by the
//! connection that made them, so the application's writes are never
//! recorded, while the writes of the plan's own triggers and foreign-key
//! actions are.

mod added;
pub mod apply;
mod bulk;
pub(super) mod codec;
mod dangling;
mod guard;
mod hash;
mod overlap;
#[cfg(batchsse_preupdate)]
mod preupdate;
mod raw;
pub mod rebuilt;
mod record;
mod revert;
mod shape;
#[cfg(batchsse_preupdate)]
mod spill;
mod stash;
pub mod store;

pub use guard::Guard;
pub use record::{Hook, Recorder, is_own_temp};

/// Whether runs are recorded through SQLite's pre-update hook: in builds
/// that have it, unless `BATCHSSE_UNDO_HOOK=off` asks for the ways a build
/// without it records (reading around chunks, TEMP triggers), to compare
/// them or to work around the hook.
pub fn preupdate() -> bool {
    cfg!(batchsse_preupdate) && std::env::var_os("BATCHSSE_UNDO_HOOK").is_none_or(|v| v != "off")
}
pub use shape::{refuse_unrecordable, refuse_unrecorded_part, refuse_unrecorded_rest};
