//! The job: what one event asks Bedrock to do, parsed strictly and checked
//! before any credential or model call is made.
//!
//! A [`Job`] is the wire shape (what arrives in `detail`, a bare event or
//! `RELAY_DEFAULT_JOB`); [`Job::resolve`] turns it into a [`ResolvedJob`] with
//! the model, id and conversation settled. Unknown fields are errors: a typo
//! like `modle` must fail loudly, not run the default model.

mod checks;

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::domain::batch_job::{parse_complete_within, JobMode};
use crate::domain::features::{
    check_model_fields, check_output_schema, CacheTtl, FeatureDefaults, Features, ServiceTier,
};
use checks::{check_inference, check_messages};
pub(crate) use checks::{check_job_id, json_kind, sanitize_id, without_values};
pub use checks::{check_model_id, decode_media, is_template};

/// Longest job id accepted: it becomes part of an S3 key (1024 bytes at most).
pub(crate) const MAX_ID_LEN: usize = 512;
/// Bedrock takes at most four stop sequences for most models; none takes more than this.
pub(crate) const MAX_STOP_SEQUENCES: usize = 64;

/// A job that cannot run, with the field to fix.
#[derive(Debug, Error)]
pub enum JobError {
    /// The text is not JSON at all.
    #[error("the job is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// A field is unknown, missing or of the wrong type.
    #[error("{path}: {message}")]
    Field {
        /// Where in the job, e.g. `messages[0].content[1]`.
        path: String,
        /// What is wrong there.
        message: String,
    },
    /// No model in the job and no default configured.
    #[error("model: the job names no `model` and RELAY_DEFAULT_MODEL is not set; add `model` to the job or set RELAY_DEFAULT_MODEL")]
    NoModel,
    /// Both `prompt` and `messages`.
    #[error("prompt, messages: the job has both `prompt` and `messages`; give exactly one")]
    PromptAndMessages,
    /// Neither `prompt` nor `messages`.
    #[error(
        "prompt, messages: the job has none of `prompt`, `messages` and `invoke`; give exactly one"
    )]
    NoPrompt,
}

impl JobError {
    pub(crate) fn field(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Field {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A job as it arrives.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    {"required": ["prompt"]},
    {"required": ["messages"]},
    {"required": ["invoke"], "not": {"anyOf": [{"required": ["system"]}, {"required": ["inference"]}]}}
]))]
pub struct Job {
    /// The result's key; defaults to the envelope's id, else the Lambda request id.
    #[schemars(transform = crate::domain::schema_rules::job_id_rule)]
    pub id: Option<String>,
    /// Model ID, inference-profile ID or ARN; defaults to `RELAY_DEFAULT_MODEL`.
    #[schemars(transform = crate::domain::schema_rules::model_id_rule)]
    pub model: Option<String>,
    /// The target alias (from `RELAY_TARGETS`), or a list of aliases to pool;
    /// defaults to `default`.
    pub target: Option<TargetChoice>,
    /// One user message (exclusive with `messages`).
    #[schemars(length(min = 1), regex(pattern = r"\S"))]
    pub prompt: Option<String>,
    /// A Converse conversation (exclusive with `prompt`).
    #[schemars(length(min = 1))]
    pub messages: Option<Vec<Message>>,
    /// A raw InvokeModel request (exclusive with `prompt` and `messages`).
    pub invoke: Option<Invoke>,
    /// System prompt: a string or Converse system blocks.
    pub system: Option<System>,
    /// Inference parameters.
    pub inference: Option<Inference>,
    /// Copied unchanged into the result record.
    pub metadata: Option<Map<String, Value>>,
    /// `s3://bucket/key` objects sent with the prompt as document or image blocks
    /// (templated; read with the function's own credentials).
    pub documents: Option<Vec<String>>,
    /// Run the job once per item (strings or objects, `item` in templates).
    pub items: Option<Vec<Value>>,
    /// Like `items`, read from a JSON Lines object: `s3://bucket/key.jsonl` (templated).
    pub items_from: Option<String>,
    /// Where the result goes (templated): `s3://`, an SQS queue URL or ARN, an SNS
    /// topic ARN, an EventBridge bus ARN or a DynamoDB table ARN. Must match
    /// `RELAY_ALLOWED_DESTINATIONS`; defaults to `RELAY_DESTINATION`.
    pub destination: Option<String>,
    /// SQS FIFO / SNS FIFO message group (templated); defaults to the job id.
    pub group: Option<String>,
    /// How a batch runs: `on-demand` (model calls now), `batch-job` (Bedrock
    /// batch inference jobs, half the price, within `complete_within`) or
    /// `auto` (a batch job when the batch is large enough and may take 24
    /// hours); defaults to `RELAY_DEFAULT_MODE`. A single job runs on-demand
    /// (`batch-job` needs `items` or `items_from`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<JobMode>,
    /// The time the caller accepts for the whole batch: a positive ISO 8601
    /// duration of days, weeks, hours, minutes or seconds, e.g. `PT24H` or
    /// `P2D` (not years or months). `auto` chooses a batch job only with
    /// `PT24H` or more, and `batch-job` refuses less.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "duration"))]
    pub complete_within: Option<String>,
    /// Run on-demand the records a batch job did not answer (expired,
    /// stopped, failed) while time allows; else they are written as failed.
    /// Default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_on_demand: Option<bool>,
    /// A JSON Schema (draft 2020-12, local `$ref`s only) the answer must
    /// match: Converse jobs send it as structured output, and every answer
    /// is parsed and validated (`output.json` in the record). Not rendered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("type" = "object"))]
    pub output_schema: Option<Value>,
    /// Prompt caching: `none`, `5m` or `1h` (the cache points' time to
    /// live); defaults to `RELAY_DEFAULT_CACHE`. Converse only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheTtl>,
    /// A guardrail alias from `RELAY_GUARDRAILS` (never an ID or ARN);
    /// defaults to `RELAY_DEFAULT_GUARDRAIL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub guardrail: Option<String>,
    /// `default`, `flex` or `priority`; defaults to
    /// `RELAY_DEFAULT_SERVICE_TIER`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<ServiceTier>,
    /// Converse `additionalModelRequestFields` (e.g. reasoning settings):
    /// only the keys allowlisted for the model's family. Converse only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_fields: Option<Map<String, Value>>,
}

/// What a job that does not say is given.
#[derive(Debug, Clone, Copy)]
pub struct Defaults<'a> {
    /// `RELAY_DEFAULT_MODEL`.
    pub model: Option<&'a str>,
    /// The model features' defaults and the guardrail aliases.
    pub features: &'a FeatureDefaults,
}

/// A raw model request for InvokeModel: the body as the model family defines it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Invoke {
    /// The model body (JSON), sent as is.
    #[schemars(extend("type" = ["object", "array"]))]
    pub body: Value,
    /// `Content-Type` of the body; `application/json` by default.
    pub content_type: Option<String>,
    /// `Accept`; `application/json` by default.
    pub accept: Option<String>,
}

/// A job's `target`: one alias, or several to spread work over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TargetChoice {
    /// One target alias.
    One(String),
    /// A pool of target aliases.
    #[schemars(extend("minItems" = 1))]
    Pool(Vec<String>),
}

/// A Converse message, as Bedrock defines it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    #[schemars(length(min = 1))]
    pub content: Vec<ContentBlock>,
}

/// A message's speaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The caller.
    User,
    /// The model.
    Assistant,
}

/// One block of a message's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ContentBlock {
    /// Text.
    #[schemars(transform = crate::domain::schema_rules::text_block_rule)]
    Text(String),
    /// An image, inline.
    Image(MediaBlock),
    /// A document, inline.
    Document(MediaBlock),
}

/// An image or document block: `{format, name?, source: {bytes}}` with base64 bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MediaBlock {
    /// `png`, `jpeg`, `gif`, `webp` for images; `pdf`, `csv`, `doc`, `docx`, `xls`,
    /// `xlsx`, `html`, `txt`, `md` for documents.
    pub format: String,
    /// A document's name (required by Bedrock for documents).
    pub name: Option<String>,
    /// The content.
    pub source: MediaSource,
}

/// Inline content, base64-encoded as in Bedrock's JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MediaSource {
    /// Base64 of the raw bytes.
    #[schemars(extend("contentEncoding" = "base64"))]
    pub bytes: String,
}

/// A system prompt: one string, or Converse's `[{"text": ...}]` blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum System {
    /// One text.
    #[schemars(extend("pattern" = r"\S"))]
    Text(String),
    /// Several text blocks.
    Blocks(Vec<SystemBlock>),
}

/// One Converse system block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemBlock {
    /// The text.
    #[schemars(regex(pattern = r"\S"))]
    pub text: String,
}

/// Converse's `inferenceConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Inference {
    /// Upper bound on generated tokens.
    #[schemars(range(min = 1))]
    pub max_tokens: Option<i32>,
    /// 0.0–1.0.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub temperature: Option<f32>,
    /// 0.0–1.0.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub top_p: Option<f32>,
    /// Texts that end generation.
    #[schemars(length(max = MAX_STOP_SEQUENCES), inner(length(min = 1)))]
    pub stop_sequences: Option<Vec<String>>,
}

/// A job ready to run: model, id and conversation settled and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedJob {
    /// The result's key.
    pub id: String,
    /// The model, inference profile or ARN to call.
    pub model: String,
    /// The target aliases asked for, in order: one, a pool, or none (the default).
    pub targets: Vec<String>,
    /// A raw InvokeModel request; when set, `messages` is empty and unused.
    pub invoke: Option<Invoke>,
    /// The conversation sent to Converse.
    pub messages: Vec<Message>,
    /// System prompt blocks.
    pub system: Vec<String>,
    /// Inference parameters, if any were given.
    pub inference: Option<Inference>,
    /// Copied into the record.
    pub metadata: Option<Map<String, Value>>,
    /// The job's `mode`; `None`: `RELAY_DEFAULT_MODE` decides.
    pub mode: Option<JobMode>,
    /// The job's `complete_within`, parsed.
    pub complete_within: Option<Duration>,
    /// The job's `retry_on_demand` (default true).
    pub retry_on_demand: bool,
    /// Structured output, caching, guardrail, tier and model fields, settled.
    pub features: Features,
}

impl ResolvedJob {
    /// Puts `prefix` (`RELAY_ID_PREFIX`, rendered) in front of the id, so
    /// senders of different sources cannot reach each other's results; the
    /// scoped id is checked like any id.
    pub fn scope_id(&mut self, prefix: &str) -> Result<(), JobError> {
        if prefix.is_empty() {
            return Ok(());
        }
        let scoped = format!("{prefix}{}", self.id);
        check_job_id(&scoped).map_err(|reason| {
            JobError::field("id", format!("scoped by RELAY_ID_PREFIX: {reason}"))
        })?;
        self.id = scoped;
        Ok(())
    }
}

impl Job {
    /// Whether the job runs once per item (`items` or `items_from`).
    pub fn is_batch(&self) -> bool {
        self.items.is_some() || self.items_from.is_some()
    }

    /// Parses a job from JSON text.
    pub fn from_json(text: &str) -> Result<Self, JobError> {
        let value: Value = serde_json::from_str(text).map_err(JobError::NotJson)?;
        Self::from_value(value)
    }

    /// Parses a job from a JSON value, naming the offending field on error.
    pub fn from_value(value: Value) -> Result<Self, JobError> {
        if !value.is_object() {
            return Err(JobError::field(
                ".",
                format!("a job is a JSON object, got {}", json_kind(&value)),
            ));
        }
        serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            JobError::field(
                if path.is_empty() { ".".into() } else { path },
                without_values(&err.into_inner().to_string()),
            )
        })
    }

    /// [`Job::resolve_with`] with only a default model (no feature defaults,
    /// no guardrail aliases).
    pub fn resolve(
        &self,
        default_model: Option<&str>,
        fallback_id: &str,
    ) -> Result<ResolvedJob, JobError> {
        self.resolve_with(
            &Defaults {
                model: default_model,
                features: &FeatureDefaults::default(),
            },
            fallback_id,
        )
    }

    /// Settles model, id and features and checks everything Bedrock would
    /// reject, so a bad job fails before any STS or Bedrock call.
    pub fn resolve_with(
        &self,
        defaults: &Defaults<'_>,
        fallback_id: &str,
    ) -> Result<ResolvedJob, JobError> {
        let model = match (&self.model, defaults.model) {
            (Some(model), _) => {
                check_model_id(model).map_err(|reason| JobError::field("model", reason))?;
                model.clone()
            }
            (None, Some(default)) => default.to_owned(),
            (None, None) => return Err(JobError::NoModel),
        };

        let id = match &self.id {
            Some(id) => {
                check_job_id(id).map_err(|reason| JobError::field("id", reason))?;
                id.clone()
            }
            None => sanitize_id(fallback_id),
        };

        match (&self.items, &self.items_from) {
            (Some(_), Some(_)) => {
                return Err(JobError::field(
                    "items_from",
                    "a job has `items` or `items_from`, not both",
                ))
            }
            (Some(items), None) if items.is_empty() => {
                return Err(JobError::field(
                    "items",
                    "the list is empty; give at least one item",
                ))
            }
            (None, Some(uri)) if !uri.starts_with("s3://") && !is_template(uri) => {
                return Err(JobError::field(
                    "items_from",
                    format!("`{uri}` is not an s3:// URI; expected s3://bucket/key.jsonl"),
                ))
            }
            _ => {}
        }
        if let Some(documents) = &self.documents {
            if let Some(i) = documents
                .iter()
                .position(|d| !d.starts_with("s3://") && !is_template(d))
            {
                return Err(JobError::field(
                    format!("documents[{i}]"),
                    format!(
                        "`{}` is not an s3:// URI; expected s3://bucket/key",
                        documents[i]
                    ),
                ));
            }
        }
        if let Some(invoke) = &self.invoke {
            if self.prompt.is_some() || self.messages.is_some() {
                return Err(JobError::field(
                    "invoke",
                    "a job has exactly one of `prompt`, `messages` and `invoke`",
                ));
            }
            for (field, present) in [
                ("system", self.system.is_some()),
                ("inference", self.inference.is_some()),
                ("cache", self.cache.is_some_and(|c| c != CacheTtl::None)),
                ("model_fields", self.model_fields.is_some()),
            ] {
                if present {
                    return Err(JobError::field(
                        field,
                        "not used with `invoke`: put it in the model body as the model family expects",
                    ));
                }
            }
            if !(invoke.body.is_object() || invoke.body.is_array()) {
                return Err(JobError::field(
                    "invoke.body",
                    "the model body is a JSON object",
                ));
            }
        }
        let complete_within = self
            .complete_within
            .as_deref()
            .map(parse_complete_within)
            .transpose()
            .map_err(|reason| JobError::field("complete_within", reason))?;
        if self.mode == Some(JobMode::BatchJob) {
            // Item jobs (items taken out, or a frozen chunk's job) must not
            // carry `batch-job`: they run on-demand.
            if !self.is_batch() {
                return Err(JobError::field(
                    "mode",
                    "`batch-job` runs a batch: give `items` or `items_from`, or use `on-demand` for a single job",
                ));
            }
            if self.invoke.is_some() {
                return Err(JobError::field(
                    "mode",
                    "`batch-job` sends Converse records, so it runs `prompt` and `messages` jobs; run an `invoke` job with `on-demand`",
                ));
            }
        }
        let messages = match (&self.prompt, &self.messages) {
            (Some(_), Some(_)) => return Err(JobError::PromptAndMessages),
            (None, None) if self.invoke.is_some() => Vec::new(),
            (None, None) => return Err(JobError::NoPrompt),
            (Some(prompt), None) => {
                if prompt.trim().is_empty() {
                    return Err(JobError::field("prompt", "the prompt is empty"));
                }
                vec![Message {
                    role: Role::User,
                    content: vec![ContentBlock::Text(prompt.clone())],
                }]
            }
            (None, Some(messages)) => {
                check_messages(messages)?;
                messages.clone()
            }
        };

        let system = match &self.system {
            None => Vec::new(),
            Some(System::Text(text)) => vec![text.clone()],
            Some(System::Blocks(blocks)) => blocks.iter().map(|b| b.text.clone()).collect(),
        };
        if system.iter().any(|s| s.trim().is_empty()) {
            return Err(JobError::field("system", "a system prompt block is empty"));
        }

        if let Some(inference) = &self.inference {
            check_inference(inference)?;
        }
        let features = self.features(&model, defaults.features)?;

        Ok(ResolvedJob {
            id,
            model,
            invoke: self.invoke.clone(),
            targets: match &self.target {
                None => Vec::new(),
                Some(TargetChoice::One(alias)) => vec![alias.clone()],
                Some(TargetChoice::Pool(aliases)) => {
                    if aliases.is_empty() {
                        return Err(JobError::field("target", "an empty list names no target"));
                    }
                    aliases.clone()
                }
            },
            messages,
            system,
            inference: self.inference.clone(),
            metadata: self.metadata.clone(),
            mode: self.mode,
            complete_within,
            retry_on_demand: self.retry_on_demand.unwrap_or(true),
            features,
        })
    }

    /// The job's model features: its own choices checked, the rest from
    /// `defaults`. A guardrail is named by an operator's alias only, and the
    /// default one cannot be turned off by a job.
    fn features(&self, model: &str, defaults: &FeatureDefaults) -> Result<Features, JobError> {
        // `resolve` has refused what an `invoke` job does not take.
        let converse = self.invoke.is_none();
        if let Some(schema) = &self.output_schema {
            check_output_schema(schema)
                .map_err(|reason| JobError::field("output_schema", reason))?;
        }
        if let Some(fields) = &self.model_fields {
            check_model_fields(model, fields)
                .map_err(|reason| JobError::field("model_fields", reason))?;
        }
        let guardrail = match self.guardrail.as_ref().or(defaults.guardrail.as_ref()) {
            None => None,
            Some(alias) => match defaults.guardrails.get(alias) {
                Some(guardrail) => Some((alias.clone(), guardrail.clone())),
                None => {
                    let known: Vec<&str> = defaults.guardrails.keys().map(String::as_str).collect();
                    return Err(JobError::field(
                        "guardrail",
                        if known.is_empty() {
                            "no guardrails are configured (RELAY_GUARDRAILS); leave `guardrail` out, or ask the operator to add one".to_owned()
                        } else {
                            format!(
                                "not a guardrail alias of RELAY_GUARDRAILS (a job names a guardrail by its alias, never by ID or ARN); known: {}",
                                known.join(", ")
                            )
                        },
                    ));
                }
            },
        };
        Ok(Features {
            output_schema: self.output_schema.clone(),
            cache: match converse {
                true => self.cache.unwrap_or(defaults.cache),
                false => CacheTtl::None,
            },
            shared_blocks: 0,
            guardrail,
            service_tier: self.service_tier.or(defaults.service_tier),
            model_fields: self.model_fields.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn resolve(job: Value) -> Result<ResolvedJob, JobError> {
        Job::from_value(job)?.resolve(Some("default.model-v1:0"), "evt-1")
    }

    fn error(job: Value) -> String {
        resolve(job).expect_err("job should be refused").to_string()
    }

    #[test]
    fn prompt_job_becomes_one_user_message_with_defaults() {
        let job = resolve(json!({"prompt": "Say hi"})).expect("valid");
        assert_eq!(job.model, "default.model-v1:0");
        assert_eq!(job.id, "evt-1");
        assert_eq!(
            job.messages,
            vec![Message {
                role: Role::User,
                content: vec![ContentBlock::Text("Say hi".into())]
            }]
        );
    }

    #[test]
    fn full_job_keeps_every_setting() {
        let job = resolve(json!({
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
        }))
        .expect("valid");
        assert_eq!(job.id, "reports/2026-11-28");
        assert!(job.model.ends_with("us.amazon.nova-lite-v1:0"));
        assert_eq!(job.messages.len(), 3);
        assert_eq!(job.system, vec!["Be brief", "Use English"]);
        assert_eq!(job.inference.as_ref().and_then(|i| i.max_tokens), Some(50));
        assert_eq!(
            job.metadata.as_ref().map(|m| m["team"].clone()),
            Some(json!("finance"))
        );
    }

    /// Parse errors name the path and what was expected, never the value.
    #[test]
    fn parse_errors_do_not_quote_the_value() {
        let msg = error(json!({"prompt": "hi", "inference": {"maxTokens": "secret, expected x"}}));
        assert!(msg.starts_with("inference.maxTokens"), "{msg}");
        assert!(msg.contains("invalid type: string, expected"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");
        let msg =
            error(json!({"messages": [{"role": "the secret plan", "content": [{"text": "x"}]}]}));
        assert!(msg.contains("unknown variant, expected"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");
    }

    #[test]
    fn unknown_fields_are_named_never_ignored() {
        let msg = error(json!({"prompt": "hi", "modle": "x"}));
        assert!(msg.contains("unknown field `modle`"), "{msg}");
        let msg = error(json!({"prompt": "hi", "inference": {"max_tokens": 5}}));
        assert!(msg.starts_with("inference"), "{msg}");
        assert!(msg.contains("unknown field `max_tokens`"), "{msg}");
        let msg = error(json!({"messages": [{"role": "user", "content": [{"toolUse": {}}]}]}));
        assert!(msg.starts_with("messages[0].content[0]"), "{msg}");
        assert!(msg.contains("unknown variant `toolUse`"), "{msg}");
    }

    #[test]
    fn invoke_jobs_carry_a_raw_body_and_nothing_converse_only() {
        let job = resolve(
            json!({"invoke": {"body": {"inputText": "embed me"}, "accept": "application/json"}}),
        )
        .expect("valid");
        assert_eq!(
            job.invoke.as_ref().map(|i| i.body.clone()),
            Some(json!({"inputText": "embed me"}))
        );
        assert!(job.messages.is_empty());
        assert!(error(json!({"prompt": "x", "invoke": {"body": {}}}))
            .starts_with("invoke: a job has exactly one"));
        assert!(error(json!({"invoke": {"body": {}}, "system": "x"}))
            .starts_with("system: not used with `invoke`"));
        assert!(error(json!({"invoke": {"body": "text"}})).starts_with("invoke.body"));
        assert!(error(json!({"invoke": {"body": {}, "contentTyp": "x"}}))
            .contains("unknown field `contentTyp`"));
    }

    #[test]
    fn prompt_and_messages_are_exclusive() {
        assert!(error(
            json!({"prompt": "a", "messages": [{"role": "user", "content": [{"text": "b"}]}]})
        )
        .contains("both `prompt` and `messages`"));
        assert!(error(json!({"system": "x"})).contains("none of `prompt`, `messages` and `invoke`"));
    }

    #[test]
    fn missing_model_without_default_names_both_fixes() {
        let err = Job::from_value(json!({"prompt": "hi"}))
            .expect("parses")
            .resolve(None, "r")
            .expect_err("no model");
        assert!(matches!(err, JobError::NoModel));
        assert!(err.to_string().contains("RELAY_DEFAULT_MODEL"));
    }

    #[test]
    fn wrong_types_and_ranges_name_the_field() {
        assert!(error(json!({"prompt": 5})).starts_with("prompt: invalid type"));
        assert!(
            error(json!({"prompt": "hi", "inference": {"temperature": 1.5}}))
                .starts_with("inference.temperature")
        );
        assert!(
            error(json!({"prompt": "hi", "inference": {"maxTokens": 0}}))
                .starts_with("inference.maxTokens")
        );
        assert!(error(json!({"prompt": "   "})).starts_with("prompt: the prompt is empty"));
        assert!(error(json!({"prompt": "hi", "model": "a b"})).starts_with("model:"));
        assert!(error(json!({"prompt": "hi", "id": "../etc/passwd"})).starts_with("id:"));
        assert!(error(json!({"prompt": "hi", "id": "a b"})).starts_with("id:"));
        assert!(
            error(json!({"messages": [{"role": "assistant", "content": [{"text": "x"}]}]}))
                .starts_with("messages[0].role")
        );
        assert!(error(json!({"messages": [
            {"role": "user", "content": [{"text": "x"}]},
            {"role": "user", "content": [{"text": "y"}]}
        ]}))
        .starts_with("messages[1].role"));
        assert!(
            error(json!({"messages": [{"role": "user", "content": []}]}))
                .starts_with("messages[0].content")
        );
        assert!(error(json!({"messages": [{"role": "user", "content": [{"image": {"format": "bmp", "source": {"bytes": ""}}}]}]}))
            .starts_with("messages[0].content[0].image.format"));
        assert!(error(json!({"messages": [{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": "!!"}}}]}]}))
            .starts_with("messages[0].content[0].image.source.bytes"));
        assert!(error(json!({"messages": [{"role": "user", "content": [{"document": {"format": "pdf", "source": {"bytes": ""}}}]}]}))
            .starts_with("messages[0].content[0].document.name"));
        assert!(error(json!(["not", "an", "object"])).contains("got an array"));
    }

    /// `mode`, `complete_within` and `retry_on_demand` are settled: parsed,
    /// defaulted, and absent from a job that does not set them.
    #[test]
    fn batch_mode_fields_are_parsed_and_defaulted() {
        let job = resolve(json!({"prompt": "hi"})).expect("valid");
        assert_eq!(
            (job.mode, job.complete_within, job.retry_on_demand),
            (None, None, true)
        );
        let job = resolve(json!({
            "prompt": "hi", "items": [1, 2], "mode": "batch-job",
            "complete_within": "P2D", "retry_on_demand": false
        }))
        .expect("valid");
        assert_eq!(job.mode, Some(JobMode::BatchJob));
        assert_eq!(job.complete_within, Some(Duration::from_secs(48 * 3600)));
        assert!(!job.retry_on_demand);
        let plain = Job::from_value(json!({"prompt": "hi"})).expect("parses");
        let written = serde_json::to_value(&plain).expect("serializes");
        for field in ["mode", "complete_within", "retry_on_demand"] {
            assert!(
                written.get(field).is_none(),
                "{field} is left out when unset"
            );
        }
    }

    /// A bad window, a single job or an `invoke` job asking for `batch-job`,
    /// and an unknown mode are refused naming the field.
    #[test]
    fn batch_mode_fields_are_checked() {
        let msg = error(json!({"prompt": "hi", "items": [1], "complete_within": "24h"}));
        assert!(
            msg.starts_with("complete_within: not an ISO 8601 duration"),
            "{msg}"
        );
        let msg = error(json!({"prompt": "hi", "items": [1], "complete_within": "-PT1H"}));
        assert!(
            msg.starts_with("complete_within:") && msg.contains("positive"),
            "{msg}"
        );
        let msg = error(json!({"prompt": "hi", "mode": "batch-job"}));
        assert!(msg.starts_with("mode: `batch-job` runs a batch"), "{msg}");
        let msg = error(json!({"invoke": {"body": {}}, "items": [1], "mode": "batch-job"}));
        assert!(
            msg.starts_with("mode:") && msg.contains("`invoke`"),
            "{msg}"
        );
        let msg = error(json!({"prompt": "hi", "mode": "batch"}));
        assert!(msg.starts_with("mode: unknown variant `batch`"), "{msg}");
        for mode in ["on-demand", "auto"] {
            assert!(
                resolve(json!({"prompt": "hi", "mode": mode})).is_ok(),
                "{mode}"
            );
        }
    }

    /// The feature fields are settled from the job, else the operator's
    /// defaults; a guardrail is an alias only, and InvokeModel jobs take no
    /// cache or model fields.
    #[test]
    fn features_are_settled_from_the_job_then_the_defaults() {
        use crate::domain::features::{CacheTtl, Guardrail, GuardrailTrace, ServiceTier};
        let defaults = FeatureDefaults {
            cache: CacheTtl::FiveMinutes,
            service_tier: Some(ServiceTier::Flex),
            guardrails: [(
                "pii".to_owned(),
                Guardrail {
                    identifier: "gr1".into(),
                    version: "DRAFT".into(),
                    trace: GuardrailTrace::Disabled,
                },
            )]
            .into(),
            guardrail: Some("pii".into()),
        };
        let settle = |job: Value| {
            Job::from_value(job).and_then(|job| {
                job.resolve_with(
                    &Defaults {
                        model: Some("amazon.nova-lite-v1:0"),
                        features: &defaults,
                    },
                    "evt-1",
                )
            })
        };
        let job = settle(json!({"prompt": "hi"})).expect("valid");
        assert_eq!(job.features.cache, CacheTtl::FiveMinutes);
        assert_eq!(job.features.service_tier, Some(ServiceTier::Flex));
        assert_eq!(
            job.features.guardrail.as_ref().map(|(a, _)| a.as_str()),
            Some("pii")
        );
        let job = settle(json!({"prompt": "hi", "cache": "none", "service_tier": "default"}))
            .expect("valid");
        assert_eq!(job.features.cache, CacheTtl::None);
        assert_eq!(job.features.service_tier, Some(ServiceTier::Default));
        let invoke = settle(json!({"invoke": {"body": {}}})).expect("valid");
        assert_eq!(
            invoke.features.cache,
            CacheTtl::None,
            "the default cache is Converse's"
        );

        let msg = settle(json!({"prompt": "hi", "guardrail": "arn:aws:bedrock:us-east-1:111111111111:guardrail/gr1"}))
            .expect_err("an ARN")
            .to_string();
        assert!(
            msg.starts_with("guardrail: not a guardrail alias") && msg.contains("known: pii"),
            "{msg}"
        );
        let msg = error(json!({"prompt": "hi", "guardrail": "pii"}));
        assert!(msg.contains("no guardrails are configured"), "{msg}");
        let msg = error(json!({"invoke": {"body": {}}, "cache": "5m"}));
        assert!(msg.starts_with("cache: not used with `invoke`"), "{msg}");
        let msg = error(json!({"prompt": "hi", "output_schema": {"type": 5}}));
        assert!(
            msg.starts_with("output_schema: not a valid JSON Schema"),
            "{msg}"
        );
        let msg = error(json!({"prompt": "hi", "model_fields": {"top_k": 5}}));
        assert!(msg.starts_with("model_fields:"), "{msg}");
        let msg = error(json!({"prompt": "hi", "cache": "10m"}));
        assert!(msg.starts_with("cache: unknown variant `10m`"), "{msg}");
        let msg = error(json!({"prompt": "hi", "service_tier": "reserved"}));
        assert!(
            msg.starts_with("service_tier: unknown variant `reserved`"),
            "{msg}"
        );
    }

    #[test]
    fn fallback_ids_are_made_key_safe() {
        assert_eq!(sanitize_id("a1b2-c3"), "a1b2-c3");
        assert_eq!(
            sanitize_id("weird/../id with space"),
            "weird_.._id_with_space"
        );
        assert_eq!(sanitize_id(""), "unnamed");
    }
}
