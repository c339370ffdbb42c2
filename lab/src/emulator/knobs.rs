//! The emulator's data: the knobs that shape its behaviour, the faults it
//! injects, and what it records (calls, counters). Everything here is serde,
//! so the `/_lab/` endpoints take and give the same shapes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::LabGuardrail;

/// One request the emulator answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    /// Order of arrival, from 0.
    pub seq: usize,
    /// `Converse`, `InvokeModel` or `ApplyGuardrail`.
    pub operation: String,
    /// The model ID as decoded from the path (for ApplyGuardrail, the
    /// guardrail identifier).
    pub model_id: String,
    /// The access key that signed it.
    pub access_key_id: Option<String>,
    /// The signer's account, from moto's sessions; `None` if unknown.
    pub account: Option<String>,
    /// The signer's role, from moto's sessions.
    pub role_arn: Option<String>,
    /// The signer's assumed-role session ARN.
    pub principal_arn: Option<String>,
    /// The status answered.
    pub status: u16,
    /// The error type answered, if any.
    pub error_type: Option<String>,
    /// The request body.
    pub request: Value,
    /// Milliseconds since the epoch at arrival.
    pub at_ms: u128,
}

impl Call {
    /// A request as it arrives, answered 200 until the answer says otherwise;
    /// who signed it is filled in once the signature is checked, and `seq` when
    /// it is recorded.
    pub(crate) fn arriving(operation: &str, model_id: String, request: Value, at_ms: u128) -> Self {
        Self {
            seq: 0,
            operation: operation.to_owned(),
            model_id,
            access_key_id: None,
            account: None,
            role_arn: None,
            principal_arn: None,
            status: 200,
            error_type: None,
            request,
            at_ms,
        }
    }
}

/// An error to answer instead of a reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    /// HTTP status, e.g. 429, 500, 503.
    pub status: u16,
    /// The `x-amzn-ErrorType`, e.g. `ThrottlingException`.
    pub error_type: String,
    /// How many matching requests get it.
    pub count: u32,
    /// Only for this model, if set.
    #[serde(default)]
    pub model: Option<String>,
    /// Only for requests whose body contains this text, if set.
    #[serde(default)]
    pub body_contains: Option<String>,
}

/// The emulator's behaviour.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Knobs {
    /// Added to every answer, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Requests per minute per account; more get `ThrottlingException`.
    #[serde(default)]
    pub quota_rpm: Option<u32>,
    /// The window the quota is enforced over, in milliseconds (default 60 000):
    /// `quota_rpm` scaled to it, so a benchmark can hold a steady rate for
    /// seconds instead of minutes (1 200 rpm over 1 000 ms = 20 per second).
    #[serde(default)]
    pub quota_window_ms: Option<u64>,
    /// If set, only these accounts have model access; others get `AccessDeniedException`.
    #[serde(default)]
    pub model_access: Option<Vec<String>>,
    /// The next this many structured-output answers (counting down across
    /// requests) are valid JSON that does not match the schema (default 0).
    #[serde(default)]
    pub structured_mismatches: u32,
    /// Every structured-output request whose body contains this text gets an
    /// answer that does not match the schema.
    #[serde(default)]
    pub mismatch_when_contains: Option<String>,
    /// The JSON Schema keywords structured output refuses; `None`: the default
    /// list, [`DEFAULT_UNSUPPORTED_SCHEMA_KEYWORDS`](super::DEFAULT_UNSUPPORTED_SCHEMA_KEYWORDS).
    /// A `$ref` not starting with `#` is refused either way.
    #[serde(default)]
    pub unsupported_schema_keywords: Option<Vec<String>>,
    /// A cache point whose prefix has fewer input tokens is ignored (no read,
    /// no write, no error), as Bedrock ignores short prefixes (default 0).
    #[serde(default)]
    pub cache_min_tokens: u64,
    /// The guardrails that exist; any other is unknown (default none).
    #[serde(default)]
    pub guardrails: Vec<LabGuardrail>,
    /// Model-id substring → the service tiers such models offer (`default`
    /// always). `None`: models whose id contains `nova-pro`, `nova-premier`,
    /// `gpt-oss`, `deepseek` or `qwen` offer `default`, `flex` and `priority`,
    /// others only `default`.
    #[serde(default)]
    pub tiers: Option<HashMap<String, Vec<String>>>,
    /// Added to answers on the `flex` tier, in milliseconds (default 0).
    #[serde(default)]
    pub flex_extra_latency_ms: u64,
}

/// Counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Requests answered.
    pub requests: usize,
    /// Most requests in flight at once.
    pub max_in_flight: usize,
}
