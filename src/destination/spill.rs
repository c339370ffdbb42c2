//! Each result's text for a message service or table, and spilling: a record
//! larger than the service takes is written to `RELAY_SPILL_S3` and a pointer
//! to it sent in its place ([`prepare`]).

use aws_sdk_s3::primitives::ByteStream;
use serde_json::{Map, Value};

use super::{s3, DestinationError, Destinations, Outgoing, S3Location};

/// A result with the text to send: its record, or the pointer to where the
/// record was spilled.
#[derive(Debug, Clone)]
pub(crate) struct Prepared<'a> {
    /// The result.
    pub outgoing: &'a Outgoing,
    /// The JSON text that goes in the message, event or item.
    pub text: String,
}

#[cfg(test)]
impl Prepared<'_> {
    /// Each result with its own record as the text, nothing spilled.
    pub(crate) fn unspilled(results: &[Outgoing]) -> Vec<Prepared<'_>> {
        results
            .iter()
            .map(|outgoing| Prepared {
                outgoing,
                text: outgoing.body.to_string(),
            })
            .collect()
    }
}

/// Renders each result's record, spilling the ones over `limit` (as
/// `size_of` measures them for the service) to `sinks`' spill location.
/// Without one, a result over the limit is [`DestinationError::TooLarge`].
pub(crate) async fn prepare<'a>(
    sinks: &Destinations,
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
            let Some(spill) = sinks.spill() else {
                return Err(too_large);
            };
            text = spill_record(sinks, spill, outgoing, text)
                .await?
                .to_string();
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
    sinks: &Destinations,
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
    sinks
        .s3_client()
        .put_object()
        .bucket(&spill.bucket)
        .set_expected_bucket_owner(sinks.bucket_owner().map(str::to_owned))
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

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use aws_sdk_s3::operation::put_object::PutObjectOutput;
    use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput;
    use aws_sdk_sqs::types::SendMessageBatchResultEntry;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use serde_json::json;

    use super::super::DestinationSpec;
    use super::*;

    const QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/222222222222/results";

    /// The objects put: (key, content type, body).
    type Puts = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

    /// Destinations with a mocked S3 (recording puts) and SQS (accepting all,
    /// recording bodies).
    pub(crate) fn mocked(spill: Option<&str>) -> (Destinations, Puts, Arc<Mutex<Vec<String>>>) {
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
            Destinations::new(&aws_config::SdkConfig::builder().build(), true, spill)
                .with_s3_client(mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&s3_rule]))
                .with_sqs_client(mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&sqs_rule]));
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
}
