//! The one error a relay invocation can end with, and how Lambda sees it.
//!
//! Every failure has a stable code (the record's `error.type`) and a class:
//! retryable failures may succeed when Lambda retries the event; the rest will
//! fail the same way until the event, job or configuration is fixed. Both are
//! returned to Lambda as errors, so the event is retried and, when retries run
//! out, kept by the on-failure destination; the class is in the Lambda error
//! type (`Retryable.<code>` or `NonRetryable.<code>`) for alarms and redrive.

use lambda_runtime::Diagnostic;
use thiserror::Error;

use crate::bedrock::jobs::JobCallError;
use crate::bedrock::BedrockError;
use crate::destination::DestinationError;
use crate::documents::DocumentError;
use crate::domain::batch_job::ModeError;
use crate::domain::input::InputError;
use crate::domain::job::JobError;
use crate::domain::record::ErrorRecord;
use crate::domain::sources::SourceError;
use crate::domain::target::TargetError;
use crate::template::TemplateError;

/// Why an invocation did not produce a success record.
#[derive(Debug, Error)]
pub enum RelayError {
    /// The event could not be read as one of the three shapes.
    #[error("invalid event: {0}")]
    Input(#[from] InputError),
    /// The job is not runnable.
    #[error("invalid job: {0}")]
    Job(#[from] JobError),
    /// The job's target or model is not allowed.
    #[error("job not allowed: {0}")]
    Target(#[from] TargetError),
    /// Bedrock (or STS on its way) did not answer.
    #[error(transparent)]
    Bedrock(#[from] BedrockError),
    /// A template in the job does not render.
    #[error("invalid template: {0}")]
    Template(#[from] TemplateError),
    /// A document or item file could not be read.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// A document or item file is not one a job may read.
    #[error("source not allowed: {0}")]
    Source(#[from] SourceError),
    /// The record could not be written.
    #[error(transparent)]
    Destination(#[from] DestinationError),
    /// Another invocation holds the job (a duplicate delivery running now).
    #[error("job {job_id} is being run by another invocation (a duplicate delivery of the same event){until}; this one stops without calling the model, and a retry finds that invocation's result")]
    InProgress {
        /// The job id.
        job_id: String,
        /// ` until <time>`, when known.
        until: String,
    },
    /// An SQS message that is not a chunk this relay planned: refused, never run.
    #[error("the SQS message {message_id} is not a chunk of a batch this relay planned: {reason}; it is not run (only this relay's planner sends to RELAY_WORK_QUEUE: check who else may sqs:SendMessage to it)")]
    NotAChunk {
        /// The SQS message id.
        message_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A chunk failed on its last receive: its message goes to the work
    /// queue's dead-letter queue.
    #[error("chunk {chunk} of batch {job_id} (items {first}-{last}) did not finish on receive {receives}, so SQS moves its message to the work queue's dead-letter queue; items not settled: {unsettled}; last error: {cause}; fix the cause, then redrive the dead-letter queue (the chunk resumes where it stopped)")]
    ChunkDeadLettered {
        /// The batch's job id.
        job_id: String,
        /// The chunk's number.
        chunk: usize,
        /// Its first item's index.
        first: usize,
        /// Its last item's index.
        last: usize,
        /// How many times SQS delivered it.
        receives: u64,
        /// The indexes not settled (the first few, and how many in all).
        unsettled: String,
        /// Why the last receive did not finish it.
        cause: String,
    },
    /// The batch cannot run in the mode it asks for.
    #[error("invalid mode: {0}")]
    Mode(#[from] ModeError),
    /// A Bedrock batch-job call failed.
    #[error(transparent)]
    BatchJob(#[from] JobCallError),
    /// A Bedrock batch-job event about a job this relay did not submit, or
    /// from an account that is not one of its targets: refused, nothing read.
    #[error("the Bedrock batch job event for `{job}` is not about one of this relay's jobs: {reason}; nothing is read or run (check which accounts may put events on the bus that forwards Bedrock's events to this function)")]
    NotOurBatchJob {
        /// The job named in the event.
        job: String,
        /// What does not match.
        reason: String,
    },
    /// A batch stopped before every item settled; its progress is saved.
    #[error("batch {job_id}: {settled} of {total} items settled ({pending} not started before the deadline, {retryable} failed with retryable errors); progress is saved at {progress} and a retry of the event carries on from there")]
    BatchIncomplete {
        /// The batch's job id.
        job_id: String,
        /// Items in the batch.
        total: usize,
        /// Items succeeded or failed for good.
        settled: usize,
        /// Items not started.
        pending: usize,
        /// Items that failed in a way a retry may fix.
        retryable: usize,
        /// Where progress is kept.
        progress: String,
    },
}

impl RelayError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Input(InputError::NoDefaultJob { .. }) => "NoDefaultJob",
            Self::Input(InputError::TooLarge { .. }) => "EventTooLarge",
            Self::Input(_) => "InvalidEvent",
            Self::Job(_) => "InvalidJob",
            Self::Target(err) => err.code(),
            Self::Bedrock(err) => err.code(),
            Self::Template(_) => "InvalidTemplate",
            Self::Document(err) => err.code(),
            Self::Source(_) => "SourceNotAllowed",
            Self::Destination(err) => err.code(),
            Self::BatchIncomplete { .. } => "BatchIncomplete",
            Self::NotAChunk { .. } => "NotAChunk",
            Self::ChunkDeadLettered { .. } => "ChunkDeadLettered",
            Self::InProgress { .. } => "JobInProgress",
            Self::Mode(_) => "InvalidMode",
            Self::BatchJob(err) => err.code(),
            Self::NotOurBatchJob { .. } => "NotOurBatchJob",
        }
    }

    /// Whether a Lambda retry of the same event may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Input(_)
            | Self::Job(_)
            | Self::Target(_)
            | Self::Template(_)
            | Self::Source(_)
            | Self::NotAChunk { .. }
            | Self::Mode(_)
            | Self::NotOurBatchJob { .. } => false,
            Self::BatchJob(err) => err.is_retryable(),
            Self::ChunkDeadLettered { .. } => true,
            Self::Document(err) => err.is_retryable(),
            Self::BatchIncomplete { .. } | Self::InProgress { .. } => true,
            Self::Bedrock(err) => err.is_retryable(),
            Self::Destination(err) => err.is_retryable(),
        }
    }

    /// What to log of this error. With `content` (`RELAY_LOG_CONTENT`) the
    /// whole message; without it, errors about the event's own content (its
    /// JSON, job, templates, sources, models and documents, whose messages
    /// quote what the event said) give their code and the field only: the
    /// message is in the record.
    pub fn log_text(&self, content: bool) -> String {
        let job_field = |err: &JobError| match err {
            JobError::Field { path, .. } => Some(path.clone()),
            _ => None,
        };
        let field = match self {
            _ if content => return self.to_string(),
            Self::Input(InputError::JobDetail(err) | InputError::BareJob(err)) | Self::Job(err) => {
                job_field(err)
            }
            Self::Template(err) => Some(err.field.clone()),
            Self::Source(SourceError::NotAllowed { field, .. })
            | Self::Source(SourceError::RelayOwned { field, .. }) => Some(field.clone()),
            Self::Target(_) | Self::Document(_) | Self::Mode(_) => None,
            Self::Input(_)
            | Self::Bedrock(_)
            | Self::Destination(_)
            | Self::InProgress { .. }
            | Self::NotAChunk { .. }
            | Self::ChunkDeadLettered { .. }
            | Self::BatchJob(_)
            | Self::NotOurBatchJob { .. }
            | Self::BatchIncomplete { .. } => return self.to_string(),
        };
        let at = field.map(|f| format!(" at `{f}`")).unwrap_or_default();
        format!(
            "{}{at} (the message is in the record; RELAY_LOG_CONTENT=true logs it)",
            self.code()
        )
    }

    /// The `error` part of a failure record.
    pub fn to_record(&self) -> ErrorRecord {
        ErrorRecord {
            kind: self.code().to_owned(),
            message: self.to_string(),
            retryable: self.is_retryable(),
        }
    }
}

impl From<RelayError> for Diagnostic {
    fn from(err: RelayError) -> Self {
        let class = if err.is_retryable() {
            "Retryable"
        } else {
            "NonRetryable"
        };
        Diagnostic {
            error_type: format!("{class}.{}", err.code()),
            error_message: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_error_type_carries_class_and_code() {
        let err = RelayError::Job(JobError::NoModel);
        let diag = Diagnostic::from(err);
        assert_eq!(diag.error_type, "NonRetryable.InvalidJob");
        assert!(diag.error_message.contains("RELAY_DEFAULT_MODEL"));

        let err = RelayError::Bedrock(BedrockError::Throttled {
            model: "m".into(),
            message: "slow down".into(),
        });
        assert!(err.is_retryable());
        assert_eq!(
            Diagnostic::from(err).error_type,
            "Retryable.BedrockThrottled"
        );
    }
}
