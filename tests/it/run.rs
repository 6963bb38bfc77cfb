//! `batchsse run` end to end: the real binary, a real SQLite file, the real
//! stream over HTTP.

use crate::util::*;

#[test]
fn help_lists_the_subcommands() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("run") && out.contains("demo"), "{out}");
}
