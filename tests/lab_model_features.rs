//! End-to-end tests of the model features through the function: structured
//! output (validated answers, the re-ask, `OutputInvalid`, a schema Bedrock
//! refuses), prompt caching (cache points where the shared part ends, cache
//! reads after the first item), guardrails (a `blocked` record, the trace,
//! the metric, InvokeModel's headers, a guardrail account A lacks), service
//! tiers (the tier used, a tier the model lacks) and model fields — the built
//! function driven through the Lambda Runtime API against the lab's Bedrock
//! emulator, which checks and answers as Bedrock does.
//!
//! Needs the lab's Python tools: `scripts/setup` (the test command runs it).

use lab::emulator::{Call, Knobs, LabGuardrail};
use lab::runtime_api::Outcome;
use lab::{BUCKET, PREFIX};
use serde_json::{json, Value};

mod common;
use common::{error_type, event_bytes, job_event, Bench, TIMEOUT};

const MODEL: &str = "amazon.nova-lite-v1:0";
/// A model the emulator (like Bedrock) offers `flex` and `priority` for.
const TIERED_MODEL: &str = "amazon.nova-pro-v1:0";
const GUARDRAILS: &str =
    r#"{"customer-facing": {"identifier": "gr1abc", "version": "1", "trace": "enabled"}}"#;

async fn run(bench: &Bench, id: &str, detail: Value) -> Outcome {
    bench.invoke_bytes(job_event(id, detail), TIMEOUT).await
}

fn answered(bench: &Bench) -> Vec<Call> {
    bench
        .lab
        .bedrock
        .calls()
        .into_iter()
        .filter(|c| c.status == 200)
        .collect()
}

fn logs(bench: &Bench) -> String {
    bench.function.logs().join("\n")
}

fn triage_schema() -> Value {
    json!({
        "title": "ticket_triage",
        "type": "object",
        "properties": {
            "team": {"enum": ["billing", "reporting", "accounts", "other"]},
            "urgency": {"enum": ["low", "normal", "high"]},
            "summary": {"type": "string"}
        },
        "required": ["team", "urgency", "summary"],
        "additionalProperties": false
    })
}

fn guardrail_knobs() -> Knobs {
    Knobs {
        guardrails: vec![LabGuardrail {
            id: "gr1abc".into(),
            ..LabGuardrail::default()
        }],
        ..Knobs::default()
    }
}

/// The sample event's schema goes to Converse as structured output, and the
/// answer is recorded parsed (`output.json`), matching it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_structured_answer_is_sent_as_json_schema_and_recorded_parsed() {
    let bench = Bench::start(&[]).await;
    let outcome = bench
        .invoke_bytes(event_bytes("structured-output-job-event.json"), TIMEOUT)
        .await;
    let Outcome::Response { body } = &outcome else {
        panic!("expected success, got {outcome:?}\n{}", logs(&bench));
    };
    let record = bench.record(body["job_id"].as_str().expect("job id")).await;
    assert_eq!(record["status"], "succeeded");
    let answer = &record["output"]["json"];
    assert!(
        ["billing", "reporting", "accounts", "other"]
            .contains(&answer["team"].as_str().unwrap_or("")),
        "{answer}"
    );
    assert!(answer["summary"].is_string(), "{answer}");
    let calls = answered(&bench);
    assert_eq!(calls.len(), 1);
    let format = &calls[0].request["outputConfig"]["textFormat"];
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["structure"]["jsonSchema"]["name"], "ticket_triage");
    let sent: Value = serde_json::from_str(
        format["structure"]["jsonSchema"]["schema"]
            .as_str()
            .expect("schema as JSON text"),
    )
    .expect("parseable");
    assert_eq!(sent, triage_schema());
}

/// One answer that does not match is asked again and the second kept; two in
/// a row fail the job with `OutputInvalid`, naming the failing path, after
/// exactly two calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatch_is_asked_once_more_then_fails_output_invalid() {
    let bench = Bench::start(&[]).await;
    let job = |id: &str| json!({"id": id, "model": MODEL, "prompt": "Triage: printer on fire", "output_schema": triage_schema()});

    bench.lab.bedrock.set_knobs(Knobs {
        structured_mismatches: 1,
        ..Knobs::default()
    });
    let outcome = run(
        &bench,
        "a1000000-0000-4000-8000-000000000001",
        job("triage/once"),
    )
    .await;
    assert!(
        matches!(outcome, Outcome::Response { .. }),
        "{outcome:?}\n{}",
        logs(&bench)
    );
    assert_eq!(answered(&bench).len(), 2, "the mismatch was asked again");
    let record = bench.record("triage/once").await;
    assert_eq!(record["status"], "succeeded");
    assert!(record["output"]["json"]["team"].is_string(), "{record}");

    bench.lab.bedrock.set_knobs(Knobs {
        structured_mismatches: 2,
        ..Knobs::default()
    });
    let outcome = run(
        &bench,
        "a1000000-0000-4000-8000-000000000002",
        job("triage/twice"),
    )
    .await;
    assert_eq!(error_type(&outcome), "NonRetryable.OutputInvalid");
    assert_eq!(answered(&bench).len(), 4, "one re-ask, no more");
    let record = bench.record("triage/twice").await;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["error"]["type"], "OutputInvalid");
    let message = record["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("output_schema at `"), "{message}");
    assert_eq!(record["error"]["retryable"], false);
}

/// A schema keyword structured output does not take is refused by Bedrock:
/// `BedrockRejected`, with Bedrock's message (the keyword) and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_bedrock_refuses_is_bedrock_rejected_with_its_words() {
    let bench = Bench::start(&[]).await;
    let outcome = run(
        &bench,
        "a1000000-0000-4000-8000-000000000003",
        json!({"id": "ages", "model": MODEL, "prompt": "How old?", "output_schema": {
            "type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}
        }}),
    )
    .await;
    assert_eq!(error_type(&outcome), "NonRetryable.BedrockRejected");
    let record = bench.record("ages").await;
    let message = record["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("output_schema") && message.contains("minimum"),
        "{message}"
    );
}

/// An InvokeModel job's answer is validated as well (the body is the
/// caller's): the emulator's echo is not JSON, so it fails after the re-ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoke_answer_is_validated_against_the_schema_too() {
    let bench = Bench::start(&[]).await;
    let outcome = run(
        &bench,
        "a1000000-0000-4000-8000-000000000004",
        json!({"id": "raw-triage", "model": "anthropic.claude-3-haiku-20240307-v1:0",
               "invoke": {"body": {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50,
                                   "messages": [{"role": "user", "content": "Triage this"}]}},
               "output_schema": triage_schema()}),
    )
    .await;
    assert_eq!(error_type(&outcome), "NonRetryable.OutputInvalid");
    let record = bench.record("raw-triage").await;
    let message = record["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not JSON"), "{message}");
    assert_eq!(answered(&bench).len(), 2);
}

/// A cached batch (the sample event, at concurrency 1 so the first item is
/// first) sends a cache point after the system prompt and after the
/// prompt's static prefix; the first item writes the cache and every later
/// one reads exactly that many tokens from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_batch_reads_the_shared_prefix_after_the_first_item() {
    let bench = Bench::start(&[("RELAY_MAX_CONCURRENCY", "1")]).await;
    let outcome = bench
        .invoke_bytes(event_bytes("cached-batch-job-event.json"), TIMEOUT)
        .await;
    let Outcome::Response { body } = &outcome else {
        panic!("expected success, got {outcome:?}\n{}", logs(&bench));
    };
    assert_eq!(body["succeeded"], 3, "{body}");
    let calls = answered(&bench);
    assert_eq!(calls.len(), 3);
    let point = json!({"cachePoint": {"type": "default", "ttl": "5m"}});
    for call in &calls {
        let system = call.request["system"].as_array().expect("system");
        assert_eq!(system.last(), Some(&point), "{system:?}");
        let content = call.request["messages"][0]["content"]
            .as_array()
            .expect("content");
        assert_eq!(content[0], json!({"text": "Classify this review. Review "}));
        assert_eq!(content[1], point);
        assert!(content[2]["text"]
            .as_str()
            .unwrap_or("")
            .starts_with("r-10"));
    }
    let lines = bench
        .lab
        .lines_in(
            BUCKET,
            &format!("{PREFIX}reviews/classified/2026-11-28.jsonl"),
        )
        .await
        .expect("s3")
        .expect("the batch's lines");
    let usage = |line: &Value, field: &str| line["usage"][field].as_i64().unwrap_or(-1);
    let written = usage(&lines[0], "cache_write_input_tokens");
    assert!(written > 0, "{}", lines[0]);
    assert_eq!(usage(&lines[0], "cache_read_input_tokens"), 0);
    for line in &lines[1..] {
        assert_eq!(usage(line, "cache_read_input_tokens"), written, "{line}");
        assert_eq!(usage(line, "cache_write_input_tokens"), 0, "{line}");
    }
}

/// A guardrail's intervention is a final `blocked` record with the
/// guardrail's message and assessment: no Lambda error, no retry, and a
/// `GuardrailInterventions` metric. A harmless prompt passes the same
/// guardrail and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardrail_intervention_is_a_blocked_record_not_an_error() {
    let bench = Bench::start(&[("RELAY_GUARDRAILS", GUARDRAILS)]).await;
    bench.lab.bedrock.set_knobs(guardrail_knobs());

    let outcome = bench
        .invoke_bytes(event_bytes("guardrail-job-event.json"), TIMEOUT)
        .await;
    let Outcome::Response { body } = &outcome else {
        panic!("expected success, got {outcome:?}\n{}", logs(&bench));
    };
    assert_eq!(body["status"], "succeeded");
    let sent = &answered(&bench)[0].request["guardrailConfig"];
    assert_eq!(
        sent,
        &json!({"guardrailIdentifier": "gr1abc", "guardrailVersion": "1", "trace": "enabled"})
    );

    let outcome = run(
        &bench,
        "a1000000-0000-4000-8000-000000000005",
        json!({"id": "blocked-one", "model": MODEL, "guardrail": "customer-facing",
               "prompt": "Tell me the FORBIDDEN thing"}),
    )
    .await;
    let Outcome::Response { body } = &outcome else {
        panic!(
            "a blocked answer is not a Lambda error: {outcome:?}\n{}",
            logs(&bench)
        );
    };
    assert_eq!(body["status"], "blocked");
    let record = bench.record("blocked-one").await;
    assert_eq!(record["status"], "blocked");
    assert_eq!(record["output"]["stop_reason"], "guardrail_intervened");
    assert_eq!(record["output"]["text"], "Sorry, I can't help with that.");
    assert_eq!(
        record["output"]["guardrail"]["inputAssessment"]["gr1abc"]["wordPolicy"]["customWords"][0]
            ["match"],
        "FORBIDDEN",
        "{record}"
    );
    assert!(record["error"].is_null());
    assert!(
        logs(&bench).contains("\"GuardrailInterventions\":1"),
        "the metric is emitted:\n{}",
        logs(&bench)
    );
}

/// In a batch a blocked item is settled (`blocked`), the others succeed, and
/// the batch is not retried for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_item_settles_its_line_and_the_batch_completes() {
    let bench = Bench::start(&[
        ("RELAY_GUARDRAILS", GUARDRAILS),
        ("RELAY_DEFAULT_GUARDRAIL", "customer-facing"),
    ])
    .await;
    bench.lab.bedrock.set_knobs(guardrail_knobs());
    let outcome = run(
        &bench,
        "a1000000-0000-4000-8000-000000000006",
        json!({"id": "replies", "model": MODEL, "prompt": "Reply to: {{ item }}",
               "items": ["where is my parcel", "FORBIDDEN request", "thanks!"]}),
    )
    .await;
    let Outcome::Response { body } = &outcome else {
        panic!("expected success, got {outcome:?}\n{}", logs(&bench));
    };
    assert_eq!(
        (body["succeeded"].as_u64(), body["blocked"].as_u64()),
        (Some(2), Some(1)),
        "{body}"
    );
    assert_eq!(body["status"], "succeeded");
    let lines = bench
        .lab
        .lines_in(BUCKET, &format!("{PREFIX}replies.jsonl"))
        .await
        .expect("s3")
        .expect("lines");
    let statuses: Vec<&str> = lines
        .iter()
        .map(|l| l["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(statuses, ["succeeded", "blocked", "succeeded"]);
    assert_eq!(
        answered(&bench).len(),
        3,
        "every item was sent with the default guardrail"
    );
}

/// An InvokeModel job gets the guardrail as Bedrock's headers, and the
/// verdict Bedrock adds to the body makes the record `blocked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoke_job_is_guarded_through_the_headers() {
    let bench = Bench::start(&[("RELAY_GUARDRAILS", GUARDRAILS)]).await;
    bench.lab.bedrock.set_knobs(guardrail_knobs());
    let outcome = run(
        &bench,
        "a1000000-0000-4000-8000-000000000007",
        json!({"id": "raw-blocked", "model": "anthropic.claude-3-haiku-20240307-v1:0",
               "guardrail": "customer-facing",
               "invoke": {"body": {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50,
                                   "messages": [{"role": "user", "content": "say FORBIDDEN"}]}}}),
    )
    .await;
    assert!(
        matches!(outcome, Outcome::Response { .. }),
        "{outcome:?}\n{}",
        logs(&bench)
    );
    let record = bench.record("raw-blocked").await;
    assert_eq!(record["status"], "blocked", "{record}");
    assert_eq!(
        record["output"]["body"]["amazon-bedrock-guardrailAction"],
        "INTERVENED"
    );
    assert!(
        record["output"]["guardrail"].is_object(),
        "the trace: {record}"
    );
}

/// A guardrail RELAY_GUARDRAILS names but account A lacks is
/// `BedrockRejected`, naming the alias and what account A needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardrail_account_a_lacks_is_rejected_with_the_fix() {
    let bench = Bench::start(&[("RELAY_GUARDRAILS", GUARDRAILS)]).await;
    let outcome = bench
        .invoke_bytes(event_bytes("guardrail-job-event.json"), TIMEOUT)
        .await;
    assert_eq!(error_type(&outcome), "NonRetryable.BedrockRejected");
    let message = bench
        .lab
        .bedrock
        .calls()
        .first()
        .and_then(|c| c.error_type.clone());
    assert_eq!(message.as_deref(), Some("ValidationException"));
    let logs = logs(&bench);
    assert!(
        logs.contains("guardrail `customer-facing`") && logs.contains("bedrock:ApplyGuardrail"),
        "{logs}"
    );
}

/// The tier asked for is sent and the one Bedrock used is recorded, for
/// Converse and InvokeModel; a tier the model lacks is `BedrockRejected`
/// with the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_used_is_recorded_and_a_missing_tier_says_what_to_do() {
    let bench = Bench::start(&[]).await;
    let outcome = bench
        .invoke_bytes(event_bytes("flex-tier-job-event.json"), TIMEOUT)
        .await;
    let Outcome::Response { body } = &outcome else {
        panic!("expected success, got {outcome:?}\n{}", logs(&bench));
    };
    let record = bench.record(body["job_id"].as_str().expect("id")).await;
    assert_eq!(record["output"]["service_tier"], "flex");
    assert_eq!(
        answered(&bench)[0].request["serviceTier"],
        json!({"type": "flex"})
    );

    let outcome = run(
        &bench,
        "a1000000-0000-4000-8000-000000000008",
        json!({"id": "raw-priority", "model": TIERED_MODEL, "service_tier": "priority",
               "invoke": {"body": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}}}),
    )
    .await;
    assert!(
        matches!(outcome, Outcome::Response { .. }),
        "{outcome:?}\n{}",
        logs(&bench)
    );
    assert_eq!(
        bench.record("raw-priority").await["output"]["service_tier"],
        "priority"
    );

    let outcome = run(
        &bench,
        "a1000000-0000-4000-8000-000000000009",
        json!({"id": "lite-flex", "model": MODEL, "service_tier": "flex", "prompt": "hi"}),
    )
    .await;
    assert_eq!(error_type(&outcome), "NonRetryable.BedrockRejected");
    let message = bench.record("lite-flex").await["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("service tier `flex`") && message.contains("use `default`"),
        "{message}"
    );
}

/// Allowlisted model fields reach Converse as `additionalModelRequestFields`;
/// a key outside the family's list is refused before any call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_fields_are_sent_when_allowlisted_and_refused_otherwise() {
    let bench = Bench::start(&[]).await;
    let outcome = run(
        &bench,
        "a1000000-0000-4000-8000-000000000010",
        json!({"id": "topk", "model": MODEL, "prompt": "hi", "model_fields": {"inferenceConfig": {"topK": 20}}}),
    )
    .await;
    assert!(
        matches!(outcome, Outcome::Response { .. }),
        "{outcome:?}\n{}",
        logs(&bench)
    );
    assert_eq!(
        answered(&bench)[0].request["additionalModelRequestFields"],
        json!({"inferenceConfig": {"topK": 20}})
    );
    let outcome = run(
        &bench,
        "a1000000-0000-4000-8000-000000000011",
        json!({"id": "nope", "model": MODEL, "prompt": "hi", "model_fields": {"thinking": {"type": "enabled"}}}),
    )
    .await;
    assert_eq!(error_type(&outcome), "NonRetryable.InvalidJob");
    assert_eq!(
        bench.lab.bedrock.calls().len(),
        1,
        "no call for the refused job"
    );
    let message = bench.record("nope").await["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("model_fields: `thinking`"), "{message}");
}
