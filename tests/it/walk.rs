//! The chunk walk never silently misses or repeats rows: keys hidden by a
//! column named like the rowid, steps that would move their own key, and
//! a pre-run check that stays bounded whatever the plan generates.

use serde_json::json;

use crate::util::*;

/// `legacy` with 1,000 rows keyed by `id`, and extra columns named as
/// `hiding` lists (each hiding one of SQLite's names for the rowid).
fn legacy(hiding: &[(&str, &str)]) -> TempDb {
    let extra: String = hiding
        .iter()
        .map(|(name, ty)| format!(", \"{name}\" {ty}"))
        .collect();
    let values: String = hiding.iter().map(|_| ", 7 - i").collect();
    TempDb::with_sql(&format!(
        "CREATE TABLE legacy(id INTEGER PRIMARY KEY{extra}, c INT DEFAULT 0);
         INSERT INTO legacy(id{cols}) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 1000) SELECT i{values} FROM s;",
        cols = hiding
            .iter()
            .map(|(n, _)| format!(", \"{n}\""))
            .collect::<String>(),
    ))
}

fn bump_plan(db: &TempDb, key: Option<&str>) -> String {
    let mut chunk = json!({"table": "legacy", "size": 100});
    if let Some(k) = key {
        chunk["key"] = json!(k);
    }
    let plan = json!({"name": "bump", "steps": [{
        "sql": "UPDATE legacy SET c = c + 1 WHERE id BETWEEN :lo AND :hi",
        "chunk": chunk,
    }]});
    db.file("plan.json", &plan.to_string())
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_column_named_rowid_does_not_hide_the_key_of_the_walk() {
    for ty in ["INTEGER", "TEXT"] {
        let db = legacy(&[("rowid", ty)]);
        let plan = bump_plan(&db, Some("id"));
        let (code, _, err) = run(&run_args(&db, &plan, &words("--no-serve --progress plain")));
        assert_eq!(code, 0, "rowid column of type {ty}: {err}");
        assert_eq!(
            db.query_i64("SELECT count(*) FROM legacy WHERE c = 1"),
            1000,
            "rowid column of type {ty}: every row bumped once; {err}"
        );
    }
}

#[test]
fn the_default_key_finds_the_rowid_under_whichever_name_is_free() {
    // rowid and _rowid_ taken: oid; all three taken: the INTEGER PRIMARY KEY.
    for hiding in [
        &[("rowid", "INTEGER"), ("_rowid_", "TEXT")][..],
        &[
            ("rowid", "INTEGER"),
            ("_rowid_", "TEXT"),
            ("oid", "INTEGER"),
        ][..],
    ] {
        let db = legacy(hiding);
        let plan = bump_plan(&db, None);
        let (code, _, err) = run(&run_args(&db, &plan, &words("--no-serve --progress plain")));
        assert_eq!(code, 0, "{hiding:?}: {err}");
        assert_eq!(
            db.query_i64("SELECT count(*) FROM legacy WHERE c = 1"),
            1000,
            "{hiding:?}: {err}"
        );
    }
}

#[test]
fn a_rowid_hidden_under_every_name_is_refused_before_anything_runs() {
    let db = TempDb::with_sql(
        "CREATE TABLE legacy(\"rowid\" INT, \"_rowid_\" INT, \"oid\" INT, id INT, c INT DEFAULT 0);
         INSERT INTO legacy(id) VALUES (1),(2),(3);",
    );
    let plan = bump_plan(&db, None);
    let before = db.bytes();
    let (code, _, err) = run(&run_args(&db, &plan, &words("--no-serve --progress plain")));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("rowid, _rowid_ and oid") && err.contains("chunk.key"),
        "names the problem and the fix: {err}"
    );
    assert_eq!(db.bytes(), before, "database untouched");
}
