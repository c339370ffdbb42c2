//! Where a fanned-out batch lives between invocations: the work store in S3
//! ([`WorkStore`], `RELAY_WORK_STORE`) and the work queue in SQS
//! ([`WorkQueue`], `RELAY_WORK_QUEUE`).
//!
//! Layout of one batch under the store's prefix, all written with the
//! function's own credentials and the bucket's expected owner:
//!
//! | key | written by | what |
//! |---|---|---|
//! | `<id>/plan.json` | the planner, once | the [`BatchPlan`] |
//! | `<id>/dispatched.json` | the planner | every chunk message was sent |
//! | `<id>/items.jsonl` | the planner | inline `items`, staged as JSON Lines |
//! | `<id>/chunk-000003.progress.jsonl` | the chunk, as it runs | its item lines so far |
//! | `<id>/chunk-000003.jsonl` | the chunk, at the end | its item lines, in order |
//! | `<id>/chunk-000003.done.json` | the chunk, at the end | its [`ChunkSummary`] |
//! | `<id>/manifest.json` | the assembler | the batch's [`Manifest`] |
//! | `_claims/<id>/...` | everyone | claims (see [`crate::ledger`]) |
//!
//! A chunk's lines are kept in the ledger's own S3 layout (its "job id" is
//! `<id>/chunk-000003`), so a chunk is claimed, read back and resumed exactly
//! as a batch in one invocation is.

mod batch_jobs;

pub use batch_jobs::Staging;

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::destination::s3::{parse_lines, WriteCondition};
use crate::destination::{
    retry_while_unavailable, DestinationError, DestinationSpec, Destinations, Outgoing, Queue,
    S3Destination, S3Location,
};
use crate::domain::chunks::{BatchPlan, ChunkMessage};
use crate::domain::deadline::Deadline;
use crate::domain::manifest::{ChunkSummary, Manifest};
use crate::ledger::Ledger;

/// The work store: plans, chunk lines and summaries of fanned-out batches.
#[derive(Debug, Clone)]
pub struct WorkStore {
    s3: S3Destination,
}

impl WorkStore {
    /// The store at `location`, through account B's S3 client.
    pub fn new(sinks: &Destinations, location: &S3Location) -> Self {
        Self {
            s3: sinks.s3_at(location),
        }
    }

    /// The ledger chunks are claimed and resumed in.
    pub fn ledger(&self) -> Ledger {
        Ledger::S3(self.s3.clone())
    }

    /// The "job id" chunk `chunk` of `batch` has in [`Self::ledger`].
    pub fn chunk_id(batch: &str, chunk: usize) -> String {
        format!("{batch}/chunk-{chunk:06}")
    }

    /// The id the batch's planning is claimed under.
    pub fn planning_id(batch: &str) -> String {
        format!("{batch}/planning")
    }

    /// The id the batch's assembly is claimed under.
    pub fn assembly_id(batch: &str) -> String {
        format!("{batch}/assembly")
    }

    fn key(&self, batch: &str, name: &str) -> String {
        format!("{}{batch}/{name}", self.s3.location().prefix)
    }

    /// `s3://` of the staged inline items of `batch`.
    pub fn staged_items_uri(&self, batch: &str) -> String {
        self.s3.location().uri_of(&self.key(batch, "items.jsonl"))
    }

    /// Stages inline items as JSON Lines; returns the object's ETag.
    pub async fn stage_items(
        &self,
        batch: &str,
        body: Vec<u8>,
    ) -> Result<String, DestinationError> {
        let key = self.key(batch, "items.jsonl");
        // Written only if absent: a second planner must not change the items
        // the first one's chunks may already be reading.
        if let Some(etag) = self.s3.put_if(&key, body, WriteCondition::Absent).await? {
            return Ok(etag);
        }
        match self.s3.read_tagged(&key).await? {
            Some((_, etag)) => Ok(etag),
            None => Err(DestinationError::Unavailable {
                destination: self.s3.location().uri_of(&key),
                message: "the staged items vanished while being written".into(),
            }),
        }
    }

    /// Writes the plan unless one exists; returns the plan in force.
    pub async fn write_plan(&self, plan: &BatchPlan) -> Result<BatchPlan, DestinationError> {
        let key = self.key(&plan.job_id, "plan.json");
        let body = to_json(&self.s3, &key, plan)?;
        if self
            .s3
            .put_if(&key, body, WriteCondition::Absent)
            .await?
            .is_some()
        {
            return Ok(plan.clone());
        }
        self.read_plan(&plan.job_id)
            .await?
            .ok_or_else(|| DestinationError::Unavailable {
                destination: self.s3.location().uri_of(&key),
                message: "the plan vanished while being written".into(),
            })
    }

    /// The plan of `batch`, if this relay planned it.
    pub async fn read_plan(&self, batch: &str) -> Result<Option<BatchPlan>, DestinationError> {
        self.read_json(&self.key(batch, "plan.json")).await
    }

    /// Marks every chunk message of `batch` as sent.
    pub async fn mark_dispatched(&self, batch: &str) -> Result<(), DestinationError> {
        let key = self.key(batch, "dispatched.json");
        let body = serde_json::json!({"at": crate::domain::record::now_rfc3339()});
        self.s3
            .put_json(&key, body.to_string().into_bytes())
            .await
            .map(|_| ())
    }

    /// Whether every chunk message of `batch` was sent.
    pub async fn is_dispatched(&self, batch: &str) -> Result<bool, DestinationError> {
        Ok(self
            .s3
            .read(&self.key(batch, "dispatched.json"))
            .await?
            .is_some())
    }

    /// The finished lines of chunk `chunk` (JSON Lines), if it is done.
    pub async fn chunk_lines(
        &self,
        batch: &str,
        chunk: usize,
    ) -> Result<Option<Vec<u8>>, DestinationError> {
        let id = Self::chunk_id(batch, chunk);
        self.s3.read(&self.s3.location().batch_key_for(&id)).await
    }

    /// A chunk's saved progress lines, empty when none is saved.
    pub async fn chunk_progress(
        &self,
        batch: &str,
        chunk: usize,
    ) -> Result<Vec<serde_json::Value>, DestinationError> {
        let id = Self::chunk_id(batch, chunk);
        let bytes = self
            .s3
            .read(&self.s3.location().progress_key_for(&id))
            .await?;
        Ok(parse_lines(&bytes.unwrap_or_default()).collect())
    }

    /// Writes a chunk's lines: final once `done`, else its progress.
    pub async fn write_chunk_lines(
        &self,
        batch: &str,
        chunk: usize,
        lines: &[serde_json::Value],
        done: bool,
        deadline: &Deadline,
    ) -> Result<String, DestinationError> {
        let id = Self::chunk_id(batch, chunk);
        let location = self.s3.location();
        let key = match done {
            true => location.batch_key_for(&id),
            false => location.progress_key_for(&id),
        };
        // A rewrite is harmless: retried while S3 is unavailable.
        retry_while_unavailable("saving a chunk's lines", deadline, || {
            self.s3.write_lines(&key, lines)
        })
        .await
    }

    /// Writes a chunk's summary: the chunk is done.
    pub async fn write_summary(
        &self,
        batch: &str,
        summary: &ChunkSummary,
    ) -> Result<(), DestinationError> {
        let key = self.key(batch, &format!("chunk-{:06}.done.json", summary.chunk));
        let body = to_json(&self.s3, &key, summary)?;
        self.s3.put_json(&key, body).await.map(|_| ())
    }

    /// How many of `batch`'s first `chunks` chunks are done. Only keys of
    /// the chunk layout count (`chunk-<digits>.done.json` right under the
    /// batch), not those of another batch whose id goes on from this one's.
    pub async fn chunks_done(&self, batch: &str, chunks: usize) -> Result<usize, DestinationError> {
        let (done, _) = self.chunk_numbers(batch).await?;
        Ok(done.range(..chunks).count())
    }

    /// The summaries of `batch`'s first `chunks` chunks that are done, in order.
    pub async fn summaries(
        &self,
        batch: &str,
        chunks: usize,
    ) -> Result<Vec<ChunkSummary>, DestinationError> {
        let (done, _) = self.chunk_numbers(batch).await?;
        let mut summaries = Vec::new();
        for chunk in done.range(..chunks) {
            if let Some(summary) = self.summary(batch, *chunk).await? {
                summaries.push(summary);
            }
        }
        Ok(summaries)
    }

    /// Keeps the batch's manifest: the batch is assembled.
    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<(), DestinationError> {
        let key = self.key(&manifest.job_id, "manifest.json");
        let body = to_json(&self.s3, &key, manifest)?;
        self.s3.put_json(&key, body).await.map(|_| ())
    }

    /// The batch's manifest, once it is assembled.
    pub async fn manifest(&self, batch: &str) -> Result<Option<Manifest>, DestinationError> {
        self.read_json(&self.key(batch, "manifest.json")).await
    }

    async fn read_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, DestinationError> {
        let Some(bytes) = self.s3.read(key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| DestinationError::Invalid {
                destination: self.s3.location().uri_of(key),
                reason: format!(
                    "not what bedrock-relay writes there ({err}); remove it or use a new job id"
                ),
            })
    }

    /// `s3://` of the plan of `batch` (read or not), for messages that say
    /// where a batch was looked for.
    pub fn plan_uri(&self, batch: &str) -> String {
        self.s3.location().uri_of(&self.key(batch, "plan.json"))
    }

    /// The chunks of `batch` that are done and those with progress saved (a
    /// chunk done keeps its progress too), by number, from one listing.
    /// Keys that are not a chunk of `batch` itself are left out.
    pub async fn chunk_numbers(
        &self,
        batch: &str,
    ) -> Result<(BTreeSet<usize>, BTreeSet<usize>), DestinationError> {
        let prefix = self.key(batch, "chunk-");
        let keys = self.s3.list_keys(&prefix).await?;
        let (mut done, mut progress) = (BTreeSet::new(), BTreeSet::new());
        for key in &keys {
            let Some((number, kind)) = key
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_once('.'))
            else {
                continue;
            };
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(chunk) = number.parse::<usize>() else {
                continue;
            };
            match kind {
                "done.json" => done.insert(chunk),
                "progress.jsonl" => progress.insert(chunk),
                _ => false,
            };
        }
        Ok((done, progress))
    }

    /// The summary of chunk `chunk` of `batch`, if it is done.
    pub async fn summary(
        &self,
        batch: &str,
        chunk: usize,
    ) -> Result<Option<ChunkSummary>, DestinationError> {
        self.read_json(&self.key(batch, &format!("chunk-{chunk:06}.done.json")))
            .await
    }
}

fn to_json<T: Serialize>(
    s3: &S3Destination,
    key: &str,
    value: &T,
) -> Result<Vec<u8>, DestinationError> {
    serde_json::to_vec(value).map_err(|err| DestinationError::Unavailable {
        destination: s3.location().uri_of(key),
        message: format!("does not serialise: {err}"),
    })
}

/// The work queue: chunk messages out (as one more SQS destination, so they
/// go in batches with the same retries), and what comes back checked.
#[derive(Debug, Clone)]
pub struct WorkQueue {
    queue: Queue,
}

impl WorkQueue {
    /// The queue `RELAY_WORK_QUEUE` names.
    pub fn new(queue: Queue) -> Self {
        Self { queue }
    }

    /// Sends one message per chunk `chunks` of `batch`.
    pub async fn send_chunks(
        &self,
        sinks: &Destinations,
        batch: &str,
        chunks: impl IntoIterator<Item = usize>,
    ) -> Result<(), DestinationError> {
        let messages = chunks
            .into_iter()
            .map(|chunk| {
                Ok(Outgoing {
                    job_id: batch.to_owned(),
                    index: Some(chunk),
                    group: batch.to_owned(),
                    body: serde_json::to_value(ChunkMessage::new(batch, chunk)).map_err(|err| {
                        DestinationError::Unavailable {
                            destination: self.queue.url.clone(),
                            message: format!("a chunk message does not serialise: {err}"),
                        }
                    })?,
                })
            })
            .collect::<Result<Vec<_>, DestinationError>>()?;
        sinks
            .send(&DestinationSpec::Sqs(self.queue.clone()), &messages)
            .await
            .map(|_| ())
    }

    /// Whether a message came from this queue (its event source ARN names
    /// the same account and queue; a URL on a custom endpoint names no
    /// region, so the region is compared only when both have one).
    pub fn is_source(&self, event_source_arn: Option<&str>) -> bool {
        let Some(arn) = event_source_arn else {
            return false;
        };
        let theirs: Vec<&str> = arn.split(':').collect();
        let ours: Vec<&str> = self.queue.arn.split(':').collect();
        theirs.len() == 6
            && ours.len() == 6
            && theirs[2] == "sqs"
            && theirs[4] == ours[4]
            && theirs[5] == ours[5]
            && (theirs[3] == ours[3] || ours[3] == "*")
    }

    /// Makes a message visible again after `seconds` instead of the queue's
    /// whole visibility timeout, so a chunk cut short by the deadline is
    /// picked up again soon. Best effort: otherwise it returns later.
    pub async fn return_in(&self, sinks: &Destinations, receipt_handle: &str, seconds: i32) {
        let changed = sinks
            .sqs_client()
            .change_message_visibility()
            .queue_url(&self.queue.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await;
        if let Err(err) = changed {
            tracing::warn!("the chunk's message was not made visible early (it returns after the queue's visibility timeout): {}", aws_sdk_sqs::error::DisplayErrorContext(err));
        }
    }
}
