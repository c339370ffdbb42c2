//! Batch inference input records: a resolved job as one line of a
//! Converse-type batch job's JSON Lines input,
//! `{"recordId": ..., "modelInput": <Converse request>}`.
//!
//! The `modelInput` carries what [`Bedrock::converse_counted`] sends
//! on-demand, in Converse's JSON wire shape: the same messages and blocks
//! (`request.rs`), the system blocks only when there are some, the cache
//! points where [`CachePoints`] puts them, `inferenceConfig` only when the
//! job has `inference`, structured output (`outputConfig`) and
//! `additionalModelRequestFields`. The model is the job's `modelId`, so it
//! is not in the record. Guardrails and service tiers are on-demand only
//! (`domain/batch_job.rs` keeps such batches off batch jobs).
//!
//! [`Bedrock::converse_counted`]: super::Bedrock::converse_counted

use serde_json::{json, Map, Value};
use thiserror::Error;

use crate::domain::batch_job::record_id;
use crate::domain::features::{schema_name, CachePoints};
use crate::domain::job::{decode_media, ContentBlock, Inference, MediaBlock, ResolvedJob, Role};

/// A job that cannot be a Converse batch record.
#[derive(Debug, Error)]
pub enum BatchRecordError {
    /// An `invoke` job: its body is a model's own format, not a Converse request.
    #[error("invoke: a batch job sends Converse records, so it runs `prompt` and `messages` jobs; run an `invoke` job with mode `on-demand` (InvokeModel-type batch jobs, `modelInvocationType: InvokeModel`, are not supported)")]
    Invoke,
    /// Inline bytes that are not base64 (job validation refuses these first).
    #[error("{path}: not valid base64")]
    Media {
        /// The block, e.g. `messages[0].content[1].image.source.bytes`.
        path: String,
    },
}

/// The input record of the item at `index` (its `recordId` is
/// [`record_id`]`(index)`).
pub(crate) fn record(job: &ResolvedJob, index: usize) -> Result<Value, BatchRecordError> {
    if job.invoke.is_some() {
        return Err(BatchRecordError::Invoke);
    }
    let features = &job.features;
    let points = features.cache_points(
        job.system.len(),
        job.messages.first().map_or(0, |m| m.content.len()),
    );
    let cache_point = |points: CachePoints| json!({"cachePoint": {"type": "default", "ttl": points.ttl.as_str()}});
    let mut input = Map::new();
    input.insert(
        "messages".into(),
        messages(
            job,
            points.and_then(|p| p.first_message_after.map(|at| (at, cache_point(p)))),
        )?,
    );
    if !job.system.is_empty() {
        let mut system: Vec<Value> = job
            .system
            .iter()
            .map(|text| json!({"text": text}))
            .collect();
        if let Some(p) = points.filter(|p| p.after_system) {
            system.push(cache_point(p));
        }
        input.insert("system".into(), Value::Array(system));
    }
    if let Some(inference) = &job.inference {
        input.insert("inferenceConfig".into(), inference_config(inference));
    }
    if let Some(schema) = &features.output_schema {
        input.insert(
            "outputConfig".into(),
            json!({"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {
                "schema": schema.to_string(),
                "name": schema_name(schema),
            }}}}),
        );
    }
    if let Some(fields) = &features.model_fields {
        input.insert(
            "additionalModelRequestFields".into(),
            Value::Object(fields.clone()),
        );
    }
    Ok(json!({"recordId": record_id(index), "modelInput": input}))
}

/// `record` as one line of text, without its newline.
pub(crate) fn line(record: &Value) -> String {
    record.to_string()
}

/// The messages, with `cache_point` (its position in the first message and
/// the block) inserted.
fn messages(
    job: &ResolvedJob,
    cache_point: Option<(usize, Value)>,
) -> Result<Value, BatchRecordError> {
    let mut messages = Vec::with_capacity(job.messages.len());
    for (i, message) in job.messages.iter().enumerate() {
        let mut content = Vec::with_capacity(message.content.len() + 1);
        for (j, block) in message.content.iter().enumerate() {
            content.push(content_block(
                block,
                &format!("messages[{i}].content[{j}]"),
            )?);
        }
        if let (0, Some((at, point))) = (i, &cache_point) {
            content.insert(*at, point.clone());
        }
        let role = match message.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        messages.push(json!({"role": role, "content": content}));
    }
    Ok(Value::Array(messages))
}

/// As `to_bedrock_block`: text as is; images and documents with their format,
/// a document's name (empty when missing, as on-demand sends it), and the
/// bytes decoded and encoded again, so Bedrock gets the same standard base64
/// the SDK would send.
fn content_block(block: &ContentBlock, path: &str) -> Result<Value, BatchRecordError> {
    Ok(match block {
        ContentBlock::Text(text) => json!({"text": text}),
        ContentBlock::Image(media) => json!({"image": {
            "format": media.format,
            "source": {"bytes": bytes(media, &format!("{path}.image.source.bytes"))?},
        }}),
        ContentBlock::Document(media) => json!({"document": {
            "format": media.format,
            "name": media.name.clone().unwrap_or_default(),
            "source": {"bytes": bytes(media, &format!("{path}.document.source.bytes"))?},
        }}),
    })
}

fn bytes(media: &MediaBlock, path: &str) -> Result<String, BatchRecordError> {
    decode_media(media)
        .map(aws_smithy_types::base64::encode)
        .map_err(|_| BatchRecordError::Media { path: path.into() })
}

/// `inferenceConfig` with the parameters the job set, as on-demand.
fn inference_config(inference: &Inference) -> Value {
    let mut config = Map::new();
    if let Some(max) = inference.max_tokens {
        config.insert("maxTokens".into(), max.into());
    }
    for (key, value) in [
        ("temperature", inference.temperature),
        ("topP", inference.top_p),
    ] {
        if let Some(value) = value.and_then(short_float) {
            config.insert(key.into(), value);
        }
    }
    if let Some(stops) = &inference.stop_sequences {
        config.insert("stopSequences".into(), stops.clone().into());
    }
    Value::Object(config)
}

/// An `f32` as its shortest decimal (`0.2`, not `0.20000000298023224`): the
/// same `f32` once Bedrock reads it, and what the caller wrote.
fn short_float(value: f32) -> Option<Value> {
    let shortest: f64 = value.to_string().parse().ok()?;
    serde_json::Number::from_f64(shortest).map(Value::Number)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::domain::job::Job;

    fn resolved(job: Value) -> ResolvedJob {
        Job::from_value(job)
            .and_then(|job| job.resolve(Some("amazon.nova-lite-v1:0"), "evt-1"))
            .expect("a valid job")
    }

    /// A prompt job is one user message, and nothing else is sent.
    #[test]
    fn a_prompt_job_is_one_user_message() {
        let record = record(&resolved(json!({"prompt": "Say hi"})), 7).expect("converse");
        assert_eq!(
            record,
            json!({
                "recordId": "r0000000007",
                "modelInput": {"messages": [{"role": "user", "content": [{"text": "Say hi"}]}]}
            })
        );
    }

    /// Messages, system blocks and inference parameters keep Converse's
    /// camelCase names, and floats read as written.
    #[test]
    fn a_messages_job_carries_system_and_inference() {
        let job = resolved(json!({
            "messages": [
                {"role": "user", "content": [{"text": "Hi"}]},
                {"role": "assistant", "content": [{"text": "Hello"}]},
                {"role": "user", "content": [{"text": "Summarise"}]}
            ],
            "system": [{"text": "Be brief"}, {"text": "Use English"}],
            "inference": {"maxTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]}
        }));
        let record = record(&job, 0).expect("converse");
        let input = &record["modelInput"];
        assert_eq!(input["messages"][1]["role"], json!("assistant"));
        assert_eq!(
            input["messages"][2]["content"][0]["text"],
            json!("Summarise")
        );
        assert_eq!(
            input["system"],
            json!([{"text": "Be brief"}, {"text": "Use English"}])
        );
        assert_eq!(
            input["inferenceConfig"],
            json!({"maxTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]})
        );
        assert!(
            line(&record).contains(r#""temperature":0.2,"#),
            "{}",
            line(&record)
        );
        let sparse = resolved(json!({"prompt": "hi", "inference": {"temperature": 0}}));
        assert_eq!(
            record_of(&sparse)["modelInput"]["inferenceConfig"],
            json!({"temperature": 0.0})
        );
    }

    fn record_of(job: &ResolvedJob) -> Value {
        record(job, 0).expect("converse")
    }

    /// Image and document blocks carry their format, a document its name,
    /// and standard base64 of the same bytes.
    #[test]
    fn document_and_image_blocks_carry_base64_bytes() {
        let pdf = aws_smithy_types::base64::encode(b"%PDF-1.7 fake");
        let job = resolved(json!({"messages": [{"role": "user", "content": [
            {"document": {"format": "pdf", "name": "report", "source": {"bytes": pdf}}},
            {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
            {"text": "Compare them"}
        ]}]}));
        let content = &record_of(&job)["modelInput"]["messages"][0]["content"];
        assert_eq!(
            content[0],
            json!({"document": {"format": "pdf", "name": "report", "source": {"bytes": pdf}}})
        );
        assert_eq!(
            content[1],
            json!({"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}})
        );
        assert_eq!(content[2], json!({"text": "Compare them"}));
    }

    /// A batch record carries the same features as the on-demand call: the
    /// cache points where `CachePoints` puts them, structured output and the
    /// model fields.
    #[test]
    fn records_carry_cache_points_structured_output_and_model_fields() {
        let mut job = resolved(json!({
            "messages": [{"role": "user", "content": [{"text": "Classify: "}, {"text": "item 7"}]}],
            "system": "You are a classifier.",
            "cache": "5m",
            "output_schema": {"type": "object", "properties": {"label": {"type": "string"}}},
            "model_fields": {"inferenceConfig": {"topK": 20}}
        }));
        job.features.shared_blocks = 1;
        let input = record_of(&job)["modelInput"].clone();
        let point = json!({"cachePoint": {"type": "default", "ttl": "5m"}});
        assert_eq!(
            input["system"],
            json!([{"text": "You are a classifier."}, point])
        );
        assert_eq!(
            input["messages"][0]["content"],
            json!([{"text": "Classify: "}, point, {"text": "item 7"}])
        );
        let format = &input["outputConfig"]["textFormat"];
        assert_eq!(format["type"], json!("json_schema"));
        let schema: Value = serde_json::from_str(
            format["structure"]["jsonSchema"]["schema"]
                .as_str()
                .expect("schema text"),
        )
        .expect("JSON");
        assert_eq!(schema["properties"]["label"]["type"], json!("string"));
        assert_eq!(
            input["additionalModelRequestFields"],
            json!({"inferenceConfig": {"topK": 20}})
        );
    }

    /// An `invoke` job is refused, naming what batch jobs run.
    #[test]
    fn an_invoke_job_is_not_a_converse_record() {
        let job = resolved(json!({"invoke": {"body": {"inputText": "embed me"}}}));
        let err = record(&job, 0).expect_err("invoke");
        assert!(err.to_string().contains("`prompt` and `messages`"), "{err}");
    }

    fn keys(value: &Value) -> BTreeSet<&str> {
        value
            .as_object()
            .map(|object| object.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
        names.iter().copied().collect()
    }

    /// Every object in a full record has only keys Converse's request (and
    /// the batch record around it) accept.
    #[test]
    fn records_have_exactly_the_keys_converse_accepts() {
        let job = resolved(json!({
            "messages": [{"role": "user", "content": [
                {"text": "Read"},
                {"document": {"format": "txt", "name": "notes", "source": {"bytes": "aGk="}}},
                {"image": {"format": "jpeg", "source": {"bytes": "aGk="}}}
            ]}],
            "system": "Be brief",
            "inference": {"maxTokens": 5, "temperature": 0.5, "topP": 1, "stopSequences": ["x"]}
        }));
        // A round trip through the text, as Bedrock reads it.
        let record: Value = serde_json::from_str(&line(&record_of(&job))).expect("JSON");
        assert_eq!(keys(&record), set(&["recordId", "modelInput"]));
        let input = &record["modelInput"];
        assert_eq!(keys(input), set(&["messages", "system", "inferenceConfig"]));
        assert_eq!(
            keys(&input["inferenceConfig"]),
            set(&["maxTokens", "temperature", "topP", "stopSequences"])
        );
        assert!(input["system"]
            .as_array()
            .is_some_and(|blocks| blocks.iter().all(|b| keys(b) == set(&["text"]))));
        let message = &input["messages"][0];
        assert_eq!(keys(message), set(&["role", "content"]));
        let content = message["content"].as_array().expect("blocks");
        assert_eq!(keys(&content[0]), set(&["text"]));
        assert_eq!(
            keys(&content[1]["document"]),
            set(&["format", "name", "source"])
        );
        assert_eq!(keys(&content[1]["document"]["source"]), set(&["bytes"]));
        assert_eq!(keys(&content[2]["image"]), set(&["format", "source"]));
        assert_eq!(keys(&content[2]["image"]["source"]), set(&["bytes"]));
    }
}
