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
//! [`sns`], [`eventbridge`] (message services, batched within each API's entry
//! and size limits) and [`dynamodb`] (one item per result, also the idempotency
//! ledger).

pub mod dynamodb;
pub mod eventbridge;
pub mod s3;
pub mod sns;
pub mod sqs;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::aws::errors::{class_of, Class, SdkFailure};
use crate::aws::retry::{retry, Backoff};
use crate::domain::deadline::Deadline;
use crate::domain::record::{ItemRecord, Record, Status};
use crate::observe::xray::Recorder;

pub use s3::{S3Destination, S3Location};

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
    /// Unique per result: the job id, with `#<index>` for a batch item. Used as
    /// the FIFO deduplication id and in error messages.
    pub fn key(&self) -> String {
        match self.index {
            Some(index) => format!("{}#{index}", self.job_id),
            None => self.job_id.clone(),
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
        }
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

    /// The doctor's write check: a probe object under an S3 destination's
    /// prefix. Other kinds are not probed (a probe message would reach
    /// consumers); returns an empty string for them.
    pub async fn probe(&self, dest: &DestinationSpec) -> Result<String, DestinationError> {
        match dest {
            DestinationSpec::S3(location) => {
                S3Destination::new(self.s3_client().clone(), location.clone())
                    .probe()
                    .await
            }
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
    /// [`S3Destination`], so an S3 spec is refused here.
    pub async fn send(
        &self,
        dest: &DestinationSpec,
        results: &[Outgoing],
    ) -> Result<Vec<String>, DestinationError> {
        let destination = dest.to_string();
        if results.is_empty() {
            return Ok(Vec::new());
        }
        match dest {
            DestinationSpec::S3(_) => Err(DestinationError::Invalid {
                destination,
                reason: "S3 destinations are written by S3Destination, not Destinations::send"
                    .into(),
            }),
            DestinationSpec::Sqs(queue) => {
                let ready = self
                    .prepare(&destination, results, sqs::MESSAGE_LIMIT, sqs::message_size)
                    .await?;
                sqs::send(self.sqs_client(), queue, &ready).await
            }
            DestinationSpec::Sns(topic) => {
                let ready = self
                    .prepare(&destination, results, sns::MESSAGE_LIMIT, sns::message_size)
                    .await?;
                sns::send(self.sns_client(), topic, &ready).await
            }
            DestinationSpec::EventBus(bus) => {
                let ready = self
                    .prepare(
                        &destination,
                        results,
                        eventbridge::ENTRY_LIMIT,
                        eventbridge::entry_size,
                    )
                    .await?;
                eventbridge::send(self.events_client(), bus, &ready).await
            }
            DestinationSpec::Dynamo(table) => {
                let ready = self
                    .prepare(
                        &destination,
                        results,
                        dynamodb::ITEM_LIMIT,
                        dynamodb::item_size,
                    )
                    .await?;
                dynamodb::send(self.dynamodb_client(), table, &ready).await
            }
        }
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
            DestinationSpec::S3(location) => {
                S3Destination::new(self.s3_client().clone(), location.clone())
                    .write(record)
                    .await?
            }
            _ => self.send(dest, &results).await?.join(","),
        };
        Ok(Written { reference, results })
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
    ) -> Result<Written, DestinationError> {
        let unserialisable = |err: serde_json::Error| DestinationError::Unavailable {
            destination: dest.to_string(),
            message: format!("an item result does not serialise: {err}"),
        };
        if let DestinationSpec::S3(location) = dest {
            let s3 = S3Destination::new(self.s3_client().clone(), location.clone());
            let (key, all) = lines.into_s3_object(location).map_err(unserialisable)?;
            let reference = retry(
                "delivery",
                DELIVERY_BACKOFF,
                deadline,
                DELIVERY_MARGIN,
                is_unavailable,
                || s3.write_lines(&key, &all),
            )
            .await?;
            return Ok(Written {
                reference,
                results: Vec::new(),
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
        self.send(dest, &results).await?;
        Ok(Written {
            reference: format!("{dest} ({} results)", results.len()),
            results,
        })
    }

    /// Renders each result's record, spilling the ones over `limit` (as
    /// `size_of` measures them for the service) to S3.
    async fn prepare<'a>(
        &self,
        destination: &str,
        results: &'a [Outgoing],
        limit: usize,
        size_of: fn(&Outgoing, &str) -> usize,
    ) -> Result<Vec<Prepared<'a>>, DestinationError> {
        let mut ready = Vec::with_capacity(results.len());
        for outgoing in results {
            let mut text = outgoing.body.to_string();
            let bytes = size_of(outgoing, &text);
            if bytes > limit {
                let too_large = DestinationError::TooLarge {
                    item: outgoing.key(),
                    destination: destination.to_owned(),
                    bytes,
                    limit,
                };
                let Some(spill) = &self.spill else {
                    return Err(too_large);
                };
                text = self.spill_record(spill, outgoing, text).await?.to_string();
                // A pointer is a few hundred bytes; only a job id near its own
                // length limit on a tiny service limit could still not fit.
                if size_of(outgoing, &text) > limit {
                    return Err(too_large);
                }
            }
            ready.push(Prepared { outgoing, text });
        }
        Ok(ready)
    }

    /// Writes a record to the spill location and returns the pointer to send
    /// instead: `job_id`, `index`, `status`, `spilled_to` and `bytes`.
    async fn spill_record(
        &self,
        spill: &S3Location,
        outgoing: &Outgoing,
        text: String,
    ) -> Result<Value, DestinationError> {
        let key = match outgoing.index {
            Some(index) => format!("{}{}/{index}.json", spill.prefix, outgoing.job_id),
            None => spill.key_for(&outgoing.job_id),
        };
        let uri = format!("s3://{}/{key}", spill.bucket);
        let bytes = text.len();
        self.s3_client()
            .put_object()
            .bucket(&spill.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(text.into_bytes()))
            .send()
            .await
            .map_err(|err| s3::classify(spill, "s3:PutObject", uri.clone(), err))?;
        let mut pointer = Map::new();
        pointer.insert("job_id".into(), Value::from(outgoing.job_id.as_str()));
        if let Some(index) = outgoing.index {
            pointer.insert("index".into(), Value::from(index));
        }
        if let Some(status) = outgoing.body.get("status") {
            pointer.insert("status".into(), status.clone());
        }
        pointer.insert("spilled_to".into(), Value::from(uri));
        pointer.insert("bytes".into(), Value::from(bytes));
        Ok(Value::Object(pointer))
    }
}

/// What a write delivered.
#[derive(Debug)]
pub struct Written {
    /// Where it went: an S3 URI, message ids, or the destination and a count.
    pub reference: String,
    /// The results sent, for a ledger that remembers them.
    pub results: Vec<Outgoing>,
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
pub const DELIVERY_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
/// See [`DELIVERY_BACKOFF`].
pub const DELIVERY_MARGIN: Duration = Duration::from_millis(300);

/// Whether a failed write is worth another attempt in this invocation: an
/// outage or throttling the SDK's own retries did not outlast.
pub fn is_unavailable(err: &DestinationError) -> bool {
    matches!(err, DestinationError::Unavailable { .. })
}

/// A result with the text to send: its record, or the pointer to where the
/// record was spilled.
#[derive(Debug, Clone)]
pub(crate) struct Prepared<'a> {
    /// The result.
    pub outgoing: &'a Outgoing,
    /// The JSON text that goes in the message, event or item.
    pub text: String,
}

/// The most one SendMessageBatch, PublishBatch or PutEvents call carries.
pub(crate) const MAX_BATCH_ENTRIES: usize = 10;

/// Splits entries of the given sizes, in order, into runs of at most
/// `max_entries` entries and `max_bytes` bytes together. An entry larger than
/// `max_bytes` on its own gets a run of its own (callers have spilled those).
pub(crate) fn batches(sizes: &[usize], max_entries: usize, max_bytes: usize) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (position, &size) in sizes.iter().enumerate() {
        let full = position - start == max_entries || bytes + size > max_bytes;
        if position > start && full {
            runs.push(start..position);
            start = position;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        runs.push(start..sizes.len());
    }
    runs
}

/// The longest FIFO message group or deduplication id SQS and SNS take.
const FIFO_ID_LIMIT: usize = 128;

/// A FIFO group or deduplication id for `text`: the text itself when it fits
/// (at most 128 ASCII letters, digits and punctuation), else `sha256:` and the
/// hex SHA-256 of it, which is stable across retries and so still deduplicates.
pub(crate) fn fifo_id(text: &str) -> String {
    let fits = !text.is_empty()
        && text.len() <= FIFO_ID_LIMIT
        && text.bytes().all(|b| b.is_ascii_graphic());
    if fits {
        return text.to_owned();
    }
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

/// What a delivery failure is reported against, and what to grant when denied.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// The destination as given (queue URL or ARN).
    pub destination: String,
    /// The permission a denial asks for, e.g. `sqs:SendMessage`.
    pub action: &'static str,
    /// The resource to grant it on (an ARN).
    pub resource: String,
    /// What a missing destination is, e.g. "queue `results`".
    pub what: String,
    /// The service, for messages: "SQS", "SNS", ...
    pub service: &'static str,
}

impl Delivery {
    /// Maps an error code (of a whole call or of one batch entry) to what the
    /// user should fix; `None` for codes that say nothing about the destination.
    fn by_code(&self, code: &str, message: &str) -> Option<DestinationError> {
        match class_of(code) {
            Class::Denied => Some(DestinationError::Denied {
                action: self.action,
                destination: self.destination.clone(),
                message: message.to_owned(),
                fix: format!(
                    "grant the execution role {} on {}",
                    self.action, self.resource
                ),
            }),
            Class::Missing => Some(DestinationError::Missing {
                destination: self.destination.clone(),
                what: self.what.clone(),
            }),
            _ => None,
        }
    }

    /// Maps a failed call.
    pub fn failed<E: ProvideErrorMetadata>(
        &self,
        err: SdkError<E, HttpResponse>,
    ) -> DestinationError {
        let failure = SdkFailure::read(&err);
        let message = failure.message().to_owned();
        if let Some(code) = &failure.code {
            return self
                .by_code(code, &message)
                .unwrap_or_else(|| self.unavailable(format!("{code}: {message}")));
        }
        if failure.class() == Class::Denied {
            return self
                .by_code("AccessDenied", "HTTP 403 without an error code")
                .unwrap_or_else(|| self.unavailable("HTTP 403".into()));
        }
        self.unavailable(failure.unanswered(self.service))
    }

    /// A transient failure.
    pub fn unavailable(&self, message: String) -> DestinationError {
        DestinationError::Unavailable {
            destination: self.destination.clone(),
            message,
        }
    }

    /// A request the SDK would not build (a required field left out): a bug
    /// here, reported rather than panicking.
    pub fn unbuildable(&self, err: impl fmt::Display) -> DestinationError {
        self.unavailable(format!(
            "the {} request could not be built: {err}",
            self.service
        ))
    }
}

/// How one entry of a batch call went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryOutcome {
    /// Accepted, with the service's id for it.
    Sent(String),
    /// Refused; `sender_fault` entries are not retried.
    Failed {
        /// The service's error code.
        code: String,
        /// The service's message.
        message: String,
        /// The request was at fault, so sending it again will not help.
        sender_fault: bool,
    },
}

/// Sends the entries `0..count` of a batch with `call`, which sends the
/// entries at the positions given and reports each one's outcome by position.
/// Entries that failed through no fault of the request are sent once more;
/// a denied, missing or rejected entry fails the delivery at once. `key_of`
/// names an entry's result in errors.
pub(crate) async fn send_batch_with_retry<F, Fut>(
    delivery: &Delivery,
    count: usize,
    key_of: impl Fn(usize) -> String,
    mut call: F,
) -> Result<Vec<String>, DestinationError>
where
    F: FnMut(Vec<usize>) -> Fut,
    Fut: Future<Output = Result<Vec<(usize, EntryOutcome)>, DestinationError>>,
{
    let mut ids: Vec<Option<String>> = vec![None; count];
    let mut pending: Vec<usize> = (0..count).collect();
    let mut last_failure = String::new();
    for _attempt in 0..2 {
        let mut retry = Vec::new();
        for (position, outcome) in call(pending.clone()).await? {
            let Some(slot) = ids.get_mut(position) else {
                continue;
            };
            match outcome {
                EntryOutcome::Sent(id) => *slot = Some(id),
                EntryOutcome::Failed {
                    code,
                    message,
                    sender_fault,
                } => {
                    if let Some(err) = delivery.by_code(&code, &message) {
                        return Err(err);
                    }
                    let item = key_of(position);
                    if sender_fault {
                        return Err(DestinationError::Invalid {
                            destination: delivery.destination.clone(),
                            reason: format!(
                                "{} rejected the message for {item} ({code}: {message}); \
                                 sending it again would fail the same way",
                                delivery.service
                            ),
                        });
                    }
                    last_failure = format!("{item}: {code}: {message}");
                    retry.push(position);
                }
            }
        }
        pending = retry;
        if pending.is_empty() {
            break;
        }
    }
    if !pending.is_empty() {
        return Err(delivery.unavailable(format!(
            "{} of {count} entries still failed after a retry, e.g. {last_failure}",
            pending.len()
        )));
    }
    ids.into_iter()
        .enumerate()
        .map(|(position, id)| {
            id.ok_or_else(|| {
                delivery.unavailable(format!(
                    "{} reported no outcome for {}",
                    delivery.service,
                    key_of(position)
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use aws_sdk_s3::operation::put_object::PutObjectOutput;
    use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput;
    use aws_sdk_sqs::types::SendMessageBatchResultEntry;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use serde_json::json;

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

    #[test]
    fn batches_respect_entry_count_and_total_size() {
        assert_eq!(batches(&[1; 23], 10, 100), [0..10, 10..20, 20..23]);
        assert_eq!(batches(&[40, 40, 40, 10], 10, 100), [0..2, 2..4]);
        assert_eq!(
            batches(&[150, 10], 10, 100),
            [0..1, 1..2],
            "an oversized entry goes alone"
        );
        assert!(batches(&[], 10, 100).is_empty());
    }

    #[test]
    fn fifo_ids_are_the_key_when_it_fits_else_a_stable_hash() {
        assert_eq!(fifo_id("job-1#3"), "job-1#3");
        let long = "x".repeat(129);
        let hashed = fifo_id(&long);
        assert_eq!(hashed.len(), "sha256:".len() + 64);
        assert_eq!(hashed, fifo_id(&long));
        assert_ne!(hashed, fifo_id(&"x".repeat(130)));
        assert!(fifo_id("has space").starts_with("sha256:"));
        assert_eq!(fifo_id(&"y".repeat(128)), "y".repeat(128));
    }

    /// The objects put: (key, content type, body).
    type Puts = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

    /// Destinations with a mocked S3 (recording puts) and SQS (accepting all,
    /// recording bodies).
    fn mocked(spill: Option<&str>) -> (Destinations, Puts, Arc<Mutex<Vec<String>>>) {
        let puts: Puts = Arc::default();
        let seen_puts = puts.clone();
        let s3_rule = mock!(aws_sdk_s3::Client::put_object).then_compute_output(move |req| {
            let body = req.body().bytes().map(<[u8]>::to_vec).unwrap_or_default();
            seen_puts.lock().expect("lock").push((
                req.key().unwrap_or_default().to_owned(),
                req.content_type().unwrap_or_default().to_owned(),
                body,
            ));
            PutObjectOutput::builder().build()
        });
        let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen_bodies = bodies.clone();
        let sqs_rule =
            mock!(aws_sdk_sqs::Client::send_message_batch).then_compute_output(move |req| {
                let mut output = SendMessageBatchOutput::builder().set_failed(Some(Vec::new()));
                for entry in req.entries() {
                    seen_bodies
                        .lock()
                        .expect("lock")
                        .push(entry.message_body().to_owned());
                    output = output.successful(
                        SendMessageBatchResultEntry::builder()
                            .id(entry.id())
                            .message_id(format!("m{}", entry.id()))
                            .md5_of_message_body("x")
                            .build()
                            .expect("entry"),
                    );
                }
                output.build().expect("output")
            });
        let spill = spill.map(|uri| S3Location::parse(uri).expect("spill uri"));
        let destinations =
            Destinations::new(&aws_config::SdkConfig::builder().build(), true, spill);
        let _ = destinations
            .s3
            .set(mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&s3_rule]));
        let _ = destinations
            .sqs
            .set(mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&sqs_rule]));
        (destinations, puts, bodies)
    }

    fn big_result(index: Option<usize>) -> Outgoing {
        Outgoing {
            job_id: "big-job".into(),
            index,
            group: "big-job".into(),
            body: json!({"status": "succeeded", "output": {"text": "z".repeat(300_000)}}),
        }
    }

    #[tokio::test]
    async fn a_result_over_the_limit_is_spilled_and_a_pointer_sent() {
        let (destinations, puts, bodies) = mocked(Some("s3://spill-bucket/large"));
        let small = Outgoing {
            job_id: "big-job".into(),
            index: Some(0),
            group: "big-job".into(),
            body: json!({"status": "succeeded"}),
        };
        let results = [small.clone(), big_result(Some(1)), big_result(None)];
        let dest = DestinationSpec::parse(QUEUE).expect("queue");
        let ids = destinations.send(&dest, &results).await.expect("sent");
        assert_eq!(ids, ["m0", "m1", "m2"]);

        let puts = puts.lock().expect("lock");
        let keys: Vec<&str> = puts.iter().map(|(key, _, _)| key.as_str()).collect();
        assert_eq!(keys, ["large/big-job/1.json", "large/big-job.json"]);
        assert_eq!(puts[0].1, "application/json");
        let spilled: Value = serde_json::from_slice(&puts[0].2).expect("json");
        assert_eq!(spilled, results[1].body);

        let bodies = bodies.lock().expect("lock");
        assert_eq!(
            bodies[0],
            small.body.to_string(),
            "a small result is sent as is"
        );
        let pointer: Value = serde_json::from_str(&bodies[1]).expect("pointer");
        assert_eq!(
            pointer,
            json!({"job_id": "big-job", "index": 1, "status": "succeeded",
                   "spilled_to": "s3://spill-bucket/large/big-job/1.json", "bytes": puts[0].2.len()})
        );
        let single: Value = serde_json::from_str(&bodies[2]).expect("pointer");
        assert!(single.get("index").is_none(), "{single}");
        assert_eq!(single["spilled_to"], "s3://spill-bucket/large/big-job.json");
    }

    #[tokio::test]
    async fn a_result_over_the_limit_without_a_spill_location_is_too_large() {
        let (destinations, puts, bodies) = mocked(None);
        let dest = DestinationSpec::parse(QUEUE).expect("queue");
        let err = destinations
            .send(&dest, &[big_result(Some(4))])
            .await
            .expect_err("too large");
        assert!(
            matches!(&err, DestinationError::TooLarge { item, limit: 262_144, .. } if item == "big-job#4"),
            "{err:?}"
        );
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("RELAY_SPILL_S3"));
        assert!(puts.lock().expect("lock").is_empty());
        assert!(bodies.lock().expect("lock").is_empty(), "nothing is sent");
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
