//! A person at a terminal: what the screen shows at the end of a run that
//! went wrong (Ctrl-C, the terminal closed, a lock held by another
//! process), on terminals narrow and wide. The run's stderr is a real
//! pseudo-terminal, so indicatif draws its bars; [`screen`] replays the
//! bytes on a small terminal model to see what is left on the screen.
#![cfg(unix)]

use crate::util::*;

/// `counters(rows)` walked in chunks of `size`, each row costing
/// `work` steps of a recursive query, so a chunk takes a while.
fn slow_plan(db: &TempDb, size: u64, work: u64) -> std::path::PathBuf {
    let sql = format!(
        "UPDATE t SET counter = counter + 1 + 0 * (WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < {work} + t.id * 0) SELECT count(*) FROM r) WHERE id BETWEEN :lo AND :hi"
    );
    let plan = serde_json::json!({
        "name": "slow",
        "steps": [
            {"name": "slow walk", "sql": sql, "chunk": {"table": "t", "key": "id", "size": size}},
            {"name": "after", "sql": "UPDATE t SET counter = counter + 1"}
        ]
    });
    db.file("slow.json", &plan.to_string())
}

/// A row of the screen that is a progress bar.
fn is_bar(row: &str) -> bool {
    row.starts_with("run  [") || row.starts_with("step [") || row.contains("] 0/2 steps")
}

/// Ctrl-C while the bars are drawn: its notice is printed above them, in
/// full, not drawn over by their next redraw, and once the run has
/// stopped no bar is left on the screen; the last lines say what happened.
#[test]
fn ctrl_c_under_the_bars_leaves_its_notice_whole_and_no_bar_behind() {
    let db = TempDb::counters(400);
    db.age();
    let plan = slow_plan(&db, 40, 50_000);
    let t = Terminal::start(
        &[
            "run",
            "--db",
            path_str(&db.path),
            "--plan",
            path_str(&plan),
            "--no-serve",
            "--batch-size",
            "40",
        ],
        100,
        &[],
    );
    t.wait_for("rows/s");
    t.signal("INT");
    let (code, got) = t.finish();
    let rows = screen(&got, 100);
    let shown = rows.join("\n");
    assert_eq!(code, 130, "{shown}");
    let notice = "batchsse: interrupted; stopping, with a chunk under way rolled back (press Ctrl-C again to quit at once)";
    // 104 columns: two rows of a terminal 100 wide.
    assert!(
        rows.windows(2)
            .any(|w| format!("{}{}", w[0], w[1]) == notice),
        "the notice is not whole on the screen:\n{shown}"
    );
    assert!(
        !rows.iter().any(|r| is_bar(r)),
        "a bar is left on the screen:\n{shown}"
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with("batchsse: cancelled: 0/2 steps")),
        "{shown}"
    );
}
