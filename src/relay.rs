//! One invocation end to end: event → job → RoleA → Converse → record.
//!
//! [`Relay`] is built once at cold start and shared by every invocation; it
//! owns the clients, so credentials and connections stay warm between events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lambda_runtime::layers::TracingLayer;
use lambda_runtime::{service_fn, Context, Diagnostic, LambdaEvent, Runtime};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::batch::BatchRun;
use crate::bedrock::{Attempts, Bedrock, BedrockError, ModelReply};
use crate::config::Config;
use crate::destination::{
    DestinationError, DestinationSpec, Destinations, Outgoing, S3Destination,
};
use crate::documents::{self, Document};
use crate::domain::input::{Envelope, Input, Payload, PayloadGuardLayer};
use crate::domain::job::{Job, JobError, ResolvedJob};
use crate::domain::record::Record;
use crate::domain::target::Target;
use crate::error::RelayError;
use crate::ledger::{Claim, ClaimToken, Ledger};
use crate::observe::metrics::{self, CallStats, JobMetrics};
use crate::scheduling::pacer::Pacer;
use crate::template::{is_template, Renderer, Scope};

/// Below this, a model call cannot be worth starting.
const MIN_MODEL_BUDGET: Duration = Duration::from_millis(250);
/// First wait when every pool member is throttled; doubles up to the max.
/// Short: the members' quotas free up continuously, and a long wait leaves
/// them idle.
const POOL_INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const POOL_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a throttled member is tried after the others.
const POOL_COOL_DOWN: Duration = Duration::from_secs(2);

/// Waits between delivery attempts after a destination failure, and the time
/// kept back so the last attempt still ends before the deadline.
const DELIVERY_INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const DELIVERY_MAX_BACKOFF: Duration = Duration::from_secs(2);
const DELIVERY_MARGIN: Duration = Duration::from_millis(300);

/// How long each model has been taking, so that a call whose answer would
/// arrive after the deadline is not started (its tokens would be paid for and
/// its answer lost). The estimate is the slowest recent call, halving every
/// [`LATENCY_HALF_LIFE`] so that one slow answer does not keep a model from
/// being tried for the rest of a warm function's life.
#[derive(Debug, Default)]
struct LatencyBook {
    slowest: Mutex<HashMap<String, (Duration, Instant)>>,
}

const LATENCY_HALF_LIFE: Duration = Duration::from_secs(60);

impl LatencyBook {
    fn record(&self, model: &str, took: Duration) {
        if let Ok(mut slowest) = self.slowest.lock() {
            let now = Instant::now();
            let decayed = slowest
                .get(model)
                .map_or(Duration::ZERO, |(d, at)| decay(*d, now.duration_since(*at)));
            slowest.insert(model.to_owned(), (took.max(decayed), now));
        }
    }

    /// The time a call to `model` should be given, at least [`MIN_MODEL_BUDGET`].
    fn expected(&self, model: &str) -> Duration {
        let recent = self
            .slowest
            .lock()
            .ok()
            .and_then(|slowest| slowest.get(model).map(|(d, at)| decay(*d, at.elapsed())))
            .unwrap_or(Duration::ZERO);
        recent.max(MIN_MODEL_BUDGET)
    }
}

fn decay(slowest: Duration, age: Duration) -> Duration {
    slowest.mul_f64(0.5_f64.powf(age.as_secs_f64() / LATENCY_HALF_LIFE.as_secs_f64()))
}

/// Which pool members were throttled lately, shared by the invocations of a
/// warm function so the next job starts on an account with headroom.
#[derive(Debug, Default)]
struct PoolState {
    next: AtomicUsize,
    cooling_until: Mutex<HashMap<String, Instant>>,
}

impl PoolState {
    fn cool(&self, alias: &str) {
        if let Ok(mut cooling) = self.cooling_until.lock() {
            cooling.insert(alias.to_owned(), Instant::now() + POOL_COOL_DOWN);
        }
    }

    fn clear(&self, alias: &str) {
        if let Ok(mut cooling) = self.cooling_until.lock() {
            cooling.remove(alias);
        }
    }

    fn is_cooling(&self, alias: &str) -> bool {
        let now = Instant::now();
        self.cooling_until
            .lock()
            .is_ok_and(|cooling| cooling.get(alias).is_some_and(|until| *until > now))
    }

    /// Members not cooling keep their order and come first.
    fn sort_coolest_first(&self, order: &mut [&Target]) {
        let now = Instant::now();
        let Ok(cooling) = self.cooling_until.lock() else {
            return;
        };
        order.sort_by_key(|t| cooling.get(&t.alias).is_some_and(|until| *until > now));
    }
}

/// The batch pacers, one per target alias and model: Bedrock's quotas are per
/// model and account (and region, which an alias fixes). Kept across the
/// invocations of a warm function, like the quota they track.
#[derive(Debug, Default)]
struct Pacers(Mutex<HashMap<(String, String), Arc<Pacer>>>);

impl Pacers {
    fn get(&self, alias: &str, model: &str) -> Arc<Pacer> {
        let mut pacers = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(
            pacers
                .entry((alias.to_owned(), model.to_owned()))
                .or_default(),
        )
    }
}

/// The function's state across invocations.
#[derive(Debug, Clone)]
pub struct Relay {
    pub(crate) config: Arc<Config>,
    /// One RoleA-signed client per target alias, each with its own credentials cache.
    bedrock: HashMap<String, Bedrock>,
    /// Account B's clients for destinations, documents and item files.
    pub(crate) destinations: Destinations,
    pub(crate) renderer: Arc<Renderer>,
    pool: Arc<PoolState>,
    latency: Arc<LatencyBook>,
    pacers: Arc<Pacers>,
    /// EMF namespace; `None` writes no metrics.
    metrics_namespace: Option<String>,
    /// Cleared by the first invocation, which reports the cold start.
    cold: Arc<AtomicBool>,
}

/// Where a job's results go and how it remembers finished work.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub destination: DestinationSpec,
    pub ledger: Ledger,
    /// FIFO message group.
    pub group: String,
}

/// What claiming a job says about earlier runs of it.
#[derive(Debug)]
pub(crate) enum Claimed {
    /// A claim written where none was: no run ever claimed this job, so none
    /// can have finished it. Nothing to read back.
    New(ClaimToken),
    /// Held after an earlier claim expired or was released, or not guarded
    /// at all (`None`): an earlier run may have finished the work, so read
    /// back before running.
    Again(Option<ClaimToken>),
    /// Another invocation holds the claim: it is still running, or it
    /// finished and this is a redelivery. The error to return when no result
    /// is found.
    Elsewhere(RelayError),
}

/// Which job, item and invocation an EMF line belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MetricScope<'a> {
    pub(crate) job_id: &'a str,
    pub(crate) request_id: &'a str,
    pub(crate) is_item: bool,
}

impl<'a> MetricScope<'a> {
    /// A whole job (a single model call).
    pub(crate) fn job(record: &'a Record) -> Self {
        Self {
            job_id: &record.job_id,
            request_id: &record.request_id,
            is_item: false,
        }
    }

    /// One item of a batch job.
    pub(crate) fn item(job_id: &'a str, request_id: &'a str) -> Self {
        Self {
            job_id,
            request_id,
            is_item: true,
        }
    }
}

impl Relay {
    /// Builds the clients from the Lambda environment: account B's credentials
    /// for STS and the destinations, RoleA's (through the identity cache) for Bedrock.
    pub async fn from_config(config: Config) -> Self {
        let base = crate::credentials::load_base_config(config.tls_roots).await;
        Self::from_sdk_config(config, &base)
    }

    /// [`Relay::from_config`] with an already loaded base configuration.
    pub fn from_sdk_config(config: Config, base: &aws_config::SdkConfig) -> Self {
        let sts = crate::credentials::sts_client(base);
        let bedrock = config
            .targets
            .iter()
            .map(|target| {
                (
                    target.alias.clone(),
                    Bedrock::new(base, sts.clone(), target, config.max_attempts),
                )
            })
            .collect();
        let destinations =
            Destinations::new(base, config.s3_force_path_style, config.spill.clone());
        Self::new(config, bedrock, destinations)
    }

    /// Assembles a relay from parts (tests pass mocked clients): `bedrock` holds
    /// a client for each target alias.
    pub fn new(
        config: Config,
        bedrock: HashMap<String, Bedrock>,
        destinations: Destinations,
    ) -> Self {
        Self {
            metrics_namespace: Some(config.metrics_namespace.clone()),
            config: Arc::new(config),
            bedrock,
            destinations,
            renderer: Arc::new(Renderer::new()),
            pool: Arc::default(),
            latency: Arc::default(),
            pacers: Arc::default(),
            cold: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Stops the relay writing EMF metric lines to stdout (the CLI's stdout is
    /// its own output).
    pub fn without_metrics(mut self) -> Self {
        self.metrics_namespace = None;
        self
    }

    /// One EMF line for a job or a batch item.
    pub(crate) fn emit_metrics(
        &self,
        scope: MetricScope<'_>,
        target: Option<&str>,
        model: Option<&str>,
        error_type: Option<&str>,
        reply: Option<&ModelReply>,
        stats: &CallStats,
    ) {
        let Some(namespace) = &self.metrics_namespace else {
            return;
        };
        metrics::emit(
            namespace,
            &JobMetrics {
                target: target.unwrap_or("none").to_owned(),
                model: model.unwrap_or("none").to_owned(),
                error_type: error_type.map(str::to_owned),
                usage: reply.and_then(|r| r.usage),
                model_latency_ms: reply.and_then(|r| r.model_latency_ms),
                attempts: stats.attempts(),
                throttled: stats.throttled(),
                is_item: scope.is_item,
                job_id: scope.job_id.to_owned(),
                request_id: scope.request_id.to_owned(),
            },
        );
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
        if self.cold.swap(false, Ordering::Relaxed) {
            if let Some(namespace) = &self.metrics_namespace {
                metrics::emit_cold_start(
                    namespace,
                    &event.context.env_config.function_name,
                    &event.context.request_id,
                );
            }
        }
        self.run(&event.payload, &event.context)
            .await
            .map_err(Diagnostic::from)
    }

    async fn run(&self, payload: &Payload, ctx: &Context) -> Result<Value, RelayError> {
        let mut record = Record::started(&ctx.request_id);
        let fallback = self.fallback_delivery(&ctx.request_id);

        let input = match Input::from_payload(payload, self.config.default_job.as_ref()) {
            Ok(input) => input,
            Err(err) => {
                record.event = Envelope::peek(payload);
                if let Some(id) = record.event.as_ref().and_then(|e| e.id.clone()) {
                    record.job_id = crate::domain::job::sanitize_id(&id);
                }
                return self.fail(record, &fallback, err.into()).await;
            }
        };
        record.shape = Some(input.shape);
        record.event = input.envelope.clone();
        let fallback_id = input
            .envelope
            .as_ref()
            .and_then(|e| e.id.as_deref())
            .unwrap_or(&ctx.request_id);
        let identify = |record: &mut Record, job: &Job| {
            // A templated id that did not render cannot name the record.
            record.job_id = match job.id.as_deref() {
                Some(id) if !is_template(id) => crate::domain::job::sanitize_id(id),
                _ => crate::domain::job::sanitize_id(fallback_id),
            };
            record.model = job
                .model
                .clone()
                .or_else(|| self.config.default_model.clone());
            record.metadata = job.metadata.clone();
        };

        // Where, who and what are settled before any document, STS or Bedrock call.
        let scope = Scope::event(input.envelope.as_ref().map(|e| e.event.clone()));
        let mut job = input.job;
        if let Err(err) = self.renderer.render_head(&mut job, &scope) {
            identify(&mut record, &job);
            return self.fail(record, &fallback, err.into()).await;
        }
        let destination = match self.config.destination_for(job.destination.as_deref()) {
            Ok(destination) => destination,
            Err(err) => {
                identify(&mut record, &job);
                return self.fail(record, &fallback, err.into()).await;
            }
        };
        let plan = match job.resolve(self.config.default_model.as_deref(), fallback_id) {
            Ok(plan) => plan,
            Err(err) => {
                identify(&mut record, &job);
                let delivery = self.delivery(destination, &record.job_id, None);
                return self.fail(record, &delivery, err.into()).await;
            }
        };
        record.job_id = plan.id.clone();
        record.model = Some(plan.model.clone());
        record.metadata = plan.metadata.clone();
        let delivery = self.delivery(destination, &plan.id, job.group.as_deref());

        // The targets and model are checked before any STS or Bedrock call.
        let pool = match self.config.targets.select_pool(&plan.targets, &plan.model) {
            Ok(pool) => pool,
            Err(err) => return self.fail(record, &delivery, err.into()).await,
        };
        let aliases: Vec<&str> = pool.iter().map(|t| t.alias.as_str()).collect();
        let span = tracing::info_span!(
            "job",
            job_id = %plan.id,
            model = %plan.model,
            target = %aliases.join(","),
            target_account = %pool.iter().map(|t| t.role.account.as_str()).collect::<Vec<_>>().join(","),
            shape = ?input.shape,
            destination = %delivery.destination,
        );
        async move {
            tracing::info!("job accepted");
            if job.is_batch() {
                let batch = BatchRun {
                    job,
                    plan,
                    pool,
                    scope,
                    delivery,
                    record,
                };
                return self.run_batch(batch, ctx).await;
            }
            self.run_single(job, pool, scope, delivery, record, ctx)
                .await
        }
        .instrument(span)
        .await
    }

    /// A job without items: one model call, one record.
    async fn run_single(
        &self,
        job: Job,
        pool: Vec<&Target>,
        scope: Scope,
        delivery: Delivery,
        record: Record,
        ctx: &Context,
    ) -> Result<Value, RelayError> {
        let already_done = || {
            tracing::info!(
                "the job already succeeded (a redelivered event); the model is not called again"
            );
            Ok(json!({
                "job_id": record.job_id,
                "status": "succeeded",
                "already_done": true,
            }))
        };
        let claim = match self.claim(&delivery, &record.job_id, ctx).await {
            Ok(Claimed::New(token)) => Some(token),
            Ok(Claimed::Again(token)) => {
                let earlier = delivery
                    .ledger
                    .succeeded_job(&self.destinations, &record.job_id)
                    .await;
                if !matches!(earlier, Ok(None)) {
                    delivery
                        .ledger
                        .release(&self.destinations, token.as_ref())
                        .await;
                }
                match earlier {
                    Ok(None) => token,
                    Ok(Some(_)) => return already_done(),
                    Err(err) => return self.fail(record, &delivery, err.into()).await,
                }
            }
            // Held elsewhere: still running, or finished and redelivered
            // before that run's claim ran out.
            Ok(Claimed::Elsewhere(busy)) => {
                return match delivery
                    .ledger
                    .succeeded_job(&self.destinations, &record.job_id)
                    .await
                {
                    Ok(Some(_)) => already_done(),
                    Ok(None) => Err(busy),
                    Err(err) => self.fail(record, &delivery, err.into()).await,
                };
            }
            Err(err) => return self.fail(record, &delivery, err).await,
        };
        let result = self
            .run_single_claimed(job, pool, scope, &delivery, record, ctx)
            .await;
        if result.is_err() {
            delivery
                .ledger
                .release(&self.destinations, claim.as_ref())
                .await;
        }
        result
    }

    /// Claims the job for this invocation until its deadline. The claim is
    /// written before anything is read back: a claim that is new proves no run
    /// ever claimed this job, so there is no earlier result to look for, and a
    /// new event costs one write instead of a read and a write.
    pub(crate) async fn claim(
        &self,
        delivery: &Delivery,
        job_id: &str,
        ctx: &Context,
    ) -> Result<Claimed, RelayError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let until_ms = now_ms + remaining(ctx).as_millis() as u64;
        match delivery
            .ledger
            .claim(
                &self.destinations,
                job_id,
                &ctx.request_id,
                until_ms,
                now_ms,
            )
            .await?
        {
            Claim::Held(token) if token.took_over => Ok(Claimed::Again(Some(token))),
            Claim::Held(token) => Ok(Claimed::New(token)),
            Claim::Unguarded => Ok(Claimed::Again(None)),
            Claim::Elsewhere { until_ms } => {
                tracing::warn!(
                    job_id,
                    "another invocation holds this job's claim; not running it twice"
                );
                Ok(Claimed::Elsewhere(RelayError::InProgress {
                    job_id: job_id.to_owned(),
                    until: until_ms
                        .map(|ms| {
                            let at = UNIX_EPOCH + Duration::from_millis(ms);
                            format!(
                                " until {}",
                                aws_smithy_types::DateTime::from(at)
                                    .fmt(aws_smithy_types::date_time::Format::DateTime)
                                    .unwrap_or_default()
                            )
                        })
                        .unwrap_or_default(),
                }))
            }
        }
    }

    /// [`Relay::run_single`] once the job is claimed.
    async fn run_single_claimed(
        &self,
        mut job: Job,
        pool: Vec<&Target>,
        mut scope: Scope,
        delivery: &Delivery,
        mut record: Record,
        ctx: &Context,
    ) -> Result<Value, RelayError> {
        let documents = match self.load_documents(&job).await {
            Ok(documents) => documents,
            Err(err) => return self.fail(record, delivery, err).await,
        };
        if !documents.is_empty() {
            scope.documents = Some(documents.iter().map(Document::template_value).collect());
        }
        let prepared = self
            .renderer
            .render_body(&mut job, &scope)
            .map_err(RelayError::from)
            .and_then(|()| {
                let mut resolved =
                    job.resolve(self.config.default_model.as_deref(), &record.job_id)?;
                resolved.id.clone_from(&record.job_id);
                attach_documents(&mut resolved, &documents)?;
                Ok(resolved)
            });
        let resolved = match prepared {
            Ok(resolved) => resolved,
            Err(err) => return self.fail(record, delivery, err).await,
        };
        if self.config.log_content {
            tracing::info!(messages = ?resolved.messages, system = ?resolved.system, "job content (RELAY_LOG_CONTENT)");
        }

        let stats = Arc::new(CallStats::default());
        let (served_by, result) = self
            .call_in_time(&resolved, &pool, ctx, &stats, false)
            .await;
        record.target = Some(served_by.to_record());
        let reply = match result {
            Ok(reply) => reply,
            Err(err) => {
                return self
                    .fail_counted(record, delivery, err.into(), &stats)
                    .await
            }
        };
        self.emit_metrics(
            MetricScope::job(&record),
            Some(&served_by.alias),
            record.model.as_deref(),
            None,
            Some(&reply),
            &stats,
        );
        tracing::info!(
            input_tokens = reply.usage.map(|u| u.input_tokens),
            output_tokens = reply.usage.map(|u| u.output_tokens),
            stop_reason = %reply.stop_reason,
            call_ms = reply.call_latency_ms as u64,
            "model answered"
        );
        if self.config.log_content {
            tracing::info!(output = %reply.text, "model output (RELAY_LOG_CONTENT)");
        }
        let record = record.succeed(&reply);
        let uri = self
            .until_delivered(ctx, || self.deliver_record(delivery, &record))
            .await?;
        tracing::info!(record = %uri, "result recorded");
        Ok(json!({
            "job_id": record.job_id,
            "status": record.status,
            "record": uri,
            "model": record.model,
            "usage": record.usage,
        }))
    }

    /// The destination and ledger for a job's results.
    pub(crate) fn delivery(
        &self,
        destination: DestinationSpec,
        job_id: &str,
        group: Option<&str>,
    ) -> Delivery {
        Delivery {
            ledger: Ledger::for_destination(
                &destination,
                self.config.idempotency_table.as_ref(),
                &self.destinations,
            ),
            destination,
            group: group.unwrap_or(job_id).to_owned(),
        }
    }

    /// The configured destination, for failures before the job's own is known.
    fn fallback_delivery(&self, request_id: &str) -> Delivery {
        Delivery {
            destination: self.config.destination.clone(),
            ledger: Ledger::Off,
            group: request_id.to_owned(),
        }
    }

    /// Reads the job's `documents` (already rendered) with account B's credentials.
    pub(crate) async fn load_documents(&self, job: &Job) -> Result<Vec<Document>, RelayError> {
        match job.documents.as_deref() {
            None | Some([]) => Ok(Vec::new()),
            Some(uris) => Ok(documents::load_documents(self.destinations.s3_client(), uris).await?),
        }
    }

    /// Runs `deliver` again while the destination is unavailable (an outage,
    /// throttling the SDK's own retries did not outlast) and the deadline
    /// allows: the results in hand cost model calls, and a retry of the
    /// whole event would pay for them again. The SDK has already retried
    /// transient errors inside each attempt.
    pub(crate) async fn until_delivered<T, F, Fut>(
        &self,
        ctx: &Context,
        mut deliver: F,
    ) -> Result<T, DestinationError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, DestinationError>>,
    {
        let mut backoff = DELIVERY_INITIAL_BACKOFF;
        loop {
            match deliver().await {
                Err(err @ DestinationError::Unavailable { .. }) => {
                    // Equal jitter: never a busy loop, never in lockstep.
                    let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
                    if remaining(ctx) < wait + DELIVERY_MARGIN {
                        return Err(err);
                    }
                    tracing::warn!(
                        wait_ms = wait.as_millis() as u64,
                        "delivery failed, trying again: {err}"
                    );
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(DELIVERY_MAX_BACKOFF);
                }
                result => return result,
            }
        }
    }

    /// Writes one record (a single job's) to its destination; returns where it went.
    async fn deliver_record(
        &self,
        delivery: &Delivery,
        record: &Record,
    ) -> Result<String, DestinationError> {
        if let DestinationSpec::S3(location) = &delivery.destination {
            return S3Destination::new(self.destinations.s3_client().clone(), location.clone())
                .write(record)
                .await;
        }
        let body = serde_json::to_value(record).map_err(|err| DestinationError::Unavailable {
            destination: delivery.destination.to_string(),
            message: format!("the record does not serialise: {err}"),
        })?;
        let outgoing = [Outgoing {
            job_id: record.job_id.clone(),
            index: None,
            group: delivery.group.clone(),
            body,
        }];
        let refs = self
            .destinations
            .send(&delivery.destination, &outgoing)
            .await?;
        delivery
            .ledger
            .remember(&self.destinations, &outgoing)
            .await?;
        Ok(refs.join(","))
    }

    /// [`Relay::call_pool`], unless the time left cannot hold the model's
    /// recent answers: then nothing is sent and the result is a deadline error
    /// (a retry of the event gets a fresh invocation's time).
    pub(crate) async fn call_in_time<'t>(
        &self,
        job: &ResolvedJob,
        pool: &[&'t Target],
        ctx: &Context,
        stats: &Arc<CallStats>,
        batch_item: bool,
    ) -> (&'t Target, Result<ModelReply, BedrockError>) {
        let needed = self.latency.expected(&job.model);
        if self.model_budget(ctx).is_none_or(|budget| budget < needed) {
            tracing::warn!(
                needed_ms = needed.as_millis() as u64,
                left_ms = remaining(ctx).as_millis() as u64,
                "not starting a model call whose answer would come after the deadline"
            );
            return out_of_time(pool[0], &job.model, ctx);
        }
        let (served_by, result) = self.call_pool(job, pool, ctx, stats, batch_item).await;
        if let Ok(reply) = &result {
            // Bedrock's own figure when it gives one: the call's time also holds
            // throttling retries, which say nothing about how long an answer takes.
            let took = reply
                .model_latency_ms
                .and_then(|ms| u64::try_from(ms).ok())
                .unwrap_or(reply.call_latency_ms as u64);
            self.latency.record(&job.model, Duration::from_millis(took));
        }
        (served_by, result)
    }

    /// Runs the job on its target, or spreads it over a pool: members are tried
    /// in turn (starting at a rotating member, those recently throttled last),
    /// one attempt each, so a throttled or failing account hands the work to the
    /// next at once instead of backing off. Only when every member is throttled
    /// does it wait (full jitter, doubling) and go round again, within the
    /// deadline. A batch item goes through the pacers instead
    /// ([`Relay::call_paced`]). Returns the target that served (or last failed)
    /// with the result.
    pub(crate) async fn call_pool<'t>(
        &self,
        job: &ResolvedJob,
        pool: &[&'t Target],
        ctx: &Context,
        stats: &Arc<CallStats>,
        batch_item: bool,
    ) -> (&'t Target, Result<ModelReply, BedrockError>) {
        let first = pool[0];
        if batch_item {
            return self.call_paced(job, pool, ctx, stats).await;
        }
        if pool.len() == 1 {
            let Some(budget) = self.model_budget(ctx) else {
                return out_of_time(first, &job.model, ctx);
            };
            return (
                first,
                self.bedrock_for(first)
                    .converse_counted(job, budget, Attempts::Configured, stats)
                    .await,
            );
        }
        let mut order: Vec<&'t Target> = pool.to_vec();
        order.rotate_left(self.pool.next.fetch_add(1, Ordering::Relaxed) % pool.len());
        let mut backoff = POOL_INITIAL_BACKOFF;
        loop {
            self.pool.sort_coolest_first(&mut order);
            let mut last = None;
            for target in &order {
                let Some(budget) = self.model_budget(ctx) else {
                    return out_of_time(target, &job.model, ctx);
                };
                match self
                    .bedrock_for(target)
                    .converse_counted(job, budget, Attempts::One, stats)
                    .await
                {
                    Ok(reply) => {
                        self.pool.clear(&target.alias);
                        return (target, Ok(reply));
                    }
                    Err(
                        err @ (BedrockError::Throttled { .. } | BedrockError::Unavailable { .. }),
                    ) => {
                        tracing::warn!(target = %target.alias, error = %err, "pool member could not serve; trying the next");
                        self.pool.cool(&target.alias);
                        last = Some((*target, err));
                    }
                    Err(err) => return (target, Err(err)),
                }
            }
            let Some((target, err)) = last else {
                return out_of_time(first, &job.model, ctx);
            };
            let wait = backoff.mul_f64(fastrand::f64());
            let enough_time = self
                .model_budget(ctx)
                .is_some_and(|budget| budget > wait + MIN_MODEL_BUDGET);
            if !enough_time {
                return (target, Err(err));
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(POOL_MAX_BACKOFF);
        }
    }

    /// Runs a batch item through the pacers of its pool (see [`crate::scheduling::pacer`]):
    /// each send takes a slot from the member whose next slot comes first
    /// (members that failed lately after the others), and a throttled send
    /// takes a new slot, on whichever member is free first, instead of backing
    /// off on its own. A lone target's SDK call retries 5xx answers and
    /// transport errors itself; in a pool they hand the item to the next member.
    async fn call_paced<'t>(
        &self,
        job: &ResolvedJob,
        pool: &[&'t Target],
        ctx: &Context,
        stats: &Arc<CallStats>,
    ) -> (&'t Target, Result<ModelReply, BedrockError>) {
        let attempts = if pool.len() == 1 {
            Attempts::Paced
        } else {
            Attempts::One
        };
        let pacers: Vec<Arc<Pacer>> = pool
            .iter()
            .map(|target| self.pacers.get(&target.alias, &job.model))
            .collect();
        let start = self.pool.next.fetch_add(1, Ordering::Relaxed);
        let mut last: Option<(&'t Target, BedrockError)> = None;
        let give_up = |target: &'t Target, last: Option<(&'t Target, BedrockError)>| {
            last.map_or_else(
                || out_of_time(target, &job.model, ctx),
                |(target, err)| (target, Err(err)),
            )
        };
        let mut unavailable_in_row = 0;
        let mut backoff = POOL_INITIAL_BACKOFF;
        // One send per pacer slot until an answer or a lasting failure; bounded
        // by the deadline, which is checked before every send and every wait.
        loop {
            let now = tokio::time::Instant::now();
            let Some((member, slot)) = (0..pool.len())
                .map(|k| (start + k) % pool.len())
                .map(|i| (i, pacers[i].next_free()))
                .min_by_key(|(i, slot)| (self.pool.is_cooling(&pool[*i].alias), *slot))
            else {
                return give_up(pool[0], last);
            };
            let target = pool[member];
            // Never wait for a slot the time left cannot follow with a call.
            let wait = slot.saturating_duration_since(now);
            if self
                .model_budget(ctx)
                .is_none_or(|budget| budget < wait + MIN_MODEL_BUDGET)
            {
                return give_up(target, last);
            }
            tokio::time::sleep_until(pacers[member].reserve()).await;
            let Some(budget) = self.model_budget(ctx) else {
                return give_up(target, last);
            };
            match self
                .bedrock_for(target)
                .converse_counted(job, budget, attempts, stats)
                .await
            {
                Ok(reply) => {
                    pacers[member].answered();
                    self.pool.clear(&target.alias);
                    return (target, Ok(reply));
                }
                Err(err @ BedrockError::Throttled { .. }) => {
                    pacers[member].throttled();
                    unavailable_in_row = 0;
                    last = Some((target, err));
                }
                Err(err @ BedrockError::Unavailable { .. }) if pool.len() > 1 => {
                    tracing::warn!(target = %target.alias, error = %err, "pool member could not serve; trying the next");
                    self.pool.cool(&target.alias);
                    last = Some((target, err));
                    unavailable_in_row += 1;
                    if unavailable_in_row >= pool.len() {
                        // Every member failed in turn: back off before the next round.
                        let wait = backoff.mul_f64(fastrand::f64());
                        if self
                            .model_budget(ctx)
                            .is_none_or(|budget| budget < wait + MIN_MODEL_BUDGET)
                        {
                            return give_up(target, last);
                        }
                        tokio::time::sleep(wait).await;
                        backoff = (backoff * 2).min(POOL_MAX_BACKOFF);
                        unavailable_in_row = 0;
                    }
                }
                Err(err) => return (target, Err(err)),
            }
        }
    }

    fn bedrock_for(&self, target: &Target) -> &Bedrock {
        // One client per configured target is built at cold start.
        &self.bedrock[&target.alias]
    }

    /// Time for the model call: what is left before the deadline, less the
    /// reserve kept to write the record. `None` when too little is left.
    pub(crate) fn model_budget(&self, ctx: &Context) -> Option<Duration> {
        remaining(ctx)
            .checked_sub(self.config.deadline_reserve)
            .filter(|budget| *budget >= MIN_MODEL_BUDGET)
    }

    /// Writes the failure record and returns the error for Lambda. When even the
    /// record cannot be written, the error still reaches Lambda, whose retries and
    /// on-failure destination keep the event.
    pub(crate) async fn fail(
        &self,
        record: Record,
        delivery: &Delivery,
        err: RelayError,
    ) -> Result<Value, RelayError> {
        self.fail_counted(record, delivery, err, &CallStats::default())
            .await
    }

    /// [`Relay::fail`] for a job whose Bedrock attempts were counted in `stats`.
    async fn fail_counted(
        &self,
        record: Record,
        delivery: &Delivery,
        err: RelayError,
        stats: &CallStats,
    ) -> Result<Value, RelayError> {
        self.emit_metrics(
            MetricScope::job(&record),
            record.target.as_ref().map(|t| t.alias.as_str()),
            record.model.as_deref(),
            Some(err.code()),
            None,
            stats,
        );
        let record = record.fail(err.to_record());
        match self.deliver_record(delivery, &record).await {
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

/// Puts the loaded documents in front of the first user message's text (the
/// order Bedrock's document guidance recommends). An InvokeModel job's body is
/// the model's own format, so its documents reach it only through templates.
pub(crate) fn attach_documents(
    job: &mut ResolvedJob,
    documents: &[Document],
) -> Result<(), JobError> {
    if documents.is_empty() {
        return Ok(());
    }
    if job.invoke.is_some() {
        if let Some((i, doc)) = documents.iter().enumerate().find(|(_, d)| d.text.is_none()) {
            return Err(JobError::field(
                format!("documents[{i}]"),
                format!(
                    "`{}` is not text: an `invoke` job uses documents only through templates (`{{{{ documents[{i}].text }}}}`); use `prompt` or `messages` to send it as a block",
                    doc.uri
                ),
            ));
        }
        return Ok(());
    }
    let Some(first) = job.messages.first_mut() else {
        return Ok(());
    };
    first
        .content
        .splice(0..0, documents.iter().map(Document::to_block));
    Ok(())
}

/// Lambda sends the deadline as epoch milliseconds. Local runtimes may not:
/// `cargo lambda watch` sends a bare `600000` (ten minutes). A value that cannot
/// be an epoch time of this century is read as milliseconds from now, so local
/// runs get the budget they were given instead of none.
const EPOCH_MS_2001: u64 = 1_000_000_000_000;

/// `target`'s answer when the time left cannot hold a model call: a deadline
/// error for `model`, nothing sent.
fn out_of_time<'t>(
    target: &'t Target,
    model: &str,
    ctx: &Context,
) -> (&'t Target, Result<ModelReply, BedrockError>) {
    (
        target,
        Err(BedrockError::Deadline {
            model: model.to_owned(),
            left_ms: remaining(ctx).as_millis(),
        }),
    )
}

pub(crate) fn remaining(ctx: &Context) -> Duration {
    if ctx.deadline < EPOCH_MS_2001 {
        return Duration::from_millis(ctx.deadline);
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Duration::from_millis(ctx.deadline.saturating_sub(now_ms))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use aws_sdk_bedrockruntime::operation::converse::ConverseOutput;
    use aws_sdk_bedrockruntime::types::StopReason;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::operation::put_object::{PutObjectError, PutObjectOutput};
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
    use aws_smithy_runtime_api::http::{Response as HttpResponse, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;
    use crate::bedrock::tests::{converse_error, converse_output};

    fn config() -> Config {
        let vars = [
            ("AWS_REGION", "us-east-1"),
            ("RELAY_ROLE_ARN", "arn:aws:iam::111111111111:role/RoleA"),
            ("RELAY_DESTINATION", "s3://results/relay/"),
        ];
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
        .expect("config")
    }

    fn context() -> Context {
        let mut ctx = Context::default();
        ctx.request_id = "req-1".into();
        ctx.deadline = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            + 30_000;
        ctx
    }

    /// S3 mock that keeps each written record.
    fn s3_capturing(written: &Arc<Mutex<Vec<(String, Value)>>>) -> Rule {
        let written = Arc::clone(written);
        mock!(aws_sdk_s3::Client::put_object)
            .match_requests(move |req| {
                let body = req
                    .body()
                    .bytes()
                    .and_then(|b| serde_json::from_slice(b).ok());
                // Claims (`_claims/`) are bookkeeping, not records.
                if let (Some(key), Some(body)) = (req.key(), body) {
                    if !key.contains("/_claims/") {
                        written.lock().expect("lock").push((key.to_owned(), body));
                    }
                }
                req.bucket() == Some("results")
            })
            .then_output(|| PutObjectOutput::builder().build())
    }

    /// An S3 mock refusing every write with AccessDenied.
    fn put_denied() -> Rule {
        mock!(aws_sdk_s3::Client::put_object).then_error(|| {
            PutObjectError::generic(
                ErrorMetadata::builder()
                    .code("AccessDenied")
                    .message("denied")
                    .build(),
            )
        })
    }

    /// An S3 mock with no earlier record for any job.
    fn no_earlier_record() -> Rule {
        mock!(aws_sdk_s3::Client::get_object).then_error(|| {
            GetObjectError::generic(ErrorMetadata::builder().code("NoSuchKey").build())
        })
    }

    /// A relay over `config` with a Bedrock client per target from `bedrock`
    /// and `s3` for every S3 call.
    fn assemble(
        config: Config,
        bedrock: impl Fn(&Target) -> Bedrock,
        s3: aws_sdk_s3::Client,
    ) -> Relay {
        let base = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let clients = config
            .targets
            .iter()
            .map(|target| (target.alias.clone(), bedrock(target)))
            .collect();
        Relay::new(
            config,
            clients,
            Destinations::new(&base, false, None).with_s3_client(s3),
        )
    }

    fn relay(converse: &Rule, put: &Rule) -> Relay {
        let bedrock = mock_client!(aws_sdk_bedrockruntime, RuleMode::MatchAny, [converse]);
        let s3 = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [put, &no_earlier_record()]);
        assemble(
            config(),
            |target| Bedrock::from_client(bedrock.clone(), target),
            s3,
        )
    }

    fn event(payload: Value) -> LambdaEvent<Payload> {
        LambdaEvent::new(Payload::Json(payload), context())
    }

    #[tokio::test]
    async fn a_bare_job_is_answered_and_recorded_under_its_id() {
        let converse = mock!(aws_sdk_bedrockruntime::Client::converse)
            .match_requests(|req| req.model_id() == Some("amazon.nova-lite-v1:0"))
            .then_output(|| converse_output("four", 5, 1));
        let written = Arc::default();
        let put = s3_capturing(&written);
        let answer = relay(&converse, &put)
            .handle(event(json!({"id": "sums/1", "model": "amazon.nova-lite-v1:0", "prompt": "2+2?", "metadata": {"k": 1}})))
            .await
            .expect("success");
        assert_eq!(answer["record"], "s3://results/relay/sums/1.json");
        let written = written.lock().expect("lock");
        assert_eq!(written.len(), 1);
        let (key, record) = &written[0];
        assert_eq!(key, "relay/sums/1.json");
        assert_eq!(record["status"], "succeeded");
        assert_eq!(record["shape"], "bare-job");
        assert_eq!(record["request_id"], "req-1");
        assert_eq!(
            record["output"],
            json!({"text": "four", "stop_reason": "end_turn"})
        );
        assert_eq!(record["usage"]["total_tokens"], 6);
        assert_eq!(record["metadata"], json!({"k": 1}));
        assert_eq!(record["target"]["account"], "111111111111");
    }

    #[tokio::test]
    async fn a_refused_model_call_leaves_an_error_record_and_a_non_retryable_error() {
        let converse = converse_error("AccessDeniedException");
        let written = Arc::default();
        let put = s3_capturing(&written);
        let err = relay(&converse, &put)
            .handle(event(
                json!({"model": "amazon.nova-lite-v1:0", "prompt": "hi"}),
            ))
            .await
            .expect_err("denied");
        assert_eq!(err.error_type, "NonRetryable.BedrockAccessDenied");
        let written = written.lock().expect("lock");
        let (key, record) = &written[0];
        assert_eq!(key, "relay/req-1.json", "no envelope: keyed by request id");
        assert_eq!(record["status"], "failed");
        assert_eq!(record["error"]["type"], "BedrockAccessDenied");
        assert_eq!(record["error"]["retryable"], false);
    }

    #[tokio::test]
    async fn an_unwritable_destination_stops_the_job_before_the_model_call() {
        // The claim is the first write: when it is refused, the model is not
        // paid for a result that could not be kept, and the event is retryable
        // (the policy can be fixed).
        let converse = mock!(aws_sdk_bedrockruntime::Client::converse).then_output(|| {
            ConverseOutput::builder()
                .stop_reason(StopReason::EndTurn)
                .build()
                .expect("output")
        });
        let put = put_denied();
        let err = relay(&converse, &put)
            .handle(event(
                json!({"model": "amazon.nova-lite-v1:0", "prompt": "hi"}),
            ))
            .await
            .expect_err("unwritable");
        assert_eq!(err.error_type, "Retryable.DestinationDenied");
        assert!(err
            .error_message
            .contains("grant the execution role s3:PutObject on arn:aws:s3:::results/relay/*"));
        assert_eq!(converse.num_calls(), 0);
    }

    #[test]
    fn relative_deadlines_from_local_runtimes_are_read_as_budgets() {
        let mut ctx = context();
        assert!(remaining(&ctx) > Duration::from_secs(29));
        ctx.deadline = 600_000;
        assert_eq!(remaining(&ctx), Duration::from_secs(600));
        ctx.deadline = EPOCH_MS_2001 + 1;
        assert_eq!(
            remaining(&ctx),
            Duration::ZERO,
            "a real epoch deadline in the past leaves nothing"
        );
    }

    #[tokio::test]
    async fn an_expired_deadline_stops_before_the_model_call() {
        let converse = mock!(aws_sdk_bedrockruntime::Client::converse).then_output(|| {
            ConverseOutput::builder()
                .stop_reason(StopReason::EndTurn)
                .build()
                .expect("output")
        });
        let written = Arc::default();
        let put = s3_capturing(&written);
        let mut ctx = context();
        ctx.deadline -= 29_000; // one second left, under the 2 s reserve
        let err = relay(&converse, &put)
            .handle(LambdaEvent::new(
                Payload::Json(json!({"model": "amazon.nova-lite-v1:0", "prompt": "hi"})),
                ctx,
            ))
            .await
            .expect_err("deadline");
        assert_eq!(err.error_type, "Retryable.DeadlineExceeded");
        assert_eq!(converse.num_calls(), 0);
        assert_eq!(
            written.lock().expect("lock")[0].1["error"]["type"],
            "DeadlineExceeded"
        );
    }

    /// S3 mocks for a job whose claim object already exists: conditional
    /// writes of a new claim fail with 412, and the claim reads back as
    /// holding the job until `until_ms` (epoch ms).
    fn claim_exists(until_ms: u64) -> (Rule, Rule) {
        let refused = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(|req| {
                req.key().is_some_and(|k| k.contains("/_claims/")) && req.if_none_match().is_some()
            })
            .then_http_response(|| {
                HttpResponse::new(
                    StatusCode::try_from(412).expect("status"),
                    SdkBody::from(
                        "<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>",
                    ),
                )
            });
        let current = mock!(aws_sdk_s3::Client::get_object)
            .match_requests(|req| req.key().is_some_and(|k| k.contains("/_claims/")))
            .then_output(move || {
                aws_sdk_s3::operation::get_object::GetObjectOutput::builder()
                    .e_tag("\"claim-1\"")
                    .body(aws_sdk_s3::primitives::ByteStream::from(
                        json!({"request_id": "earlier", "until_ms": until_ms})
                            .to_string()
                            .into_bytes(),
                    ))
                    .build()
            });
        (refused, current)
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// Runs job `nightly/1` against an S3 where the job's claim exists (held
    /// until `claim_until`) and reading its result is answered by `result`.
    /// Returns the answer, the model calls and the records written.
    async fn run_with_existing_claim(
        claim_until: u64,
        result: &Rule,
    ) -> (Result<Value, Diagnostic>, usize, usize) {
        let converse = mock!(aws_sdk_bedrockruntime::Client::converse)
            .then_output(|| converse_output("again", 1, 1));
        let (refused, current) = claim_exists(claim_until);
        let written: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let put = s3_capturing(&written);
        let bedrock = mock_client!(aws_sdk_bedrockruntime, RuleMode::MatchAny, [&converse]);
        let s3 = mock_client!(
            aws_sdk_s3,
            RuleMode::MatchAny,
            [&refused, &current, result, &put]
        );
        let relay = assemble(config(), |t| Bedrock::from_client(bedrock.clone(), t), s3);
        let answer = relay
            .handle(event(
                json!({"id": "nightly/1", "model": "amazon.nova-lite-v1:0", "prompt": "hi"}),
            ))
            .await;
        let written = written.lock().expect("lock").len();
        (answer, converse.num_calls(), written)
    }

    /// A redelivered event finds its earlier success whether that run's claim
    /// is still live (redelivered within its deadline) or has run out: the
    /// model is not called and nothing is rewritten.
    #[tokio::test]
    async fn a_job_that_already_succeeded_is_not_sent_to_the_model_again() {
        for claim_until in [now_ms() + 600_000, 0] {
            let earlier = mock!(aws_sdk_s3::Client::get_object)
                .match_requests(|req| req.key() == Some("relay/nightly/1.json"))
                .then_output(|| {
                    aws_sdk_s3::operation::get_object::GetObjectOutput::builder()
                        .body(aws_sdk_s3::primitives::ByteStream::from_static(
                            br#"{"job_id": "nightly/1", "status": "succeeded"}"#,
                        ))
                        .build()
                });
            let (answer, model_calls, written) =
                run_with_existing_claim(claim_until, &earlier).await;
            let answer = answer.expect("success");
            assert_eq!(answer["already_done"], true, "claim until {claim_until}");
            assert_eq!(model_calls, 0);
            assert_eq!(earlier.num_calls(), 1, "the result was read back");
            assert_eq!(written, 0, "nothing rewritten");
        }
    }

    /// A job held by another invocation that has not finished it is refused
    /// as in progress (retryable), without calling the model.
    #[tokio::test]
    async fn a_job_claimed_elsewhere_and_not_finished_is_in_progress() {
        let (answer, model_calls, written) =
            run_with_existing_claim(now_ms() + 600_000, &no_earlier_record()).await;
        let err = answer.expect_err("in progress");
        assert_eq!(err.error_type, "Retryable.JobInProgress");
        assert_eq!(model_calls, 0);
        assert_eq!(written, 0, "no record written");
    }

    /// A new job's claim is its first S3 call, and being new it proves there
    /// is no earlier result: nothing is read back before the model call.
    #[tokio::test]
    async fn a_new_job_reads_nothing_back() {
        let converse = mock!(aws_sdk_bedrockruntime::Client::converse)
            .then_output(|| converse_output("four", 5, 1));
        let reads = no_earlier_record();
        let written: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let put = s3_capturing(&written);
        let bedrock = mock_client!(aws_sdk_bedrockruntime, RuleMode::MatchAny, [&converse]);
        let s3 = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&put, &reads]);
        let relay = assemble(config(), |t| Bedrock::from_client(bedrock.clone(), t), s3);
        relay
            .handle(event(
                json!({"id": "nightly/2", "model": "amazon.nova-lite-v1:0", "prompt": "hi"}),
            ))
            .await
            .expect("success");
        assert_eq!(converse.num_calls(), 1);
        assert_eq!(reads.num_calls(), 0, "no GetObject for a new job");
        assert_eq!(put.num_calls(), 2, "the claim and the record");
    }

    /// RoleA's credentials that expire while a batch runs are fetched again
    /// before they lapse: every item is answered once, none fails.
    #[tokio::test]
    async fn credentials_expiring_mid_batch_are_refreshed_without_losing_items() {
        // 100 s credentials sit inside the 150-300 s refresh window: each call
        // finds them expiring and fetches new ones.
        let (sts_rule, sts) = crate::bedrock::tests::sts_issuing(Duration::from_secs(100));
        let converse = mock!(aws_sdk_bedrockruntime::Client::converse)
            .then_output(|| converse_output("ok", 1, 1));
        let lines: Arc<Mutex<Vec<u8>>> = Arc::default();
        let captured = Arc::clone(&lines);
        let put = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(move |req| {
                if req.key().is_some_and(|k| k.ends_with(".jsonl")) {
                    if let Some(bytes) = req.body().bytes() {
                        captured.lock().expect("lock").extend_from_slice(bytes);
                    }
                }
                true
            })
            .then_output(|| PutObjectOutput::builder().build());
        let mut config = config();
        config.max_concurrency = 1;
        let s3 = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&put, &no_earlier_record()]);
        let relay = assemble(
            config,
            |_| crate::bedrock::tests::relay_bedrock(sts.clone(), &converse, 3),
            s3,
        );
        let answer = relay
            .handle(event(json!({
                "id": "refresh/1", "model": "amazon.nova-lite-v1:0",
                "prompt": "item {{ item }}", "items": [1, 2, 3]
            })))
            .await
            .expect("batch succeeds");
        assert_eq!(answer["succeeded"], 3);
        assert_eq!(converse.num_calls(), 3);
        assert!(sts_rule.num_calls() >= 2, "credentials refreshed mid-batch");
        let lines = lines.lock().expect("lock");
        let statuses: Vec<Value> = lines
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice::<Value>(l).expect("line")["status"].clone())
            .collect();
        assert_eq!(statuses, vec![json!("succeeded"); 3]);
    }
}
