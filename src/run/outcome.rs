//! How a run ends: a success record delivered until it is delivered (within
//! the deadline), a failure record written once, and one EMF metric line per
//! job or batch item.

use std::sync::Arc;

use serde_json::Value;

use super::guarded::GuardError;
use super::plan::{Delivery, Plan};
use super::Services;
use crate::destination::{retry_while_unavailable, DestinationError, Destinations};
use crate::domain::deadline::Deadline;
use crate::domain::record::{ModelReply, Record};
use crate::domain::target::Targets;
use crate::error::RelayError;
use crate::observe::metrics::{self, CallStats, JobMetrics};

/// Which job, item and invocation an EMF line belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MetricScope<'a> {
    job_id: &'a str,
    request_id: &'a str,
    is_item: bool,
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

/// Where EMF metric lines go: stdout under a namespace, or nowhere (the CLI,
/// whose stdout is its own output).
#[derive(Debug, Clone)]
pub(crate) struct Report {
    namespace: Option<String>,
    /// The configured targets, whose allowlists bound the `Model` dimension.
    targets: Targets,
}

/// The `Model` dimension of anything an event could name freely.
pub(crate) const OTHER_MODEL: &str = "other";

impl Report {
    /// Metrics under `namespace`, for `targets`.
    pub(crate) fn to_namespace(namespace: String, targets: Targets) -> Self {
        Self {
            namespace: Some(namespace),
            targets,
        }
    }

    /// No metric lines.
    pub(crate) fn silent() -> Self {
        Self {
            namespace: None,
            targets: Targets::default(),
        }
    }

    /// The `Model` dimension for `model` on `target`: the model when Bedrock
    /// answered it (`answered`), or when the target's allowlist names it;
    /// otherwise [`OTHER_MODEL`]. Each dimension value is a custom metric, so
    /// a refused, invalid or unknown model id must not become one: events
    /// could create them without bound.
    fn model_dimension(&self, target: Option<&str>, model: Option<&str>, answered: bool) -> String {
        let Some(model) = model else {
            return "none".into();
        };
        let allowed = target
            .and_then(|alias| self.targets.get(alias))
            .is_some_and(|t| t.allowed_models.is_some() && t.allows(model));
        match answered || allowed {
            true => model.to_owned(),
            false => OTHER_MODEL.into(),
        }
    }

    /// One EMF line for a job or a batch item.
    pub(crate) fn emit(
        &self,
        scope: MetricScope<'_>,
        target: Option<&str>,
        model: Option<&str>,
        error_type: Option<&str>,
        reply: Option<&ModelReply>,
        stats: &CallStats,
    ) {
        let Some(namespace) = &self.namespace else {
            return;
        };
        metrics::emit(
            namespace,
            &JobMetrics {
                target: target.unwrap_or("none").to_owned(),
                model: self.model_dimension(target, model, reply.is_some()),
                error_type: error_type.map(str::to_owned),
                usage: reply.and_then(|r| r.usage),
                model_latency_ms: reply.and_then(|r| r.model_latency_ms),
                guardrail_intervened: reply.is_some_and(ModelReply::is_blocked),
                attempts: stats.attempts(),
                throttled: stats.throttled(),
                is_item: scope.is_item,
                job_id: scope.job_id.to_owned(),
                request_id: scope.request_id.to_owned(),
            },
        );
    }

    /// The `ColdStart` line of an execution environment's first invocation.
    pub(crate) fn cold_start(&self, function_name: &str, request_id: &str) {
        if let Some(namespace) = &self.namespace {
            metrics::emit_cold_start(namespace, function_name, request_id);
        }
    }
}

/// Writes one record to its destination and remembers it in the ledger;
/// returns where it went.
pub(crate) async fn deliver_record(
    sinks: &Destinations,
    delivery: &Delivery,
    record: &Record,
) -> Result<String, DestinationError> {
    let written = sinks
        .write_record(&delivery.destination, &delivery.group, record)
        .await?;
    delivery.ledger.remember(sinks, &written.results).await?;
    Ok(written.reference)
}

/// Delivers a success record, again while the destination is unavailable (an
/// outage, throttling the SDK's own retries did not outlast) and the deadline
/// allows: the result in hand cost a model call, and a retry of the whole
/// event would pay for it again. The result is sent at most once per call:
/// only the write is retried until it lands, then only the ledger's memory of
/// it.
pub(crate) async fn deliver_success(
    sinks: &Destinations,
    delivery: &Delivery,
    record: &Record,
    deadline: &Deadline,
) -> Result<String, DestinationError> {
    // The write and the ledger's memory of it are retried apart: once a
    // message is sent, a failure to remember it must not send it again.
    let written = retry_while_unavailable("delivery", deadline, || {
        sinks.write_record(&delivery.destination, &delivery.group, record)
    })
    .await?;
    let remembered = retry_while_unavailable("remembering the delivery", deadline, || {
        delivery.ledger.remember(sinks, &written.results)
    })
    .await;
    // The result is delivered: the job succeeded. Only a redelivery of the
    // event could now run it again, which is what the ledger was for.
    if let Err(err) = remembered {
        tracing::warn!(
            job_id = %record.job_id,
            "the result is delivered but the idempotency ledger did not take it; a redelivery of this event would run it again: {err}"
        );
    }
    Ok(written.reference)
}

/// Writes the failure record and returns the error for Lambda; `stats` holds
/// the job's Bedrock attempts, if it made any. When even the record cannot be
/// written, the error still reaches Lambda, whose retries and on-failure
/// destination keep the event.
pub(crate) async fn fail(
    services: &Services,
    record: Record,
    delivery: &Delivery,
    err: RelayError,
    stats: &Arc<CallStats>,
) -> Result<Value, RelayError> {
    services.report().emit(
        MetricScope::job(&record),
        record.target.as_ref().map(|t| t.alias.as_str()),
        record.model.as_deref(),
        Some(err.code()),
        None,
        stats,
    );
    let record = record.fail(err.to_record());
    let text = err.log_text(services.config().log_content);
    let mut written = deliver_record(services.sinks(), delivery, &record).await;
    // A job's own destination that refuses the record (a message it will not
    // take, a queue it may not write to) must not leave the failure unseen:
    // the record goes to RELAY_DESTINATION instead.
    if let Err(write_err) = &written {
        let fallback = Delivery::fallback(services, &record.request_id);
        if fallback.destination != delivery.destination {
            tracing::warn!(
                job_id = %record.job_id,
                "the job's destination refused its error record ({write_err}); writing it to RELAY_DESTINATION"
            );
            written = deliver_record(services.sinks(), &fallback, &record).await;
        }
    }
    match written {
        Ok(uri) => tracing::error!(
            job_id = %record.job_id,
            error_type = err.code(),
            retryable = err.is_retryable(),
            record = %uri,
            "job failed: {text}"
        ),
        Err(write_err) => tracing::error!(
            job_id = %record.job_id,
            error_type = err.code(),
            retryable = err.is_retryable(),
            "job failed: {text}; and its error record was not written: {write_err}"
        ),
    }
    Err(err)
}

/// How a guarded run ends: its answer, or its error for Lambda. A ledger
/// failure (the claim or the read-back) that a retry may get past writes no
/// record: an earlier success may stand behind the error, and a failure sent
/// after it (to a queue, say) would contradict it; Lambda's retry reads back
/// again. A ledger failure for good has left no record, so its error record
/// is written here; so is a failure of the run itself that `unrecorded` picks
/// out, one the mode's run returns without writing its record. A busy job
/// gets none: the invocation holding it writes its own.
pub(crate) async fn settle(
    services: &Services,
    plan: &Plan<'_>,
    result: Result<Value, GuardError>,
    unrecorded: impl Fn(&RelayError) -> bool,
) -> Result<Value, RelayError> {
    match result {
        Ok(answer) => Ok(answer),
        Err(GuardError::Busy(err)) => Err(err),
        Err(GuardError::Ledger(err)) if err.is_retryable() => {
            tracing::warn!(
                job_id = %plan.record.job_id,
                error_type = err.code(),
                "what is done could not be read back; no record is written, and Lambda's retry reads again: {err}"
            );
            Err(err)
        }
        Err(GuardError::Run(err)) if !unrecorded(&err) => Err(err),
        Err(GuardError::Ledger(err) | GuardError::Run(err)) => {
            let record = plan.record.clone();
            fail(services, record, &plan.delivery, err, &Arc::default()).await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use std::time::Duration;

    use super::*;
    use crate::domain::target::{RoleArn, Target};

    fn report() -> Report {
        let target = |alias: &str, allowed_models: Option<Vec<String>>| {
            let t = Target {
                alias: alias.into(),
                role: RoleArn::parse("arn:aws:iam::111111111111:role/RoleA").expect("arn"),
                external_id: None,
                region: "us-east-1".into(),
                session_duration: Duration::from_secs(3600),
                session_name: "s".into(),
                source_identity: "fn".into(),
                allowed_models,
                quota: Default::default(),
            };
            (alias.to_owned(), t)
        };
        let targets: BTreeMap<String, Target> = [
            target("default", None),
            target("research", Some(vec!["amazon.nova-*".into()])),
        ]
        .into_iter()
        .collect();
        Report::to_namespace("BedrockRelay".into(), Targets::new(targets))
    }

    /// An event cannot mint a `Model` dimension: a model counts under its own
    /// name only once Bedrock answered it or the target's allowlist names it;
    /// an invalid, refused or unknown one counts under `other`.
    #[test]
    fn only_answered_or_allowed_models_become_dimensions() {
        let r = report();
        let dim = |target, model, answered| r.model_dimension(target, model, answered);
        assert_eq!(
            dim(Some("default"), Some("made-up.model-1"), false),
            OTHER_MODEL
        );
        assert_eq!(dim(None, Some("anything at all"), false), OTHER_MODEL);
        assert_eq!(
            dim(Some("nope"), Some("amazon.nova-lite-v1:0"), false),
            OTHER_MODEL
        );
        assert_eq!(
            dim(Some("research"), Some("amazon.nova-lite-v1:0"), false),
            "amazon.nova-lite-v1:0"
        );
        assert_eq!(
            dim(Some("research"), Some("meta.llama3"), false),
            OTHER_MODEL
        );
        assert_eq!(
            dim(Some("default"), Some("amazon.nova-lite-v1:0"), true),
            "amazon.nova-lite-v1:0"
        );
        assert_eq!(dim(Some("default"), None, false), "none");
    }
}
