//! What Bedrock writes back for a batch inference job: the `.jsonl.out`
//! lines ([`OutputLine`], an answer or an error per record), its own counts
//! (`manifest.json.out`, [`BedrockCounts`]), the job's status
//! ([`BatchJobStatus`]) and the state-change event's detail
//! ([`JobStateChange`]).
//!
//! Output lines are read as Bedrock writes them, in no order; their
//! `recordId`s map back to items (`batch_job::parse_record_id`). Answers
//! become the same [`ModelReply`] an on-demand Converse call gives.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::domain::job::without_values;
use crate::domain::record::{ModelReply, Usage};

/// The `source` of Bedrock's state-change events.
pub const STATE_CHANGE_SOURCE: &str = "aws.bedrock";
/// The `detail-type` of a batch inference job's state-change event.
pub const STATE_CHANGE_DETAIL_TYPE: &str = "Batch Inference Job State Change";

/// A `.jsonl.out` line that cannot be read.
#[derive(Debug, Error)]
pub enum OutputError {
    /// Not JSON, or not the shape Bedrock writes.
    #[error("a batch output line is not a Bedrock record: {0}; check the job's output files were written by Bedrock")]
    Shape(String),
    /// Neither `modelOutput` nor `error`.
    #[error("batch output record `{0}` has neither `modelOutput` nor `error`")]
    Empty(String),
}

/// A record Bedrock could not answer: its `error` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordError {
    /// `errorCode`, a number (an HTTP status, e.g. `400`) or a name; as text.
    pub code: String,
    /// `errorMessage`.
    pub message: String,
}

/// What Bedrock did with one record.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    /// The model answered (a Converse response).
    Answered(Box<ModelReply>),
    /// The record failed.
    Failed(RecordError),
}

/// One line of a job's `.jsonl.out` output.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputLine {
    /// The record's `recordId` (see `batch_job::parse_record_id`).
    pub record_id: String,
    /// Its answer or error.
    pub outcome: RecordOutcome,
}

/// The wire shape of a `.jsonl.out` line. `modelInput` (the whole request,
/// documents included) is not a field, so serde skips it as it parses
/// (`IgnoredAny`) and it is never held.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLine {
    record_id: String,
    model_output: Option<ConverseReply>,
    error: Option<RawError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawError {
    error_code: Option<ErrorCode>,
    error_message: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorCode {
    Number(serde_json::Number),
    Text(String),
}

/// The parts of a Converse response (`ConverseResponse` JSON) a record keeps.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseReply {
    output: Option<ConverseOutput>,
    stop_reason: Option<String>,
    usage: Option<ConverseUsage>,
    metrics: Option<ConverseMetrics>,
}

#[derive(Deserialize)]
struct ConverseOutput {
    message: Option<ConverseMessage>,
}

#[derive(Deserialize)]
struct ConverseMessage {
    #[serde(default)]
    content: Vec<ConverseBlock>,
}

/// A content block; only text is kept, as on-demand (reasoning and tool
/// blocks are skipped).
#[derive(Deserialize)]
struct ConverseBlock {
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseUsage {
    input_tokens: i32,
    output_tokens: i32,
    total_tokens: Option<i32>,
    #[serde(default)]
    cache_read_input_tokens: Option<i32>,
    #[serde(default)]
    cache_write_input_tokens: Option<i32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseMetrics {
    latency_ms: Option<i64>,
}

impl OutputLine {
    /// Parses one `.jsonl.out` line. Errors never quote the line's values
    /// (they are prompts and answers).
    pub fn parse(line: &str) -> Result<Self, OutputError> {
        let raw: RawLine = serde_json::from_str(line)
            .map_err(|err| OutputError::Shape(without_values(&err.to_string())))?;
        let outcome = match (raw.model_output, raw.error) {
            (Some(reply), _) => RecordOutcome::Answered(Box::new(reply.into_model_reply())),
            (None, Some(error)) => RecordOutcome::Failed(RecordError {
                code: match error.error_code {
                    Some(ErrorCode::Number(n)) => n.to_string(),
                    Some(ErrorCode::Text(text)) => text,
                    None => String::new(),
                },
                message: error.error_message.unwrap_or_default(),
            }),
            (None, None) => return Err(OutputError::Empty(raw.record_id)),
        };
        Ok(Self {
            record_id: raw.record_id,
            outcome,
        })
    }
}

impl ConverseReply {
    /// The same reply an on-demand Converse call gives (`reply_from` in
    /// `bedrock/mod.rs`): text blocks joined, stop reason, usage, Bedrock's
    /// latency. No call was timed here, so `call_latency_ms` is 0.
    fn into_model_reply(self) -> ModelReply {
        let text = self
            .output
            .and_then(|output| output.message)
            .map(|message| {
                message
                    .content
                    .into_iter()
                    .filter_map(|block| block.text)
                    .collect::<String>()
            })
            .unwrap_or_default();
        let stop_reason = self.stop_reason.unwrap_or_default();
        ModelReply {
            usage: self.usage.map(|u| Usage {
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                total_tokens: u
                    .total_tokens
                    .unwrap_or(u.input_tokens.saturating_add(u.output_tokens)),
                cache_read_input_tokens: u.cache_read_input_tokens.unwrap_or(0),
                cache_write_input_tokens: u.cache_write_input_tokens.unwrap_or(0),
            }),
            model_latency_ms: self.metrics.and_then(|m| m.latency_ms),
            ..ModelReply::text(text, stop_reason)
        }
    }
}

/// Bedrock's own counts for a job (`manifest.json.out`), kept in the relay's
/// manifest in its snake_case; Bedrock's camelCase names are read too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BedrockCounts {
    /// Records in the job's input.
    #[serde(alias = "totalRecordCount")]
    pub total_record_count: Option<u64>,
    /// Records Bedrock processed.
    #[serde(alias = "processedRecordCount")]
    pub processed_record_count: Option<u64>,
    /// Of which answered.
    #[serde(alias = "successRecordCount")]
    pub success_record_count: Option<u64>,
    /// Of which failed.
    #[serde(alias = "errorRecordCount")]
    pub error_record_count: Option<u64>,
    /// Prompt tokens.
    #[serde(alias = "inputTokenCount")]
    pub input_token_count: Option<u64>,
    /// Generated tokens.
    #[serde(alias = "outputTokenCount")]
    pub output_token_count: Option<u64>,
}

/// A batch inference job's status, as Bedrock spells it; a status this
/// version does not know is kept as [`BatchJobStatus::Unknown`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum BatchJobStatus {
    /// Accepted.
    Submitted,
    /// Bedrock is checking the input.
    Validating,
    /// Waiting for capacity.
    Scheduled,
    /// Running.
    InProgress,
    /// Every record processed (some may have failed).
    Completed,
    /// Done, with some records not processed.
    PartiallyCompleted,
    /// Failed as a whole (no output to read).
    Failed,
    /// Being stopped.
    Stopping,
    /// Stopped, with the output of the records done by then.
    Stopped,
    /// Timed out (`timeoutDurationInHours`), with partial output.
    Expired,
    /// A status this version does not know.
    Unknown(String),
}

impl BatchJobStatus {
    /// Bedrock's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Submitted => "Submitted",
            Self::Validating => "Validating",
            Self::Scheduled => "Scheduled",
            Self::InProgress => "InProgress",
            Self::Completed => "Completed",
            Self::PartiallyCompleted => "PartiallyCompleted",
            Self::Failed => "Failed",
            Self::Stopping => "Stopping",
            Self::Stopped => "Stopped",
            Self::Expired => "Expired",
            Self::Unknown(other) => other,
        }
    }

    /// Whether the job will not change again.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Completed
                | Self::PartiallyCompleted
                | Self::Failed
                | Self::Stopped
                | Self::Expired
        )
    }

    /// Whether the job left output to read: Bedrock writes the records done
    /// so far for expired and stopped jobs too.
    pub fn has_output(&self) -> bool {
        matches!(
            self,
            Self::Completed | Self::PartiallyCompleted | Self::Expired | Self::Stopped
        )
    }
}

impl From<&str> for BatchJobStatus {
    fn from(text: &str) -> Self {
        match text {
            "Submitted" => Self::Submitted,
            "Validating" => Self::Validating,
            "Scheduled" => Self::Scheduled,
            "InProgress" => Self::InProgress,
            "Completed" => Self::Completed,
            "PartiallyCompleted" => Self::PartiallyCompleted,
            "Failed" => Self::Failed,
            "Stopping" => Self::Stopping,
            "Stopped" => Self::Stopped,
            "Expired" => Self::Expired,
            other => Self::Unknown(other.to_owned()),
        }
    }
}

impl From<String> for BatchJobStatus {
    fn from(text: String) -> Self {
        Self::from(text.as_str())
    }
}

impl From<BatchJobStatus> for String {
    fn from(status: BatchJobStatus) -> Self {
        status.as_str().to_owned()
    }
}

impl fmt::Display for BatchJobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `detail` of a `Batch Inference Job State Change` event (source
/// `aws.bedrock`), sent to the default bus of the job's account. Fields
/// Bedrock may add are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStateChange {
    /// The job's `jobName` (see `batch_job::job_name`).
    pub batch_job_name: String,
    /// The job's ARN, `arn:aws:bedrock:<region>:<account>:model-invocation-job/<id>`.
    pub batch_job_arn: String,
    /// The model.
    pub batch_model_id: Option<String>,
    /// The new status.
    pub status: BatchJobStatus,
    /// Why the job failed, when it did (often empty otherwise).
    pub failure_message: Option<String>,
    /// The account the job runs in.
    pub account_id: Option<String>,
    /// When the job was created.
    pub creation_time: Option<String>,
    /// When it ended.
    pub end_time: Option<String>,
}

impl JobStateChange {
    /// The account in the job's ARN: with `accountId` and the envelope's
    /// `account`, what a forged event would have to match.
    pub fn arn_account(&self) -> Option<&str> {
        let parts: Vec<&str> = self.batch_job_arn.splitn(6, ':').collect();
        let well_formed = parts.len() == 6
            && parts[0] == "arn"
            && parts[2] == "bedrock"
            && parts[4].len() == 12
            && parts[4].bytes().all(|b| b.is_ascii_digit())
            && parts[5].starts_with("model-invocation-job/");
        well_formed.then(|| parts[4])
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::batch_job::parse_record_id;

    /// An answered line gives the reply on-demand would; `modelInput` is
    /// skipped.
    #[test]
    fn an_answered_line_gives_text_stop_reason_and_usage() {
        let line = json!({
            "recordId": "r0000000007",
            "modelInput": {"messages": [{"role": "user", "content": [{"text": "secret prompt"}]}]},
            "modelOutput": {
                "output": {"message": {"role": "assistant", "content": [
                    {"reasoningContent": {"reasoningText": {"text": "hmm"}}},
                    {"text": "Hello"}, {"text": " there"}
                ]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 12, "outputTokens": 3, "totalTokens": 15},
                "metrics": {"latencyMs": 420}
            }
        })
        .to_string();
        let parsed = OutputLine::parse(&line).expect("parses");
        assert_eq!(parse_record_id(&parsed.record_id), Some(7));
        let RecordOutcome::Answered(reply) = parsed.outcome else {
            panic!("answered")
        };
        assert_eq!(reply.text, "Hello there");
        assert_eq!(reply.stop_reason, "end_turn");
        assert_eq!(reply.usage, Some(Usage::new(12, 3, 15)));
        assert_eq!(reply.model_latency_ms, Some(420));
        assert_eq!(reply.body, None);
    }

    /// `errorCode` may be a number or a string; both are kept as text.
    #[test]
    fn a_failed_line_keeps_its_code_as_number_or_string() {
        for (code, text) in [
            (json!(400), "400"),
            (json!("ValidationException"), "ValidationException"),
        ] {
            let line = json!({
                "recordId": "r0000000001",
                "modelInput": {},
                "error": {"errorCode": code, "errorMessage": "Malformed input request"}
            })
            .to_string();
            let parsed = OutputLine::parse(&line).expect("parses");
            assert_eq!(
                parsed.outcome,
                RecordOutcome::Failed(RecordError {
                    code: text.into(),
                    message: "Malformed input request".into()
                })
            );
        }
    }

    /// Broken lines are errors that never quote the line's values.
    #[test]
    fn broken_lines_are_errors_without_their_values() {
        let err = OutputLine::parse(r#"{"recordId": "r0000000001"}"#).expect_err("empty");
        assert!(
            matches!(err, OutputError::Empty(ref id) if id == "r0000000001"),
            "{err}"
        );
        let err = OutputLine::parse(r#"{"recordId": 5, "modelOutput": {}}"#).expect_err("shape");
        assert!(err.to_string().contains("invalid type"), "{err}");
        let err = OutputLine::parse(
            r#"{"recordId": "r1", "modelOutput": {"stopReason": ["the secret"]}}"#,
        )
        .expect_err("shape");
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(OutputLine::parse("not json").is_err());
    }

    /// `manifest.json.out` reads with any field missing and is kept in the
    /// relay's snake_case.
    #[test]
    fn bedrock_counts_read_camel_case_and_write_snake_case() {
        let counts: BedrockCounts = serde_json::from_value(json!({
            "totalRecordCount": 120, "processedRecordCount": 118, "successRecordCount": 115,
            "errorRecordCount": 3, "inputTokenCount": 9000, "outputTokenCount": 1200
        }))
        .expect("parses");
        assert_eq!(counts.error_record_count, Some(3));
        let written = serde_json::to_value(&counts).expect("serializes");
        assert_eq!(written["success_record_count"], json!(115));
        let back: BedrockCounts = serde_json::from_value(written).expect("reads its own");
        assert_eq!(back, counts);
        let sparse: BedrockCounts =
            serde_json::from_value(json!({"totalRecordCount": 5})).expect("parses");
        assert_eq!(sparse.output_token_count, None);
    }

    /// The state-change detail parses with fields Bedrock may add, keeps an
    /// unknown status, and yields the account of its ARN.
    #[test]
    fn state_change_details_parse_and_name_their_account() {
        let detail: JobStateChange = serde_json::from_value(json!({
            "version": "0.0",
            "accountId": "111111111111",
            "batchJobName": "relay-daily-0123456789ab-p0",
            "batchJobArn": "arn:aws:bedrock:us-east-1:111111111111:model-invocation-job/abcdefghijkl",
            "batchModelId": "amazon.nova-lite-v1:0",
            "status": "PartiallyCompleted",
            "failureMessage": "",
            "creationTime": "2026-11-28T10:00:00.000Z"
        }))
        .expect("parses");
        assert_eq!(detail.status, BatchJobStatus::PartiallyCompleted);
        assert_eq!(detail.arn_account(), Some("111111111111"));
        let odd = JobStateChange {
            status: BatchJobStatus::from("Paused"),
            batch_job_arn: "arn:aws:iam::111111111111:role/x".into(),
            ..detail
        };
        assert_eq!(odd.status, BatchJobStatus::Unknown("Paused".into()));
        assert_eq!(odd.arn_account(), None);
        assert_eq!(
            serde_json::to_value(&odd.status).expect("serializes"),
            json!("Paused")
        );
    }

    /// Which statuses end a job, and which leave output to read.
    #[test]
    fn terminal_statuses_and_those_with_output() {
        use BatchJobStatus::*;
        for (status, terminal, output) in [
            (Submitted, false, false),
            (Validating, false, false),
            (Scheduled, false, false),
            (InProgress, false, false),
            (Stopping, false, false),
            (Completed, true, true),
            (PartiallyCompleted, true, true),
            (Expired, true, true),
            (Stopped, true, true),
            (Failed, true, false),
            (Unknown("New".into()), false, false),
        ] {
            assert_eq!(status.is_terminal(), terminal, "{status}");
            assert_eq!(status.has_output(), output, "{status}");
            assert_eq!(BatchJobStatus::from(status.as_str()), status);
        }
    }
}
