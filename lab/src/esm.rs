//! An SQS event source mapping, as Lambda runs one: pollers take batches of
//! messages off a queue and invoke the function with them, one invocation at
//! a time per function process, at most `maximum_concurrency` at once. A
//! partial batch response (`batchItemFailures`) leaves the failed records on
//! the queue, to come back after the visibility timeout; an error or no
//! answer leaves them all. The queue's own redrive policy (`maxReceiveCount`)
//! moves a message that keeps failing to its dead-letter queue, as SQS does.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use serde_json::{json, Value};

use crate::runtime_api::{Outcome, RuntimeApi};
use crate::LabError;

/// The mapping's settings.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The queue's URL.
    pub queue_url: String,
    /// The queue's ARN (`eventSourceARN` in each record).
    pub queue_arn: String,
    /// Records per invocation (`BatchSize`, at most 10 here).
    pub batch_size: i32,
    /// Invocations at once (`ScalingConfig.MaximumConcurrency`).
    pub maximum_concurrency: usize,
    /// How long one invocation may take (the function's timeout).
    pub function_timeout: Duration,
}

/// What the mapping did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Invocations made.
    pub invocations: usize,
    /// Records handed to the function, redeliveries included.
    pub records: usize,
    /// Records deleted after a successful answer.
    pub deleted: usize,
    /// The most invocations that were running at once.
    pub peak_concurrency: usize,
}

/// Polls `mapping`'s queue and invokes the functions behind `runtimes` (one
/// poller per runtime, at most `maximum_concurrency` of them) until the queue
/// has been empty for `idle` or `limit` has passed.
pub async fn run(
    sqs: &aws_sdk_sqs::Client,
    mapping: &Mapping,
    runtimes: &[RuntimeApi],
    idle: Duration,
    limit: Duration,
) -> Result<Report, LabError> {
    let started = Instant::now();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let pollers = runtimes.iter().take(mapping.maximum_concurrency.max(1));
    let results = futures_util::future::join_all(pollers.map(|runtime| {
        poll(
            sqs,
            mapping,
            runtime,
            idle,
            started + limit,
            &running,
            &peak,
        )
    }))
    .await;
    let mut report = Report::default();
    for result in results {
        let one = result?;
        report.invocations += one.invocations;
        report.records += one.records;
        report.deleted += one.deleted;
    }
    report.peak_concurrency = peak.load(Ordering::SeqCst);
    Ok(report)
}

async fn poll(
    sqs: &aws_sdk_sqs::Client,
    mapping: &Mapping,
    runtime: &RuntimeApi,
    idle: Duration,
    until: Instant,
    running: &AtomicUsize,
    peak: &AtomicUsize,
) -> Result<Report, LabError> {
    let mut report = Report::default();
    let mut empty_since = Instant::now();
    while Instant::now() < until {
        let received = sqs
            .receive_message()
            .queue_url(&mapping.queue_url)
            .max_number_of_messages(mapping.batch_size.clamp(1, 10))
            .wait_time_seconds(0)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| LabError::Aws(format!("receive: {e:?}")))?;
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            if empty_since.elapsed() >= idle {
                return Ok(report);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        empty_since = Instant::now();
        let records: Vec<Value> = messages.iter().map(|m| record(mapping, m)).collect();
        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(now, Ordering::SeqCst);
        let outcome = runtime
            .invoke(
                json!({"Records": records}).to_string().into_bytes(),
                mapping.function_timeout,
            )
            .await;
        running.fetch_sub(1, Ordering::SeqCst);
        report.invocations += 1;
        report.records += messages.len();
        let failed: Option<HashSet<String>> = match outcome {
            Ok(Outcome::Response { body }) => Some(
                body["batchItemFailures"]
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|i| i["itemIdentifier"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            // An error or no answer: every record stays on the queue.
            _ => None,
        };
        let Some(failed) = failed else {
            continue;
        };
        let deletes: Vec<DeleteMessageBatchRequestEntry> = messages
            .iter()
            .filter(|m| !failed.contains(m.message_id().unwrap_or_default()))
            .enumerate()
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .ok()
            })
            .collect();
        if deletes.is_empty() {
            continue;
        }
        report.deleted += deletes.len();
        sqs.delete_message_batch()
            .queue_url(&mapping.queue_url)
            .set_entries(Some(deletes))
            .send()
            .await
            .map_err(|e| LabError::Aws(format!("delete: {e:?}")))?;
    }
    Ok(report)
}

/// One message as Lambda's SQS event record.
fn record(mapping: &Mapping, message: &aws_sdk_sqs::types::Message) -> Value {
    let attributes: serde_json::Map<String, Value> = message
        .attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| (k.as_str().to_owned(), Value::from(v.as_str())))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "messageId": message.message_id(),
        "receiptHandle": message.receipt_handle(),
        "body": message.body(),
        "attributes": attributes,
        "messageAttributes": {},
        "md5OfBody": message.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": mapping.queue_arn,
        "awsRegion": crate::moto::REGION,
    })
}
