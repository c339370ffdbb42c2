//! The batch-job run mode: a batch planned as [`super::fanout`] plans it,
//! run by Bedrock batch inference jobs in the model account at half the
//! on-demand price, instead of by chunk messages.
//!
//! 1. **Submission** (by the planner, under its claim): every item is made
//!    ready exactly as an on-demand item ([`batch::prepare_item`]) and
//!    written as a Converse record to the staging location in account A with
//!    RoleA's credentials, one file per part of at most
//!    `RELAY_BATCH_JOB_MAX_RECORDS`; each part becomes a job, created with a
//!    `clientRequestToken` derived from the job id and part, so a redelivered
//!    event finds the same job instead of starting a second. Parts over the
//!    account's concurrent-jobs quota wait. An item that cannot be made ready
//!    is its failed line, kept in the work store.
//! 2. **Learning the outcome**, either way enough: a Bedrock state-change
//!    event forwarded from account A, or the schedule's
//!    `{"relay": "check-batch-jobs"}`, on which every batch with jobs in
//!    flight is checked with `GetModelInvocationJob`. An event about a job
//!    this relay did not submit, or from an account that is not the job's
//!    target, is refused and nothing is read.
//! 3. **Collection** once every part ended ([`super::collect`]): the output
//!    is mapped back to the items and saved as the batch's chunks; what
//!    Bedrock did not answer runs on-demand as chunks through the work queue
//!    (`retry_on_demand`, the default) or is written as failed; the last
//!    chunk assembles the batch as a fanned-out one is assembled, with the
//!    jobs in the manifest.

use serde_json::{json, Value};

use super::batch_stage;
use super::collect;
use super::guarded::{Guard, GuardError};
use super::outcome;
use super::plan::{Delivery, Plan};
use super::{BatchSide, Services};
use crate::bedrock::jobs::{JobCallError, Submission};
use crate::domain::batch_job::{ModeChoice, ModeError};
use crate::domain::batch_output::{JobStateChange, STATE_CHANGE_DETAIL_TYPE, STATE_CHANGE_SOURCE};
use crate::domain::batch_state::{SubmittedBatch, WAITING};
use crate::domain::chunks::BatchPlan;
use crate::domain::deadline::Deadline;
use crate::domain::input::Payload;
use crate::domain::record::Record;
use crate::error::RelayError;
use crate::work::WorkStore;

/// The input the check schedule sends (`template.yaml`'s `BatchJobCheck`).
pub(crate) const CHECK_REQUEST: &str = "check-batch-jobs";

/// What woke the batch-job mode.
#[derive(Debug)]
pub(crate) enum Trigger {
    /// The check schedule.
    Check,
    /// A Bedrock state-change event (the whole event: its envelope's
    /// `account` is checked too).
    StateChange(Box<Value>),
}

/// The batch-job input in `payload`, if it is one.
pub(crate) fn trigger(payload: &Payload) -> Option<Trigger> {
    let Payload::Json(value) = payload else {
        return None;
    };
    if value.get("relay").and_then(Value::as_str) == Some(CHECK_REQUEST) {
        return Some(Trigger::Check);
    }
    let source = value.get("source").and_then(Value::as_str);
    let detail_type = value.get("detail-type").and_then(Value::as_str);
    (source == Some(STATE_CHANGE_SOURCE) && detail_type == Some(STATE_CHANGE_DETAIL_TYPE))
        .then(|| Trigger::StateChange(Box::new(value.clone())))
}

/// Stages the frozen batch's records and submits its jobs (or finds those
/// an earlier delivery submitted); marks the batch in flight.
pub(super) async fn submit(
    services: &Services,
    store: &WorkStore,
    plan: &Plan<'_>,
    frozen: &BatchPlan,
    choice: &ModeChoice,
    deadline: &Deadline,
) -> Result<SubmittedBatch, RelayError> {
    let batch_id = frozen.job_id.as_str();
    let state = match store.read_batch_jobs(batch_id).await? {
        Some(state) => state,
        None => {
            let state = batch_stage::stage(services, store, plan, frozen, choice, deadline).await?;
            store.write_batch_jobs(&state).await?;
            state
        }
    };
    store.mark_in_flight(batch_id).await?;
    let state = submit_waiting(services, store, state).await?;
    tracing::info!(
        items = frozen.items.total,
        jobs = state.parts.len(),
        submitted = state.parts.iter().filter(|p| p.arn.is_some()).count(),
        reason = %state.reason,
        "batch submitted as Bedrock batch jobs"
    );
    Ok(state)
}

/// The planner's answer for a batch that runs as batch jobs.
pub(super) fn submitted(plan: &Plan<'_>, frozen: &BatchPlan, state: &SubmittedBatch) -> Value {
    json!({
        "job_id": plan.resolved.id,
        "status": "submitted",
        "mode": "batch-job",
        "reason": state.reason,
        "items": frozen.items.total,
        "jobs": state.parts.iter().map(|p| json!({
            "name": p.name, "arn": p.arn, "status": p.status, "records": p.count,
        })).collect::<Vec<_>>(),
        "planned_at": frozen.planned_at,
        "model": plan.resolved.model,
    })
}

/// The side of the target a batch's jobs run in.
fn side<'s>(services: &'s Services, alias: &str) -> Result<&'s BatchSide, RelayError> {
    services
        .batch_side(alias)
        .ok_or(RelayError::Mode(ModeError::NotConfigured))
}

/// Submits the parts still waiting, as far as the concurrent-jobs limit
/// allows; keeps the state after every change.
async fn submit_waiting(
    services: &Services,
    store: &WorkStore,
    mut state: SubmittedBatch,
) -> Result<SubmittedBatch, RelayError> {
    let side = side(services, &state.target)?;
    let config = &services.config().batch_jobs;
    let Some(role) = config.role_for(&state.target) else {
        return Err(ModeError::NotConfigured.into());
    };
    let mut active = state
        .parts
        .iter()
        .filter(|p| p.arn.is_some() && !p.has_ended())
        .count();
    let tags = vec![("bedrock-relay:job".to_owned(), tag_value(&state.job_id))];
    for index in 0..state.parts.len() {
        let part = &state.parts[index];
        if part.arn.is_some() || part.status != WAITING {
            continue;
        }
        if active >= config.max_active_jobs {
            break;
        }
        let submission = Submission {
            name: part.name.clone(),
            token: part.token.clone(),
            model: state.model.clone(),
            service_role: role.arn.clone(),
            input_uri: part.input_uri.clone(),
            output_uri: part.output_uri.clone(),
            bucket_owner: side.staging.owner().map(str::to_owned),
            timeout_hours: i32::try_from(state.timeout_hours).unwrap_or(168),
            tags: tags.clone(),
        };
        match side.jobs.submit(&submission).await {
            Ok(arn) => {
                let part = &mut state.parts[index];
                tracing::info!(part = part.part, job = %arn, records = part.count, "batch job submitted");
                part.arn = Some(arn);
                part.status = "Submitted".into();
                active += 1;
                store.write_batch_jobs(&state).await?;
            }
            // Its turn comes when a job ends: the check schedule tries again.
            Err(JobCallError::QuotaFull { message }) => {
                tracing::info!(
                    part = part.part,
                    "the jobs quota is full; the part waits: {message}"
                );
                break;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(state)
}

/// A tag value Bedrock accepts (`[\p{L}\p{Z}\p{N}_.:/=+\-@]`, 256 at most).
fn tag_value(text: &str) -> String {
    text.chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || "_.:/=+-@ ".contains(c) {
                true => c,
                false => '_',
            },
        )
        .take(256)
        .collect()
}

/// Handles a check or a state-change event.
pub(crate) async fn on_trigger(
    services: &Services,
    trigger: Trigger,
    request_id: &str,
    deadline: &Deadline,
) -> Result<Value, RelayError> {
    let Some(fan_out) = services.config().fan_out.as_ref() else {
        return refuse(services, "batch-jobs", "this function runs no batch jobs: RELAY_WORK_STORE and RELAY_BATCH_STAGING are not set".into(), request_id).await;
    };
    let store = WorkStore::new(services.sinks(), &fan_out.store);
    match trigger {
        Trigger::Check => {
            let batches = store.in_flight().await?;
            let mut checked = Vec::new();
            for batch_id in batches {
                if services.caller().budget(deadline).is_none() {
                    break;
                }
                match check(services, &store, &batch_id, request_id, deadline).await {
                    Ok(summary) => checked.push(summary),
                    Err(err) => {
                        tracing::warn!(job_id = %batch_id, error_type = err.code(), "checking the batch's jobs failed; the next check tries again: {err}");
                        checked.push(json!({"job_id": batch_id, "error": err.code()}));
                    }
                }
            }
            Ok(json!({"checked": checked}))
        }
        Trigger::StateChange(event) => {
            let (batch_id, name) = match ours(services, &store, &event).await {
                Ok(found) => found,
                Err((job, reason)) => return refuse(services, &job, reason, request_id).await,
            };
            tracing::info!(job_id = %batch_id, batch_job = %name, "Bedrock batch job state change");
            check(services, &store, &batch_id, request_id, deadline).await
        }
    }
}

/// The relay batch a state-change event is about, and the job's name; or
/// why it is not one of this relay's jobs.
async fn ours(
    services: &Services,
    store: &WorkStore,
    event: &Value,
) -> Result<(String, String), (String, String)> {
    let detail: JobStateChange =
        serde_json::from_value(event["detail"].clone()).map_err(|err| {
            (
                "unknown".to_owned(),
                format!("its detail is not a Bedrock batch job state change ({err})"),
            )
        })?;
    let job = detail.batch_job_name.clone();
    let arn_account = detail.arn_account().map(str::to_owned);
    let envelope_account = event.get("account").and_then(Value::as_str);
    let Some(account) = arn_account else {
        return Err((
            job,
            format!("`{}` is not a batch job ARN", detail.batch_job_arn),
        ));
    };
    if envelope_account != Some(account.as_str())
        || detail.account_id.as_deref().is_some_and(|a| a != account)
    {
        return Err((
            job,
            format!(
                "the event's account ({}) is not the job's ({account})",
                envelope_account.unwrap_or("none")
            ),
        ));
    }
    if !services
        .config()
        .targets
        .iter()
        .any(|t| t.role.account == account)
    {
        return Err((
            job,
            format!("account {account} is not one of RELAY_TARGETS"),
        ));
    }
    let batches = store.in_flight().await.map_err(|err| {
        (
            job.clone(),
            format!("the work store could not be read ({err})"),
        )
    })?;
    for batch_id in batches {
        let Ok(Some(state)) = store.read_batch_jobs(&batch_id).await else {
            continue;
        };
        if state.account == account && state.part_of(&job, &detail.batch_job_arn).is_some() {
            return Ok((batch_id, job));
        }
    }
    Err((
        job,
        "no batch in flight in RELAY_WORK_STORE submitted it".into(),
    ))
}

/// Refuses a batch-job input: an error record, and an error for Lambda.
async fn refuse(
    services: &Services,
    job: &str,
    reason: String,
    request_id: &str,
) -> Result<Value, RelayError> {
    let err = RelayError::NotOurBatchJob {
        job: job.to_owned(),
        reason,
    };
    let mut record = Record::started(request_id);
    record.job_id = crate::domain::job::sanitize_id(&format!("batch-job-{job}"));
    let delivery = Delivery::fallback(services, request_id);
    outcome::fail(services, record, &delivery, err, &Default::default()).await
}

/// Checks one batch's jobs: submits waiting parts, asks Bedrock about the
/// running ones, and collects the batch once every job ended.
async fn check(
    services: &Services,
    store: &WorkStore,
    batch_id: &str,
    request_id: &str,
    deadline: &Deadline,
) -> Result<Value, RelayError> {
    let Some(mut state) = store.read_batch_jobs(batch_id).await? else {
        store.clear_in_flight(batch_id).await?;
        return Ok(json!({"job_id": batch_id, "status": "unknown"}));
    };
    if !state.collected {
        let side = side(services, &state.target)?;
        let mut changed = false;
        for part in state
            .parts
            .iter_mut()
            .filter(|p| p.arn.is_some() && !p.has_ended())
        {
            let Some(arn) = part.arn.clone() else {
                continue;
            };
            let report = side.jobs.report(&arn).await?;
            if report.status != part.status || report.message != part.message {
                tracing::info!(part = part.part, job = %arn, from = %part.status, to = %report.status, "batch job status");
                part.status = report.status;
                part.message = report.message;
                changed = true;
            }
        }
        if changed {
            store.write_batch_jobs(&state).await?;
        }
        state = submit_waiting(services, store, state).await?;
        if state.has_ended() {
            state = collect_claimed(services, store, state, request_id, deadline).await?;
        }
    }
    if state.collected {
        store.clear_in_flight(batch_id).await?;
    }
    Ok(json!({
        "job_id": batch_id,
        "collected": state.collected,
        "jobs": state.parts.iter().map(|p| json!({"arn": p.arn, "status": p.status})).collect::<Vec<_>>(),
    }))
}

/// Collects the batch under its collection claim: a poll and an event that
/// arrive together collect once.
async fn collect_claimed(
    services: &Services,
    store: &WorkStore,
    state: SubmittedBatch,
    request_id: &str,
    deadline: &Deadline,
) -> Result<SubmittedBatch, RelayError> {
    let ledger = store.ledger();
    let id = format!("{}/collection", state.job_id);
    let guard = Guard::new(&ledger, services.sinks(), &id, request_id, *deadline);
    let batch_id = state.job_id.clone();
    let unchanged = state.clone();
    let collected = guard
        .run(
            || async {
                Ok(store
                    .read_batch_jobs(&batch_id)
                    .await?
                    .is_some_and(|s| s.collected))
            },
            |collected: &bool| *collected,
            |collected| async move {
                if collected {
                    return Ok(SubmittedBatch {
                        collected: true,
                        ..state
                    });
                }
                let mut state =
                    collect::collect(services, store, state, request_id, deadline).await?;
                state.collected = true;
                store.write_batch_jobs(&state).await?;
                Ok(state)
            },
        )
        .await;
    match collected {
        Ok(state) => Ok(state),
        // Another invocation is collecting it now.
        Err(GuardError::Busy(_)) => Ok(unchanged),
        Err(GuardError::Ledger(err) | GuardError::Run(err)) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check schedule's input and Bedrock's state-change events wake the
    /// batch-job mode; a job (even one with a `source` field) or an event of
    /// another kind does not.
    #[test]
    fn only_the_check_and_bedrocks_job_events_are_batch_job_inputs() {
        let check = Payload::Json(json!({"relay": "check-batch-jobs"}));
        assert!(matches!(trigger(&check), Some(Trigger::Check)));
        let change = Payload::Json(json!({
            "source": "aws.bedrock", "detail-type": "Batch Inference Job State Change",
            "account": "111111111111", "detail": {}}));
        assert!(matches!(trigger(&change), Some(Trigger::StateChange(_))));
        for other in [
            json!({"relay": "something-else"}),
            json!({"source": "aws.bedrock", "detail-type": "Model Invocation"}),
            json!({"source": "com.example", "detail-type": "Batch Inference Job State Change"}),
            json!({"prompt": "hi", "source": "aws.bedrock"}),
        ] {
            assert!(trigger(&Payload::Json(other.clone())).is_none(), "{other}");
        }
    }

    /// The sample inputs in `events/` are what the function takes them for:
    /// the check schedule's input, Bedrock's state-change event (whose detail
    /// parses and names its account in the ARN), and a nightly batch that is
    /// a job, not a batch-job input.
    #[test]
    fn the_sample_events_are_recognised() {
        let read = |text: &str| Payload::Json(serde_json::from_str(text).expect("JSON"));
        let check = read(include_str!("../../events/batch-job-check.json"));
        assert!(matches!(trigger(&check), Some(Trigger::Check)));
        let change = read(include_str!("../../events/batch-job-state-change.json"));
        let Some(Trigger::StateChange(event)) = trigger(&change) else {
            panic!("not a state change");
        };
        let detail: JobStateChange =
            serde_json::from_value(event["detail"].clone()).expect("detail");
        assert_eq!(detail.arn_account(), Some("111111111111"));
        assert_eq!(event["account"], "111111111111");
        let nightly = read(include_str!("../../events/nightly-batch-job-event.json"));
        assert!(trigger(&nightly).is_none());
    }

    /// A job id becomes a tag value Bedrock accepts: characters outside the
    /// tag alphabet are replaced, and it is cut at 256.
    #[test]
    fn tag_values_keep_to_the_tag_alphabet_and_length() {
        assert_eq!(tag_value("nightly/2026-12-01"), "nightly/2026-12-01");
        assert_eq!(tag_value("a#b*c"), "a_b_c");
        assert_eq!(tag_value(&"x".repeat(300)).len(), 256);
    }
}
