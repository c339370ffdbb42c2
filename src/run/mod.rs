//! The run layer: one event's work, from a planned job to its delivered
//! results. Each run mode is a peer module composing the same lower parts:
//! [`plan`] (event → plan), [`guarded`] (claim → read back → run → release),
//! [`prepare`] (documents and rendering), [`crate::scheduling`] (calling the
//! model on time) and [`outcome`] (records, delivery, metrics).
//!
//! | mode | module | when |
//! |---|---|---|
//! | single job | [`single`] | a job without `items` or `items_from` |
//! | batch in one invocation | [`batch`] | a job with `items` or `items_from`, no work queue or one chunk's worth |
//! | fan-out | [`fanout`] | a batch larger than `RELAY_CHUNK_ITEMS`, with `RELAY_WORK_QUEUE` |
//! | chunk | [`chunk`] (and [`assemble`]) | an SQS event from the work queue |
//! | batch job | [`batch_job`] (and [`collect`]) | a batch planned as a fan-out whose mode is `batch-job` (or `auto` choosing it); then the check schedule and Bedrock's state-change events |

mod assemble;
mod batch;
mod batch_job;
mod batch_stage;
mod chunk;
mod chunk_save;
mod collect;
mod fanout;
mod guarded;
mod outcome;
mod plan;
mod prepare;
mod single;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tracing::Instrument;

use crate::bedrock::jobs::BatchJobs;
use crate::bedrock::Bedrock;
use crate::config::{Config, FanOut};
use crate::destination::Destinations;
use crate::domain::batch_job::JobMode;
use crate::domain::deadline::Deadline;
use crate::domain::input::Payload;
use crate::domain::job::Job;
use crate::error::RelayError;
use crate::rates::RateTable;
use crate::scheduling::ModelCaller;
use crate::template::Renderer;
use crate::work::Staging;

pub(crate) use outcome::Report;

/// A target's side of batch jobs, signed as its RoleA: its batch-job API
/// and the staging location in its account.
#[derive(Debug, Clone)]
pub(crate) struct BatchSide {
    pub(crate) jobs: BatchJobs,
    pub(crate) staging: Staging,
}

/// What every run shares, built once at cold start and kept across the
/// invocations of a warm function: the configuration, account B's clients for
/// destinations and documents, the template engine, the model caller (RoleA's
/// clients and what is known about their quotas) and the metrics report.
#[derive(Debug)]
pub(crate) struct Services {
    config: Config,
    sinks: Destinations,
    renderer: Renderer,
    caller: ModelCaller,
    report: Report,
    batch: HashMap<String, BatchSide>,
}

impl Services {
    /// `bedrock` holds a client for each target alias.
    pub(crate) fn new(
        config: Config,
        bedrock: HashMap<String, Bedrock>,
        sinks: Destinations,
        report: Report,
    ) -> Self {
        Self {
            caller: ModelCaller::new(
                bedrock,
                config.deadline_reserve,
                RateTable::configured(config.rate_table.as_ref(), &sinks),
            ),
            config,
            sinks,
            renderer: Renderer::new(),
            report,
            batch: HashMap::new(),
        }
    }

    /// Gives the targets with a batch role their batch-job side.
    pub(crate) fn set_batch_sides(&mut self, batch: HashMap<String, BatchSide>) {
        self.batch = batch;
    }

    /// The batch-job side of the target `alias`, when batch jobs are on for it.
    pub(crate) fn batch_side(&self, alias: &str) -> Option<&BatchSide> {
        self.batch.get(alias)
    }

    /// The function's configuration.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Account B's clients: destinations, ledgers, documents and items.
    pub(crate) fn sinks(&self) -> &Destinations {
        &self.sinks
    }

    /// The template engine.
    pub(crate) fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    /// The model caller.
    pub(crate) fn caller(&self) -> &ModelCaller {
        &self.caller
    }

    /// Where metric lines go.
    pub(crate) fn report(&self) -> &Report {
        &self.report
    }

    /// Writes no metric lines from now on.
    pub(crate) fn silence_metrics(&mut self) {
        self.report = Report::silent();
    }
}

/// The run modes a job selects (chunks arrive as SQS events instead).
#[derive(Debug, Clone, Copy)]
enum Mode<'c> {
    Single,
    Batch,
    FanOut(&'c FanOut),
}

impl<'c> Mode<'c> {
    fn of(job: &Job, config: &'c Config) -> Self {
        match (job.is_batch(), &config.fan_out) {
            (false, _) => Self::Single,
            (true, None) => Self::Batch,
            (true, Some(fan_out)) => Self::FanOut(fan_out),
        }
    }
}

/// Runs one event: plans it, then hands the plan to its run mode. Every
/// failure leaves an error record where one can be written.
pub(crate) async fn run_event(
    services: &Arc<Services>,
    payload: &Payload,
    request_id: &str,
    deadline: Deadline,
) -> Result<Value, RelayError> {
    if let Some(event) = chunk::sqs_event(payload) {
        // Boxed, as is the fan-out: each mode's future is deep, and the
        // compiler's layout of one future holding all of them inline overflows.
        return Box::pin(chunk::run(services, event, request_id, &deadline)).await;
    }
    if let Some(trigger) = batch_job::trigger(payload) {
        return Box::pin(batch_job::on_trigger(
            services, trigger, request_id, &deadline,
        ))
        .await;
    }
    let plan = match plan::plan(services, payload, request_id) {
        Ok(plan) => plan,
        Err(unplanned) => {
            let plan::Unplanned {
                record,
                delivery,
                err,
            } = *unplanned;
            return outcome::fail(services, record, &delivery, err, &Arc::default()).await;
        }
    };
    let span = tracing::info_span!(
        "job",
        job_id = %plan.resolved.id,
        model = %plan.resolved.model,
        target = %plan.pool.iter().map(|t| t.alias.as_str()).collect::<Vec<_>>().join(","),
        target_account = %plan.pool.iter().map(|t| t.role.account.as_str()).collect::<Vec<_>>().join(","),
        shape = ?plan.shape,
        destination = %plan.delivery.destination,
    );
    async move {
        tracing::info!("job accepted");
        match Mode::of(&plan.job, services.config()) {
            Mode::Single => single::run(services, plan, request_id, &deadline).await,
            // Batch jobs keep their state in the work store.
            Mode::Batch if plan.resolved.mode == Some(JobMode::BatchJob) => {
                let err = crate::domain::batch_job::ModeError::NotConfigured.into();
                outcome::fail(services, plan.record, &plan.delivery, err, &Arc::default()).await
            }
            Mode::Batch => {
                let mut plan = plan;
                let count = plan.job.items.as_ref().map_or(0, Vec::len);
                plan.mode_reason = plan.choose_mode(services, count).ok().map(|c| c.reason);
                batch::run(services, plan, request_id, &deadline).await
            }
            Mode::FanOut(fan_out) => {
                Box::pin(fanout::run(services, plan, fan_out, request_id, &deadline)).await
            }
        }
    }
    .instrument(span)
    .await
}
