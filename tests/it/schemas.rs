//! `schemas/` holds the JSON Schemas of the messages on the streams. They are
//! generated from the Rust types; this test fails when the two drift apart.
//! Regenerate with `TENGINE_UPDATE_SCHEMAS=1 cargo test -p tengine-tests schemas`.

use std::path::PathBuf;

use tengine_core::envelope::{Envelope, ExecuteCommand, RunEvent};

fn check(file: &str, schema: schemars::Schema) {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas")).join(file);
    let generated = serde_json::to_string_pretty(&schema).expect("schema serializes") + "\n";
    if std::env::var("TENGINE_UPDATE_SCHEMAS").is_ok() {
        std::fs::write(&path, &generated).expect("write schema");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with the Rust types; regenerate with TENGINE_UPDATE_SCHEMAS=1",
        path.display()
    );
}

#[test]
fn message_schemas_match_the_types() {
    check(
        "execute-command.v1.schema.json",
        schemars::schema_for!(Envelope<ExecuteCommand>),
    );
    check("run-event.v1.schema.json", schemars::schema_for!(Envelope<RunEvent>));
}

#[test]
fn sample_messages_validate_against_the_committed_schemas() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/run-event.v1.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("schema file")).expect("json");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let event = Envelope::new(
        uuid::Uuid::now_v7(),
        RunEvent::AttemptStarted {
            run_id: uuid::Uuid::now_v7(),
            project_id: uuid::Uuid::now_v7(),
            attempt: 1,
            started_at: chrono::Utc::now(),
        },
    );
    let instance = serde_json::to_value(&event).expect("json");
    assert!(validator.is_valid(&instance), "{instance}");
    let mut broken = instance.clone();
    broken["body"]["attempt"] = serde_json::json!("one");
    assert!(!validator.is_valid(&broken));
}
