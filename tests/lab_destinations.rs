//! Delivery to SQS, SNS, EventBridge and DynamoDB in the local lab: moto as
//! account B, written through `Destinations` with the execution role's
//! session and read back as account B's administrator.
//!
//! Needs the lab's Python tools: `scripts/setup` (the test command runs it).

use std::collections::{BTreeMap, BTreeSet};

use bedrock_relay::{
    DestinationError, DestinationSpec, Destinations, Ledger, Outgoing, S3Location, Table,
    EVENT_DETAIL_TYPE, EVENT_SOURCE,
};
use lab::services::{sdk_config, Received, Services};
use lab::{Lab, ACCOUNT_B, BUCKET};
use serde_json::{json, Value};

/// Where large results are spilled.
const SPILL_PREFIX: &str = "spill/";

/// The lab, its admin view of account B, and the function's destinations.
struct Bench {
    lab: Lab,
    services: Services,
    destinations: Destinations,
}

impl Bench {
    async fn start() -> Self {
        let lab = Lab::start().await.expect("lab starts");
        let services = Services::of(&lab).await;
        let config = sdk_config(lab.moto.endpoint(), &lab.exec_credentials).await;
        let spill = S3Location::parse(&format!("s3://{BUCKET}/{SPILL_PREFIX}")).expect("spill");
        let destinations = Destinations::new(&config, true, Some(spill));
        Self {
            lab,
            services,
            destinations,
        }
    }

    async fn send(&self, destination: &str, results: &[Outgoing]) -> Vec<String> {
        let spec = DestinationSpec::parse(destination).expect("destination parses");
        self.destinations
            .send(&spec, results)
            .await
            .unwrap_or_else(|err| panic!("send to {destination}: {err}"))
    }

    async fn send_err(&self, destination: &str, results: &[Outgoing]) -> DestinationError {
        let spec = DestinationSpec::parse(destination).expect("destination parses");
        self.destinations
            .send(&spec, results)
            .await
            .expect_err("delivery fails")
    }
}

/// Batch item `index` of `job_id`, succeeded unless `index` is a multiple of 4.
fn item(job_id: &str, index: usize) -> Outgoing {
    let status = if index % 4 == 0 {
        "failed"
    } else {
        "succeeded"
    };
    Outgoing {
        job_id: job_id.into(),
        index: Some(index),
        group: format!("{job_id}-group"),
        body: json!({"job_id": job_id, "index": index, "status": status, "output": {"text": format!("answer {index}")}}),
    }
}

/// A single job's result of about `bytes` bytes.
fn single(job_id: &str, bytes: usize) -> Outgoing {
    Outgoing {
        job_id: job_id.into(),
        index: None,
        group: job_id.into(),
        body: json!({"job_id": job_id, "status": "succeeded", "output": {"text": "y".repeat(bytes)}}),
    }
}

/// Messages by their `item_index` attribute.
fn by_index(messages: &[Received]) -> BTreeMap<usize, &Received> {
    messages
        .iter()
        .map(|m| {
            let index = m.attributes["item_index"].parse().expect("numeric index");
            (index, m)
        })
        .collect()
}

/// 23 results to a standard queue arrive as 23 messages (three batch calls)
/// with the record as body and job id and index as attributes.
#[tokio::test]
async fn a_standard_queue_receives_every_result_with_its_attributes() {
    let bench = Bench::start().await;
    let queue = bench.services.create_queue("results").await.expect("queue");
    let results: Vec<Outgoing> = (0..23).map(|i| item("batch-1", i)).collect();

    let ids = bench.send(&queue.url, &results).await;

    let messages = bench
        .services
        .receive_all(&queue.url)
        .await
        .expect("receive");
    assert_eq!(messages.len(), 23);
    let received = by_index(&messages);
    assert_eq!(
        received.keys().copied().collect::<Vec<_>>(),
        (0..23).collect::<Vec<_>>()
    );
    for (index, message) in received {
        assert_eq!(message.json().expect("json"), results[index].body);
        assert_eq!(message.attributes["job_id"], "batch-1");
        assert_eq!(
            message.message_id, ids[index],
            "ids come back in result order"
        );
        assert_eq!(message.group_id, None);
    }
}

/// A FIFO queue named by its ARN gets the job's group and the result key as
/// deduplication id (with the status for a failure; hashed when too long), in order; sending the same
/// results again before they are read adds nothing.
#[tokio::test]
async fn a_fifo_queue_gets_groups_deduplication_ids_and_order() {
    let bench = Bench::start().await;
    let queue = bench
        .services
        .create_queue("results.fifo")
        .await
        .expect("queue");
    let arn = format!("arn:aws:sqs:us-east-1:{ACCOUNT_B}:results.fifo");
    assert_eq!(queue.arn, arn);
    let long_job = "j".repeat(200);
    let mut results: Vec<Outgoing> = (0..12).map(|i| item("fifo-job", i)).collect();
    results.push(single(&long_job, 10));

    // The ARN's URL is https://sqs.us-east-1.amazonaws.com/...; the SDK still
    // sends to moto, and moto finds the queue by its name.
    bench.send(&arn, &results).await;
    bench.send(&arn, &results).await;

    let messages = bench
        .services
        .receive_all(&queue.url)
        .await
        .expect("receive");
    assert_eq!(messages.len(), 13, "the second send was deduplicated");
    let batch: Vec<&Received> = messages
        .iter()
        .filter(|m| m.attributes["job_id"] == "fifo-job")
        .collect();
    let order: Vec<usize> = batch
        .iter()
        .map(|m| m.attributes["item_index"].parse().expect("index"))
        .collect();
    assert_eq!(
        order,
        (0..12).collect::<Vec<_>>(),
        "FIFO order within the group"
    );
    for message in &batch {
        assert_eq!(message.group_id.as_deref(), Some("fifo-job-group"));
        // A success is deduplicated by its key; a failure never shares it.
        let index: usize = message.attributes["item_index"].parse().expect("index");
        let expected = item("fifo-job", index).deduplication_id();
        assert_eq!(
            expected.starts_with(&format!("fifo-job#{index}#failed@")),
            index % 4 == 0
        );
        assert_eq!(message.deduplication_id.as_deref(), Some(expected.as_str()));
    }
    let long = messages
        .iter()
        .find(|m| m.attributes["job_id"] == long_job)
        .expect("the long job's message");
    assert!(!long.attributes.contains_key("item_index"));
    let dedup = long.deduplication_id.as_deref().expect("dedup id");
    let group = long.group_id.as_deref().expect("group id");
    assert!(
        dedup.starts_with("sha256:") && dedup.len() <= 128,
        "{dedup}"
    );
    assert_eq!(dedup, group, "the group is the job id, hashed the same way");
}

/// A topic delivers each result (raw) to its subscribed queue, with the
/// attributes; a FIFO topic passes group and deduplication ids on.
#[tokio::test]
async fn topics_publish_every_result_with_attributes_and_fifo_ids() {
    let bench = Bench::start().await;
    let (topic, queue) = bench
        .services
        .create_topic_to_queue("relay-results")
        .await
        .expect("topic");
    let results: Vec<Outgoing> = (0..11).map(|i| item("sns-job", i)).collect();
    let ids = bench.send(&topic, &results).await;
    assert_eq!(ids.len(), 11);
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        11,
        "distinct message ids"
    );
    let messages = bench
        .services
        .receive_all(&queue.url)
        .await
        .expect("receive");
    let received = by_index(&messages);
    assert_eq!(received.len(), 11);
    for (index, message) in received {
        assert_eq!(message.json().expect("json"), results[index].body);
        assert_eq!(message.attributes["job_id"], "sns-job");
    }

    let (fifo_topic, fifo_queue) = bench
        .services
        .create_topic_to_queue("relay-results.fifo")
        .await
        .expect("fifo topic");
    let results: Vec<Outgoing> = (0..3).map(|i| item("sns-fifo", i)).collect();
    bench.send(&fifo_topic, &results).await;
    let messages = bench
        .services
        .receive_all(&fifo_queue.url)
        .await
        .expect("receive");
    assert_eq!(messages.len(), 3);
    for message in &messages {
        assert_eq!(message.group_id.as_deref(), Some("sns-fifo-group"));
        let index: usize = message.attributes["item_index"].parse().expect("index");
        let expected = item("sns-fifo", index).deduplication_id();
        assert_eq!(message.deduplication_id.as_deref(), Some(expected.as_str()));
    }
}

/// A bus gets one `bedrock-relay` / `Bedrock Relay Result` event per result,
/// the record as detail, matched by a rule on the source.
#[tokio::test]
async fn a_bus_gets_one_event_per_result() {
    let bench = Bench::start().await;
    let (bus, queue) = bench
        .services
        .create_bus_to_queue("relay-bus")
        .await
        .expect("bus");
    assert_eq!(
        bus,
        format!("arn:aws:events:us-east-1:{ACCOUNT_B}:event-bus/relay-bus")
    );
    let results: Vec<Outgoing> = (0..12).map(|i| item("events-job", i)).collect();

    let ids = bench.send(&bus, &results).await;

    let envelopes: Vec<Value> = bench
        .services
        .receive_all(&queue.url)
        .await
        .expect("receive")
        .iter()
        .map(|m| m.json().expect("envelope"))
        .collect();
    assert_eq!(envelopes.len(), 12);
    let mut seen = BTreeSet::new();
    for envelope in &envelopes {
        assert_eq!(envelope["source"], EVENT_SOURCE);
        assert_eq!(envelope["detail-type"], EVENT_DETAIL_TYPE);
        let index = envelope["detail"]["index"].as_u64().expect("index") as usize;
        assert_eq!(envelope["detail"], results[index].body);
        assert_eq!(
            envelope["id"].as_str(),
            Some(ids[index].as_str()),
            "event ids in result order"
        );
        seen.insert(index);
    }
    assert_eq!(seen.len(), 12);
}

/// A table gets one item per result (a single job as item 0) and reads back
/// the succeeded ones, by ARN and by name.
#[tokio::test]
async fn a_table_holds_one_item_per_result_and_reads_back_the_succeeded() {
    let bench = Bench::start().await;
    let arn = bench
        .services
        .create_table("relay-results")
        .await
        .expect("table");
    let mut results: Vec<Outgoing> = (0..30).map(|i| item("ddb-job", i)).collect();
    results.push(single("ddb-single", 10));

    let refs = bench.send(&arn, &results).await;
    assert_eq!(refs[7], "relay-results#ddb-job#7");
    assert_eq!(refs[30], "relay-results#ddb-single#0");

    let items = bench
        .services
        .scan_table("relay-results")
        .await
        .expect("scan");
    assert_eq!(items.len(), 31);
    let first = &items[0];
    assert_eq!(first["job_id"], "ddb-job");
    assert_eq!(first["item"], 0);
    assert_eq!(first["status"], "failed");
    let record: Value =
        serde_json::from_str(first["record"].as_str().expect("record")).expect("json");
    assert_eq!(record, results[0].body);
    assert!(first["written_at"]
        .as_str()
        .expect("written_at")
        .ends_with('Z'));
    assert_eq!(items[30]["job_id"], "ddb-single");
    assert_eq!(items[30]["item"], 0);

    let table = Table::parse(&arn).expect("arn");
    let done = succeeded_in_table(&bench, &table, "ddb-job")
        .await
        .expect("read back");
    let expected: BTreeMap<usize, Value> = (0..30)
        .filter(|i| i % 4 != 0)
        .map(|i| (i, results[i].body.clone()))
        .collect();
    assert_eq!(done, expected);

    let by_name = Table::from_name_or_arn("relay-results").expect("name");
    let single_done = succeeded_in_table(&bench, &by_name, "ddb-single")
        .await
        .expect("read back by name");
    assert_eq!(single_done, BTreeMap::from([(0, results[30].body.clone())]));
    assert!(succeeded_in_table(&bench, &by_name, "never-ran")
        .await
        .expect("read back")
        .is_empty());
}

/// Results over the service limit go to the spill prefix and a pointer is
/// sent: on a queue, and as a table item that reads back as the pointer.
#[tokio::test]
async fn large_results_are_spilled_to_s3_with_a_pointer_sent() {
    let bench = Bench::start().await;
    let queue = bench.services.create_queue("large").await.expect("queue");
    let big_item = Outgoing {
        body: json!({"job_id": "big", "index": 2, "status": "succeeded", "output": {"text": "z".repeat(300_000)}}),
        ..item("big", 2)
    };
    bench
        .send(&queue.url, &[item("big", 1), big_item.clone()])
        .await;

    let messages = bench
        .services
        .receive_all(&queue.url)
        .await
        .expect("receive");
    let received = by_index(&messages);
    assert_eq!(received[&1].json().expect("json"), item("big", 1).body);
    let pointer = received[&2].json().expect("pointer");
    let key = format!("{SPILL_PREFIX}big/2.json");
    let (object, content_type) = bench
        .services
        .object(BUCKET, &key)
        .await
        .expect("s3")
        .expect("spilled object");
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(
        serde_json::from_slice::<Value>(&object).expect("json"),
        big_item.body
    );
    assert_eq!(
        pointer,
        json!({"job_id": "big", "index": 2, "status": "succeeded",
               "spilled_to": format!("s3://{BUCKET}/{key}"), "bytes": object.len()})
    );

    // 500 KB is over DynamoDB's 400 KB item limit.
    let arn = bench
        .services
        .create_table("large-items")
        .await
        .expect("table");
    let big_single = single("big-single", 500_000);
    bench.send(&arn, std::slice::from_ref(&big_single)).await;
    let key = format!("{SPILL_PREFIX}big-single.json");
    let (object, _) = bench
        .services
        .object(BUCKET, &key)
        .await
        .expect("s3")
        .expect("spilled object");
    assert_eq!(
        serde_json::from_slice::<Value>(&object).expect("json"),
        big_single.body
    );
    let table = Table::parse(&arn).expect("arn");
    let done = succeeded_in_table(&bench, &table, "big-single")
        .await
        .expect("read back");
    assert_eq!(
        done[&0],
        json!({"job_id": "big-single", "status": "succeeded",
               "spilled_to": format!("s3://{BUCKET}/{key}"), "bytes": object.len()})
    );
}

/// A destination that does not exist is reported as missing, naming it.
#[tokio::test]
async fn missing_destinations_are_reported_as_missing() {
    let bench = Bench::start().await;
    let results = [item("lost", 1)];
    let endpoint = bench.lab.moto.endpoint().to_owned();
    for (destination, what) in [
        (
            format!("{endpoint}/{ACCOUNT_B}/no-such-queue"),
            "queue `no-such-queue`",
        ),
        (
            format!("arn:aws:sns:us-east-1:{ACCOUNT_B}:no-such-topic"),
            "topic `no-such-topic`",
        ),
        (
            format!("arn:aws:events:us-east-1:{ACCOUNT_B}:event-bus/no-such-bus"),
            "event bus `no-such-bus`",
        ),
        (
            format!("arn:aws:dynamodb:us-east-1:{ACCOUNT_B}:table/no-such-table"),
            "table `no-such-table`",
        ),
    ] {
        let err = bench.send_err(&destination, &results).await;
        assert_eq!(err.code(), "DestinationMissing", "{destination}: {err}");
        assert!(err.to_string().contains(what), "{err}");
        assert!(err.is_retryable());
    }
}

/// With IAM enforced, a queue and a table the execution role has no grant on
/// are denied, naming the permission and the resource; the queue it is granted
/// on gets the result.
#[tokio::test]
async fn an_ungranted_destination_is_denied_with_the_grant_to_make() {
    let bench = Bench::start().await;
    let granted = bench.services.create_queue("granted").await.expect("queue");
    let other = bench.services.create_queue("other").await.expect("queue");
    let table = bench.services.create_table("guarded").await.expect("table");
    // AWS authorizes SendMessageBatch as sqs:SendMessage; moto checks the
    // operation's own name, so the lab grants both.
    bench
        .lab
        .grant_exec_role(
            "send-to-queue",
            &json!({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": ["sqs:SendMessage", "sqs:SendMessageBatch"],
                "Resource": granted.arn}]}),
        )
        .await
        .expect("grant");
    bench.lab.enforce_iam().await.expect("enforce");
    let results = [item("guarded", 1)];

    assert_eq!(bench.send(&granted.arn, &results).await.len(), 1);

    // moto answers these JSON-protocol calls with an XML 403 the SDK cannot
    // read: the 403 alone must say "denied".
    let err = bench.send_err(&other.arn, &results).await;
    assert_eq!(err.code(), "DestinationDenied", "{err}");
    assert!(
        err.to_string().contains(&format!(
            "grant the execution role sqs:SendMessage on {}",
            other.arn
        )),
        "{err}"
    );
    let err = bench.send_err(&table, &results).await;
    assert_eq!(err.code(), "DestinationDenied", "{err}");
    assert!(
        err.to_string().contains(&format!(
            "grant the execution role dynamodb:BatchWriteItem on {table}"
        )),
        "{err}"
    );
}

/// What the ledger reads back from a DynamoDB destination table for `job_id`.
async fn succeeded_in_table(
    bench: &Bench,
    table: &Table,
    job_id: &str,
) -> Result<BTreeMap<usize, Value>, DestinationError> {
    Ledger::Table {
        table: table.clone(),
        is_destination: true,
    }
    .settled_items(&bench.destinations, job_id)
    .await
}
