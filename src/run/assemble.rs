//! Assembly: once every chunk of a fanned-out batch is done, exactly one
//! invocation (the one whose claim on the batch's assembly is new) writes
//! the batch's final result and tells whoever listens.
//!
//! - To S3: the chunks' lines, in input order, as one `<prefix><id>.jsonl`
//!   (a multipart upload of the chunk files, never held whole), then
//!   `<prefix><id>.manifest.json`.
//! - Elsewhere: the item results already went out chunk by chunk; the
//!   manifest goes out as one more message, event or item.
//!
//! Then the `Bedrock Relay Batch Completed` event (detail: the manifest) to
//! `RELAY_EVENT_BUS` when set, and the manifest into the work store, which
//! marks the batch assembled. An assembly that fails is released and tried
//! again by the chunk's next receive; every step may be repeated.

use serde_json::Value;

use super::guarded::{Guard, GuardError};
use super::plan::Plan;
use super::Services;
use crate::destination::multipart::ObjectWriter;
use crate::destination::{retry_while_unavailable, DestinationError, DestinationSpec, Outgoing};
use crate::domain::chunks::BatchPlan;
use crate::domain::deadline::Deadline;
use crate::domain::manifest::{Manifest, BATCH_COMPLETED_DETAIL_TYPE};
use crate::error::RelayError;
use crate::work::WorkStore;

/// Assembles the batch if the chunk just done was its last.
pub(crate) async fn after_chunk(
    services: &Services,
    plan: &Plan<'_>,
    store: &WorkStore,
    frozen: &BatchPlan,
    request_id: &str,
    deadline: &Deadline,
) -> Result<(), RelayError> {
    let batch_id = frozen.job_id.as_str();
    let done = store.chunks_done(batch_id, frozen.chunks.len()).await?;
    if done < frozen.chunks.len() {
        return Ok(());
    }
    let ledger = store.ledger();
    let assembly = WorkStore::assembly_id(batch_id);
    let guard = Guard::new(&ledger, services.sinks(), &assembly, request_id, *deadline);
    let assembled = guard
        .run(
            || async { Ok(store.manifest(batch_id).await?) },
            Option::is_some,
            |manifest| async move {
                match manifest {
                    Some(_) => Ok(()),
                    None => assemble(services, plan, store, frozen, deadline).await,
                }
            },
        )
        .await;
    match assembled {
        // Another invocation is assembling it now.
        Ok(()) | Err(GuardError::Busy(_)) => Ok(()),
        Err(GuardError::Ledger(err) | GuardError::Run(err)) => Err(err),
    }
}

/// Writes the batch's result, manifest and completion event.
async fn assemble(
    services: &Services,
    plan: &Plan<'_>,
    store: &WorkStore,
    frozen: &BatchPlan,
    deadline: &Deadline,
) -> Result<(), RelayError> {
    let batch_id = frozen.job_id.as_str();
    let summaries = store.summaries(batch_id, frozen.chunks.len()).await?;
    if summaries.len() < frozen.chunks.len() {
        return Err(DestinationError::Unavailable {
            destination: store.plan_uri(batch_id),
            message: format!(
                "{} of {} chunk summaries could be read",
                summaries.len(),
                frozen.chunks.len()
            ),
        }
        .into());
    }
    let sinks = services.sinks();
    let destination = &plan.delivery.destination;
    let results = match destination {
        DestinationSpec::S3(location) => {
            let s3 = sinks.s3_at(location);
            let key = location.batch_key_for(batch_id);
            retry_while_unavailable("assembling the batch", deadline, || {
                write_lines(store, frozen, &s3, &key)
            })
            .await?
        }
        other => format!("{other} ({} results)", frozen.items.total),
    };
    let mut manifest = Manifest::assemble(batch_id, &frozen.planned_at, &summaries, results);
    manifest.reason = frozen.mode.as_ref().map(|m| m.reason.clone());
    if let Some(state) = store.read_batch_jobs(batch_id).await? {
        manifest = manifest.with_batch_jobs(&state);
    }
    let body = serde_json::to_value(&manifest).map_err(|err| DestinationError::Unavailable {
        destination: destination.to_string(),
        message: format!("the manifest does not serialise: {err}"),
    })?;
    let manifest_at = retry_while_unavailable("writing the manifest", deadline, || {
        write_manifest(services, plan, batch_id, &body)
    })
    .await?;
    if let Some(bus) = &services.config().event_bus {
        let bus = DestinationSpec::EventBus(bus.clone().for_events(BATCH_COMPLETED_DETAIL_TYPE));
        let event = [outgoing(plan, batch_id, body.clone())];
        retry_while_unavailable("sending the completion event", deadline, || {
            sinks.send(&bus, &event)
        })
        .await?;
    }
    store.write_manifest(&manifest).await?;
    tracing::info!(
        items = manifest.counts.items,
        succeeded = manifest.counts.succeeded,
        failed = manifest.counts.failed,
        chunks = manifest.chunks,
        results = %manifest.results,
        manifest = %manifest_at,
        "batch assembled"
    );
    Ok(())
}

/// Copies every chunk's lines, in order, into one JSON Lines object.
async fn write_lines(
    store: &WorkStore,
    frozen: &BatchPlan,
    s3: &crate::destination::S3Destination,
    key: &str,
) -> Result<String, DestinationError> {
    let mut writer = ObjectWriter::new(s3, key.to_owned(), "application/x-ndjson");
    for chunk in 0..frozen.chunks.len() {
        let Some(lines) = store.chunk_lines(&frozen.job_id, chunk).await? else {
            return Err(DestinationError::Unavailable {
                destination: s3.location().uri_of(key),
                message: format!("chunk {chunk}'s lines are missing from the work store although it is marked done"),
            });
        };
        writer.append(&lines).await?;
    }
    writer.finish().await
}

/// The manifest to the destination: `<prefix><id>.manifest.json` in S3, one
/// more message, event or item elsewhere.
async fn write_manifest(
    services: &Services,
    plan: &Plan<'_>,
    batch_id: &str,
    body: &Value,
) -> Result<String, DestinationError> {
    let sinks = services.sinks();
    match &plan.delivery.destination {
        DestinationSpec::S3(location) => {
            let key = format!("{}{batch_id}.manifest.json", location.prefix);
            let text = serde_json::to_vec_pretty(body).unwrap_or_default();
            sinks.s3_at(location).put_json(&key, text).await
        }
        other => Ok(sinks
            .send(other, &[outgoing(plan, batch_id, body.clone())])
            .await?
            .join(",")),
    }
}

fn outgoing(plan: &Plan<'_>, batch_id: &str, body: Value) -> Outgoing {
    Outgoing {
        job_id: batch_id.to_owned(),
        index: None,
        group: plan.delivery.group.clone(),
        body,
    }
}
