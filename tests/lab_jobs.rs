//! End-to-end tests of the whole job in the lab: templates from event data,
//! documents from S3, batches (bounded concurrency, input order, deadline cuts
//! carried on by the retry), idempotent redelivery and destination checks —
//! the built function driven through the Lambda Runtime API.
//!
//! Needs the lab's Python tools: `scripts/setup` (the test command runs it).

use std::collections::HashMap;
use std::time::Duration;

use lab::emulator::Knobs;
use lab::runtime_api::Outcome;
use lab::services::Services;
use lab::{BUCKET, PREFIX};
use serde_json::{json, Value};

mod common;
use common::{error_type, event_bytes, job_event, Bench, TIMEOUT};

const MODEL: &str = "amazon.nova-lite-v1:0";

/// Invokes the job event with `id` around `detail` (see [`job_event`]).
async fn invoke_job(bench: &Bench, id: &str, detail: Value, timeout: Duration) -> Outcome {
    bench.invoke_bytes(job_event(id, detail), timeout).await
}

/// The user text of each Converse call the emulator answered, in arrival order.
fn prompts_sent(bench: &Bench) -> Vec<String> {
    bench
        .lab
        .bedrock
        .calls()
        .iter()
        .filter(|c| c.status == 200)
        .filter_map(|c| {
            c.request["messages"][0]["content"]
                .as_array()?
                .iter()
                .find_map(|block| block["text"].as_str().map(str::to_owned))
        })
        .collect()
}

fn count_by_prompt(prompts: &[String]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for prompt in prompts {
        *counts.entry(prompt.as_str()).or_default() += 1;
    }
    counts
}

fn logs(bench: &Bench) -> String {
    bench.function.logs().join("\n")
}

/// 200 items at concurrency 8: never more than 8 model calls in flight, one
/// JSONL line per item in input order, each with its own output and usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_item_batch_keeps_input_order_within_its_concurrency() {
    let bench = Bench::start(&[("RELAY_MAX_CONCURRENCY", "8")]).await;
    bench.lab.bedrock.set_knobs(Knobs {
        // Varying latency would reorder completions if the relay did not keep order.
        latency_ms: 15,
        ..Knobs::default()
    });
    let items: Vec<Value> = (0..200)
        .map(|i| json!({"text": format!("review number {i}"), "stars": i % 5}))
        .collect();
    let id = "3f8e2a10-0000-4000-8000-000000000200";
    let outcome = invoke_job(
        &bench,
        id,
        json!({
            "model": MODEL,
            "prompt": "Classify: {{ item.text }} ({{ item.stars }} stars)",
            "items": items,
        }),
        Duration::from_secs(60),
    )
    .await;
    let Outcome::Response { body } = &outcome else {
        panic!("expected success, got {outcome:?}\n{}", logs(&bench));
    };
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["items"], 200);
    assert_eq!(body["succeeded"], 200);
    assert_eq!(body["record"], format!("s3://{BUCKET}/{PREFIX}{id}.jsonl"));

    let stats = bench.lab.bedrock.stats();
    assert_eq!(stats.requests, 200);
    assert!(
        stats.max_in_flight <= 8,
        "{} calls in flight at once",
        stats.max_in_flight
    );
    assert!(
        stats.max_in_flight >= 4,
        "the batch ran with too little concurrency: {}",
        stats.max_in_flight
    );

    let lines = bench
        .lab
        .batch_lines(id)
        .await
        .expect("s3")
        .expect("jsonl written");
    assert_eq!(lines.len(), 200);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i);
        assert_eq!(line["job_id"], id);
        assert_eq!(line["status"], "succeeded");
        assert_eq!(
            line["output"]["text"],
            format!(
                "Echo from {MODEL}: Classify: review number {i} ({} stars)",
                i % 5
            )
        );
        assert!(line["usage"]["input_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0));
        assert!(line["error"].is_null());
    }
}

/// A batch over a small per-account quota: most of the first burst is
/// throttled, the pacer sends the throttled items again, and every item is
/// answered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_batch_completes_with_each_item_answered_once() {
    let bench = Bench::start(&[("RELAY_MAX_CONCURRENCY", "8")]).await;
    bench.lab.bedrock.set_knobs(Knobs {
        latency_ms: 20,
        // 10 requests per second.
        quota_rpm: Some(600),
        quota_window_ms: Some(1000),
        ..Knobs::default()
    });
    let id = "3f8e2a10-0000-4000-8000-000000000060";
    let outcome = invoke_job(
        &bench,
        id,
        json!({
            "model": MODEL,
            "prompt": "Tag {{ item }}",
            "items": (0..60).map(|i| format!("thing-{i}")).collect::<Vec<_>>(),
        }),
        Duration::from_secs(60),
    )
    .await;
    let Outcome::Response { body } = &outcome else {
        panic!("expected success, got {outcome:?}\n{}", logs(&bench));
    };
    assert_eq!(body["succeeded"], 60);

    let calls = bench.lab.bedrock.calls();
    assert!(
        calls.iter().any(|c| c.status == 429),
        "the quota never throttled: the test proves nothing"
    );
    let prompts = prompts_sent(&bench);
    assert_eq!(prompts.len(), 60, "each item answered once: {prompts:?}");
    let counts = count_by_prompt(&prompts);
    assert!((0..60).all(|i| counts.get(format!("Tag thing-{i}").as_str()) == Some(&1)));

    let lines = bench.lab.batch_lines(id).await.expect("s3").expect("final");
    assert!(lines
        .iter()
        .enumerate()
        .all(|(i, l)| l["index"] == i && l["status"] == "succeeded"));
}

/// A deadline too short for the whole batch: the relay stops starting items,
/// saves progress and returns a retryable error; the retry of the same event
/// runs only the rest. No item reaches the model twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_by_the_deadline_completes_on_the_retry_without_repeats() {
    let bench = Bench::start(&[
        ("RELAY_MAX_CONCURRENCY", "4"),
        ("RELAY_DEADLINE_RESERVE_MS", "400"),
    ])
    .await;
    bench.lab.bedrock.set_knobs(Knobs {
        latency_ms: 200,
        ..Knobs::default()
    });
    let id = "3f8e2a10-0000-4000-8000-000000000040";
    let event = job_event(
        id,
        json!({
            "model": MODEL,
            "prompt": "Translate {{ item }}",
            "items": (0..40).map(|i| format!("sentence-{i}")).collect::<Vec<_>>(),
        }),
    );

    let first = bench
        .invoke_bytes(event.clone(), Duration::from_millis(1800))
        .await;
    assert_eq!(
        error_type(&first),
        "Retryable.BatchIncomplete",
        "{}",
        logs(&bench)
    );
    let progress = bench
        .lab
        .lines(&format!("{PREFIX}{id}.progress.jsonl"))
        .await
        .expect("s3")
        .expect("progress saved");
    assert_eq!(progress.len(), 40);
    let done_first = progress
        .iter()
        .filter(|l| l["status"] == "succeeded")
        .count();
    let pending = progress.iter().filter(|l| l["status"] == "pending").count();
    assert!(
        done_first >= 4,
        "too little done before the deadline: {done_first}"
    );
    assert!(pending > 0, "the deadline did not cut the batch");
    assert_eq!(done_first + pending, 40, "no item failed: {progress:?}");
    assert!(
        bench.lab.batch_lines(id).await.expect("s3").is_none(),
        "the final result is written only when every item is settled"
    );

    let second = bench.invoke_bytes(event, Duration::from_secs(30)).await;
    let Outcome::Response { body } = &second else {
        panic!(
            "expected success on the retry, got {second:?}\n{}",
            logs(&bench)
        );
    };
    assert_eq!(body["already_done"], done_first);
    assert_eq!(body["succeeded"], 40);

    let lines = bench.lab.batch_lines(id).await.expect("s3").expect("final");
    assert_eq!(lines.len(), 40);
    assert!(lines.iter().enumerate().all(|(i, l)| l["index"] == i
        && l["status"] == "succeeded"
        && l["output"]["text"] == format!("Echo from {MODEL}: Translate sentence-{i}")));

    let prompts = prompts_sent(&bench);
    assert_eq!(prompts.len(), 40, "each item once: {prompts:?}");
    assert!(count_by_prompt(&prompts).values().all(|n| *n == 1));
}

/// EventBridge delivers at least once: the same job event three times makes
/// one model call (a single job) or one per item (a batch), and one result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_three_times_calls_the_model_once_per_item() {
    let bench = Bench::start(&[]).await;
    let single = job_event(
        "3f8e2a10-0000-4000-8000-000000000001",
        json!({"model": MODEL, "prompt": "once only"}),
    );
    let batch_id = "3f8e2a10-0000-4000-8000-000000000005";
    let batch = job_event(
        batch_id,
        json!({"model": MODEL, "prompt": "item {{ item }}", "items": [1, 2, 3, 4, 5]}),
    );
    for delivery in 0..3 {
        for event in [&single, &batch] {
            let outcome = bench.invoke_bytes(event.clone(), TIMEOUT).await;
            assert!(
                matches!(outcome, Outcome::Response { .. }),
                "delivery {delivery}: {outcome:?}\n{}",
                logs(&bench)
            );
        }
    }
    let prompts = prompts_sent(&bench);
    assert_eq!(prompts.len(), 6, "{prompts:?}");
    assert!(count_by_prompt(&prompts).values().all(|n| *n == 1));
    let lines = bench
        .lab
        .batch_lines(batch_id)
        .await
        .expect("s3")
        .expect("jsonl");
    assert_eq!(lines.len(), 5);
    let record = bench.record("3f8e2a10-0000-4000-8000-000000000001").await;
    assert_eq!(record["status"], "succeeded");
}

/// An undefined template variable is the job's fault: a non-retryable error
/// naming the path, an error record, and no model call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undefined_template_variable_fails_clearly_before_any_model_call() {
    let bench = Bench::start(&[]).await;
    let id = "3f8e2a10-0000-4000-8000-00000000000e";
    let outcome = invoke_job(
        &bench,
        id,
        json!({"model": MODEL, "prompt": "Summarise {{ detail.report.title }}"}),
        TIMEOUT,
    )
    .await;
    assert_eq!(error_type(&outcome), "NonRetryable.InvalidTemplate");
    let record = bench.record(id).await;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["error"]["type"], "InvalidTemplate");
    let message = record["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("prompt"), "{message}");
    assert!(message.contains("`detail.report.title`"), "{message}");
    assert!(bench.lab.bedrock.calls().is_empty());
}

/// A job may only send results where `RELAY_ALLOWED_DESTINATIONS` allows; a
/// job asking for anywhere else gets an error record at the configured
/// destination and no model call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_outside_the_allowlist_is_refused_before_any_model_call() {
    let bench = Bench::start(&[("RELAY_ALLOWED_DESTINATIONS", "s3://relay-results/teams/*")]).await;
    let refused = "3f8e2a10-0000-4000-8000-0000000000d1";
    let outcome = invoke_job(
        &bench,
        refused,
        json!({"model": MODEL, "prompt": "hi", "destination": "s3://someone-elses-bucket/loot/"}),
        TIMEOUT,
    )
    .await;
    assert_eq!(error_type(&outcome), "NonRetryable.DestinationNotAllowed");
    let record = bench.record(refused).await;
    assert_eq!(record["error"]["type"], "DestinationNotAllowed");
    assert!(record["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("s3://someone-elses-bucket/loot/")
            && m.contains("RELAY_ALLOWED_DESTINATIONS")));
    assert!(bench.lab.bedrock.calls().is_empty());

    // A templated destination inside the allowlist is used.
    let allowed = "3f8e2a10-0000-4000-8000-0000000000d2";
    let outcome = invoke_job(
        &bench,
        allowed,
        json!({"model": MODEL, "prompt": "hi", "destination": "s3://relay-results/teams/{{ event.source }}/"}),
        TIMEOUT,
    )
    .await;
    let Outcome::Response { body } = &outcome else {
        panic!("{outcome:?}\n{}", logs(&bench));
    };
    let key = format!("teams/com.example.tests/{allowed}.json");
    assert_eq!(body["record"], format!("s3://{BUCKET}/{key}"));
    let written: Value = serde_json::from_slice(
        &bench
            .lab
            .object(BUCKET, &key)
            .await
            .expect("s3")
            .expect("record at the job's destination"),
    )
    .expect("json");
    assert_eq!(written["status"], "succeeded");
}

/// `items_from` reads a JSON Lines object from S3 with the function's own
/// credentials; objects become `item` in templates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_from_a_jsonl_object_run_as_a_batch() {
    let bench = Bench::start(&[]).await;
    bench
        .lab
        .create_bucket("relay-inputs")
        .await
        .expect("bucket");
    bench
        .lab
        .put_object(
            "relay-inputs",
            "batches/reviews.jsonl",
            "{\"text\": \"loved it\"}\r\n\n{\"text\": \"meh\"}\n{\"text\": \"broken on arrival\"}\n",
            "application/x-ndjson",
        )
        .await
        .expect("put");
    let id = "3f8e2a10-0000-4000-8000-0000000000f0";
    let outcome = invoke_job(
        &bench,
        id,
        json!({"model": MODEL, "prompt": "Sentiment of: {{ item.text }}", "items_from": "s3://relay-inputs/batches/reviews.jsonl"}),
        TIMEOUT,
    )
    .await;
    assert!(
        matches!(outcome, Outcome::Response { .. }),
        "{outcome:?}\n{}",
        logs(&bench)
    );
    let lines = bench.lab.batch_lines(id).await.expect("s3").expect("jsonl");
    let texts: Vec<&str> = lines
        .iter()
        .map(|l| l["output"]["text"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        texts,
        [
            format!("Echo from {MODEL}: Sentiment of: loved it"),
            format!("Echo from {MODEL}: Sentiment of: meh"),
            format!("Echo from {MODEL}: Sentiment of: broken on arrival"),
        ]
    );
}

/// A malformed line in `items_from` fails that item, with its line number,
/// and the other items run: the batch is `partial`, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_items_from_line_fails_only_its_item() {
    let bench = Bench::start(&[]).await;
    bench
        .lab
        .create_bucket("relay-inputs")
        .await
        .expect("bucket");
    bench
        .lab
        .put_object(
            "relay-inputs",
            "batches/mixed.jsonl",
            "{\"text\": \"a\"}\n{\"text\": }\n\n{\"text\": \"c\"}\n",
            "application/x-ndjson",
        )
        .await
        .expect("put");
    let id = "3f8e2a10-0000-4000-8000-0000000000f1";
    let outcome = invoke_job(
        &bench,
        id,
        json!({"model": MODEL, "prompt": "{{ item.text }}", "items_from": "s3://relay-inputs/batches/mixed.jsonl"}),
        TIMEOUT,
    )
    .await;
    let Outcome::Response { body } = &outcome else {
        panic!("{outcome:?}\n{}", logs(&bench))
    };
    assert_eq!(body["status"], "partial", "{body}");
    assert_eq!(
        (body["succeeded"].clone(), body["failed"].clone()),
        (json!(2), json!(1))
    );
    let lines = bench.lab.batch_lines(id).await.expect("s3").expect("jsonl");
    assert_eq!(lines[1]["status"], "failed");
    assert_eq!(lines[1]["error"]["type"], "InvalidItems");
    let message = lines[1]["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("mixed.jsonl line 2"), "{message}");
    assert_eq!(
        bench.lab.bedrock.calls().len(),
        2,
        "no call for the bad line"
    );
}

/// The S3-upload flow: an `Object Created` event runs the default job, whose
/// templated `documents` entry names the uploaded object; the object reaches
/// Bedrock as a document block next to the prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_upload_event_sends_the_object_as_a_document_block() {
    let default_job = json!({
        "model": MODEL,
        "id": "summary/{{ detail.object.key | safe_id }}",
        "documents": ["s3://{{ detail.bucket.name }}/{{ detail.object.key }}"],
        "prompt": "Summarise {{ documents[0].name }} in three bullet points.",
    })
    .to_string();
    let bench = Bench::start(&[("RELAY_DEFAULT_JOB", default_job.as_str())]).await;
    let event: Value =
        serde_json::from_slice(&event_bytes("s3-object-created.json")).expect("event json");
    let bucket = event["detail"]["bucket"]["name"].as_str().expect("bucket");
    let key = event["detail"]["object"]["key"].as_str().expect("key");
    bench.lab.create_bucket(bucket).await.expect("bucket");
    let contract = "Contract 0042.\nThe supplier delivers 300 units by March.\n";
    bench
        .lab
        .put_object(bucket, key, contract, "text/plain")
        .await
        .expect("put");

    let outcome = bench.invoke("s3-object-created.json").await;
    let Outcome::Response { body } = &outcome else {
        panic!("{outcome:?}\n{}", logs(&bench));
    };
    let job_id = format!("summary/{key}");
    assert_eq!(body["job_id"], job_id);

    let calls = bench.lab.bedrock.calls();
    assert_eq!(calls.len(), 1);
    let content = calls[0].request["messages"][0]["content"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let document = content
        .iter()
        .find_map(|block| block.get("document"))
        .unwrap_or_else(|| panic!("no document block in {content:?}"));
    assert_eq!(document["format"], "txt");
    let bytes = document["source"]["bytes"].as_str().expect("base64 bytes");
    assert_eq!(
        aws_smithy_types::base64::decode(bytes).expect("base64"),
        contract.as_bytes()
    );
    let name = document["name"].as_str().expect("name");
    let text = content
        .iter()
        .find_map(|block| block["text"].as_str())
        .expect("prompt text");
    assert_eq!(text, format!("Summarise {name} in three bullet points."));
    let record = bench.record(&job_id).await;
    assert_eq!(record["status"], "succeeded");
}

/// Starts a bench whose function may send to `destination` (and whose lab has
/// it created by `create`).
async fn bench_allowing(destination: &str, extra: &[(&str, &str)]) -> Bench {
    let mut env = vec![("RELAY_ALLOWED_DESTINATIONS", destination)];
    env.extend_from_slice(extra);
    Bench::start(&env).await
}

fn response(bench: &Bench, outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Response { body } => body.clone(),
        other => panic!("expected success, got {other:?}\n{}", logs(bench)),
    }
}

/// `events/sqs-destination-job-event.json`: the record is one message on the
/// FIFO queue, grouped by the job's templated `group`, deduplicated by job id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_queue_destination_gets_the_record_with_group_and_dedup_ids() {
    let queue_arn = "arn:aws:sqs:us-east-1:222222222222:relay-results.fifo";
    let bench = bench_allowing(queue_arn, &[]).await;
    let services = Services::of(&bench.lab).await;
    let queue = services
        .create_queue("relay-results.fifo")
        .await
        .expect("queue");
    let body = response(
        &bench,
        &bench.invoke("sqs-destination-job-event.json").await,
    );
    assert_eq!(body["status"], "succeeded");

    let messages = services.receive_all(&queue.url).await.expect("receive");
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message = &messages[0];
    let record = message.json().expect("json body");
    assert_eq!(record["job_id"], "tickets/T-1043");
    assert_eq!(record["status"], "succeeded");
    assert_eq!(
        record["output"]["text"],
        format!("Echo from {MODEL}: Draft a two-sentence reply to: Where is my refund?")
    );
    assert_eq!(record["metadata"]["customer_id"], "C-77");
    assert_eq!(message.group_id.as_deref(), Some("customer-C-77"));
    assert_eq!(message.deduplication_id.as_deref(), Some("tickets/T-1043"));
    assert_eq!(
        message.attributes.get("job_id").map(String::as_str),
        Some("tickets/T-1043")
    );
}

/// `events/sns-destination-job-event.json`: one message on the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sns_topic_destination_gets_the_record() {
    let topic_arn = "arn:aws:sns:us-east-1:222222222222:relay-results";
    let bench = bench_allowing(topic_arn, &[]).await;
    let services = Services::of(&bench.lab).await;
    let (created, queue) = services
        .create_topic_to_queue("relay-results")
        .await
        .expect("topic");
    assert_eq!(created, topic_arn);
    response(
        &bench,
        &bench.invoke("sns-destination-job-event.json").await,
    );
    let messages = services.receive_all(&queue.url).await.expect("receive");
    assert_eq!(messages.len(), 1, "{messages:?}");
    let record = messages[0].json().expect("json");
    assert_eq!(record["job_id"], "incidents/INC-311-summary");
    assert_eq!(record["status"], "succeeded");
    assert!(record["output"]["text"]
        .as_str()
        .is_some_and(|t| t.starts_with(&format!("Echo from {MODEL}: Summarise incident INC-311"))));
}

/// `events/eventbridge-destination-job-event.json`: one `Bedrock Relay Result`
/// event from `bedrock-relay` on the bus, with the record as `detail`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_bus_destination_gets_a_result_event() {
    let bus_arn = "arn:aws:events:us-east-1:222222222222:event-bus/relay-results";
    let bench = bench_allowing(bus_arn, &[]).await;
    let services = Services::of(&bench.lab).await;
    let (created, queue) = services
        .create_bus_to_queue("relay-results")
        .await
        .expect("bus");
    assert_eq!(created, bus_arn);
    response(
        &bench,
        &bench.invoke("eventbridge-destination-job-event.json").await,
    );
    let messages = services.receive_all(&queue.url).await.expect("receive");
    assert_eq!(messages.len(), 1, "{messages:?}");
    let event = messages[0].json().expect("json");
    assert_eq!(event["source"], "bedrock-relay");
    assert_eq!(event["detail-type"], "Bedrock Relay Result");
    assert_eq!(event["detail"]["job_id"], "catalog/SKU-4411-description");
    assert_eq!(event["detail"]["status"], "succeeded");
}

/// `events/dynamodb-destination-job-event.json`: one item keyed by job id and
/// item 0; a second delivery finds it and does not call the model again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_destination_gets_one_item_and_is_read_back_on_redelivery() {
    let table_arn = "arn:aws:dynamodb:us-east-1:222222222222:table/relay-results";
    let bench = bench_allowing(table_arn, &[]).await;
    let services = Services::of(&bench.lab).await;
    services.create_table("relay-results").await.expect("table");
    for _ in 0..2 {
        response(
            &bench,
            &bench.invoke("dynamodb-destination-job-event.json").await,
        );
    }
    let (claims, items): (Vec<Value>, Vec<Value>) = services
        .scan_table("relay-results")
        .await
        .expect("scan")
        .into_iter()
        .partition(|i| i["status"] == "claimed");
    assert_eq!(items.len(), 1, "{items:?}");
    // The job's claim item sits below every index.
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!(claims[0]["item"], -1);
    assert_eq!(items[0]["job_id"], "catalog/SKU-4412-tags");
    assert_eq!(items[0]["item"], 0);
    assert_eq!(items[0]["status"], "succeeded");
    let record: Value =
        serde_json::from_str(items[0]["record"].as_str().expect("record text")).expect("json");
    assert!(record["output"]["text"]
        .as_str()
        .is_some_and(|t| t.contains("Give five comma-separated search tags")));
    assert_eq!(bench.lab.bedrock.calls().len(), 1, "one model call");
}

/// A batch to a queue: one message per item; with `RELAY_IDEMPOTENCY_TABLE`, a
/// redelivered event sends nothing twice and calls the model once per item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_to_a_queue_with_an_idempotency_table_sends_each_item_once() {
    let bench = Bench::start(&[
        ("RELAY_IDEMPOTENCY_TABLE", "relay-idempotency"),
        (
            "RELAY_ALLOWED_DESTINATIONS",
            "arn:aws:sqs:us-east-1:222222222222:batch-*",
        ),
    ])
    .await;
    let services = Services::of(&bench.lab).await;
    services
        .create_table("relay-idempotency")
        .await
        .expect("table");
    let queue = services.create_queue("batch-results").await.expect("queue");
    let mut event: Value =
        serde_json::from_slice(&event_bytes("batch-job-event.json")).expect("json");
    event["detail"]["destination"] = json!(queue.arn);
    let event = event.to_string().into_bytes();
    for _ in 0..3 {
        let body = response(&bench, &bench.invoke_bytes(event.clone(), TIMEOUT).await);
        assert_eq!(body["items"], 3);
    }
    let messages = services.receive_all(&queue.url).await.expect("receive");
    let mut indexes: Vec<u64> = messages
        .iter()
        .map(|m| m.json().expect("json")["index"].as_u64().expect("index"))
        .collect();
    indexes.sort_unstable();
    assert_eq!(indexes, [0, 1, 2], "{messages:?}");
    assert_eq!(bench.lab.bedrock.calls().len(), 3);
    let remembered = services
        .scan_table("relay-idempotency")
        .await
        .expect("scan")
        .into_iter()
        .filter(|i| i["status"] != "claimed")
        .collect::<Vec<_>>();
    assert_eq!(remembered.len(), 3);
    assert!(remembered
        .iter()
        .all(|i| i["job_id"] == "reviews/2026-11-28" && i["status"] == "succeeded"));
}

/// `events/document-job-event.json` and `events/items-from-job-event.json`, with
/// their inputs put in the lab's `relay-inputs` bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_and_items_from_samples_run() {
    let bench = Bench::start(&[]).await;
    bench
        .lab
        .create_bucket("relay-inputs")
        .await
        .expect("bucket");
    let pdf = b"%PDF-1.4\n% a tiny stand-in contract\n%%EOF\n".to_vec();
    bench
        .lab
        .put_object(
            "relay-inputs",
            "contracts/C-0042.pdf",
            pdf.clone(),
            "application/pdf",
        )
        .await
        .expect("pdf");
    let reviews = std::fs::read(common::event_path("inputs/reviews.jsonl")).expect("reviews");
    let review_count = reviews
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    bench
        .lab
        .put_object(
            "relay-inputs",
            "batches/reviews.jsonl",
            reviews,
            "application/x-ndjson",
        )
        .await
        .expect("jsonl");

    let body = response(&bench, &bench.invoke("document-job-event.json").await);
    assert_eq!(body["job_id"], "contracts/C-0042");
    let call = &bench.lab.bedrock.calls()[0];
    let document = &call.request["messages"][0]["content"][0]["document"];
    assert_eq!(document["format"], "pdf");
    assert_eq!(document["name"], "C-0042");
    assert_eq!(
        aws_smithy_types::base64::decode(document["source"]["bytes"].as_str().expect("bytes"))
            .expect("base64"),
        pdf
    );

    let body = response(&bench, &bench.invoke("items-from-job-event.json").await);
    assert_eq!(body["items"], review_count);
    assert_eq!(body["succeeded"], review_count);
}
