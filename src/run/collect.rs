//! Collecting a batch whose Bedrock batch jobs all ended: their output
//! (JSON Lines in no guaranteed order, read as it streams with RoleA's
//! credentials) is mapped by `recordId` back to the items and saved as the
//! batch's chunks, exactly as on-demand chunks save theirs
//! ([`super::chunk_save`]), so assembly, status and delivery are the same.
//!
//! Memory stays bounded: the chunks are taken in windows of
//! [`WINDOW_RECORDS`] records, and each window reads the output again,
//! keeping only its own records. A chunk whose every item settled is
//! finished here. A record Bedrock did not answer (a per-record error, or
//! none at all after an expired, stopped or failed job) runs on-demand when
//! the job's `retry_on_demand` is true (the default) and its
//! `complete_within` has not run out: its chunk goes to the work queue and
//! the chunk mode runs only what is left; otherwise it is a failed line. A collection cut short by the deadline is taken up by the
//! next check: finished chunks are not read again.

use std::collections::BTreeMap;
use std::ops::Range;

use tokio::io::AsyncBufReadExt;

use super::assemble;
use super::chunk_save::{finish, save, Chunk};
use super::plan::{self, Plan};
use super::{BatchSide, Services};
use crate::destination::DestinationError;
use crate::domain::batch_job::{parse_record_id, ModeError};
use crate::domain::batch_output::{OutputLine, RecordOutcome};
use crate::domain::batch_state::{JobPart, SubmittedBatch};
use crate::domain::chunks::BatchPlan;
use crate::domain::deadline::Deadline;
use crate::domain::features::validate_answer;
use crate::domain::record::{ErrorRecord, ItemRecord};
use crate::domain::target::TargetRecord;
use crate::error::RelayError;
use crate::work::{WorkQueue, WorkStore};

/// Records read into memory at once: one window of chunks.
pub(crate) const WINDOW_RECORDS: usize = 10_000;

/// Reads every ended job's output into the batch's chunks; sends the chunks
/// with records left to the work queue, or assembles the batch.
pub(super) async fn collect(
    services: &Services,
    store: &WorkStore,
    mut state: SubmittedBatch,
    request_id: &str,
    deadline: &Deadline,
) -> Result<SubmittedBatch, RelayError> {
    let batch_id = state.job_id.clone();
    let frozen =
        store
            .read_plan(&batch_id)
            .await?
            .ok_or_else(|| DestinationError::Unavailable {
                destination: store.plan_uri(&batch_id),
                message: "the batch's plan is missing from the work store".into(),
            })?;
    let plan = plan::thaw(services, &frozen, request_id)?;
    let side = services
        .batch_side(&state.target)
        .ok_or(RelayError::Mode(ModeError::NotConfigured))?;
    for part in &mut state.parts {
        if let (Some(id), true) = (part.bedrock_job_id(), part.status().has_output()) {
            part.counts = side.staging.counts(&part.output_uri, id).await?;
        }
    }
    store.write_batch_jobs(&state).await?;

    let served_by = services
        .config()
        .targets
        .iter()
        .find(|t| t.alias == state.target)
        .map(|t| t.to_record());
    let on_demand = state.runs_rest_on_demand(crate::domain::deadline::now_epoch_ms());
    let reader = Reader {
        on_demand,
        services,
        side,
        state: &state,
        plan: &plan,
        frozen: &frozen,
        store,
        served_by,
    };
    let (done, _) = store.chunk_numbers(&batch_id).await?;
    let mut left = Vec::new();
    let mut window: Vec<usize> = Vec::new();
    let mut records = 0;
    for (number, range) in frozen.chunks.iter().enumerate() {
        if done.contains(&number) {
            continue;
        }
        window.push(number);
        records += range.count;
        if records >= WINDOW_RECORDS {
            left.extend(
                reader
                    .window(&std::mem::take(&mut window), deadline)
                    .await?,
            );
            records = 0;
        }
    }
    if !window.is_empty() {
        left.extend(reader.window(&window, deadline).await?);
    }
    if left.is_empty() {
        assemble::after_chunk(services, &plan, store, &frozen, request_id, deadline).await?;
    } else {
        let Some(fan_out) = services.config().fan_out.as_ref() else {
            return Err(ModeError::NotConfigured.into());
        };
        tracing::info!(
            chunks = left.len(),
            "records Bedrock did not answer run on-demand: their chunks are on the work queue"
        );
        WorkQueue::new(fan_out.queue.clone())
            .send_chunks(services.sinks(), &batch_id, left)
            .await?;
    }
    Ok(state)
}

/// What reading a window needs.
struct Reader<'a> {
    /// Whether what Bedrock did not answer runs on-demand (else it fails).
    on_demand: bool,
    services: &'a Services,
    side: &'a BatchSide,
    state: &'a SubmittedBatch,
    plan: &'a Plan<'a>,
    frozen: &'a BatchPlan,
    store: &'a WorkStore,
    served_by: Option<TargetRecord>,
}

impl Reader<'_> {
    /// Collects the chunks `numbers` (consecutive); returns those with
    /// records left to run on-demand.
    async fn window(
        &self,
        numbers: &[usize],
        deadline: &Deadline,
    ) -> Result<Vec<usize>, RelayError> {
        let (Some(first), Some(last)) = (numbers.first(), numbers.last()) else {
            return Ok(Vec::new());
        };
        let span = self.frozen.chunks[*first].first
            ..self.frozen.chunks[*last].first + self.frozen.chunks[*last].count;
        let mut answers = BTreeMap::new();
        for part in &self.state.parts {
            if part.indexes().start < span.end && span.start < part.indexes().end {
                self.read_part(part, &span, &mut answers).await?;
            }
        }
        let batch_id = self.state.job_id.as_str();
        let mut left = Vec::new();
        for &number in numbers {
            if self.services.caller().budget(deadline).is_none() {
                return Err(RelayError::BatchIncomplete {
                    job_id: batch_id.to_owned(),
                    total: self.frozen.items.total,
                    settled: 0,
                    pending: self.frozen.items.total,
                    retryable: 0,
                    progress: self.store.plan_uri(batch_id),
                });
            }
            let range = self.frozen.chunks[number];
            let chunk = Chunk {
                store: self.store,
                frozen: self.frozen,
                number,
                range,
                receives: 0,
            };
            let chunk_id = WorkStore::chunk_id(batch_id, number);
            let mut done = self
                .store
                .ledger()
                .settled_items(self.services.sinks(), &chunk_id)
                .await?;
            let mut fresh = Vec::new();
            for index in range.indexes().filter(|i| !done.contains_key(i)) {
                match answers.remove(&index) {
                    Some(item) => fresh.push(item),
                    None if self.on_demand => {}
                    None => fresh.push(self.unanswered(index)),
                }
            }
            save(
                self.services,
                self.plan,
                &chunk,
                &mut done,
                &mut fresh,
                deadline,
            )
            .await?;
            if done.len() >= range.count {
                finish(&chunk, batch_id, done, deadline).await?;
            } else {
                left.push(number);
            }
        }
        Ok(left)
    }

    /// Reads one part's output files, keeping the records in `span` that
    /// settle here: answers, and per-record errors unless they run on-demand.
    async fn read_part(
        &self,
        part: &JobPart,
        span: &Range<usize>,
        answers: &mut BTreeMap<usize, ItemRecord>,
    ) -> Result<(), RelayError> {
        let Some(job) = part.bedrock_job_id() else {
            return Ok(());
        };
        if !part.status().has_output() {
            return Ok(());
        }
        let staging = &self.side.staging;
        for key in staging.output_files(&part.output_uri, job).await? {
            let Some(body) = staging.open(&key).await? else {
                continue;
            };
            let mut lines = tokio::io::BufReader::new(body.into_async_read()).lines();
            loop {
                let line =
                    lines
                        .next_line()
                        .await
                        .map_err(|err| DestinationError::Unavailable {
                            destination: staging.uri_of(&key),
                            message: format!("reading Bedrock's output failed: {err}"),
                        })?;
                let Some(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                let parsed = match OutputLine::parse(&line) {
                    Ok(parsed) => parsed,
                    Err(err) => {
                        tracing::warn!(file = %staging.uri_of(&key), "an output line was skipped: {err}");
                        continue;
                    }
                };
                let Some(index) = parse_record_id(&parsed.record_id) else {
                    tracing::warn!(record = %parsed.record_id, "an output record id is not one the relay wrote; skipped");
                    continue;
                };
                if !span.contains(&index) || !part.indexes().contains(&index) {
                    continue;
                }
                if let Some(item) = self.item(part, index, parsed.outcome) {
                    answers.insert(index, item);
                }
            }
        }
        Ok(())
    }

    /// The line of a record Bedrock answered; `None` for a per-record error
    /// that runs on-demand.
    fn item(&self, part: &JobPart, index: usize, outcome: RecordOutcome) -> Option<ItemRecord> {
        let batch_id = self.state.job_id.as_str();
        match outcome {
            RecordOutcome::Answered(mut reply) => Some(match &self.served_by {
                Some(_)
                    if reply.json.is_none()
                        && !reply.is_blocked()
                        && self.plan.job.output_schema.is_some() =>
                {
                    let schema = self.plan.job.output_schema.as_ref()?;
                    match validate_answer(schema, &reply.text) {
                        Ok(json) => {
                            reply.json = Some(json);
                            return self.item(part, index, RecordOutcome::Answered(reply));
                        }
                        // Asked again on-demand, where a second mismatch fails it.
                        Err(_) if self.on_demand => return None,
                        Err(mismatch) => ItemRecord::failed(
                            batch_id,
                            index,
                            self.served_by.clone(),
                            Some(&self.state.model),
                            ErrorRecord {
                                kind: "OutputInvalid".into(),
                                message: format!(
                                    "the answer batch job {} gave does not match the job's output_schema {mismatch}; make the schema easier to meet or the prompt clearer",
                                    part.arn.as_deref().unwrap_or(&part.name),
                                ),
                                retryable: false,
                            },
                        ),
                    }
                }
                Some(target) => ItemRecord::succeeded(
                    batch_id,
                    index,
                    target.clone(),
                    &self.state.model,
                    &reply,
                ),
                None => return None,
            }),
            RecordOutcome::Failed(_) if self.on_demand => None,
            RecordOutcome::Failed(error) => Some(ItemRecord::failed(
                batch_id,
                index,
                self.served_by.clone(),
                Some(&self.state.model),
                ErrorRecord {
                    kind: "BatchRecordFailed".into(),
                    message: format!(
                        "Bedrock's batch job {} answered this record with error {}: {}; {}",
                        part.arn.as_deref().unwrap_or(&part.name),
                        error.code,
                        error.message,
                        self.not_run_because()
                    ),
                    retryable: false,
                },
            )),
        }
    }

    /// Why a record Bedrock did not answer is not run on-demand.
    fn not_run_because(&self) -> &'static str {
        if self.state.retry_on_demand {
            "the batch's complete_within ran out before the jobs ended, so it was not run on-demand"
        } else {
            "retry_on_demand is false, so it was not run on-demand"
        }
    }

    /// The line of a record no job answered, when it is not run on-demand.
    fn unanswered(&self, index: usize) -> ItemRecord {
        let part = self
            .state
            .parts
            .iter()
            .find(|p| p.indexes().contains(&index));
        let why = part.map_or_else(
            || "no batch job held it".to_owned(),
            |p| {
                format!(
                    "batch job {} ended {}{} without answering it",
                    p.arn.as_deref().unwrap_or(&p.name),
                    p.status,
                    p.message
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                )
            },
        );
        ItemRecord::failed(
            &self.state.job_id,
            index,
            self.served_by.clone(),
            Some(&self.state.model),
            ErrorRecord {
                kind: "BatchRecordUnanswered".into(),
                message: format!("{why}; {}", self.not_run_because()),
                retryable: false,
            },
        )
    }
}
