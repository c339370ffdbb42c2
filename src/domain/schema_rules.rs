//! The JSON Schema rules the job's wire types carry in `#[schemars(transform)]`
//! attributes: the checks of `Job::resolve` that a pattern can state. They sit
//! beside the types (not in [`crate::schema`], which assembles the published
//! schema) so that the plain data types depend on nothing above them.

use schemars::Schema;
use serde_json::{json, Value};

/// Some character other than whitespace: what `trim().is_empty()` refuses.
const NOT_BLANK_PATTERN: &str = r"\S";
/// A value holding a Jinja expression or statement; its checks apply once rendered.
const TEMPLATE_PATTERN: &str = r"\{\{|\{%";
/// Mirrors `check_job_id`: segments of letters, digits and `!_.*'():-` joined by
/// `/`, none empty, `.` or `..`.
const JOB_ID_PATTERN: &str = r"^(?:[A-Za-z0-9!_*'():-][A-Za-z0-9!_.*'():-]*|\.[A-Za-z0-9!_*'():-][A-Za-z0-9!_.*'():-]*|\.\.[A-Za-z0-9!_.*'():-]+)(?:/(?:[A-Za-z0-9!_*'():-][A-Za-z0-9!_.*'():-]*|\.[A-Za-z0-9!_*'():-][A-Za-z0-9!_.*'():-]*|\.\.[A-Za-z0-9!_.*'():-]+))*$";
/// Mirrors `MAX_ID_LEN` in `job.rs`.
const JOB_ID_MAX_LEN: u64 = 512;
/// Mirrors `check_model_id`: no whitespace or control characters.
const MODEL_ID_PATTERN: &str = r"^[^\s\x00-\x1f\x7f-\x9f]+$";
const MODEL_ID_MAX_LEN: u64 = 2048;

/// `#[schemars(transform)]` for `Job::id`: a key-safe id, or a template.
pub(crate) fn job_id_rule(schema: &mut Schema) {
    literal_or_template(
        schema,
        json!({"pattern": JOB_ID_PATTERN, "maxLength": JOB_ID_MAX_LEN}),
        "Rendered, it is 1-512 characters of letters, digits and !_.*'()-/: with no leading `/` \
         and no empty, `.` or `..` segment (it becomes part of an S3 key).",
    );
}

/// `#[schemars(transform)]` for `Job::model`: an id without whitespace, or a template.
pub(crate) fn model_id_rule(schema: &mut Schema) {
    literal_or_template(
        schema,
        json!({"pattern": MODEL_ID_PATTERN, "maxLength": MODEL_ID_MAX_LEN}),
        "Rendered, it is 1-2048 characters without whitespace.",
    );
}

/// `#[schemars(transform)]` for `ContentBlock::Text`: `{"text": ...}` with some non-blank text.
pub(crate) fn text_block_rule(schema: &mut Schema) {
    if let Some(Value::Object(text)) = schema
        .get_mut("properties")
        .and_then(|properties| properties.get_mut("text"))
    {
        text.insert("minLength".into(), 1.into());
        text.insert("pattern".into(), NOT_BLANK_PATTERN.into());
    }
}

fn literal_or_template(schema: &mut Schema, literal: Value, rule: &str) {
    schema.insert("minLength".into(), 1.into());
    schema.insert(
        "anyOf".into(),
        json!([literal, {"pattern": TEMPLATE_PATTERN}]),
    );
    let description = match schema.get("description").and_then(Value::as_str) {
        Some(doc) => format!("{doc} {rule}"),
        None => rule.to_owned(),
    };
    schema.insert("description".into(), description.into());
}
