//! Metrics: one CloudWatch Embedded Metric Format (EMF) line per job, written
//! to stdout, which Lambda ships to CloudWatch Logs and CloudWatch turns into
//! metrics with no API call from the function.
//!
//! Namespace `BedrockRelay` (`RELAY_METRICS_NAMESPACE`), dimensions `target`
//! and `model` (and `target`, `model`, `error_type` for errors). Metrics:
//! `Jobs`, `Errors`, `Throttles` (throttled attempts), `Retries` (attempts
//! after the first), `InputTokens`, `OutputTokens`, `CacheReadInputTokens`,
//! `CacheWriteInputTokens`, `GuardrailInterventions`, `ModelLatency` (ms);
//! `job_id` and `requestId` ride along as properties, not dimensions. Once
//! per execution environment, `ColdStart` by `function_name`.
//! Attempts are counted by [`AttemptCounter`], an SDK interceptor attached to
//! each Bedrock call, which also keeps what Bedrock's InvokeModel headers say
//! ([`InvocationHeaders`]): the only token counts and latency common to every
//! model family.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_bedrockruntime::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_bedrockruntime::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use serde_json::{json, Map, Value};

use crate::domain::record::Usage;

/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "BedrockRelay";

/// Attempts and throttled attempts of one Bedrock call, and what Bedrock
/// reported about it in response headers.
#[derive(Debug, Default)]
pub struct CallStats {
    attempts: AtomicU32,
    throttled: AtomicU32,
    reported: Mutex<Option<InvocationHeaders>>,
}

/// What Bedrock says about an InvokeModel call in its response headers
/// (`X-Amzn-Bedrock-Invocation-Latency`, `-Input-Token-Count`,
/// `-Output-Token-Count`). The body's own usage fields differ by model family
/// (and some have none); these headers are the same for every model, and are
/// what Bedrock's own CloudWatch metrics count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InvocationHeaders {
    /// Bedrock's processing time, ms.
    pub latency_ms: Option<i64>,
    /// Input tokens.
    pub input_tokens: Option<i32>,
    /// Output tokens.
    pub output_tokens: Option<i32>,
}

impl InvocationHeaders {
    /// Reads the headers of a successful answer; `None` when none is there.
    pub fn read(headers: &aws_smithy_runtime_api::http::Headers) -> Option<Self> {
        let number = |name: &str| headers.get(name).and_then(|v| v.trim().parse::<i64>().ok());
        let tokens = |name: &str| number(name).and_then(|n| i32::try_from(n).ok());
        let read = Self {
            latency_ms: number("x-amzn-bedrock-invocation-latency"),
            input_tokens: tokens("x-amzn-bedrock-input-token-count"),
            output_tokens: tokens("x-amzn-bedrock-output-token-count"),
        };
        (read != Self::default()).then_some(read)
    }

    /// Token counts, when Bedrock sent both.
    pub fn usage(&self) -> Option<Usage> {
        let (input, output) = (self.input_tokens?, self.output_tokens?);
        Some(Usage::new(input, output, input.saturating_add(output)))
    }
}

impl CallStats {
    /// HTTP attempts made.
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Attempts answered with throttling (HTTP 429 or a throttling error type).
    pub fn throttled(&self) -> u32 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// What the last successful answer's headers said, if anything.
    pub fn reported(&self) -> Option<InvocationHeaders> {
        *self.reported.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts a call's attempts as the SDK makes them (retries included).
#[derive(Debug, Clone)]
pub struct AttemptCounter(pub Arc<CallStats>);

impl Intercept for AttemptCounter {
    fn name(&self) -> &'static str {
        "BedrockRelayAttemptCounter"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.attempts.fetch_add(1, Ordering::Relaxed);
        if let Some(response) = context.response() {
            let error_type = response
                .headers()
                .get("x-amzn-errortype")
                .unwrap_or_default();
            if response.status().as_u16() == 429 || error_type.starts_with("ThrottlingException") {
                self.0.throttled.fetch_add(1, Ordering::Relaxed);
            }
            if response.status().is_success() {
                if let Some(read) = InvocationHeaders::read(response.headers()) {
                    *self
                        .0
                        .reported
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(read);
                }
            }
        }
        Ok(())
    }
}

/// What one job contributes to the metrics.
#[derive(Debug, Clone, Default)]
pub struct JobMetrics {
    /// The target alias that served (or last failed).
    pub target: String,
    /// The model.
    pub model: String,
    /// The error code, for a failed job.
    pub error_type: Option<String>,
    /// Token counts, on success.
    pub usage: Option<Usage>,
    /// Bedrock's latency, on success.
    pub model_latency_ms: Option<i64>,
    /// Whether a guardrail answered instead of the model.
    pub guardrail_intervened: bool,
    /// HTTP attempts to Bedrock.
    pub attempts: u32,
    /// Throttled attempts.
    pub throttled: u32,
    /// One item of a batch, counted in `Items` rather than `Jobs`.
    pub is_item: bool,
    /// The job, written as a property (not a dimension) so a CloudWatch Logs
    /// Insights query can go from a metric's line to the job's logs and record.
    pub job_id: String,
    /// The Lambda request id, likewise.
    pub request_id: String,
}

/// The EMF document for one job.
pub fn emf_document(namespace: &str, job: &JobMetrics, timestamp_ms: u128) -> Value {
    let unit = if job.is_item { "Items" } else { "Jobs" };
    let mut metrics = vec![
        json!({"Name": unit, "Unit": "Count"}),
        json!({"Name": "Throttles", "Unit": "Count"}),
        json!({"Name": "Retries", "Unit": "Count"}),
    ];
    let mut fields = Map::new();
    fields.insert("target".into(), json!(job.target));
    fields.insert("model".into(), json!(job.model));
    fields.insert(unit.into(), json!(1));
    fields.insert("Throttles".into(), json!(job.throttled));
    fields.insert("Retries".into(), json!(job.attempts.saturating_sub(1)));
    for (name, value) in [("job_id", &job.job_id), ("requestId", &job.request_id)] {
        if !value.is_empty() {
            fields.insert(name.into(), json!(value));
        }
    }
    let mut dimensions = vec![json!(["target", "model"])];
    if let Some(usage) = job.usage {
        metrics.push(json!({"Name": "InputTokens", "Unit": "Count"}));
        metrics.push(json!({"Name": "OutputTokens", "Unit": "Count"}));
        fields.insert("InputTokens".into(), json!(usage.input_tokens));
        fields.insert("OutputTokens".into(), json!(usage.output_tokens));
        metrics.push(json!({"Name": "CacheReadInputTokens", "Unit": "Count"}));
        metrics.push(json!({"Name": "CacheWriteInputTokens", "Unit": "Count"}));
        fields.insert(
            "CacheReadInputTokens".into(),
            json!(usage.cache_read_input_tokens),
        );
        fields.insert(
            "CacheWriteInputTokens".into(),
            json!(usage.cache_write_input_tokens),
        );
    }
    if job.guardrail_intervened {
        metrics.push(json!({"Name": "GuardrailInterventions", "Unit": "Count"}));
        fields.insert("GuardrailInterventions".into(), json!(1));
    }
    if let Some(latency) = job.model_latency_ms {
        metrics.push(json!({"Name": "ModelLatency", "Unit": "Milliseconds"}));
        fields.insert("ModelLatency".into(), json!(latency));
    }
    metrics.push(json!({"Name": "Errors", "Unit": "Count"}));
    fields.insert("Errors".into(), json!(u8::from(job.error_type.is_some())));
    if let Some(error_type) = &job.error_type {
        fields.insert("error_type".into(), json!(error_type));
        dimensions.push(json!(["target", "model", "error_type"]));
    }
    fields.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{"Namespace": namespace, "Dimensions": dimensions, "Metrics": metrics}]
        }),
    );
    Value::Object(fields)
}

/// The EMF document Powertools users know as `ColdStart`: 1 on the first
/// invocation of an execution environment, by `function_name`. (Lambda's
/// `REPORT` line has the init duration; this makes cold starts a metric.)
pub fn cold_start_document(
    namespace: &str,
    function_name: &str,
    request_id: &str,
    timestamp_ms: u128,
) -> Value {
    json!({
        "function_name": function_name,
        "ColdStart": 1,
        "requestId": request_id,
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [["function_name"]],
                "Metrics": [{"Name": "ColdStart", "Unit": "Count"}]
            }]
        }
    })
}

/// Writes the job's EMF line to stdout.
pub fn emit(namespace: &str, job: &JobMetrics) {
    write_line(&emf_document(namespace, job, now_ms()));
}

/// Writes the `ColdStart` line to stdout.
pub fn emit_cold_start(namespace: &str, function_name: &str, request_id: &str) {
    write_line(&cold_start_document(
        namespace,
        function_name,
        request_id,
        now_ms(),
    ));
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// One write per line, so lines never interleave with logs.
fn write_line(document: &Value) {
    let line = format!("{document}\n");
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bedrock_invocation_headers_are_read_and_junk_is_ignored() {
        let mut headers = aws_smithy_runtime_api::http::Headers::new();
        assert_eq!(
            InvocationHeaders::read(&headers),
            None,
            "no headers, nothing read"
        );
        headers.insert("X-Amzn-Bedrock-Invocation-Latency", "250");
        headers.insert("x-amzn-bedrock-input-token-count", "12");
        headers.insert("x-amzn-bedrock-output-token-count", "lots");
        let read = InvocationHeaders::read(&headers).expect("read");
        assert_eq!(read.latency_ms, Some(250));
        assert_eq!(read.input_tokens, Some(12));
        assert_eq!(
            read.output_tokens, None,
            "an unreadable count is not guessed"
        );
        assert_eq!(read.usage(), None, "usage needs both counts");
        headers.insert("x-amzn-bedrock-output-token-count", "3");
        assert_eq!(
            InvocationHeaders::read(&headers).and_then(|r| r.usage()),
            Some(Usage::new(12, 3, 15))
        );
    }

    #[test]
    fn a_cold_start_is_one_count_by_function_name() {
        let doc = cold_start_document("BedrockRelay", "relay-fn", "req-1", 5);
        let declared = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(declared["Namespace"], "BedrockRelay");
        assert_eq!(declared["Dimensions"], json!([["function_name"]]));
        assert_eq!(declared["Metrics"][0]["Name"], "ColdStart");
        assert_eq!(
            (doc["ColdStart"].as_u64(), doc["function_name"].as_str()),
            (Some(1), Some("relay-fn"))
        );
    }

    #[test]
    fn a_successful_job_reports_tokens_latency_and_retries_by_target_and_model() {
        let doc = emf_document(
            "BedrockRelay",
            &JobMetrics {
                target: "default".into(),
                model: "amazon.nova-lite-v1:0".into(),
                usage: Some(Usage::new(15, 12, 27)),
                model_latency_ms: Some(400),
                attempts: 3,
                throttled: 2,
                job_id: "job-7".into(),
                request_id: "req-7".into(),
                ..JobMetrics::default()
            },
            1,
        );
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "BedrockRelay"
        );
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["target", "model"]]),
            "job and request ids are properties, never dimensions (one metric per job would cost a fortune)"
        );
        assert_eq!(
            (doc["job_id"].as_str(), doc["requestId"].as_str()),
            (Some("job-7"), Some("req-7"))
        );
        assert_eq!(doc["InputTokens"], 15);
        assert_eq!(doc["OutputTokens"], 12);
        assert_eq!(doc["Retries"], 2);
        assert_eq!(doc["Throttles"], 2);
        assert_eq!(doc["Errors"], 0);
        // Every declared metric has a value in the document.
        for metric in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .expect("metrics")
        {
            let name = metric["Name"].as_str().expect("name");
            assert!(doc.get(name).is_some(), "{name} declared but missing");
        }
    }

    /// Cache reads and writes are metrics of their own, and a guardrail's
    /// intervention counts one `GuardrailInterventions`.
    #[test]
    fn cache_tokens_and_guardrail_interventions_are_metrics() {
        let doc = emf_document(
            "BedrockRelay",
            &JobMetrics {
                target: "default".into(),
                model: "m".into(),
                usage: Some(Usage {
                    cache_read_input_tokens: 2009,
                    cache_write_input_tokens: 7,
                    ..Usage::new(3, 4, 2023)
                }),
                guardrail_intervened: true,
                ..JobMetrics::default()
            },
            1,
        );
        assert_eq!(doc["CacheReadInputTokens"], 2009);
        assert_eq!(doc["CacheWriteInputTokens"], 7);
        assert_eq!(doc["GuardrailInterventions"], 1);
        let plain = emf_document("BedrockRelay", &JobMetrics::default(), 1);
        assert!(plain.get("GuardrailInterventions").is_none());
    }

    #[test]
    fn a_failed_job_adds_an_error_type_dimension() {
        let doc = emf_document(
            "BedrockRelay",
            &JobMetrics {
                target: "research".into(),
                model: "m".into(),
                error_type: Some("BedrockThrottled".into()),
                attempts: 5,
                throttled: 5,
                ..JobMetrics::default()
            },
            1,
        );
        assert_eq!(doc["Errors"], 1);
        assert_eq!(doc["error_type"], "BedrockThrottled");
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["target", "model"], ["target", "model", "error_type"]])
        );
        assert!(doc.get("InputTokens").is_none());
    }
}
