//! The job format as JSON Schema, generated from the wire types in [`crate::domain::job`].
//!
//! [`job_schema`] describes a job (an event's `detail`, a bare job,
//! `RELAY_DEFAULT_JOB`); [`job_event_schema`] a whole `Bedrock Relay Job`
//! EventBridge event, self-contained so that editors and validators need no
//! `$ref` resolution across files. Both are checked in under `schema/`, and
//! `tests/schema.rs` fails when they drift from the types (`BLESS=1` rewrites
//! them).
//!
//! The schema mirrors what [`Job::from_value`](crate::domain::job::Job::from_value)
//! parses (unknown fields are refused) plus the checks of
//! [`Job::resolve`](crate::domain::job::Job::resolve) that JSON Schema can state.
//! Fields may hold Jinja templates (`{{ ... }}`, `{% ... %}`), whose rendered
//! text is what the checks see; so where a check is a pattern (`id`, `model`)
//! the schema accepts either a value that passes it or one that contains a
//! template. Two rules stay in descriptions only: roles alternate starting
//! with `user`, and media formats depend on the block kind. An explicit `null`
//! for an optional field, which the parser treats as absent, is not part of
//! the published format.

use schemars::SchemaGenerator;
use serde_json::{json, Map, Value};

use crate::domain::input::JOB_DETAIL_TYPE;
use crate::domain::job::Job;

/// Where the published schemas live: each schema's `$id` is this plus its file name.
pub const SCHEMA_BASE_URL: &str =
    "https://raw.githubusercontent.com/bedrock-relay/bedrock-relay/main/schema/";
/// File name of [`job_schema`] under `schema/`.
pub const JOB_SCHEMA_FILE: &str = "job.schema.json";
/// File name of [`job_event_schema`] under `schema/`.
pub const JOB_EVENT_SCHEMA_FILE: &str = "job-event.schema.json";

const META_SCHEMA: &str = "https://json-schema.org/draft/2020-12/schema";
/// The JSON Schema (draft 2020-12) of a job.
pub fn job_schema() -> Value {
    let generated = SchemaGenerator::default().into_root_schema_for::<Job>();
    let mut body = match tidy(generated.to_value()) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    for key in ["$schema", "title", "description"] {
        body.shift_remove(key);
    }
    let mut root = Map::new();
    root.insert("$schema".into(), META_SCHEMA.into());
    root.insert("$id".into(), schema_id(JOB_SCHEMA_FILE).into());
    root.insert("title".into(), "Bedrock Relay job".into());
    root.insert(
        "description".into(),
        "What one event asks Bedrock to do: exactly one of `prompt`, `messages` and `invoke`, \
         with the model, target, system prompt, inference settings, metadata and destination. \
         A job is the `detail` of an EventBridge event whose `detail-type` is `Bedrock Relay Job`, \
         a whole payload on its own (EventBridge Scheduler, a rule's constant input) or \
         RELAY_DEFAULT_JOB. \
         String fields may hold Jinja templates (`{{ ... }}`); their rules apply to the \
         rendered text, so a templated value only has to contain the template here."
            .into(),
    );
    root.extend(body);
    Value::Object(root)
}

/// The JSON Schema (draft 2020-12) of a whole `Bedrock Relay Job` EventBridge
/// event: the envelope, with `detail` a job. The job's definitions are copied
/// in, so the file stands alone.
pub fn job_event_schema() -> Value {
    let mut job = match job_schema() {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let mut defs = match job.shift_remove("$defs") {
        Some(Value::Object(defs)) => defs,
        _ => Map::new(),
    };
    job.shift_remove("$schema");
    job.shift_remove("$id");
    defs.insert("Job".into(), Value::Object(job));
    json!({
        "$schema": META_SCHEMA,
        "$id": schema_id(JOB_EVENT_SCHEMA_FILE),
        "title": "Bedrock Relay job event",
        "description": format!(
            "An EventBridge event whose `detail` is a Bedrock Relay job (see {}). \
             The relay needs `detail-type`, `source` and `detail`; EventBridge fills in the rest.",
            schema_id(JOB_SCHEMA_FILE)
        ),
        "type": "object",
        "properties": {
            "version": {"type": "string", "description": "Envelope version, `0`."},
            "id": {"type": "string", "description": "The event's id: the job id when the job names none."},
            "detail-type": {"const": JOB_DETAIL_TYPE, "description": "Marks the event as a job."},
            "source": {"type": "string", "minLength": 1, "description": "Who sent the event, e.g. `com.example.reports`."},
            "account": {"type": "string", "pattern": "^[0-9]{12}$", "description": "The sending account."},
            "time": {"type": "string", "format": "date-time", "description": "When the event was sent (RFC 3339)."},
            "region": {"type": "string", "description": "The bus's region."},
            "resources": {"type": "array", "items": {"type": "string"}, "description": "ARNs the event concerns."},
            "detail": {"$ref": "#/$defs/Job", "description": "The job."}
        },
        "required": ["detail-type", "source", "detail"],
        "$defs": defs,
    })
}

/// A schema as checked in: pretty-printed, with a trailing newline.
pub fn pretty(schema: &Value) -> String {
    format!("{schema:#}\n")
}

fn schema_id(file: &str) -> String {
    format!("{SCHEMA_BASE_URL}{file}")
}

/// Drops `null` from optional properties and joins doc-comment line breaks.
fn tidy(mut value: Value) -> Value {
    walk(&mut value);
    value
}

fn walk(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(properties)) = map.get("properties") {
                let required: Vec<String> = match map.get("required") {
                    Some(Value::Array(names)) => names
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect(),
                    _ => Vec::new(),
                };
                let optional: Vec<String> = properties
                    .keys()
                    .filter(|k| !required.contains(k))
                    .cloned()
                    .collect();
                if let Some(Value::Object(properties)) = map.get_mut("properties") {
                    for name in optional {
                        if let Some(Value::Object(property)) = properties.get_mut(&name) {
                            drop_null(property);
                        }
                    }
                }
            }
            if let Some(Value::String(text)) = map.get_mut("description") {
                *text = join_lines(text);
            }
            map.values_mut().for_each(walk);
        }
        Value::Array(items) => items.iter_mut().for_each(walk),
        _ => {}
    }
}

/// `{"type": ["string", "null"]}` → `{"type": "string"}`;
/// `{"anyOf": [{"$ref": ...}, {"type": "null"}]}` → `{"$ref": ...}`.
fn drop_null(property: &mut Map<String, Value>) {
    if let Some(Value::Array(types)) = property.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            property.insert("type".into(), only);
        }
    }
    let null = json!({"type": "null"});
    if let Some(Value::Array(branches)) = property.get_mut("anyOf") {
        branches.retain(|b| *b != null);
        if let [Value::Object(only)] = branches.as_slice() {
            let only = only.clone();
            property.shift_remove("anyOf");
            for (key, value) in only {
                property.entry(key).or_insert(value);
            }
        }
    }
}

/// Doc comments wrap lines; descriptions keep only paragraph breaks.
fn join_lines(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| paragraph.split('\n').collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}
