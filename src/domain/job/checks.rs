//! The checks a job's fields go through before anything runs: model and job
//! ids, the conversation's messages and media, inference settings, and the
//! small text helpers they share (the id a record can carry, template
//! detection). [`super::Job::resolve`] calls them.

use serde_json::Value;

use super::{
    ContentBlock, Inference, JobError, MediaBlock, Message, Role, MAX_ID_LEN, MAX_STOP_SEQUENCES,
};

/// Checks a model ID, inference-profile ID or ARN for what is surely wrong
/// (Bedrock decides the rest).
pub fn check_model_id(model: &str) -> Result<(), String> {
    if model.is_empty() || model.len() > 2048 {
        return Err("a model ID is 1-2048 characters".into());
    }
    if model.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{model}` contains whitespace; expected a model ID, inference-profile ID or ARN"
        ));
    }
    Ok(())
}

/// Job ids become S3 keys, so they keep to S3's safe characters; a segment
/// starting with `_` is the relay's own bookkeeping (`_claims/`, `_spill/`,
/// parts and manifests), never a job's.
pub(crate) fn check_job_id(id: &str) -> Result<(), String> {
    // `:` too, so an id can carry a timestamp such as EventBridge Scheduler's
    // `<aws.scheduler.scheduled-time>`.
    let allowed = |c: char| c.is_ascii_alphanumeric() || "!_.*'()-/:".contains(c);
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("a job id is 1-{MAX_ID_LEN} characters"));
    }
    if !id.chars().all(allowed) {
        return Err(format!(
            "`{id}` has characters outside letters, digits and !_.*'()-/:"
        ));
    }
    if id.starts_with('/')
        || id
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!("`{id}` has an empty, `.` or `..` path segment"));
    }
    if id.split('/').any(|seg| seg.starts_with('_')) {
        return Err(format!(
            "`{id}` has a path segment starting with `_`; those names are the relay's own (claims, spill, parts), so start the segment with another character"
        ));
    }
    Ok(())
}

/// A parse error with the offending value taken out: serde quotes it
/// (`invalid type: string "…", expected u32`), and an event's values are
/// prompts and documents, which must not reach logs or records unasked. What
/// is left names the kind found and what was expected; the caller adds the
/// path.
pub(crate) fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            // The value may itself contain ", expected ": the last one is serde's.
            let (found, expected) = rest
                .rfind(", expected ")
                .map_or((rest, ""), |at| rest.split_at(at));
            let kind = found.split(['`', '"']).next().unwrap_or_default().trim();
            return format!("{prefix}{kind}{expected}");
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        // An externally tagged enum's variant is a key the user typed
        // (`toolUse`); a key-like name is shown, anything else is a value.
        let Some(at) = rest.rfind("`, expected") else {
            return "unknown variant".into();
        };
        let (variant, expected) = rest.split_at(at);
        let key_like = variant.len() <= 32
            && variant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        return match key_like {
            true => message.to_owned(),
            false => format!("unknown variant{}", &expected[1..]),
        };
    }
    message.to_owned()
}

/// Envelope and request ids come from AWS and are UUIDs; anything else is made safe
/// rather than refused, since the caller cannot change them.
pub(crate) fn sanitize_id(id: &str) -> String {
    let cleaned: String = id
        .chars()
        .take(MAX_ID_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        return "unnamed".into();
    }
    match cleaned.strip_prefix('_') {
        Some(rest) => format!("-{rest}"),
        None => cleaned,
    }
}

pub(crate) fn check_messages(messages: &[Message]) -> Result<(), JobError> {
    if messages.is_empty() {
        return Err(JobError::field("messages", "the conversation is empty"));
    }
    if messages[0].role != Role::User {
        return Err(JobError::field(
            "messages[0].role",
            "a conversation starts with a `user` message",
        ));
    }
    for (i, pair) in messages.windows(2).enumerate() {
        if pair[0].role == pair[1].role {
            return Err(JobError::field(
                format!("messages[{}].role", i + 1),
                "roles must alternate between `user` and `assistant`",
            ));
        }
    }
    for (i, message) in messages.iter().enumerate() {
        if message.content.is_empty() {
            return Err(JobError::field(
                format!("messages[{i}].content"),
                "a message needs at least one block",
            ));
        }
        for (j, block) in message.content.iter().enumerate() {
            let path = format!("messages[{i}].content[{j}]");
            match block {
                ContentBlock::Text(text) if text.trim().is_empty() => {
                    return Err(JobError::field(format!("{path}.text"), "the text is empty"));
                }
                ContentBlock::Text(_) => {}
                ContentBlock::Image(media) => {
                    check_media(media, &path, "image", &["png", "jpeg", "gif", "webp"])?
                }
                ContentBlock::Document(media) => {
                    check_media(
                        media,
                        &path,
                        "document",
                        &[
                            "pdf", "csv", "doc", "docx", "xls", "xlsx", "html", "txt", "md",
                        ],
                    )?;
                    if media.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
                        return Err(JobError::field(
                            format!("{path}.document.name"),
                            "a document needs a `name`",
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn check_media(
    media: &MediaBlock,
    path: &str,
    kind: &str,
    formats: &[&str],
) -> Result<(), JobError> {
    if !formats.contains(&media.format.as_str()) {
        return Err(JobError::field(
            format!("{path}.{kind}.format"),
            format!(
                "`{}` is not a {kind} format Bedrock takes; use one of {}",
                media.format,
                formats.join(", ")
            ),
        ));
    }
    decode_media(media)
        .map_err(|_| JobError::field(format!("{path}.{kind}.source.bytes"), "not valid base64"))?;
    Ok(())
}

/// The raw bytes of an inline image or document.
pub fn decode_media(media: &MediaBlock) -> Result<Vec<u8>, aws_smithy_types::base64::DecodeError> {
    aws_smithy_types::base64::decode(&media.source.bytes)
}

pub(crate) fn check_inference(inference: &Inference) -> Result<(), JobError> {
    if let Some(max) = inference.max_tokens {
        if max < 1 {
            return Err(JobError::field("inference.maxTokens", "must be at least 1"));
        }
    }
    for (name, value) in [
        ("temperature", inference.temperature),
        ("topP", inference.top_p),
    ] {
        if let Some(v) = value {
            if !(0.0..=1.0).contains(&v) {
                return Err(JobError::field(
                    format!("inference.{name}"),
                    "must be between 0 and 1",
                ));
            }
        }
    }
    if let Some(stops) = &inference.stop_sequences {
        if stops.len() > MAX_STOP_SEQUENCES || stops.iter().any(|s| s.is_empty()) {
            return Err(JobError::field(
                "inference.stopSequences",
                format!("give at most {MAX_STOP_SEQUENCES} non-empty sequences"),
            ));
        }
    }
    Ok(())
}

/// "an object", "a string", ... for error messages.
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether `text` has any template syntax in it.
pub fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}
