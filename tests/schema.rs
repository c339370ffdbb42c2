//! The published JSON Schemas under `schema/`: that they match the Rust types,
//! that every example event in `events/` agrees with them, and that they refuse
//! what the parser refuses.
//!
//! After changing a job type, regenerate the files with
//! `BLESS=1 cargo test --test schema` (or `UPDATE_SCHEMA=1`) and commit them.

use std::path::{Path, PathBuf};

use bedrock_relay::{
    job_event_schema, job_schema, pretty_schema as pretty, Job, JobError, JOB_EVENT_SCHEMA_FILE,
    JOB_SCHEMA_FILE,
};
use jsonschema::Validator;
use serde_json::{json, Value};

const JOB_DETAIL_TYPE: &str = "Bedrock Relay Job";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn validator(schema: &Value) -> Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .expect("the generated schema compiles")
}

fn job_validator() -> Validator {
    validator(&job_schema())
}

/// Why `instance` fails, one line per error, or `None` when it is valid.
fn schema_errors(validator: &Validator, instance: &Value) -> Option<String> {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    (!errors.is_empty()).then(|| errors.join("\n"))
}

/// What the relay itself says: parse, then resolve with a default model.
fn runtime_verdict(job: &Value) -> Result<(), JobError> {
    Job::from_value(job.clone())?
        .resolve(Some("default.model-v1:0"), "evt-1")
        .map(|_| ())
}

fn blessing() -> bool {
    ["BLESS", "UPDATE_SCHEMA"]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| v == "1"))
}

/// `schema/*.json` are generated: a change to the types must come with them.
#[test]
fn checked_in_schemas_match_the_rust_types() {
    let mut stale = Vec::new();
    for (file, schema) in [
        (JOB_SCHEMA_FILE, job_schema()),
        (JOB_EVENT_SCHEMA_FILE, job_event_schema()),
    ] {
        let path = repo_path("schema").join(file);
        let generated = pretty(&schema);
        if blessing() {
            std::fs::create_dir_all(repo_path("schema")).expect("create schema/");
            std::fs::write(&path, &generated).expect("write the schema file");
            continue;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        if checked_in != generated {
            stale.push(format!("schema/{file}"));
        }
    }
    assert!(
        stale.is_empty(),
        "{}: out of date with the types in src/domain/job.rs; regenerate with \
         `BLESS=1 cargo test --test schema` and commit the result",
        stale.join(", ")
    );
}

/// The files are themselves valid draft 2020-12 schemas.
#[test]
fn schemas_are_valid_json_schema() {
    for schema in [job_schema(), job_event_schema()] {
        if let Err(err) = jsonschema::meta::validate(&schema) {
            panic!("{}: not a valid JSON Schema: {err}", schema["$id"]);
        }
    }
}

/// Every `Bedrock Relay Job` event and every bare job in `events/` validates,
/// except the `malformed-*` ones, which must not; anything the schema accepts
/// the parser accepts too. New files are covered as they are added.
#[test]
fn example_events_agree_with_the_schemas() {
    let event_validator = validator(&job_event_schema());
    let job_validator = job_validator();
    let mut checked = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(repo_path("events"))
        .expect("read events/")
        .map(|entry| entry.expect("list events/").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path).expect("read an event file");
        let event: Value = serde_json::from_str(&text).expect("events/*.json is JSON");
        if event.get("relay").is_some() {
            continue; // the batch-job check schedule's input, not a job
        }
        let is_envelope = ["detail-type", "source", "detail"]
            .iter()
            .all(|k| event.get(*k).is_some());
        let (validator, job, kind) = if is_envelope {
            if event["detail-type"] != JOB_DETAIL_TYPE {
                continue; // runs RELAY_DEFAULT_JOB; the envelope is not ours to describe
            }
            (
                &event_validator,
                event["detail"].clone(),
                JOB_EVENT_SCHEMA_FILE,
            )
        } else {
            (&job_validator, event.clone(), JOB_SCHEMA_FILE)
        };
        let errors = schema_errors(validator, &event);
        if name.starts_with("malformed") {
            assert!(
                errors.is_some(),
                "events/{name} is meant to be malformed but {kind} accepts it"
            );
        } else if let Some(errors) = errors {
            panic!("events/{name} does not validate against {kind}:\n{errors}");
        } else if let Err(err) = Job::from_value(job) {
            panic!("{kind} accepts events/{name} but the parser refuses it: {err}");
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} job events found in events/");
}

/// The malformed example has both `prompt` and `messages` and a snake_case
/// `max_tokens` at the top level; the schema names the unknown field.
#[test]
fn malformed_job_event_is_refused_naming_the_field() {
    let text = std::fs::read_to_string(repo_path("events/malformed-job-event.json"))
        .expect("read events/malformed-job-event.json");
    let event: Value = serde_json::from_str(&text).expect("the malformed event is still JSON");
    let errors = schema_errors(&validator(&job_event_schema()), &event)
        .expect("the malformed event must not validate");
    assert!(errors.contains("max_tokens"), "{errors}");
    assert!(runtime_verdict(&event["detail"]).is_err());
}

/// Typos, wrong types and out-of-range values fail in the editor as they
/// would in the function.
#[test]
fn invalid_jobs_are_refused_as_the_relay_refuses_them() {
    let validator = job_validator();
    let cases = [
        json!({"prompt": "hi", "modle": "amazon.nova-lite-v1:0"}),
        json!({"prompt": 5}),
        json!({"prompt": "hi", "target": 5}),
        json!({"prompt": "hi", "target": []}),
        json!({"prompt": "   "}),
        json!({"system": "no prompt"}),
        json!({"prompt": "a", "messages": [{"role": "user", "content": [{"text": "b"}]}]}),
        json!({"prompt": "a", "invoke": {"body": {}}}),
        json!({"invoke": {"body": {}}, "system": "x"}),
        json!({"invoke": {"body": {}}, "inference": {"maxTokens": 5}}),
        json!({"invoke": {"body": "text"}}),
        json!({"invoke": {"body": {}, "contentTyp": "x"}}),
        json!({"messages": []}),
        json!({"messages": [{"role": "user", "content": []}]}),
        json!({"messages": [{"role": "system", "content": [{"text": "x"}]}]}),
        json!({"messages": [{"role": "user", "content": [{"text": " "}]}]}),
        json!({"messages": [{"role": "user", "content": [{"toolUse": {}}]}]}),
        json!({"messages": [{"role": "user", "content": [{"text": "x", "image": {}}]}]}),
        json!({"prompt": "hi", "system": [{"text": ""}]}),
        json!({"prompt": "hi", "inference": {"max_tokens": 5}}),
        json!({"prompt": "hi", "inference": {"maxTokens": 0}}),
        json!({"prompt": "hi", "inference": {"temperature": 1.5}}),
        json!({"prompt": "hi", "inference": {"topP": -0.1}}),
        json!({"prompt": "hi", "inference": {"stopSequences": [""]}}),
        json!({"prompt": "hi", "inference": {"stopSequences": vec!["END"; 65]}}),
        json!({"prompt": "hi", "id": "../etc/passwd"}),
        json!({"prompt": "hi", "id": "a b"}),
        json!({"prompt": "hi", "model": "a b"}),
        json!({"prompt": "hi", "metadata": "not an object"}),
        json!(["not", "an", "object"]),
    ];
    for job in cases {
        assert!(
            runtime_verdict(&job).is_err(),
            "the relay accepts {job}; not a refusal case"
        );
        assert!(
            schema_errors(&validator, &job).is_some(),
            "the schema accepts {job}, which the relay refuses"
        );
    }
}

/// The jobs `src/domain/job.rs`'s unit tests accept, and the example shapes, validate.
#[test]
fn jobs_the_relay_accepts_validate() {
    let validator = job_validator();
    let cases = [
        json!({"prompt": "Say hi"}),
        json!({
            "id": "reports/2026-11-28",
            "model": "arn:aws:bedrock:us-east-1:111111111111:inference-profile/us.amazon.nova-lite-v1:0",
            "messages": [
                {"role": "user", "content": [{"text": "Hi"}]},
                {"role": "assistant", "content": [{"text": "Hello"}]},
                {"role": "user", "content": [{"text": "Summarise"}, {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}]}
            ],
            "system": [{"text": "Be brief"}, {"text": "Use English"}],
            "inference": {"maxTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]},
            "metadata": {"team": "finance", "run": 7}
        }),
        json!({"invoke": {"body": {"inputText": "embed me"}, "accept": "application/json"}}),
        json!({"invoke": {"body": [1, 2]}, "target": ["a", "b"], "metadata": {}}),
        json!({"prompt": "hi", "target": "finance", "system": "Be brief", "inference": {"temperature": 0, "topP": 1}}),
        json!({"messages": [{"role": "user", "content": [
            {"text": "Read this"},
            {"document": {"format": "pdf", "name": "contract", "source": {"bytes": "JVBERi0="}}}
        ]}]}),
        json!({"prompt": "hi", "inference": {"stopSequences": vec!["END"; 64]}}),
        json!({"prompt": "hi", "id": "x".repeat(512)}),
    ];
    for job in cases {
        if let Err(err) = runtime_verdict(&job) {
            panic!("the relay refuses {job} ({err}); not an acceptance case");
        }
        if let Some(errors) = schema_errors(&validator, &job) {
            panic!("the schema refuses {job}, which the relay accepts:\n{errors}");
        }
    }
}

/// Fields the relay will render as Jinja templates only need to contain the
/// template: their rules apply to the rendered text.
#[test]
fn templated_values_pass_where_a_pattern_would_refuse_them() {
    let validator = job_validator();
    for job in [
        json!({"prompt": "Summarise {{ item.title }}", "id": "batch/{{ item.id }}", "items": [{"id": "a", "title": "A"}]}),
        json!({"prompt": "hi", "model": "{{ item.model }}", "items": [{"model": "amazon.nova-micro-v1:0"}]}),
        json!({"prompt": "hi", "id": "{% if item %}x{% endif %}", "destination": "s3://bucket/{{ item }}", "group": "{{ item }}"}),
        json!({"prompt": "hi", "items_from": "s3://bucket/items.jsonl", "documents": ["s3://bucket/{{ item }}.pdf"]}),
    ] {
        if let Some(errors) = schema_errors(&validator, &job) {
            panic!("the schema refuses templated {job}:\n{errors}");
        }
    }
}

/// The `id` pattern says what `check_job_id` says, character for character.
#[test]
fn id_and_model_patterns_agree_with_the_relay() {
    let validator = job_validator();
    let ids = [
        "a".to_owned(),
        "reports/2026-11-28".into(),
        "a/b/c".into(),
        ".hidden".into(),
        "..x".into(),
        "...".into(),
        "a.b".into(),
        "!_.*'()-".into(),
        "x".repeat(512),
        "x".repeat(513),
        String::new(),
        "/a".into(),
        "a/".into(),
        "a//b".into(),
        ".".into(),
        "..".into(),
        "a/./b".into(),
        "a/../b".into(),
        "a b".into(),
        "a+b".into(),
        "é".into(),
    ];
    for id in ids {
        let job = json!({"prompt": "hi", "id": id});
        let relay = runtime_verdict(&job).is_ok();
        let schema = schema_errors(&validator, &job).is_none();
        assert_eq!(schema, relay, "id {id:?}: schema {schema}, relay {relay}");
    }
    let models = [
        "amazon.nova-lite-v1:0".to_owned(),
        "arn:aws:bedrock:us-east-1:111111111111:inference-profile/us.amazon.nova-lite-v1:0".into(),
        "m".repeat(2048),
        "m".repeat(2049),
        String::new(),
        "a b".into(),
        "a\tb".into(),
        "a\u{7f}b".into(),
        "a\u{2003}b".into(),
    ];
    for model in models {
        let job = json!({"prompt": "hi", "model": model});
        let relay = runtime_verdict(&job).is_ok();
        let schema = schema_errors(&validator, &job).is_none();
        assert_eq!(
            schema, relay,
            "model {model:?}: schema {schema}, relay {relay}"
        );
    }
}

/// `bedrock-relay schema [--event]` is a command of its own that needs no
/// RELAY_* setting (it prints [`pretty`] of the schemas above).
#[tokio::test]
async fn schema_subcommand_succeeds_without_configuration() {
    for args in [
        vec!["schema".to_owned()],
        vec!["schema".into(), "--event".into()],
    ] {
        assert_eq!(
            bedrock_relay::cli::run(&args).await,
            bedrock_relay::cli::EXIT_OK,
            "{args:?}"
        );
    }
}
