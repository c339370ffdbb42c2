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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sdk_eventbridge::types::{PutEventsRequestEntry, RuleState, Target};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::emulator::{self, lock, Call, Shared};
use crate::moto::{xml_value, REGION};
use crate::services::sdk_config;
use crate::sigv4::sign_headers;
use crate::{s3_client, Lab, LabError};

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
    /// Acts in the moto at `moto_endpoint` (IAM, S3, EventBridge); needed
    /// before jobs can be created. Call inside a Tokio runtime: it starts the
    /// task that publishes events.
    pub fn connect(&self, moto_endpoint: &str) {
        let link = Arc::new(MotoLink::new(moto_endpoint));
        *lock(&self.inner.link) = Some(Arc::clone(&link));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        *lock(&self.inner.outbox) = Some(tx);
        let inner = Arc::clone(&self.inner);
        let task = tokio::spawn(async move {
            let mut clients: HashMap<String, aws_sdk_eventbridge::Client> = HashMap::new();
            while let Some(index) = rx.recv().await {
                let Some(event) = lock(&inner.events).get(index).cloned() else {
                    continue;
                };
                let result = link.publish(&mut clients, &event).await;
                if let Some(stored) = lock(&inner.events).get_mut(index) {
                    stored.delivered = result.is_ok();
                    stored.error = result.err();
                }
            }
        });
        if let Some(old) = lock(&self.inner.publisher).replace(task) {
            old.abort();
        }
    }

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

    fn new_id(&self) -> String {
        let n = self.inner.counter.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut rng = SplitMix(nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        (0..12)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.below(36)]))
            .collect()
    }

    /// Queues the event for `entry`'s current status; called with the jobs
    /// lock held, so events go out in the order of the transitions.
    fn announce(&self, entry: &Entry) {
        let job = &entry.job;
        let detail = json!({
            "version": "0.0",
            "accountId": entry.account,
            "batchJobName": job.job_name,
            "batchJobArn": job.job_arn,
            "batchModelId": job.model_id,
            "status": job.status,
            "failureMessage": job.message.clone().unwrap_or_default(),
            "creationTime": job.submit_time,
        });
        let index = {
            let mut events = lock(&self.inner.events);
            events.push(BatchEvent {
                account: entry.account.clone(),
                job_arn: job.job_arn.clone(),
                status: job.status.clone(),
                detail,
                delivered: false,
                error: None,
            });
            events.len() - 1
        };
        match lock(&self.inner.outbox).as_ref() {
            Some(outbox) => {
                let _ = outbox.send(index);
            }
            None => {
                if let Some(event) = lock(&self.inner.events).get_mut(index) {
                    event.error = Some("not connected to moto".to_owned());
                }
            }
        }
    }

    fn set_status(&self, entry: &mut Entry, status: &str, message: Option<String>) {
        let now = iso(now_ms());
        entry.job.status = status.to_owned();
        entry.job.message = message;
        entry.job.last_modified_time = now.clone();
        if TERMINAL.contains(&status) {
            entry.job.end_time = Some(now);
        }
        entry.history.push(status.to_owned());
        self.announce(entry);
    }

    /// Moves a job on unless it is being stopped; false when it is.
    fn advance(&self, id: &str, status: &str) -> bool {
        let mut jobs = lock(&self.inner.jobs);
        let Some(entry) = jobs.iter_mut().find(|e| e.job.id() == id) else {
            return false;
        };
        if entry.stop {
            return false;
        }
        self.set_status(entry, status, None);
        true
    }

    /// Ends a job; a stop asked for before makes any end but `Failed` `Stopped`.
    fn finish(&self, id: &str, status: &str, message: Option<String>) {
        let mut jobs = lock(&self.inner.jobs);
        let Some(entry) = jobs.iter_mut().find(|e| e.job.id() == id) else {
            return;
        };
        if entry.job.is_ended() {
            return;
        }
        let (status, message) = if entry.stop && status != "Failed" {
            ("Stopped", None)
        } else {
            (status, message)
        };
        self.set_status(entry, status, message);
    }

    fn stop_requested(&self, id: &str) -> bool {
        lock(&self.inner.jobs)
            .iter()
            .find(|e| e.job.id() == id)
            .is_some_and(|e| e.stop)
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut BatchJob)) {
        if let Some(entry) = lock(&self.inner.jobs).iter_mut().find(|e| e.job.id() == id) {
            change(&mut entry.job);
        }
    }

    async fn create(
        &self,
        shared: &Shared,
        caller: &CallerInfo,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let request = CreateRequest::parse(body)?;
        let _one_at_a_time = self.inner.creating.lock().await;
        let role_account = arn_account(&request.role_arn).unwrap_or_default();
        let account = caller
            .account
            .clone()
            .unwrap_or_else(|| role_account.clone());

        if let Some(token) = &request.client_request_token {
            let jobs = lock(&self.inner.jobs);
            let earlier = jobs.iter().find(|e| {
                e.account == account && e.job.client_request_token.as_deref() == Some(token)
            });
            if let Some(earlier) = earlier {
                if earlier.request == *body {
                    return Ok(json!({"jobArn": earlier.job.job_arn}));
                }
                return Err((
                    409,
                    "ConflictException",
                    format!(
                        "The clientRequestToken {token} was already used for job {} with different parameters.",
                        earlier.job.job_arn
                    ),
                ));
            }
        }
        if role_account != account {
            return Err(validation("Cross-account pass role is not allowed."));
        }
        if let Some(allowed) = &lock(&shared.knobs).model_access {
            if !allowed.contains(&account) {
                return Err((
                    403,
                    "AccessDeniedException",
                    format!("You don't have access to the model with the specified model ID (account {account})."),
                ));
            }
        }
        let knobs = self.knobs();
        {
            let jobs = lock(&self.inner.jobs);
            let mine = || jobs.iter().filter(|e| e.account == account);
            if mine().any(|e| e.job.job_name == request.job_name) {
                return Err((
                    409,
                    "ConflictException",
                    format!(
                        "A batch inference job named {} already exists in this account.",
                        request.job_name
                    ),
                ));
            }
            if let Some(max) = knobs.max_active_jobs {
                if mine().filter(|e| !e.job.is_ended()).count() >= max {
                    return Err((
                        400,
                        "ServiceQuotaExceededException",
                        format!("The account has reached its quota of {max} batch inference jobs in progress."),
                    ));
                }
            }
        }
        let link = self.link().ok_or((
            500,
            "InternalServerException",
            "the lab's batch plane is not connected to moto (BatchJobs::connect or PUT /_lab/batch/moto)"
                .to_owned(),
        ))?;

        let id = self.new_id();
        let job_arn = format!("arn:aws:bedrock:{REGION}:{account}:model-invocation-job/{id}");
        let role = link
            .role(&account, &request.role_arn)
            .await
            .map_err(|e| (500, "InternalServerException", e))?
            .ok_or_else(|| {
                validation(format!(
                    "The provided role {} does not exist in account {account}.",
                    request.role_arn
                ))
            })?;
        let trusted = role.trust.as_ref().is_some_and(|trust| {
            let context = Context::from([
                ("aws:sourceaccount", account.clone()),
                ("aws:sourcearn", job_arn.clone()),
            ]);
            let who = Principal::service(BEDROCK_SERVICE);
            let verdict = evaluate(trust, "sts:AssumeRole", &role.arn, Some(&who), &context);
            verdict.allow && !verdict.deny
        });
        if !trusted {
            return Err(validation(format!(
                "The role {} does not let {BEDROCK_SERVICE} assume it (sts:AssumeRole) for this job: check its trust policy.",
                request.role_arn
            )));
        }
        if knobs.check_pass_role {
            if let Some(caller_role) = &caller.role_arn {
                let policies = link
                    .role_policies(&account, caller_role)
                    .await
                    .map_err(|e| (500, "InternalServerException", e))?;
                let context = Context::from([
                    ("iam:passedtoservice", BEDROCK_SERVICE.to_owned()),
                    ("aws:principalaccount", account.clone()),
                    ("aws:principalarn", caller_role.clone()),
                ]);
                let verdict = policies.iter().fold(Verdict::default(), |v, p| {
                    v.or(evaluate(p, "iam:PassRole", &role.arn, None, &context))
                });
                if !verdict.allow || verdict.deny {
                    let who = caller.principal_arn.as_deref().unwrap_or(caller_role);
                    return Err((
                        403,
                        "AccessDeniedException",
                        format!(
                            "User: {who} is not authorized to perform: iam:PassRole on resource: {}",
                            role.arn
                        ),
                    ));
                }
            }
        }

        let work = link.prepare(&role, &request, &id).await;
        let total = work
            .files
            .as_ref()
            .map(|files| files.iter().map(|f| f.records.len()).sum::<usize>());
        if let Ok(total) = total {
            if total < knobs.min_records {
                return Err(validation(format!(
                    "The input has {total} records, fewer than the minimum number of records per batch inference job ({}).",
                    knobs.min_records
                )));
            }
        }

        let submitted = now_ms();
        let hours = request.timeout_hours;
        let job = BatchJob {
            job_arn: job_arn.clone(),
            job_name: request.job_name.clone(),
            model_id: request.model_id.clone(),
            client_request_token: request.client_request_token.clone(),
            role_arn: request.role_arn.clone(),
            status: String::new(),
            message: None,
            submit_time: iso(submitted),
            last_modified_time: iso(submitted),
            end_time: None,
            input_data_config: request.input_config.clone(),
            output_data_config: request.output_config.clone(),
            timeout_duration_in_hours: hours,
            job_expiration_time: iso(submitted + i64::from(hours) * 3_600_000),
            model_invocation_type: request.invocation_type.clone(),
            total_record_count: None,
            processed_record_count: 0,
            success_record_count: 0,
            error_record_count: 0,
        };
        {
            let mut jobs = lock(&self.inner.jobs);
            jobs.push(Entry {
                job,
                account,
                request: body.clone(),
                stop: false,
                history: Vec::new(),
            });
            if let Some(entry) = jobs.last_mut() {
                self.set_status(entry, "Submitted", None);
            }
        }
        let plane = self.clone();
        let spec = JobSpec {
            id,
            model_id: request.model_id,
            invocation_type: request.invocation_type,
            knobs,
            hours,
        };
        let task = tokio::spawn(async move { plane.run(link, spec, work).await });
        lock(&self.inner.tasks).push(task);
        Ok(json!({ "jobArn": job_arn }))
    }

    fn get(&self, caller: &CallerInfo, ident: &str) -> Result<BatchJob, ApiError> {
        lock(&self.inner.jobs)
            .iter()
            .find(|e| visible(e, caller) && matches_ident(&e.job, ident))
            .map(|e| e.job.clone())
            .ok_or_else(|| not_found(ident))
    }

    fn list(&self, caller: &CallerInfo, query: &[(String, String)]) -> Result<Value, ApiError> {
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let time = |name: &str| -> Result<Option<DateTime>, ApiError> {
            param(name)
                .map(|v| {
                    DateTime::from_str(v, Format::DateTime)
                        .map_err(|_| constraint(name, v, "Member must be a timestamp"))
                })
                .transpose()
        };
        let after = time("submitTimeAfter")?;
        let before = time("submitTimeBefore")?;
        if let Some(status) = param("statusEquals") {
            if !STATUSES.contains(&status) {
                return Err(constraint(
                    "statusEquals",
                    status,
                    &format!(
                        "Member must satisfy enum value set: [{}]",
                        STATUSES.join(", ")
                    ),
                ));
            }
        }
        let max = match param("maxResults") {
            None => 1000,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    return Err(constraint(
                        "maxResults",
                        v,
                        "Member must have value between 1 and 1000",
                    ))
                }
            },
        };
        let start = match param("nextToken") {
            None => 0,
            Some(token) => token
                .parse::<usize>()
                .map_err(|_| validation("The provided nextToken is invalid."))?,
        };
        let descending = match param("sortOrder") {
            None | Some("Descending") => true,
            Some("Ascending") => false,
            Some(other) => {
                return Err(constraint(
                    "sortOrder",
                    other,
                    "Member must satisfy enum value set: [Ascending, Descending]",
                ))
            }
        };
        let jobs = lock(&self.inner.jobs);
        let mut matching: Vec<&BatchJob> = jobs
            .iter()
            .filter(|e| visible(e, caller))
            .map(|e| &e.job)
            .filter(|j| param("statusEquals").is_none_or(|s| j.status == s))
            .filter(|j| param("nameContains").is_none_or(|n| j.job_name.contains(n)))
            .filter(|j| {
                let at = DateTime::from_str(&j.submit_time, Format::DateTime).ok();
                after.is_none_or(|a| at.is_some_and(|t| t > a))
                    && before.is_none_or(|b| at.is_some_and(|t| t < b))
            })
            .collect();
        if descending {
            matching.reverse();
        }
        let page: Vec<&BatchJob> = matching.iter().skip(start).take(max).copied().collect();
        let mut answer = json!({ "invocationJobSummaries": page });
        if start + page.len() < matching.len() {
            answer["nextToken"] = json!((start + page.len()).to_string());
        }
        Ok(answer)
    }

    fn stop(&self, caller: &CallerInfo, ident: &str) -> Result<String, ApiError> {
        let mut jobs = lock(&self.inner.jobs);
        let entry = jobs
            .iter_mut()
            .find(|e| visible(e, caller) && matches_ident(&e.job, ident))
            .ok_or_else(|| not_found(ident))?;
        if entry.job.is_ended() {
            return Err((
                409,
                "ConflictException",
                format!(
                    "The job {} is {} and cannot be stopped.",
                    entry.job.job_arn, entry.job.status
                ),
            ));
        }
        if !entry.stop {
            entry.stop = true;
            self.set_status(entry, "Stopping", None);
        }
        Ok(entry.job.model_id.clone())
    }

    /// The job's life after create.
    async fn run(self, link: Arc<MotoLink>, spec: JobSpec, work: Work) {
        let id = spec.id.as_str();
        let knobs = &spec.knobs;
        let phase = Duration::from_millis(knobs.phase_ms);
        tokio::time::sleep(phase).await;
        if !self.advance(id, "Validating") {
            return self.finish(id, "Stopped", None);
        }
        tokio::time::sleep(phase).await;
        let files = match (&knobs.fail_validation, work.files) {
            (Some(message), _) => Err(message.clone()),
            (None, files) => files,
        };
        let files = match files {
            Ok(files) => files,
            Err(message) => return self.finish(id, "Failed", Some(message)),
        };
        if !self.advance(id, "Scheduled") {
            return self.finish(id, "Stopped", None);
        }
        tokio::time::sleep(phase).await;
        if !self.advance(id, "InProgress") {
            return self.finish(id, "Stopped", None);
        }

        let mut order = Vec::new();
        for (f, file) in files.iter().enumerate() {
            for r in 0..file.records.len() {
                order.push((f, r, order.len() + 1));
            }
        }
        let total = order.len();
        self.update(id, |job| job.total_record_count = Some(total as u64));
        shuffle(&mut order, seed_of(id));

        let mut lines: Vec<Vec<String>> = vec![Vec::new(); files.len()];
        let mut counts = Manifest {
            total_record_count: total as u64,
            ..Manifest::default()
        };
        let rate = knobs.records_per_second.max(0.001);
        let started = Instant::now();
        let mut ending: Option<(&str, Option<String>)> = None;
        for (n, &(f, r, position)) in order.iter().enumerate() {
            if self.stop_requested(id) {
                ending = Some(("Stopped", None));
                break;
            }
            if knobs.expire_after_records == Some(n) {
                ending = Some((
                    "Expired",
                    Some(format!(
                        "The job did not finish within its timeout of {} hours.",
                        spec.hours
                    )),
                ));
                break;
            }
            let record = &files[f].records[r];
            let (line, tokens) = answer_record(&spec, record, position);
            lines[f].push(line.to_string());
            counts.processed_record_count += 1;
            match tokens {
                Some(tokens) => {
                    counts.success_record_count += 1;
                    counts.input_token_count += tokens.input.max(0) as u64;
                    counts.output_token_count += tokens.output.max(0) as u64;
                }
                None => counts.error_record_count += 1,
            }
            self.update(id, |job| {
                job.processed_record_count = counts.processed_record_count;
                job.success_record_count = counts.success_record_count;
                job.error_record_count = counts.error_record_count;
            });
            let due = started + Duration::from_secs_f64((n + 1) as f64 / rate);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }

        if let Err(message) = link
            .write_output(&work.output, id, &files, &lines, &counts)
            .await
        {
            return self.finish(id, "Failed", Some(message));
        }
        let (status, message) = match ending {
            Some((status, message)) => (status, message),
            None if counts.error_record_count == 0 => ("Completed", None),
            None if counts.success_record_count == 0 => (
                "Failed",
                Some(
                    "Every record of the job failed: see the error lines in the output.".to_owned(),
                ),
            ),
            None => ("PartiallyCompleted", None),
        };
        self.finish(id, status, message);
    }
}

fn matches_ident(job: &BatchJob, ident: &str) -> bool {
    job.job_arn == ident || job.id() == ident
}

fn visible(entry: &Entry, caller: &CallerInfo) -> bool {
    caller.account.as_ref().is_none_or(|a| *a == entry.account)
}

/// What the task needs besides the work: the job's settings.
struct JobSpec {
    id: String,
    model_id: String,
    invocation_type: String,
    knobs: BatchKnobs,
    hours: i32,
}

/// What create read for the task: the input (or why it cannot be used) and
/// where the output goes, with the service role's session.
struct Work {
    files: Result<Vec<InputFile>, String>,
    output: OutputPlace,
}

struct OutputPlace {
    session: Option<Credentials>,
    bucket: String,
    /// Empty or ending in `/`.
    prefix: String,
}

struct InputFile {
    /// The output file's name: the input's path under the input prefix.
    name: String,
    records: Vec<Record>,
}

struct Record {
    record_id: String,
    model_input: Value,
}

/// `manifest.json.out`.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    total_record_count: u64,
    processed_record_count: u64,
    success_record_count: u64,
    error_record_count: u64,
    input_token_count: u64,
    output_token_count: u64,
}

/// One record's output line, and its token counts if answered.
fn answer_record(
    spec: &JobSpec,
    record: &Record,
    position: usize,
) -> (Value, Option<emulator::Tokens>) {
    let knobs = &spec.knobs;
    let injected = knobs
        .fail_record_ids_containing
        .as_deref()
        .is_some_and(|text| record.record_id.contains(text))
        || knobs
            .fail_every_nth
            .is_some_and(|n| n > 0 && position.is_multiple_of(n));
    let error = |code: u16, message: &str| {
        json!({
            "recordId": record.record_id,
            "modelInput": record.model_input,
            "error": {"errorCode": code, "errorMessage": message},
        })
    };
    if injected {
        return (
            error(knobs.record_error_code, &knobs.record_error_message),
            None,
        );
    }
    let output = if spec.invocation_type == "Converse" {
        emulator::converse_reply(&spec.model_id, &record.model_input, 0).map(|reply| {
            let usage = |name: &str| {
                reply
                    .pointer(&format!("/usage/{name}"))
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            };
            let tokens = emulator::Tokens {
                input: usage("inputTokens"),
                output: usage("outputTokens"),
            };
            (reply, tokens)
        })
    } else {
        emulator::invoke_reply(&spec.model_id, &record.model_input)
    };
    match output {
        Ok((reply, tokens)) => (
            json!({
                "recordId": record.record_id,
                "modelInput": record.model_input,
                "modelOutput": reply,
            }),
            Some(tokens),
        ),
        Err((status, _, message)) => (error(status, &message), None),
    }
}

/// CreateModelInvocationJob's request, validated.
#[derive(Debug, Clone)]
struct CreateRequest {
    job_name: String,
    role_arn: String,
    model_id: String,
    client_request_token: Option<String>,
    input_uri: String,
    input_owner: Option<String>,
    output_uri: String,
    output_owner: Option<String>,
    timeout_hours: i32,
    invocation_type: String,
    input_config: Value,
    output_config: Value,
}

impl CreateRequest {
    fn parse(body: &Value) -> Result<Self, ApiError> {
        if !body.is_object() {
            return Err(validation("The request body is not a JSON object."));
        }
        let text = |pointer: &str| body.pointer(pointer).and_then(Value::as_str);
        let required = |pointer: &str, field: &str| text(pointer).ok_or_else(|| missing(field));

        let job_name = required("/jobName", "jobName")?;
        let name_ok = (1..=63).contains(&job_name.len())
            && job_name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && job_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !name_ok {
            return Err(constraint(
                "jobName",
                job_name,
                r"Member must satisfy regular expression pattern: [a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}",
            ));
        }
        let role_arn = required("/roleArn", "roleArn")?;
        let role_ok = arn_account(role_arn).is_some()
            && role_arn.starts_with("arn:aws")
            && role_arn.split(':').nth(2) == Some("iam")
            && role_arn
                .split(':')
                .nth(5)
                .is_some_and(|r| r.starts_with("role/") && r.len() > 5);
        if !role_ok {
            return Err(constraint(
                "roleArn",
                role_arn,
                r"Member must satisfy regular expression pattern: arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+",
            ));
        }
        let model_id = required("/modelId", "modelId")?;
        emulator::check_model_id(model_id)?;
        let client_request_token = match text("/clientRequestToken") {
            None => None,
            Some(token) => {
                let ok = (1..=256).contains(&token.len())
                    && token.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                if !ok {
                    return Err(constraint(
                        "clientRequestToken",
                        token,
                        "Member must satisfy regular expression pattern: [a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}",
                    ));
                }
                Some(token.to_owned())
            }
        };
        let input_uri = required(
            "/inputDataConfig/s3InputDataConfig/s3Uri",
            "inputDataConfig.s3InputDataConfig.s3Uri",
        )?;
        parse_s3(input_uri).ok_or_else(|| {
            constraint(
                "inputDataConfig.s3InputDataConfig.s3Uri",
                input_uri,
                "Member must be an s3:// URI",
            )
        })?;
        let format = text("/inputDataConfig/s3InputDataConfig/s3InputFormat").unwrap_or("JSONL");
        if format != "JSONL" {
            return Err(constraint(
                "inputDataConfig.s3InputDataConfig.s3InputFormat",
                format,
                "Member must satisfy enum value set: [JSONL]",
            ));
        }
        let output_uri = required(
            "/outputDataConfig/s3OutputDataConfig/s3Uri",
            "outputDataConfig.s3OutputDataConfig.s3Uri",
        )?;
        parse_s3(output_uri).ok_or_else(|| {
            constraint(
                "outputDataConfig.s3OutputDataConfig.s3Uri",
                output_uri,
                "Member must be an s3:// URI",
            )
        })?;
        let timeout_hours = match body.get("timeoutDurationInHours") {
            None | Some(Value::Null) => 168,
            Some(value) => match value.as_i64() {
                Some(h) if (24..=168).contains(&h) => h as i32,
                _ => {
                    return Err(constraint(
                        "timeoutDurationInHours",
                        &value.to_string(),
                        "Member must have value between 24 and 168",
                    ))
                }
            },
        };
        let invocation_type = text("/modelInvocationType").unwrap_or("InvokeModel");
        if !["InvokeModel", "Converse"].contains(&invocation_type) {
            return Err(constraint(
                "modelInvocationType",
                invocation_type,
                "Member must satisfy enum value set: [InvokeModel, Converse]",
            ));
        }
        if let Some(tags) = body.get("tags") {
            let ok = tags.as_array().is_some_and(|tags| {
                tags.len() <= 200
                    && tags.iter().all(|t| {
                        t.get("key").and_then(Value::as_str).is_some()
                            && t.get("value").and_then(Value::as_str).is_some()
                    })
            });
            if !ok {
                return Err(validation(
                    "1 validation error detected: Value at 'tags' failed to satisfy constraint: Member must be at most 200 {key, value} pairs",
                ));
            }
        }
        let mut input_config = body["inputDataConfig"].clone();
        input_config["s3InputDataConfig"]["s3InputFormat"] = json!(format);
        Ok(Self {
            job_name: job_name.to_owned(),
            role_arn: role_arn.to_owned(),
            model_id: model_id.to_owned(),
            client_request_token,
            input_uri: input_uri.to_owned(),
            input_owner: text("/inputDataConfig/s3InputDataConfig/s3BucketOwner")
                .map(str::to_owned),
            output_uri: output_uri.to_owned(),
            output_owner: text("/outputDataConfig/s3OutputDataConfig/s3BucketOwner")
                .map(str::to_owned),
            timeout_hours,
            invocation_type: invocation_type.to_owned(),
            input_config,
            output_config: body["outputDataConfig"].clone(),
        })
    }
}

/// `s3://bucket/key` → (bucket, key); the key may be empty.
fn parse_s3(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    ok.then(|| (bucket.to_owned(), key.to_owned()))
}

/// The account of an ARN (`arn:aws:iam::<account>:role/...`).
fn arn_account(arn: &str) -> Option<String> {
    let account = arn.split(':').nth(4)?;
    (account.len() == 12 && account.chars().all(|c| c.is_ascii_digit())).then(|| account.to_owned())
}

/// `arn:aws:iam::<account>:role/path/Name` → `Name`.
fn role_name(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or_default()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn iso(ms: i64) -> String {
    DateTime::from_millis(ms)
        .fmt(Format::DateTime)
        .unwrap_or_default()
}

/// A small deterministic generator (SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The shuffle seed of a job: FNV-1a of its id.
fn seed_of(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Fisher–Yates with [`SplitMix`].
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = SplitMix(seed);
    for i in (1..items.len()).rev() {
        let j = rng.below(i + 1);
        items.swap(i, j);
    }
}

// ---------------------------------------------------------------------------
// Policy evaluation.

/// Condition keys and their values, keys lower-cased.
type Context = HashMap<&'static str, String>;

/// Who a resource or trust policy is asked about.
#[derive(Debug, Clone, Default)]
struct Principal {
    /// ARNs and account ids the principal answers to (`AWS`).
    aws: Vec<String>,
    /// A service principal (`Service`).
    service: Option<String>,
}

impl Principal {
    fn service(name: &str) -> Self {
        Self {
            aws: Vec::new(),
            service: Some(name.to_owned()),
        }
    }

    /// A role's session: the role, its assumed-role ARN pattern, its account.
    fn role(role_arn: &str, account: &str) -> Self {
        Self {
            aws: vec![
                role_arn.to_owned(),
                format!(
                    "arn:aws:sts::{account}:assumed-role/{}/",
                    role_name(role_arn)
                ),
                format!("arn:aws:iam::{account}:root"),
                account.to_owned(),
            ],
            service: None,
        }
    }

    fn matches(&self, element: &Value) -> bool {
        match element {
            Value::String(s) => s == "*",
            Value::Object(map) => map.iter().any(|(kind, values)| {
                let values = strings(values);
                match kind.as_str() {
                    "AWS" => values.iter().any(|v| {
                        *v == "*"
                            || self.aws.iter().any(|mine| {
                                mine == v || (mine.ends_with('/') && v.starts_with(mine.as_str()))
                            })
                    }),
                    "Service" => values.iter().any(|v| self.service.as_deref() == Some(*v)),
                    _ => false,
                }
            }),
            _ => false,
        }
    }
}

/// What a set of statements says of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Verdict {
    allow: bool,
    deny: bool,
}

impl Verdict {
    fn or(self, other: Self) -> Self {
        Self {
            allow: self.allow || other.allow,
            deny: self.deny || other.deny,
        }
    }
}

fn strings(value: &Value) -> Vec<&str> {
    match value {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// `*` and `?` wildcards.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether a statement's `Condition` holds; `None` when it uses an operator
/// or key the plane cannot evaluate.
fn conditions_hold(conditions: &Value, context: &Context) -> Option<bool> {
    let conditions = conditions.as_object()?;
    for (operator, tests) in conditions {
        let (operator, if_exists) = match operator.strip_suffix("IfExists") {
            Some(base) => (base, true),
            None => (operator.as_str(), false),
        };
        for (key, wanted) in tests.as_object()? {
            let wanted = strings(wanted);
            let actual = context.get(key.to_ascii_lowercase().as_str());
            let Some(actual) = actual else {
                if if_exists || operator.contains("Not") {
                    continue;
                }
                if [
                    "aws:sourceaccount",
                    "aws:sourcearn",
                    "aws:principalaccount",
                    "aws:principalarn",
                    "iam:passedtoservice",
                    "s3:prefix",
                ]
                .contains(&key.to_ascii_lowercase().as_str())
                {
                    return Some(false);
                }
                return None;
            };
            let any = |f: &dyn Fn(&str) -> bool| wanted.iter().any(|w| f(w));
            let holds = match operator {
                "StringEquals" | "ArnEquals" => any(&|w| w == actual),
                "StringNotEquals" | "ArnNotEquals" => !any(&|w| w == actual),
                "StringEqualsIgnoreCase" => any(&|w| w.eq_ignore_ascii_case(actual)),
                "StringNotEqualsIgnoreCase" => !any(&|w| w.eq_ignore_ascii_case(actual)),
                "StringLike" | "ArnLike" => any(&|w| glob(w, actual)),
                "StringNotLike" | "ArnNotLike" => !any(&|w| glob(w, actual)),
                _ => return None,
            };
            if !holds {
                return Some(false);
            }
        }
    }
    Some(true)
}

/// Evaluates one policy document for `action` on `resource`. With
/// `principal`, it is a resource (or trust) policy: a statement applies only
/// when its `Principal` names it.
fn evaluate(
    policy: &Value,
    action: &str,
    resource: &str,
    principal: Option<&Principal>,
    context: &Context,
) -> Verdict {
    let statements = match policy.get("Statement") {
        Some(Value::Array(items)) => items.iter().collect::<Vec<_>>(),
        Some(one @ Value::Object(_)) => vec![one],
        _ => Vec::new(),
    };
    let action = action.to_ascii_lowercase();
    let mut verdict = Verdict::default();
    for statement in statements {
        let matches_action = |element: &Value| {
            strings(element)
                .iter()
                .any(|p| glob(&p.to_ascii_lowercase(), &action))
        };
        let action_ok = match (statement.get("Action"), statement.get("NotAction")) {
            (Some(a), _) => matches_action(a),
            (None, Some(n)) => !matches_action(n),
            (None, None) => false,
        };
        let matches_resource = |element: &Value| strings(element).iter().any(|p| glob(p, resource));
        let resource_ok = match (statement.get("Resource"), statement.get("NotResource")) {
            (Some(r), _) => matches_resource(r),
            (None, Some(n)) => !matches_resource(n),
            // Trust policies name no resource.
            (None, None) => true,
        };
        let principal_ok = match principal {
            None => true,
            Some(who) => match (statement.get("Principal"), statement.get("NotPrincipal")) {
                (Some(p), _) => who.matches(p),
                (None, Some(n)) => !who.matches(n),
                (None, None) => false,
            },
        };
        let condition_ok = match statement.get("Condition") {
            None => Some(true),
            Some(conditions) => conditions_hold(conditions, context),
        };
        if action_ok && resource_ok && principal_ok && condition_ok == Some(true) {
            match statement.get("Effect").and_then(Value::as_str) {
                Some("Allow") => verdict.allow = true,
                Some("Deny") => verdict.deny = true,
                _ => {}
            }
        }
    }
    verdict
}

/// A policy document as IAM's XML answers hold it: XML-escaped, URL-encoded.
fn decode_policy(raw: &str) -> Option<Value> {
    let unescaped = raw
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&unescaped)
        .ok()
        .or_else(|| serde_json::from_str(&percent_decode(&unescaped)).ok())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every `<tag>` value of an XML answer.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(after[..end].to_owned());
        rest = &after[end + close.len()..];
    }
    found
}

// ---------------------------------------------------------------------------
// moto.

/// The plane's way into moto.
#[derive(Debug)]
struct MotoLink {
    endpoint: String,
    http: reqwest::Client,
    admins: tokio::sync::Mutex<HashMap<String, Credentials>>,
}

/// A service role as create found it.
struct RoleInfo {
    arn: String,
    account: String,
    trust: Option<Value>,
    policies: Vec<Value>,
}

/// A failed query: the status and body moto answered.
struct QueryError {
    status: u16,
    body: String,
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.body)
    }
}

impl MotoLink {
    fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            admins: tokio::sync::Mutex::default(),
        }
    }

    /// A signed query-protocol call (IAM, STS); the XML answer.
    async fn query(
        &self,
        credentials: &Credentials,
        service: &str,
        params: &[(&str, &str)],
    ) -> Result<String, QueryError> {
        let failed = |e: String| QueryError { status: 0, body: e };
        let body = serde_urlencoded::to_string(params).map_err(|e| failed(e.to_string()))?;
        let url = format!("{}/", self.endpoint);
        let host = self.endpoint.trim_start_matches("http://").to_owned();
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let headers = [("host", host.as_str()), ("content-type", content_type)];
        let signed = sign_headers(
            credentials,
            REGION,
            service,
            "POST",
            &url,
            &headers,
            body.as_bytes(),
        )
        .map_err(failed)?;
        let mut request = self
            .http
            .post(&url)
            .header("content-type", content_type)
            .body(body);
        for (name, value) in signed {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| failed(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| failed(e.to_string()))?;
        if !(200..300).contains(&status) {
            return Err(QueryError { status, body: text });
        }
        Ok(text)
    }

    /// An administrator session in `account` (cached).
    async fn admin(&self, account: &str) -> Result<Credentials, String> {
        let mut admins = self.admins.lock().await;
        if let Some(found) = admins.get(account) {
            return Ok(found.clone());
        }
        let bootstrap = Credentials::new(
            "AKIALABBOOTSTRAP0000",
            "lab-bootstrap-secret",
            None,
            None,
            "lab",
        );
        let role = format!("arn:aws:iam::{account}:role/LabAdmin");
        let credentials = self
            .assume(&bootstrap, &role, "lab-admin")
            .await
            .map_err(|e| format!("admin session in {account}: {e}"))?;
        admins.insert(account.to_owned(), credentials.clone());
        Ok(credentials)
    }

    async fn assume(
        &self,
        credentials: &Credentials,
        role_arn: &str,
        session: &str,
    ) -> Result<Credentials, String> {
        let xml = self
            .query(
                credentials,
                "sts",
                &[
                    ("Action", "AssumeRole"),
                    ("Version", "2011-06-15"),
                    ("RoleArn", role_arn),
                    ("RoleSessionName", session),
                ],
            )
            .await
            .map_err(|e| format!("AssumeRole {role_arn}: {e}"))?;
        let field = |tag: &str| {
            xml_value(&xml, tag).ok_or_else(|| format!("AssumeRole {role_arn}: no {tag}"))
        };
        Ok(Credentials::new(
            field("AccessKeyId")?,
            field("SecretAccessKey")?,
            Some(field("SessionToken")?),
            None,
            "lab",
        ))
    }

    async fn iam(&self, account: &str, params: &[(&str, &str)]) -> Result<String, QueryError> {
        let admin = self
            .admin(account)
            .await
            .map_err(|e| QueryError { status: 0, body: e })?;
        let mut all = vec![("Version", "2010-05-08")];
        all.extend_from_slice(params);
        self.query(&admin, "iam", &all).await
    }

    /// The role with its trust and identity policies; `None` if it does not exist.
    async fn role(&self, account: &str, role_arn: &str) -> Result<Option<RoleInfo>, String> {
        let name = role_name(role_arn);
        let xml = match self
            .iam(account, &[("Action", "GetRole"), ("RoleName", name)])
            .await
        {
            Ok(xml) => xml,
            Err(e) if e.status == 404 || e.body.contains("NoSuchEntity") => return Ok(None),
            Err(e) => return Err(format!("GetRole {name}: {e}")),
        };
        if xml_value(&xml, "Arn").as_deref() != Some(role_arn) {
            return Ok(None);
        }
        let trust = xml_value(&xml, "AssumeRolePolicyDocument").and_then(|d| decode_policy(&d));
        Ok(Some(RoleInfo {
            arn: role_arn.to_owned(),
            account: account.to_owned(),
            trust,
            policies: self.role_policies(account, role_arn).await?,
        }))
    }

    /// A role's identity policies: inline and attached.
    async fn role_policies(&self, account: &str, role_arn: &str) -> Result<Vec<Value>, String> {
        let name = role_name(role_arn);
        let err = |what: &str, e: QueryError| format!("{what} {name}: {e}");
        let mut policies = Vec::new();
        let inline = self
            .iam(
                account,
                &[("Action", "ListRolePolicies"), ("RoleName", name)],
            )
            .await
            .map_err(|e| err("ListRolePolicies", e))?;
        for policy in xml_values(&inline, "member") {
            let xml = self
                .iam(
                    account,
                    &[
                        ("Action", "GetRolePolicy"),
                        ("RoleName", name),
                        ("PolicyName", &policy),
                    ],
                )
                .await
                .map_err(|e| err("GetRolePolicy", e))?;
            policies.extend(xml_value(&xml, "PolicyDocument").and_then(|d| decode_policy(&d)));
        }
        let attached = self
            .iam(
                account,
                &[("Action", "ListAttachedRolePolicies"), ("RoleName", name)],
            )
            .await
            .map_err(|e| err("ListAttachedRolePolicies", e))?;
        for arn in xml_values(&attached, "PolicyArn") {
            let xml = self
                .iam(account, &[("Action", "GetPolicy"), ("PolicyArn", &arn)])
                .await
                .map_err(|e| err("GetPolicy", e))?;
            let version = xml_value(&xml, "DefaultVersionId").unwrap_or_else(|| "v1".to_owned());
            let xml = self
                .iam(
                    account,
                    &[
                        ("Action", "GetPolicyVersion"),
                        ("PolicyArn", &arn),
                        ("VersionId", &version),
                    ],
                )
                .await
                .map_err(|e| err("GetPolicyVersion", e))?;
            policies.extend(xml_value(&xml, "Document").and_then(|d| decode_policy(&d)));
        }
        Ok(policies)
    }

    async fn s3_as_admin(&self, account: &str) -> Result<aws_sdk_s3::Client, String> {
        Ok(s3_client(&self.endpoint, &self.admin(account).await?))
    }

    /// Whether `account` owns `bucket`.
    async fn owns(&self, account: &str, bucket: &str) -> Result<bool, String> {
        let listing = self
            .s3_as_admin(account)
            .await?
            .list_buckets()
            .send()
            .await
            .map_err(|e| format!("ListBuckets in {account}: {e:?}"))?;
        Ok(listing.buckets().iter().any(|b| b.name() == Some(bucket)))
    }

    /// Checks a bucket exists (and is `expected_owner`'s); whether it is
    /// the role's own account's, and its policy.
    async fn bucket(
        &self,
        role: &RoleInfo,
        bucket: &str,
        expected_owner: Option<&str>,
    ) -> Result<(bool, Option<Value>), String> {
        let s3 = self.s3_as_admin(&role.account).await?;
        if let Err(e) = s3.head_bucket().bucket(bucket).send().await {
            if e.as_service_error().is_some_and(|e| e.is_not_found()) {
                return Err(format!("The S3 bucket {bucket} does not exist."));
            }
            return Err(format!("The S3 bucket {bucket} cannot be read: {e:?}"));
        }
        let same_account = self.owns(&role.account, bucket).await?;
        if let Some(owner) = expected_owner {
            if !self.owns(owner, bucket).await? {
                return Err(format!(
                    "Access denied: the S3 bucket {bucket} is not owned by account {owner} (s3BucketOwner)."
                ));
            }
        }
        let policy = match s3.get_bucket_policy().bucket(bucket).send().await {
            Ok(output) => output.policy().and_then(|p| serde_json::from_str(p).ok()),
            Err(e)
                if e.as_service_error()
                    .and_then(|e| e.code())
                    .is_some_and(|c| c == "NoSuchBucketPolicy") =>
            {
                None
            }
            Err(e) => return Err(format!("GetBucketPolicy {bucket}: {e:?}")),
        };
        Ok((same_account, policy))
    }

    /// Whether the role may do `action` on `resource` in a bucket: both its
    /// identity policies and the bucket policy across accounts, either within
    /// one, no explicit Deny in any.
    fn allowed(
        role: &RoleInfo,
        same_account: bool,
        bucket_policy: Option<&Value>,
        action: &str,
        resource: &str,
        context: &Context,
    ) -> Result<(), String> {
        let identity = role.policies.iter().fold(Verdict::default(), |v, p| {
            v.or(evaluate(p, action, resource, None, context))
        });
        let who = Principal::role(&role.arn, &role.account);
        let bucket = bucket_policy
            .map(|p| evaluate(p, action, resource, Some(&who), context))
            .unwrap_or_default();
        let allowed = !identity.deny
            && !bucket.deny
            && if same_account {
                identity.allow || bucket.allow
            } else {
                identity.allow && bucket.allow
            };
        if allowed {
            return Ok(());
        }
        let why = if identity.deny || bucket.deny {
            "an explicit Deny applies".to_owned()
        } else if !identity.allow {
            "no identity policy of the role allows it".to_owned()
        } else {
            "the bucket is in another account and its bucket policy does not allow it".to_owned()
        };
        Err(format!(
            "The service role {} is not allowed {action} on {resource}: {why}.",
            role.arn
        ))
    }

    /// Reads the input and checks the output place with the service role's
    /// access; what fails becomes the job's validation failure.
    async fn prepare(&self, role: &RoleInfo, request: &CreateRequest, id: &str) -> Work {
        let (out_bucket, out_key) = parse_s3(&request.output_uri).unwrap_or_default();
        let prefix = match out_key.trim_end_matches('/') {
            "" => String::new(),
            key => format!("{key}/"),
        };
        let session = match self.admin(&role.account).await {
            Ok(admin) => {
                self.assume(&admin, &role.arn, &format!("bedrock-batch-{id}"))
                    .await
            }
            Err(e) => Err(e),
        };
        let files = match &session {
            Ok(session) => {
                self.read_input(role, session, request, &out_bucket, &prefix, id)
                    .await
            }
            Err(e) => Err(format!(
                "Amazon Bedrock could not assume the role {}: {e}",
                role.arn
            )),
        };
        Work {
            files,
            output: OutputPlace {
                session: session.ok(),
                bucket: out_bucket,
                prefix,
            },
        }
    }

    async fn read_input(
        &self,
        role: &RoleInfo,
        session: &Credentials,
        request: &CreateRequest,
        out_bucket: &str,
        out_prefix: &str,
        id: &str,
    ) -> Result<Vec<InputFile>, String> {
        let (bucket, key) = parse_s3(&request.input_uri).unwrap_or_default();
        let (same_account, policy) = self
            .bucket(role, &bucket, request.input_owner.as_deref())
            .await?;
        let context = |prefix: &str| {
            Context::from([
                ("aws:principalaccount", role.account.clone()),
                ("aws:principalarn", role.arn.clone()),
                ("s3:prefix", prefix.to_owned()),
            ])
        };
        let s3 = s3_client(&self.endpoint, session);
        let keys = if key.ends_with(".jsonl") {
            vec![key.clone()]
        } else {
            Self::allowed(
                role,
                same_account,
                policy.as_ref(),
                "s3:ListBucket",
                &format!("arn:aws:s3:::{bucket}"),
                &context(&key),
            )?;
            let mut keys = Vec::new();
            let mut token = None;
            loop {
                let page = s3
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(&key)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .map_err(|e| format!("Listing s3://{bucket}/{key} failed: {e:?}"))?;
                keys.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key())
                        .filter(|k| k.ends_with(".jsonl"))
                        .map(str::to_owned),
                );
                token = page.next_continuation_token().map(str::to_owned);
                if token.is_none() {
                    break;
                }
            }
            keys
        };
        if keys.is_empty() {
            return Err(format!(
                "No .jsonl input file was found at {}.",
                request.input_uri
            ));
        }
        let mut files = Vec::new();
        let mut rng = SplitMix(seed_of(id) ^ 0x5151);
        for object in keys {
            Self::allowed(
                role,
                same_account,
                policy.as_ref(),
                "s3:GetObject",
                &format!("arn:aws:s3:::{bucket}/{object}"),
                &context(&key),
            )?;
            let got = s3.get_object().bucket(&bucket).key(&object).send().await;
            let bytes = match got {
                Ok(output) => output
                    .body
                    .collect()
                    .await
                    .map_err(|e| format!("Reading s3://{bucket}/{object} failed: {e}"))?
                    .into_bytes(),
                Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                    return Err(format!(
                        "The input file s3://{bucket}/{object} does not exist."
                    ))
                }
                Err(e) => return Err(format!("Reading s3://{bucket}/{object} failed: {e:?}")),
            };
            let mut records = Vec::new();
            for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let bad = |why: &str| {
                    format!(
                        "Line {} of s3://{bucket}/{object} is not a valid record: {why}",
                        n + 1
                    )
                };
                let value: Value = serde_json::from_slice(line).map_err(|e| bad(&e.to_string()))?;
                let model_input = value
                    .get("modelInput")
                    .filter(|v| v.is_object())
                    .cloned()
                    .ok_or_else(|| bad("no modelInput object"))?;
                let record_id = match value.get("recordId") {
                    Some(Value::String(id)) => id.clone(),
                    None | Some(Value::Null) => (0..11)
                        .map(|_| char::from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[rng.below(36)]))
                        .collect(),
                    Some(_) => return Err(bad("recordId is not a string")),
                };
                records.push(Record {
                    record_id,
                    model_input,
                });
            }
            let name = object
                .strip_prefix(key.as_str())
                .filter(|rest| !rest.is_empty())
                .unwrap_or_else(|| object.rsplit('/').next().unwrap_or_default())
                .trim_start_matches('/')
                .to_owned();
            files.push(InputFile { name, records });
        }

        let (out_same_account, out_policy) = self
            .bucket(role, out_bucket, request.output_owner.as_deref())
            .await?;
        Self::allowed(
            role,
            out_same_account,
            out_policy.as_ref(),
            "s3:PutObject",
            &format!("arn:aws:s3:::{out_bucket}/{out_prefix}{id}/manifest.json.out"),
            &context(out_prefix),
        )?;
        Ok(files)
    }

    /// Writes `<prefix><id>/<name>.out` per input file that has lines, and
    /// the manifest, with the service role's session.
    async fn write_output(
        &self,
        place: &OutputPlace,
        id: &str,
        files: &[InputFile],
        lines: &[Vec<String>],
        manifest: &Manifest,
    ) -> Result<(), String> {
        let session = place
            .session
            .as_ref()
            .ok_or("no session of the service role")?;
        let s3 = s3_client(&self.endpoint, session);
        let mut objects: Vec<(String, Vec<u8>)> = Vec::new();
        for (file, lines) in files.iter().zip(lines) {
            if lines.is_empty() {
                continue;
            }
            let mut body = lines.join("\n");
            body.push('\n');
            objects.push((format!("{}.out", file.name), body.into_bytes()));
        }
        let manifest = serde_json::to_vec(manifest).map_err(|e| e.to_string())?;
        objects.push(("manifest.json.out".to_owned(), manifest));
        for (name, body) in objects {
            let key = format!("{}{id}/{name}", place.prefix);
            s3.put_object()
                .bucket(&place.bucket)
                .key(&key)
                .body(body.into())
                .send()
                .await
                .map_err(|e| format!("Writing s3://{}/{key} failed: {e:?}", place.bucket))?;
        }
        Ok(())
    }

    /// PutEvents on the default bus of the event's account, as its administrator.
    async fn publish(
        &self,
        clients: &mut HashMap<String, aws_sdk_eventbridge::Client>,
        event: &BatchEvent,
    ) -> Result<(), String> {
        if !clients.contains_key(&event.account) {
            let admin = self.admin(&event.account).await?;
            let config = sdk_config(&self.endpoint, &admin).await;
            clients.insert(
                event.account.clone(),
                aws_sdk_eventbridge::Client::new(&config),
            );
        }
        let client = clients.get(&event.account).ok_or("no EventBridge client")?;
        let entry = PutEventsRequestEntry::builder()
            .source(SOURCE)
            .detail_type(DETAIL_TYPE)
            .detail(event.detail.to_string())
            .resources(&event.job_arn)
            .event_bus_name("default")
            .time(DateTime::from(SystemTime::now()))
            .build();
        let output = client
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|e| format!("PutEvents: {e:?}"))?;
        if output.failed_entry_count() > 0 {
            return Err(format!(
                "PutEvents refused the event: {:?}",
                output.entries()
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// HTTP.

/// The control plane's routes, merged into the emulator's router.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/model-invocation-job", post(create_route))
        .route("/model-invocation-job/{job}", get(get_route))
        .route("/model-invocation-job/{job}/stop", post(stop_route))
        .route("/model-invocation-jobs", get(list_route))
        .route("/_lab/batch/knobs", get(get_knobs).put(put_knobs))
        .route("/_lab/batch/jobs", get(jobs_route))
        .route("/_lab/batch/events", get(events_route))
        .route("/_lab/batch/moto", put(moto_route))
        .route("/_lab/batch/reset", post(reset_route))
}

enum Op {
    Create,
    Get(String),
    List,
    Stop(String),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Create => "CreateModelInvocationJob",
            Op::Get(_) => "GetModelInvocationJob",
            Op::List => "ListModelInvocationJobs",
            Op::Stop(_) => "StopModelInvocationJob",
        }
    }
}

struct Incoming {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

async fn create_route(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Incoming {
        method,
        uri,
        headers,
        body,
    };
    control(shared, Op::Create, incoming).await
}

async fn get_route(
    State(shared): State<Arc<Shared>>,
    Path(job): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Incoming {
        method,
        uri,
        headers,
        body,
    };
    control(shared, Op::Get(job), incoming).await
}

async fn stop_route(
    State(shared): State<Arc<Shared>>,
    Path(job): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Incoming {
        method,
        uri,
        headers,
        body,
    };
    control(shared, Op::Stop(job), incoming).await
}

async fn list_route(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Incoming {
        method,
        uri,
        headers,
        body,
    };
    control(shared, Op::List, incoming).await
}

/// Authenticates, answers and records one control-plane call.
async fn control(shared: Arc<Shared>, op: Op, incoming: Incoming) -> Response {
    let at_ms = now_ms().max(0) as u128;
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(incoming.uri.query().unwrap_or_default()).unwrap_or_default();
    let request = match &op {
        Op::Create => serde_json::from_slice(&incoming.body).unwrap_or(Value::Null),
        Op::Get(job) | Op::Stop(job) => json!({ "jobIdentifier": job }),
        Op::List => Value::Object(
            query
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        ),
    };
    let mut call = Call {
        seq: 0,
        operation: op.name().to_owned(),
        model_id: request
            .get("modelId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        access_key_id: None,
        account: None,
        role_arn: None,
        principal_arn: None,
        status: 200,
        error_type: None,
        request: request.clone(),
        at_ms,
    };
    let outcome = answer(&shared, &op, &incoming, &request, &query, &mut call).await;
    let response = match outcome {
        Ok(body) => Json(body).into_response(),
        Err((status, error_type, message)) => {
            call.status = status;
            call.error_type = Some(error_type.to_owned());
            emulator::aws_error(status, error_type, &message)
        }
    };
    let mut calls = lock(&shared.calls);
    call.seq = calls.len();
    calls.push(call);
    response
}

async fn answer(
    shared: &Shared,
    op: &Op,
    incoming: &Incoming,
    request: &Value,
    query: &[(String, String)],
    call: &mut Call,
) -> Result<Value, ApiError> {
    let caller = emulator::authenticate(
        shared,
        &incoming.method,
        &incoming.uri,
        &incoming.headers,
        &incoming.body,
    )
    .await?;
    call.access_key_id = caller.access_key_id;
    if let Some(session) = &caller.session {
        call.account = Some(session.account_id.clone());
        call.role_arn = Some(session.role_arn.clone());
        call.principal_arn = Some(session.arn.clone());
    }
    let info = CallerInfo {
        account: call.account.clone(),
        role_arn: call.role_arn.clone(),
        principal_arn: call.principal_arn.clone(),
    };
    let plane = &shared.batch;
    match op {
        Op::Create => plane.create(shared, &info, request).await,
        Op::Get(job) => {
            let job = plane.get(&info, job)?;
            call.model_id = job.model_id.clone();
            serde_json::to_value(job).map_err(|e| (500, "InternalServerException", e.to_string()))
        }
        Op::List => plane.list(&info, query),
        Op::Stop(job) => {
            call.model_id = plane.stop(&info, job)?;
            Ok(json!({}))
        }
    }
}

async fn get_knobs(State(shared): State<Arc<Shared>>) -> Json<BatchKnobs> {
    Json(shared.batch.knobs())
}

async fn put_knobs(State(shared): State<Arc<Shared>>, Json(knobs): Json<BatchKnobs>) -> StatusCode {
    shared.batch.set_knobs(knobs);
    StatusCode::NO_CONTENT
}

async fn jobs_route(State(shared): State<Arc<Shared>>) -> Json<Vec<BatchJob>> {
    Json(shared.batch.jobs())
}

async fn events_route(State(shared): State<Arc<Shared>>) -> Json<Vec<BatchEvent>> {
    Json(shared.batch.events())
}

#[derive(Deserialize)]
struct MotoEndpoint {
    endpoint: String,
}

async fn moto_route(
    State(shared): State<Arc<Shared>>,
    Json(moto): Json<MotoEndpoint>,
) -> StatusCode {
    shared.batch.connect(&moto.endpoint);
    StatusCode::NO_CONTENT
}

async fn reset_route(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.batch.reset();
    StatusCode::NO_CONTENT
}

// ---------------------------------------------------------------------------
// Lab set-up for batch jobs.

fn aws<E: std::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> LabError {
    move |e| LabError::Aws(format!("{what}: {e:?}"))
}

/// An SQS queue in one account that a rule on an event bus feeds, to read
/// what reached that bus.
#[derive(Debug, Clone)]
pub struct BusWatch {
    sqs: aws_sdk_sqs::Client,
    /// The queue's URL.
    pub queue_url: String,
    /// The rule's name.
    pub rule: String,
}

impl BusWatch {
    /// The events on the queue now (each deleted once read), as JSON envelopes.
    pub async fn drain(&self) -> Result<Vec<Value>, LabError> {
        let mut events = Vec::new();
        loop {
            let output = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .map_err(|e| LabError::Aws(format!("receive: {e:?}")))?;
            let messages = output.messages.unwrap_or_default();
            if messages.is_empty() {
                return Ok(events);
            }
            for message in messages {
                if let Some(body) = message.body() {
                    events.push(serde_json::from_str(body)?);
                }
                if let Some(handle) = message.receipt_handle() {
                    self.sqs
                        .delete_message()
                        .queue_url(&self.queue_url)
                        .receipt_handle(handle)
                        .send()
                        .await
                        .map_err(|e| LabError::Aws(format!("delete: {e:?}")))?;
                }
            }
        }
    }

    /// Drains until `done` holds for everything read so far, or `timeout`.
    pub async fn collect_until(
        &self,
        done: impl Fn(&[Value]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Value>, LabError> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        while !done(&events) && Instant::now() < deadline {
            events.extend(self.drain().await?);
        }
        Ok(events)
    }
}

/// Batch-job set-up in the lab's accounts (administrator sessions of each).
impl Lab {
    /// An administrator session in `account`.
    pub async fn admin_of(&self, account: &str) -> Result<Credentials, LabError> {
        crate::admin_session(&self.moto, account).await
    }

    /// Connects the emulator's batch plane to this lab's moto.
    pub fn connect_batch_jobs(&self) {
        self.bedrock.batch_jobs().connect(self.moto.endpoint());
    }

    /// Creates a batch service role in `account`: trusting
    /// `bedrock.amazonaws.com` for jobs of that account (`aws:SourceAccount`),
    /// allowed `s3:GetObject`, `s3:PutObject` and `s3:ListBucket` on
    /// `buckets`. Returns its ARN.
    pub async fn create_batch_service_role(
        &self,
        account: &str,
        name: &str,
        buckets: &[&str],
    ) -> Result<String, LabError> {
        let admin = self.admin_of(account).await?;
        let trust = json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": BEDROCK_SERVICE},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": account}}}]});
        let arn = crate::create_role(&self.moto, &admin, name, &trust).await?;
        let resources: Vec<String> = buckets
            .iter()
            .flat_map(|b| [format!("arn:aws:s3:::{b}"), format!("arn:aws:s3:::{b}/*")])
            .collect();
        let policy = json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket"],
            "Resource": resources}]});
        self.put_role_policy(&admin, name, "batch-data", &policy)
            .await?;
        Ok(arn)
    }

    /// Lets `caller_role_arn` run batch jobs with `service_role_arn`:
    /// `iam:PassRole` on it (to `bedrock.amazonaws.com` only) and the four
    /// batch actions.
    pub async fn allow_batch_jobs(
        &self,
        caller_role_arn: &str,
        service_role_arn: &str,
    ) -> Result<(), LabError> {
        let account = arn_account(caller_role_arn)
            .ok_or_else(|| LabError::Setup(format!("not a role ARN: {caller_role_arn}")))?;
        let admin = self.admin_of(&account).await?;
        let policy = json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iam:PassRole", "Resource": service_role_arn,
             "Condition": {"StringEquals": {"iam:PassedToService": BEDROCK_SERVICE}}},
            {"Effect": "Allow", "Action": [
                "bedrock:CreateModelInvocationJob", "bedrock:GetModelInvocationJob",
                "bedrock:ListModelInvocationJobs", "bedrock:StopModelInvocationJob"],
             "Resource": "*"}]});
        self.put_role_policy(&admin, role_name(caller_role_arn), "batch-jobs", &policy)
            .await
    }

    async fn put_role_policy(
        &self,
        admin: &Credentials,
        role: &str,
        name: &str,
        policy: &Value,
    ) -> Result<(), LabError> {
        self.moto
            .query(
                admin,
                "iam",
                &[
                    ("Action", "PutRolePolicy"),
                    ("Version", "2010-05-08"),
                    ("RoleName", role),
                    ("PolicyName", name),
                    ("PolicyDocument", &policy.to_string()),
                ],
            )
            .await
            .map(|_| ())
    }

    /// Sets the policy of `bucket` (owned by `owner`) to let `principal_arn`
    /// read, write and list it.
    pub async fn share_bucket(
        &self,
        owner: &str,
        bucket: &str,
        principal_arn: &str,
    ) -> Result<(), LabError> {
        let admin = self.admin_of(owner).await?;
        let policy = json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "BatchObjects", "Effect": "Allow", "Principal": {"AWS": principal_arn},
             "Action": ["s3:GetObject", "s3:PutObject"], "Resource": format!("arn:aws:s3:::{bucket}/*")},
            {"Sid": "BatchList", "Effect": "Allow", "Principal": {"AWS": principal_arn},
             "Action": "s3:ListBucket", "Resource": format!("arn:aws:s3:::{bucket}")}]});
        s3_client(self.moto.endpoint(), &admin)
            .put_bucket_policy()
            .bucket(bucket)
            .policy(policy.to_string())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| LabError::Aws(format!("put bucket policy {bucket}: {e:?}")))
    }

    /// Forwards the batch job events of `from_account`'s default bus to the
    /// bus `to_bus_arn` in another account, as one sets it up in AWS: the
    /// target bus lets `from_account` put events (PutPermission), and a rule
    /// on `from_account`'s default bus matching `aws.bedrock` batch job state
    /// changes (of jobs named `job_name_prefix…`, if given) targets it. moto
    /// delivers cross-account bus targets itself (as a new event in the
    /// target account: its `account`, `time` and `resources` are not the
    /// original's). Returns the rule's name.
    pub async fn forward_batch_events(
        &self,
        from_account: &str,
        to_bus_arn: &str,
        job_name_prefix: Option<&str>,
    ) -> Result<String, LabError> {
        let to_account = arn_account(to_bus_arn)
            .ok_or_else(|| LabError::Setup(format!("not a bus ARN: {to_bus_arn}")))?;
        let to_bus = to_bus_arn.rsplit('/').next().unwrap_or("default");
        let target_events = aws_sdk_eventbridge::Client::new(
            &sdk_config(self.moto.endpoint(), &self.admin_of(&to_account).await?).await,
        );
        target_events
            .put_permission()
            .event_bus_name(to_bus)
            .action("events:PutEvents")
            .principal(from_account)
            .statement_id(format!("batch-events-from-{from_account}"))
            .send()
            .await
            .map_err(aws("put permission"))?;
        let mut pattern = json!({"source": [SOURCE], "detail-type": [DETAIL_TYPE]});
        if let Some(prefix) = job_name_prefix {
            pattern["detail"] = json!({"batchJobName": [{"prefix": prefix}]});
        }
        let events = aws_sdk_eventbridge::Client::new(
            &sdk_config(self.moto.endpoint(), &self.admin_of(from_account).await?).await,
        );
        let rule = format!("batch-events-to-{to_account}-{to_bus}");
        events
            .put_rule()
            .name(&rule)
            .event_pattern(pattern.to_string())
            .state(RuleState::Enabled)
            .send()
            .await
            .map_err(aws("put rule"))?;
        let target = Target::builder()
            .id("bus")
            .arn(to_bus_arn)
            .build()
            .map_err(aws("target"))?;
        events
            .put_targets()
            .rule(&rule)
            .targets(target)
            .send()
            .await
            .map_err(aws("put targets"))?;
        Ok(rule)
    }

    /// Creates, in `account`, a queue named `name` and a rule of `pattern` on
    /// `bus` (created unless `default`) that targets it.
    pub async fn watch_bus(
        &self,
        account: &str,
        bus: &str,
        pattern: &Value,
        name: &str,
    ) -> Result<BusWatch, LabError> {
        let config = sdk_config(self.moto.endpoint(), &self.admin_of(account).await?).await;
        let sqs = aws_sdk_sqs::Client::new(&config);
        let events = aws_sdk_eventbridge::Client::new(&config);
        let queue_url = sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .map_err(aws("create queue"))?
            .queue_url
            .ok_or_else(|| LabError::Aws(format!("create queue {name}: no url")))?;
        let queue_arn = format!("arn:aws:sqs:{REGION}:{account}:{name}");
        if bus != "default" {
            events
                .create_event_bus()
                .name(bus)
                .send()
                .await
                .map_err(aws("create bus"))?;
        }
        events
            .put_rule()
            .name(name)
            .event_bus_name(bus)
            .event_pattern(pattern.to_string())
            .state(RuleState::Enabled)
            .send()
            .await
            .map_err(aws("put rule"))?;
        let target = Target::builder()
            .id("queue")
            .arn(queue_arn)
            .build()
            .map_err(aws("target"))?;
        events
            .put_targets()
            .rule(name)
            .event_bus_name(bus)
            .targets(target)
            .send()
            .await
            .map_err(aws("put targets"))?;
        Ok(BusWatch {
            sqs,
            queue_url,
            rule: name.to_owned(),
        })
    }

    /// The `.jsonl.out` lines and the manifest a job wrote under
    /// `s3://bucket/prefix<job id>/` (read as `owner`'s administrator):
    /// output objects by name (`manifest.json.out` left out), each parsed
    /// line by line, and the manifest if written.
    pub async fn batch_output(
        &self,
        owner: &str,
        bucket: &str,
        prefix: &str,
        job_id: &str,
    ) -> Result<(HashMap<String, Vec<Value>>, Option<Value>), LabError> {
        let s3 = s3_client(self.moto.endpoint(), &self.admin_of(owner).await?);
        let root = format!("{prefix}{job_id}/");
        let listing = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&root)
            .send()
            .await
            .map_err(|e| LabError::Aws(format!("list s3://{bucket}/{root}: {e:?}")))?;
        let mut outputs = HashMap::new();
        let mut manifest = None;
        for key in listing.contents().iter().filter_map(|o| o.key()) {
            let bytes = s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| LabError::Aws(format!("get {key}: {e:?}")))?
                .body
                .collect()
                .await
                .map_err(|e| LabError::Aws(format!("read {key}: {e}")))?
                .into_bytes();
            let name = key.strip_prefix(&root).unwrap_or(key).to_owned();
            if name == "manifest.json.out" {
                manifest = Some(serde_json::from_slice(&bytes)?);
                continue;
            }
            let lines = bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(serde_json::from_slice)
                .collect::<Result<Vec<Value>, _>>()?;
            outputs.insert(name, lines);
        }
        Ok((outputs, manifest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_iam() {
        assert!(glob("s3:*", "s3:getobject"));
        assert!(glob("arn:aws:s3:::b/*", "arn:aws:s3:::b/in/x.jsonl"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("arn:aws:s3:::b/*", "arn:aws:s3:::bb/x"));
        assert!(glob("*", ""));
    }

    #[test]
    fn identity_and_bucket_policies_decide_across_accounts() {
        let role = RoleInfo {
            arn: "arn:aws:iam::111111111111:role/Batch".into(),
            account: "111111111111".into(),
            trust: None,
            policies: vec![json!({"Statement": [{"Effect": "Allow",
                "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::b/*"}]})],
        };
        let context = Context::new();
        let object = "arn:aws:s3:::b/in.jsonl";
        assert!(MotoLink::allowed(&role, true, None, "s3:GetObject", object, &context).is_ok());
        let refused = MotoLink::allowed(&role, false, None, "s3:GetObject", object, &context)
            .expect_err("another account's bucket needs its policy");
        assert!(refused.contains("bucket policy"), "{refused}");
        let shared = json!({"Statement": {"Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::111111111111:role/Batch"},
            "Action": "s3:*", "Resource": "arn:aws:s3:::b/*"}});
        assert!(MotoLink::allowed(
            &role,
            false,
            Some(&shared),
            "s3:GetObject",
            object,
            &context
        )
        .is_ok());
        let denied = json!({"Statement": [{"Effect": "Deny", "Principal": "*",
            "Action": "s3:GetObject", "Resource": "*"}]});
        assert!(
            MotoLink::allowed(&role, true, Some(&denied), "s3:GetObject", object, &context)
                .is_err()
        );
        assert!(MotoLink::allowed(&role, true, None, "s3:PutObject", object, &context).is_err());
    }

    #[test]
    fn trust_policies_are_evaluated_with_the_job_context() {
        let trust = json!({"Statement": [{"Effect": "Allow",
            "Principal": {"Service": "bedrock.amazonaws.com"}, "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": "111111111111"},
                          "ArnLike": {"aws:SourceArn": "arn:aws:bedrock:*:111111111111:model-invocation-job/*"}}}]});
        let who = Principal::service(BEDROCK_SERVICE);
        let context = |account: &str| {
            Context::from([
                ("aws:sourceaccount", account.to_owned()),
                (
                    "aws:sourcearn",
                    format!("arn:aws:bedrock:us-east-1:{account}:model-invocation-job/abc"),
                ),
            ])
        };
        let ok = evaluate(
            &trust,
            "sts:AssumeRole",
            "r",
            Some(&who),
            &context("111111111111"),
        );
        assert!(ok.allow);
        let other = evaluate(
            &trust,
            "sts:AssumeRole",
            "r",
            Some(&who),
            &context("222222222222"),
        );
        assert!(!other.allow);
        let lambda = Principal::service("lambda.amazonaws.com");
        assert!(
            !evaluate(
                &trust,
                "sts:AssumeRole",
                "r",
                Some(&lambda),
                &context("111111111111")
            )
            .allow
        );
    }

    #[test]
    fn the_shuffle_is_a_permutation_fixed_by_the_seed() {
        let mut a: Vec<usize> = (0..250).collect();
        let mut b = a.clone();
        shuffle(&mut a, seed_of("abcdefghijkl"));
        shuffle(&mut b, seed_of("abcdefghijkl"));
        assert_eq!(a, b);
        assert_ne!(a, (0..250).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..250).collect::<Vec<_>>());
    }

    #[test]
    fn create_requests_are_validated_like_bedrock() {
        let body = json!({
            "jobName": "relay-1", "roleArn": "arn:aws:iam::111111111111:role/Batch",
            "modelId": "amazon.nova-lite-v1:0",
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://in-bucket/a.jsonl"}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://out-bucket/out/"}},
        });
        let parsed = CreateRequest::parse(&body).expect("valid");
        assert_eq!(parsed.timeout_hours, 168);
        assert_eq!(parsed.invocation_type, "InvokeModel");
        assert_eq!(
            parsed.input_config["s3InputDataConfig"]["s3InputFormat"],
            "JSONL"
        );
        let with = |field: &str, value: Value| {
            let mut b = body.clone();
            b[field] = value;
            CreateRequest::parse(&b).map(|_| ()).map_err(|e| e.2)
        };
        assert!(with("jobName", json!("bad name")).is_err());
        assert!(with("timeoutDurationInHours", json!(12)).is_err());
        assert!(with("timeoutDurationInHours", json!(24)).is_ok());
        assert!(with("modelInvocationType", json!("Chat")).is_err());
        assert!(with("roleArn", json!("arn:aws:iam::1:user/x")).is_err());
        let mut no_role = body.clone();
        no_role.as_object_mut().map(|o| o.remove("roleArn"));
        let error = CreateRequest::parse(&no_role).expect_err("missing").2;
        assert!(error.contains("roleArn"), "{error}");
    }

    #[tokio::test]
    async fn admin_routes_set_knobs_and_an_unconnected_plane_refuses_jobs() {
        let emulator = crate::emulator::BedrockEmulator::start(None)
            .await
            .expect("starts");
        let http = reqwest::Client::new();
        let endpoint = emulator.endpoint();
        let status = http
            .put(format!("{endpoint}/_lab/batch/knobs"))
            .json(&json!({"records_per_second": 5.0, "fail_every_nth": 3}))
            .send()
            .await
            .expect("put knobs")
            .status();
        assert_eq!(status, 204);
        let knobs: BatchKnobs = http
            .get(format!("{endpoint}/_lab/batch/knobs"))
            .send()
            .await
            .expect("get knobs")
            .json()
            .await
            .expect("knobs");
        assert_eq!(knobs.records_per_second, 5.0);
        assert_eq!(knobs.fail_every_nth, Some(3));
        assert_eq!(knobs.min_records, 1, "unset knobs keep their defaults");
        assert_eq!(emulator.batch_jobs().knobs(), knobs);

        let body = json!({
            "jobName": "j1", "roleArn": "arn:aws:iam::111111111111:role/Batch",
            "modelId": "amazon.nova-lite-v1:0",
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://in-bucket/a.jsonl"}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://out-bucket/"}},
        });
        let response = http
            .post(format!("{endpoint}/model-invocation-job"))
            .json(&body)
            .send()
            .await
            .expect("create");
        assert_eq!(response.status(), 500);
        assert_eq!(
            response
                .headers()
                .get("x-amzn-ErrorType")
                .and_then(|v| v.to_str().ok()),
            Some("InternalServerException")
        );
        let missing = http
            .get(format!(
                "{endpoint}/model-invocation-job/arn%3Aaws%3Abedrock%3Aus-east-1%3A111111111111%3Amodel-invocation-job%2Fabcdefghijkl"
            ))
            .send()
            .await
            .expect("get");
        assert_eq!(missing.status(), 404);
        let jobs: Vec<BatchJob> = http
            .get(format!("{endpoint}/_lab/batch/jobs"))
            .send()
            .await
            .expect("jobs")
            .json()
            .await
            .expect("json");
        assert!(jobs.is_empty());
        let calls = emulator.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].operation, "CreateModelInvocationJob");
        assert_eq!(calls[0].model_id, "amazon.nova-lite-v1:0");
        assert_eq!(calls[1].operation, "GetModelInvocationJob");
        assert_eq!(
            calls[1].request["jobIdentifier"],
            "arn:aws:bedrock:us-east-1:111111111111:model-invocation-job/abcdefghijkl"
        );
        assert_eq!(
            calls[1].error_type.as_deref(),
            Some("ResourceNotFoundException")
        );
    }

    #[test]
    fn iam_documents_are_decoded() {
        assert_eq!(decode_policy("%7B%22a%22%3A%201%7D"), Some(json!({"a": 1})));
        assert_eq!(decode_policy("{&quot;a&quot;: 1}"), Some(json!({"a": 1})));
        assert_eq!(
            xml_values("<m><member>a</member><member>b</member></m>", "member"),
            ["a", "b"]
        );
        assert_eq!(
            parse_s3("s3://bucket/a/b"),
            Some(("bucket".into(), "a/b".into()))
        );
        assert_eq!(
            parse_s3("s3://bucket"),
            Some(("bucket".into(), String::new()))
        );
        assert_eq!(parse_s3("https://x"), None);
    }
}
