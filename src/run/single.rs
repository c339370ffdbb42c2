//! The single-job run mode: a job without items is one model call and one
//! record, under the job's claim.

use std::sync::Arc;

use serde_json::{json, Value};

use super::guarded::Guard;
use super::outcome::{self, MetricScope};
use super::plan::Plan;
use super::prepare::{prepare, DocumentSource};
use super::Services;
use crate::domain::deadline::Deadline;
use crate::error::RelayError;
use crate::observe::metrics::CallStats;
use crate::scheduling::Pace;

/// Runs a planned single job: claimed, skipped when an earlier delivery of
/// the event already succeeded, else prepared, sent and recorded.
pub(crate) async fn run(
    services: &Services,
    plan: Plan<'_>,
    request_id: &str,
    deadline: &Deadline,
) -> Result<Value, RelayError> {
    let sinks = services.sinks();
    let plan = &plan;
    let job_id = plan.record.job_id.as_str();
    let guard = Guard::new(&plan.delivery.ledger, sinks, job_id, request_id, *deadline);
    let result = guard
        .run(
            || async {
                Ok(plan
                    .delivery
                    .ledger
                    .succeeded_job(sinks, job_id)
                    .await?)
            },
            Option::is_some,
            |earlier| async move {
                if earlier.is_some() {
                    tracing::info!(
                        "the job already succeeded (a redelivered event); the model is not called again"
                    );
                    return Ok(json!({
                        "job_id": job_id,
                        "status": "succeeded",
                        "already_done": true,
                    }));
                }
                run_claimed(services, plan, deadline).await
            },
        )
        .await;
    // A failure of the run has written its record (or, when delivery itself
    // failed, could not).
    outcome::settle(services, plan, result, |_| false).await
}

/// [`run`] once the job is claimed and not done.
async fn run_claimed(
    services: &Services,
    plan: &Plan<'_>,
    deadline: &Deadline,
) -> Result<Value, RelayError> {
    let mut record = plan.record.clone();
    let delivery = &plan.delivery;
    let stats = Arc::new(CallStats::default());
    let resolved = match prepare(
        services,
        plan.job.clone(),
        plan.scope.clone(),
        &record.job_id,
        DocumentSource::Own { at_once: 1 },
    )
    .await
    {
        Ok(resolved) => resolved,
        Err(err) => return outcome::fail(services, record, delivery, err, &stats).await,
    };
    if services.config().log_content {
        tracing::info!(messages = ?resolved.messages, system = ?resolved.system, "job content (RELAY_LOG_CONTENT)");
    }

    let (served_by, result) = services
        .caller()
        .call_in_time(&resolved, &plan.pool, deadline, &stats, Pace::Job)
        .await;
    record.target = Some(served_by.to_record());
    let reply = match result {
        Ok(reply) => reply,
        Err(err) => return outcome::fail(services, record, delivery, err.into(), &stats).await,
    };
    services.report().emit(
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
    if services.config().log_content {
        tracing::info!(output = %reply.text, "model output (RELAY_LOG_CONTENT)");
    }
    let record = record.succeed(&reply);
    let uri = match outcome::deliver_success(services.sinks(), delivery, &record, deadline).await {
        Ok(uri) => uri,
        // The result could not be delivered: an error record says so (at
        // RELAY_DESTINATION when the job's own destination refuses it).
        Err(err) => return outcome::fail(services, record, delivery, err.into(), &stats).await,
    };
    tracing::info!(record = %uri, "result recorded");
    Ok(json!({
        "job_id": record.job_id,
        "status": record.status,
        "record": uri,
        "model": record.model,
        "usage": record.usage,
    }))
}
