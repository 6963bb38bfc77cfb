//! `batchsse schema`: a JSON Schema (draft 2020-12) of every event's `data`,
//! generated from the event types themselves, so it cannot drift from what
//! a run emits.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Value, json};

use super::event::{Control, Finished, Message, Progress, Start, StepEvent, Throttle};

/// The whole document: `$defs` holds one schema per event name (plus the
/// types they share); the document itself validates a `--progress json`
/// line, `{"id": N, "event": NAME, "data": {…}}`.
pub fn events() -> Value {
    // Serialize contract: a field is required when every payload has it
    // (`#[serde(default)]` alone does not make one optional on the wire).
    let mut generator = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    let events = [
        ("start", data::<Start>(&mut generator)),
        ("step", data::<StepEvent>(&mut generator)),
        ("progress", data::<Progress>(&mut generator)),
        ("message", data::<Message>(&mut generator)),
        ("throttle", data::<Throttle>(&mut generator)),
        ("control", data::<Control>(&mut generator)),
        ("finished", data::<Finished>(&mut generator)),
    ];
    let mut defs = generator.take_definitions(true);
    let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
    let branches: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({
                "properties": {
                    "event": {"const": n},
                    "data": {"$ref": format!("#/$defs/{n}")}
                }
            })
        })
        .collect();
    for (name, schema) in events {
        defs.insert(name.to_owned(), schema);
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "batchsse events",
        "description": "The data of every batchsse event, by event name in $defs (start, step, progress, message, throttle, control, finished). The document itself validates one `--progress json` line; an SSE event's data is `$defs/<its event: name>`, and `$defs/message` for an event with no `event:` line.",
        "type": "object",
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "event": {"enum": names},
        },
        "oneOf": branches,
        "$defs": defs,
    })
}

/// One event's data schema: the type's own, plus the `ts_ms` every payload
/// carries (added in `Event::to_json`).
fn data<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    let mut schema = generator.root_schema_for::<T>().to_value();
    if let Value::Object(map) = &mut schema {
        // Shared types live in the document's `$defs`, not each event's.
        map.remove("$schema");
        map.remove("$defs");
        if let Some(Value::Object(props)) = map.get_mut("properties") {
            props.insert(
                "ts_ms".into(),
                json!({
                    "description": "When the event was logged: milliseconds since the Unix epoch.",
                    "type": "integer",
                    "minimum": 0
                }),
            );
        }
        if let Some(Value::Array(required)) = map.get_mut("required") {
            required.push("ts_ms".into());
        }
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_has_a_schema_that_requires_ts_ms() {
        let doc = events();
        for name in [
            "start", "step", "progress", "message", "throttle", "control", "finished",
        ] {
            let s = &doc["$defs"][name];
            assert_eq!(s["type"], "object", "{name}: {s}");
            let required = s["required"].as_array().expect("required");
            assert!(required.contains(&"ts_ms".into()), "{name}: {s}");
        }
        let start = doc["$defs"]["start"]["required"].as_array().unwrap();
        assert!(start.contains(&"protocol".into()));
        assert!(start.contains(&"pid".into()));
        assert_eq!(doc["$defs"]["start"]["properties"]["pid"]["minimum"], 1);
    }
}
