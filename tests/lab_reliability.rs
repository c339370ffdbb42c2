//! Reliability in the lab: duplicate deliveries running at the same moment in
//! two function processes, and injected faults (throttling storms, 5xx bursts,
//! a model slower than the time left, a destination outage mid-batch, STS
//! refusing, credentials expiring mid-batch). In each: no result lost, no item
//! answered twice by the model, the right record and error type.
//!
//! Needs the lab's Python tools: `scripts/setup` (the test command runs it).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use lab::emulator::Knobs;
use lab::runtime_api::{FunctionProcess, Outcome, RuntimeApi};
use lab::Lab;
use serde_json::{json, Value};

mod common;
use common::{error_type, job_event, TIMEOUT};

const MODEL: &str = "amazon.nova-lite-v1:0";

/// Model calls answered, by the user text they carried.
fn answered_by_prompt(lab: &Lab) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for call in lab.bedrock.calls().iter().filter(|c| c.status == 200) {
        let text = call.request["messages"][0]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *counts.entry(text).or_default() += 1;
    }
    counts
}

/// One function process with its own Runtime API, against a shared lab.
async fn function(lab: &Lab, extra_env: &[(&str, &str)]) -> (RuntimeApi, FunctionProcess) {
    let runtime = RuntimeApi::start().await.expect("runtime api");
    let mut env = lab.function_env();
    for (key, value) in extra_env {
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.to_string()));
    }
    let process = FunctionProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_bedrock-relay")),
        &runtime,
        &env,
    )
    .expect("function starts");
    (runtime, process)
}

/// The same event delivered to two function processes at the same moment, a
/// single job and a batch: one runs it, the other stops with a retryable
/// `JobInProgress` without calling the model; the other's retry finds the
/// results. One model call per item, one result each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_in_two_processes_call_the_model_once_per_item() {
    let lab = Lab::start().await.expect("lab");
    lab.bedrock.set_knobs(Knobs {
        latency_ms: 150,
        ..Knobs::default()
    });
    let (runtime_a, process_a) = function(&lab, &[("RELAY_MAX_CONCURRENCY", "4")]).await;
    let (runtime_b, process_b) = function(&lab, &[("RELAY_MAX_CONCURRENCY", "4")]).await;
    let logs = || {
        format!(
            "A:\n{}\nB:\n{}",
            process_a.logs().join("\n"),
            process_b.logs().join("\n")
        )
    };

    let batch_id = "5d7e0c11-0000-4000-8000-0000000000b2";
    let batch = job_event(
        batch_id,
        json!({"model": MODEL, "prompt": "dup item {{ item }}", "items": (0..12).collect::<Vec<_>>()}),
    );
    let single = job_event(
        "5d7e0c11-0000-4000-8000-0000000000a1",
        json!({"model": MODEL, "prompt": "dup single"}),
    );
    for event in [&batch, &single] {
        let (a, b) = tokio::join!(
            runtime_a.invoke(event.clone(), TIMEOUT),
            runtime_b.invoke(event.clone(), TIMEOUT)
        );
        let outcomes = [a.expect("a"), b.expect("b")];
        let ran = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Response { .. }))
            .count();
        let held_off: Vec<&str> = outcomes.iter().filter_map(Outcome::error_type).collect();
        assert_eq!(ran, 1, "{outcomes:?}\n{}", logs());
        assert_eq!(held_off, ["Retryable.JobInProgress"], "{}", logs());
        // Lambda retries the held-off delivery later: it finds the result.
        let retry = runtime_b
            .invoke(event.clone(), TIMEOUT)
            .await
            .expect("retry");
        let Outcome::Response { body } = &retry else {
            panic!("{retry:?}\n{}", logs());
        };
        assert!(
            body["already_done"] == true || body["already_done"] == 12,
            "{body}"
        );
    }

    let counts = answered_by_prompt(&lab);
    assert_eq!(counts.len(), 13, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let lines = lab.batch_lines(batch_id).await.expect("s3").expect("jsonl");
    assert_eq!(lines.len(), 12);
    assert!(lines.iter().all(|l| l["status"] == "succeeded"));
    assert_eq!(
        lab.record("5d7e0c11-0000-4000-8000-0000000000a1")
            .await
            .expect("s3")
            .expect("record")["status"],
        "succeeded"
    );
    drop((process_a, process_b));
}

/// A claim left by an invocation that died (its deadline passed) does not
/// block the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_claim_is_taken_over() {
    let lab = Lab::start().await.expect("lab");
    let id = "5d7e0c11-0000-4000-8000-0000000000c1";
    lab.put_object(
        lab::BUCKET,
        &format!("{}_claims/{id}.json", lab::PREFIX),
        json!({"request_id": "dead-invocation", "until_ms": 1}).to_string(),
        "application/json",
    )
    .await
    .expect("stale claim");
    let (runtime, process) = function(&lab, &[]).await;
    let outcome = runtime
        .invoke(
            job_event(id, json!({"model": MODEL, "prompt": "after a crash"})),
            TIMEOUT,
        )
        .await
        .expect("invoke");
    assert!(
        matches!(outcome, Outcome::Response { .. }),
        "{outcome:?}\n{}",
        process.logs().join("\n")
    );
    assert_eq!(answered_by_prompt(&lab).get("after a crash"), Some(&1));
    drop(process);
}

/// `scripts/redrive` reads both kinds of failure-queue message (Lambda's
/// on-failure records and EventBridge dead letters) back into the original
/// events, with the error that sent them there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_recovers_the_original_events_from_the_failure_queue() {
    let lab = Lab::start().await.expect("lab");
    let services = lab::services::Services::of(&lab).await;
    let queue = services.create_queue("failed-events").await.expect("queue");
    let sqs = aws_sdk_sqs::Client::new(
        &lab::services::sdk_config(lab.moto.endpoint(), &lab.admin_b).await,
    );
    let event: Value =
        serde_json::from_slice(&common::event_bytes("job-event.json")).expect("event");
    let lambda_record = json!({
        "version": "1.0",
        "timestamp": "2026-11-28T10:00:00.000Z",
        "requestContext": {"requestId": "r-1", "functionArn": "arn:aws:lambda:us-east-1:222222222222:function:bedrock-relay:$LATEST", "condition": "RetriesExhausted", "approximateInvokeCount": 3},
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {"errorType": "Retryable.BedrockThrottled", "errorMessage": "throttled"},
    });
    let mut dead_letter = event.clone();
    dead_letter["id"] = json!("0b7e5d1c-0000-4000-8000-00000000dead");
    for (body, error_code) in [
        (lambda_record.to_string(), None),
        (dead_letter.to_string(), Some("SDK_CLIENT_ERROR")),
        ("not json at all".to_owned(), None),
    ] {
        let mut send = sqs.send_message().queue_url(&queue.url).message_body(body);
        if let Some(code) = error_code {
            send = send.message_attributes(
                "ERROR_CODE",
                aws_sdk_sqs::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(code)
                    .build()
                    .expect("attribute"),
            );
        }
        send.send().await.expect("send");
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let creds = &lab.admin_b;
    let output = tokio::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("scripts/redrive"))
        .args([
            "--queue-url",
            &queue.url,
            "--function",
            "bedrock-relay",
            "--dry-run",
        ])
        .env("AWS_ENDPOINT_URL", lab.moto.endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", creds.access_key_id())
        .env("AWS_SECRET_ACCESS_KEY", creds.secret_access_key())
        .env(
            "AWS_SESSION_TOKEN",
            creds.session_token().unwrap_or_default(),
        )
        .output()
        .await
        .expect("redrive runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}\n{stderr}");
    assert_eq!(lines[0]["event_id"], event["id"]);
    assert_eq!(lines[0]["error"], "Retryable.BedrockThrottled");
    assert_eq!(lines[0]["event"], event, "the original event, unchanged");
    assert_eq!(lines[1]["event_id"], dead_letter["id"]);
    assert_eq!(lines[1]["error"], "SDK_CLIENT_ERROR");
    assert!(stderr.contains("skip"), "{stderr}");
    assert!(stderr.contains("would redrive: 2, skipped: 1"), "{stderr}");
}

/// A throttling storm (a per-account quota far below the batch's demand) and
/// bursts of 5xx answers: every item succeeds in one invocation, none is lost
/// and none is answered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_storms_and_5xx_bursts_lose_nothing_and_repeat_nothing() {
    let bench = common::Bench::start(&[("RELAY_MAX_CONCURRENCY", "8")]).await;
    bench.lab.bedrock.set_knobs(Knobs {
        latency_ms: 20,
        quota_rpm: Some(600),
        quota_window_ms: Some(1000),
        ..Knobs::default()
    });
    for (status, error_type, count) in [
        (503, "ServiceUnavailableException", 5),
        (500, "InternalServerException", 3),
    ] {
        bench.lab.bedrock.add_fault(lab::emulator::Fault {
            status,
            error_type: error_type.into(),
            count,
            model: None,
            body_contains: None,
        });
    }
    let id = "5d7e0c11-0000-4000-8000-0000000000f1";
    let outcome = bench
        .invoke_bytes(
            job_event(
                id,
                json!({"model": MODEL, "prompt": "storm item {{ item }}", "items": (0..40).collect::<Vec<_>>()}),
            ),
            Duration::from_secs(60),
        )
        .await;
    let Outcome::Response { body } = &outcome else {
        panic!("{outcome:?}\n{}", bench.function.logs().join("\n"));
    };
    assert_eq!(body["succeeded"], 40);
    let calls = bench.lab.bedrock.calls();
    assert!(calls.iter().any(|c| c.status == 429), "the quota throttled");
    assert_eq!(calls.iter().filter(|c| c.status >= 500).count(), 8);
    let counts = answered_by_prompt(&bench.lab);
    assert_eq!(counts.len(), 40);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let lines = bench.lab.batch_lines(id).await.expect("s3").expect("jsonl");
    assert!(lines.iter().all(|l| l["status"] == "succeeded"));
}

/// S3 goes down while a batch runs and comes back before the deadline: the
/// relay keeps the results it paid for and writes them when S3 is back,
/// instead of failing the event and computing them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_outage_mid_batch_is_outlasted() {
    let lab = Lab::start().await.expect("lab");
    let proxy = lab::stub::OutageProxy::start(lab.moto.endpoint())
        .await
        .expect("proxy");
    let endpoint = proxy.endpoint();
    let bench = common::Bench::start_in(
        lab,
        &[
            ("AWS_ENDPOINT_URL_S3", endpoint.as_str()),
            ("RELAY_S3_FORCE_PATH_STYLE", "true"),
            ("RELAY_MAX_CONCURRENCY", "4"),
        ],
    )
    .await;
    bench.lab.bedrock.set_knobs(Knobs {
        latency_ms: 100,
        ..Knobs::default()
    });
    let id = "5d7e0c11-0000-4000-8000-0000000000f2";
    let event = job_event(
        id,
        json!({"model": MODEL, "prompt": "outage item {{ item }}", "items": (0..20).collect::<Vec<_>>()}),
    );
    let outage = async {
        // Down once the batch is claimed and running, back after the items are done.
        while bench.lab.bedrock.calls().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.set_down(true);
        // Longer than the S3 client's own retries (3 attempts, ~1 s backoff).
        tokio::time::sleep(Duration::from_millis(5000)).await;
        proxy.set_down(false);
    };
    let (outcome, ()) = tokio::join!(bench.invoke_bytes(event, Duration::from_secs(30)), outage);
    let logs = bench.function.logs().join("\n");
    let Outcome::Response { body } = &outcome else {
        panic!("{outcome:?}\n{logs}");
    };
    assert_eq!(body["succeeded"], 20);
    assert!(logs.contains("delivery failed, trying again"), "{logs}");
    let counts = answered_by_prompt(&bench.lab);
    assert_eq!(counts.len(), 20);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let lines = bench.lab.batch_lines(id).await.expect("s3").expect("jsonl");
    assert_eq!(lines.len(), 20);
}

/// A model slower than the time left: once the relay has seen how long the
/// model takes, a call whose answer would come after the deadline is not
/// started; the event fails retryably with an error record and no model call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_slower_than_the_time_left_is_not_called() {
    let bench = common::Bench::start(&[("RELAY_DEADLINE_RESERVE_MS", "500")]).await;
    bench.lab.bedrock.set_knobs(Knobs {
        latency_ms: 1200,
        ..Knobs::default()
    });
    let event = |n: u32| {
        job_event(
            &format!("5d7e0c11-0000-4000-8000-00000000070{n}"),
            json!({"model": MODEL, "prompt": format!("slow {n}")}),
        )
    };
    let first = bench.invoke_bytes(event(1), Duration::from_secs(10)).await;
    assert!(matches!(first, Outcome::Response { .. }), "{first:?}");
    // 2 s left, 1.5 s after the reserve: room for a 1.2 s answer.
    let second = bench.invoke_bytes(event(2), Duration::from_secs(2)).await;
    assert!(matches!(second, Outcome::Response { .. }), "{second:?}");
    // 1.4 s left, 0.9 s after the reserve: not enough, so not started.
    let third = bench
        .invoke_bytes(event(3), Duration::from_millis(1400))
        .await;
    assert_eq!(error_type(&third), "Retryable.DeadlineExceeded");
    assert_eq!(
        bench.lab.bedrock.calls().len(),
        2,
        "the third call was not sent"
    );
    let record = bench
        .lab
        .record("5d7e0c11-0000-4000-8000-000000000703")
        .await
        .expect("s3")
        .expect("error record");
    assert_eq!(record["error"]["type"], "DeadlineExceeded");
    assert_eq!(record["error"]["retryable"], true);
}

/// The failure table (docs/failures.md), Bedrock rows, end to end: each answer the
/// model side can give ends in its record, its Lambda error type and its
/// class, with the retries the table says (one attempt here, so every answer
/// is final).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_failures_end_as_the_failure_table_says() {
    let bench = common::Bench::start(&[("RELAY_MAX_ATTEMPTS", "1")]).await;
    let rows = [
        (429, "ThrottlingException", "Retryable.BedrockThrottled"),
        (
            503,
            "ServiceUnavailableException",
            "Retryable.BedrockUnavailable",
        ),
        (
            500,
            "InternalServerException",
            "Retryable.BedrockUnavailable",
        ),
        (
            429,
            "ModelNotReadyException",
            "Retryable.BedrockUnavailable",
        ),
        (408, "ModelTimeoutException", "Retryable.BedrockUnavailable"),
        (400, "ValidationException", "NonRetryable.BedrockRejected"),
        (
            403,
            "AccessDeniedException",
            "NonRetryable.BedrockAccessDenied",
        ),
        (
            404,
            "ResourceNotFoundException",
            "NonRetryable.BedrockModelNotFound",
        ),
    ];
    for (n, (status, answer, expected)) in rows.into_iter().enumerate() {
        bench.lab.bedrock.add_fault(lab::emulator::Fault {
            status,
            error_type: answer.into(),
            count: 1,
            model: None,
            body_contains: None,
        });
        let id = format!("5d7e0c11-0000-4000-8000-0000000008{n:02}");
        let outcome = bench
            .invoke_bytes(
                job_event(&id, json!({"model": MODEL, "prompt": format!("row {n}")})),
                TIMEOUT,
            )
            .await;
        assert_eq!(error_type(&outcome), expected, "{answer}");
        let record = bench.lab.record(&id).await.expect("s3").expect("record");
        let (class, code) = expected.split_once('.').expect("class.code");
        assert_eq!(record["status"], "failed", "{answer}");
        assert_eq!(record["error"]["type"], code, "{answer}");
        assert_eq!(
            record["error"]["retryable"],
            class == "Retryable",
            "{answer}"
        );
    }
    assert_eq!(
        bench.lab.bedrock.calls().len(),
        rows.len(),
        "one attempt each with RELAY_MAX_ATTEMPTS=1"
    );
}
