//! Where results go, and how they are read back so a redelivered event does
//! not pay for the same model call twice.
//!
//! A [`DestinationSpec`] is parsed from `RELAY_DESTINATION` or a job's
//! `destination`: an `s3://` prefix, an SQS queue (URL or ARN), an SNS topic
//! ARN, an EventBridge bus ARN or a DynamoDB table ARN. Every destination is
//! written with the function's own (account B) credentials, never RoleA's.
//! [`Destinations`] holds one client per kind, built on first use so a function
//! that only writes to S3 never builds the others.
//!
//! Layout: [`s3`] (records, JSONL batches, spill objects, read-back), [`sqs`],
//! [`sns`], [`eventbridge`] (message services, each a `BatchService`: its
//! entries and its batch call) and [`dynamodb`] (one item per result, also the
//! idempotency ledger). `batching` sends any `BatchService` in runs within its
//! API's entry and size limits, with one retry of failed entries; `spill`
//! renders each result's text and moves records too large for a service to
//! `RELAY_SPILL_S3`.

mod batching;
pub(crate) mod dynamodb;
pub(crate) mod eventbridge;
pub(crate) mod multipart;
pub(crate) mod s3;
mod sns;
mod spill;
mod sqs;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

use crate::aws::retry::{retry, Backoff};
use crate::domain::deadline::Deadline;
use crate::domain::record::{ItemRecord, Record, Status};
use crate::observe::xray::Recorder;

pub use s3::{S3Destination, S3Location};
pub use sqs::Queue;

pub(crate) use batching::{
    by_entry_id, entries_at, fifo_id, send_in_batches, BatchService, Delivery, EntryOutcome,
    PartialSend,
};
pub(crate) use spill::Prepared;

/// A result that could not be delivered.
#[derive(Debug, Error)]
pub enum DestinationError {
    /// The destination refused the execution role.
    #[error("{action} to {destination} was denied ({message}); {fix}")]
    Denied {
        /// The API action, e.g. `s3:PutObject`.
        action: &'static str,
        /// The destination (URI or ARN, with the key for S3).
        destination: String,
        /// What the service said.
        message: String,
        /// What to grant.
        fix: String,
    },
    /// The bucket, queue, topic, bus or table does not exist.
    #[error("cannot deliver to {destination}: {what} does not exist; check RELAY_DESTINATION or the job's `destination`")]
    Missing {
        /// The destination.
        destination: String,
        /// What is missing, e.g. "bucket `x`".
        what: String,
    },
    /// A record is larger than the service takes, and no spill bucket is set.
    #[error("the result for {item} is {bytes} bytes, over the {limit}-byte limit of {destination}; set RELAY_SPILL_S3 to store large results in S3 and send a pointer")]
    TooLarge {
        /// The job id, with `#index` for a batch item.
        item: String,
        /// The destination.
        destination: String,
        /// The record's size.
        bytes: usize,
        /// The service's limit.
        limit: usize,
    },
    /// The job names a destination that `RELAY_ALLOWED_DESTINATIONS` does not allow.
    #[error("destination `{destination}` is not allowed; add a matching pattern to RELAY_ALLOWED_DESTINATIONS (now: {allowed})")]
    NotAllowed {
        /// The rendered destination.
        destination: String,
        /// The configured patterns, or "none".
        allowed: String,
    },
    /// The destination text is not one of the accepted forms.
    #[error("destination `{destination}`: {reason}")]
    Invalid {
        /// The text given.
        destination: String,
        /// What is accepted.
        reason: String,
    },
    /// Anything else, assumed transient.
    #[error("cannot deliver to {destination} ({message}); the result is not saved and the event will be retried")]
    Unavailable {
        /// The destination.
        destination: String,
        /// What went wrong.
        message: String,
    },
}

impl DestinationError {
    /// A stable name for the record and the Lambda error type.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Denied { .. } => "DestinationDenied",
            Self::Missing { .. } => "DestinationMissing",
            Self::TooLarge { .. } => "ResultTooLarge",
            Self::NotAllowed { .. } => "DestinationNotAllowed",
            Self::Invalid { .. } => "InvalidDestination",
            Self::Unavailable { .. } => "DestinationUnavailable",
        }
    }

    /// Whether retrying the event may deliver the result. A denied or missing
    /// destination is worth retrying once the policy or resource is fixed, and
    /// nothing else keeps the result; a job's own bad or disallowed destination
    /// will fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Denied { .. } | Self::Missing { .. } | Self::Unavailable { .. } => true,
            Self::TooLarge { .. } | Self::NotAllowed { .. } | Self::Invalid { .. } => false,
        }
    }
}

/// Where results go, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationSpec {
    /// An S3 prefix: `<prefix><job id>.json`, or `.jsonl` for a batch.
    S3(S3Location),
    /// An SQS queue: one message per result.
    Sqs(sqs::Queue),
    /// An SNS topic: one message per result.
    Sns(sns::Topic),
    /// An EventBridge bus: one event per result.
    EventBus(eventbridge::Bus),
    /// A DynamoDB table: one item per result, keyed by job id and item index.
    Dynamo(dynamodb::Table),
}

impl DestinationSpec {
    /// Parses a destination from its text form.
    pub fn parse(text: &str) -> Result<Self, DestinationError> {
        let text = text.trim();
        let invalid = |reason: String| DestinationError::Invalid {
            destination: text.to_owned(),
            reason,
        };
        if text.starts_with("s3://") {
            return S3Location::parse(text).map(Self::S3).map_err(invalid);
        }
        if text.starts_with("https://sqs.") || text.starts_with("http") {
            return sqs::Queue::parse(text).map(Self::Sqs).map_err(invalid);
        }
        let service = text.split(':').nth(2).unwrap_or_default();
        match (text.starts_with("arn:"), service) {
            (true, "sqs") => sqs::Queue::parse(text).map(Self::Sqs).map_err(invalid),
            (true, "sns") => sns::Topic::parse(text).map(Self::Sns).map_err(invalid),
            (true, "events") => eventbridge::Bus::parse(text)
                .map(Self::EventBus)
                .map_err(invalid),
            (true, "dynamodb") => dynamodb::Table::parse(text)
                .map(Self::Dynamo)
                .map_err(invalid),
            _ => Err(invalid(
                "expected s3://bucket/prefix/, an SQS queue URL or ARN, or an SNS topic, \
                 EventBridge bus or DynamoDB table ARN"
                    .into(),
            )),
        }
    }

    /// Whether results written here can be read back to skip work already done.
    pub fn can_read_back(&self) -> bool {
        matches!(self, Self::S3(_) | Self::Dynamo(_))
    }
}

impl fmt::Display for DestinationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::S3(loc) => write!(f, "s3://{}/{}", loc.bucket, loc.prefix),
            Self::Sqs(queue) => f.write_str(&queue.url),
            Self::Sns(topic) => f.write_str(&topic.arn),
            Self::EventBus(bus) => f.write_str(&bus.arn),
            Self::Dynamo(table) => f.write_str(&table.arn),
        }
    }
}

/// One result on its way to a message service or table.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The job's id.
    pub job_id: String,
    /// The batch item's index; `None` for a single job's record.
    pub index: Option<usize>,
    /// FIFO message group (the job's `group`, else its id).
    pub group: String,
    /// The record, as written to S3.
    pub body: Value,
}

impl Outgoing {
    /// Unique per result: the job id, with `#<index>` for a batch item. Used
    /// in error messages and as a success's FIFO deduplication id.
    pub fn key(&self) -> String {
        match self.index {
            Some(index) => format!("{}#{index}", self.job_id),
            None => self.job_id.clone(),
        }
    }

    /// The FIFO deduplication id: [`Outgoing::key`] for a success, so a resent
    /// success is delivered once; for anything else the key with the status
    /// and when it was written, so a failure sent before Lambda's retry never
    /// shares the id of the success that retry sends within SQS's and SNS's
    /// five-minute window (which would discard the success).
    pub fn deduplication_id(&self) -> String {
        match self.body.get("status").and_then(Value::as_str) {
            None => self.key(),
            status if crate::domain::record::is_final_status(status) => self.key(),
            Some(status) => {
                let at = self
                    .body
                    .get("finished_at")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                format!("{}#{status}@{at}", self.key())
            }
        }
    }
}

/// The clients for every destination kind, each built on first use from the
/// function's base configuration, each recording X-Ray subsegments.
#[derive(Debug, Clone)]
pub struct Destinations {
    base: aws_config::SdkConfig,
    s3_force_path_style: bool,
    s3: OnceLock<aws_sdk_s3::Client>,
    sqs: OnceLock<aws_sdk_sqs::Client>,
    sns: OnceLock<aws_sdk_sns::Client>,
    events: OnceLock<aws_sdk_eventbridge::Client>,
    dynamodb: OnceLock<aws_sdk_dynamodb::Client>,
    /// Where results too large for a message service go (`RELAY_SPILL_S3`).
    spill: Option<S3Location>,
    /// The expected owner of the relay's own buckets (`RELAY_BUCKET_OWNER`).
    bucket_owner: Option<String>,
}

impl Destinations {
    /// Clients come from `base` (account B's credentials); `spill` is `RELAY_SPILL_S3`.
    pub fn new(
        base: &aws_config::SdkConfig,
        s3_force_path_style: bool,
        spill: Option<S3Location>,
    ) -> Self {
        Self {
            base: base.clone(),
            s3_force_path_style,
            s3: OnceLock::new(),
            sqs: OnceLock::new(),
            sns: OnceLock::new(),
            events: OnceLock::new(),
            dynamodb: OnceLock::new(),
            spill,
            bucket_owner: None,
        }
    }

    /// Every S3 call to the results, claims and spill buckets expects them to
    /// belong to `owner` (`RELAY_BUCKET_OWNER`).
    pub fn with_bucket_owner(mut self, owner: Option<String>) -> Self {
        self.bucket_owner = owner;
        self
    }

    /// The results (and claims) at `location`, with the expected owner.
    pub fn s3_at(&self, location: &S3Location) -> S3Destination {
        S3Destination::new(self.s3_client().clone(), location.clone())
            .owned_by(self.bucket_owner.clone())
    }

    /// The expected owner of the relay's own buckets, when known.
    pub fn bucket_owner(&self) -> Option<&str> {
        self.bucket_owner.as_deref()
    }

    /// The S3 client (path-style when configured).
    pub fn s3_client(&self) -> &aws_sdk_s3::Client {
        self.s3.get_or_init(|| {
            let conf = aws_sdk_s3::config::Builder::from(&self.base)
                .force_path_style(self.s3_force_path_style)
                .interceptor(Recorder::new())
                .build();
            aws_sdk_s3::Client::from_conf(conf)
        })
    }

    /// The SQS client.
    pub fn sqs_client(&self) -> &aws_sdk_sqs::Client {
        self.sqs.get_or_init(|| {
            let conf = aws_sdk_sqs::config::Builder::from(&self.base)
                .interceptor(Recorder::new())
                .build();
            aws_sdk_sqs::Client::from_conf(conf)
        })
    }

    /// The SNS client.
    pub fn sns_client(&self) -> &aws_sdk_sns::Client {
        self.sns.get_or_init(|| {
            let conf = aws_sdk_sns::config::Builder::from(&self.base)
                .interceptor(Recorder::new())
                .build();
            aws_sdk_sns::Client::from_conf(conf)
        })
    }

    /// The EventBridge client.
    pub fn events_client(&self) -> &aws_sdk_eventbridge::Client {
        self.events.get_or_init(|| {
            let conf = aws_sdk_eventbridge::config::Builder::from(&self.base)
                .interceptor(Recorder::new())
                .build();
            aws_sdk_eventbridge::Client::from_conf(conf)
        })
    }

    /// The DynamoDB client.
    pub fn dynamodb_client(&self) -> &aws_sdk_dynamodb::Client {
        self.dynamodb.get_or_init(|| {
            let conf = aws_sdk_dynamodb::config::Builder::from(&self.base)
                .interceptor(Recorder::new())
                .build();
            aws_sdk_dynamodb::Client::from_conf(conf)
        })
    }

    /// Uses `client` for S3 (tests pass a mocked one).
    pub fn with_s3_client(mut self, client: aws_sdk_s3::Client) -> Self {
        self.s3 = OnceLock::from(client);
        self
    }

    /// Uses `client` for DynamoDB.
    #[cfg(test)]
    pub(crate) fn with_dynamodb_client(mut self, client: aws_sdk_dynamodb::Client) -> Self {
        self.dynamodb = OnceLock::from(client);
        self
    }

    /// Uses `client` for SQS.
    #[cfg(test)]
    pub(crate) fn with_sqs_client(mut self, client: aws_sdk_sqs::Client) -> Self {
        self.sqs = OnceLock::from(client);
        self
    }

    /// The doctor's write check: a probe object under an S3 destination's
    /// prefix. Other kinds are not probed (a probe message would reach
    /// consumers); returns an empty string for them.
    pub async fn probe(&self, dest: &DestinationSpec) -> Result<String, DestinationError> {
        match dest {
            DestinationSpec::S3(location) => self.s3_at(location).probe().await,
            _ => Ok(String::new()),
        }
    }

    /// The spill location, if configured.
    pub fn spill(&self) -> Option<&S3Location> {
        self.spill.as_ref()
    }

    /// Delivers `results` to a queue, topic, bus or table: one reference per
    /// result, in order (the message id, the event id, or `table#job#index`).
    /// A result too large for the service is spilled to `RELAY_SPILL_S3` and a
    /// pointer sent in its place. S3 destinations are written by
    /// `S3Destination`, so an S3 spec is refused here.
    pub async fn send(
        &self,
        dest: &DestinationSpec,
        results: &[Outgoing],
    ) -> Result<Vec<String>, DestinationError> {
        self.send_partial(dest, results).await.map_err(|p| p.error)
    }

    /// [`send`](Self::send), saying on failure how many results were
    /// delivered first.
    async fn send_partial(
        &self,
        dest: &DestinationSpec,
        results: &[Outgoing],
    ) -> Result<Vec<String>, PartialSend> {
        let destination = dest.to_string();
        if results.is_empty() {
            return Ok(Vec::new());
        }
        match dest {
            DestinationSpec::S3(_) => Err(DestinationError::Invalid {
                destination,
                reason: "S3 destinations are written by S3Destination, not Destinations::send"
                    .into(),
            }
            .into()),
            DestinationSpec::Sqs(queue) => {
                self.send_batched(self.sqs_client(), queue, &destination, results)
                    .await
            }
            DestinationSpec::Sns(topic) => {
                self.send_batched(self.sns_client(), topic, &destination, results)
                    .await
            }
            DestinationSpec::EventBus(bus) => {
                self.send_batched(self.events_client(), bus, &destination, results)
                    .await
            }
            DestinationSpec::Dynamo(table) => {
                let ready = spill::prepare(
                    self,
                    &destination,
                    results,
                    dynamodb::ITEM_LIMIT,
                    dynamodb::item_size,
                )
                .await?;
                // Writing an item again is harmless (same key, same record).
                Ok(dynamodb::send(self.dynamodb_client(), table, &ready).await?)
            }
        }
    }

    /// [`send`](Self::send) to a service that takes batch calls: the results
    /// prepared (spilled where too large), then sent in runs.
    async fn send_batched<S: BatchService>(
        &self,
        client: &S::Client,
        service: &S,
        destination: &str,
        results: &[Outgoing],
    ) -> Result<Vec<String>, PartialSend> {
        let ready = spill::prepare(self, destination, results, S::MAX_BYTES, S::size_of).await?;
        send_in_batches(client, service, &ready).await
    }

    /// Writes one job's record to `dest`: an object at the job's key in S3,
    /// one message, event or item elsewhere. Returns where it went and what
    /// was sent, for the ledger to remember.
    pub async fn write_record(
        &self,
        dest: &DestinationSpec,
        group: &str,
        record: &Record,
    ) -> Result<Written, DestinationError> {
        let body = serde_json::to_value(record).map_err(|err| DestinationError::Unavailable {
            destination: dest.to_string(),
            message: format!("the record does not serialise: {err}"),
        })?;
        let results = vec![Outgoing {
            job_id: record.job_id.clone(),
            index: None,
            group: group.to_owned(),
            body,
        }];
        let reference = match dest {
            DestinationSpec::S3(location) => self.s3_at(location).write(record).await?,
            _ => self.send(dest, &results).await?.join(","),
        };
        Ok(Written {
            reference,
            results,
            undeliverable: Vec::new(),
        })
    }

    /// Writes the results of one attempt at a batch to `dest`. To S3: one
    /// JSON Lines object with every item in input order (earlier successes
    /// from `lines.done` included, items not run as `pending`): the final
    /// `<id>.jsonl` once no item is pending, else `<id>.progress.jsonl`; the
    /// whole object is written again while S3 is unavailable and `deadline`
    /// allows, since a rewrite is harmless. Elsewhere: one message, event or
    /// item per result settled in this attempt, sent once (a resend could
    /// deliver some twice).
    pub async fn write_items(
        &self,
        dest: &DestinationSpec,
        group: &str,
        lines: ItemLines,
        deadline: &Deadline,
    ) -> Result<Written, Undelivered> {
        let unserialisable = |err: serde_json::Error| DestinationError::Unavailable {
            destination: dest.to_string(),
            message: format!("an item result does not serialise: {err}"),
        };
        if let DestinationSpec::S3(location) = dest {
            let s3 = self.s3_at(location);
            let (key, all) = lines.into_s3_object(location).map_err(unserialisable)?;
            let reference =
                retry_while_unavailable("delivery", deadline, || s3.write_lines(&key, &all))
                    .await?;
            return Ok(Written {
                reference,
                results: Vec::new(),
                undeliverable: Vec::new(),
            });
        }
        let results = lines
            .fresh
            .iter()
            .filter(|item| item.status != Status::Pending)
            .map(|item| {
                Ok(Outgoing {
                    job_id: lines.job_id.clone(),
                    index: Some(item.index),
                    group: group.to_owned(),
                    body: serde_json::to_value(item).map_err(unserialisable)?,
                })
            })
            .collect::<Result<Vec<_>, DestinationError>>()?;
        let mut results = results;
        // Results are sized (and spilled) before any is sent, so a result
        // too large with nowhere to spill is found before anything goes out:
        // that item fails with `ResultTooLarge`, and the others are sent.
        let mut failed_too_large = Vec::new();
        loop {
            let stopped = match self.send_partial(dest, &results).await {
                Ok(_) => break,
                Err(stopped) => stopped,
            };
            let position = match &stopped.error {
                DestinationError::TooLarge { item, .. } if stopped.sent == 0 => results
                    .iter()
                    .position(|r| r.index.is_some() && r.key() == *item)
                    .filter(|p| !failed_too_large.contains(p)),
                _ => None,
            };
            let Some(position) = position else {
                // The runs sent before the failing one go back with the
                // error, so the ledger remembers them and a retry does not
                // send them again.
                results.truncate(stopped.sent);
                return Err(Undelivered {
                    error: stopped.error,
                    sent: results,
                });
            };
            failed_too_large.push(position);
            fail_in_place(&mut results[position].body, &stopped.error);
        }
        Ok(Written {
            reference: format!("{dest} ({} results)", results.len()),
            undeliverable: failed_too_large
                .iter()
                .filter_map(|&p| results[p].index)
                .collect(),
            results,
        })
    }
}

/// Turns an item's result into its failure for `err`, keeping its index,
/// target and model: the output that could not be delivered is dropped.
fn fail_in_place(body: &mut Value, err: &DestinationError) {
    if let Value::Object(map) = body {
        map.insert("status".into(), Value::from("failed"));
        map.remove("output");
        map.remove("usage");
        map.insert(
            "error".into(),
            serde_json::json!({"type": err.code(), "message": err.to_string(), "retryable": err.is_retryable()}),
        );
    }
}

/// A batch's results that did not all reach a message service: the error,
/// and the results the runs before it delivered, to be remembered.
#[derive(Debug)]
pub struct Undelivered {
    /// Why delivery stopped.
    pub error: DestinationError,
    /// The results delivered before it, in order.
    pub sent: Vec<Outgoing>,
}

impl From<DestinationError> for Undelivered {
    /// A failure before anything was sent.
    fn from(error: DestinationError) -> Self {
        Self {
            error,
            sent: Vec::new(),
        }
    }
}

/// What a write delivered.
#[derive(Debug)]
pub struct Written {
    /// Where it went: an S3 URI, message ids, or the destination and a count.
    pub reference: String,
    /// The results sent, for a ledger that remembers them.
    pub results: Vec<Outgoing>,
    /// Batch items whose result could not be delivered (too large, with
    /// nowhere to spill) and were sent as failures instead.
    pub undeliverable: Vec<usize>,
}

/// One attempt's results of a batch.
#[derive(Debug)]
pub struct ItemLines {
    /// The batch's job id.
    pub job_id: String,
    /// How many items the batch has.
    pub total: usize,
    /// Results of earlier attempts that already succeeded, by index.
    pub done: BTreeMap<usize, Value>,
    /// This attempt's results, in input order.
    pub fresh: Vec<ItemRecord>,
    /// Some items are pending: the batch is not finished.
    pub incomplete: bool,
}

impl ItemLines {
    /// The key and lines of the S3 object that holds every item in input order.
    fn into_s3_object(
        self,
        location: &S3Location,
    ) -> Result<(String, Vec<Value>), serde_json::Error> {
        let mut done = self.done;
        for item in &self.fresh {
            done.insert(item.index, serde_json::to_value(item)?);
        }
        let lines = (0..self.total)
            .map(|index| match done.remove(&index) {
                Some(line) => Ok(line),
                None => serde_json::to_value(ItemRecord::pending(&self.job_id, index)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let key = if self.incomplete {
            location.progress_key_for(&self.job_id)
        } else {
            location.batch_key_for(&self.job_id)
        };
        Ok((key, lines))
    }
}

/// Waits between attempts at a write while the destination is unavailable,
/// and the time kept back so the last attempt still ends before the deadline.
const DELIVERY_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
/// See [`DELIVERY_BACKOFF`].
const DELIVERY_MARGIN: Duration = Duration::from_millis(300);

/// Runs `write` again while the destination is unavailable and `deadline`
/// leaves room ([`DELIVERY_BACKOFF`], keeping [`DELIVERY_MARGIN`]): for
/// writes that a repeat cannot harm. Each retry is logged with `what`.
pub async fn retry_while_unavailable<T, F, Fut>(
    what: &str,
    deadline: &Deadline,
    write: F,
) -> Result<T, DestinationError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DestinationError>>,
{
    retry(
        what,
        DELIVERY_BACKOFF,
        deadline,
        DELIVERY_MARGIN,
        is_unavailable,
        write,
    )
    .await
}

/// Whether a failed write is worth another attempt in this invocation: an
/// outage or throttling the SDK's own retries did not outlast.
fn is_unavailable(err: &DestinationError) -> bool {
    matches!(err, DestinationError::Unavailable { .. })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::spill::tests::mocked;
    use super::*;

    const QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/222222222222/results";

    #[test]
    fn every_destination_kind_parses_from_its_text_form() {
        let parse = |text: &str| DestinationSpec::parse(text).expect(text);
        assert!(matches!(parse(QUEUE), DestinationSpec::Sqs(q) if q.url == QUEUE));
        assert!(matches!(
            parse("arn:aws:sqs:us-east-1:222222222222:q.fifo"),
            DestinationSpec::Sqs(q) if q.fifo
        ));
        assert!(matches!(
            parse("http://127.0.0.1:5000/222222222222/q"),
            DestinationSpec::Sqs(_)
        ));
        assert!(matches!(
            parse("arn:aws:sns:us-east-1:222222222222:t"),
            DestinationSpec::Sns(_)
        ));
        assert!(matches!(
            parse("arn:aws:events:us-east-1:222222222222:event-bus/b"),
            DestinationSpec::EventBus(_)
        ));
        let table = "arn:aws:dynamodb:us-east-1:222222222222:table/tbl";
        assert!(matches!(parse(table), DestinationSpec::Dynamo(t) if t.name == "tbl"));
        assert_eq!(parse(table).to_string(), table);
        assert!(parse(table).can_read_back());

        let err = DestinationSpec::parse("arn:aws:sns:us-east-1:222:t").expect_err("bad account");
        assert_eq!(err.code(), "InvalidDestination");
        assert!(err.to_string().contains("12-digit account id"), "{err}");
    }

    /// In a batch to a queue with no spill bucket, one result too large for
    /// SQS fails that item alone (`ResultTooLarge`); the others are sent as
    /// they are, once.
    #[tokio::test]
    async fn one_oversize_result_fails_its_item_not_the_batch() {
        use crate::domain::record::{ItemRecord, Status};
        let (destinations, _, bodies) = mocked(None);
        let dest = DestinationSpec::parse(QUEUE).expect("queue");
        let item = |index: usize, text: String| {
            let mut record = ItemRecord::pending("big-batch", index);
            record.status = Status::Succeeded;
            record.output = Some(crate::domain::record::OutputRecord::of(
                &crate::domain::record::ModelReply::text(text, "end_turn"),
            ));
            record
        };
        let lines = ItemLines {
            job_id: "big-batch".into(),
            total: 3,
            done: Default::default(),
            fresh: vec![
                item(0, "small".into()),
                item(1, "x".repeat(300 * 1024)),
                item(2, "small too".into()),
            ],
            incomplete: false,
        };
        let written = destinations
            .write_items(
                &dest,
                "g",
                lines,
                &Deadline::after(std::time::Duration::from_secs(30)),
            )
            .await
            .expect("the batch is delivered");
        assert_eq!(written.undeliverable, [1]);
        let bodies = bodies.lock().expect("lock");
        assert_eq!(bodies.len(), 3, "each result sent once");
        let sent: Vec<Value> = bodies
            .iter()
            .map(|b| serde_json::from_str(b).expect("json"))
            .collect();
        assert_eq!(sent[1]["status"], "failed");
        assert_eq!(sent[1]["error"]["type"], "ResultTooLarge");
        assert!(sent[1].get("output").is_none());
        assert_eq!(sent[0]["status"], "succeeded");
        assert_eq!(sent[2]["status"], "succeeded");
        assert_eq!(
            written.results[1].body["status"], "failed",
            "the ledger sees the failure"
        );
    }

    /// When a run of a batch's results fails, the runs sent before it come
    /// back with the error, for the ledger to remember: a retry does not send
    /// them again.
    #[tokio::test]
    async fn a_failed_run_returns_the_runs_sent_before_it() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        use aws_sdk_sqs::operation::send_message_batch::{
            SendMessageBatchError, SendMessageBatchOutput,
        };
        use aws_sdk_sqs::types::SendMessageBatchResultEntry;
        use aws_smithy_mocks::{mock, mock_client, RuleMode};
        use aws_smithy_types::error::ErrorMetadata;

        use crate::domain::record::{ItemRecord, Status};

        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let first_ok = mock!(aws_sdk_sqs::Client::send_message_batch)
            .match_requests(move |_| seen.fetch_add(1, Ordering::SeqCst) == 0)
            .then_compute_output(|req| {
                let mut output = SendMessageBatchOutput::builder().set_failed(Some(Vec::new()));
                for entry in req.entries() {
                    output = output.successful(
                        SendMessageBatchResultEntry::builder()
                            .id(entry.id())
                            .message_id("m")
                            .md5_of_message_body("x")
                            .build()
                            .expect("entry"),
                    );
                }
                output.build().expect("output")
            });
        let then_denied = mock!(aws_sdk_sqs::Client::send_message_batch).then_error(|| {
            SendMessageBatchError::generic(
                ErrorMetadata::builder()
                    .code("AccessDenied")
                    .message("not authorized")
                    .build(),
            )
        });
        let sqs = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&first_ok, &then_denied]);
        let destinations = Destinations::new(&aws_config::SdkConfig::builder().build(), true, None)
            .with_sqs_client(sqs);
        let fresh = (0..15)
            .map(|index| {
                let mut record = ItemRecord::pending("runs", index);
                record.status = Status::Succeeded;
                record
            })
            .collect();
        let lines = ItemLines {
            job_id: "runs".into(),
            total: 15,
            done: Default::default(),
            fresh,
            incomplete: false,
        };
        let undelivered = destinations
            .write_items(
                &DestinationSpec::parse(QUEUE).expect("queue"),
                "g",
                lines,
                &Deadline::after(std::time::Duration::from_secs(30)),
            )
            .await
            .expect_err("the second run is denied");
        assert_eq!(undelivered.error.code(), "DestinationDenied");
        let sent: Vec<Option<usize>> = undelivered.sent.iter().map(|o| o.index).collect();
        assert_eq!(
            sent,
            (0..10).map(Some).collect::<Vec<_>>(),
            "the first run of ten"
        );
    }

    #[tokio::test]
    async fn s3_destinations_are_not_sent_here() {
        let (destinations, _, _) = mocked(None);
        let dest = DestinationSpec::parse("s3://bucket/prefix/").expect("s3");
        let result = Outgoing {
            job_id: "j".into(),
            index: None,
            group: "j".into(),
            body: json!({}),
        };
        let err = destinations.send(&dest, &[result]).await.expect_err("s3");
        assert_eq!(err.code(), "InvalidDestination");
        assert!(err.to_string().contains("S3Destination"), "{err}");
    }
}
