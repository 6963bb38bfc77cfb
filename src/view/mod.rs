//! What a person sees: the terminal's bars and lines (`terminal`), drawn
//! from the event log of a local run or from a stream `batchsse watch`
//! follows (`follow`); `github` adds GitHub Actions' workflow commands.

mod edge;
pub mod follow;
pub mod github;
pub mod terminal;
