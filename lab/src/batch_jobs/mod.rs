//! The Bedrock batch-inference control plane of the lab's emulator:
//! CreateModelInvocationJob, GetModelInvocationJob, ListModelInvocationJobs
//! and StopModelInvocationJob over the real wire protocol (restJson1, the
//! paths and field names of `aws-sdk-bedrock`), served on the
//! [`BedrockEmulator`](crate::emulator::BedrockEmulator)'s port and recorded in
//! its `calls()` like the runtime's, SigV4-attributed (access key → moto
//! session → account and role).
//!
//! # What a job does
//!
//! [`BatchJobs::connect`] first gives the plane moto's endpoint: it acts in
//! moto with administrator sessions of the accounts involved (IAM reads, S3
//! listings and bucket policies, EventBridge) and with a session of the job's
//! service role for the job's own S3 reads and writes.
//!
//! At create, as Bedrock does:
//! - the request is validated (names, ARNs, `s3://` URIs, `s3InputFormat`
//!   `JSONL`, `timeoutDurationInHours` 24–168, `modelInvocationType`);
//! - a `clientRequestToken` seen before in the account answers the first
//!   job's ARN when the request is the same, `ConflictException` when not;
//! - the service role must be in the caller's account ("Cross-account pass
//!   role is not allowed."), exist, and trust `bedrock.amazonaws.com` (its
//!   trust policy is evaluated with `aws:SourceAccount` / `aws:SourceArn`);
//! - the caller's role must be allowed `iam:PassRole` on it (knob
//!   `check_pass_role`), else `AccessDeniedException`;
//! - the input is read with the service role's access: the bucket must
//!   exist (and be owned by `s3BucketOwner` if given), and the role's identity
//!   policies and the bucket's policy must let it `s3:ListBucket` /
//!   `s3:GetObject` (both when the bucket is in another account, either when
//!   not); the output location likewise for `s3:PutObject`. A failure here
//!   does not refuse the request: the job ends `Failed` during `Validating`
//!   with the reason as its `message`, as Bedrock's do;
//! - fewer records than `min_records` is a `ValidationException`.
//!
//! A background task then moves the job Submitted → Validating → Scheduled →
//! InProgress, answers its records in a shuffled order (seeded by the job id,
//! so the same job always comes out the same) at `records_per_second`, and
//! writes one `<input name>.jsonl.out` per input file plus `manifest.json.out`
//! under `<output s3Uri>/<job id>/`. Converse records are answered by the
//! runtime's own Converse logic (`Echo from <model>: <text>`, the same token
//! counts as an on-demand call), InvokeModel records by its InvokeModel
//! logic. It ends `Completed`, `PartiallyCompleted` (some records errored),
//! `Failed` (every record errored, or validation), `Expired`
//! (`expire_after_records`) or, after StopModelInvocationJob, `Stopping` →
//! `Stopped`; expired and stopped jobs keep the output written so far.
//!
//! Every status a job takes is published as `aws.bedrock` / `Batch Inference
//! Job State Change` on the default bus of the job's account (moto
//! PutEvents, as that account's administrator); [`Lab::forward_batch_events`]
//! adds the rule that forwards them to a bus in another account, which moto
//! delivers itself.
//!
//! [`Lab::forward_batch_events`]: crate::Lab::forward_batch_events
//!
//! # Control endpoints
//!
//! `GET`/`PUT /_lab/batch/knobs` ([`BatchKnobs`]), `GET /_lab/batch/jobs`
//! ([`BatchJob`]s), `GET /_lab/batch/events` ([`BatchEvent`]s),
//! `PUT /_lab/batch/moto` (`{"endpoint": "http://…"}`, as
//! [`BatchJobs::connect`]) and `POST /_lab/batch/reset`.
//!
//! # Simplified
//!
//! Policy evaluation covers `Effect`, `Action`/`NotAction`,
//! `Resource`/`NotResource`, `Principal`/`NotPrincipal` and the `String*` /
//! `Arn*` condition operators (with `IfExists`) over the keys the plane knows
//! (`aws:SourceAccount`, `aws:SourceArn`, `aws:PrincipalAccount`,
//! `aws:PrincipalArn`, `iam:PassedToService`, `s3:prefix`); a statement with
//! any other condition is left out of the decision, Allow or Deny. SCPs,
//! permission boundaries, KMS keys (`s3EncryptionKeyId` is kept, not used),
//! VPC configs and the job timeout in hours (only `expire_after_records`
//! expires a job) are not emulated. Output files are written when the job
//! ends, not while it runs.
//!
//! # Layout
//!
//! This file holds the public types and the plane's state; the rest is split
//! by concern, routes on top, helpers at the bottom:
//! - `api`: the HTTP routes (Bedrock's and `/_lab/batch/*`), call recording,
//!   Get / List / Stop;
//! - `create`: CreateModelInvocationJob's checks and the job's start, with
//!   `request` for the request's validation;
//! - `run`: a job's lifecycle task (statuses, records, output, end);
//! - `events`: status changes and the state-change events' publisher;
//! - `data`: the job's input and output in S3;
//! - `link`: moto (IAM / STS queries, sessions, buckets) and the S3 access
//!   decision, over `policy`, the IAM policy evaluator;
//! - `ids`: ARN / URI parsing, timestamps, the seeded generator;
//! - `lab_setup`: the [`Lab`](crate::Lab)'s batch helpers and [`BusWatch`].

mod api;
mod create;
mod data;
mod events;
mod ids;
mod lab_setup;
mod link;
mod policy;
mod request;
mod run;

pub(crate) use api::routes;
pub use lab_setup::BusWatch;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::emulator::lock;
use crate::LabError;
use link::MotoLink;

/// The EventBridge `detail-type` of Bedrock's batch job events.
pub const DETAIL_TYPE: &str = "Batch Inference Job State Change";
/// The EventBridge `source` of Bedrock's events.
pub const SOURCE: &str = "aws.bedrock";
/// The service principal a batch service role must trust.
pub const BEDROCK_SERVICE: &str = "bedrock.amazonaws.com";

/// The statuses a job can take.
pub const STATUSES: [&str; 10] = [
    "Submitted",
    "Validating",
    "Scheduled",
    "InProgress",
    "Completed",
    "PartiallyCompleted",
    "Failed",
    "Stopping",
    "Stopped",
    "Expired",
];

/// The statuses a job ends in.
pub const TERMINAL: [&str; 5] = [
    "Completed",
    "PartiallyCompleted",
    "Failed",
    "Stopped",
    "Expired",
];

/// How batch jobs behave. The knobs in force when a job is created apply to
/// it for its whole life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchKnobs {
    /// Records answered per second (default 1 000).
    pub records_per_second: f64,
    /// Milliseconds a job spends in each of Submitted, Validating and
    /// Scheduled (default 20).
    pub phase_ms: u64,
    /// Records whose `recordId` contains this text get an error line.
    pub fail_record_ids_containing: Option<String>,
    /// Every Nth record in input order (the Nth, 2Nth, …, counted from 1
    /// across the job's files) gets an error line.
    pub fail_every_nth: Option<usize>,
    /// The `errorCode` of injected record errors (default 400).
    pub record_error_code: u16,
    /// The `errorMessage` of injected record errors.
    pub record_error_message: String,
    /// The job ends `Expired` once this many records are answered, with the
    /// output so far.
    pub expire_after_records: Option<usize>,
    /// Every job ends `Failed` during `Validating` with this message.
    pub fail_validation: Option<String>,
    /// The minimum number of records per job (Bedrock's quota is 100; the
    /// lab's default is 1). Fewer is a `ValidationException` at create.
    pub min_records: usize,
    /// Jobs per account not yet ended; more is a
    /// `ServiceQuotaExceededException` at create.
    pub max_active_jobs: Option<usize>,
    /// Whether the caller's role must be allowed `iam:PassRole` on the
    /// service role (default true).
    pub check_pass_role: bool,
}

impl Default for BatchKnobs {
    fn default() -> Self {
        Self {
            records_per_second: 1000.0,
            phase_ms: 20,
            fail_record_ids_containing: None,
            fail_every_nth: None,
            record_error_code: 400,
            record_error_message:
                "Malformed input request, please reformat your input and try again.".to_owned(),
            expire_after_records: None,
            fail_validation: None,
            min_records: 1,
            max_active_jobs: None,
            check_pass_role: true,
        }
    }
}

/// A job as GetModelInvocationJob answers it (the same JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchJob {
    /// `arn:aws:bedrock:<region>:<account>:model-invocation-job/<id>`.
    pub job_arn: String,
    /// The name given.
    pub job_name: String,
    /// The model given.
    pub model_id: String,
    /// The idempotency token given, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_token: Option<String>,
    /// The service role.
    pub role_arn: String,
    /// One of [`STATUSES`].
    pub status: String,
    /// Why the job failed or expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// ISO 8601.
    pub submit_time: String,
    /// ISO 8601.
    pub last_modified_time: String,
    /// ISO 8601, once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// `{"s3InputDataConfig": {...}}` as given (with `s3InputFormat`).
    pub input_data_config: Value,
    /// `{"s3OutputDataConfig": {...}}` as given.
    pub output_data_config: Value,
    /// 24 to 168 (default 168).
    pub timeout_duration_in_hours: i32,
    /// Submit time plus the timeout.
    pub job_expiration_time: String,
    /// `InvokeModel` or `Converse`.
    pub model_invocation_type: String,
    /// Records in the input, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_record_count: Option<u64>,
    /// Records answered so far.
    pub processed_record_count: u64,
    /// Records answered with a model output.
    pub success_record_count: u64,
    /// Records answered with an error.
    pub error_record_count: u64,
}

impl BatchJob {
    /// The 12-character job id (the ARN's last part).
    pub fn id(&self) -> &str {
        self.job_arn.rsplit('/').next().unwrap_or_default()
    }

    /// Whether the job has ended.
    pub fn is_ended(&self) -> bool {
        TERMINAL.contains(&self.status.as_str())
    }
}

/// A state-change event the plane published (or tried to).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchEvent {
    /// The job's account, whose default bus it went to.
    pub account: String,
    /// The job.
    pub job_arn: String,
    /// The status it announces.
    pub status: String,
    /// The event's `detail`.
    pub detail: Value,
    /// Whether moto's PutEvents accepted it.
    pub delivered: bool,
    /// Why not, if it failed.
    pub error: Option<String>,
}

/// The batch-inference control plane; a cheap handle (clones share state).
#[derive(Debug, Clone, Default)]
pub struct BatchJobs {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: Mutex<Vec<Entry>>,
    knobs: Mutex<BatchKnobs>,
    link: Mutex<Option<Arc<MotoLink>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    publisher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    events: Mutex<Vec<BatchEvent>>,
    outbox: Mutex<Option<tokio::sync::mpsc::UnboundedSender<usize>>>,
    creating: tokio::sync::Mutex<()>,
    counter: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    job: BatchJob,
    account: String,
    /// The create request, for idempotency.
    request: Value,
    stop: bool,
    history: Vec<String>,
}

/// What the plane knows of a caller.
#[derive(Debug, Clone, Default)]
struct CallerInfo {
    account: Option<String>,
    role_arn: Option<String>,
    principal_arn: Option<String>,
}

type ApiError = (u16, &'static str, String);

fn validation(message: impl Into<String>) -> ApiError {
    (400, "ValidationException", message.into())
}

fn constraint(field: &str, value: &str, rule: &str) -> ApiError {
    validation(format!(
        "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: {rule}"
    ))
}

fn missing(field: &str) -> ApiError {
    validation(format!(
        "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
    ))
}

fn not_found(ident: &str) -> ApiError {
    (
        404,
        "ResourceNotFoundException",
        format!("The specified job {ident} was not found."),
    )
}

impl BatchJobs {
    /// Replaces the knobs (for jobs created from now on).
    pub fn set_knobs(&self, knobs: BatchKnobs) {
        *lock(&self.inner.knobs) = knobs;
    }

    /// The knobs in force.
    pub fn knobs(&self) -> BatchKnobs {
        lock(&self.inner.knobs).clone()
    }

    /// Every job, in creation order.
    pub fn jobs(&self) -> Vec<BatchJob> {
        lock(&self.inner.jobs)
            .iter()
            .map(|e| e.job.clone())
            .collect()
    }

    /// A job by ARN or id.
    pub fn job(&self, ident: &str) -> Option<BatchJob> {
        lock(&self.inner.jobs)
            .iter()
            .find(|e| matches_ident(&e.job, ident))
            .map(|e| e.job.clone())
    }

    /// Every status a job took, in order.
    pub fn history(&self, ident: &str) -> Vec<String> {
        lock(&self.inner.jobs)
            .iter()
            .find(|e| matches_ident(&e.job, ident))
            .map(|e| e.history.clone())
            .unwrap_or_default()
    }

    /// Every state-change event so far, in the order published.
    pub fn events(&self) -> Vec<BatchEvent> {
        lock(&self.inner.events).clone()
    }

    /// Waits for a job to end; its last state.
    pub async fn wait_for_end(&self, ident: &str, timeout: Duration) -> Result<BatchJob, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.job(ident) {
                Some(job) if job.is_ended() => return Ok(job),
                Some(job) if Instant::now() >= deadline => {
                    return Err(LabError::Function(format!(
                        "job {ident} still {} after {timeout:?}",
                        job.status
                    )))
                }
                None => return Err(LabError::Function(format!("no job {ident}"))),
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Forgets every job and event and restores the default knobs (the moto
    /// connection stays).
    pub fn reset(&self) {
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        lock(&self.inner.jobs).clear();
        lock(&self.inner.events).clear();
        *lock(&self.inner.knobs) = BatchKnobs::default();
    }

    /// Stops every job task and the publisher.
    pub(crate) fn abort_all(&self) {
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        if let Some(task) = lock(&self.inner.publisher).take() {
            task.abort();
        }
    }

    fn link(&self) -> Option<Arc<MotoLink>> {
        lock(&self.inner.link).clone()
    }
}

fn matches_ident(job: &BatchJob, ident: &str) -> bool {
    job.job_arn == ident || job.id() == ident
}
