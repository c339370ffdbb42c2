//! The binary as a command line (`doctor`, `invoke`) in the local lab.

use std::path::Path;

use lab::stub::FixedResponse;
use lab::{Lab, ACCOUNT_A};
use serde_json::Value;

/// Runs the built binary with `args` and the lab's function environment plus
/// `extra`; returns the exit code and stdout.
async fn run(lab: &Lab, args: &[&str], extra: &[(&str, &str)]) -> (i32, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_bedrock-relay"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_REGION", lab::moto::REGION)
        .envs(lab.function_env())
        .envs(extra.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args);
    let output = command.output().await.expect("binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let code = output.status.code().unwrap_or(-1);
    if std::env::var_os("LAB_ECHO_LOGS").is_some() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    }
    (code, stdout)
}

fn checks(stdout: &str) -> Vec<Value> {
    let report: Value =
        serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    report["checks"].as_array().cloned().unwrap_or_default()
}

fn check<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no `{name}` check in {checks:?}"))
}

/// In a healthy lab every link passes, the model is asked for one token as
/// RoleA, and the destination takes a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_every_link_of_a_healthy_chain() {
    let lab = Lab::start().await.expect("lab");
    let (code, stdout) = run(
        &lab,
        &["doctor", "--json", "--model", "amazon.nova-lite-v1:0"],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{stdout}");
    let checks = checks(&stdout);
    for name in [
        "identity",
        "assume-role",
        "identity-in-target",
        "model",
        "destination",
    ] {
        assert_eq!(check(&checks, name)["ok"], true, "{name}: {stdout}");
    }
    assert!(check(&checks, "identity")["detail"]
        .as_str()
        .is_some_and(|d| d.contains("222222222222")));
    assert!(check(&checks, "identity-in-target")["detail"]
        .as_str()
        .is_some_and(|d| d.contains(ACCOUNT_A)));
    let calls = lab.bedrock.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].account.as_deref(), Some(ACCOUNT_A));
    assert_eq!(calls[0].request["inferenceConfig"]["maxTokens"], 1);
    assert!(lab
        .record_keys()
        .await
        .expect("list")
        .iter()
        .any(|k| k == "results/_doctor/probe.json"));

    // Human-readable output, same verdicts.
    let (code, stdout) = run(&lab, &["doctor", "--model", "amazon.nova-lite-v1:0"], &[]).await;
    assert_eq!(code, 0);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("PASS ")).count(),
        5,
        "{stdout}"
    );
}

/// A role that may not be assumed and a destination that refuses writes each
/// fail with the fix, and the exit code says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_the_fix_for_each_broken_link() {
    let lab = Lab::start().await.expect("lab");
    let sts = FixedResponse::denying_sts().await.expect("sts stub");
    let s3 = FixedResponse::start(
        403,
        "application/xml",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
    )
    .await
    .expect("s3 stub");
    let (sts_url, s3_url) = (sts.endpoint(), s3.endpoint());
    let (code, stdout) = run(
        &lab,
        &["doctor", "--json", "--model", "amazon.nova-lite-v1:0"],
        &[
            ("AWS_ENDPOINT_URL_STS", sts_url.as_str()),
            ("AWS_ENDPOINT_URL_S3", s3_url.as_str()),
        ],
    )
    .await;
    assert_eq!(code, 1, "{stdout}");
    let checks = checks(&stdout);
    let assume = check(&checks, "assume-role");
    assert_eq!(assume["ok"], false);
    let detail = assume["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("trust policy") && detail.contains("sts:AssumeRole"),
        "{detail}"
    );
    let destination = check(&checks, "destination");
    assert_eq!(destination["ok"], false);
    let detail = destination["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(
            "grant the execution role s3:PutObject on arn:aws:s3:::relay-results/results/*"
        ),
        "{detail}"
    );
    assert!(lab.bedrock.calls().is_empty());
}

/// `invoke` runs an event file through the Lambda code path: same records,
/// same error types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_runs_one_event_through_the_lambda_path() {
    let lab = Lab::start().await.expect("lab");
    let event = Path::new(env!("CARGO_MANIFEST_DIR")).join("events/job-event.json");
    let (code, stdout) = run(
        &lab,
        &[
            "invoke",
            "--event",
            event.to_str().expect("utf-8"),
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{stdout}");
    let answer: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(answer["status"], "succeeded");
    let record = lab
        .record("6f2c1f5e-2b1d-4c8e-9a57-0d3c2b9e7a11")
        .await
        .expect("s3")
        .expect("record");
    assert_eq!(record["target"]["account"], ACCOUNT_A);
    assert_eq!(lab.bedrock.calls()[0].account.as_deref(), Some(ACCOUNT_A));

    let (code, stdout) = run(
        &lab,
        &[
            "invoke",
            "--event",
            "events/malformed-job-event.json",
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{stdout}");
    let answer: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(answer["error_type"], "NonRetryable.InvalidEvent");

    let (code, _) = run(&lab, &["invoke"], &[]).await;
    assert_eq!(code, 2, "usage error");
    let (code, _) = run(
        &lab,
        &["invoke", "--event", "events/job-event.json"],
        &[("RELAY_SESSION_DURATION", "7200")],
    )
    .await;
    assert_eq!(code, 2, "configuration error");
}
