//! Batches: one job run once per item of `items` or `items_from`, a bounded
//! number at a time, with one result line per item in input order.
//!
//! A batch is deadline-aware: an item is started only while the time left
//! (less the reserve kept to save results) can hold the model's slowest
//! recent answer. Items are sent through a per-account pacer (see
//! `src/pacer.rs`) so that a batch uses its quota without storms of
//! throttles. Items not started are `pending`; their progress is saved and the
//! invocation ends with a retryable `BatchIncomplete`, so Lambda's retry picks
//! up where this one stopped. Items that already succeeded, in this or an
//! earlier delivery of the same event, are never sent to the model again (see
//! [`crate::ledger`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use lambda_runtime::Context;
use serde_json::{json, Value};

use crate::bedrock::BedrockError;
use crate::destination::{DestinationError, DestinationSpec, Outgoing, S3Destination};
use crate::documents::{self, Document};
use crate::domain::job::{Job, JobError, ResolvedJob};
use crate::domain::record::{ItemRecord, Record, Status};
use crate::domain::target::Target;
use crate::error::RelayError;
use crate::observe::metrics::CallStats;
use crate::relay::{attach_documents, Claimed, Delivery, MetricScope, Relay};
use crate::template::Scope;

/// Largest `items_from` object read: a JSON Lines file of this size holds far
/// more items than one invocation can run.
const MAX_ITEMS_FILE_BYTES: usize = 64 * 1024 * 1024;

/// A batch job, checked and ready to run.
pub(crate) struct BatchRun<'t> {
    /// The job with its head (id, destination, items_from) rendered.
    pub job: Job,
    /// Id, model and targets, settled.
    pub plan: ResolvedJob,
    /// The targets the items are spread over.
    pub pool: Vec<&'t Target>,
    /// The envelope, for templates.
    pub scope: Scope,
    /// Where results go.
    pub delivery: Delivery,
    /// The batch-level record, used if the batch fails as a whole.
    pub record: Record,
}

/// How one attempt at a batch ended.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    succeeded: usize,
    failed: usize,
    retryable: usize,
    pending: usize,
    already_done: usize,
}

impl Relay {
    /// Runs a batch: the items not yet done, `RELAY_MAX_CONCURRENCY` at a time.
    pub(crate) async fn run_batch(
        &self,
        batch: BatchRun<'_>,
        ctx: &Context,
    ) -> Result<Value, RelayError> {
        let job_id = batch.plan.id.clone();
        let items = match self.batch_items(&batch.job).await {
            Ok(items) => items,
            Err(err) => return self.fail(batch.record, &batch.delivery, err).await,
        };
        let succeeded = || async {
            batch
                .delivery
                .ledger
                .succeeded_items(&self.destinations, &job_id)
                .await
                .map_err(RelayError::from)
        };
        let (claim, done) = match self.claim(&batch.delivery, &job_id, ctx).await {
            Ok(Claimed::New(token)) => (Some(token), BTreeMap::new()),
            Ok(Claimed::Again(token)) => match succeeded().await {
                Ok(done) => (token, done),
                Err(err) => {
                    batch
                        .delivery
                        .ledger
                        .release(&self.destinations, token.as_ref())
                        .await;
                    return self.fail(batch.record, &batch.delivery, err).await;
                }
            },
            // Held elsewhere: a batch already done (redelivered before that
            // run's claim ran out) only rewrites its result, without a claim.
            Ok(Claimed::Elsewhere(busy)) => match succeeded().await {
                Ok(done) if done.len() >= items.len() => (None, done),
                Ok(_) => return Err(busy),
                Err(err) => return self.fail(batch.record, &batch.delivery, err).await,
            },
            Err(err) => return self.fail(batch.record, &batch.delivery, err).await,
        };
        let result = self.run_claimed_batch(&batch, items, done, ctx).await;
        if result.is_err() {
            batch
                .delivery
                .ledger
                .release(&self.destinations, claim.as_ref())
                .await;
        }
        match result {
            Err(err @ RelayError::Destination(_)) => {
                self.fail(batch.record, &batch.delivery, err).await
            }
            other => other,
        }
    }

    /// [`Relay::run_batch`] once the batch is claimed: runs the items not done.
    async fn run_claimed_batch(
        &self,
        batch: &BatchRun<'_>,
        items: Vec<Value>,
        done: BTreeMap<usize, Value>,
        ctx: &Context,
    ) -> Result<Value, RelayError> {
        let job_id = batch.plan.id.clone();
        let to_run: Vec<usize> = (0..items.len()).filter(|i| !done.contains_key(i)).collect();
        tracing::info!(
            items = items.len(),
            already_done = items.len() - to_run.len(),
            concurrency = self.config.max_concurrency,
            "batch started"
        );

        // Unordered: an item held up by throttling must not stop the next
        // ones from starting; the results are put back in input order below.
        let mut fresh: Vec<ItemRecord> = stream::iter(to_run)
            .map(|index| self.run_item(batch, index, &items[index], ctx))
            .buffer_unordered(self.config.max_concurrency)
            .collect()
            .await;
        fresh.sort_by_key(|item| item.index);

        let mut tally = Tally {
            already_done: done.len(),
            ..Tally::default()
        };
        for item in &fresh {
            match (&item.status, &item.error) {
                (Status::Succeeded, _) => tally.succeeded += 1,
                (Status::Pending, _) => tally.pending += 1,
                (Status::Failed, Some(error)) if error.retryable => tally.retryable += 1,
                (Status::Failed, _) => tally.failed += 1,
            }
        }
        let written = self
            .deliver_items(
                &batch.delivery,
                &job_id,
                items.len(),
                done,
                &fresh,
                tally.pending > 0,
                ctx,
            )
            .await?;
        tracing::info!(
            succeeded = tally.succeeded,
            failed = tally.failed + tally.retryable,
            pending = tally.pending,
            already_done = tally.already_done,
            results = %written,
            "batch attempt finished"
        );

        if tally.pending > 0 || tally.retryable > 0 {
            return Err(RelayError::BatchIncomplete {
                job_id,
                total: items.len(),
                settled: items.len() - tally.pending - tally.retryable,
                pending: tally.pending,
                retryable: tally.retryable,
                progress: written,
            });
        }
        Ok(json!({
            "job_id": job_id,
            "status": if tally.failed == 0 { "succeeded" } else { "partial" },
            "items": items.len(),
            "succeeded": tally.succeeded + tally.already_done,
            "failed": tally.failed,
            "already_done": tally.already_done,
            "record": written,
            "model": batch.plan.model,
        }))
    }

    /// The batch's items: inline, or read from the `items_from` JSON Lines object.
    async fn batch_items(&self, job: &Job) -> Result<Vec<Value>, RelayError> {
        let items = match (&job.items, &job.items_from) {
            (Some(items), _) => items.clone(),
            (None, Some(uri)) => {
                documents::load_items(
                    self.destinations.s3_client(),
                    uri,
                    self.config.max_items,
                    MAX_ITEMS_FILE_BYTES,
                )
                .await?
            }
            (None, None) => Vec::new(),
        };
        if items.len() > self.config.max_items {
            return Err(JobError::field(
                "items",
                format!(
                    "{} items, over the limit of {} (RELAY_MAX_ITEMS); split the batch into several jobs",
                    items.len(),
                    self.config.max_items
                ),
            )
            .into());
        }
        Ok(items)
    }

    /// Runs one item, unless too little time is left to finish it.
    async fn run_item(
        &self,
        batch: &BatchRun<'_>,
        index: usize,
        item: &Value,
        ctx: &Context,
    ) -> ItemRecord {
        let job_id = &batch.plan.id;
        // No time for any call: not worth reading the item's documents.
        if self.model_budget(ctx).is_none() {
            return ItemRecord::pending(job_id, index);
        }
        let failed = |err: RelayError| {
            ItemRecord::failed(
                job_id,
                index,
                None,
                Some(&batch.plan.model),
                err.to_record(),
            )
        };
        let (resolved, _documents) = match self.prepare_item(batch, item).await {
            Ok(prepared) => prepared,
            Err(err) => return failed(err),
        };

        let stats = Arc::new(CallStats::default());
        let (served_by, result) = self
            .call_in_time(&resolved, &batch.pool, ctx, &stats, true)
            .await;
        match result {
            Ok(reply) => {
                self.emit_metrics(
                    MetricScope::item(job_id, &ctx.request_id),
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
            }
            // Not sent: the deadline came first. The retry runs it.
            Err(BedrockError::Deadline { .. }) if stats.attempts() == 0 => {
                ItemRecord::pending(job_id, index)
            }
            Err(err) => {
                let err = RelayError::from(err);
                self.emit_metrics(
                    MetricScope::item(job_id, &ctx.request_id),
                    Some(&served_by.alias),
                    Some(&resolved.model),
                    Some(err.code()),
                    None,
                    &stats,
                );
                tracing::warn!(index, error_type = err.code(), "item failed: {err}");
                ItemRecord::failed(
                    job_id,
                    index,
                    Some(served_by.to_record()),
                    Some(&resolved.model),
                    err.to_record(),
                )
            }
        }
    }

    /// Renders the item's documents and body and loads its documents.
    async fn prepare_item(
        &self,
        batch: &BatchRun<'_>,
        item: &Value,
    ) -> Result<(ResolvedJob, Vec<Document>), RelayError> {
        let mut scope = batch.scope.with_item(item);
        let mut job = batch.job.clone();
        self.renderer.render_documents(&mut job, &scope)?;
        let documents = self.load_documents(&job).await?;
        if !documents.is_empty() {
            scope.documents = Some(documents.iter().map(Document::template_value).collect());
        }
        self.renderer.render_body(&mut job, &scope)?;
        let mut resolved = job.resolve(self.config.default_model.as_deref(), &batch.plan.id)?;
        resolved.id.clone_from(&batch.plan.id);
        attach_documents(&mut resolved, &documents)?;
        Ok((resolved, documents))
    }

    /// Delivers this attempt's item results. To S3: one JSON Lines object with
    /// every item in input order (earlier successes included) — the final
    /// `<id>.jsonl` once no item is pending, else `<id>.progress.jsonl`. To a
    /// message service or table: one result per item settled in this attempt.
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
    async fn deliver_items(
        &self,
        delivery: &Delivery,
        job_id: &str,
        total: usize,
        mut done: BTreeMap<usize, Value>,
        fresh: &[ItemRecord],
        incomplete: bool,
        ctx: &Context,
    ) -> Result<String, DestinationError> {
        let unserialisable = |err: serde_json::Error| DestinationError::Unavailable {
            destination: delivery.destination.to_string(),
            message: format!("an item result does not serialise: {err}"),
        };
        if let DestinationSpec::S3(location) = &delivery.destination {
            for item in fresh {
                done.insert(
                    item.index,
                    serde_json::to_value(item).map_err(unserialisable)?,
                );
            }
            let lines: Vec<Value> = (0..total)
                .map(|index| {
                    done.remove(&index).unwrap_or_else(|| {
                        serde_json::to_value(ItemRecord::pending(job_id, index))
                            .unwrap_or(Value::Null)
                    })
                })
                .collect();
            let key = if incomplete {
                location.progress_key_for(job_id)
            } else {
                location.batch_key_for(job_id)
            };
            let s3 = S3Destination::new(self.destinations.s3_client().clone(), location.clone());
            return self
                .until_delivered(ctx, || s3.write_lines(&key, &lines))
                .await;
        }
        let outgoing = fresh
            .iter()
            .filter(|item| item.status != Status::Pending)
            .map(|item| {
                Ok(Outgoing {
                    job_id: job_id.to_owned(),
                    index: Some(item.index),
                    group: delivery.group.clone(),
                    body: serde_json::to_value(item).map_err(unserialisable)?,
                })
            })
            .collect::<Result<Vec<_>, DestinationError>>()?;
        if !outgoing.is_empty() {
            self.destinations
                .send(&delivery.destination, &outgoing)
                .await?;
            delivery
                .ledger
                .remember(&self.destinations, &outgoing)
                .await?;
        }
        Ok(format!(
            "{} ({} results)",
            delivery.destination,
            outgoing.len()
        ))
    }
}
