//! Hardening (issue #10), end to end in the lab: what an event may read, the
//! ids it may claim, and what it may overwrite. Each test is a sender trying
//! what the audit found it could do.

use lab::runtime_api::Outcome;
use lab::{BUCKET, PREFIX};
use serde_json::{json, Value};

mod common;
use common::{error_type, Bench, TIMEOUT};

const MODEL: &str = "amazon.nova-lite-v1:0";

fn envelope(id: &str, source: &str, detail: Value) -> Vec<u8> {
    json!({
        "version": "0", "id": id, "detail-type": "Bedrock Relay Job", "source": source,
        "account": "222222222222", "time": "2026-12-01T02:00:00Z", "region": "us-east-1",
        "resources": [], "detail": detail,
    })
    .to_string()
    .into_bytes()
}

/// One event reads another job's result (under the results prefix, which a
/// catch-all pattern matches) and a file outside the allowed patterns, as
/// `documents` and as `items_from`: each is `SourceNotAllowed`, with a record,
/// before any read or model call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_and_items_from_read_only_allowed_sources_and_never_the_relays_own() {
    let bench = Bench::start(&[(
        "RELAY_ALLOWED_SOURCES",
        "s3://relay-inputs/*,s3://relay-results/*",
    )])
    .await;
    bench
        .lab
        .create_bucket("relay-inputs")
        .await
        .expect("bucket");
    bench.lab.create_bucket("private").await.expect("bucket");
    bench
        .lab
        .put_object("relay-inputs", "ok.txt", "allowed text", "text/plain")
        .await
        .expect("put");
    bench
        .lab
        .put_object("private", "secret.txt", "secret", "text/plain")
        .await
        .expect("put");
    // A finished job whose result another sender wants.
    let outcome = bench
        .invoke_bytes(
            envelope(
                "6c1e0000-0000-4000-8000-00000000f001",
                "com.example.a",
                json!({"id": "team-a/report", "model": MODEL, "prompt": "p"}),
            ),
            TIMEOUT,
        )
        .await;
    assert!(matches!(outcome, Outcome::Response { .. }), "{outcome:?}");
    let calls_before = bench.lab.bedrock.calls().len();

    let stolen = format!("s3://{BUCKET}/{PREFIX}team-a/report.json");
    let claims = format!("s3://{BUCKET}/{PREFIX}_claims/team-a/report.json");
    for (n, detail) in [
        json!({"id": "steal-1", "model": MODEL, "documents": [stolen], "prompt": "repeat it"}),
        json!({"id": "steal-2", "model": MODEL, "documents": ["s3://relay-inputs/ok.txt", claims], "prompt": "p"}),
        json!({"id": "steal-3", "model": MODEL, "items_from": format!("s3://{BUCKET}/{PREFIX}team-a/report.json"), "prompt": "{{ item }}"}),
        json!({"id": "steal-4", "model": MODEL, "documents": ["s3://private/secret.txt"], "prompt": "p"}),
        json!({"id": "steal-5", "model": MODEL, "items": [1, 2], "documents": ["s3://private/{{ item }}.txt"], "prompt": "p"}),
    ]
    .into_iter()
    .enumerate()
    {
        let id = detail["id"].as_str().unwrap_or_default().to_owned();
        let outcome = bench
            .invoke_bytes(envelope(&format!("6c1e0000-0000-4000-8000-00000000f1{n:02}"), "com.example.b", detail), TIMEOUT)
            .await;
        if id == "steal-5" {
            // Per-item documents are checked per item: each item fails for good.
            let Outcome::Response { body } = &outcome else {
                panic!("{id}: {outcome:?}")
            };
            assert_eq!(body["failed"], 2, "{id}: {body}");
            let lines = bench.lab.batch_lines(&id).await.expect("s3").expect("lines");
            assert!(lines.iter().all(|l| l["error"]["type"] == "SourceNotAllowed"), "{lines:?}");
            continue;
        }
        assert_eq!(error_type(&outcome), "NonRetryable.SourceNotAllowed", "{id}");
        let record = bench.record(&id).await;
        assert_eq!(record["error"]["type"], "SourceNotAllowed", "{id}");
        let message = record["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("never read as sources") || message.contains("not an allowed source"),
            "{id}: {message}"
        );
    }
    assert_eq!(
        bench.lab.bedrock.calls().len(),
        calls_before,
        "no model call"
    );
}

/// With no `RELAY_ALLOWED_SOURCES`, no job reads any object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_allowed_sources_means_no_documents() {
    let bench = Bench::start(&[("RELAY_ALLOWED_SOURCES", "")]).await;
    bench
        .lab
        .create_bucket("relay-inputs")
        .await
        .expect("bucket");
    bench
        .lab
        .put_object("relay-inputs", "ok.txt", "text", "text/plain")
        .await
        .expect("put");
    let outcome = bench
        .invoke_bytes(envelope("6c1e0000-0000-4000-8000-00000000f201", "com.example.a", json!({"id": "d", "model": MODEL, "documents": ["s3://relay-inputs/ok.txt"], "prompt": "p"})), TIMEOUT)
        .await;
    assert_eq!(error_type(&outcome), "NonRetryable.SourceNotAllowed");
    let record = bench.record("d").await;
    assert!(record["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("RELAY_ALLOWED_SOURCES: none"));
    assert!(bench.lab.bedrock.calls().is_empty());
}

/// Ids aimed at the relay's bookkeeping are refused; with `RELAY_ID_PREFIX`
/// a sender's ids live under its source, so a squatted id of another source
/// is a different key and the real run still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_ids_cannot_reach_bookkeeping_or_another_sources_results() {
    let bench = Bench::start(&[("RELAY_ID_PREFIX", "{{ event.source }}/")]).await;
    for (n, id) in ["_claims/reports/2026-12-01", "reports/_spill/x", "_x"]
        .iter()
        .enumerate()
    {
        let outcome = bench
            .invoke_bytes(
                envelope(
                    &format!("6c1e0000-0000-4000-8000-00000000f3{n:02}"),
                    "com.example.a",
                    json!({"id": id, "model": MODEL, "prompt": "p"}),
                ),
                TIMEOUT,
            )
            .await;
        assert_eq!(error_type(&outcome), "NonRetryable.InvalidJob", "{id}");
    }
    // The attacker squats tomorrow's report id from its own source...
    let squat = bench
        .invoke_bytes(
            envelope(
                "6c1e0000-0000-4000-8000-00000000f310",
                "com.example.attacker",
                json!({"id": "reports/2026-12-02", "model": MODEL, "prompt": "forged"}),
            ),
            TIMEOUT,
        )
        .await;
    assert!(matches!(squat, Outcome::Response { .. }), "{squat:?}");
    // ...and the real run, from the scheduler's source, is not `already_done`.
    let real = bench
        .invoke_bytes(
            envelope(
                "6c1e0000-0000-4000-8000-00000000f311",
                "com.example.reports",
                json!({"id": "reports/2026-12-02", "model": MODEL, "prompt": "the real one"}),
            ),
            TIMEOUT,
        )
        .await;
    let Outcome::Response { body } = &real else {
        panic!("{real:?}")
    };
    assert_ne!(body["status"], "already_done", "{body}");
    let real_record = bench.record("com.example.reports/reports/2026-12-02").await;
    assert_eq!(real_record["status"], "succeeded");
    assert_eq!(
        real_record["job_id"],
        "com.example.reports/reports/2026-12-02"
    );
    let squatted = bench
        .record("com.example.attacker/reports/2026-12-02")
        .await;
    assert_eq!(squatted["status"], "succeeded");
    assert_eq!(bench.lab.bedrock.calls().len(), 2);
}

/// With `RELAY_LOG_CONTENT` off, nothing an event says reaches the logs, even
/// at TRACE: not the raw event, not the HTTP bodies, not a value quoted by a
/// parse error or a template error. With it on, the same run logs them (so
/// the check can see a leak).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_content_logging_off_no_event_value_reaches_the_logs_at_any_level() {
    let events = |tag: &str| {
        vec![
            json!({"id": "ok", "model": MODEL, "prompt": format!("summarise {tag}-PROMPT")}),
            json!({"id": "bad-type", "model": MODEL, "prompt": "p", "inference": {"maxTokens": format!("{tag}-TYPE")}}),
            json!({"id": "bad-variant", "model": MODEL, "messages": [{"role": format!("{tag}-ROLE in a sentence"), "content": [{"text": "x"}]}]}),
            json!({"id": "bad-template", "model": MODEL, "prompt": format!("{{{{ detail.{tag}_TEMPLATE }}}}")}),
        ]
    };
    for (content, tag) in [("false", "SECRETOFF"), ("true", "SECRETON")] {
        let bench = Bench::start(&[
            ("AWS_LAMBDA_LOG_LEVEL", "trace"),
            ("RELAY_LOG_CONTENT", content),
        ])
        .await;
        for (n, detail) in events(tag).into_iter().enumerate() {
            let _ = bench
                .invoke_bytes(
                    envelope(
                        &format!("6c1e0000-0000-4000-8000-00000000f4{n:02}"),
                        "com.example.a",
                        detail,
                    ),
                    TIMEOUT,
                )
                .await;
        }
        let logs = bench.function.logs().join("\n");
        assert!(logs.contains("job failed"), "the failures are logged");
        let leaked: Vec<&str> = ["PROMPT", "TYPE", "ROLE", "TEMPLATE"]
            .into_iter()
            .filter(|part| {
                logs.contains(&format!("{tag}-{part}")) || logs.contains(&format!("{tag}_{part}"))
            })
            .collect();
        if content == "false" {
            assert!(leaked.is_empty(), "leaked {leaked:?}:\n{logs}");
            // The record (under the envelope id: the job did not parse) still
            // says what to fix, naming the field.
            let record = bench.record("6c1e0000-0000-4000-8000-00000000f401").await;
            let message = record["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("inference.maxTokens") && message.contains("expected"),
                "{message}"
            );
            assert!(!message.contains("SECRETOFF"), "{message}");
        } else {
            assert!(
                leaked.contains(&"PROMPT"),
                "content logging on shows content:\n{logs}"
            );
        }
    }
}

/// A FIFO queue destination and a real retry: the first delivery of an event
/// is throttled past its attempts and sends a retryable failure; Lambda's
/// retry, seconds later and well inside SQS's five-minute deduplication
/// window, succeeds. The consumer receives both, the success last: the
/// failure's deduplication id is not the success's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_after_a_retried_failure_reaches_a_fifo_queue() {
    let lab = lab::Lab::start().await.expect("lab");
    let services = lab::services::Services::of(&lab).await;
    let queue = services.create_queue("results.fifo").await.expect("queue");
    let bench = Bench::start_in(
        lab,
        &[
            ("RELAY_DESTINATION", queue.arn.as_str()),
            ("RELAY_MAX_ATTEMPTS", "2"),
        ],
    )
    .await;
    bench.lab.bedrock.add_fault(lab::emulator::Fault {
        status: 429,
        error_type: "ThrottlingException".into(),
        count: 2,
        model: None,
        body_contains: None,
    });
    let event = envelope(
        "6c1e0000-0000-4000-8000-00000000f501",
        "com.example.a",
        json!({"id": "fifo-report", "model": MODEL, "prompt": "p"}),
    );
    let first = bench.invoke_bytes(event.clone(), TIMEOUT).await;
    assert_eq!(error_type(&first), "Retryable.BedrockThrottled");
    let retry = bench.invoke_bytes(event, TIMEOUT).await;
    assert!(matches!(retry, Outcome::Response { .. }), "{retry:?}");

    let messages = services.receive_all(&queue.url).await.expect("receive");
    let statuses: Vec<String> = messages
        .iter()
        .map(|m| {
            serde_json::from_str::<Value>(&m.body).expect("a record")["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(statuses, ["failed", "succeeded"], "{messages:?}");
    assert_eq!(messages[1].deduplication_id.as_deref(), Some("fifo-report"));
    assert_ne!(messages[0].deduplication_id, messages[1].deduplication_id);
}

/// A sender who knows a finished job's id sends a broken job under it: the
/// failure is refused at once, and the success record stands (S3 conditional
/// writes), for single jobs and under a DynamoDB destination alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_record_never_overwrites_a_success_record() {
    let bench = Bench::start(&[]).await;
    let ok = bench
        .invoke_bytes(
            envelope(
                "6c1e0000-0000-4000-8000-00000000f601",
                "com.example.a",
                json!({"id": "victim", "model": MODEL, "prompt": "p"}),
            ),
            TIMEOUT,
        )
        .await;
    assert!(matches!(ok, Outcome::Response { .. }), "{ok:?}");
    for (n, detail) in [
        json!({"id": "victim", "model": "not a model id!", "prompt": "p"}),
        json!({"id": "victim", "model": MODEL, "prompt": "{{ nope }}"}),
        json!({"id": "victim", "model": MODEL, "documents": ["s3://elsewhere/x"], "prompt": "p"}),
    ]
    .into_iter()
    .enumerate()
    {
        let outcome = bench
            .invoke_bytes(
                envelope(
                    &format!("6c1e0000-0000-4000-8000-00000000f61{n}"),
                    "com.example.b",
                    detail,
                ),
                TIMEOUT,
            )
            .await;
        // Refused, or answered from the ledger: either way no success is lost.
        assert!(
            matches!(&outcome, Outcome::Error { .. })
                || matches!(&outcome, Outcome::Response { body } if body["already_done"] == true),
            "{outcome:?}"
        );
        let record = bench.record("victim").await;
        assert_eq!(record["status"], "succeeded", "case {n}: {record}");
    }
}

/// A batch item that failed for good (here a template error; a
/// `BedrockRejected` is the same) is settled: a redelivery of the event runs
/// nothing again and answers from what is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_that_failed_for_good_are_not_run_again_on_a_redelivery() {
    let bench = Bench::start(&[]).await;
    let event = envelope(
        "6c1e0000-0000-4000-8000-00000000f701",
        "com.example.a",
        json!({"id": "settled-batch", "model": MODEL, "prompt": "{{ item.text }}",
               "items": [{"text": "a"}, {"no_text": 1}, {"text": "c"}]}),
    );
    let first = bench.invoke_bytes(event.clone(), TIMEOUT).await;
    let Outcome::Response { body } = &first else {
        panic!("{first:?}")
    };
    assert_eq!(
        (body["succeeded"].clone(), body["failed"].clone()),
        (json!(2), json!(1)),
        "{body}"
    );
    let calls = bench.lab.bedrock.calls().len();
    assert_eq!(calls, 2);

    let again = bench.invoke_bytes(event, TIMEOUT).await;
    let Outcome::Response { body } = &again else {
        panic!("{again:?}")
    };
    assert_eq!(body["already_done"], 3, "{body}");
    assert_eq!(
        (body["succeeded"].clone(), body["failed"].clone()),
        (json!(2), json!(1)),
        "{body}"
    );
    assert_eq!(bench.lab.bedrock.calls().len(), calls, "no model call");
    let lines = bench
        .lab
        .batch_lines("settled-batch")
        .await
        .expect("s3")
        .expect("lines");
    assert_eq!(lines[1]["error"]["type"], "InvalidTemplate");
}

/// A job's own destination that refuses its records (here a queue that no
/// longer exists; a message SQS will not take is the same) does not leave
/// the job unseen: the error record lands at `RELAY_DESTINATION`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_refuses_the_record_leaves_it_at_the_fallback() {
    let gone = "arn:aws:sqs:us-east-1:222222222222:deleted-queue";
    let bench = Bench::start(&[("RELAY_ALLOWED_DESTINATIONS", gone)]).await;
    let outcome = bench
        .invoke_bytes(
            envelope(
                "6c1e0000-0000-4000-8000-00000000f801",
                "com.example.a",
                json!({"id": "to-nowhere", "model": MODEL, "prompt": "p", "destination": gone}),
            ),
            TIMEOUT,
        )
        .await;
    assert!(matches!(outcome, Outcome::Error { .. }), "{outcome:?}");
    let record = bench.record("to-nowhere").await;
    assert_eq!(record["status"], "failed");
    let message = record["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("deleted-queue"), "{message}");
}
