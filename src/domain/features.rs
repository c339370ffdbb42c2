//! The model features a job may ask for beyond its conversation: structured
//! output (`output_schema`), prompt caching (`cache`), a guardrail (an
//! operator's alias in `guardrail`), the service tier (`service_tier`) and
//! extra model request fields (`model_fields`).
//!
//! Plain data and the checks on it: what a job may ask, the operator's
//! defaults ([`FeatureDefaults`], from `RELAY_DEFAULT_CACHE`,
//! `RELAY_DEFAULT_SERVICE_TIER`, `RELAY_GUARDRAILS`, `RELAY_DEFAULT_GUARDRAIL`),
//! the settled [`Features`] of a resolved job, and the validation of a
//! structured answer. How they go on the wire is `bedrock/request.rs`.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Largest `output_schema`, as JSON text: Bedrock compiles each new schema
/// into a grammar, and a schema this size is already far past any real one.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// A job's `cache`: whether the shared part of its prompt is cached, and for
/// how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum CacheTtl {
    /// No cache point.
    #[default]
    #[serde(rename = "none")]
    None,
    /// Cache points with a five-minute time to live (Bedrock's default).
    #[serde(rename = "5m")]
    FiveMinutes,
    /// Cache points with a one-hour time to live (models that offer it).
    #[serde(rename = "1h")]
    OneHour,
}

impl CacheTtl {
    /// The value as written in a job, `RELAY_DEFAULT_CACHE` and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::FiveMinutes => "5m",
            Self::OneHour => "1h",
        }
    }

    /// Parses `none`, `5m` or `1h`.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::None, Self::FiveMinutes, Self::OneHour]
            .into_iter()
            .find(|ttl| ttl.as_str() == text)
    }
}

/// A job's `service_tier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceTier {
    /// The standard on-demand tier.
    Default,
    /// Cheaper, answered when capacity allows: answers may be slower.
    Flex,
    /// Faster answers at a higher price.
    Priority,
}

impl ServiceTier {
    /// The tier as written in a job and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Flex => "flex",
            Self::Priority => "priority",
        }
    }

    /// Parses `default`, `flex` or `priority`.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Default, Self::Flex, Self::Priority]
            .into_iter()
            .find(|tier| tier.as_str() == text)
    }
}

impl fmt::Display for ServiceTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether Bedrock returns the guardrail's assessment with the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailTrace {
    /// No assessment.
    #[default]
    Disabled,
    /// The assessment of what the guardrail acted on.
    Enabled,
    /// The whole assessment.
    EnabledFull,
}

impl GuardrailTrace {
    /// Whether Bedrock sends an assessment back.
    pub fn is_on(self) -> bool {
        self != Self::Disabled
    }

    /// The value on the wire (`enabled`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Enabled => "enabled",
            Self::EnabledFull => "enabled_full",
        }
    }
}

/// One guardrail of `RELAY_GUARDRAILS`: a guardrail in the target's account
/// (account A), applied by Bedrock to the job's input and answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guardrail {
    /// The guardrail's ID or ARN.
    pub identifier: String,
    /// `DRAFT` or a version number.
    pub version: String,
    /// Whether the record carries the guardrail's assessment.
    #[serde(default)]
    pub trace: GuardrailTrace,
}

impl Guardrail {
    /// What is wrong with the entry, if anything: Bedrock's own patterns for
    /// an identifier (an ID or a `guardrail/` ARN) and a version.
    pub fn check(&self) -> Result<(), String> {
        let id_ok = |id: &str| {
            !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric())
        };
        let identifier_ok = match self.identifier.rsplit_once(":guardrail/") {
            Some((prefix, id)) => prefix.starts_with("arn:aws") && id_ok(id),
            None => id_ok(&self.identifier),
        };
        if !identifier_ok {
            return Err(format!(
                "identifier `{}` is neither a guardrail ID (letters and digits) nor a guardrail ARN (arn:aws:bedrock:<region>:<account>:guardrail/<id>)",
                self.identifier
            ));
        }
        let version_ok = self.version == "DRAFT"
            || (!self.version.is_empty()
                && self.version.len() <= 8
                && !self.version.starts_with('0')
                && self.version.chars().all(|c| c.is_ascii_digit()));
        if !version_ok {
            return Err(format!(
                "version `{}` is neither DRAFT nor a version number (1, 2, ...)",
                self.version
            ));
        }
        Ok(())
    }
}

/// What the operator settles for jobs that do not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeatureDefaults {
    /// `RELAY_DEFAULT_CACHE`.
    pub cache: CacheTtl,
    /// `RELAY_DEFAULT_SERVICE_TIER`; `None`: Bedrock's default.
    pub service_tier: Option<ServiceTier>,
    /// `RELAY_GUARDRAILS`: alias → guardrail.
    pub guardrails: BTreeMap<String, Guardrail>,
    /// `RELAY_DEFAULT_GUARDRAIL`: an alias of `guardrails`.
    pub guardrail: Option<String>,
}

/// A job's model features, settled: the job's own choices, else the
/// operator's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features {
    /// The JSON Schema the answer must match.
    pub output_schema: Option<Value>,
    /// The cache points' time to live (`None`: no cache point).
    pub cache: CacheTtl,
    /// How many leading blocks of the first user message every call of the
    /// job (every item of a batch) shares: its documents and a template's
    /// static prefix. The second cache point goes after them.
    pub shared_blocks: usize,
    /// The guardrail, with its alias.
    pub guardrail: Option<(String, Guardrail)>,
    /// The tier asked for.
    pub service_tier: Option<ServiceTier>,
    /// Converse `additionalModelRequestFields`.
    pub model_fields: Option<Map<String, Value>>,
}

impl Features {
    /// The tier a call runs in, for learning its latency: the one asked
    /// for, else `default`.
    pub fn tier(&self) -> ServiceTier {
        self.service_tier.unwrap_or(ServiceTier::Default)
    }

    /// Where the job's cache points go, for a request with `system_blocks`
    /// system blocks and `first_message_blocks` blocks in its first message;
    /// `None` when it has none. Both points take the job's one TTL, so TTLs
    /// never increase along the request, and two are within Bedrock's four.
    pub fn cache_points(
        &self,
        system_blocks: usize,
        first_message_blocks: usize,
    ) -> Option<CachePoints> {
        if self.cache == CacheTtl::None {
            return None;
        }
        let after_system = system_blocks > 0;
        let first_message_after = (self.shared_blocks > 0
            && self.shared_blocks <= first_message_blocks)
            .then_some(self.shared_blocks);
        (after_system || first_message_after.is_some()).then_some(CachePoints {
            ttl: self.cache,
            after_system,
            first_message_after,
        })
    }
}

/// Where a request's cache points go: the same for the Converse call and
/// for a batch job's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePoints {
    /// Their time to live.
    pub ttl: CacheTtl,
    /// One after the system blocks.
    pub after_system: bool,
    /// One after this many leading blocks of the first message (the
    /// documents and the static prefix every item shares).
    pub first_message_after: Option<usize>,
}

/// Checks an `output_schema`: an object, not too large, that compiles as
/// JSON Schema with no `$ref` outside itself (nothing is fetched).
pub fn check_output_schema(schema: &Value) -> Result<(), String> {
    if !schema.is_object() {
        return Err(
            "a JSON Schema object is expected, e.g. {\"type\": \"object\", \"properties\": {...}}"
                .into(),
        );
    }
    let size = schema.to_string().len();
    if size > MAX_SCHEMA_BYTES {
        return Err(format!(
            "the schema is {size} bytes of JSON, over the {MAX_SCHEMA_BYTES} accepted"
        ));
    }
    if let Some(reference) = remote_ref(schema) {
        return Err(format!(
            "`$ref` `{reference}` points outside the schema; only local references (`#/...`) are resolved"
        ));
    }
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|err| format!("not a valid JSON Schema: {err}"))
}

fn remote_ref(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => map
            .iter()
            .find_map(|(key, value)| match (key.as_str(), value) {
                ("$ref", Value::String(r)) if !r.starts_with('#') => Some(r.clone()),
                _ => remote_ref(value),
            }),
        Value::Array(items) => items.iter().find_map(remote_ref),
        _ => None,
    }
}

/// An answer that does not match the job's `output_schema`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputMismatch {
    /// The first failing place in the answer, as a JSON pointer (`/` for
    /// the whole answer).
    pub path: String,
    /// What is wrong there.
    pub reason: String,
}

impl fmt::Display for OutputMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at `{}`: {}", self.path, self.reason)
    }
}

/// Parses `text` as JSON and validates it against `schema`: the parsed
/// answer, or where it first fails. A Markdown code fence around the JSON
/// is tolerated (models without structured output add one).
pub fn validate_answer(schema: &Value, text: &str) -> Result<Value, OutputMismatch> {
    let body = strip_fence(text.trim());
    let answer: Value = serde_json::from_str(body).map_err(|err| OutputMismatch {
        path: "/".into(),
        reason: format!("the answer is not JSON ({err})"),
    })?;
    let validator = jsonschema::validator_for(schema).map_err(|err| OutputMismatch {
        path: "/".into(),
        reason: format!("the schema does not compile ({err})"),
    })?;
    if let Some(error) = validator.iter_errors(&answer).next() {
        let path = error.instance_path().to_string();
        return Err(OutputMismatch {
            path: if path.is_empty() { "/".into() } else { path },
            reason: error.to_string(),
        });
    }
    Ok(answer)
}

fn strip_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

/// The name Bedrock's `jsonSchema` is given: the schema's `title` when it is
/// a plain name, else `output`.
pub fn schema_name(schema: &Value) -> String {
    schema
        .get("title")
        .and_then(Value::as_str)
        .filter(|t| {
            !t.is_empty()
                && t.len() <= 64
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .unwrap_or("output")
        .to_owned()
}

/// The `model_fields` keys each model family takes, by the prefix of its
/// model ID (after any region prefix of an inference profile). Only these
/// reach Bedrock: a key outside the table is refused before any call. The
/// table is documented in `docs/model-features.md`.
pub const MODEL_FIELDS: &[(&str, &[&str])] = &[
    // Anthropic Claude: extended thinking, beta flags, top-k sampling.
    ("anthropic.", &["thinking", "anthropic_beta", "top_k"]),
    // Amazon Nova: top-k (`inferenceConfig.topK`) and Nova 2's reasoning.
    ("amazon.nova", &["inferenceConfig", "reasoningConfig"]),
    // OpenAI gpt-oss: reasoning effort.
    ("openai.", &["reasoning_effort"]),
];

/// Regions an inference profile's ID may start with.
const PROFILE_PREFIXES: &[&str] = &[
    "us.", "eu.", "apac.", "jp.", "au.", "ca.", "us-gov.", "global.",
];

/// The base model ID of `model`: an ARN's resource name, without an
/// inference profile's region prefix.
fn base_model(model: &str) -> &str {
    let name = model.rsplit_once('/').map_or(model, |(_, name)| name);
    PROFILE_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name)
}

/// Checks `fields` against [`MODEL_FIELDS`] for `model`: the first key the
/// model's family does not take, with the keys it does.
pub fn check_model_fields(model: &str, fields: &Map<String, Value>) -> Result<(), String> {
    let base = base_model(model);
    let allowed = MODEL_FIELDS
        .iter()
        .find(|(prefix, _)| base.starts_with(prefix))
        .map(|(_, keys)| *keys);
    let Some(allowed) = allowed else {
        return Err(format!(
            "no model_fields are allowlisted for `{model}` (the families that take them are {}); leave model_fields out, or ask the operator to add the family",
            MODEL_FIELDS
                .iter()
                .map(|(prefix, _)| format!("`{}`", prefix.trim_end_matches('.')))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    match fields.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(key) => Err(format!(
            "`{key}` is not a model field this model family takes; allowed: {}",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

/// The part of a prompt template before its first tag: what every item of
/// a batch renders the same, so it can be cached. `None` when the prompt
/// starts with a tag or the part is blank.
pub fn static_prefix(template: &str) -> Option<&str> {
    let end = ["{{", "{%", "{#"]
        .iter()
        .filter_map(|tag| template.find(tag))
        .min()?;
    let prefix = &template[..end];
    (!prefix.trim().is_empty()).then_some(prefix)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A schema must be an object that compiles and fetches nothing.
    #[test]
    fn output_schemas_are_checked_before_any_call() {
        assert!(check_output_schema(&json!({"type": "object"})).is_ok());
        let msg = check_output_schema(&json!("object")).expect_err("a string");
        assert!(msg.contains("JSON Schema object"), "{msg}");
        let msg = check_output_schema(&json!({"type": "objekt"})).expect_err("bad type");
        assert!(msg.starts_with("not a valid JSON Schema"), "{msg}");
        let msg = check_output_schema(
            &json!({"properties": {"a": {"$ref": "https://example.com/s.json"}}}),
        )
        .expect_err("remote ref");
        assert!(msg.contains("https://example.com/s.json"), "{msg}");
        assert!(check_output_schema(
            &json!({"$defs": {"a": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/a"}}})
        )
        .is_ok());
    }

    /// The parsed answer comes back; a mismatch names the first failing path.
    #[test]
    fn answers_are_parsed_and_the_first_failing_path_is_named() {
        let schema = json!({
            "type": "object",
            "properties": {"sentiment": {"enum": ["positive", "negative"]}, "score": {"type": "number"}},
            "required": ["sentiment", "score"]
        });
        let answer = validate_answer(&schema, r#"{"sentiment": "positive", "score": 0.9}"#)
            .expect("matches");
        assert_eq!(answer["score"], json!(0.9));
        assert!(validate_answer(
            &schema,
            "```json\n{\"sentiment\": \"negative\", \"score\": 0}\n```"
        )
        .is_ok());
        let bad =
            validate_answer(&schema, r#"{"sentiment": "meh", "score": 1}"#).expect_err("enum");
        assert_eq!(bad.path, "/sentiment");
        let bad = validate_answer(&schema, r#"{"sentiment": "positive"}"#).expect_err("required");
        assert_eq!(bad.path, "/");
        assert!(bad.reason.contains("score"), "{}", bad.reason);
        let bad = validate_answer(&schema, "Sure! Here it is").expect_err("not json");
        assert!(
            bad.reason.starts_with("the answer is not JSON"),
            "{}",
            bad.reason
        );
    }

    /// Only the allowlisted keys of a model's family pass, profiles and ARNs
    /// included; a family with no entry takes none.
    #[test]
    fn model_fields_are_allowlisted_per_family() {
        let fields = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert!(check_model_fields(
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            &fields(json!({"thinking": {"type": "enabled", "budget_tokens": 2048}}))
        )
        .is_ok());
        assert!(check_model_fields(
            "arn:aws:bedrock:us-east-1:111111111111:inference-profile/eu.amazon.nova-2-lite-v1:0",
            &fields(json!({"reasoningConfig": {"type": "enabled"}}))
        )
        .is_ok());
        let msg = check_model_fields("openai.gpt-oss-120b-1:0", &fields(json!({"thinking": {}})))
            .expect_err("not an openai field");
        assert!(
            msg.contains("`thinking`") && msg.contains("reasoning_effort"),
            "{msg}"
        );
        let msg = check_model_fields(
            "meta.llama3-70b-instruct-v1:0",
            &fields(json!({"top_k": 5})),
        )
        .expect_err("no table entry");
        assert!(msg.starts_with("no model_fields are allowlisted"), "{msg}");
    }

    #[test]
    fn the_static_prefix_is_the_text_before_the_first_tag() {
        assert_eq!(static_prefix("Classify: {{ item }}"), Some("Classify: "));
        assert_eq!(static_prefix("{{ item }} please"), None);
        assert_eq!(static_prefix("  {% if x %}a{% endif %}"), None);
        assert_eq!(static_prefix("no tags at all"), None);
    }

    #[test]
    fn guardrail_entries_follow_bedrocks_patterns() {
        let entry = |identifier: &str, version: &str| Guardrail {
            identifier: identifier.into(),
            version: version.into(),
            trace: GuardrailTrace::Disabled,
        };
        assert!(entry("gr1abc", "DRAFT").check().is_ok());
        assert!(entry(
            "arn:aws:bedrock:us-east-1:111111111111:guardrail/gr1abc",
            "3"
        )
        .check()
        .is_ok());
        assert!(entry("gr 1", "1")
            .check()
            .unwrap_err()
            .contains("identifier"));
        assert!(entry("gr1", "01").check().unwrap_err().contains("version"));
        assert!(entry("gr1", "latest")
            .check()
            .unwrap_err()
            .contains("version"));
    }

    #[test]
    fn schema_names_come_from_a_plain_title() {
        assert_eq!(
            schema_name(&json!({"title": "ticket_triage"})),
            "ticket_triage"
        );
        assert_eq!(schema_name(&json!({"title": "Ticket triage!"})), "output");
        assert_eq!(schema_name(&json!({})), "output");
    }
}
