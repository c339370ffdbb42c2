//! One invocation end to end: event → job → RoleA → Converse → record.
//!
//! [`Relay`] is built once at cold start and shared by every invocation; it
//! owns the clients, so credentials and connections stay warm between events.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use lambda_runtime::layers::TracingLayer;
use lambda_runtime::{service_fn, Context, Diagnostic, LambdaEvent, Runtime};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::bedrock::{Bedrock, BedrockError};
use crate::config::Config;
use crate::destination::S3Destination;
use crate::error::RelayError;
use crate::input::{Envelope, Input, Payload, PayloadGuardLayer};
use crate::record::{now_rfc3339, Record, Status, TargetRecord};

/// Below this, a model call cannot be worth starting.
const MIN_MODEL_BUDGET: Duration = Duration::from_millis(250);

/// The function's state across invocations.
#[derive(Debug, Clone)]
pub struct Relay {
    config: Arc<Config>,
    bedrock: Bedrock,
    destination: S3Destination,
}

impl Relay {
    /// Builds the clients from the Lambda environment: account B's credentials
    /// for STS and S3, RoleA's (through the identity cache) for Bedrock.
    pub async fn from_config(config: Config) -> Self {
        let base = aws_config::load_defaults(BehaviorVersion::latest()).await;
        let sts = aws_sdk_sts::Client::new(&base);
        let bedrock = Bedrock::new(&base, sts, &config.target, config.max_attempts);
        let s3 = aws_sdk_s3::config::Builder::from(&base)
            .force_path_style(config.s3_force_path_style)
            .build();
        let destination = S3Destination::new(
            aws_sdk_s3::Client::from_conf(s3),
            config.destination.clone(),
        );
        Self::new(config, bedrock, destination)
    }

    /// Assembles a relay from parts (tests pass mocked clients).
    pub fn new(config: Config, bedrock: Bedrock, destination: S3Destination) -> Self {
        Self {
            config: Arc::new(config),
            bedrock,
            destination,
        }
    }

    /// Serves invocations from the Lambda Runtime API until the process ends.
    pub async fn serve(self) -> Result<(), lambda_runtime::Error> {
        let max_event_bytes = self.config.max_event_bytes;
        let relay = Arc::new(self);
        let handler = service_fn(move |event: LambdaEvent<Payload>| {
            let relay = Arc::clone(&relay);
            async move { relay.handle(event).await }
        });
        Runtime::new(handler)
            .layer(PayloadGuardLayer::new(max_event_bytes))
            .layer(TracingLayer::new())
            .run()
            .await
    }

    /// Handles one event; the Lambda error type says whether a retry may help.
    pub async fn handle(&self, event: LambdaEvent<Payload>) -> Result<Value, Diagnostic> {
        self.run(&event.payload, &event.context)
            .await
            .map_err(Diagnostic::from)
    }

    async fn run(&self, payload: &Payload, ctx: &Context) -> Result<Value, RelayError> {
        let target = &self.config.target;
        let mut record = Record {
            job_id: ctx.request_id.clone(),
            status: Status::Failed,
            shape: None,
            event: None,
            request_id: ctx.request_id.clone(),
            target: TargetRecord {
                account: target.role.account.clone(),
                role_arn: target.role.arn.clone(),
                region: target.region.clone(),
            },
            model: None,
            output: None,
            usage: None,
            latency: None,
            started_at: now_rfc3339(),
            finished_at: String::new(),
            metadata: None,
            error: None,
        };

        let input = match Input::from_payload(payload, self.config.default_job.as_ref()) {
            Ok(input) => input,
            Err(err) => {
                record.event = Envelope::peek(payload);
                if let Some(id) = record.event.as_ref().and_then(|e| e.id.clone()) {
                    record.job_id = crate::job::sanitize_id(&id);
                }
                return self.fail(record, err.into()).await;
            }
        };
        record.shape = Some(input.shape);
        record.event = input.envelope.clone();
        let fallback_id = input
            .envelope
            .as_ref()
            .and_then(|e| e.id.as_deref())
            .unwrap_or(&ctx.request_id);
        let job = match input
            .job
            .resolve(self.config.default_model.as_deref(), fallback_id)
        {
            Ok(job) => job,
            Err(err) => {
                record.job_id =
                    crate::job::sanitize_id(input.job.id.as_deref().unwrap_or(fallback_id));
                record.model = input
                    .job
                    .model
                    .clone()
                    .or_else(|| self.config.default_model.clone());
                record.metadata = input.job.metadata.clone();
                return self.fail(record, err.into()).await;
            }
        };
        record.job_id = job.id.clone();
        record.model = Some(job.model.clone());
        record.metadata = job.metadata.clone();

        let span = tracing::info_span!(
            "job",
            job_id = %job.id,
            model = %job.model,
            target_account = %target.role.account,
            shape = ?input.shape,
        );
        async move {
            tracing::info!("job accepted");
            if self.config.log_content {
                tracing::info!(messages = ?job.messages, system = ?job.system, "job content (RELAY_LOG_CONTENT)");
            }
            let Some(budget) = self.model_budget(ctx) else {
                let left_ms = remaining(ctx).as_millis();
                let err = BedrockError::Deadline {
                    model: job.model.clone(),
                    left_ms,
                };
                return self.fail(record, err.into()).await;
            };
            let reply = match self.bedrock.converse(&job, budget).await {
                Ok(reply) => reply,
                Err(err) => return self.fail(record, err.into()).await,
            };
            tracing::info!(
                input_tokens = reply.usage.input_tokens,
                output_tokens = reply.usage.output_tokens,
                stop_reason = %reply.stop_reason,
                call_ms = reply.call_latency_ms as u64,
                "model answered"
            );
            if self.config.log_content {
                tracing::info!(output = %reply.text, "model output (RELAY_LOG_CONTENT)");
            }
            let record = record.succeed(&reply);
            let uri = self.destination.write(&record).await?;
            tracing::info!(record = %uri, "result recorded");
            Ok(json!({
                "job_id": record.job_id,
                "status": record.status,
                "record": uri,
                "model": record.model,
                "usage": record.usage,
            }))
        }
        .instrument(span)
        .await
    }

    /// Time for the model call: what is left before the deadline, less the
    /// reserve kept to write the record. `None` when too little is left.
    fn model_budget(&self, ctx: &Context) -> Option<Duration> {
        remaining(ctx)
            .checked_sub(self.config.deadline_reserve)
            .filter(|budget| *budget >= MIN_MODEL_BUDGET)
    }

    /// Writes the failure record and returns the error for Lambda. When even the
    /// record cannot be written, the error still reaches Lambda, whose retries and
    /// on-failure destination keep the event.
    async fn fail(&self, record: Record, err: RelayError) -> Result<Value, RelayError> {
        let record = record.fail(err.to_record());
        match self.destination.write(&record).await {
            Ok(uri) => tracing::error!(
                job_id = %record.job_id,
                error_type = err.code(),
                retryable = err.is_retryable(),
                record = %uri,
                "job failed: {err}"
            ),
            Err(write_err) => tracing::error!(
                job_id = %record.job_id,
                error_type = err.code(),
                retryable = err.is_retryable(),
                "job failed: {err}; and its error record was not written: {write_err}"
            ),
        }
        Err(err)
    }
}

fn remaining(ctx: &Context) -> Duration {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Duration::from_millis(ctx.deadline.saturating_sub(now_ms))
}
