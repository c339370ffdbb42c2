//! SNS topics: one message per result, published with `PublishBatch` in runs
//! within the API's entry and size limits. A FIFO topic gets the job's group
//! as the message group and [`Outgoing::deduplication_id`] as the
//! deduplication id (a success's key; a failure's never the same).

use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};

use super::{
    by_entry_id, entries_at, fifo_id, sqs, BatchService, Delivery, DestinationError, EntryOutcome,
    Outgoing, Prepared,
};
use crate::aws::uri::split_arn;

/// The largest message, and the most one `PublishBatch` call carries, in bytes.
pub(crate) const MESSAGE_LIMIT: usize = 262_144;

const ARN_FORM: &str = "arn:<partition>:sns:<region>:<account id>:<topic name>";

/// A topic, by ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// The topic ARN.
    pub arn: String,
    /// A FIFO topic (`.fifo`).
    pub fifo: bool,
}

impl Topic {
    /// Parses a topic ARN.
    pub fn parse(text: &str) -> Result<Self, String> {
        let arn = split_arn(text, "sns", ARN_FORM)?;
        let name = arn.resource;
        let stem = name.strip_suffix(".fifo").unwrap_or(name);
        let ok = !stem.is_empty()
            && name.len() <= 256
            && stem
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "`{name}` is not a topic name (1-256 letters, digits, hyphens and underscores, `.fifo` at the end for FIFO); expected {ARN_FORM}"
            ));
        }
        Ok(Self {
            arn: text.to_owned(),
            fifo: name.ends_with(".fifo"),
        })
    }

    /// The topic's name (the ARN's last part).
    pub fn name(&self) -> &str {
        self.arn.rsplit(':').next().unwrap_or_default()
    }
}

/// A message's size as SNS counts it: the body plus each attribute's name,
/// data type and value (the same attributes as SQS messages carry).
pub(crate) fn message_size(outgoing: &Outgoing, text: &str) -> usize {
    sqs::message_size(outgoing, text)
}

/// One message per result, with `PublishBatch`.
impl BatchService for Topic {
    type Client = aws_sdk_sns::Client;
    const MAX_BYTES: usize = MESSAGE_LIMIT;

    fn size_of(outgoing: &Outgoing, text: &str) -> usize {
        message_size(outgoing, text)
    }

    fn delivery(&self) -> Delivery {
        Delivery {
            destination: self.arn.clone(),
            action: "sns:Publish",
            resource: self.arn.clone(),
            what: format!("topic `{}`", self.name()),
            service: "SNS",
        }
    }

    /// One `PublishBatch` call, whose entry ids are the positions.
    async fn call(
        &self,
        client: &aws_sdk_sns::Client,
        delivery: &Delivery,
        batch: &[Prepared<'_>],
        positions: Vec<usize>,
    ) -> Result<Vec<(usize, EntryOutcome)>, DestinationError> {
        let entries = entries_at(delivery, batch, &positions, |prepared, position| {
            entry(self, prepared, position)
        })?;
        let output = client
            .publish_batch()
            .topic_arn(&self.arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .map_err(|err| delivery.failed(err))?;
        Ok(by_entry_id(
            output
                .successful()
                .iter()
                .map(|sent| (sent.id(), sent.message_id())),
            output
                .failed()
                .iter()
                .map(|f| (f.id(), f.code(), f.message(), f.sender_fault())),
        ))
    }
}

fn entry(
    topic: &Topic,
    prepared: &Prepared<'_>,
    position: usize,
) -> Result<PublishBatchRequestEntry, aws_sdk_sns::error::BuildError> {
    let outgoing = prepared.outgoing;
    let mut entry = PublishBatchRequestEntry::builder()
        .id(position.to_string())
        .message(&prepared.text);
    for (name, kind, value) in sqs::attributes(outgoing) {
        let value = MessageAttributeValue::builder()
            .data_type(kind)
            .string_value(value)
            .build()?;
        entry = entry.message_attributes(name, value);
    }
    if topic.fifo {
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

    use aws_sdk_sns::operation::publish_batch::{PublishBatchError, PublishBatchOutput};
    use aws_sdk_sns::types::{BatchResultErrorEntry, PublishBatchResultEntry};
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use aws_smithy_types::error::ErrorMetadata;
    use serde_json::json;

    use super::*;

    const ARN: &str = "arn:aws:sns:us-east-1:222222222222:results";

    fn outgoing(index: Option<usize>) -> Outgoing {
        Outgoing {
            job_id: "job-9".into(),
            index,
            group: "tenant-a".into(),
            body: json!({"status": "succeeded", "index": index}),
        }
    }

    type Calls = Arc<Mutex<Vec<Vec<PublishBatchRequestEntry>>>>;

    /// A PublishBatch mock recording each call; entry `fail_id` fails with
    /// `code` on the first call only.
    fn publishing(
        fail_id: &'static str,
        code: &'static str,
        sender_fault: bool,
    ) -> (aws_smithy_mocks::Rule, Calls) {
        let calls: Calls = Arc::default();
        let seen = calls.clone();
        let rule = mock!(aws_sdk_sns::Client::publish_batch).then_compute_output(move |req| {
            let entries = req.publish_batch_request_entries().to_vec();
            let first_call = seen.lock().expect("lock").is_empty();
            seen.lock().expect("lock").push(entries.clone());
            let mut output = PublishBatchOutput::builder();
            for e in &entries {
                if first_call && e.id() == fail_id {
                    output = output.failed(
                        BatchResultErrorEntry::builder()
                            .id(e.id())
                            .code(code)
                            .message("from sns")
                            .sender_fault(sender_fault)
                            .build()
                            .expect("entry"),
                    );
                } else {
                    output = output.successful(
                        PublishBatchResultEntry::builder()
                            .id(e.id())
                            .message_id(format!("sns-{}", e.id()))
                            .build(),
                    );
                }
            }
            output.build()
        });
        (rule, calls)
    }

    #[test]
    fn topic_arns_parse() {
        let topic = Topic::parse(ARN).expect("arn");
        assert!(!topic.fifo);
        assert_eq!(topic.name(), "results");
        assert!(
            Topic::parse("arn:aws-cn:sns:cn-north-1:222222222222:out.fifo")
                .expect("fifo")
                .fifo
        );
        for (text, expected) in [
            (
                "arn:aws:sns:us-east-1:222222222222:bad/name",
                "not a topic name",
            ),
            (
                "arn:aws:sns:us-east-1:22222222222a:t",
                "12-digit account id",
            ),
            ("arn:aws:sqs:us-east-1:222222222222:t", "not `sns`"),
            ("sns:us-east-1:222222222222:t", "not an ARN"),
        ] {
            let err = Topic::parse(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[tokio::test]
    async fn fifo_topics_get_group_and_deduplication_ids_in_runs_of_ten() {
        let (rule, calls) = publishing("none", "", false);
        let client = mock_client!(aws_sdk_sns, RuleMode::MatchAny, [&rule]);
        let results: Vec<Outgoing> = (0..12).map(|i| outgoing(Some(i))).collect();
        let topic = Topic::parse("arn:aws:sns:us-east-1:222222222222:out.fifo").expect("arn");
        let ids = send_all(&client, &topic, &Prepared::unspilled(&results))
            .await
            .expect("sent");
        assert_eq!(ids.len(), 12);
        assert_eq!(ids[11], "sns-1", "the second run's positions restart at 0");
        let calls = calls.lock().expect("lock");
        assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), [10, 2]);
        let entry = &calls[1][1];
        assert_eq!(entry.message_group_id(), Some("tenant-a"));
        assert_eq!(entry.message_deduplication_id(), Some("job-9#11"));
        assert_eq!(entry.message(), results[11].body.to_string());
        let attributes = entry.message_attributes().expect("attributes");
        assert_eq!(attributes["job_id"].string_value(), Some("job-9"));
        assert_eq!(attributes["item_index"].string_value(), Some("11"));
    }

    #[tokio::test]
    async fn a_throttled_entry_is_retried_and_a_rejected_one_is_not() {
        let (rule, calls) = publishing("1", "Throttled", false);
        let client = mock_client!(aws_sdk_sns, RuleMode::MatchAny, [&rule]);
        let results: Vec<Outgoing> = (0..3).map(|i| outgoing(Some(i))).collect();
        let topic = Topic::parse(ARN).expect("arn");
        let ids = send_all(&client, &topic, &Prepared::unspilled(&results))
            .await
            .expect("sent");
        assert_eq!(ids, ["sns-0", "sns-1", "sns-2"]);
        assert_eq!(calls.lock().expect("lock").len(), 2);

        let (rule, calls) = publishing("1", "InvalidParameter", true);
        let client = mock_client!(aws_sdk_sns, RuleMode::MatchAny, [&rule]);
        let err = send_all(&client, &topic, &Prepared::unspilled(&results))
            .await
            .expect_err("rejected");
        assert_eq!(err.code(), "InvalidDestination", "{err}");
        assert!(err.to_string().contains("job-9#1"), "{err}");
        assert_eq!(calls.lock().expect("lock").len(), 1);

        let (rule, _) = publishing("0", "AuthorizationError", true);
        let client = mock_client!(aws_sdk_sns, RuleMode::MatchAny, [&rule]);
        let err = send_all(&client, &topic, &Prepared::unspilled(&results))
            .await
            .expect_err("denied");
        assert_eq!(err.code(), "DestinationDenied", "{err}");
    }

    #[tokio::test]
    async fn errors_name_the_permission_or_the_missing_topic() {
        let topic = Topic::parse(ARN).expect("arn");
        let results = [outgoing(None)];
        for (code, expected) in [
            ("AuthorizationError", "DestinationDenied"),
            ("NotFound", "DestinationMissing"),
            ("InternalError", "DestinationUnavailable"),
        ] {
            let rule = mock!(aws_sdk_sns::Client::publish_batch).then_error(move || {
                PublishBatchError::generic(
                    ErrorMetadata::builder().code(code).message("no").build(),
                )
            });
            let client = mock_client!(aws_sdk_sns, RuleMode::MatchAny, [&rule]);
            let err = send_all(&client, &topic, &Prepared::unspilled(&results))
                .await
                .expect_err(code);
            assert_eq!(err.code(), expected, "{code}: {err}");
            if expected == "DestinationDenied" {
                assert!(
                    err.to_string().contains(&format!("sns:Publish on {ARN}")),
                    "{err}"
                );
            }
            if expected == "DestinationMissing" {
                assert!(err.to_string().contains("topic `results`"), "{err}");
            }
        }
    }
}
