//! A job's Bedrock request in the SDK's types. Converse: the messages and
//! system blocks with the cache points the job's `cache` asks for
//! ([`CachePoints`]), the inference settings, structured output
//! (`outputConfig`), the guardrail, the service tier and the model fields.
//! InvokeModel: the body as the job gives it, with the guardrail and tier as
//! headers. `batch_records.rs` writes the same Converse request as JSON for
//! batch jobs, placing cache points by the same [`CachePoints`].

use aws_sdk_bedrockruntime::operation::converse::builders::ConverseFluentBuilder;
use aws_sdk_bedrockruntime::operation::invoke_model::builders::InvokeModelFluentBuilder;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    self as bedrock, CachePointBlock, CachePointType, ContentBlock as BedrockBlock,
    ConversationRole, DocumentBlock, DocumentFormat, DocumentSource, GuardrailConfiguration,
    ImageBlock, ImageFormat, ImageSource, InferenceConfiguration, JsonSchemaDefinition,
    OutputConfig, OutputFormat, OutputFormatStructure, OutputFormatType, ServiceTierType,
    SystemContentBlock,
};
use aws_sdk_bedrockruntime::Client;
use aws_smithy_types::{Document, Number};
use serde_json::Value;

use crate::domain::features::{schema_name, CachePoints, Guardrail};
use crate::domain::job::{decode_media, ContentBlock, Invoke, MediaBlock, ResolvedJob, Role};

/// The Converse call for `job`, ready to be customised and sent.
pub(super) fn converse(client: &Client, job: &ResolvedJob) -> ConverseFluentBuilder {
    let features = &job.features;
    let points = features.cache_points(
        job.system.len(),
        job.messages.first().map_or(0, |m| m.content.len()),
    );
    let mut call = client
        .converse()
        .model_id(&job.model)
        .set_messages(Some(messages(job, points)))
        .set_system(system(job, points))
        .set_inference_config(job.inference.as_ref().map(|i| {
            InferenceConfiguration::builder()
                .set_max_tokens(i.max_tokens)
                .set_temperature(i.temperature)
                .set_top_p(i.top_p)
                .set_stop_sequences(i.stop_sequences.clone())
                .build()
        }));
    if let Some(schema) = &features.output_schema {
        call = call.set_output_config(output_config(schema));
    }
    if let Some((_, guardrail)) = &features.guardrail {
        call = call.set_guardrail_config(guardrail_config(guardrail));
    }
    if let Some(tier) = features.service_tier {
        call = call.set_service_tier(
            bedrock::ServiceTier::builder()
                .r#type(ServiceTierType::from(tier.as_str()))
                .build()
                .ok(),
        );
    }
    if let Some(fields) = &features.model_fields {
        call = call.additional_model_request_fields(to_document(&Value::Object(fields.clone())));
    }
    call
}

/// The InvokeModel call for `job`'s raw `invoke` body.
pub(super) fn invoke(
    client: &Client,
    job: &ResolvedJob,
    invoke: &Invoke,
) -> InvokeModelFluentBuilder {
    let mut call = client
        .invoke_model()
        .model_id(&job.model)
        // A JSON value always serialises.
        .body(Blob::new(
            serde_json::to_vec(&invoke.body).unwrap_or_default(),
        ))
        .content_type(invoke.content_type.as_deref().unwrap_or("application/json"))
        .accept(invoke.accept.as_deref().unwrap_or("application/json"));
    if let Some((_, guardrail)) = &job.features.guardrail {
        call = call
            .guardrail_identifier(&guardrail.identifier)
            .guardrail_version(&guardrail.version)
            .trace(bedrock::Trace::from(
                guardrail.trace.as_str().to_ascii_uppercase().as_str(),
            ));
    }
    if let Some(tier) = job.features.service_tier {
        call = call.service_tier(ServiceTierType::from(tier.as_str()));
    }
    call
}

fn cache_point(points: CachePoints) -> Option<CachePointBlock> {
    CachePointBlock::builder()
        .r#type(CachePointType::Default)
        .ttl(bedrock::CacheTtl::from(points.ttl.as_str()))
        .build()
        .ok()
}

fn system(job: &ResolvedJob, points: Option<CachePoints>) -> Option<Vec<SystemContentBlock>> {
    if job.system.is_empty() {
        return None;
    }
    let mut blocks: Vec<SystemContentBlock> = job
        .system
        .iter()
        .cloned()
        .map(SystemContentBlock::Text)
        .collect();
    if let Some(point) = points.filter(|p| p.after_system).and_then(cache_point) {
        blocks.push(SystemContentBlock::CachePoint(point));
    }
    Some(blocks)
}

fn messages(job: &ResolvedJob, points: Option<CachePoints>) -> Vec<bedrock::Message> {
    job.messages
        .iter()
        .enumerate()
        .filter_map(|(i, message)| {
            let mut content: Vec<BedrockBlock> = message.content.iter().map(block).collect();
            if i == 0 {
                if let Some((at, point)) = points
                    .and_then(|p| p.first_message_after.map(|at| (at, p)))
                    .and_then(|(at, p)| cache_point(p).map(|point| (at, point)))
                {
                    content.insert(at, BedrockBlock::CachePoint(point));
                }
            }
            bedrock::Message::builder()
                .role(match message.role {
                    Role::User => ConversationRole::User,
                    Role::Assistant => ConversationRole::Assistant,
                })
                .set_content(Some(content))
                .build()
                .ok()
        })
        .collect()
}

fn block(block: &ContentBlock) -> BedrockBlock {
    match block {
        ContentBlock::Text(text) => BedrockBlock::Text(text.clone()),
        ContentBlock::Image(media) => ImageBlock::builder()
            .format(ImageFormat::from(media.format.as_str()))
            .source(ImageSource::Bytes(media_bytes(media)))
            .build()
            .map(BedrockBlock::Image)
            .unwrap_or_else(|_| BedrockBlock::Text(String::new())),
        ContentBlock::Document(media) => DocumentBlock::builder()
            .format(DocumentFormat::from(media.format.as_str()))
            .name(media.name.clone().unwrap_or_default())
            .source(DocumentSource::Bytes(media_bytes(media)))
            .build()
            .map(BedrockBlock::Document)
            .unwrap_or_else(|_| BedrockBlock::Text(String::new())),
    }
}

/// Job validation already decoded these bytes once, so this cannot fail here.
fn media_bytes(media: &MediaBlock) -> Blob {
    Blob::new(decode_media(media).unwrap_or_default())
}

/// `outputConfig.textFormat`: the schema as JSON text, named.
fn output_config(schema: &Value) -> Option<OutputConfig> {
    let definition = JsonSchemaDefinition::builder()
        .schema(schema.to_string())
        .name(schema_name(schema))
        .build()
        .ok()?;
    let format = OutputFormat::builder()
        .r#type(OutputFormatType::JsonSchema)
        .structure(OutputFormatStructure::JsonSchema(definition))
        .build()
        .ok()?;
    Some(OutputConfig::builder().text_format(format).build())
}

fn guardrail_config(guardrail: &Guardrail) -> Option<GuardrailConfiguration> {
    Some(
        GuardrailConfiguration::builder()
            .guardrail_identifier(&guardrail.identifier)
            .guardrail_version(&guardrail.version)
            .trace(bedrock::GuardrailTrace::from(guardrail.trace.as_str()))
            .build(),
    )
}

/// A JSON value as the SDK's document type (`additionalModelRequestFields`).
pub(crate) fn to_document(value: &Value) -> Document {
    match value {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Number::PosInt(u),
            (None, Some(i)) => Number::NegInt(i),
            (None, None) => Number::Float(n.as_f64().unwrap_or_default()),
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(to_document).collect()),
        Value::Object(map) => Document::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), to_document(value)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aws_sdk_bedrockruntime::config::{BehaviorVersion, Region};
    use serde_json::json;

    use super::*;
    use crate::domain::features::{CacheTtl, FeatureDefaults, GuardrailTrace, ServiceTier};
    use crate::domain::job::{Defaults, Job};

    fn client() -> Client {
        Client::from_conf(
            aws_sdk_bedrockruntime::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .build(),
        )
    }

    fn defaults() -> FeatureDefaults {
        FeatureDefaults {
            guardrails: BTreeMap::from([(
                "pii".to_owned(),
                Guardrail {
                    identifier: "gr1abc".into(),
                    version: "2".into(),
                    trace: GuardrailTrace::Enabled,
                },
            )]),
            ..FeatureDefaults::default()
        }
    }

    fn resolved(job: Value) -> ResolvedJob {
        let defaults = defaults();
        Job::from_value(job)
            .and_then(|job| {
                job.resolve_with(
                    &Defaults {
                        model: Some("anthropic.claude-sonnet-4-5-20250929-v1:0"),
                        features: &defaults,
                    },
                    "evt-1",
                )
            })
            .expect("a valid job")
    }

    /// With `cache`, one cache point follows the system blocks and one the
    /// shared leading blocks of the first message, both with the job's TTL.
    #[test]
    fn cache_points_follow_the_system_and_the_shared_blocks() {
        let mut job = resolved(json!({
            "messages": [{"role": "user", "content": [{"text": "Classify: "}, {"text": "the item"}]}],
            "system": "You are a classifier.",
            "cache": "1h"
        }));
        job.features.shared_blocks = 1;
        let call = converse(&client(), &job);
        let input = call.as_input();
        let system = input.get_system().as_deref().unwrap_or_default();
        assert_eq!(system.len(), 2);
        let point = system[1].as_cache_point().expect("a cache point last");
        assert_eq!(point.ttl(), Some(&bedrock::CacheTtl::OneHour));
        let content = input.get_messages().as_deref().unwrap_or_default()[0].content();
        assert_eq!(content.len(), 3);
        assert!(content[0].is_text() && content[2].is_text());
        assert!(content[1].is_cache_point(), "{content:?}");

        let uncached = resolved(json!({"prompt": "hi", "system": "s"}));
        let call = converse(&client(), &uncached);
        assert_eq!(
            call.as_input().get_system().as_deref().map(<[_]>::len),
            Some(1)
        );
    }

    /// Structured output, the guardrail, the tier and the model fields go
    /// where Converse takes them.
    #[test]
    fn features_become_converse_fields() {
        let schema = json!({"title": "triage", "type": "object", "properties": {"team": {"type": "string"}}});
        let job = resolved(json!({
            "prompt": "Route this ticket",
            "output_schema": schema,
            "guardrail": "pii",
            "service_tier": "priority",
            "model_fields": {"thinking": {"type": "enabled", "budget_tokens": 2048}}
        }));
        assert_eq!(job.features.service_tier, Some(ServiceTier::Priority));
        assert_eq!(job.features.cache, CacheTtl::None);
        let call = converse(&client(), &job);
        let input = call.as_input();
        let format = input
            .get_output_config()
            .as_ref()
            .and_then(|c| c.text_format())
            .expect("a text format");
        assert_eq!(format.r#type(), &OutputFormatType::JsonSchema);
        let definition = format
            .structure()
            .and_then(|s| s.as_json_schema().ok())
            .expect("a JSON schema");
        assert_eq!(definition.name(), Some("triage"));
        assert_eq!(
            serde_json::from_str::<Value>(definition.schema()).expect("JSON text"),
            schema
        );
        let guardrail = input.get_guardrail_config().as_ref().expect("guardrail");
        assert_eq!(
            (
                guardrail.guardrail_identifier(),
                guardrail.guardrail_version()
            ),
            ("gr1abc", "2")
        );
        assert_eq!(guardrail.trace(), &bedrock::GuardrailTrace::Enabled);
        assert_eq!(
            input
                .get_service_tier()
                .as_ref()
                .map(|t| t.r#type().as_str()),
            Some("priority")
        );
        let fields = input
            .get_additional_model_request_fields()
            .as_ref()
            .and_then(|d| d.as_object())
            .expect("an object");
        let thinking = fields["thinking"].as_object().expect("thinking");
        assert_eq!(
            thinking["budget_tokens"],
            Document::Number(Number::PosInt(2048))
        );
    }

    /// An InvokeModel job keeps its body and gets the guardrail and the tier
    /// as Bedrock's headers' fields.
    #[test]
    fn invoke_jobs_carry_guardrail_and_tier_outside_the_body() {
        let job = resolved(json!({
            "invoke": {"body": {"inputText": "hello"}},
            "guardrail": "pii",
            "service_tier": "flex"
        }));
        let Some(body) = job.invoke.clone() else {
            panic!("an invoke job")
        };
        let call = invoke(&client(), &job, &body);
        let input = call.as_input();
        assert_eq!(input.get_guardrail_identifier().as_deref(), Some("gr1abc"));
        assert_eq!(input.get_guardrail_version().as_deref(), Some("2"));
        assert_eq!(input.get_trace(), &Some(bedrock::Trace::Enabled));
        assert_eq!(input.get_service_tier(), &Some(ServiceTierType::Flex));
        let sent: Value = serde_json::from_slice(
            input
                .get_body()
                .as_ref()
                .map(Blob::as_ref)
                .unwrap_or_default(),
        )
        .expect("JSON");
        assert_eq!(sent, json!({"inputText": "hello"}));
    }

    #[test]
    fn json_values_become_documents() {
        let doc = to_document(&json!({"a": [1, -2, 0.5, true, null, "x"]}));
        let items = doc
            .as_object()
            .and_then(|o| o["a"].as_array())
            .expect("array");
        assert_eq!(items[0], Document::Number(Number::PosInt(1)));
        assert_eq!(items[1], Document::Number(Number::NegInt(-2)));
        assert_eq!(items[2], Document::Number(Number::Float(0.5)));
        assert_eq!(items[3], Document::Bool(true));
        assert_eq!(items[4], Document::Null);
        assert_eq!(items[5], Document::String("x".into()));
    }
}
