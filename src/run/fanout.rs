//! The fan-out run mode: a batch larger than one chunk is planned here, not
//! run. The invocation that receives it cuts the items into chunks of
//! `RELAY_CHUNK_ITEMS` (streaming an `items_from` object once; staging
//! inline items as JSON Lines first), writes the plan to the work store,
//! sends one message per chunk to the work queue and returns. The chunks run
//! in [`super::chunk`], on as many instances as the SQS event source allows.
//!
//! Planning is claimed like any job, so an event delivered twice fans out
//! once: the second delivery finds the batch dispatched. A planner that dies
//! after writing the plan leaves it for the retry, which sends every chunk
//! message again; a chunk delivered twice runs once (see [`super::chunk`]).

use std::sync::Arc;

use serde_json::{json, Value};

use super::batch;
use super::batch_job;
use super::guarded::Guard;
use super::outcome;
use super::plan::Plan;
use super::Services;
use crate::config::FanOut;
use crate::documents;
use crate::domain::batch_job::{ModeChoice, RunMode};
use crate::domain::chunks::{ChunkRange, ItemsObject, LineCutter, ModeRecord};
use crate::domain::deadline::Deadline;
use crate::error::RelayError;
use crate::work::{WorkQueue, WorkStore};

/// Plans a batch over several chunks, or runs it here when it fits in one;
/// a batch that runs as Bedrock batch jobs is planned the same way.
pub(crate) async fn run(
    services: &Services,
    mut plan: Plan<'_>,
    fan_out: &FanOut,
    request_id: &str,
    deadline: &Deadline,
) -> Result<Value, RelayError> {
    // Inline items are counted now: a batch of one chunk that runs
    // on-demand runs here.
    if let Some(count) = plan.job.items.as_ref().map(Vec::len) {
        match plan.choose_mode(services, count) {
            Ok(choice) if choice.mode == RunMode::OnDemand && count <= fan_out.chunk_items => {
                plan.mode_reason = Some(choice.reason);
                return batch::run(services, plan, request_id, deadline).await;
            }
            Ok(_) => {}
            Err(err) => {
                return outcome::fail(services, plan.record, &plan.delivery, err, &Arc::default())
                    .await
            }
        }
    }
    let store = WorkStore::new(services.sinks(), &fan_out.store);
    let job_id = plan.resolved.id.clone();
    // A redelivery of a batch already planned answers from its plan,
    // without streaming the items again.
    if let Ok(true) = store.is_dispatched(&job_id).await {
        if let Ok(Some(frozen)) = store.read_plan(&job_id).await {
            if let Ok(Some(state)) = store.read_batch_jobs(&job_id).await {
                return Ok(batch_job::submitted(&plan, &frozen, &state));
            }
            return Ok(planned(&plan, &frozen));
        }
    }
    // Cut before claiming: a batch that fits in one chunk runs here, under
    // the batch's own claim, and the cut is a read anyone may repeat.
    let cut = cut(services, &store, &mut plan, fan_out.chunk_items)
        .await
        .and_then(|cut| {
            let choice =
                plan.choose_mode(services, cut.as_ref().map_or(0, |(items, _)| items.total))?;
            Ok((cut, choice))
        });
    let (cut, choice) = match cut {
        Ok(cut) => cut,
        Err(err) => {
            return outcome::fail(services, plan.record, &plan.delivery, err, &Arc::default()).await
        }
    };
    let (items, chunks) = match cut {
        Some((items, chunks)) if chunks.len() > 1 || choice.mode == RunMode::BatchJob => {
            (items, chunks)
        }
        _ => {
            plan.mode_reason = Some(choice.reason);
            return batch::run(services, plan, request_id, deadline).await;
        }
    };
    let ledger = store.ledger();
    let planning = WorkStore::planning_id(&job_id);
    let guard = Guard::new(&ledger, services.sinks(), &planning, request_id, *deadline);
    let queue = WorkQueue::new(fan_out.queue.clone());
    let planned = Planned {
        items,
        chunks,
        choice,
    };
    let result = guard
        .run(
            || async { Ok(store.is_dispatched(&job_id).await?) },
            |dispatched: &bool| *dispatched,
            |dispatched| {
                dispatch(
                    services, &store, &queue, &plan, planned, dispatched, request_id, deadline,
                )
            },
        )
        .await;
    // Nothing in planning writes a record of its own: every failure gets one.
    outcome::settle(services, &plan, result, |_| true).await
}

/// What planning found: the items object, its chunks and the mode.
struct Planned {
    items: ItemsObject,
    chunks: Vec<ChunkRange>,
    choice: ModeChoice,
}

/// The items object and its chunks; `None` for a job without items.
async fn cut(
    services: &Services,
    store: &WorkStore,
    plan: &mut Plan<'_>,
    per_chunk: usize,
) -> Result<Option<(ItemsObject, Vec<ChunkRange>)>, RelayError> {
    let max_items = services.config().max_items;
    let job_id = plan.resolved.id.as_str();
    if let Some(items) = plan.job.items.take() {
        batch::check_item_count(items.len(), max_items)?;
        let mut body = Vec::with_capacity(items.len() * 64);
        for item in &items {
            serde_json::to_writer(&mut body, item).map_err(|err| {
                crate::domain::job::JobError::field(
                    "items",
                    format!("an item does not serialise: {err}"),
                )
            })?;
            body.push(b'\n');
        }
        let mut cutter = LineCutter::new(per_chunk);
        cutter.feed(&body);
        let chunks = cutter.finish();
        let etag = store.stage_items(job_id, body).await?;
        let total = items.len();
        return Ok(Some((
            ItemsObject {
                uri: store.staged_items_uri(job_id),
                etag,
                total,
                staged: true,
            },
            chunks,
        )));
    }
    let Some(uri) = plan.job.items_from.clone() else {
        return Ok(None);
    };
    let (etag, chunks, total) =
        documents::cut_items(services.sinks().s3_client(), &uri, per_chunk, max_items).await?;
    Ok(Some((
        ItemsObject {
            uri,
            etag,
            total,
            staged: false,
        },
        chunks,
    )))
}

/// [`run`] once planning is claimed: writes the plan (or finds the one an
/// earlier planner wrote), then sends every chunk message, or submits the
/// batch's Bedrock batch jobs.
#[allow(clippy::too_many_arguments)]
async fn dispatch(
    services: &Services,
    store: &WorkStore,
    queue: &WorkQueue,
    plan: &Plan<'_>,
    found: Planned,
    already_dispatched: bool,
    request_id: &str,
    deadline: &Deadline,
) -> Result<Value, RelayError> {
    let job_id = &plan.resolved.id;
    let Planned {
        items,
        chunks,
        choice,
    } = found;
    let mut frozen = plan.freeze(items, chunks, request_id).map_err(|err| {
        crate::domain::job::JobError::field(".", format!("the job does not serialise: {err}"))
    })?;
    frozen.mode = Some(ModeRecord {
        mode: match choice.mode {
            RunMode::OnDemand => "on-demand",
            RunMode::BatchJob => "batch-job",
        }
        .into(),
        reason: choice.reason.clone(),
    });
    // The plan in force is the first one written: a retry sends its chunks.
    let frozen = store.write_plan(&frozen).await?;
    let batch_jobs = frozen.mode.as_ref().is_some_and(|m| m.mode == "batch-job");
    if batch_jobs {
        // Submitting again finds the jobs an earlier planner submitted.
        let state = batch_job::submit(services, store, plan, &frozen, &choice, deadline).await?;
        if !already_dispatched {
            store.mark_dispatched(job_id).await?;
        }
        return Ok(batch_job::submitted(plan, &frozen, &state));
    }
    if !already_dispatched {
        queue
            .send_chunks(services.sinks(), job_id, 0..frozen.chunks.len())
            .await?;
        store.mark_dispatched(job_id).await?;
        tracing::info!(
            items = frozen.items.total,
            chunks = frozen.chunks.len(),
            "batch planned: its chunks are on the work queue"
        );
    }
    Ok(planned(plan, &frozen))
}

/// The planner's answer.
fn planned(plan: &Plan<'_>, frozen: &crate::domain::chunks::BatchPlan) -> Value {
    json!({
        "job_id": plan.resolved.id,
        "status": "planned",
        "mode": "fan-out",
        "items": frozen.items.total,
        "chunks": frozen.chunks.len(),
        "planned_at": frozen.planned_at,
        "model": plan.resolved.model,
        "reason": frozen.mode.as_ref().map(|m| m.reason.as_str()),
    })
}
