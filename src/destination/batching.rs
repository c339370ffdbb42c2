//! Batched delivery to the message services (SQS, SNS, EventBridge): runs of
//! entries within an API's count and size limits ([`send_in_batches`]), each
//! run sent with one retry of the entries that failed through no fault of the
//! request, FIFO group and deduplication ids, and the per-service context
//! ([`Delivery`]) a failure is reported against.
//!
//! A service module supplies only how to build its entries and make its batch
//! call; everything from sizes to message ids is here.

use std::fmt;
use std::future::Future;
use std::ops::Range;

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use sha2::{Digest, Sha256};

use super::spill::Prepared;
use super::{DestinationError, Outgoing};
use crate::aws::errors::{class_of, Class, SdkFailure};

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

impl EntryOutcome {
    /// A refused entry, as the service reported it.
    pub(crate) fn failed(code: &str, message: Option<&str>, sender_fault: bool) -> Self {
        Self::Failed {
            code: code.to_owned(),
            message: message.unwrap_or("no message").to_owned(),
            sender_fault,
        }
    }
}

/// The request entries for the results of `batch` at `positions`, each built
/// by `build` from the result and its position (the entry id, unique within
/// the batch). A request the SDK would not build is an error, not sent.
pub(crate) fn entries_at<T, E: fmt::Display>(
    delivery: &Delivery,
    batch: &[Prepared<'_>],
    positions: &[usize],
    build: impl Fn(&Prepared<'_>, usize) -> Result<T, E>,
) -> Result<Vec<T>, DestinationError> {
    positions
        .iter()
        .filter_map(|&position| batch.get(position).map(|prepared| (prepared, position)))
        .map(|(prepared, position)| build(prepared, position).map_err(|e| delivery.unbuildable(e)))
        .collect()
}

/// The outcomes of a batch call that answers by entry id (the position as
/// text): `sent` as (id, the service's id for the message), `failed` as (id,
/// code, message, whether the request was at fault). Entries whose id is not
/// a position, or that were accepted without an id, are left out (and so
/// reported as having no outcome).
pub(crate) fn by_entry_id<'s>(
    sent: impl Iterator<Item = (Option<&'s str>, Option<&'s str>)>,
    failed: impl Iterator<Item = (&'s str, &'s str, Option<&'s str>, bool)>,
) -> Vec<(usize, EntryOutcome)> {
    let sent = sent.filter_map(|(id, message_id)| {
        let position = id?.parse().ok()?;
        Some((position, EntryOutcome::Sent(message_id?.to_owned())))
    });
    let failed = failed.filter_map(|(id, code, message, sender_fault)| {
        let position = id.parse().ok()?;
        Some((position, EntryOutcome::failed(code, message, sender_fault)))
    });
    sent.chain(failed).collect()
}

/// A service that takes results in batch calls (SQS, SNS, EventBridge): all
/// [`send_in_batches`] needs of it. Implemented by the parsed destination
/// (`Queue`, `Topic`, `Bus`).
pub(crate) trait BatchService {
    /// The service's SDK client.
    type Client;
    /// The largest entry, and the most one call carries, in bytes.
    const MAX_BYTES: usize;

    /// An entry's size as the service counts it, with `text` as its body.
    fn size_of(outgoing: &Outgoing, text: &str) -> usize;

    /// What a failure is reported against.
    fn delivery(&self) -> Delivery;

    /// One batch call with the entries of `batch` at `positions` (built with
    /// [`entries_at`]), each one's outcome by position.
    fn call(
        &self,
        client: &Self::Client,
        delivery: &Delivery,
        batch: &[Prepared<'_>],
        positions: Vec<usize>,
    ) -> impl Future<Output = Result<Vec<(usize, EntryOutcome)>, DestinationError>>;
}

/// Sends `ready` to `service` in runs of at most [`MAX_BATCH_ENTRIES`]
/// entries and [`BatchService::MAX_BYTES`] bytes, each run with
/// [`send_batch_with_retry`]; the service's ids, in the order of `ready`.
///
/// A run that fails ends the send; the error says how many results the runs
/// before it delivered ([`PartialSend::sent`]), so they can be remembered and
/// are not sent again.
pub(crate) async fn send_in_batches<S: BatchService>(
    client: &S::Client,
    service: &S,
    ready: &[Prepared<'_>],
) -> Result<Vec<String>, PartialSend> {
    let delivery = service.delivery();
    let sizes: Vec<usize> = ready
        .iter()
        .map(|p| S::size_of(p.outgoing, &p.text))
        .collect();
    let mut ids = Vec::with_capacity(ready.len());
    for run in batches(&sizes, MAX_BATCH_ENTRIES, S::MAX_BYTES) {
        let batch = &ready[run];
        let sent = send_batch_with_retry(
            &delivery,
            batch.len(),
            |position| batch[position].outgoing.key(),
            |positions| service.call(client, &delivery, batch, positions),
        )
        .await
        .map_err(|error| PartialSend {
            sent: ids.len(),
            error,
        })?;
        ids.extend(sent);
    }
    Ok(ids)
}

/// [`send_in_batches`] with only the error (tests).
#[cfg(test)]
pub(crate) async fn send_all<S: BatchService>(
    client: &S::Client,
    service: &S,
    ready: &[Prepared<'_>],
) -> Result<Vec<String>, DestinationError> {
    send_in_batches(client, service, ready)
        .await
        .map_err(|p| p.error)
}

/// A send that stopped: the error, and how many of the results (from the
/// first, in order) were delivered before it.
#[derive(Debug)]
pub(crate) struct PartialSend {
    /// Results delivered before the failing run.
    pub sent: usize,
    /// Why the rest were not.
    pub error: DestinationError,
}

impl From<DestinationError> for PartialSend {
    /// A failure before anything was sent.
    fn from(error: DestinationError) -> Self {
        Self { sent: 0, error }
    }
}

/// Sends the entries `0..count` of a batch with `call`, which sends the
/// entries at the positions given and reports each one's outcome by position.
/// Entries that failed through no fault of the request are sent once more;
/// a denied, missing or rejected entry fails the delivery at once. `key_of`
/// names an entry's result in errors.
async fn send_batch_with_retry<F, Fut>(
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
    use super::*;

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
}
