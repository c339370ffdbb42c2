//! Idempotency: what an earlier delivery of the same event already did.
//!
//! EventBridge and Lambda deliver at least once, and Lambda retries failed
//! events, so the same job can arrive several times. Before calling a model the
//! relay asks the ledger which results already exist for the job id (the
//! envelope id, stable across redeliveries) and runs only the rest.
//!
//! The ledger is wherever results can be read back: the S3 destination itself
//! (`<id>.json`, or a batch's `<id>.jsonl` / `<id>.progress.jsonl`), the
//! DynamoDB destination table, or `RELAY_IDEMPOTENCY_TABLE` for destinations
//! that cannot be read back (SQS, SNS, EventBridge). Without one of these a
//! redelivered event calls the model again.
//!
//! Two deliveries of one event can also run at the same moment (EventBridge's
//! at-least-once delivery, a retry racing a slow first attempt). Before running
//! anything, an invocation claims the job until its own deadline with a
//! conditional write (S3 `If-None-Match`/`If-Match` on
//! `<prefix>_claims/<id>.json`, or a conditional DynamoDB put of the job's
//! claim item); an invocation that finds a live claim stops with a retryable
//! `JobInProgress` and calls nothing. A claim is released when its invocation
//! ends and expires at its deadline if the invocation dies.

use std::collections::BTreeMap;

use serde_json::Value;

mod dynamodb;
mod s3;

use crate::destination::dynamodb::Table;
use crate::destination::{
    DestinationError, DestinationSpec, Destinations, Outgoing, S3Destination,
};

/// Where finished work is looked up and remembered.
#[derive(Debug, Clone)]
pub enum Ledger {
    /// Results in S3, read back.
    S3(S3Destination),
    /// A DynamoDB table: the destination itself, or the idempotency table.
    Table {
        /// The table.
        table: Table,
        /// Whether the table is the destination (results are already in it).
        is_destination: bool,
    },
    /// Nothing to read back: redeliveries run again.
    Off,
}

impl Ledger {
    /// The ledger for results going to `destination`.
    pub fn for_destination(
        destination: &DestinationSpec,
        idempotency_table: Option<&Table>,
        destinations: &Destinations,
    ) -> Self {
        match (destination, idempotency_table) {
            (DestinationSpec::S3(location), _) => Self::S3(destinations.s3_at(location)),
            (DestinationSpec::Dynamo(table), _) => Self::Table {
                table: table.clone(),
                is_destination: true,
            },
            (_, Some(table)) => Self::Table {
                table: table.clone(),
                is_destination: false,
            },
            _ => Self::Off,
        }
    }

    /// A single job's earlier success record, if there is one.
    pub async fn succeeded_job(
        &self,
        destinations: &Destinations,
        job_id: &str,
    ) -> Result<Option<Value>, DestinationError> {
        match self {
            Self::S3(s3) => s3::succeeded_job(s3, job_id).await,
            Self::Table { table, .. } => {
                Ok(
                    dynamodb::settled(destinations.dynamodb_client(), table, job_id)
                        .await?
                        .remove(&0)
                        .filter(is_succeeded),
                )
            }
            Self::Off => Ok(None),
        }
    }

    /// A batch's items that are settled, by index: succeeded, or failed for
    /// good (a non-retryable error, such as `BedrockRejected` or a template
    /// error), which a redelivery would only fail again at a model call's cost.
    pub async fn settled_items(
        &self,
        destinations: &Destinations,
        job_id: &str,
    ) -> Result<BTreeMap<usize, Value>, DestinationError> {
        match self {
            Self::S3(s3) => s3::settled_items(s3, job_id).await,
            Self::Table { table, .. } => {
                dynamodb::settled(destinations.dynamodb_client(), table, job_id).await
            }
            Self::Off => Ok(BTreeMap::new()),
        }
    }

    /// Remembers delivered successes in the idempotency table. S3 and a DynamoDB
    /// destination remember by holding the results themselves.
    pub async fn remember(
        &self,
        destinations: &Destinations,
        delivered: &[Outgoing],
    ) -> Result<(), DestinationError> {
        let Self::Table {
            table,
            is_destination: false,
        } = self
        else {
            return Ok(());
        };
        let settled: Vec<Outgoing> = delivered
            .iter()
            .filter(|o| is_settled(&o.body))
            .cloned()
            .collect();
        if settled.is_empty() {
            return Ok(());
        }
        destinations
            .send(&DestinationSpec::Dynamo(table.clone()), &settled)
            .await
            .map(|_| ())
    }
}

/// What claiming a job found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This invocation holds the job; release it when done.
    Held(ClaimToken),
    /// There is no ledger to claim in: runs are not guarded.
    Unguarded,
    /// Another invocation holds the job until this time (epoch ms), if known.
    Elsewhere {
        /// When the other claim expires.
        until_ms: Option<u64>,
    },
}

/// Proof of a held claim, to release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken {
    job_id: String,
    request_id: String,
    /// The claim object's ETag (S3).
    etag: Option<String>,
    /// An earlier claim (expired or released) was taken over, so an earlier
    /// invocation may have finished the work: look again before running.
    pub took_over: bool,
}

impl Ledger {
    /// Claims `job_id` for the invocation `request_id` until `until_ms`.
    pub async fn claim(
        &self,
        destinations: &Destinations,
        job_id: &str,
        request_id: &str,
        until_ms: u64,
        now_ms: u64,
    ) -> Result<Claim, DestinationError> {
        let token = |etag: Option<String>, took_over: bool| {
            Claim::Held(ClaimToken {
                job_id: job_id.to_owned(),
                request_id: request_id.to_owned(),
                etag,
                took_over,
            })
        };
        match self {
            Self::Off => Ok(Claim::Unguarded),
            Self::Table { table, .. } => {
                let held = dynamodb::claim(
                    destinations.dynamodb_client(),
                    table,
                    job_id,
                    request_id,
                    until_ms,
                    now_ms,
                )
                .await?;
                Ok(match held {
                    Some(took_over) => token(None, took_over),
                    None => Claim::Elsewhere { until_ms: None },
                })
            }
            Self::S3(s3) => Ok(
                match s3::claim(s3, job_id, request_id, until_ms, now_ms).await? {
                    s3::Claimed::Held { etag, took_over } => token(Some(etag), took_over),
                    s3::Claimed::Elsewhere { until_ms } => Claim::Elsewhere { until_ms },
                },
            ),
        }
    }

    /// Releases the claim, if one is held (an unguarded destination holds
    /// none). Best effort: a claim left behind expires at the invocation's
    /// deadline anyway.
    pub async fn release(&self, destinations: &Destinations, token: Option<&ClaimToken>) {
        let Some(token) = token else {
            return;
        };
        let result = match self {
            Self::Off => Ok(()),
            Self::Table { table, .. } => {
                dynamodb::release(
                    destinations.dynamodb_client(),
                    table,
                    &token.job_id,
                    &token.request_id,
                )
                .await
            }
            Self::S3(s3) => match &token.etag {
                Some(etag) => s3::release(s3, &token.job_id, &token.request_id, etag).await,
                None => Ok(()),
            },
        };
        if let Err(err) = result {
            tracing::warn!(job_id = %token.job_id, "the job's claim was not released (it expires at the deadline): {err}");
        }
    }
}

/// Whether a record or item line is final: `succeeded` or `blocked`.
fn is_succeeded(record: &Value) -> bool {
    crate::domain::record::is_final_status(record.get("status").and_then(Value::as_str))
}

/// Whether a record or item line is settled: succeeded, or failed with an
/// error that is not retryable.
pub(crate) fn is_settled(record: &Value) -> bool {
    is_succeeded(record)
        || (record.get("status").and_then(Value::as_str) == Some("failed")
            && record.pointer("/error/retryable") == Some(&Value::Bool(false)))
}
