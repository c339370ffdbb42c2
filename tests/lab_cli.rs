//! The binary as a command line (`doctor`, with and without batch jobs, and
//! `invoke`) in the local lab.

use std::path::Path;

use lab::{Lab, ACCOUNT_A};
use serde_json::{json, Value};

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

/// `invoke --json` with `events/job-event.json`.
async fn invoke_job_event(lab: &Lab) -> (i32, String) {
    let event = Path::new(env!("CARGO_MANIFEST_DIR")).join("events/job-event.json");
    run(
        lab,
        &[
            "invoke",
            "--event",
            event.to_str().expect("utf-8"),
            "--json",
        ],
        &[],
    )
    .await
}

/// `doctor --json --model amazon.nova-lite-v1:0` with `extra` environment.
async fn doctor(lab: &Lab, extra: &[(&str, &str)]) -> (i32, String) {
    run(
        lab,
        &["doctor", "--json", "--model", "amazon.nova-lite-v1:0"],
        extra,
    )
    .await
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
    let (code, stdout) = doctor(&lab, &[]).await;
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

/// With moto enforcing IAM, an execution role with no permissions can neither
/// assume RoleA nor write the destination; the doctor fails both links with the
/// fix, and the exit code says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_the_fix_for_each_broken_link() {
    let lab = Lab::start().await.expect("lab");
    lab.enforce_iam().await.expect("iam enforced");
    let (code, stdout) = doctor(&lab, &[]).await;
    assert_eq!(code, 1, "{stdout}");
    let checks = checks(&stdout);
    assert_eq!(
        check(&checks, "identity")["ok"],
        true,
        "GetCallerIdentity needs no permission"
    );
    let assume = check(&checks, "assume-role");
    assert_eq!(assume["ok"], false);
    let detail = assume["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("was denied") && detail.contains("trust policy"),
        "{detail}"
    );
    assert!(
        detail.contains("execution role must be allowed sts:AssumeRole"),
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

/// With moto enforcing IAM and the execution role holding exactly the policy
/// `template.yaml` gives it, every link passes: the template's least-privilege
/// policy is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_execution_role_policy_is_enough_for_the_whole_chain() {
    let lab = Lab::start().await.expect("lab");
    let policy = template_policy(
        &lab.role_a_arn,
        lab::BUCKET,
        lab::PREFIX,
        &["AssumeTargetRole", "WriteRecords"],
    );
    lab.grant_exec_role("from-template", &policy)
        .await
        .expect("granted");
    lab.enforce_iam().await.expect("iam enforced");
    let (code, stdout) = doctor(&lab, &[]).await;
    assert_eq!(code, 0, "{stdout}");
    let (code, stdout) = invoke_job_event(&lab).await;
    assert_eq!(code, 0, "{stdout}");

    // A prefix outside the grant is refused.
    let (code, stdout) = doctor(
        &lab,
        &[("RELAY_DESTINATION", "s3://relay-results/elsewhere/")],
    )
    .await;
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(check(&checks(&stdout), "destination")["ok"], false);
}

/// The statements `sids` of `template.yaml`'s execution-role policy, with the
/// template's parameters filled in.
fn template_policy(role_arn: &str, bucket: &str, prefix: &str, sids: &[&str]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("template.yaml");
    let template: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).expect("template")).expect("yaml");
    let statements = template["Resources"]["ExecutionRole"]["Properties"]["Policies"][0]
        ["PolicyDocument"]["Statement"]
        .as_sequence()
        .expect("statements")
        .clone();
    let params = [
        ("TargetRoleArn", role_arn),
        ("DestinationBucket", bucket),
        ("DestinationPrefix", prefix),
        ("AWS::Partition", "aws"),
    ];
    let chosen: Vec<Value> = statements
        .iter()
        .filter(|s| sids.iter().any(|sid| s["Sid"].as_str() == Some(sid)))
        .map(|s| {
            serde_json::json!({
                "Sid": s["Sid"].as_str(),
                "Effect": s["Effect"].as_str(),
                "Action": serde_json::to_value(&s["Action"]).expect("actions"),
                "Resource": resolve(&s["Resource"], &params),
            })
        })
        .collect();
    assert_eq!(
        chosen.len(),
        sids.len(),
        "statements {sids:?} in template.yaml"
    );
    serde_json::json!({"Version": "2012-10-17", "Statement": chosen})
}

/// Evaluates the intrinsics the policy statements use, with every condition
/// false (no optional parameters given).
fn resolve(value: &serde_yaml::Value, params: &[(&str, &str)]) -> Value {
    let serde_yaml::Value::Tagged(tagged) = value else {
        return serde_json::to_value(value).expect("plain value");
    };
    match tagged.tag.to_string().as_str() {
        "!Ref" => {
            let name = tagged.value.as_str().expect("parameter name");
            Value::String(
                params
                    .iter()
                    .find(|(k, _)| *k == name)
                    .expect("known parameter")
                    .1
                    .to_owned(),
            )
        }
        "!Sub" => {
            let mut text = tagged.value.as_str().expect("template").to_owned();
            for (key, val) in params {
                text = text.replace(&format!("${{{key}}}"), val);
            }
            Value::String(text)
        }
        "!If" => resolve(&tagged.value[2], params),
        other => panic!("unexpected {other} in a statement the test uses"),
    }
}

/// `invoke` runs an event file through the Lambda code path: same records,
/// same error types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_runs_one_event_through_the_lambda_path() {
    let lab = Lab::start().await.expect("lab");
    let (code, stdout) = invoke_job_event(&lab).await;
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

/// The staging bucket deploy/account-a.yaml would create, in account A.
const STAGING: &str = "relay-staging-a";

/// Batch jobs set up in account A as deploy/account-a.yaml sets them up (a
/// staging bucket unless `bucket` is false, a batch service role, RoleA
/// allowed its batch actions and to pass that role); returns the function's
/// batch-job environment, staging at `staging`.
async fn batch_jobs_env(lab: &Lab, bucket: bool, staging: &str) -> Vec<(String, String)> {
    lab.connect_batch_jobs();
    if bucket {
        let admin_a = lab.admin_of(ACCOUNT_A).await.expect("account A admin");
        lab::s3_client(lab.moto.endpoint(), &admin_a)
            .create_bucket()
            .bucket(STAGING)
            .send()
            .await
            .expect("staging bucket");
    }
    let role = lab
        .create_batch_service_role(ACCOUNT_A, "BedrockBatchService", &[STAGING])
        .await
        .expect("service role");
    lab.allow_batch_jobs(&lab.role_a_arn, &role)
        .await
        .expect("batch actions");
    [
        (
            "RELAY_WORK_QUEUE",
            "https://sqs.us-east-1.amazonaws.com/222222222222/relay-work".to_owned(),
        ),
        (
            "RELAY_WORK_STORE",
            format!("s3://{}/{}_batches/", lab::BUCKET, lab::PREFIX),
        ),
        ("RELAY_BATCH_STAGING", staging.to_owned()),
        ("RELAY_BATCH_ROLE_ARN", role),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// With batch jobs configured, the doctor checks their links for the
/// target: RoleA writes its probe under the staging input prefix and lists
/// the output prefix, the batch role is in account A, RoleA may list batch
/// jobs (nothing is created); iam:PassRole is an advisory (skipped) line
/// that names deploy/account-a.yaml's statement. The doctor passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_batch_job_links_when_batch_jobs_are_configured() {
    let lab = Lab::start().await.expect("lab");
    let env = batch_jobs_env(&lab, true, &format!("s3://{STAGING}/relay/")).await;
    let (code, stdout) = doctor(&lab, &pairs(&env)).await;
    assert_eq!(code, 0, "{stdout}");
    let checks = checks(&stdout);
    for name in ["batch-staging", "batch-role", "batch-api"] {
        let check = check(&checks, name);
        assert_eq!(check["ok"], true, "{name}: {stdout}");
        assert_eq!(check["target"], "default", "{name}: {stdout}");
        assert_eq!(check.get("skipped"), None, "{name}: {stdout}");
    }
    assert!(check(&checks, "batch-staging")["detail"]
        .as_str()
        .is_some_and(|d| d.contains(&format!("s3://{STAGING}/relay/input/_doctor/probe.json"))));
    let pass_role = check(&checks, "batch-pass-role");
    assert_eq!(
        (&pass_role["ok"], &pass_role["skipped"]),
        (&json!(true), &json!(true))
    );
    assert!(
        pass_role["detail"]
            .as_str()
            .is_some_and(|d| d.contains("PassTheBatchServiceRole")),
        "{stdout}"
    );

    let admin_a = lab.admin_of(ACCOUNT_A).await.expect("account A admin");
    let probe = lab::s3_client(lab.moto.endpoint(), &admin_a)
        .get_object()
        .bucket(STAGING)
        .key("relay/input/_doctor/probe.json")
        .send()
        .await;
    assert!(probe.is_ok(), "the probe object is in account A: {probe:?}");
    let lists: Vec<_> = lab
        .bedrock
        .calls()
        .into_iter()
        .filter(|c| c.operation == "ListModelInvocationJobs")
        .collect();
    assert_eq!(lists.len(), 1, "one probe of the batch-job API");
    assert_eq!(lists[0].account.as_deref(), Some(ACCOUNT_A), "as RoleA");
    assert!(
        lab.bedrock.batch_jobs().jobs().is_empty(),
        "nothing created"
    );

    // Human-readable: the advisory is a SKIP line, not a failure.
    let args = ["doctor", "--model", "amazon.nova-lite-v1:0"];
    let (code, stdout) = run(&lab, &args, &pairs(&env)).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("SKIP batch-pass-role [default]: skipped:")),
        "{stdout}"
    );
}

/// A staging location whose bucket does not exist fails the staging link
/// with the fix (the bucket to set or create) and the doctor with it; the
/// other batch-job links still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_a_staging_bucket_that_does_not_exist_with_the_fix() {
    let lab = Lab::start().await.expect("lab");
    let env = batch_jobs_env(&lab, false, "s3://relay-staging-missing/relay/").await;
    let (code, stdout) = doctor(&lab, &pairs(&env)).await;
    assert_eq!(code, 1, "{stdout}");
    let checks = checks(&stdout);
    let staging = check(&checks, "batch-staging");
    assert_eq!(staging["ok"], false, "{stdout}");
    let detail = staging["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("the staging bucket `relay-staging-missing` does not exist")
            && detail.contains("set RELAY_BATCH_STAGING")
            && detail.contains(ACCOUNT_A),
        "{detail}"
    );
    for name in ["batch-role", "batch-api", "destination"] {
        assert_eq!(check(&checks, name)["ok"], true, "{name}: {stdout}");
    }
}

/// With RELAY_GUARDRAILS the doctor applies each guardrail once with RoleA:
/// a guardrail account A has passes, one it lacks fails with the fix, and the
/// failure fails the doctor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_applies_each_configured_guardrail_with_role_a() {
    let lab = Lab::start().await.expect("lab starts");
    lab.bedrock.set_knobs(lab::emulator::Knobs {
        guardrails: vec![lab::emulator::LabGuardrail::new("gr1abc")],
        ..lab::emulator::Knobs::default()
    });
    let guardrails = r#"{"customer-facing": {"identifier": "gr1abc", "version": "1"}, "missing": {"identifier": "gr9zzz", "version": "1"}}"#;
    let (code, stdout) = doctor(&lab, &[("RELAY_GUARDRAILS", guardrails)]).await;
    let checks = checks(&stdout);
    let passed = check(&checks, "guardrail:customer-facing");
    assert_eq!(passed["ok"], true, "{passed}");
    let missing = check(&checks, "guardrail:missing");
    assert_eq!(missing["ok"], false);
    let detail = missing["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("does not exist in account {ACCOUNT_A}")),
        "{detail}"
    );
    assert_eq!(code, 1, "a failed check fails the doctor");
    let applied: Vec<_> = lab
        .bedrock
        .calls()
        .into_iter()
        .filter(|c| c.operation == "ApplyGuardrail")
        .collect();
    assert_eq!(applied.len(), 2);
    assert!(
        applied.iter().all(|c| c
            .role_arn
            .as_deref()
            .is_some_and(|r| r.ends_with("role/RoleA") || r.contains(ACCOUNT_A))),
        "applied as RoleA: {applied:?}"
    );
}

/// With a stated quota the doctor updates a probe schedule of its own in
/// the rate table (never a real one); a table that does not exist fails
/// with what to create; a quota stated without a table is a skip that says
/// the instances will pace alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_rate_table_of_a_stated_quota() {
    let lab = Lab::start().await.expect("lab starts");
    let services = lab::services::Services::of(&lab).await;
    let table = services
        .create_rate_table("relay-rates")
        .await
        .expect("rate table");
    let stated = [
        ("RELAY_REQUESTS_PER_MINUTE", "6000"),
        ("RELAY_RATE_TABLE", table.as_str()),
    ];
    let (code, stdout) = doctor(&lab, &stated).await;
    let report = checks(&stdout);
    let passed = check(&report, "rate-table");
    assert_eq!(passed["ok"], true, "{passed}");
    assert_eq!(code, 0, "{stdout}");
    let items = services.scan_table("relay-rates").await.expect("scan");
    let keys: Vec<&str> = items.iter().filter_map(|i| i["pk"].as_str()).collect();
    assert_eq!(keys.len(), 1, "{items:?}");
    assert!(keys[0].starts_with("doctor/"), "{keys:?}");

    let (code, stdout) = doctor(
        &lab,
        &[
            ("RELAY_REQUESTS_PER_MINUTE", "6000"),
            ("RELAY_RATE_TABLE", "relay-no-such-table"),
        ],
    )
    .await;
    let report = checks(&stdout);
    let failed = check(&report, "rate-table");
    assert_eq!(failed["ok"], false, "{failed}");
    let detail = failed["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("does not exist"), "{detail}");
    assert_eq!(code, 1);

    let (_, stdout) = doctor(&lab, &[("RELAY_REQUESTS_PER_MINUTE", "6000")]).await;
    let report = checks(&stdout);
    let skipped = check(&report, "rate-table");
    assert_eq!(skipped["skipped"], true, "{skipped}");
    assert!(
        skipped["detail"]
            .as_str()
            .is_some_and(|d| d.contains("RELAY_RATE_TABLE is unset")),
        "{skipped}"
    );
}
