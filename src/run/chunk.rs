//! The chunk run mode: an SQS event from the work queue, each record one
//! chunk of a batch [`super::fanout`] planned. A chunk runs like a batch in
//! one invocation (pool, pacer, deadline) over its own items only, and its
//! lines are saved in the work store as it goes, so an instance killed
//! mid-chunk loses at most the answers of the last [`PROGRESS_EVERY`] items
//! plus those in flight.
//!
//! The answer is a partial batch response: a chunk cut short by the deadline
//! (made visible again at once) or held up by retryable errors goes back to
//! the queue and resumes where it stopped; an item that succeeded is never
//! sent to the model again. A message that is not a chunk of a batch this
//! relay planned is refused with an error record and never run. The chunk
//! that finishes a batch assembles it ([`super::assemble`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use tracing::Instrument;

use super::assemble;
use super::batch::{self, Item};
use super::chunk_save::{finish, is_settled, progress_lines, save, serialise, Chunk};
use super::guarded::{Guard, GuardError};
use super::outcome;
use super::plan::{self, Delivery, Plan};
use super::Services;
use crate::config::FanOut;
use crate::documents;
use crate::domain::chunks::{BatchPlan, ChunkMessage, ChunkRange};
use crate::domain::deadline::Deadline;
use crate::domain::input::Payload;
use crate::domain::record::{ItemRecord, Record, Status};
use crate::error::RelayError;
use crate::work::{WorkQueue, WorkStore};

/// Item results between two saves of a chunk's progress: at most this many
/// answers (and those in flight) are asked again after a crash.
pub(crate) const PROGRESS_EVERY: usize = 50;

/// The SQS event in `payload`, if it is one.
pub(crate) fn sqs_event(payload: &Payload) -> Option<SqsEvent> {
    let Payload::Json(value) = payload else {
        return None;
    };
    let first = value.get("Records")?.as_array()?.first()?;
    if first.get("eventSource")?.as_str()? != "aws:sqs" {
        return None;
    }
    serde_json::from_value(value.clone()).ok()
}

/// What became of one message.
#[derive(Debug, PartialEq, Eq)]
enum Disposition {
    /// Done (or refused): delete it.
    Done,
    /// Return it to the queue, visible again after `Some(seconds)` or the
    /// queue's visibility timeout.
    Retry(Option<i32>),
}

/// Runs the chunks of an SQS event, one after another; answers with the
/// messages to return to the queue (`batchItemFailures`).
pub(crate) async fn run(
    services: &Arc<Services>,
    event: SqsEvent,
    request_id: &str,
    deadline: &Deadline,
) -> Result<Value, RelayError> {
    let mut failures = Vec::new();
    for message in &event.records {
        let message_id = message.message_id.clone().unwrap_or_default();
        let disposition = match services.config().fan_out.as_ref() {
            // A chunk not started for lack of time waits for the next instance.
            Some(_) if services.caller().budget(deadline).is_none() => Disposition::Retry(Some(0)),
            Some(fan_out) => run_message(services, fan_out, message, request_id, deadline).await,
            None => {
                let reason = "this function has no RELAY_WORK_QUEUE, so it plans no batches".into();
                refuse(services, &message_id, reason, request_id).await
            }
        };
        if let (Disposition::Retry(Some(seconds)), Some(fan_out), Some(receipt)) = (
            &disposition,
            services.config().fan_out.as_ref(),
            message.receipt_handle.as_deref(),
        ) {
            WorkQueue::new(fan_out.queue.clone())
                .return_in(services.sinks(), receipt, *seconds)
                .await;
        }
        if disposition != Disposition::Done {
            failures.push(json!({"itemIdentifier": message_id}));
        }
    }
    Ok(json!({"batchItemFailures": failures}))
}

/// Refuses a message: an error record to `RELAY_DESTINATION`, and the
/// message deleted (a retry would refuse it again).
async fn refuse(
    services: &Services,
    message_id: &str,
    reason: String,
    request_id: &str,
) -> Disposition {
    let err = RelayError::NotAChunk {
        message_id: message_id.to_owned(),
        reason,
    };
    let mut record = Record::started(request_id);
    record.job_id = crate::domain::job::sanitize_id(&format!("sqs-{message_id}"));
    let delivery = Delivery::fallback(services, request_id);
    // The error is in the record and the log; the message is done with.
    let _ = outcome::fail(services, record, &delivery, err, &Arc::default()).await;
    Disposition::Done
}

/// Runs one message's chunk.
async fn run_message(
    services: &Services,
    fan_out: &FanOut,
    message: &SqsMessage,
    request_id: &str,
    deadline: &Deadline,
) -> Disposition {
    let message_id = message.message_id.as_deref().unwrap_or_default();
    let queue = WorkQueue::new(fan_out.queue.clone());
    if !queue.is_source(message.event_source_arn.as_deref()) {
        let from = message.event_source_arn.as_deref().unwrap_or("no queue");
        let reason = format!("it came from `{from}`, not RELAY_WORK_QUEUE");
        return refuse(services, message_id, reason, request_id).await;
    }
    let parsed = ChunkMessage::parse(message.body.as_deref().unwrap_or_default());
    let chunk_message = match parsed {
        Ok(parsed) => parsed,
        Err(reason) => return refuse(services, message_id, reason, request_id).await,
    };
    let store = WorkStore::new(services.sinks(), &fan_out.store);
    let batch_id = chunk_message.batch.as_str();
    let frozen = match store.read_plan(batch_id).await {
        Ok(Some(frozen)) => frozen,
        Ok(None) => {
            let reason = format!("no batch `{batch_id}` was planned in RELAY_WORK_STORE");
            return refuse(services, message_id, reason, request_id).await;
        }
        Err(err) => {
            tracing::warn!(
                batch = batch_id,
                "the batch's plan could not be read; the chunk returns to the queue: {err}"
            );
            return Disposition::Retry(Some(fan_out.retry_after_secs));
        }
    };
    let Some(range) = frozen.chunks.get(chunk_message.chunk).copied() else {
        let reason = format!(
            "batch `{batch_id}` has {} chunks, not a chunk {}",
            frozen.chunks.len(),
            chunk_message.chunk
        );
        return refuse(services, message_id, reason, request_id).await;
    };
    let receives = message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(1);
    let chunk = Chunk {
        store: &store,
        frozen: &frozen,
        number: chunk_message.chunk,
        range,
        receives,
    };
    let span = tracing::info_span!("chunk", job_id = %batch_id, chunk = chunk.number, receives);
    run_chunk_message(services, fan_out, &chunk, request_id, deadline)
        .instrument(span)
        .await
}

/// [`run_message`] once the message is known to be a planned chunk.
async fn run_chunk_message(
    services: &Services,
    fan_out: &FanOut,
    chunk: &Chunk<'_>,
    request_id: &str,
    deadline: &Deadline,
) -> Disposition {
    let (store, frozen, range, receives) = (chunk.store, chunk.frozen, chunk.range, chunk.receives);
    let batch_id = frozen.job_id.as_str();
    // A plan that no longer checks out (a target, model or destination the
    // configuration has since removed) is not run: an error record says why,
    // and the message ends in the dead-letter queue, to redrive once the
    // configuration is back.
    let plan = match plan::thaw(services, frozen, request_id) {
        Ok(plan) => plan,
        Err(err) if err.is_retryable() => {
            return Disposition::Retry(Some(fan_out.retry_after_secs))
        }
        Err(err) => {
            let mut record = Record::started(request_id);
            record.job_id = WorkStore::chunk_id(batch_id, chunk.number);
            let delivery = Delivery::fallback(services, request_id);
            let _ = outcome::fail(services, record, &delivery, err, &Arc::default()).await;
            return Disposition::Retry(None);
        }
    };
    let ledger = store.ledger();
    let chunk_id = WorkStore::chunk_id(batch_id, chunk.number);
    let guard = Guard::new(&ledger, services.sinks(), &chunk_id, request_id, *deadline);
    let ended = guard
        .run(
            || async { Ok(ledger.settled_items(services.sinks(), &chunk_id).await?) },
            |done: &BTreeMap<usize, Value>| done.len() >= range.count,
            |done| run_chunk(services, &plan, chunk, done, request_id, deadline),
        )
        .await;
    match ended {
        Ok(()) => {
            match assemble::after_chunk(services, &plan, store, frozen, request_id, deadline).await
            {
                Ok(()) => Disposition::Done,
                Err(err) => {
                    tracing::warn!(error_type = err.code(), "the batch's assembly failed; the chunk returns to the queue to try again: {err}");
                    Disposition::Retry(Some(fan_out.retry_after_secs))
                }
            }
        }
        // Another instance has it: it comes back if that one does not finish.
        Err(GuardError::Busy(_)) => Disposition::Retry(None),
        Err(GuardError::Ledger(err) | GuardError::Run(err)) => {
            tracing::warn!(error_type = err.code(), "the chunk stopped: {err}");
            // Cut short by the deadline: the next instance may start at once.
            let cut_short = matches!(err_pending(&err), Some(pending) if pending > 0);
            if receives >= fan_out.max_receives {
                dead_letter_record(services, &plan, chunk, err).await;
            }
            Disposition::Retry(Some(if cut_short {
                0
            } else {
                fan_out.retry_after_secs
            }))
        }
    }
}

/// [`run_message`] once the chunk is claimed: runs the items not `done`.
async fn run_chunk(
    services: &Services,
    plan: &Plan<'_>,
    chunk: &Chunk<'_>,
    mut done: BTreeMap<usize, Value>,
    request_id: &str,
    deadline: &Deadline,
) -> Result<(), RelayError> {
    let range = chunk.range;
    let batch_id = plan.resolved.id.as_str();
    // A chunk's progress may be older than its first claim: a batch job's
    // collection saves what Bedrock answered, then sends the chunk for the
    // rest. One read, so what was answered is never asked again.
    if done.is_empty() {
        let chunk_id = WorkStore::chunk_id(batch_id, chunk.number);
        done = chunk
            .store
            .ledger()
            .settled_items(services.sinks(), &chunk_id)
            .await?;
    }
    let to_run: Vec<usize> = range.indexes().filter(|i| !done.contains_key(i)).collect();
    let items: Vec<Item> = match to_run.is_empty() {
        true => Vec::new(),
        false => read_items(services, chunk.frozen, &chunk.range).await?,
    };
    let shared = match to_run.is_empty() {
        true => None,
        false => batch::shared_documents(services, &plan.job).await?,
    };
    let shared = shared.as_deref();
    tracing::info!(
        items = range.count,
        already_done = done.len(),
        "chunk started"
    );

    let concurrency = services.config().max_concurrency;
    let mut results = stream::iter(to_run)
        .map(|index| {
            let item = &items[index - range.first];
            batch::run_item(services, plan, index, item, shared, request_id, deadline)
        })
        .buffer_unordered(concurrency);
    let mut fresh: Vec<ItemRecord> = Vec::new();
    let mut left: Vec<ItemRecord> = Vec::new();
    while let Some(item) = results.next().await {
        match is_settled(&item) {
            true => fresh.push(item),
            false => left.push(item),
        }
        if fresh.len() >= PROGRESS_EVERY {
            save(services, plan, chunk, &mut done, &mut fresh, deadline).await?;
        }
    }
    drop(results);
    save(services, plan, chunk, &mut done, &mut fresh, deadline).await?;
    if left.is_empty() {
        return finish(chunk, batch_id, done, deadline).await;
    }
    // What is left is kept in the progress too (read back as not settled),
    // so the chunk's last receive can say which items and why.
    let pending = left.iter().filter(|i| i.status == Status::Pending).count();
    let retryable = left.len() - pending;
    let mut lines = progress_lines(batch_id, &range, &done);
    for item in &left {
        if let Some(line) = lines.get_mut(item.index - range.first) {
            *line = serialise(item)?;
        }
    }
    let progress = chunk
        .store
        .write_chunk_lines(batch_id, chunk.number, &lines, false, deadline)
        .await?;
    Err(RelayError::BatchIncomplete {
        job_id: WorkStore::chunk_id(batch_id, chunk.number),
        total: range.count,
        settled: done.len(),
        pending,
        retryable,
        progress,
    })
}

/// Items not started, when `err` says a chunk was cut short.
fn err_pending(err: &RelayError) -> Option<usize> {
    match err {
        RelayError::BatchIncomplete { pending, .. } => Some(*pending),
        _ => None,
    }
}

/// The chunk's items, read from its range of the items object. An object
/// changed since planning fails every item of the chunk (`ItemsChanged`):
/// never run against items the plan did not cut.
pub(super) async fn read_items(
    services: &Services,
    frozen: &BatchPlan,
    range: &ChunkRange,
) -> Result<Vec<Item>, RelayError> {
    let items = &frozen.items;
    let read = documents::read_chunk(
        services.sinks().s3_client(),
        &items.uri,
        &items.etag,
        range,
        // Staged items are in the relay's own store; `items_from` is the
        // sender's object, whose owner the relay does not know.
        items
            .staged
            .then(|| services.sinks().bucket_owner())
            .flatten(),
    )
    .await;
    match read {
        Ok(lines) => Ok(lines
            .into_iter()
            .map(|line| line.map_err(|err| RelayError::from(err).to_record()))
            .collect()),
        Err(err) if !err.is_retryable() => {
            let error = RelayError::from(err).to_record();
            Ok(vec![Err(error); range.count])
        }
        Err(err) => Err(err.into()),
    }
}

/// The error record of a chunk on its last receive: which items are left,
/// and why, before SQS moves the message to the dead-letter queue. Read from
/// the chunk's saved progress, where unsettled items keep their last error.
async fn dead_letter_record(
    services: &Services,
    plan: &Plan<'_>,
    chunk: &Chunk<'_>,
    err: RelayError,
) {
    let batch_id = plan.resolved.id.as_str();
    let progress = chunk
        .store
        .chunk_progress(batch_id, chunk.number)
        .await
        .unwrap_or_default();
    let left: Vec<&Value> = progress
        .iter()
        .filter(|line| !crate::ledger::is_settled(line))
        .collect();
    let indexes: Vec<String> = left
        .iter()
        .filter_map(|line| line.get("index").and_then(Value::as_u64))
        .map(|i| i.to_string())
        .collect();
    let shown = indexes
        .iter()
        .take(20)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let unsettled = match indexes.len() {
        0 => "unknown (no progress was saved)".to_owned(),
        n if n > 20 => format!("{shown} and {} more", n - 20),
        _ => shown,
    };
    let cause = left
        .iter()
        .find_map(|line| {
            let error = line.get("error")?;
            Some(format!(
                "{}: {}",
                error.get("type")?.as_str()?,
                error.get("message")?.as_str()?
            ))
        })
        .unwrap_or_else(|| err.to_string());
    let err = RelayError::ChunkDeadLettered {
        job_id: batch_id.to_owned(),
        chunk: chunk.number,
        first: chunk.range.first,
        last: chunk.range.first + chunk.range.count.saturating_sub(1),
        receives: chunk.receives,
        unsettled,
        cause,
    };
    let mut record = plan.record.clone();
    record.job_id = WorkStore::chunk_id(batch_id, chunk.number);
    let _ = outcome::fail(services, record, &plan.delivery, err, &Arc::default()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::Queue;

    /// Only an event whose records come from SQS is a chunk event; a job
    /// that happens to have a `Records` field is not.
    #[test]
    fn only_sqs_records_are_a_chunk_event() {
        let sqs = json!({"Records": [{"messageId": "m1", "body": "{}", "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:222222222222:work", "attributes": {}}]});
        let event = sqs_event(&Payload::Json(sqs)).expect("an SQS event");
        assert_eq!(event.records[0].message_id.as_deref(), Some("m1"));
        for other in [
            json!({"Records": [{"eventSource": "aws:s3"}]}),
            json!({"Records": []}),
            json!({"prompt": "hi", "Records": "x"}),
        ] {
            assert!(
                sqs_event(&Payload::Json(other.clone())).is_none(),
                "{other}"
            );
        }
    }

    /// A message counts as the work queue's only when its source ARN names
    /// the same account and queue (and region, when the URL names one).
    #[test]
    fn only_the_work_queue_is_a_chunk_source() {
        let queue = WorkQueue::new(
            Queue::parse("https://sqs.us-east-1.amazonaws.com/222222222222/work").expect("url"),
        );
        assert!(queue.is_source(Some("arn:aws:sqs:us-east-1:222222222222:work")));
        for other in [
            None,
            Some("arn:aws:sqs:us-east-1:222222222222:other"),
            Some("arn:aws:sqs:us-east-1:333333333333:work"),
            Some("arn:aws:sqs:eu-west-1:222222222222:work"),
            Some("arn:aws:sns:us-east-1:222222222222:work"),
        ] {
            assert!(!queue.is_source(other), "{other:?}");
        }
        // A URL on a custom endpoint names no region: any region matches.
        let local =
            WorkQueue::new(Queue::parse("http://127.0.0.1:5000/222222222222/work").expect("url"));
        assert!(local.is_source(Some("arn:aws:sqs:us-east-1:222222222222:work")));
    }
}
