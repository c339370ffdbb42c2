//! A chunk's results as they settle: delivered (to a destination other than
//! S3, where the assembled object is the delivery) and saved in the work
//! store, so a chunk resumes where it stopped; and finished, once every item
//! settled, as its final lines and summary. The chunk mode saves what its
//! model calls answer; the batch-job mode saves what a Bedrock batch job
//! answered, the same way.

use std::collections::BTreeMap;

use serde_json::Value;

use super::plan::Plan;
use super::Services;
use crate::destination::{DestinationSpec, ItemLines};
use crate::domain::chunks::{BatchPlan, ChunkRange};
use crate::domain::deadline::Deadline;
use crate::domain::manifest::{ChunkSummary, Counts};
use crate::domain::record::{ItemRecord, Status};
use crate::error::RelayError;
use crate::work::WorkStore;

/// One chunk of a planned batch, as a message delivered it.
pub(super) struct Chunk<'a> {
    pub(super) store: &'a WorkStore,
    pub(super) frozen: &'a BatchPlan,
    pub(super) number: usize,
    pub(super) range: ChunkRange,
    pub(super) receives: u64,
}

/// Whether an item's result is final: succeeded, or failed for good.
pub(super) fn is_settled(item: &ItemRecord) -> bool {
    match (&item.status, &item.error) {
        (Status::Succeeded | Status::Blocked, _) => true,
        (Status::Failed, Some(error)) => !error.retryable,
        _ => false,
    }
}

/// Delivers `fresh` (to a destination other than S3, where the assembled
/// object is the delivery) and saves the chunk's progress with them.
pub(super) async fn save(
    services: &Services,
    plan: &Plan<'_>,
    chunk: &Chunk<'_>,
    done: &mut BTreeMap<usize, Value>,
    fresh: &mut Vec<ItemRecord>,
    deadline: &Deadline,
) -> Result<(), RelayError> {
    if fresh.is_empty() {
        return Ok(());
    }
    fresh.sort_by_key(|item| item.index);
    let batch_id = plan.resolved.id.as_str();
    let delivery = &plan.delivery;
    let mut delivered = Vec::with_capacity(fresh.len());
    let mut failed = None;
    if matches!(delivery.destination, DestinationSpec::S3(_)) {
        for item in fresh.drain(..) {
            delivered.push((item.index, serialise(&item)?));
        }
    } else {
        let lines = ItemLines {
            job_id: batch_id.to_owned(),
            total: 0,
            done: BTreeMap::new(),
            fresh: std::mem::take(fresh),
            incomplete: false,
        };
        let sent = services
            .sinks()
            .write_items(&delivery.destination, &delivery.group, lines, deadline)
            .await;
        match sent {
            Ok(written) => delivered.extend(
                written
                    .results
                    .into_iter()
                    .filter_map(|o| o.index.map(|i| (i, o.body))),
            ),
            Err(undelivered) => {
                // What went out is kept, so it is not sent again.
                delivered.extend(
                    undelivered
                        .sent
                        .into_iter()
                        .filter_map(|o| o.index.map(|i| (i, o.body))),
                );
                failed = Some(undelivered.error);
            }
        }
    }
    done.extend(delivered);
    let lines = progress_lines(batch_id, &chunk.range, done);
    chunk
        .store
        .write_chunk_lines(batch_id, chunk.number, &lines, false, deadline)
        .await?;
    match failed {
        Some(err) => Err(err.into()),
        None => Ok(()),
    }
}

pub(super) fn serialise(item: &ItemRecord) -> Result<Value, RelayError> {
    serde_json::to_value(item).map_err(|err| {
        crate::destination::DestinationError::Unavailable {
            destination: "the work store".into(),
            message: format!("an item result does not serialise: {err}"),
        }
        .into()
    })
}

/// The chunk's lines so far: settled ones, the rest `pending`.
pub(super) fn progress_lines(
    batch_id: &str,
    range: &ChunkRange,
    done: &BTreeMap<usize, Value>,
) -> Vec<Value> {
    range
        .indexes()
        .map(|index| match done.get(&index) {
            Some(line) => line.clone(),
            None => {
                serde_json::to_value(ItemRecord::pending(batch_id, index)).unwrap_or(Value::Null)
            }
        })
        .collect()
}

/// Writes a chunk whose items all settled (`done`): its final lines, in
/// order, and its summary, which marks it done.
pub(super) async fn finish(
    chunk: &Chunk<'_>,
    batch_id: &str,
    mut done: BTreeMap<usize, Value>,
    deadline: &Deadline,
) -> Result<(), RelayError> {
    let lines: Vec<Value> = chunk
        .range
        .indexes()
        .filter_map(|i| done.remove(&i))
        .collect();
    chunk
        .store
        .write_chunk_lines(batch_id, chunk.number, &lines, true, deadline)
        .await?;
    let summary = ChunkSummary {
        chunk: chunk.number,
        counts: Counts::of_lines(&lines),
        receives: chunk.receives,
        finished_at: crate::domain::record::now_rfc3339(),
    };
    chunk.store.write_summary(batch_id, &summary).await?;
    tracing::info!(
        succeeded = summary.counts.succeeded,
        failed = summary.counts.failed,
        "chunk done"
    );
    Ok(())
}
