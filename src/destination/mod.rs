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

use std::fmt;
use std::sync::OnceLock;

use serde_json::Value;
use thiserror::Error;

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
/// function's base configuration.
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
                .build();
            aws_sdk_s3::Client::from_conf(conf)
        })
    }

    /// The SQS client.
    pub fn sqs_client(&self) -> &aws_sdk_sqs::Client {
        self.sqs
            .get_or_init(|| aws_sdk_sqs::Client::new(&self.base))
    }

    /// The SNS client.
    pub fn sns_client(&self) -> &aws_sdk_sns::Client {
        self.sns
            .get_or_init(|| aws_sdk_sns::Client::new(&self.base))
    }

    /// The EventBridge client.
    pub fn events_client(&self) -> &aws_sdk_eventbridge::Client {
        self.events
            .get_or_init(|| aws_sdk_eventbridge::Client::new(&self.base))
    }

    /// The DynamoDB client.
    pub fn dynamodb_client(&self) -> &aws_sdk_dynamodb::Client {
        self.dynamodb
            .get_or_init(|| aws_sdk_dynamodb::Client::new(&self.base))
    }

    /// Uses `client` for S3 (tests pass a mocked one).
    pub fn with_s3_client(mut self, client: aws_sdk_s3::Client) -> Self {
        self.s3 = OnceLock::from(client);
        self
    }

    /// STUB: sends results to a message service or table.
    pub async fn send(
        &self,
        dest: &DestinationSpec,
        results: &[Outgoing],
    ) -> Result<Vec<String>, DestinationError> {
        Err(DestinationError::Invalid {
            destination: dest.to_string(),
            reason: format!("{} results: not implemented yet", results.len()),
        })
    }

    /// STUB: the succeeded results of a job in a DynamoDB table.
    pub async fn succeeded_in_table(
        &self,
        table: &dynamodb::Table,
        job_id: &str,
    ) -> Result<std::collections::BTreeMap<usize, Value>, DestinationError> {
        dynamodb::succeeded(self.dynamodb_client(), table, job_id).await
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
}
