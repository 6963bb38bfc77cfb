//! Integration tests: one test binary (fast to build) that runs the real
//! `batchsse` executable against real SQLite files and reads its real HTTP
//! stream. Shared helpers live in `util`.

mod util;

mod browser;
mod control;
mod error_paths;
mod expect;
mod fanout;
mod fuzz;
mod govern;
mod hangs;
mod hostile;
mod hostile_db;
mod hostile_escape;
mod hostile_http;
mod hostile_keys;
mod hostile_resume;
mod hostile_schema;
mod hostile_walk;
mod names;
mod operate;
mod ops;
mod pace;
mod redis_prod;
mod relay;
mod rowid;
mod run;
mod safety;
mod shell_words;
mod temp_steps;
mod terminal;
mod undo;
mod undo_clear;
mod undo_hostile;
mod undo_kept;
mod undo_partial;
mod undo_parts;
mod undo_scale;
mod undo_stash;
mod undo_tables;
mod undo_unchanged;
mod views;
mod walk;
mod watch;
