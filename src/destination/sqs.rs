//! SQS queues: one message per result, sent with `SendMessageBatch` in runs
//! within the API's entry and size limits. A FIFO queue gets the job's group as
//! the message group and [`Outgoing::deduplication_id`] as the deduplication
//! id, so a retried event does not deliver a success twice within SQS's
//! five-minute window, and a failure sent earlier never hides it.

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

use super::{
    by_entry_id, entries_at, fifo_id, BatchService, Delivery, DestinationError, EntryOutcome,
    Outgoing, Prepared,
};
use crate::aws::uri::split_arn;

/// The largest message, and the most one `SendMessageBatch` call carries, in
/// bytes. SQS has taken 1 MiB since 2025; 256 KiB keeps messages readable by
/// consumers and services (Lambda, SNS, EventBridge Pipes) still on the old limit.
pub(crate) const MESSAGE_LIMIT: usize = 262_144;

const ARN_FORM: &str = "arn:<partition>:sqs:<region>:<account id>:<queue name>";
const URL_FORM: &str = "https://sqs.<region>.amazonaws.com/<account id>/<queue name>";

/// A queue, by URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    /// The queue URL the API takes.
    pub url: String,
    /// A FIFO queue (`.fifo`): messages carry group and deduplication ids.
    pub fifo: bool,
    /// The queue's ARN, for the policy to grant. A URL on a custom endpoint
    /// names no region, so its ARN has `*` there.
    pub arn: String,
}

impl Queue {
    /// Parses a queue URL (`https://sqs.<region>.amazonaws.com/<account>/<name>`,
    /// or any http(s) URL whose path is `/<account>/<name>`) or ARN.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("arn:") {
            return Self::from_arn(text);
        }
        let rest = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"))
            .ok_or_else(|| {
                format!("`{text}` is not a queue URL or ARN; expected {URL_FORM} or {ARN_FORM}")
            })?;
        let (host, path) = rest.split_once('/').ok_or_else(|| {
            format!("`{text}` has no /<account id>/<queue name> path; expected {URL_FORM}")
        })?;
        if host.is_empty() || path.contains(['?', '#']) {
            return Err(format!(
                "`{text}` is not a plain queue URL; expected {URL_FORM}"
            ));
        }
        let (account, name) = path.split_once('/').ok_or_else(|| {
            format!("`{text}` has no /<account id>/<queue name> path; expected {URL_FORM}")
        })?;
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "`{account}` in `{text}` is not a 12-digit account id; expected {URL_FORM}"
            ));
        }
        check_name(name)?;
        let (partition, region) = region_of_host(host);
        Ok(Self {
            url: text.to_owned(),
            fifo: name.ends_with(".fifo"),
            arn: format!("arn:{partition}:sqs:{region}:{account}:{name}"),
        })
    }

    fn from_arn(text: &str) -> Result<Self, String> {
        let arn = split_arn(text, "sqs", ARN_FORM)?;
        check_name(arn.resource)?;
        let domain = match arn.partition {
            "aws-cn" => "amazonaws.com.cn",
            _ => "amazonaws.com",
        };
        Ok(Self {
            // The SDK sends to its configured endpoint; the URL is only a parameter.
            url: format!(
                "https://sqs.{}.{domain}/{}/{}",
                arn.region, arn.account, arn.resource
            ),
            fifo: arn.resource.ends_with(".fifo"),
            arn: text.to_owned(),
        })
    }

    /// The queue's name (the URL's last segment).
    pub fn name(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or_default()
    }
}

/// Queue names are 1-80 letters, digits, hyphens and underscores, with `.fifo`
/// at the end of a FIFO queue's.
fn check_name(name: &str) -> Result<(), String> {
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    let ok = !stem.is_empty()
        && name.len() <= 80
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a queue name (1-80 letters, digits, hyphens and underscores, `.fifo` at the end for FIFO)"
        ))
    }
}

/// The partition and region of `sqs.<region>.amazonaws.com[.cn]` or the legacy
/// `<region>.queue.amazonaws.com`; `*` for the region of any other host.
fn region_of_host(host: &str) -> (&'static str, &str) {
    let host = host.split(':').next().unwrap_or(host);
    let (domain, partition) = if let Some(stem) = host.strip_suffix(".amazonaws.com.cn") {
        (stem, "aws-cn")
    } else if let Some(stem) = host.strip_suffix(".amazonaws.com") {
        (stem, "aws")
    } else {
        return ("aws", "*");
    };
    let region = domain
        .strip_prefix("sqs.")
        .or_else(|| domain.strip_suffix(".queue"))
        .filter(|region| !region.is_empty() && !region.contains('.'));
    match region {
        Some(region) => (partition, region),
        None => (partition, "*"),
    }
}

/// The message attributes every result carries: (name, data type, value).
pub(crate) fn attributes(outgoing: &Outgoing) -> Vec<(&'static str, &'static str, String)> {
    let mut attributes = vec![("job_id", "String", outgoing.job_id.clone())];
    if let Some(index) = outgoing.index {
        attributes.push(("item_index", "Number", index.to_string()));
    }
    attributes
}

/// A message's size as SQS counts it: the body plus each attribute's name,
/// data type and value.
pub(crate) fn message_size(outgoing: &Outgoing, text: &str) -> usize {
    text.len()
        + attributes(outgoing)
            .iter()
            .map(|(name, kind, value)| name.len() + kind.len() + value.len())
            .sum::<usize>()
}

/// One message per result, with `SendMessageBatch`.
impl BatchService for Queue {
    type Client = aws_sdk_sqs::Client;
    const MAX_BYTES: usize = MESSAGE_LIMIT;

    fn size_of(outgoing: &Outgoing, text: &str) -> usize {
        message_size(outgoing, text)
    }

    fn delivery(&self) -> Delivery {
        Delivery {
            destination: self.url.clone(),
            action: "sqs:SendMessage",
            resource: self.arn.clone(),
            what: format!("queue `{}`", self.name()),
            service: "SQS",
        }
    }

    /// One `SendMessageBatch` call; the entry ids are the positions, so they
    /// are unique within the batch.
    async fn call(
        &self,
        client: &aws_sdk_sqs::Client,
        delivery: &Delivery,
        batch: &[Prepared<'_>],
        positions: Vec<usize>,
    ) -> Result<Vec<(usize, EntryOutcome)>, DestinationError> {
        let entries = entries_at(delivery, batch, &positions, |prepared, position| {
            entry(self, prepared, position)
        })?;
        let output = client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|err| delivery.failed(err))?;
        Ok(by_entry_id(
            output
                .successful()
                .iter()
                .map(|sent| (Some(sent.id()), Some(sent.message_id()))),
            output
                .failed()
                .iter()
                .map(|f| (f.id(), f.code(), f.message(), f.sender_fault())),
        ))
    }
}

fn entry(
    queue: &Queue,
    prepared: &Prepared<'_>,
    position: usize,
) -> Result<SendMessageBatchRequestEntry, aws_sdk_sqs::error::BuildError> {
    let outgoing = prepared.outgoing;
    let mut entry = SendMessageBatchRequestEntry::builder()
        .id(position.to_string())
        .message_body(&prepared.text);
    for (name, kind, value) in attributes(outgoing) {
        let value = MessageAttributeValue::builder()
            .data_type(kind)
            .string_value(value)
            .build()?;
        entry = entry.message_attributes(name, value);
    }
    if queue.fifo {
        entry = entry
            .message_group_id(fifo_id(&outgoing.group))
            .message_deduplication_id(fifo_id(&outgoing.deduplication_id()));
    }
    entry.build()
}

#[cfg(test)]
mod tests {
    use super::super::batching::send_all;
    use std::sync::{Arc, Mutex};

    use aws_sdk_sqs::operation::send_message_batch::{
        SendMessageBatchError, SendMessageBatchOutput,
    };
    use aws_sdk_sqs::types::{BatchResultErrorEntry, SendMessageBatchResultEntry};
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use aws_smithy_types::error::ErrorMetadata;
    use serde_json::json;

    use super::*;

    const URL: &str = "https://sqs.eu-west-1.amazonaws.com/222222222222/results";

    fn outgoing(job_id: &str, index: Option<usize>, body: serde_json::Value) -> Outgoing {
        Outgoing {
            job_id: job_id.into(),
            index,
            group: "group-1".into(),
            body,
        }
    }

    fn success_entry(id: &str) -> SendMessageBatchResultEntry {
        SendMessageBatchResultEntry::builder()
            .id(id)
            .message_id(format!("m-{id}"))
            .md5_of_message_body("x")
            .build()
            .expect("entry")
    }

    fn failed_entry(id: &str, code: &str, sender_fault: bool) -> BatchResultErrorEntry {
        BatchResultErrorEntry::builder()
            .id(id)
            .code(code)
            .message("from sqs")
            .sender_fault(sender_fault)
            .build()
            .expect("entry")
    }

    /// A SendMessageBatch mock failing every entry of every call with `code`.
    fn failing_every_entry(code: &'static str, sender_fault: bool) -> aws_smithy_mocks::Rule {
        mock!(aws_sdk_sqs::Client::send_message_batch).then_compute_output(move |req| {
            SendMessageBatchOutput::builder()
                .set_successful(Some(Vec::new()))
                .set_failed(Some(
                    req.entries()
                        .iter()
                        .map(|e| failed_entry(e.id(), code, sender_fault))
                        .collect(),
                ))
                .build()
                .expect("output")
        })
    }

    type Calls = Arc<Mutex<Vec<Vec<SendMessageBatchRequestEntry>>>>;

    /// A SendMessageBatch mock accepting every entry and recording each call's entries.
    fn accepting() -> (aws_smithy_mocks::Rule, Calls) {
        let calls: Calls = Arc::default();
        let seen = calls.clone();
        let rule = mock!(aws_sdk_sqs::Client::send_message_batch).then_compute_output(move |req| {
            let entries = req.entries().to_vec();
            let output = SendMessageBatchOutput::builder()
                .set_successful(Some(
                    entries.iter().map(|e| success_entry(e.id())).collect(),
                ))
                .set_failed(Some(Vec::new()))
                .build()
                .expect("output");
            seen.lock().expect("lock").push(entries);
            output
        });
        (rule, calls)
    }

    #[test]
    fn queue_urls_and_arns_parse() {
        let queue = Queue::parse(URL).expect("url");
        assert_eq!(queue.arn, "arn:aws:sqs:eu-west-1:222222222222:results");
        assert!(!queue.fifo);
        assert_eq!(queue.name(), "results");

        let queue = Queue::parse("arn:aws:sqs:us-east-1:222222222222:out.fifo").expect("arn");
        assert_eq!(
            queue.url,
            "https://sqs.us-east-1.amazonaws.com/222222222222/out.fifo"
        );
        assert!(queue.fifo);

        let local = Queue::parse("http://127.0.0.1:5000/222222222222/q").expect("moto url");
        assert_eq!(local.url, "http://127.0.0.1:5000/222222222222/q");
        assert_eq!(local.arn, "arn:aws:sqs:*:222222222222:q");

        let legacy = Queue::parse("https://us-west-2.queue.amazonaws.com/222222222222/q")
            .expect("legacy url");
        assert_eq!(legacy.arn, "arn:aws:sqs:us-west-2:222222222222:q");
    }

    #[test]
    fn malformed_queues_say_what_is_expected() {
        for (text, expected) in [
            (
                "https://sqs.us-east-1.amazonaws.com/q",
                "no /<account id>/<queue name>",
            ),
            (
                "https://sqs.us-east-1.amazonaws.com/2222/q",
                "12-digit account id",
            ),
            (
                "https://sqs.us-east-1.amazonaws.com/222222222222/a/b",
                "not a queue name",
            ),
            (
                "https://sqs.us-east-1.amazonaws.com/222222222222/",
                "not a queue name",
            ),
            (
                "https://sqs.us-east-1.amazonaws.com/222222222222/q?x=1",
                "not a plain queue URL",
            ),
            ("arn:aws:sns:us-east-1:222222222222:q", "not `sqs`"),
            ("arn:aws:sqs::222222222222:q", "no region"),
            ("arn:aws:sqs:us-east-1:222222222222", "not an ARN"),
        ] {
            let err = Queue::parse(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn message_size_counts_body_and_attributes() {
        let result = outgoing("job", Some(12), json!({"a": 1}));
        // body 7 + job_id/String/job 15 + item_index/Number/12 18
        assert_eq!(message_size(&result, "{\"a\":1}"), 7 + 15 + 18);
    }

    #[tokio::test]
    async fn twenty_three_results_go_in_three_calls_of_ten_ten_and_three() {
        let (rule, calls) = accepting();
        let client = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&rule]);
        let results: Vec<Outgoing> = (0..23)
            .map(|i| outgoing("batch", Some(i), json!({"i": i})))
            .collect();
        let ids = send_all(
            &client,
            &Queue::parse(URL).expect("url"),
            &Prepared::unspilled(&results),
        )
        .await
        .expect("sent");
        assert_eq!(ids.len(), 23);
        let calls = calls.lock().expect("lock");
        let counts: Vec<usize> = calls.iter().map(Vec::len).collect();
        assert_eq!(counts, [10, 10, 3]);
        let first = &calls[0][0];
        assert_eq!(first.message_body(), "{\"i\":0}");
        assert_eq!(first.id(), "0");
        let attributes = first.message_attributes().expect("attributes");
        assert_eq!(attributes["job_id"].string_value(), Some("batch"));
        assert_eq!(attributes["item_index"].data_type(), "Number");
        assert_eq!(
            calls[2][2].message_attributes().expect("a")["item_index"].string_value(),
            Some("22")
        );
        assert_eq!(
            first.message_group_id(),
            None,
            "a standard queue gets no group"
        );
    }

    #[tokio::test]
    async fn batches_split_before_the_size_limit() {
        let (rule, calls) = accepting();
        let client = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&rule]);
        // Three messages of ~100 KB: two fit in one call, the third does not.
        let results: Vec<Outgoing> = (0..3)
            .map(|i| outgoing("big", Some(i), json!("x".repeat(100_000))))
            .collect();
        send_all(
            &client,
            &Queue::parse(URL).expect("url"),
            &Prepared::unspilled(&results),
        )
        .await
        .expect("sent");
        let counts: Vec<usize> = calls.lock().expect("lock").iter().map(Vec::len).collect();
        assert_eq!(counts, [2, 1]);
    }

    #[tokio::test]
    async fn fifo_messages_carry_group_and_deduplication_ids() {
        let (rule, calls) = accepting();
        let client = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&rule]);
        let long_id = "j".repeat(200);
        let results = [
            outgoing("job-1", Some(3), json!({})),
            outgoing(&long_id, None, json!({})),
        ];
        let queue = Queue::parse("arn:aws:sqs:us-east-1:222222222222:out.fifo").expect("arn");
        send_all(&client, &queue, &Prepared::unspilled(&results))
            .await
            .expect("sent");
        let calls = calls.lock().expect("lock");
        assert_eq!(calls[0][0].message_group_id(), Some("group-1"));
        assert_eq!(calls[0][0].message_deduplication_id(), Some("job-1#3"));
        let hashed = calls[0][1].message_deduplication_id().expect("dedup id");
        assert!(
            hashed.starts_with("sha256:") && hashed.len() <= 128,
            "{hashed}"
        );
        assert_eq!(hashed, fifo_id(&long_id), "stable across retries");
    }

    #[tokio::test]
    async fn failed_entries_are_retried_once() {
        let calls: Calls = Arc::default();
        let seen = calls.clone();
        let rule = mock!(aws_sdk_sqs::Client::send_message_batch).then_compute_output(move |req| {
            let entries = req.entries().to_vec();
            let first_call = seen.lock().expect("lock").is_empty();
            seen.lock().expect("lock").push(entries.clone());
            let (ok, failed): (Vec<_>, Vec<_>) =
                entries.iter().partition(|e| !(first_call && e.id() == "1"));
            SendMessageBatchOutput::builder()
                .set_successful(Some(ok.iter().map(|e| success_entry(e.id())).collect()))
                .set_failed(Some(
                    failed
                        .iter()
                        .map(|e| failed_entry(e.id(), "InternalError", false))
                        .collect(),
                ))
                .build()
                .expect("output")
        });
        let client = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&rule]);
        let results: Vec<Outgoing> = (0..3).map(|i| outgoing("j", Some(i), json!(i))).collect();
        let ids = send_all(
            &client,
            &Queue::parse(URL).expect("url"),
            &Prepared::unspilled(&results),
        )
        .await
        .expect("sent after a retry");
        assert_eq!(ids, ["m-0", "m-1", "m-2"]);
        let calls = calls.lock().expect("lock");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].len(), 1);
        assert_eq!(calls[1][0].id(), "1");
    }

    #[tokio::test]
    async fn entries_failing_twice_are_unavailable_and_sender_faults_are_not_retried() {
        let always_failing = failing_every_entry("InternalError", false);
        let client = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&always_failing]);
        let results = [outgoing("j", None, json!({}))];
        let queue = Queue::parse(URL).expect("url");
        let err = send_all(&client, &queue, &Prepared::unspilled(&results))
            .await
            .expect_err("fails");
        assert_eq!(err.code(), "DestinationUnavailable", "{err}");
        assert!(err.is_retryable());
        assert_eq!(always_failing.num_calls(), 2);

        let rejecting = failing_every_entry("InvalidParameterValue", true);
        let client = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&rejecting]);
        let err = send_all(&client, &queue, &Prepared::unspilled(&results))
            .await
            .expect_err("rejected");
        assert_eq!(err.code(), "InvalidDestination", "{err}");
        assert!(err.to_string().contains("InvalidParameterValue"), "{err}");
        assert_eq!(rejecting.num_calls(), 1);
    }

    #[tokio::test]
    async fn a_403_without_an_error_code_is_a_denial() {
        let rule = mock!(aws_sdk_sqs::Client::send_message_batch).then_http_response(|| {
            aws_smithy_runtime_api::http::Response::new(
                aws_smithy_runtime_api::http::StatusCode::try_from(403).expect("status"),
                aws_smithy_types::body::SdkBody::from("<ErrorResponse>not json</ErrorResponse>"),
            )
        });
        let client = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&rule]);
        let results = [outgoing("j", None, json!({}))];
        let err = send_all(
            &client,
            &Queue::parse(URL).expect("url"),
            &Prepared::unspilled(&results),
        )
        .await
        .expect_err("denied");
        assert_eq!(err.code(), "DestinationDenied", "{err}");
        assert!(err.to_string().contains("HTTP 403"), "{err}");
    }

    #[tokio::test]
    async fn errors_name_the_permission_or_the_missing_queue() {
        let queue = Queue::parse(URL).expect("url");
        let results = [outgoing("j", None, json!({}))];
        for (code, expected) in [
            ("AccessDenied", "DestinationDenied"),
            (
                "AWS.SimpleQueueService.NonExistentQueue",
                "DestinationMissing",
            ),
            ("QueueDoesNotExist", "DestinationMissing"),
            ("RequestThrottled", "DestinationUnavailable"),
        ] {
            let rule = mock!(aws_sdk_sqs::Client::send_message_batch).then_error(move || {
                SendMessageBatchError::generic(
                    ErrorMetadata::builder().code(code).message("no").build(),
                )
            });
            let client = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&rule]);
            let err = send_all(&client, &queue, &Prepared::unspilled(&results))
                .await
                .expect_err(code);
            assert_eq!(err.code(), expected, "{code}: {err}");
            if expected == "DestinationDenied" {
                assert!(
                    err.to_string().contains(
                        "grant the execution role sqs:SendMessage on arn:aws:sqs:eu-west-1:222222222222:results"
                    ),
                    "{err}"
                );
            }
        }
    }
}
