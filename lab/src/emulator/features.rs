//! The request features Bedrock checks besides the prompt itself: service
//! tiers (Converse `serviceTier`, InvokeModel `X-Amzn-Bedrock-Service-Tier`),
//! `additionalModelRequestFields`, and guardrails (Converse `guardrailConfig`,
//! the InvokeModel guardrail headers, and the ApplyGuardrail operation).
//!
//! Structured output is [`super::schema`], prompt caching [`super::cache`].

use std::collections::HashMap;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{ApiError, Knobs};

/// The answer Bedrock gives for a guardrail id or version it does not know.
pub const UNKNOWN_GUARDRAIL: &str =
    "The guardrail identifier or version provided in the request does not exist.";

/// Why a guardrail blocked, as Bedrock words it in traces and ApplyGuardrail.
const BLOCKED_REASON: &str = "Guardrail blocked.";

/// The tiers every Bedrock service tier request may name.
const KNOWN_TIERS: [&str; 4] = ["default", "flex", "priority", "reserved"];

/// The model families that offer `flex` and `priority` when the knobs name
/// no table (the 2026 line-up); every other model offers only `default`.
const DEFAULT_TIERED_MODELS: [&str; 5] =
    ["nova-pro", "nova-premier", "gpt-oss", "deepseek", "qwen"];

/// A guardrail the emulator knows: it blocks any prompt containing its
/// trigger word (case-insensitive), answering `blocked_message` instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabGuardrail {
    /// The guardrail id: the last segment of its ARN.
    #[serde(default)]
    pub id: String,
    /// The versions that exist (`DRAFT`, `1`, ...); default `["DRAFT", "1"]`.
    #[serde(default = "default_versions")]
    pub versions: Vec<String>,
    /// The word that makes it intervene; default `FORBIDDEN`.
    #[serde(default = "default_trigger")]
    pub trigger: String,
    /// The text answered instead of the model's; default
    /// `Sorry, I can't help with that.`.
    #[serde(default = "default_blocked_message")]
    pub blocked_message: String,
}

impl Default for LabGuardrail {
    fn default() -> Self {
        Self {
            id: String::new(),
            versions: default_versions(),
            trigger: default_trigger(),
            blocked_message: default_blocked_message(),
        }
    }
}

impl LabGuardrail {
    /// A guardrail with this id and the default versions, trigger and message.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            ..Self::default()
        }
    }

    /// Whether any of these texts holds the trigger word.
    fn intervenes<'a>(&self, mut texts: impl Iterator<Item = &'a str>) -> bool {
        let trigger = self.trigger.to_lowercase();
        // An empty trigger would match everything; treat it as "never".
        !trigger.is_empty() && texts.any(|text| text.to_lowercase().contains(&trigger))
    }

    /// The assessment Bedrock reports for a blocked prompt: the custom word matched.
    fn blocked_assessment(&self) -> Value {
        json!({"wordPolicy": {"customWords": [
            {"match": self.trigger, "action": "BLOCKED", "detected": true}
        ]}})
    }
}

fn default_versions() -> Vec<String> {
    vec!["DRAFT".to_owned(), "1".to_owned()]
}

fn default_trigger() -> String {
    "FORBIDDEN".to_owned()
}

fn default_blocked_message() -> String {
    "Sorry, I can't help with that.".to_owned()
}

fn invalid(message: impl Into<String>) -> ApiError {
    (400, "ValidationException", message.into())
}

/// `additionalModelRequestFields` is a JSON document Bedrock hands to the
/// model; it refuses anything but an object.
pub(crate) fn check_additional_fields(request: &Value) -> Result<(), ApiError> {
    match request.get("additionalModelRequestFields") {
        None | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(invalid(
            "The value of additionalModelRequestFields must be a JSON object.",
        )),
    }
}

/// The tier a Converse request asks for (`serviceTier.type`), if any.
pub(crate) fn converse_tier(request: &Value) -> Result<Option<String>, ApiError> {
    match request.get("serviceTier") {
        None | Some(Value::Null) => Ok(None),
        Some(tier) => tier
            .get("type")
            .and_then(Value::as_str)
            .map(|t| Some(t.to_owned()))
            .ok_or_else(|| invalid("The serviceTier field requires a type.")),
    }
}

/// The tiers a model offers: the knobs' table (every entry whose key is a
/// substring of the model id), else the default table; `default` always.
pub(crate) fn offered_tiers(
    model_id: &str,
    tiers: Option<&HashMap<String, Vec<String>>>,
) -> Vec<String> {
    let mut offered = vec!["default".to_owned()];
    let mut add = |tier: &str| {
        if !offered.iter().any(|t| t == tier) {
            offered.push(tier.to_owned());
        }
    };
    match tiers {
        Some(table) => table
            .iter()
            .filter(|(family, _)| model_id.contains(family.as_str()))
            .flat_map(|(_, tiers)| tiers)
            .for_each(|tier| add(tier)),
        None if DEFAULT_TIERED_MODELS.iter().any(|f| model_id.contains(f)) => {
            add("flex");
            add("priority");
        }
        None => {}
    }
    offered
}

/// Refuses a tier the model does not offer (or no tier at all by that name).
pub(crate) fn check_tier(model_id: &str, tier: &str, knobs: &Knobs) -> Result<(), ApiError> {
    if !KNOWN_TIERS.contains(&tier) {
        return Err(invalid(format!(
            "The service tier '{tier}' is not valid. Valid tiers: default, flex, priority, reserved."
        )));
    }
    if offered_tiers(model_id, knobs.tiers.as_ref())
        .iter()
        .any(|t| t == tier)
    {
        Ok(())
    } else {
        Err(invalid(format!(
            "The service tier '{tier}' is not supported for model '{model_id}'."
        )))
    }
}

/// The InvokeModel request headers the features read (InvokeModel carries
/// them in headers, Converse in the body).
#[derive(Debug, Clone, Default)]
pub(crate) struct InvokeOptions {
    /// `X-Amzn-Bedrock-GuardrailIdentifier`.
    pub(crate) guardrail_identifier: Option<String>,
    /// `X-Amzn-Bedrock-GuardrailVersion`.
    pub(crate) guardrail_version: Option<String>,
    /// `X-Amzn-Bedrock-Trace`: `ENABLED`, `DISABLED` or `ENABLED_FULL`.
    pub(crate) trace: Option<String>,
    /// `X-Amzn-Bedrock-Service-Tier`.
    pub(crate) service_tier: Option<String>,
}

impl InvokeOptions {
    /// Reads the headers (names are case-insensitive in `HeaderMap`).
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            guardrail_identifier: header("x-amzn-bedrock-guardrailidentifier"),
            guardrail_version: header("x-amzn-bedrock-guardrailversion"),
            trace: header("x-amzn-bedrock-trace"),
            service_tier: header("x-amzn-bedrock-service-tier"),
        }
    }
}

/// A guardrail a request applies, and whether it asked for a trace.
#[derive(Debug, Clone)]
pub(crate) struct GuardrailUse {
    pub(crate) guardrail: LabGuardrail,
    pub(crate) trace: bool,
}

impl GuardrailUse {
    /// Whether the guardrail blocks a prompt with these texts.
    pub(crate) fn intervenes<'a>(&self, texts: impl Iterator<Item = &'a str>) -> bool {
        self.guardrail.intervenes(texts)
    }

    /// The `guardrail` trace: the input assessment keyed by guardrail id
    /// (empty when it let the prompt through).
    pub(crate) fn trace(&self, intervened: bool) -> Value {
        let mut trace = json!({"inputAssessment": {
            self.guardrail.id.clone(): if intervened { self.guardrail.blocked_assessment() } else { json!({}) }
        }});
        if intervened {
            trace["actionReason"] = json!(BLOCKED_REASON);
        }
        trace
    }
}

/// The guardrail an identifier (bare id or
/// `arn:aws:bedrock:<region>:<account>:guardrail/<id>`) and version name.
pub(crate) fn find_guardrail<'a>(
    knobs: &'a Knobs,
    identifier: &str,
    version: &str,
) -> Option<&'a LabGuardrail> {
    let id = match identifier.strip_prefix("arn:") {
        Some(_) => identifier
            .split_once(":guardrail/")
            .map(|(_, id)| id)
            .filter(|_| identifier.starts_with("arn:aws:bedrock:"))?,
        None => identifier,
    };
    knobs
        .guardrails
        .iter()
        .find(|g| g.id == id && g.versions.iter().any(|v| v == version))
}

/// The guardrail a Converse request applies (`guardrailConfig`), checked.
pub(crate) fn converse_guardrail(
    request: &Value,
    knobs: &Knobs,
) -> Result<Option<GuardrailUse>, ApiError> {
    let Some(config) = request.get("guardrailConfig").filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    let field = |name: &str| config.get(name).and_then(Value::as_str);
    let trace = match field("trace") {
        None | Some("disabled") => false,
        Some("enabled" | "enabled_full") => true,
        Some(other) => {
            return Err(invalid(format!(
                "The guardrail trace '{other}' is not valid. Valid values: enabled, disabled, enabled_full."
            )))
        }
    };
    let (Some(identifier), Some(version)) =
        (field("guardrailIdentifier"), field("guardrailVersion"))
    else {
        return Err(invalid(UNKNOWN_GUARDRAIL));
    };
    let guardrail =
        find_guardrail(knobs, identifier, version).ok_or_else(|| invalid(UNKNOWN_GUARDRAIL))?;
    Ok(Some(GuardrailUse {
        guardrail: guardrail.clone(),
        trace,
    }))
}

/// The guardrail an InvokeModel request applies (its headers), checked.
pub(crate) fn invoke_guardrail(
    options: &InvokeOptions,
    knobs: &Knobs,
) -> Result<Option<GuardrailUse>, ApiError> {
    let trace = match options.trace.as_deref() {
        None | Some("DISABLED") => false,
        Some("ENABLED" | "ENABLED_FULL") => true,
        Some(other) => {
            return Err(invalid(format!(
                "The value '{other}' of X-Amzn-Bedrock-Trace is not valid. Valid values: ENABLED, DISABLED, ENABLED_FULL."
            )))
        }
    };
    match (&options.guardrail_identifier, &options.guardrail_version) {
        (None, None) => Ok(None),
        (Some(identifier), Some(version)) => {
            let guardrail = find_guardrail(knobs, identifier, version)
                .ok_or_else(|| invalid(UNKNOWN_GUARDRAIL))?;
            Ok(Some(GuardrailUse {
                guardrail: guardrail.clone(),
                trace,
            }))
        }
        // One without the other names no guardrail version.
        _ => Err(invalid(UNKNOWN_GUARDRAIL)),
    }
}

/// ApplyGuardrail: the guardrail's verdict on `content` (text blocks), in the
/// shape `aws-sdk-bedrockruntime` parses (`action`, `outputs`, `assessments`
/// and `usage` with its six required counters).
pub(crate) fn apply_guardrail(
    knobs: &Knobs,
    identifier: &str,
    version: &str,
    request: &Value,
) -> Result<Value, ApiError> {
    let guardrail = find_guardrail(knobs, identifier, version).ok_or_else(|| {
        (
            404,
            "ResourceNotFoundException",
            UNKNOWN_GUARDRAIL.to_owned(),
        )
    })?;
    match request.get("source").and_then(Value::as_str) {
        Some("INPUT" | "OUTPUT") => {}
        Some(other) => {
            return Err(invalid(format!(
                "The source '{other}' is not valid. Valid values: INPUT, OUTPUT."
            )))
        }
        None => return Err(invalid("The source field is required.")),
    }
    let content = request
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("The content field is required."))?;
    let texts: Vec<&str> = content
        .iter()
        .filter_map(|block| block.pointer("/text/text").and_then(Value::as_str))
        .collect();
    // Bedrock bills text in units of up to 1 000 characters.
    let units: usize = texts
        .iter()
        .map(|t| t.chars().count().div_ceil(1000).max(1))
        .sum();
    let usage = json!({
        "topicPolicyUnits": 0,
        "contentPolicyUnits": 0,
        "wordPolicyUnits": units,
        "sensitiveInformationPolicyUnits": 0,
        "sensitiveInformationPolicyFreeUnits": 0,
        "contextualGroundingPolicyUnits": 0
    });
    Ok(if guardrail.intervenes(texts.iter().copied()) {
        json!({
            "action": "GUARDRAIL_INTERVENED",
            "actionReason": BLOCKED_REASON,
            "outputs": [{"text": guardrail.blocked_message}],
            "assessments": [guardrail.blocked_assessment()],
            "usage": usage
        })
    } else {
        json!({
            "action": "NONE",
            "actionReason": "No action.",
            "outputs": [],
            "assessments": [{}],
            "usage": usage
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs_with(guardrail: LabGuardrail) -> Knobs {
        Knobs {
            guardrails: vec![guardrail],
            ..Knobs::default()
        }
    }

    /// A guardrail is found by bare id or by ARN, but only for a version it has.
    #[test]
    fn guardrails_are_found_by_id_or_arn_and_version() {
        let knobs = knobs_with(LabGuardrail::new("gr1"));
        assert!(find_guardrail(&knobs, "gr1", "DRAFT").is_some());
        assert!(find_guardrail(
            &knobs,
            "arn:aws:bedrock:us-east-1:111122223333:guardrail/gr1",
            "1"
        )
        .is_some());
        assert!(find_guardrail(&knobs, "gr1", "7").is_none());
        assert!(find_guardrail(&knobs, "gr2", "DRAFT").is_none());
        assert!(find_guardrail(&knobs, "arn:aws:s3:::guardrail/gr1", "1").is_none());
    }

    /// An unknown guardrail in guardrailConfig is the 400 Bedrock answers.
    #[test]
    fn an_unknown_guardrail_is_a_validation_error() {
        let knobs = knobs_with(LabGuardrail::new("gr1"));
        let request =
            json!({"guardrailConfig": {"guardrailIdentifier": "nope", "guardrailVersion": "1"}});
        let err = converse_guardrail(&request, &knobs).expect_err("unknown");
        assert_eq!(
            err,
            (400, "ValidationException", UNKNOWN_GUARDRAIL.to_owned())
        );
    }

    /// The default tier table offers flex only to the tiered families; a knob table replaces it.
    #[test]
    fn tiers_follow_the_default_table_or_the_knobs() {
        let knobs = Knobs::default();
        assert!(check_tier("amazon.nova-pro-v1:0", "flex", &knobs).is_ok());
        let err = check_tier("amazon.nova-lite-v1:0", "flex", &knobs).expect_err("not offered");
        assert_eq!(
            err.2,
            "The service tier 'flex' is not supported for model 'amazon.nova-lite-v1:0'."
        );
        assert!(check_tier("amazon.nova-lite-v1:0", "default", &knobs).is_ok());
        assert!(check_tier("amazon.nova-pro-v1:0", "cheap", &knobs).is_err());
        let knobs = Knobs {
            tiers: Some(HashMap::from([(
                "nova-lite".to_owned(),
                vec!["reserved".to_owned()],
            )])),
            ..Knobs::default()
        };
        assert!(check_tier("amazon.nova-lite-v1:0", "reserved", &knobs).is_ok());
        assert!(check_tier("amazon.nova-pro-v1:0", "flex", &knobs).is_err());
    }

    /// additionalModelRequestFields must be an object when present.
    #[test]
    fn additional_model_request_fields_must_be_an_object() {
        assert!(check_additional_fields(&json!({})).is_ok());
        assert!(
            check_additional_fields(&json!({"additionalModelRequestFields": {"top_k": 5}})).is_ok()
        );
        let err = check_additional_fields(&json!({"additionalModelRequestFields": [1]}))
            .expect_err("array");
        assert_eq!(err.1, "ValidationException");
    }

    /// ApplyGuardrail blocks a text holding the trigger, whatever its case, and passes others.
    #[test]
    fn apply_guardrail_blocks_the_trigger_case_insensitively() {
        let knobs = knobs_with(LabGuardrail::new("gr1"));
        let blocked = apply_guardrail(
            &knobs,
            "gr1",
            "DRAFT",
            &json!({"source": "INPUT", "content": [{"text": {"text": "a forbidden thing"}}]}),
        )
        .expect("answer");
        assert_eq!(blocked["action"], "GUARDRAIL_INTERVENED");
        assert_eq!(
            blocked["outputs"][0]["text"],
            "Sorry, I can't help with that."
        );
        assert_eq!(
            blocked["assessments"][0]["wordPolicy"]["customWords"][0]["match"],
            "FORBIDDEN"
        );
        let passed = apply_guardrail(
            &knobs,
            "gr1",
            "DRAFT",
            &json!({"source": "OUTPUT", "content": [{"text": {"text": "fine"}}]}),
        )
        .expect("answer");
        assert_eq!(passed["action"], "NONE");
        let missing = apply_guardrail(&knobs, "gr9", "DRAFT", &json!({})).expect_err("unknown");
        assert_eq!((missing.0, missing.1), (404, "ResourceNotFoundException"));
    }
}
