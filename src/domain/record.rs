//! The result record: one JSON object per job, written whether the job
//! succeeded or failed, so every event leaves a trace at the destination.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::input::{Envelope, Shape};
use crate::domain::target::TargetRecord;

/// `succeeded` or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The model answered.
    Succeeded,
    /// See `error`.
    Failed,
    /// A batch item not run yet (the invocation ran out of time first).
    Pending,
    /// The guardrail intervened: its answer is in `output` (a final
    /// result, not an error and not retried).
    Blocked,
}

impl Status {
    /// The status as written in records and item lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Pending => "pending",
            Self::Blocked => "blocked",
        }
    }
}

/// Whether a written status is final, whatever a retry would do: the model
/// answered (`succeeded`) or the guardrail did (`blocked`). A final result is
/// never written over, and never asked again.
pub fn is_final_status(status: Option<&str>) -> bool {
    matches!(status, Some("succeeded" | "blocked"))
}

/// The model's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputRecord {
    /// Generated text.
    pub text: String,
    /// Why generation stopped.
    pub stop_reason: String,
    /// The model's whole answer, parsed, for InvokeModel jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The answer parsed as JSON, for a job with `output_schema` (it
    /// matched the schema).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// The service tier Bedrock says it served the call in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    /// The guardrail's assessment, when the guardrail's trace is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guardrail: Option<Value>,
}

impl OutputRecord {
    /// The record of `reply`'s answer.
    pub fn of(reply: &ModelReply) -> Self {
        Self {
            text: reply.text.clone(),
            stop_reason: reply.stop_reason.clone(),
            body: reply.body.clone(),
            json: reply.json.clone(),
            service_tier: reply.service_tier.clone(),
            guardrail: reply.guardrail.clone(),
        }
    }
}

/// Timings in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyRecord {
    /// Bedrock's own figure.
    pub model_ms: Option<i64>,
    /// The call as seen from the function, retries included.
    pub call_ms: u128,
}

/// What went wrong, for a failed job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorRecord {
    /// A stable code, e.g. `BedrockThrottled`, `InvalidJob`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What happened and what to fix.
    pub message: String,
    /// Whether retrying the event may succeed.
    pub retryable: bool,
}

/// One record per job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// The job id, which is also the object key.
    pub job_id: String,
    /// `succeeded` or `failed`.
    pub status: Status,
    /// The input shape, when the event could be read that far.
    pub shape: Option<Shape>,
    /// The EventBridge envelope's id, source, detail-type and time.
    pub event: Option<Envelope>,
    /// The Lambda request that handled it.
    pub request_id: String,
    /// The target (alias, account A, RoleA, region), once chosen.
    pub target: Option<TargetRecord>,
    /// The model, once known.
    pub model: Option<String>,
    /// The answer, on success.
    pub output: Option<OutputRecord>,
    /// Token counts, on success.
    pub usage: Option<Usage>,
    /// Timings, on success.
    pub latency: Option<LatencyRecord>,
    /// RFC 3339, when the invocation started.
    pub started_at: String,
    /// RFC 3339, when the record was made.
    pub finished_at: String,
    /// The job's `metadata`, unchanged.
    pub metadata: Option<Map<String, Value>>,
    /// On failure.
    pub error: Option<ErrorRecord>,
    /// Whether the job is a batch: its record is then the batch's own (a
    /// failure of the whole batch), never one of its item results.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
}

impl Record {
    /// An empty failed record for the Lambda request, filled in as the job is read.
    pub fn started(request_id: &str) -> Self {
        Self {
            job_id: request_id.to_owned(),
            status: Status::Failed,
            shape: None,
            event: None,
            request_id: request_id.to_owned(),
            target: None,
            model: None,
            output: None,
            usage: None,
            latency: None,
            started_at: now_rfc3339(),
            finished_at: String::new(),
            metadata: None,
            error: None,
            batch: false,
        }
    }

    /// Fills in the model's reply: a success, or `blocked` when the
    /// guardrail intervened.
    pub fn succeed(mut self, reply: &ModelReply) -> Self {
        self.status = reply.status();
        self.output = Some(OutputRecord::of(reply));
        self.usage = reply.usage;
        self.latency = Some(LatencyRecord {
            model_ms: reply.model_latency_ms,
            call_ms: reply.call_latency_ms,
        });
        self.finished_at = now_rfc3339();
        self
    }

    /// Marks the record failed.
    pub fn fail(mut self, error: ErrorRecord) -> Self {
        self.status = Status::Failed;
        self.error = Some(error);
        self.finished_at = now_rfc3339();
        self
    }
}

/// One line of a batch's JSON Lines result: one per item, in input order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemRecord {
    /// The batch's job id.
    pub job_id: String,
    /// The item's position in `items` or `items_from`, from 0.
    pub index: usize,
    /// `succeeded`, `failed` or `pending`.
    pub status: Status,
    /// The target that served the item (or last failed it).
    pub target: Option<TargetRecord>,
    /// The model.
    pub model: Option<String>,
    /// The answer, on success.
    pub output: Option<OutputRecord>,
    /// This item's token counts, on success.
    pub usage: Option<Usage>,
    /// This item's timings, on success.
    pub latency: Option<LatencyRecord>,
    /// This item's error, on failure.
    pub error: Option<ErrorRecord>,
    /// RFC 3339, when the item settled.
    pub finished_at: Option<String>,
    /// Model calls made for it in the attempt that settled it.
    #[serde(skip_serializing_if = "is_zero")]
    pub calls: u32,
    /// Of those, calls Bedrock throttled.
    #[serde(skip_serializing_if = "is_zero")]
    pub throttles: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ItemRecord {
    /// An item not run yet.
    pub fn pending(job_id: &str, index: usize) -> Self {
        Self {
            job_id: job_id.to_owned(),
            index,
            status: Status::Pending,
            target: None,
            model: None,
            output: None,
            usage: None,
            latency: None,
            error: None,
            finished_at: None,
            calls: 0,
            throttles: 0,
        }
    }

    /// The same, counting the calls behind it.
    pub fn with_calls(mut self, calls: u32, throttles: u32) -> Self {
        self.calls = calls;
        self.throttles = throttles;
        self
    }

    /// An item the model answered (`blocked` when the guardrail intervened).
    pub fn succeeded(
        job_id: &str,
        index: usize,
        target: TargetRecord,
        model: &str,
        reply: &ModelReply,
    ) -> Self {
        Self {
            status: reply.status(),
            target: Some(target),
            model: Some(model.to_owned()),
            output: Some(OutputRecord::of(reply)),
            usage: reply.usage,
            latency: Some(LatencyRecord {
                model_ms: reply.model_latency_ms,
                call_ms: reply.call_latency_ms,
            }),
            finished_at: Some(now_rfc3339()),
            ..Self::pending(job_id, index)
        }
    }

    /// An item that failed.
    pub fn failed(
        job_id: &str,
        index: usize,
        target: Option<TargetRecord>,
        model: Option<&str>,
        error: ErrorRecord,
    ) -> Self {
        Self {
            status: Status::Failed,
            target,
            model: model.map(str::to_owned),
            error: Some(error),
            finished_at: Some(now_rfc3339()),
            ..Self::pending(job_id, index)
        }
    }
}

/// The current time as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    aws_smithy_types::DateTime::from(std::time::SystemTime::now())
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}

/// Token counts as Bedrock reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens, not counting those read from or written to the cache.
    pub input_tokens: i32,
    /// Generated tokens.
    pub output_tokens: i32,
    /// Their sum, cache reads and writes included.
    pub total_tokens: i32,
    /// Prompt tokens read from the prompt cache (billed at a tenth).
    pub cache_read_input_tokens: i32,
    /// Prompt tokens written to the prompt cache (billed above input).
    pub cache_write_input_tokens: i32,
}

impl Usage {
    /// Counts without cache tokens.
    pub fn new(input_tokens: i32, output_tokens: i32, total_tokens: i32) -> Self {
        Self {
            input_tokens,
            output_tokens,
            total_tokens,
            ..Self::default()
        }
    }
}

/// Bedrock's stop reason when a guardrail intervened.
pub const GUARDRAIL_INTERVENED: &str = "guardrail_intervened";

/// What the model answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelReply {
    /// The text blocks of the answer, joined.
    pub text: String,
    /// Why generation stopped (`end_turn`, `max_tokens`, ...).
    pub stop_reason: String,
    /// Token counts, when the model reports them.
    pub usage: Option<Usage>,
    /// Bedrock's own latency figure.
    pub model_latency_ms: Option<i64>,
    /// Wall time of the call here, retries included.
    pub call_latency_ms: u128,
    /// The parsed response body, for InvokeModel jobs.
    pub body: Option<serde_json::Value>,
    /// The answer parsed and validated against the job's `output_schema`.
    pub json: Option<serde_json::Value>,
    /// The tier Bedrock served the call in, when it says.
    pub service_tier: Option<String>,
    /// The guardrail's assessment, when its trace is on.
    pub guardrail: Option<serde_json::Value>,
}

impl ModelReply {
    /// A reply with only text and stop reason (the rest empty).
    pub fn text(text: impl Into<String>, stop_reason: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            stop_reason: stop_reason.into(),
            usage: None,
            model_latency_ms: None,
            call_latency_ms: 0,
            body: None,
            json: None,
            service_tier: None,
            guardrail: None,
        }
    }

    /// Whether the guardrail intervened instead of the model answering.
    pub fn is_blocked(&self) -> bool {
        self.stop_reason == GUARDRAIL_INTERVENED
    }

    /// The status of the record or item the reply settles.
    pub fn status(&self) -> Status {
        if self.is_blocked() {
            Status::Blocked
        } else {
            Status::Succeeded
        }
    }
}
