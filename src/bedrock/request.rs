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
