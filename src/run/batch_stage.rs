//! Staging a batch for Bedrock batch jobs: every item made ready exactly as
//! an on-demand item ([`batch::prepare_item`]) and written as one Converse
//! record to the staging location in account A, cut into parts (one job
//! each) by the records-per-job limit and before the input file size limit.
//! An item that cannot be a record is its failed line at once, saved in its
//! chunk's progress where the collection finds it.

use futures_util::stream::{self, StreamExt};

use super::batch::{self, Item};
use super::chunk_save::{save, Chunk};
use super::plan::Plan;
use super::{BatchSide, Services};
use crate::bedrock::batch_records;
use crate::destination::multipart::ObjectWriter;
use crate::domain::batch_job::{
    client_request_token, job_name, split_parts, timeout_hours, ModeChoice, ModeError,
};
use crate::domain::batch_state::{JobPart, SubmittedBatch, STATE_VERSION, WAITING};
use crate::domain::chunks::BatchPlan;
use crate::domain::deadline::Deadline;
use crate::domain::record::{ErrorRecord, ItemRecord};
use crate::error::RelayError;
use crate::work::{Staging, WorkStore};

/// Writes every part's records to the staging location.
pub(super) async fn stage(
    services: &Services,
    store: &WorkStore,
    plan: &Plan<'_>,
    frozen: &BatchPlan,
    choice: &ModeChoice,
    deadline: &Deadline,
) -> Result<SubmittedBatch, RelayError> {
    let config = services.config();
    // Batch jobs run in one account: the pool's first member.
    let target = plan.pool[0];
    let side = services
        .batch_side(&target.alias)
        .ok_or(RelayError::Mode(ModeError::NotConfigured))?;
    let batch_id = frozen.job_id.as_str();
    let shared = batch::shared_documents(services, &plan.job).await?;
    let shared = shared.as_deref();
    let concurrency = config.max_concurrency;
    let total = frozen.items.total;
    let max_bytes = config.batch_jobs.max_file_bytes;
    // Where a part must end for the records-per-job limit; the size limit
    // may end one sooner.
    let mut ends: std::collections::VecDeque<usize> =
        split_parts(total, config.batch_jobs.max_records)
            .into_iter()
            .map(|r| r.end)
            .collect();
    let mut parts = Vec::new();
    let mut open = OpenPart::new(&side.staging, batch_id, 0, 0);
    for (chunk, range) in frozen.chunks.iter().enumerate() {
        let items: Vec<Item> = super::chunk::read_items(services, frozen, range).await?;
        let mut rejected: Vec<ItemRecord> = Vec::new();
        let mut ready = stream::iter(range.indexes())
            .map(|index| {
                let item = &items[index - range.first];
                async move {
                    let prepared = batch::prepare_item(services, plan, index, item, shared).await;
                    (index, prepared)
                }
            })
            .buffered(concurrency);
        while let Some((index, prepared)) = ready.next().await {
            if ends.front().is_some_and(|end| index >= *end) {
                ends.pop_front();
                open = open.close_into(&mut parts, index, side).await?;
            }
            let record = prepared.and_then(|resolved| {
                batch_records::record(&resolved, index).map_err(|err| {
                    Box::new(ItemRecord::failed(
                        batch_id,
                        index,
                        None,
                        Some(&plan.resolved.model),
                        ErrorRecord {
                            kind: "InvalidJob".into(),
                            message: err.to_string(),
                            retryable: false,
                        },
                    ))
                })
            });
            match record {
                Ok(record) => {
                    let mut line = batch_records::line(&record).into_bytes();
                    line.push(b'\n');
                    if open.records > 0 && open.bytes + line.len() as u64 > max_bytes {
                        open = open.close_into(&mut parts, index, side).await?;
                    }
                    if line.len() as u64 > max_bytes {
                        return Err(crate::domain::job::JobError::field(
                            "items",
                            format!(
                                "item {index} is {} bytes as a batch record, over RELAY_BATCH_JOB_MAX_FILE_BYTES ({max_bytes}), the most Bedrock takes in one input file",
                                line.len()
                            ),
                        )
                        .into());
                    }
                    open.append(&line).await?;
                }
                Err(failed) => rejected.push(*failed),
            }
        }
        drop(ready);
        // An item that cannot be a record is settled now: its failed line
        // is delivered and kept in the chunk's progress, where the
        // collection finds it.
        if !rejected.is_empty() {
            let chunk = Chunk {
                store,
                frozen,
                number: chunk,
                range: *range,
                receives: 0,
            };
            let chunk_id = WorkStore::chunk_id(batch_id, chunk.number);
            let mut done = store
                .ledger()
                .settled_items(services.sinks(), &chunk_id)
                .await?;
            save(services, plan, &chunk, &mut done, &mut rejected, deadline).await?;
        }
    }
    open.close_into(&mut parts, total, side).await?;
    Ok(SubmittedBatch {
        version: STATE_VERSION,
        job_id: batch_id.to_owned(),
        target: target.alias.clone(),
        account: target.role.account.clone(),
        model: plan.resolved.model.clone(),
        reason: choice.reason.clone(),
        retry_on_demand: plan.resolved.retry_on_demand,
        complete_by_ms: plan.resolved.complete_within.map(|within| {
            crate::domain::deadline::now_epoch_ms()
                .saturating_add(u64::try_from(within.as_millis()).unwrap_or(u64::MAX))
        }),
        timeout_hours: timeout_hours(plan.resolved.complete_within),
        submitted_at: crate::domain::record::now_rfc3339(),
        parts,
        collected: false,
    })
}

/// The part being staged: its file, from item `first` on.
struct OpenPart<'s> {
    batch_id: String,
    number: usize,
    first: usize,
    records: usize,
    bytes: u64,
    uri: String,
    writer: ObjectWriter<'s>,
}

impl<'s> OpenPart<'s> {
    fn new(staging: &'s Staging, batch_id: &str, number: usize, first: usize) -> Self {
        let (key, uri) = staging.input(batch_id, number);
        Self {
            batch_id: batch_id.to_owned(),
            number,
            first,
            records: 0,
            bytes: 0,
            uri,
            writer: staging.writer(key),
        }
    }

    async fn append(&mut self, line: &[u8]) -> Result<(), RelayError> {
        self.writer.append(line).await?;
        self.records += 1;
        self.bytes += line.len() as u64;
        Ok(())
    }

    /// Ends this part before item `end`: its file is written and it joins
    /// `parts`, unless no record was staged in it (every item failed to
    /// become one, and their lines are saved already). The next part starts
    /// at `end`.
    async fn close_into(
        self,
        parts: &mut Vec<JobPart>,
        end: usize,
        side: &'s BatchSide,
    ) -> Result<OpenPart<'s>, RelayError> {
        let batch_id = self.batch_id.clone();
        let number = self.number;
        if self.records > 0 {
            self.writer.finish().await?;
            parts.push(JobPart {
                part: number,
                first: self.first,
                count: end - self.first,
                name: job_name(&batch_id, number),
                token: client_request_token(&batch_id, number),
                input_uri: self.uri,
                output_uri: side.staging.output_uri(&batch_id, number),
                arn: None,
                status: WAITING.into(),
                message: None,
                counts: None,
            });
            return Ok(OpenPart::new(&side.staging, &batch_id, number + 1, end));
        }
        Ok(OpenPart::new(&side.staging, &batch_id, number, end))
    }
}
