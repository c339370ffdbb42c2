//! Batches larger than a chunk, end to end in the lab: the function plans
//! them onto a work queue, the lab's SQS event source mapping drives several
//! function processes through the chunks, and the last chunk assembles the
//! result — with nothing lost and no item answered twice.
//!
//! Needs the lab's Python tools: `scripts/setup` (the test command runs it).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use lab::emulator::{Fault, Knobs};
use lab::esm::{self, Mapping};
use lab::runtime_api::{FunctionProcess, Outcome, RuntimeApi};
use lab::services::{sdk_config, LabQueue, Services};
use lab::{Lab, BUCKET, PREFIX};
use serde_json::{json, Value};

mod common;
use common::answer;

const MODEL: &str = "amazon.nova-lite-v1:0";
const INPUTS: &str = "relay-inputs";
/// A second results bucket jobs may choose (`RELAY_ALLOWED_DESTINATIONS`).
const FINAL: &str = "relay-final";
/// How long one invocation may run (the Lambda deadline each one gets).
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(20);
/// The table the instances share stated quotas' send schedules in.
const RATE_TABLE: &str = "relay-rates";

/// The lab with a work queue (and its dead-letter queue after 5 receives), a
/// completion bus that forwards to a queue, and `instances` function
/// processes configured to fan out.
struct FanOut {
    env: Vec<(String, String)>,
    lab: Lab,
    services: Services,
    sqs: aws_sdk_sqs::Client,
    work: LabQueue,
    dead_letters: LabQueue,
    completed: LabQueue,
    runtimes: Vec<RuntimeApi>,
    functions: Vec<FunctionProcess>,
}

impl FanOut {
    async fn start(instances: usize, extra_env: &[(&str, &str)]) -> Self {
        // Longer than any invocation here: a chunk comes back early only
        // when the function says so.
        Self::start_with(instances, extra_env, 60).await
    }

    /// [`Self::start`] with the work queue's visibility timeout.
    async fn start_with(
        instances: usize,
        extra_env: &[(&str, &str)],
        visibility_secs: u32,
    ) -> Self {
        let lab = Lab::start().await.expect("lab");
        let services = Services::of(&lab).await;
        let sqs = aws_sdk_sqs::Client::new(&sdk_config(lab.moto.endpoint(), &lab.admin_b).await);
        let dead_letters = services.create_queue("work-dlq").await.expect("dlq");
        let work = services.create_queue("work").await.expect("work queue");
        let redrive = format!(
            r#"{{"deadLetterTargetArn":"{}","maxReceiveCount":"5"}}"#,
            dead_letters.arn
        );
        sqs.set_queue_attributes()
            .queue_url(&work.url)
            .attributes(QueueAttributeName::RedrivePolicy, redrive)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility_secs.to_string(),
            )
            .send()
            .await
            .expect("redrive");
        let (bus_arn, completed) = services
            .create_bus_to_queue("relay-done")
            .await
            .expect("bus");
        lab.create_bucket(INPUTS).await.expect("inputs bucket");
        // As the template makes it; used only when a target states its quota.
        let rate_table = services
            .create_rate_table(RATE_TABLE)
            .await
            .expect("rate table");

        let mut env = lab.function_env();
        lab.create_bucket(FINAL).await.expect("final bucket");
        let store = format!("s3://{BUCKET}/{PREFIX}_batches/");
        let settings = [
            ("RELAY_WORK_QUEUE", work.url.as_str()),
            ("RELAY_WORK_STORE", store.as_str()),
            ("RELAY_CHUNK_ITEMS", "10"),
            ("RELAY_EVENT_BUS", bus_arn.as_str()),
            ("RELAY_CHUNK_RETRY_SECONDS", "0"),
            ("RELAY_RATE_TABLE", rate_table.as_str()),
            (
                "RELAY_ALLOWED_DESTINATIONS",
                "s3://relay-final/*,*/222222222222/results",
            ),
        ];
        for (key, value) in settings.iter().chain(extra_env) {
            env.retain(|(k, _)| k != key);
            env.push((key.to_string(), value.to_string()));
        }
        let (runtimes, functions) = FunctionProcess::spawn_many(
            Path::new(env!("CARGO_BIN_EXE_bedrock-relay")),
            instances,
            &env,
        )
        .await
        .expect("functions");
        Self {
            env,
            lab,
            services,
            sqs,
            work,
            dead_letters,
            completed,
            runtimes,
            functions,
        }
    }

    /// The job event `id` around `detail`, invoked on the first instance as
    /// EventBridge would.
    async fn send_job(&self, id: &str, detail: Value) -> Outcome {
        let event = json!({
            "version": "0", "id": id, "detail-type": "Bedrock Relay Job",
            "source": "com.example.nightly", "account": "222222222222",
            "time": "2026-12-01T02:00:00Z", "region": "us-east-1", "resources": [],
            "detail": detail,
        });
        self.runtimes[0]
            .invoke(event.to_string().into_bytes(), FUNCTION_TIMEOUT)
            .await
            .unwrap_or_else(|err| panic!("{err}; logs:\n{}", self.logs()))
    }

    /// Runs the work queue through every instance, at most `concurrency` at
    /// once, until it has been empty for a few seconds.
    async fn drain(&self, concurrency: usize) -> esm::Report {
        self.drain_with(concurrency, FUNCTION_TIMEOUT).await
    }

    /// [`Self::drain`] with invocations of `function_timeout`.
    async fn drain_with(&self, concurrency: usize, function_timeout: Duration) -> esm::Report {
        let mapping = Mapping {
            queue_url: self.work.url.clone(),
            queue_arn: self.work.arn.clone(),
            batch_size: 1,
            maximum_concurrency: concurrency,
            function_timeout,
        };
        esm::run(
            &self.sqs,
            &mapping,
            &self.runtimes,
            Duration::from_secs(3),
            Duration::from_secs(120),
        )
        .await
        .expect("mapping")
    }

    async fn put_items(&self, key: &str, items: &[Value]) {
        let body: String = items.iter().map(|i| format!("{i}\n")).collect();
        self.lab
            .put_object(INPUTS, key, body, "application/x-ndjson")
            .await
            .expect("items");
    }

    /// How many times the model was asked each prompt.
    fn prompts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for call in self.lab.bedrock.calls().iter().filter(|c| c.status == 200) {
            if let Some(text) = call.request["messages"][0]["content"][0]["text"].as_str() {
                *counts.entry(text.to_owned()).or_default() += 1;
            }
        }
        counts
    }

    /// First answered call → last, by arrival at the emulator, in ms.
    fn answered_span_ms(&self) -> Option<u128> {
        let answered: Vec<u128> = self
            .lab
            .bedrock
            .calls()
            .iter()
            .filter(|c| c.status == 200)
            .map(|c| c.at_ms)
            .collect();
        answered
            .iter()
            .max()
            .zip(answered.iter().min())
            .map(|(last, first)| last - first)
    }

    /// What the work queue dead-lettered, read off its dead-letter queue.
    async fn dead_lettered(&self) -> Vec<lab::services::Received> {
        self.services
            .receive_all(&self.dead_letters.url)
            .await
            .expect("dlq")
    }

    async fn manifest(&self, id: &str) -> Option<Value> {
        self.lab
            .object(BUCKET, &format!("{PREFIX}{id}.manifest.json"))
            .await
            .expect("s3")
            .map(|bytes| serde_json::from_slice(&bytes).expect("manifest JSON"))
    }

    fn logs(&self) -> String {
        self.functions
            .iter()
            .map(|f| f.logs().join("\n"))
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

fn items(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"text": format!("review {i}")}))
        .collect()
}

fn job(items_from: &str) -> Value {
    json!({"model": MODEL, "prompt": "Sentiment of: {{ item.text }}", "items_from": items_from})
}

/// A 95-item `items_from` batch with chunks of 10 is planned, not run, by the
/// invocation that receives it; three instances (at most two at once) run its
/// ten chunks from the work queue; the last one writes one `.jsonl` in input
/// order and the manifest, and the completion event reaches the bus. Every
/// item is answered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_a_chunk_fans_out_and_is_assembled_in_order() {
    let bench = FanOut::start(3, &[]).await;
    bench.put_items("nightly/reviews.jsonl", &items(95)).await;
    let id = "nightly-2026-12-01";
    let planned = bench
        .send_job(id, job("s3://relay-inputs/nightly/reviews.jsonl"))
        .await;
    let planned = answer(&planned);
    assert_eq!(planned["status"], "planned", "{planned}");
    assert_eq!(
        (planned["items"].as_u64(), planned["chunks"].as_u64()),
        (Some(95), Some(10))
    );
    assert!(
        bench.lab.bedrock.calls().is_empty(),
        "planning calls no model"
    );

    let report = bench.drain(2).await;
    assert!(report.peak_concurrency <= 2, "{report:?}");
    assert_eq!(report.records, 10, "each chunk received once: {report:?}");

    let lines = bench
        .lab
        .batch_lines(id)
        .await
        .expect("s3")
        .unwrap_or_else(|| panic!("no result; logs:\n{}", bench.logs()));
    assert_eq!(lines.len(), 95);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i, "input order");
        assert_eq!(line["status"], "succeeded", "{line}");
        assert_eq!(
            line["output"]["text"],
            format!("Echo from {MODEL}: Sentiment of: review {i}")
        );
    }
    let prompts = bench.prompts();
    assert_eq!(prompts.len(), 95);
    assert!(
        prompts.values().all(|n| *n == 1),
        "each item asked once: {prompts:?}"
    );

    let manifest = bench.manifest(id).await.expect("manifest");
    assert_eq!(manifest["status"], "succeeded");
    assert_eq!(
        (manifest["items"].as_u64(), manifest["succeeded"].as_u64()),
        (Some(95), Some(95))
    );
    assert_eq!(manifest["chunks"], 10);
    assert_eq!(manifest["invocations"], 11, "one plan, ten chunk receives");
    assert_eq!(manifest["by_target"][0]["target"], "default");
    assert_eq!(manifest["by_target"][0]["calls"], 95);
    assert!(manifest["by_target"][0]["input_tokens"].as_u64() > Some(0));
    assert_eq!(
        manifest["results"],
        format!("s3://{BUCKET}/{PREFIX}{id}.jsonl")
    );

    let events = bench
        .services
        .receive_all(&bench.completed.url)
        .await
        .expect("bus queue");
    assert_eq!(events.len(), 1, "one completion event");
    let event = events[0].json().expect("event JSON");
    assert_eq!(event["detail-type"], "Bedrock Relay Batch Completed");
    assert_eq!(event["detail"]["job_id"], id);
    assert_eq!(event["detail"]["items"], 95);
    assert!(bench.dead_lettered().await.is_empty());
}

/// The scheduled event delivered twice fans out once, and a chunk message
/// delivered twice (here: sent again by hand) runs its items once. Inline
/// items are staged and cut by index the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_events_and_duplicate_chunks_answer_each_item_once() {
    let bench = FanOut::start(2, &[]).await;
    let id = "inline-twice";
    let detail =
        json!({"model": MODEL, "prompt": "Sentiment of: {{ item.text }}", "items": items(25)});
    let first = bench.send_job(id, detail.clone()).await;
    assert_eq!(answer(&first)["chunks"], 3, "{first:?}");
    let second = bench.send_job(id, detail).await;
    assert_eq!(
        answer(&second)["status"],
        "planned",
        "the second delivery finds it planned"
    );
    // The first chunk once more, as SQS's at-least-once delivery may.
    bench
        .sqs
        .send_message()
        .queue_url(&bench.work.url)
        .message_body(
            json!({"kind": "bedrock-relay/chunk", "version": 1, "batch": id, "chunk": 0})
                .to_string(),
        )
        .send()
        .await
        .expect("send");

    let report = bench.drain(2).await;
    assert_eq!(
        report.records, 4,
        "three chunks and the duplicate: {report:?}"
    );
    let prompts = bench.prompts();
    assert_eq!(prompts.len(), 25);
    assert!(prompts.values().all(|n| *n == 1), "{prompts:?}");
    let lines = bench.lab.batch_lines(id).await.expect("s3").expect("jsonl");
    assert_eq!(lines.len(), 25);
    assert!(lines
        .iter()
        .enumerate()
        .all(|(i, l)| l["index"] == i && l["status"] == "succeeded"));
}

/// A message on the work queue that is not a chunk this relay planned — a
/// job smuggled in, or a chunk of a batch never planned — is refused with an
/// error record, deleted, and never runs a model call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_are_not_planned_chunks_are_refused_and_never_run() {
    let bench = FanOut::start(1, &[]).await;
    for body in [
        json!({"model": MODEL, "prompt": "run me"}),
        json!({"kind": "bedrock-relay/chunk", "version": 1, "batch": "never-planned", "chunk": 0}),
    ] {
        bench
            .sqs
            .send_message()
            .queue_url(&bench.work.url)
            .message_body(body.to_string())
            .send()
            .await
            .expect("send");
    }
    let report = bench.drain(1).await;
    assert_eq!(report.deleted, 2, "refused, not retried: {report:?}");
    assert!(bench.lab.bedrock.calls().is_empty());
    let keys = bench.lab.record_keys().await.expect("keys");
    let refusals: Vec<Value> = futures_util::future::join_all(
        keys.iter()
            .filter(|k| k.starts_with(&format!("{PREFIX}sqs-")))
            .map(|k| async {
                let bytes = bench
                    .lab
                    .object(BUCKET, k)
                    .await
                    .expect("s3")
                    .expect("record");
                serde_json::from_slice::<Value>(&bytes).expect("record JSON")
            }),
    )
    .await;
    assert_eq!(refusals.len(), 2, "{keys:?}");
    for record in &refusals {
        assert_eq!(record["error"]["type"], "NotAChunk", "{record}");
        assert_eq!(record["error"]["retryable"], false);
    }
    let reasons: Vec<&str> = refusals
        .iter()
        .filter_map(|r| r["error"]["message"].as_str())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|m| m.contains("no batch `never-planned` was planned")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|m| m.contains("not a chunk message")),
        "{reasons:?}"
    );
}

/// An `items_from` object overwritten after planning is never mixed into the
/// batch: every chunk's items fail with `ItemsChanged`, naming the object,
/// and the batch still completes (partial) with nothing sent to the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_items_object_changed_after_planning_is_refused_not_mixed() {
    let bench = FanOut::start(1, &[]).await;
    bench.put_items("changing.jsonl", &items(30)).await;
    let id = "changed-under-it";
    let planned = bench
        .send_job(id, job("s3://relay-inputs/changing.jsonl"))
        .await;
    assert_eq!(answer(&planned)["chunks"], 3);
    bench.put_items("changing.jsonl", &items(31)).await;

    bench.drain(1).await;
    assert!(
        bench.lab.bedrock.calls().is_empty(),
        "no item of either version ran"
    );
    let lines = bench.lab.batch_lines(id).await.expect("s3").expect("jsonl");
    assert_eq!(lines.len(), 30);
    for line in &lines {
        assert_eq!(line["error"]["type"], "ItemsChanged", "{line}");
        assert!(line["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("s3://relay-inputs/changing.jsonl changed after its batch was planned"));
    }
    let manifest = bench.manifest(id).await.expect("manifest");
    assert_eq!(
        (manifest["status"].as_str(), manifest["failed"].as_u64()),
        (Some("failed"), Some(30))
    );
}

/// A chunk whose items keep failing with retryable errors is received five
/// times, then SQS dead-letters it; on the last receive the relay writes an
/// error record naming the chunk's items left. The other chunks finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_chunk_is_dead_lettered_with_a_record_of_its_items() {
    let bench = FanOut::start(2, &[("RELAY_MAX_ATTEMPTS", "1")]).await;
    let mut all = items(30);
    all[14] = json!({"text": "POISON"});
    bench.put_items("poison.jsonl", &all).await;
    bench.lab.bedrock.add_fault(Fault {
        status: 500,
        error_type: "InternalServerException".into(),
        count: 1000,
        model: None,
        body_contains: Some("POISON".into()),
    });
    bench.lab.bedrock.set_knobs(Knobs::default());
    let id = "poisoned";
    bench
        .send_job(id, job("s3://relay-inputs/poison.jsonl"))
        .await;

    // Each receive keeps retrying until its deadline: short ones keep this quick.
    let report = bench.drain_with(2, Duration::from_secs(4)).await;
    assert_eq!(
        report.records,
        2 + 5,
        "two good chunks, five receives of the bad one: {report:?}"
    );
    let dead = bench.dead_lettered().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].json().expect("body")["chunk"], 1);
    let record = bench
        .lab
        .record(&format!("{id}/chunk-000001"))
        .await
        .expect("s3")
        .unwrap_or_else(|| panic!("no dead-letter record; logs:\n{}", bench.logs()));
    assert_eq!(record["error"]["type"], "ChunkDeadLettered", "{record}");
    let message = record["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("items 10-19"), "{message}");
    assert!(message.contains("items not settled: 14;"), "{message}");
    assert!(message.contains("receive 5"), "{message}");
    // The good items of the bad chunk were asked once, not five times.
    let prompts = bench.prompts();
    assert_eq!(
        prompts.get("Sentiment of: review 13"),
        Some(&1),
        "{prompts:?}"
    );
    assert!(
        bench.manifest(id).await.is_none(),
        "not complete without chunk 1"
    );
}

/// An instance killed mid-chunk: its chunk comes back after the visibility
/// timeout and another instance (Lambda's replacement) finishes it from the
/// saved progress. Only the answers after the last save and those in flight
/// are asked again: at most `PROGRESS_EVERY` (50) + `RELAY_MAX_CONCURRENCY`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_chunk_loses_nothing_and_repeats_little() {
    let mut bench = FanOut::start_with(
        2,
        &[("RELAY_CHUNK_ITEMS", "60"), ("RELAY_MAX_CONCURRENCY", "2")],
        6,
    )
    .await;
    bench.lab.bedrock.set_knobs(Knobs {
        latency_ms: 50,
        ..Knobs::default()
    });
    bench.put_items("kill.jsonl", &items(70)).await;
    let id = "killed-mid-chunk";
    assert_eq!(
        answer(
            &bench
                .send_job(id, job("s3://relay-inputs/kill.jsonl"))
                .await
        )["chunks"],
        2
    );

    let answered_in_chunk_0 = |bench: &FanOut| {
        bench
            .prompts()
            .keys()
            .filter(|p| {
                p.strip_prefix("Sentiment of: review ")
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n < 60)
            })
            .count()
    };
    let killer = async {
        // Past the first progress save (50 results), before the chunk ends.
        while answered_in_chunk_0(&bench) < 55 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let victim = bench
            .functions
            .iter()
            .position(|f| {
                f.logs()
                    .iter()
                    .any(|l| l.contains("chunk started items=60"))
            })
            .expect("an instance runs chunk 0");
        let pid = bench.functions[victim].pid().expect("pid");
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
        assert!(killed.is_ok_and(|s| s.success()));
        victim
    };
    let mapping = Mapping {
        queue_url: bench.work.url.clone(),
        queue_arn: bench.work.arn.clone(),
        batch_size: 1,
        maximum_concurrency: 2,
        function_timeout: Duration::from_secs(4),
    };
    let (report, victim) = tokio::join!(
        esm::run(
            &bench.sqs,
            &mapping,
            &bench.runtimes,
            Duration::from_secs(8),
            Duration::from_secs(90)
        ),
        killer
    );
    let report = report.expect("mapping");
    // What Lambda does next: a fresh instance on the same slot, then the rest.
    bench.functions[victim] = FunctionProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_bedrock-relay")),
        &bench.runtimes[victim],
        &bench.env,
    )
    .expect("replacement");
    let rest = bench.drain(2).await;

    let lines = bench
        .lab
        .batch_lines(id)
        .await
        .expect("s3")
        .unwrap_or_else(|| {
            panic!(
                "no result after {report:?} {rest:?}; logs:\n{}",
                bench.logs()
            )
        });
    assert_eq!(lines.len(), 70);
    assert!(lines
        .iter()
        .enumerate()
        .all(|(i, l)| l["index"] == i && l["status"] == "succeeded"));
    let prompts = bench.prompts();
    let repeated: usize = prompts.values().map(|n| n - 1).sum();
    assert!(
        repeated <= 50 + 2,
        "{repeated} answers asked again: {prompts:?}"
    );
    for i in 0..50 {
        assert_eq!(
            prompts.get(&format!("Sentiment of: review {i}")),
            Some(&1),
            "saved before the kill: item {i}"
        );
    }
}

/// The destination is unreachable when the last chunk finishes: assembly
/// fails, the chunk's message comes back, and a later receive assembles the
/// complete result once the destination is back. No item is asked twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_outage_during_assembly_is_retried_to_a_complete_result() {
    let bench = FanOut::start(1, &[("RELAY_CHUNK_RETRY_SECONDS", "2")]).await;
    bench.put_items("outage.jsonl", &items(25)).await;
    // The job's results go to a bucket that is gone when assembly starts.
    let s3 = lab::s3_client(bench.lab.moto.endpoint(), &bench.lab.admin_b);
    s3.delete_bucket()
        .bucket(FINAL)
        .send()
        .await
        .expect("bucket removed");
    let id = "assembly-outage";
    let mut detail = job("s3://relay-inputs/outage.jsonl");
    detail["destination"] = json!("s3://relay-final/nightly/");
    assert_eq!(answer(&bench.send_job(id, detail).await)["chunks"], 3);

    let restore = async {
        while !bench.logs().contains("the batch's assembly failed") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bench.lab.create_bucket(FINAL).await.expect("bucket back");
    };
    let (report, ()) = tokio::join!(bench.drain(1), restore);
    let lines = bench
        .lab
        .lines_in(FINAL, &format!("nightly/{id}.jsonl"))
        .await
        .expect("s3")
        .unwrap_or_else(|| panic!("not assembled: {report:?}; logs:\n{}", bench.logs()));
    assert_eq!(lines.len(), 25);
    assert!(lines
        .iter()
        .enumerate()
        .all(|(i, l)| l["index"] == i && l["status"] == "succeeded"));
    assert!(
        report.records > 3,
        "the last chunk came back for the assembly: {report:?}"
    );
    assert!(bench.prompts().values().all(|n| *n == 1));
    let manifest = bench
        .lab
        .object(FINAL, &format!("nightly/{id}.manifest.json"))
        .await
        .expect("s3");
    assert!(manifest.is_some(), "the manifest follows the result");
    assert!(bench.dead_lettered().await.is_empty());
}

/// To a queue destination, a fanned-out batch sends each item's result as its
/// chunk settles them (each once) and the manifest last; no `.jsonl` is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_destination_gets_every_item_once_then_the_manifest() {
    let bench = FanOut::start(2, &[]).await;
    let results = bench.services.create_queue("results").await.expect("queue");
    bench.put_items("to-queue.jsonl", &items(25)).await;
    let id = "to-a-queue";
    let mut detail = job("s3://relay-inputs/to-queue.jsonl");
    detail["destination"] = json!(results.url);
    assert_eq!(answer(&bench.send_job(id, detail).await)["chunks"], 3);
    bench.drain(2).await;

    let messages = bench
        .services
        .receive_all(&results.url)
        .await
        .expect("results");
    let bodies: Vec<Value> = messages.iter().map(|m| m.json().expect("JSON")).collect();
    let mut indexes: Vec<u64> = bodies.iter().filter_map(|b| b["index"].as_u64()).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..25).collect::<Vec<u64>>(), "each item once");
    let manifests: Vec<&Value> = bodies.iter().filter(|b| b["mode"] == "fan-out").collect();
    assert_eq!(manifests.len(), 1, "{bodies:?}");
    assert_eq!(
        (
            manifests[0]["items"].as_u64(),
            manifests[0]["succeeded"].as_u64()
        ),
        (Some(25), Some(25))
    );
    assert!(bench.lab.batch_lines(id).await.expect("s3").is_none());
}

/// An `items_from` batch over `RELAY_MAX_ITEMS` is refused while it streams,
/// before any claim, plan, chunk message or model call, with the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_item_limit_is_refused_before_any_claim() {
    let bench = FanOut::start(1, &[("RELAY_MAX_ITEMS", "50")]).await;
    bench.put_items("too-many.jsonl", &items(51)).await;
    let id = "too-many";
    let outcome = bench
        .send_job(id, job("s3://relay-inputs/too-many.jsonl"))
        .await;
    assert_eq!(
        outcome.error_type(),
        Some("NonRetryable.InvalidItems"),
        "{outcome:?}"
    );
    let record = bench
        .lab
        .record(id)
        .await
        .expect("s3")
        .expect("error record");
    let message = record["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("more than 50 items"), "{message}");
    let keys = bench.lab.record_keys().await.expect("keys");
    assert!(
        !keys.iter().any(|k| k.contains("_batches")),
        "no plan, no claim: {keys:?}"
    );
    assert!(bench
        .services
        .receive_all(&bench.work.url)
        .await
        .expect("queue")
        .is_empty());
    assert!(bench.lab.bedrock.calls().is_empty());
}

/// Four instances with four calls in flight each (up to 320 requests/s at
/// 50 ms answers) share an account whose quota is 1,200 requests a minute,
/// enforced over a 5 s window (100 per 5 s). The target states that quota
/// (`RELAY_REQUESTS_PER_MINUTE`), so every instance takes its send slots
/// from the one schedule in the rate table: together they send at 98 % of
/// 20 a second and the quota throttles next to nothing. Pacing on their
/// own, the four throttle more than half their calls (278 of 478 in one run).
/// The window is 5 s, not Bedrock's minute, to keep the test short; its
/// 2 % slack is 100 ms, more than a loaded machine's scheduling delays
/// (with a 1 s window, 20 ms of slack, a run beside a build saw 6 of 206
/// throttled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_a_stated_quota_through_the_rate_table() {
    let bench = FanOut::start(
        4,
        &[
            ("RELAY_CHUNK_ITEMS", "25"),
            ("RELAY_MAX_CONCURRENCY", "4"),
            ("RELAY_REQUESTS_PER_MINUTE", "1200"),
        ],
    )
    .await;
    bench.lab.bedrock.set_knobs(Knobs {
        latency_ms: 50,
        quota_rpm: Some(1200),
        quota_window_ms: Some(5000),
        ..Knobs::default()
    });
    bench.put_items("stated.jsonl", &items(200)).await;
    let id = "stated-quota";
    let planned = bench
        .send_job(id, job("s3://relay-inputs/stated.jsonl"))
        .await;
    assert_eq!(answer(&planned)["chunks"], 8, "{planned:?}");
    let report = bench.drain(4).await;

    let manifest = bench
        .manifest(id)
        .await
        .unwrap_or_else(|| panic!("no manifest ({report:?}); logs:\n{}", bench.logs()));
    assert_eq!(manifest["succeeded"], 200, "{manifest}");
    let prompts = bench.prompts();
    assert_eq!(prompts.len(), 200);
    assert!(prompts.values().all(|n| *n == 1), "an item was asked twice");

    let calls = bench.lab.bedrock.calls();
    let throttled = calls.iter().filter(|c| c.status == 429).count();
    assert!(
        throttled <= 4,
        "{throttled} of {} calls throttled",
        calls.len()
    );
    // Answers came no faster than the stated rate: 200 in no less than
    // 199 gaps of 50 ms.
    let span = bench.answered_span_ms();
    assert!(span.is_some_and(|ms| ms >= 199 * 50), "{span:?} ms");

    let schedules = bench.services.scan_table(RATE_TABLE).await.expect("scan");
    assert_eq!(schedules.len(), 1, "{schedules:?}");
    assert_eq!(
        schedules[0]["pk"],
        format!("111111111111/us-east-1/{MODEL}"),
        "one schedule per account, region and model"
    );
    // Every take was counted, at most one per call (calls waiting together
    // share one).
    let takes = schedules[0]["takes"].as_u64().unwrap_or_default();
    assert!(
        (1..=calls.len() as u64).contains(&takes),
        "{takes} takes for {} calls",
        calls.len()
    );
}

/// A schedule left hours ahead of the clock (a clock far ahead, a damaged
/// item) serves no caller: no invocation waits that long. The next take
/// starts it again at now instead of making every call wait out its
/// deadline, so the batch runs at the stated rate as on a fresh table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_left_hours_ahead_is_started_again_at_now() {
    let bench = FanOut::start(
        1,
        &[
            ("RELAY_CHUNK_ITEMS", "25"),
            ("RELAY_MAX_CONCURRENCY", "4"),
            ("RELAY_REQUESTS_PER_MINUTE", "1200"),
        ],
    )
    .await;
    bench.lab.bedrock.set_knobs(Knobs {
        latency_ms: 20,
        ..Knobs::default()
    });
    let key = format!("111111111111/us-east-1/{MODEL}");
    let now_us = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    };
    let two_hours_us = 2 * 3600 * 1_000_000;
    bench
        .services
        .put_numbers(
            RATE_TABLE,
            &key,
            &[("next_us", now_us() + two_hours_us), ("takes", 0)],
        )
        .await
        .expect("seed the schedule");
    bench.put_items("ahead.jsonl", &items(50)).await;
    let id = "schedule-ahead";
    let planned = bench
        .send_job(id, job("s3://relay-inputs/ahead.jsonl"))
        .await;
    assert_eq!(answer(&planned)["chunks"], 2, "{planned:?}");
    bench.drain(1).await;

    let manifest = bench
        .manifest(id)
        .await
        .unwrap_or_else(|| panic!("no manifest; logs:\n{}", bench.logs()));
    assert_eq!(manifest["succeeded"], 50, "{manifest}");
    let schedules = bench.services.scan_table(RATE_TABLE).await.expect("scan");
    let next_us = schedules[0]["next_us"].as_u64().unwrap_or_default();
    assert!(
        next_us < now_us() + 60 * 1_000_000,
        "the schedule is back near the clock: {} s ahead",
        (next_us as i128 - now_us() as i128) / 1_000_000
    );
    // And still paced: 50 answers at 98 % of 20 a second take 49 gaps.
    let span = bench.answered_span_ms();
    assert!(span.is_some_and(|ms| ms >= 49 * 50), "{span:?} ms");
}
