//! End-to-end tests of the built function in the local two-account lab:
//! moto (STS, IAM, S3, SQS, EventBridge) as accounts A and B, the Bedrock
//! emulator, and the function binary driven through the Lambda Runtime API
//! with the files in `events/`.
//!
//! Needs the lab's Python tools: `scripts/setup` (the test command runs it).

use std::path::Path;
use std::time::Duration;

use lab::emulator::{Fault, Knobs};
use lab::runtime_api::{FunctionProcess, Outcome, RuntimeApi};
use lab::stub::FixedResponse;
use lab::{Lab, ACCOUNT_A, ACCOUNT_B};

mod common;
use common::{error_type, event_bytes, Bench, TIMEOUT};
use serde_json::{json, Value};

/// A job event runs Converse as RoleA in account A and leaves a complete record
/// in account B's bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_event_runs_as_role_a_and_lands_in_s3() {
    let bench = Bench::start(&[]).await;
    let outcome = bench.invoke("job-event.json").await;
    let Outcome::Response { body } = &outcome else {
        panic!(
            "expected success, got {outcome:?}\n{}",
            bench.function.logs().join("\n")
        );
    };
    let envelope_id = "6f2c1f5e-2b1d-4c8e-9a57-0d3c2b9e7a11";
    assert_eq!(body["status"], "succeeded");
    assert_eq!(
        body["record"],
        format!("s3://relay-results/results/{envelope_id}.json")
    );

    let record = bench.record(envelope_id).await;
    assert_eq!(record["job_id"], envelope_id);
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["shape"], "job-event");
    assert_eq!(record["event"]["id"], envelope_id);
    assert_eq!(record["event"]["source"], "com.example.reports");
    assert_eq!(record["event"]["detail-type"], "Bedrock Relay Job");
    assert_eq!(record["event"]["time"], "2026-11-28T09:15:00Z");
    assert_eq!(record["target"]["account"], ACCOUNT_A);
    assert_eq!(record["target"]["role_arn"], bench.lab.role_a_arn);
    assert_eq!(record["model"], "amazon.nova-lite-v1:0");
    assert_eq!(
        record["output"]["text"],
        "Echo from amazon.nova-lite-v1:0: Summarise this week's sales figures in three bullet points."
    );
    assert_eq!(record["output"]["stop_reason"], "end_turn");
    // The emulator counts words: 9 prompt + 6 system in; "Echo from <model>:" + 9 out.
    assert_eq!(
        record["usage"],
        json!({"input_tokens": 15, "output_tokens": 12, "total_tokens": 27,
               "cache_read_input_tokens": 0, "cache_write_input_tokens": 0})
    );
    assert!(record["latency"]["call_ms"].as_u64().is_some());
    assert!(record["started_at"]
        .as_str()
        .is_some_and(|t| t.starts_with("20")));
    assert!(record["finished_at"]
        .as_str()
        .is_some_and(|t| t >= record["started_at"].as_str().unwrap_or("")));
    assert_eq!(
        record["metadata"],
        json!({"team": "finance", "report": "weekly-sales"})
    );
    assert_eq!(record["error"], Value::Null);

    let calls = bench.lab.bedrock.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.operation, "Converse");
    assert_eq!(call.model_id, "amazon.nova-lite-v1:0");
    assert_eq!(
        call.account.as_deref(),
        Some(ACCOUNT_A),
        "signed in account A"
    );
    assert_eq!(
        call.role_arn.as_deref(),
        Some(bench.lab.role_a_arn.as_str()),
        "signed as RoleA"
    );
    assert!(
        call.principal_arn
            .as_deref()
            .is_some_and(|a| a.ends_with("/BedrockRelayTarget/bedrock-relay-bedrock-relay")),
        "session name identifies the function: {:?}",
        call.principal_arn
    );
    assert_eq!(
        call.request["system"],
        json!([{"text": "You are a concise financial analyst."}])
    );
    assert_eq!(call.request["inferenceConfig"]["maxTokens"], 256);
    let temperature = call.request["inferenceConfig"]["temperature"]
        .as_f64()
        .expect("temperature sent");
    assert!((temperature - 0.2).abs() < 1e-6, "{temperature}");

    let sessions = bench.lab.role_a_sessions().await.expect("sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        sessions[0].external_id.as_deref(),
        Some(lab::EXTERNAL_ID),
        "ExternalId sent"
    );
}

/// All three input shapes through one warm process: one AssumeRole in all,
/// every Bedrock call signed as RoleA, none with account-B credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shapes_warm_invocations_make_no_sts_calls() {
    let default_job = r#"{"prompt": "Write the nightly digest.", "metadata": {"kind": "nightly"}}"#;
    let bench = Bench::start(&[
        ("RELAY_DEFAULT_JOB", default_job),
        ("RELAY_DEFAULT_MODEL", "amazon.nova-micro-v1:0"),
    ])
    .await;

    for name in [
        "job-event.json",
        "messages-job-event.json",
        "scheduled-event.json",
        "scheduler-bare-job.json",
        "s3-object-created.json",
    ] {
        let outcome = bench.invoke(name).await;
        assert!(
            matches!(outcome, Outcome::Response { .. }),
            "{name}: {outcome:?}"
        );
    }
    // Warm repeats, each a new event (a redelivered one would not call the model).
    let mut event: Value = serde_json::from_slice(&event_bytes("job-event.json")).expect("json");
    for i in 0..3 {
        event["id"] = json!(format!("6f2c1f5e-2b1d-4c8e-9a57-00000000000{i}"));
        assert!(matches!(
            bench
                .invoke_bytes(event.to_string().into_bytes(), TIMEOUT)
                .await,
            Outcome::Response { .. }
        ));
    }

    let scheduled = bench.record("53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa").await;
    assert_eq!(scheduled["shape"], "default-job");
    assert_eq!(scheduled["event"]["detail-type"], "Scheduled Event");
    assert_eq!(
        scheduled["model"], "amazon.nova-micro-v1:0",
        "default model"
    );
    assert_eq!(scheduled["metadata"], json!({"kind": "nightly"}));
    assert_eq!(
        scheduled["output"]["text"],
        "Echo from amazon.nova-micro-v1:0: Write the nightly digest."
    );

    let bare = bench.record("nightly/2026-11-28").await;
    assert_eq!(bare["shape"], "bare-job");
    assert_eq!(bare["event"], Value::Null);
    assert_eq!(bare["job_id"], "nightly/2026-11-28");
    assert!(bare["request_id"]
        .as_str()
        .is_some_and(|r| r.starts_with("00000000-")));

    let convo = bench.record("tickets/T-1042").await;
    assert_eq!(convo["model"], "anthropic.claude-3-haiku-20240307-v1:0");
    assert_eq!(convo["output"]["stop_reason"], "end_turn");

    let calls = bench.lab.bedrock.calls();
    assert_eq!(calls.len(), 8);
    let messages_call = calls
        .iter()
        .find(|c| c.model_id == "anthropic.claude-3-haiku-20240307-v1:0")
        .expect("messages job called");
    assert_eq!(
        messages_call.request["messages"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(
        messages_call.request["inferenceConfig"]["stopSequences"],
        json!(["END"])
    );
    for call in &calls {
        assert_eq!(call.account.as_deref(), Some(ACCOUNT_A), "{call:?}");
        assert_eq!(
            call.role_arn.as_deref(),
            Some(bench.lab.role_a_arn.as_str())
        );
        assert_ne!(call.account.as_deref(), Some(ACCOUNT_B));
        assert_ne!(
            call.access_key_id.as_deref(),
            Some(bench.lab.exec_credentials.access_key_id())
        );
    }
    let sessions = bench.lab.role_a_sessions().await.expect("sessions");
    assert_eq!(
        sessions.len(),
        1,
        "one AssumeRole at the first event, none on warm ones"
    );
}

/// Bad events end with an error record naming the problem and a
/// non-retryable Lambda error, and never reach Bedrock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_leave_error_records_and_lambda_errors() {
    let bench = Bench::start(&[("RELAY_MAX_EVENT_BYTES", "4096")]).await;

    let outcome = bench.invoke("malformed-job-event.json").await;
    assert_eq!(error_type(&outcome), "NonRetryable.InvalidEvent");
    let record = bench.record("0b7e5d1c-8f3a-4e62-9c1d-77a2e4f6b9c0").await;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["event"]["source"], "com.example.reports");
    assert_eq!(record["error"]["type"], "InvalidEvent");
    assert_eq!(record["error"]["retryable"], false);
    let message = record["error"]["message"].as_str().expect("message");
    assert!(message.contains("detail"), "{message}");
    assert!(
        message.contains("max_tokens"),
        "names the unknown field: {message}"
    );

    let outcome = bench.invoke("not-json.txt").await;
    assert_eq!(error_type(&outcome), "NonRetryable.InvalidEvent");
    if let Outcome::Error { error_message, .. } = &outcome {
        assert!(error_message.contains("not valid JSON"), "{error_message}");
    }

    let outcome = bench.invoke("scheduled-event.json").await;
    assert_eq!(error_type(&outcome), "NonRetryable.NoDefaultJob");
    let record = bench.record("53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa").await;
    assert!(record["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("RELAY_DEFAULT_JOB")));

    let outcome = bench
        .invoke_bytes(
            json!({"prompt": "hi", "model": "a.b"})
                .to_string()
                .into_bytes(),
            TIMEOUT,
        )
        .await;
    assert!(matches!(outcome, Outcome::Response { .. }), "{outcome:?}");

    let outcome = bench
        .invoke_bytes(json!({"prompt": "hi"}).to_string().into_bytes(), TIMEOUT)
        .await;
    assert_eq!(
        error_type(&outcome),
        "NonRetryable.InvalidJob",
        "no model, no default"
    );

    let big = json!({"prompt": "x".repeat(5000), "model": "a.b"})
        .to_string()
        .into_bytes();
    let outcome = bench.invoke_bytes(big, TIMEOUT).await;
    assert_eq!(error_type(&outcome), "NonRetryable.EventTooLarge");

    // Every failed invocation left a record, keyed by envelope id or request id.
    let keys = bench.lab.record_keys().await.expect("list");
    assert_eq!(keys.len(), 6, "{keys:?}");
    assert_eq!(
        bench.lab.bedrock.calls().len(),
        1,
        "only the valid job reached Bedrock"
    );
}

/// Throttling and 5xx answers are retried inside the invocation with backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_are_retried_inside_the_invocation() {
    let bench = Bench::start(&[]).await;
    bench.lab.bedrock.add_fault(Fault {
        status: 429,
        error_type: "ThrottlingException".into(),
        count: 2,
        model: None,
        body_contains: None,
    });
    bench.lab.bedrock.add_fault(Fault {
        status: 503,
        error_type: "ServiceUnavailableException".into(),
        count: 1,
        model: None,
        body_contains: None,
    });
    let outcome = bench.invoke("job-event.json").await;
    assert!(matches!(outcome, Outcome::Response { .. }), "{outcome:?}");
    let calls = bench.lab.bedrock.calls();
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![429, 429, 503, 200]);
    // Backoff: the attempts are spread out, not fired back to back.
    let spread = calls[3].at_ms - calls[0].at_ms;
    assert!(spread >= 50, "attempts {spread} ms apart in all");
    let record = bench.record("6f2c1f5e-2b1d-4c8e-9a57-0d3c2b9e7a11").await;
    assert_eq!(record["status"], "succeeded");

    let metrics = emf_lines(&bench);
    assert_eq!(metrics.len(), 1, "one EMF line per job");
    let m = &metrics[0];
    assert_eq!(
        m["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "BedrockRelay"
    );
    assert_eq!(
        (m["target"].as_str(), m["model"].as_str()),
        (Some("default"), Some("amazon.nova-lite-v1:0"))
    );
    assert_eq!(
        (m["Retries"].as_u64(), m["Throttles"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(
        (m["InputTokens"].as_u64(), m["Errors"].as_u64()),
        (Some(15), Some(0))
    );
    // Properties that lead from the metric line to the job's logs and record.
    assert_eq!(m["job_id"], "6f2c1f5e-2b1d-4c8e-9a57-0d3c2b9e7a11");
    assert!(m["requestId"].is_string(), "{m}");
    assert_eq!(m["requestId"], record["request_id"]);
}

/// A lab with a second model account, `333333333333`: its RoleA ARN and the
/// `RELAY_TARGETS` naming it `research`.
async fn lab_with_research() -> (Lab, String, String) {
    let lab = Lab::start().await.expect("lab");
    let role = lab
        .add_target_account("333333333333")
        .await
        .expect("second account");
    let targets =
        json!({"research": {"role_arn": role, "external_id": lab::EXTERNAL_ID}}).to_string();
    (lab, role, targets)
}

/// The CloudWatch EMF lines the function wrote for jobs and items.
fn emf_lines(bench: &Bench) -> Vec<Value> {
    all_emf_lines(bench)
        .into_iter()
        .filter(|v| v.get("ColdStart").is_none())
        .collect()
}

/// Every CloudWatch EMF line the function wrote, `ColdStart` included.
fn all_emf_lines(bench: &Bench) -> Vec<Value> {
    bench
        .function
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v.get("_aws").is_some())
        .collect()
}

/// When retries run out the record says so and Lambda gets a retryable error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_past_the_attempts_is_a_retryable_failure() {
    let bench = Bench::start(&[("RELAY_MAX_ATTEMPTS", "2")]).await;
    bench.lab.bedrock.add_fault(Fault {
        status: 429,
        error_type: "ThrottlingException".into(),
        count: 10,
        model: None,
        body_contains: None,
    });
    let outcome = bench.invoke("job-event.json").await;
    assert_eq!(error_type(&outcome), "Retryable.BedrockThrottled");
    assert_eq!(bench.lab.bedrock.calls().len(), 2);
    let record = bench.record("6f2c1f5e-2b1d-4c8e-9a57-0d3c2b9e7a11").await;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["error"]["type"], "BedrockThrottled");
    assert_eq!(record["error"]["retryable"], true);
    let metrics = emf_lines(&bench);
    let m = metrics.last().expect("an EMF line");
    assert_eq!(
        (m["Errors"].as_u64(), m["error_type"].as_str()),
        (Some(1), Some("BedrockThrottled"))
    );
    assert_eq!(m["Throttles"].as_u64(), Some(2));
}

/// A model slower than the time left is cut off before the deadline, with
/// time kept to record the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_calls_never_run_past_the_deadline() {
    let bench = Bench::start(&[("RELAY_DEADLINE_RESERVE_MS", "1000")]).await;
    bench.lab.bedrock.set_knobs(Knobs {
        latency_ms: 10_000,
        ..Knobs::default()
    });
    let started = std::time::Instant::now();
    let outcome = bench
        .invoke_bytes(event_bytes("job-event.json"), Duration::from_secs(3))
        .await;
    let took = started.elapsed();
    assert_eq!(error_type(&outcome), "Retryable.DeadlineExceeded");
    assert!(
        took < Duration::from_secs(3),
        "answered within the deadline: {took:?}"
    );
    let record = bench.record("6f2c1f5e-2b1d-4c8e-9a57-0d3c2b9e7a11").await;
    assert_eq!(record["error"]["type"], "DeadlineExceeded");

    // With almost no time left, the model is not called at all.
    let before = bench.lab.bedrock.calls().len();
    let outcome = bench
        .invoke_bytes(event_bytes("job-event.json"), Duration::from_millis(900))
        .await;
    assert_eq!(error_type(&outcome), "Retryable.DeadlineExceeded");
    assert_eq!(bench.lab.bedrock.calls().len(), before);
}

/// Bedrock AccessDenied points at account A; STS AccessDenied at the trust
/// policy, ExternalId and the execution role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_says_which_side_to_fix() {
    let bench = Bench::start(&[]).await;
    bench.lab.bedrock.set_knobs(Knobs {
        model_access: Some(vec![ACCOUNT_B.into()]),
        ..Knobs::default()
    });
    let outcome = bench.invoke("job-event.json").await;
    assert_eq!(error_type(&outcome), "NonRetryable.BedrockAccessDenied");
    let record = bench.record("6f2c1f5e-2b1d-4c8e-9a57-0d3c2b9e7a11").await;
    let message = record["error"]["message"].as_str().expect("message");
    assert!(message.contains("fix it in account A"), "{message}");
    assert!(message.contains("model access"), "{message}");
    drop(bench);

    let sts = FixedResponse::denying_sts().await.expect("stub");
    let endpoint = sts.endpoint();
    let bench = Bench::start(&[("AWS_ENDPOINT_URL_STS", endpoint.as_str())]).await;
    let outcome = bench.invoke("job-event.json").await;
    assert_eq!(error_type(&outcome), "NonRetryable.AssumeRoleDenied");
    let record = bench.record("6f2c1f5e-2b1d-4c8e-9a57-0d3c2b9e7a11").await;
    let message = record["error"]["message"].as_str().expect("message");
    assert!(message.contains("trust policy"), "{message}");
    assert!(message.contains("RELAY_EXTERNAL_ID"), "{message}");
    assert!(
        message.contains("execution role must be allowed sts:AssumeRole"),
        "{message}"
    );
    assert!(sts.hits() >= 1);
    assert!(
        bench.lab.bedrock.calls().is_empty(),
        "no Bedrock call without RoleA"
    );
}

/// Invalid configuration stops the function at init, naming the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_fails_init_naming_the_variable() {
    let lab = Lab::start().await.expect("lab");
    for (var, value, expect) in [
        (
            "RELAY_SESSION_DURATION",
            "7200",
            "RELAY_SESSION_DURATION is invalid",
        ),
        ("RELAY_ROLE_ARN", "RoleA", "RELAY_ROLE_ARN is invalid"),
        (
            "AWS_BEARER_TOKEN_BEDROCK",
            "ABSKbGFi",
            "AWS_BEARER_TOKEN_BEDROCK is invalid",
        ),
        (
            "RELAY_DEFAULT_JOB",
            r#"{"promt": "x"}"#,
            "RELAY_DEFAULT_JOB is not a valid job",
        ),
    ] {
        let runtime = RuntimeApi::start().await.expect("runtime");
        let mut env = lab.function_env();
        env.push((var.to_owned(), value.to_owned()));
        let mut function = FunctionProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_bedrock-relay")),
            &runtime,
            &env,
        )
        .expect("spawn");
        let code = function.wait_exit(Duration::from_secs(10)).await;
        assert!(
            matches!(code, Some(Some(c)) if c != 0),
            "{var}: the process stops: {code:?}"
        );
        let logs = function.logs().join("\n");
        assert!(logs.contains(expect), "{var}: {logs}");
        if var == "AWS_BEARER_TOKEN_BEDROCK" {
            assert!(!logs.contains("ABSKbGFi"), "the token is not logged");
        }
    }
}

/// JSON logs carry request id, job id, target account and model, and never
/// credentials or prompt/output text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_structured_and_hold_no_secrets_or_text() {
    let (lab, research_role, targets) = lab_with_research().await;
    let bench = Bench::start_in(
        lab,
        &[
            ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
            ("AWS_LAMBDA_LOG_LEVEL", "debug"),
            ("RELAY_TARGETS", targets.as_str()),
        ],
    )
    .await;
    assert!(matches!(
        bench.invoke("job-event.json").await,
        Outcome::Response { .. }
    ));
    let research_job = json!({"id": "r-logs", "target": ["research", "default"], "model": "amazon.nova-lite-v1:0", "prompt": "secret plans"});
    assert!(matches!(
        bench
            .invoke_bytes(research_job.to_string().into_bytes(), TIMEOUT)
            .await,
        Outcome::Response { .. }
    ));
    assert!(matches!(
        bench.invoke("malformed-job-event.json").await,
        Outcome::Error { .. }
    ));
    let logs = bench.function.logs();
    assert!(!logs.is_empty());
    let parsed: Vec<Value> = logs
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let answered = parsed
        .iter()
        .find(|l| l["fields"]["message"] == "model answered")
        .expect("a 'model answered' line");
    let text = answered.to_string();
    for expected in [
        "00000000-0000-4000-8000-000000000001",
        "6f2c1f5e-2b1d-4c8e-9a57-0d3c2b9e7a11",
        ACCOUNT_A,
        "amazon.nova-lite-v1:0",
    ] {
        assert!(text.contains(expected), "{expected} missing from {text}");
    }
    let all = logs.join("\n");
    let mut secrets = vec![
        bench.lab.exec_credentials.secret_access_key().to_owned(),
        bench
            .lab
            .exec_credentials
            .session_token()
            .unwrap_or_default()
            .to_owned(),
    ];
    let sessions = bench.lab.moto.sessions().all().await.expect("sessions");
    assert!(
        sessions.iter().any(|s| s.role_arn == research_role),
        "the second target was assumed"
    );
    for session in sessions {
        secrets.push(session.secret_access_key);
        secrets.push(session.session_token);
    }
    for secret in secrets {
        assert!(!all.contains(&secret), "a credential leaked into the logs");
    }
    assert!(
        !all.contains("Summarise this week's sales"),
        "prompt text is not logged by default"
    );
    assert!(
        !all.contains("Echo from"),
        "output text is not logged by default"
    );
}

/// `AWS_LAMBDA_LOG_LEVEL` and `AWS_LAMBDA_LOG_FORMAT` are honoured: at `error`
/// a successful job writes no log line at all (its EMF metric line still goes
/// out: metrics are not logs), and the text format writes no JSON log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_and_format_come_from_the_lambda_settings() {
    // A function started with `env` that has answered `events/job-event.json`.
    async fn after_one_job(env: &[(&str, &str)]) -> Bench {
        let bench = Bench::start(env).await;
        let outcome = bench.invoke("job-event.json").await;
        assert!(matches!(outcome, Outcome::Response { .. }), "{outcome:?}");
        bench
    }

    let quiet = after_one_job(&[
        ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
        ("AWS_LAMBDA_LOG_LEVEL", "error"),
    ])
    .await;
    let logs = quiet.function.logs();
    assert!(
        logs.iter().all(|l| l.contains("\"_aws\"")),
        "only EMF lines at level error: {logs:#?}"
    );
    assert_eq!(
        emf_lines(&quiet).len(),
        1,
        "the job's metric line is still written"
    );

    let text = after_one_job(&[
        ("AWS_LAMBDA_LOG_FORMAT", "Text"),
        ("AWS_LAMBDA_LOG_LEVEL", "info"),
    ])
    .await;
    let logs = text.function.logs();
    let accepted = logs
        .iter()
        .find(|l| l.contains("job accepted"))
        .unwrap_or_else(|| panic!("an INFO line at level info: {logs:#?}"));
    assert!(
        serde_json::from_str::<Value>(accepted).is_err(),
        "text format, not JSON: {accepted}"
    );
    assert!(accepted.contains("INFO"), "{accepted}");
}

/// The `EventBridgeRule` pattern in `template.yaml` matches the job events in
/// `events/` and nothing else, by EventBridge's (moto's) own matcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_rule_pattern_matches_only_job_events() {
    let template_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("template.yaml");
    let text = std::fs::read_to_string(&template_path).expect("template.yaml");
    let template: serde_yaml::Value = serde_yaml::from_str(&text).expect("template parses");
    let pattern = &template["Resources"]["RelayFunction"]["Properties"]["Events"]["JobEvents"]
        ["Properties"]["Pattern"];
    assert!(!pattern.is_null(), "JobEvents pattern present");
    // With `JobSources` at its default (any source), the `source` entry is
    // `!If [HasJobSources, ..., AWS::NoValue]`: absent.
    let mut pattern = pattern.clone();
    if let Some(map) = pattern.as_mapping_mut() {
        map.retain(|_, v| !matches!(v, serde_yaml::Value::Tagged(t) if t.tag == "If"));
    }
    let pattern: Value = serde_json::to_value(&pattern).expect("pattern as JSON");

    let lab = Lab::start().await.expect("lab");
    let mut envelopes = Vec::new();
    for entry in
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("events")).expect("events/")
    {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let event: Value =
                serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
            if event.get("detail-type").is_some() {
                envelopes.push(event);
            }
        }
    }
    let expected: Vec<String> = envelopes
        .iter()
        .filter(|e| e["detail-type"] == "Bedrock Relay Job")
        .map(|e| e["detail"].to_string())
        .collect();
    assert!(expected.len() >= 2 && envelopes.len() > expected.len());
    let received = lab
        .events_matching(&pattern, &envelopes)
        .await
        .expect("round trip");
    let mut got: Vec<String> = received.iter().map(|e| e["detail"].to_string()).collect();
    let mut want = expected.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "the rule delivers exactly the job events");
    assert!(received
        .iter()
        .all(|e| e["detail-type"] == "Bedrock Relay Job"));
}

/// Jobs reach the account of the target alias they name, each signed by that
/// account's RoleA; an unknown alias, a raw role ARN or a model outside the
/// allowlist fails before any STS or Bedrock call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_route_jobs_by_alias_and_refuse_anything_else() {
    let (lab, research_role, targets) = lab_with_research().await;
    let allowed = json!({"*": ["amazon.nova-*"], "research": ["anthropic.*"]}).to_string();
    let bench = Bench::start_in(
        lab,
        &[
            ("RELAY_TARGETS", targets.as_str()),
            ("RELAY_ALLOWED_MODELS", allowed.as_str()),
        ],
    )
    .await;

    assert!(matches!(
        bench.invoke("job-event.json").await,
        Outcome::Response { .. }
    ));
    let research_job = json!({"id": "r-1", "target": "research", "model": "anthropic.claude-3-haiku-20240307-v1:0", "prompt": "hi"});
    let outcome = bench
        .invoke_bytes(research_job.to_string().into_bytes(), TIMEOUT)
        .await;
    assert!(matches!(outcome, Outcome::Response { .. }), "{outcome:?}");
    let record = bench.record("r-1").await;
    assert_eq!(record["target"]["alias"], "research");
    assert_eq!(record["target"]["account"], "333333333333");
    assert_eq!(record["target"]["role_arn"], research_role);
    let default_record = bench.record("6f2c1f5e-2b1d-4c8e-9a57-0d3c2b9e7a11").await;
    assert_eq!(default_record["target"]["alias"], "default");

    let calls = bench.lab.bedrock.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].account.as_deref(), Some(ACCOUNT_A));
    assert_eq!(calls[1].account.as_deref(), Some("333333333333"));
    assert_eq!(calls[1].role_arn.as_deref(), Some(research_role.as_str()));
    let sessions_before = moto_session_count(&bench).await;

    for (job, expected) in [
        (
            json!({"id": "x-1", "target": "prod", "model": "amazon.nova-lite-v1:0", "prompt": "hi"}),
            "NonRetryable.TargetNotAllowed",
        ),
        (
            json!({"id": "x-2", "target": research_role, "model": "anthropic.claude-3-haiku-20240307-v1:0", "prompt": "hi"}),
            "NonRetryable.TargetNotAllowed",
        ),
        (
            json!({"id": "x-3", "model": "meta.llama3-8b-instruct-v1:0", "prompt": "hi"}),
            "NonRetryable.ModelNotAllowed",
        ),
        (
            json!({"id": "x-4", "target": "research", "model": "cohere.command-r-v1:0", "prompt": "hi"}),
            "NonRetryable.ModelNotAllowed",
        ),
    ] {
        let outcome = bench
            .invoke_bytes(job.to_string().into_bytes(), TIMEOUT)
            .await;
        assert_eq!(error_type(&outcome), expected, "{job}");
        let id = job["id"].as_str().expect("id");
        let record = bench.record(id).await;
        assert_eq!(record["status"], "failed");
        assert_eq!(record["target"], Value::Null, "no target served it");
    }
    assert_eq!(
        bench.lab.bedrock.calls().len(),
        2,
        "no Bedrock call for refused jobs"
    );
    assert_eq!(
        moto_session_count(&bench).await,
        sessions_before,
        "no STS call for refused jobs"
    );
    assert_eq!(
        bench
            .lab
            .sessions_of(&research_role)
            .await
            .expect("sessions")
            .len(),
        1
    );
}

async fn moto_session_count(bench: &Bench) -> usize {
    bench
        .lab
        .moto
        .sessions()
        .all()
        .await
        .expect("sessions")
        .len()
}

/// Cross-region inference-profile IDs and ARNs reach Bedrock as given (ARNs
/// percent-encoded in the path), and allowlists can name them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_profile_ids_and_arns_are_accepted() {
    let allowed = "us.amazon.nova-*,arn:aws:bedrock:us-east-1:111111111111:inference-profile/*";
    let bench = Bench::start(&[("RELAY_ALLOWED_MODELS", allowed)]).await;
    let arn = "arn:aws:bedrock:us-east-1:111111111111:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0";
    for (id, model) in [
        ("profile-id", "us.amazon.nova-lite-v1:0"),
        ("profile-arn", arn),
    ] {
        let job = json!({"id": id, "model": model, "prompt": "hi"});
        let outcome = bench
            .invoke_bytes(job.to_string().into_bytes(), TIMEOUT)
            .await;
        assert!(
            matches!(outcome, Outcome::Response { .. }),
            "{model}: {outcome:?}"
        );
        assert_eq!(bench.record(id).await["model"], model);
    }
    let models: Vec<String> = bench
        .lab
        .bedrock
        .calls()
        .iter()
        .map(|c| c.model_id.clone())
        .collect();
    assert_eq!(
        models,
        vec!["us.amazon.nova-lite-v1:0".to_owned(), arn.to_owned()]
    );
}

/// Jobs naming a pool of targets spread over the accounts, and a throttled
/// account hands work to the other at once: with a per-account quota, a pool
/// of two serves twice what one account serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_spread_work_and_move_off_throttled_accounts() {
    const QUOTA: u32 = 4;
    const JOBS: usize = 8;
    async fn run(pool: bool) -> (usize, Vec<Option<String>>, Duration) {
        let lab = Lab::start().await.expect("lab");
        let research_role = lab
            .add_target_account("333333333333")
            .await
            .expect("second account");
        let targets =
            json!({"research": {"role_arn": research_role, "external_id": lab::EXTERNAL_ID}})
                .to_string();
        let bench = Bench::start_in(
            lab,
            &[
                ("RELAY_TARGETS", targets.as_str()),
                ("RELAY_MAX_ATTEMPTS", "2"),
            ],
        )
        .await;
        bench.lab.bedrock.set_knobs(Knobs {
            quota_rpm: Some(QUOTA),
            ..Knobs::default()
        });
        let target = if pool {
            json!(["default", "research"])
        } else {
            json!("default")
        };
        let started = std::time::Instant::now();
        let mut served = 0;
        for i in 0..JOBS {
            let job = json!({"id": format!("p-{i}"), "target": target, "model": "amazon.nova-lite-v1:0", "prompt": "hi"});
            if let Outcome::Response { .. } = bench
                .invoke_bytes(job.to_string().into_bytes(), TIMEOUT)
                .await
            {
                served += 1;
            }
        }
        let elapsed = started.elapsed();
        let accounts = bench
            .lab
            .bedrock
            .calls()
            .into_iter()
            .filter(|c| c.status == 200)
            .map(|c| c.account)
            .collect();
        (served, accounts, elapsed)
    }

    let (single, single_accounts, single_time) = run(false).await;
    let (pooled, pooled_accounts, pooled_time) = run(true).await;
    println!(
        "quota {QUOTA}/min per account, {JOBS} jobs: one account served {single} in {single_time:?}, \
         a pool of two served {pooled} in {pooled_time:?}; ratio {:.2}",
        pooled as f64 / single as f64
    );
    assert_eq!(
        single, QUOTA as usize,
        "one account serves its quota, the rest are throttled"
    );
    assert!(single_accounts
        .iter()
        .all(|a| a.as_deref() == Some(ACCOUNT_A)));
    assert_eq!(pooled, JOBS, "the pool serves every job");
    let in_a = pooled_accounts
        .iter()
        .filter(|a| a.as_deref() == Some(ACCOUNT_A))
        .count();
    let in_c = pooled_accounts
        .iter()
        .filter(|a| a.as_deref() == Some("333333333333"))
        .count();
    assert_eq!(
        (in_a, in_c),
        (QUOTA as usize, QUOTA as usize),
        "work spread over both accounts"
    );
}

/// A job with `invoke` goes to InvokeModel with its raw body; the answer is
/// kept as parsed JSON. Usage and model latency come from Bedrock's
/// `X-Amzn-Bedrock-*` headers, so a family whose body reports no usage is
/// still counted, in the record and in the EMF metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_jobs_send_raw_bodies_and_keep_the_answer() {
    let bench = Bench::start(&[]).await;
    bench.lab.bedrock.set_knobs(Knobs {
        latency_ms: 35,
        ..Knobs::default()
    });
    let outcome = bench.invoke("invoke-job-event.json").await;
    assert!(matches!(outcome, Outcome::Response { .. }), "{outcome:?}");
    let record = bench.record("3a9c7e52-41d0-4b8e-a6f1-9e2d4c6b8a10").await;
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["output"]["body"]["type"], "message");
    assert_eq!(
        record["output"]["text"],
        "Echo from anthropic.claude-3-haiku-20240307-v1:0: Name three uses of vector embeddings."
    );
    assert_eq!(record["usage"]["input_tokens"], 6);
    let calls = bench.lab.bedrock.calls();
    assert_eq!(calls[0].operation, "InvokeModel");
    assert_eq!(calls[0].account.as_deref(), Some(ACCOUNT_A));
    assert_eq!(calls[0].request["anthropic_version"], "bedrock-2023-05-31");

    let embed = json!({"id": "emb-1", "model": "amazon.titan-embed-text-v2:0", "invoke": {"body": {"inputText": "hello world"}}});
    let outcome = bench
        .invoke_bytes(embed.to_string().into_bytes(), TIMEOUT)
        .await;
    assert!(matches!(outcome, Outcome::Response { .. }), "{outcome:?}");
    let record = bench.record("emb-1").await;
    assert!(record["output"]["body"]["embedding"]
        .as_array()
        .is_some_and(|e| !e.is_empty()));
    assert_eq!(record["usage"]["input_tokens"], 2);

    // A family with no usage in its body: the headers still count it.
    let llama = json!({"id": "llama-1", "model": "meta.llama3-8b-instruct-v1:0", "invoke": {"body": {"prompt": "one two three four", "max_gen_len": 64}}});
    let outcome = bench
        .invoke_bytes(llama.to_string().into_bytes(), TIMEOUT)
        .await;
    assert!(matches!(outcome, Outcome::Response { .. }), "{outcome:?}");
    let record = bench.record("llama-1").await;
    assert_eq!(record["usage"]["input_tokens"], 4);
    assert!(record["usage"]["output_tokens"].as_u64() > Some(0));

    let metrics = emf_lines(&bench);
    assert_eq!(metrics.len(), 3, "one EMF line per job");
    // Powertools' ColdStart metric: once per execution environment, first.
    let all = all_emf_lines(&bench);
    let cold: Vec<&Value> = all
        .iter()
        .filter(|m| m.get("ColdStart").is_some())
        .collect();
    assert_eq!(cold.len(), 1, "one cold start for three invocations");
    assert_eq!(all[0]["ColdStart"], 1);
    assert_eq!(all[0]["function_name"], "bedrock-relay");
    assert_eq!(
        all[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        json!([["function_name"]])
    );
    for m in &metrics {
        assert_eq!(m["ModelLatency"], 35, "Bedrock's latency header: {m}");
        assert!(m["InputTokens"].as_u64() > Some(0), "{m}");
    }
    assert_eq!(metrics[2]["model"], "meta.llama3-8b-instruct-v1:0");
    assert_eq!(metrics[2]["InputTokens"], 4);
}
