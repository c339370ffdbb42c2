//! The batch run mode: one job run once per item of `items` or `items_from`,
//! a bounded number at a time, with one result line per item in input order.
//!
//! A batch is deadline-aware: an item is started only while the time left
//! (less the reserve kept to save results) can hold the model's slowest
//! recent answer. Items are sent through a per-account pacer (see
//! [`crate::scheduling`]) so that a batch uses its quota without storms of
//! throttles. Items not started are `pending`; their progress is saved and the
//! invocation ends with a retryable `BatchIncomplete`, so Lambda's retry picks
//! up where this one stopped. Items that already succeeded, in this or an
//! earlier delivery of the same event, are never sent to the model again (see
//! [`crate::ledger`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::guarded::Guard;
use super::outcome::{self, MetricScope};
use super::plan::Plan;
use super::prepare::{self, prepare, DocumentSource};
use super::Services;
use crate::bedrock::BedrockError;
use crate::destination::ItemLines;
use crate::documents::{self, Document};
use crate::domain::deadline::Deadline;
use crate::domain::job::{is_template, Job, JobError};
use crate::domain::record::{ErrorRecord, ItemRecord, Status};
use crate::error::RelayError;
use crate::observe::metrics::CallStats;
use crate::scheduling::Pace;

/// Largest `items_from` object read: a JSON Lines file of this size holds far
/// more items than one invocation can run.
const MAX_ITEMS_FILE_BYTES: usize = 64 * 1024 * 1024;

/// How one attempt at a batch ended, counting the items settled before it
/// (`already_done`: not run again) by how they ended.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    succeeded: usize,
    /// Answered by the guardrail instead of the model (settled, not failed).
    blocked: usize,
    failed: usize,
    retryable: usize,
    pending: usize,
    already_done: usize,
}

impl Tally {
    /// Counts this attempt's item results and the `done` lines read back.
    fn of(fresh: &[ItemRecord], done: &BTreeMap<usize, Value>) -> Self {
        let mut tally = Self {
            already_done: done.len(),
            ..Self::default()
        };
        for line in done.values() {
            match line.get("status").and_then(Value::as_str) {
                Some("succeeded") => tally.succeeded += 1,
                Some("blocked") => tally.blocked += 1,
                _ => tally.failed += 1,
            }
        }
        for item in fresh {
            match (&item.status, &item.error) {
                (Status::Succeeded, _) => tally.succeeded += 1,
                (Status::Blocked, _) => tally.blocked += 1,
                (Status::Pending, _) => tally.pending += 1,
                (Status::Failed, Some(error)) if error.retryable => tally.retryable += 1,
                (Status::Failed, _) => tally.failed += 1,
            }
        }
        tally
    }

    /// Items this attempt leaves for a retry of the event.
    fn unsettled(&self) -> usize {
        self.pending + self.retryable
    }
}

/// Runs a planned batch: the items not yet done, `RELAY_MAX_CONCURRENCY` at
/// a time, under the batch's claim.
pub(crate) async fn run(
    services: &Services,
    mut plan: Plan<'_>,
    request_id: &str,
    deadline: &Deadline,
) -> Result<Value, RelayError> {
    let sinks = services.sinks();
    let job_id = plan.resolved.id.as_str();
    let items = match batch_items(services, &mut plan.job).await {
        Ok(items) => items,
        Err(err) => {
            return outcome::fail(services, plan.record, &plan.delivery, err, &Arc::default()).await
        }
    };
    let guard = Guard::new(&plan.delivery.ledger, sinks, job_id, request_id, *deadline);
    let result = guard
        .run(
            || async { Ok(plan.delivery.ledger.settled_items(sinks, job_id).await?) },
            |done: &BTreeMap<usize, Value>| done.len() >= items.len(),
            |done| run_claimed(services, &plan, &items, done, request_id, deadline),
        )
        .await;
    // A batch whose lines could not be written ends without its record.
    outcome::settle(services, &plan, result, |err| {
        matches!(err, RelayError::Destination(_))
    })
    .await
}

/// The batch's documents when every item has the same ones (none is a
/// template): read once for all of them.
pub(super) async fn shared_documents(
    services: &Services,
    job: &Job,
) -> Result<Option<Vec<Document>>, RelayError> {
    match job.documents.as_deref() {
        Some(uris) if !uris.is_empty() && !uris.iter().any(|u| is_template(u)) => {
            Ok(Some(prepare::load(services, uris, 1).await?))
        }
        _ => Ok(None),
    }
}

/// [`run`] once the batch is claimed: runs the items not done.
async fn run_claimed(
    services: &Services,
    plan: &Plan<'_>,
    items: &[Item],
    done: BTreeMap<usize, Value>,
    request_id: &str,
    deadline: &Deadline,
) -> Result<Value, RelayError> {
    let job_id = plan.resolved.id.clone();
    let concurrency = services.config().max_concurrency;
    let to_run: Vec<usize> = (0..items.len()).filter(|i| !done.contains_key(i)).collect();
    tracing::info!(
        items = items.len(),
        already_done = items.len() - to_run.len(),
        concurrency,
        "batch started"
    );

    // Documents every item shares are read once and held once; the rest are
    // read per item. A shared document that cannot be read fails the batch.
    let shared = match to_run.is_empty() {
        true => None,
        false => match shared_documents(services, &plan.job).await {
            Ok(shared) => shared,
            Err(err) => {
                let record = plan.record.clone();
                return outcome::fail(services, record, &plan.delivery, err, &Arc::default()).await;
            }
        },
    };
    let shared = shared.as_deref();

    // Unordered: an item held up by throttling must not stop the next
    // ones from starting; the results are put back in input order below.
    let mut fresh: Vec<ItemRecord> = stream::iter(to_run)
        .map(|index| {
            run_item(
                services,
                plan,
                index,
                &items[index],
                shared,
                request_id,
                deadline,
            )
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    fresh.sort_by_key(|item| item.index);

    let mut tally = Tally::of(&fresh, &done);
    let lines = ItemLines {
        job_id: job_id.clone(),
        total: items.len(),
        done,
        fresh,
        incomplete: tally.pending > 0,
    };
    let delivery = &plan.delivery;
    let written = match services
        .sinks()
        .write_items(&delivery.destination, &delivery.group, lines, deadline)
        .await
    {
        Ok(written) => written,
        Err(undelivered) => {
            // What reached the destination is remembered, so the retry this
            // error asks for does not send it again.
            if let Err(err) = delivery
                .ledger
                .remember(services.sinks(), &undelivered.sent)
                .await
            {
                tracing::warn!(job_id = %job_id, "the results sent before the failure were not remembered; a retry may send them again: {err}");
            }
            return Err(undelivered.error.into());
        }
    };
    delivery
        .ledger
        .remember(services.sinks(), &written.results)
        .await?;
    // Delivered as failures: too large for the destination, nowhere to spill.
    tally.succeeded -= written.undeliverable.len().min(tally.succeeded);
    tally.failed += written.undeliverable.len();
    let written = written.reference;
    tracing::info!(
        succeeded = tally.succeeded,
        failed = tally.failed + tally.retryable,
        pending = tally.pending,
        already_done = tally.already_done,
        results = %written,
        "batch attempt finished"
    );

    if tally.unsettled() > 0 {
        return Err(RelayError::BatchIncomplete {
            job_id,
            total: items.len(),
            settled: items.len() - tally.unsettled(),
            pending: tally.pending,
            retryable: tally.retryable,
            progress: written,
        });
    }
    Ok(json!({
        "job_id": job_id,
        "status": if tally.failed == 0 { "succeeded" } else { "partial" },
        "items": items.len(),
        "succeeded": tally.succeeded,
        "blocked": tally.blocked,
        "failed": tally.failed,
        "already_done": tally.already_done,
        "record": written,
        "model": plan.resolved.model,
        "mode": "on-demand",
        "reason": plan.mode_reason,
    }))
}

/// One item of a batch: its value, or, for an `items_from` line that is not
/// one, the error that fails that item (and only it).
pub(super) type Item = Result<Value, ErrorRecord>;

/// The batch's items: inline (taken out of the job, which each item's run
/// clones: a job holding every item would make each clone cost the whole
/// batch), or read from the `items_from` JSON Lines object.
async fn batch_items(services: &Services, job: &mut Job) -> Result<Vec<Item>, RelayError> {
    let max_items = services.config().max_items;
    let items: Vec<Item> = match (job.items.take(), &job.items_from) {
        (Some(items), _) => items.into_iter().map(Ok).collect(),
        (None, Some(uri)) => documents::load_items(
            services.sinks().s3_client(),
            uri,
            max_items,
            MAX_ITEMS_FILE_BYTES,
        )
        .await?
        .into_iter()
        .map(|line| line.map_err(|err| RelayError::from(err).to_record()))
        .collect(),
        (None, None) => Vec::new(),
    };
    check_item_count(items.len(), max_items)?;
    Ok(items)
}

/// Refuses a batch over `RELAY_MAX_ITEMS`.
pub(super) fn check_item_count(count: usize, max_items: usize) -> Result<(), JobError> {
    if count > max_items {
        return Err(JobError::field(
            "items",
            format!(
                "{count} items, over the limit of {max_items} (RELAY_MAX_ITEMS); split the batch into several jobs"
            ),
        ));
    }
    Ok(())
}

/// Makes item `index` ready for its call, as every mode sends it: its
/// documents read and its body rendered with the item in scope. An item that
/// cannot be made ready is its failed line.
pub(super) async fn prepare_item(
    services: &Services,
    plan: &Plan<'_>,
    index: usize,
    item: &Item,
    shared: Option<&[Document]>,
) -> Result<crate::domain::job::ResolvedJob, Box<ItemRecord>> {
    let job_id = &plan.resolved.id;
    let model = &plan.resolved.model;
    let failed = |error| Box::new(ItemRecord::failed(job_id, index, None, Some(model), error));
    let item = item.as_ref().map_err(|error| failed(error.clone()))?;
    let scope = plan.scope.with_item(item);
    let mut job = plan.job.clone();
    services
        .renderer()
        .render_documents(&mut job, &scope)
        .map_err(|err| failed(RelayError::from(err).to_record()))?;
    let source = match shared {
        Some(documents) => DocumentSource::Shared(documents),
        None => DocumentSource::Own {
            at_once: services.config().max_concurrency,
        },
    };
    prepare(services, job, scope, job_id, source)
        .await
        .map_err(|err| failed(err.to_record()))
}

/// Runs one item, unless too little time is left to finish it.
pub(super) async fn run_item(
    services: &Services,
    plan: &Plan<'_>,
    index: usize,
    item: &Item,
    shared: Option<&[Document]>,
    request_id: &str,
    deadline: &Deadline,
) -> ItemRecord {
    let job_id = &plan.resolved.id;
    let caller = services.caller();
    // No time for any call: not worth reading the item's documents.
    if caller.budget(deadline).is_none() {
        return ItemRecord::pending(job_id, index);
    }
    let resolved = match prepare_item(services, plan, index, item, shared).await {
        Ok(resolved) => resolved,
        Err(failed) => return *failed,
    };

    let stats = Arc::new(CallStats::default());
    let (served_by, result) = caller
        .call_in_time(&resolved, &plan.pool, deadline, &stats, Pace::Item)
        .await;
    let scope = MetricScope::item(job_id, request_id);
    match result {
        Ok(reply) => {
            services.report().emit(
                scope,
                Some(&served_by.alias),
                Some(&resolved.model),
                None,
                Some(&reply),
                &stats,
            );
            ItemRecord::succeeded(
                job_id,
                index,
                served_by.to_record(),
                &resolved.model,
                &reply,
            )
            .with_calls(stats.attempts(), stats.throttled())
        }
        // Not sent: the deadline came first. The retry runs it.
        Err(BedrockError::Deadline { .. }) if stats.attempts() == 0 => {
            ItemRecord::pending(job_id, index)
        }
        Err(err) => {
            let err = RelayError::from(err);
            services.report().emit(
                scope,
                Some(&served_by.alias),
                Some(&resolved.model),
                Some(err.code()),
                None,
                &stats,
            );
            tracing::warn!(
                index,
                error_type = err.code(),
                "item failed: {}",
                err.log_text(services.config().log_content)
            );
            ItemRecord::failed(
                job_id,
                index,
                Some(served_by.to_record()),
                Some(&resolved.model),
                err.to_record(),
            )
            .with_calls(stats.attempts(), stats.throttled())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::record::ErrorRecord;

    fn item(index: usize, status: Status, retryable: Option<bool>) -> ItemRecord {
        let mut record = ItemRecord::pending("b", index);
        record.status = status;
        record.error = retryable.map(|retryable| ErrorRecord {
            kind: "X".into(),
            message: "x".into(),
            retryable,
        });
        record
    }

    /// Each item's result counts once, by status, the lines settled before
    /// this attempt included, and a failure's retryability decides whether
    /// the batch is left for a retry.
    #[test]
    fn a_tally_counts_each_outcome_and_what_is_left_for_a_retry() {
        let fresh = [
            item(0, Status::Succeeded, None),
            item(1, Status::Failed, Some(false)),
            item(2, Status::Failed, Some(true)),
            item(3, Status::Pending, None),
            item(4, Status::Succeeded, None),
        ];
        let done: BTreeMap<usize, Value> = (5..12)
            .map(|i| {
                let status = if i == 11 { "failed" } else { "succeeded" };
                (i, json!({"index": i, "status": status}))
            })
            .collect();
        let tally = Tally::of(&fresh, &done);
        assert_eq!(
            tally,
            Tally {
                succeeded: 8,
                blocked: 0,
                failed: 2,
                retryable: 1,
                pending: 1,
                already_done: 7
            }
        );
        assert_eq!(tally.unsettled(), 2);
        assert_eq!(
            Tally::of(&fresh[..2], &BTreeMap::new()).unsettled(),
            0,
            "settled, partial"
        );
    }

    /// A batch over the limit is refused naming the count, the limit and the fix.
    #[test]
    fn a_batch_over_the_item_limit_is_refused_with_the_fix() {
        assert!(check_item_count(10, 10).is_ok());
        let err = check_item_count(11, 10).expect_err("over").to_string();
        assert!(
            err.contains("11 items, over the limit of 10 (RELAY_MAX_ITEMS)"),
            "{err}"
        );
        assert!(err.contains("split the batch"), "{err}");
    }
}
