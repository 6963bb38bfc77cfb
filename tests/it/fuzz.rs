//! Property tests (proptest) for the two places user-controlled text meets
//! our own parsing: the SSE encoder, and the plan loader.

use batchsse::plan::{Source, prepare};
use batchsse::sse::{Parser, encode};
use proptest::prelude::*;
use rusqlite::Connection;

/// What EventSource hands back for `data`: every line end becomes LF.
fn as_received(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

fn shop() -> Connection {
    let c = Connection::open_in_memory().unwrap();
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INT DEFAULT 0, name TEXT UNIQUE);
         CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID;",
    )
    .unwrap();
    c
}

fn sql_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi".to_owned()),
        Just("UPDATE t SET counter = 1".to_owned()),
        Just("VACUUM".to_owned()),
        Just("BEGIN".to_owned()),
        Just("SELECT :x".to_owned()),
        Just("ALTER TABLE t ADD COLUMN z".to_owned()),
        Just("-- only a comment".to_owned()),
        Just("UPDATE t SET counter = 1; DELETE FROM kv".to_owned()),
        "\\PC{0,40}",
    ]
}

fn plan_json() -> impl Strategy<Value = String> {
    let chunk = (
        prop_oneof![Just("t".to_owned()), Just("kv".to_owned()), "\\PC{0,8}"],
        proptest::option::of(prop_oneof![
            Just("id".to_owned()),
            Just("k".to_owned()),
            Just("rowid".to_owned()),
            Just("name".to_owned()),
            "\\PC{0,8}"
        ]),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(table, key, size)| serde_json::json!({"table": table, "key": key, "size": size}),
        );
    let step = (
        proptest::option::of("\\PC{0,12}"),
        sql_fragment(),
        proptest::option::of(chunk),
    )
        .prop_map(|(name, sql, chunk)| {
            let mut s = serde_json::json!({"sql": sql});
            if let Some(n) = name {
                s["name"] = n.into();
            }
            if let Some(c) = chunk {
                s["chunk"] = c;
            }
            s
        });
    (
        proptest::option::of("\\PC{0,12}"),
        proptest::collection::vec(step, 0..4),
        any::<bool>(),
    )
        .prop_map(|(name, steps, fk)| {
            serde_json::json!({"name": name, "steps": steps, "foreign_keys": fk}).to_string()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_data_survives_encoding(id in any::<u64>(), name in "[^\r\n\0]{1,16}", data in "\\PC*|[\r\n\0 a:]{0,20}") {
        let frame = encode(Some(id), Some(&name), &data).unwrap();
        let mut p = Parser::new();
        let evs = p.feed(&frame);
        prop_assert_eq!(evs.len(), 1);
        prop_assert_eq!(&evs[0].data, &as_received(&data));
        prop_assert_eq!(&evs[0].event, &name);
        prop_assert_eq!(evs[0].id.clone(), Some(id.to_string()));
    }

    #[test]
    fn names_that_would_break_framing_are_always_refused(a in "\\PC{0,5}", bad in "[\r\n\0]", b in "\\PC{0,5}") {
        let name = format!("{a}{bad}{b}");
        prop_assert!(encode(Some(1), Some(&name), "x").is_err());
    }

    #[test]
    fn a_stream_of_frames_parses_back_whatever_the_read_sizes(
        datas in proptest::collection::vec("[\r\na-z \0]{0,12}", 1..8),
        cut in 1usize..64,
    ) {
        let mut stream = Vec::new();
        for (i, d) in datas.iter().enumerate() {
            stream.extend_from_slice(&encode(Some(i as u64 + 1), None, d).unwrap());
        }
        let mut p = Parser::new();
        let evs: Vec<_> = stream.chunks(cut).flat_map(|c| p.feed(c)).collect();
        prop_assert_eq!(evs.len(), datas.len());
        for (e, d) in evs.iter().zip(&datas) {
            prop_assert_eq!(&e.data, &as_received(d));
            prop_assert_eq!(e.event.as_str(), "message");
        }
    }

    #[test]
    fn any_text_as_a_plan_is_accepted_or_refused_never_a_panic(text in "\\PC{0,200}") {
        let db = shop();
        let _ = prepare(&Source::Json { name: "p.json".into(), text: text.clone() }, &db);
        let _ = prepare(&Source::Sql { name: "p.sql".into(), text }, &db);
    }

    #[test]
    fn plan_shaped_json_is_accepted_or_refused_never_a_panic(text in plan_json()) {
        let db = shop();
        let schema = |db: &Connection| -> i64 {
            db.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0)).unwrap()
        };
        let before = schema(&db);
        if let Err(e) = prepare(&Source::Json { name: "p.json".into(), text }, &db) {
            prop_assert!(!e.to_string().is_empty());
        }
        // Validation never writes to the real database.
        prop_assert_eq!(schema(&db), before);
    }
}
