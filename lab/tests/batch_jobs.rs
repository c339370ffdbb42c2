//! The emulator's batch-inference control plane driven by the real
//! `aws-sdk-bedrock` client, signed with a RoleA session (account A) as the
//! relay would be: the staging bucket is account B's, shared with the batch
//! service role in account A by its bucket policy; jobs answer every record
//! once in a shuffled order, refuse what Bedrock refuses, end in each of
//! their end states with the output so far, and announce every status on
//! account A's default bus (forwarded to B's).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use aws_sdk_bedrock::error::ProvideErrorMetadata;
use aws_sdk_bedrock::operation::get_model_invocation_job::GetModelInvocationJobOutput;
use aws_sdk_bedrock::types::{
    ModelInvocationJobInputDataConfig, ModelInvocationJobOutputDataConfig,
    ModelInvocationJobS3InputDataConfig, ModelInvocationJobS3OutputDataConfig,
    ModelInvocationJobStatus, ModelInvocationType, S3InputFormat,
};
use lab::batch_jobs::{BatchKnobs, BusWatch, DETAIL_TYPE, SOURCE};
use lab::services::sdk_config;
use lab::{assume, Lab, ACCOUNT_A, ACCOUNT_B, EXTERNAL_ID};
use serde_json::{json, Value};

/// The relay's staging bucket, in account B.
const STAGING: &str = "relay-batch-staging";
/// A bucket in account B the service role's own policy covers but whose
/// bucket policy does not share it.
const UNSHARED: &str = "relay-unshared";
const MODEL: &str = "amazon.nova-lite-v1:0";
const OUTPUT_PREFIX: &str = "output/";

struct Batch {
    lab: Lab,
    bedrock: aws_sdk_bedrock::Client,
    role_a: Credentials,
    service_role: String,
}

/// The lab with the batch plane connected, the staging bucket shared with
/// the service role, RoleA allowed to pass it, and a Bedrock client signed
/// with a RoleA session.
async fn setup() -> Batch {
    let lab = Lab::start().await.expect("lab");
    lab.connect_batch_jobs();
    lab.create_bucket(STAGING).await.expect("staging bucket");
    let service_role = lab
        .create_batch_service_role(ACCOUNT_A, "BedrockBatchService", &[STAGING, UNSHARED])
        .await
        .expect("service role");
    lab.share_bucket(ACCOUNT_B, STAGING, &service_role)
        .await
        .expect("bucket policy");
    lab.allow_batch_jobs(&lab.role_a_arn, &service_role)
        .await
        .expect("pass role");
    let (_, role_a) = assume(
        &lab.moto,
        &lab.exec_credentials,
        &lab.role_a_arn,
        "relay-batch",
        Some(EXTERNAL_ID),
    )
    .await
    .expect("RoleA session");
    let bedrock = aws_sdk_bedrock::Client::new(&sdk_config(&lab.bedrock.endpoint(), &role_a).await);
    Batch {
        lab,
        bedrock,
        role_a,
        service_role,
    }
}

fn record_id(i: usize) -> String {
    format!("REC{i:08}")
}

fn question(i: usize) -> String {
    format!("what is item number {i}")
}

/// Writes `count` Converse records to `s3://STAGING/input/<name>/records.jsonl`
/// and returns the input URI.
async fn put_input(lab: &Lab, name: &str, count: usize) -> String {
    let mut body = String::new();
    for i in 0..count {
        let line = json!({
            "recordId": record_id(i),
            "modelInput": {
                "system": [{"text": "answer briefly"}],
                "messages": [{"role": "user", "content": [{"text": question(i)}]}],
                "inferenceConfig": {"maxTokens": 64}
            }
        });
        body.push_str(&line.to_string());
        body.push('\n');
    }
    let key = format!("input/{name}/records.jsonl");
    lab.put_object(STAGING, &key, body, "application/jsonl")
        .await
        .expect("input");
    format!("s3://{STAGING}/{key}")
}

fn input_config(uri: &str) -> ModelInvocationJobInputDataConfig {
    ModelInvocationJobInputDataConfig::S3InputDataConfig(
        ModelInvocationJobS3InputDataConfig::builder()
            .s3_uri(uri)
            .s3_input_format(S3InputFormat::Jsonl)
            .s3_bucket_owner(ACCOUNT_B)
            .build()
            .expect("input config"),
    )
}

fn output_config() -> ModelInvocationJobOutputDataConfig {
    ModelInvocationJobOutputDataConfig::S3OutputDataConfig(
        ModelInvocationJobS3OutputDataConfig::builder()
            .s3_uri(format!("s3://{STAGING}/{OUTPUT_PREFIX}"))
            .s3_bucket_owner(ACCOUNT_B)
            .build()
            .expect("output config"),
    )
}

/// A Converse job over `input_uri` with `role`.
fn create(
    batch: &Batch,
    name: &str,
    role: &str,
    input_uri: &str,
) -> aws_sdk_bedrock::operation::create_model_invocation_job::builders::CreateModelInvocationJobFluentBuilder
{
    batch
        .bedrock
        .create_model_invocation_job()
        .job_name(name)
        .role_arn(role)
        .model_id(MODEL)
        .model_invocation_type(ModelInvocationType::Converse)
        .input_data_config(input_config(input_uri))
        .output_data_config(output_config())
        .timeout_duration_in_hours(24)
}

async fn start_job(batch: &Batch, name: &str, records: usize) -> String {
    let input = put_input(&batch.lab, name, records).await;
    create(batch, name, &batch.service_role, &input)
        .send()
        .await
        .expect("job created")
        .job_arn
}

async fn get(batch: &Batch, job_arn: &str) -> GetModelInvocationJobOutput {
    batch
        .bedrock
        .get_model_invocation_job()
        .job_identifier(job_arn)
        .send()
        .await
        .expect("get job")
}

/// Polls GetModelInvocationJob until the job has ended.
async fn wait_for_end(batch: &Batch, job_arn: &str) -> GetModelInvocationJobOutput {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = get(batch, job_arn).await;
        let ended = matches!(
            job.status,
            Some(
                ModelInvocationJobStatus::Completed
                    | ModelInvocationJobStatus::PartiallyCompleted
                    | ModelInvocationJobStatus::Failed
                    | ModelInvocationJobStatus::Stopped
                    | ModelInvocationJobStatus::Expired
            )
        );
        if ended {
            return job;
        }
        assert!(Instant::now() < deadline, "job still {:?}", job.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn job_id(job_arn: &str) -> &str {
    job_arn.rsplit('/').next().expect("id")
}

/// The job's `.jsonl.out` lines (of its one input file) and its manifest.
async fn output(batch: &Batch, job_arn: &str) -> (Vec<Value>, Value) {
    let (mut files, manifest) = batch
        .lab
        .batch_output(ACCOUNT_B, STAGING, OUTPUT_PREFIX, job_id(job_arn))
        .await
        .expect("output");
    let lines = files.remove("records.jsonl.out").unwrap_or_default();
    assert!(
        files.is_empty(),
        "one output file per input file: {files:?}"
    );
    (lines, manifest.expect("manifest.json.out"))
}

fn ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["recordId"].as_str().expect("recordId").to_owned())
        .collect()
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn service_error<E: ProvideErrorMetadata>(error: E) -> (String, String) {
    (
        error.code().unwrap_or_default().to_owned(),
        error.message().unwrap_or_default().to_owned(),
    )
}

/// A Converse job over 250 records with a service role in account A ends
/// Completed: every record answered once, as the on-demand Converse would
/// answer it, in a shuffled order; the manifest and GetModelInvocationJob
/// count them, and each call is attributed to RoleA in account A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converse_job_answers_every_record_once_in_a_shuffled_order() {
    let batch = setup().await;
    let job_arn = start_job(&batch, "relay-completed", 250).await;
    assert!(
        job_arn.starts_with(&format!(
            "arn:aws:bedrock:us-east-1:{ACCOUNT_A}:model-invocation-job/"
        )),
        "{job_arn}"
    );
    assert_eq!(job_id(&job_arn).len(), 12);

    let job = wait_for_end(&batch, &job_arn).await;
    assert_eq!(job.status, Some(ModelInvocationJobStatus::Completed));
    assert_eq!(job.job_name.as_deref(), Some("relay-completed"));
    assert_eq!(job.model_id, MODEL);
    assert_eq!(job.role_arn, batch.service_role);
    assert_eq!(
        job.model_invocation_type,
        Some(ModelInvocationType::Converse)
    );
    assert_eq!(job.timeout_duration_in_hours, Some(24));
    assert_eq!(job.total_record_count, Some(250));
    assert_eq!(job.processed_record_count, Some(250));
    assert_eq!(job.success_record_count, Some(250));
    assert_eq!(job.error_record_count, Some(0));
    assert!(job.end_time.is_some() && job.last_modified_time.is_some());
    assert!(job.job_expiration_time.expect("expiration") > job.submit_time);
    assert!(job.vpc_config.is_none() && job.message.is_none());

    let (lines, manifest) = output(&batch, &job_arn).await;
    let answered = ids(&lines);
    let expected: Vec<String> = (0..250).map(record_id).collect();
    assert_ne!(answered, expected, "output order is not the input order");
    let unique: HashSet<&String> = answered.iter().collect();
    assert_eq!(answered.len(), 250);
    assert_eq!(unique.len(), 250, "every recordId answered once");
    let (mut input_tokens, mut output_tokens) = (0, 0);
    for line in &lines {
        let id = line["recordId"].as_str().expect("id");
        let i: usize = id[3..].parse().expect("number");
        assert_eq!(
            line["modelInput"]["messages"][0]["content"][0]["text"],
            question(i)
        );
        let answer = format!("Echo from {MODEL}: {}", question(i));
        let out = &line["modelOutput"];
        assert_eq!(out["output"]["message"]["content"][0]["text"], answer);
        assert_eq!(out["output"]["message"]["role"], "assistant");
        assert_eq!(out["stopReason"], "end_turn");
        let usage = &out["usage"];
        let asked = words(&question(i)) + words("answer briefly");
        assert_eq!(usage["inputTokens"], asked);
        assert_eq!(usage["outputTokens"], words(&answer));
        assert_eq!(usage["totalTokens"], asked + words(&answer));
        input_tokens += asked;
        output_tokens += words(&answer);
    }
    assert_eq!(
        manifest,
        json!({
            "totalRecordCount": 250, "processedRecordCount": 250,
            "successRecordCount": 250, "errorRecordCount": 0,
            "inputTokenCount": input_tokens, "outputTokenCount": output_tokens
        })
    );

    let listed = batch
        .bedrock
        .list_model_invocation_jobs()
        .status_equals(ModelInvocationJobStatus::Completed)
        .name_contains("completed")
        .send()
        .await
        .expect("list");
    let summaries = listed.invocation_job_summaries();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].job_arn, job_arn);
    assert_eq!(summaries[0].processed_record_count, Some(250));

    let calls = batch.lab.bedrock.calls();
    let operations: HashSet<&str> = calls.iter().map(|c| c.operation.as_str()).collect();
    assert!(
        operations.is_superset(&HashSet::from([
            "CreateModelInvocationJob",
            "GetModelInvocationJob",
            "ListModelInvocationJobs"
        ])),
        "{operations:?}"
    );
    for call in &calls {
        assert_eq!(call.account.as_deref(), Some(ACCOUNT_A), "{call:?}");
        assert_eq!(
            call.role_arn.as_deref(),
            Some(batch.lab.role_a_arn.as_str())
        );
        assert_eq!(
            call.access_key_id.as_deref(),
            Some(batch.role_a.access_key_id())
        );
        if call.operation != "ListModelInvocationJobs" {
            assert_eq!(call.model_id, MODEL, "{call:?}");
        }
    }
}

/// Creating a job twice with the same clientRequestToken and request makes
/// one job (the same ARN); the token with another request is a
/// ConflictException.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_client_request_token_makes_one_job() {
    let batch = setup().await;
    let input = put_input(&batch.lab, "relay-idempotent", 20).await;
    let token = "relay-batch-0001";
    let first = create(&batch, "relay-idempotent", &batch.service_role, &input)
        .client_request_token(token)
        .send()
        .await
        .expect("first")
        .job_arn;
    let second = create(&batch, "relay-idempotent", &batch.service_role, &input)
        .client_request_token(token)
        .send()
        .await
        .expect("second")
        .job_arn;
    assert_eq!(first, second);
    let listed = batch
        .bedrock
        .list_model_invocation_jobs()
        .send()
        .await
        .expect("list");
    assert_eq!(listed.invocation_job_summaries().len(), 1);
    assert_eq!(
        get(&batch, &first).await.client_request_token.as_deref(),
        Some(token)
    );

    let other = create(&batch, "relay-other-name", &batch.service_role, &input)
        .client_request_token(token)
        .send()
        .await
        .expect_err("same token, another request");
    let (code, message) = service_error(other.into_service_error());
    assert_eq!(code, "ConflictException", "{message}");
    assert_eq!(batch.lab.bedrock.batch_jobs().jobs().len(), 1);
    assert_eq!(
        wait_for_end(&batch, &first).await.status,
        Some(ModelInvocationJobStatus::Completed)
    );
}

/// A service role in another account than the caller's is refused at
/// create, as Bedrock refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_role_from_another_account_is_refused() {
    let batch = setup().await;
    let role_b = batch
        .lab
        .create_batch_service_role(ACCOUNT_B, "BedrockBatchService", &[STAGING])
        .await
        .expect("role in B");
    let input = put_input(&batch.lab, "relay-cross", 10).await;
    let error = create(&batch, "relay-cross", &role_b, &input)
        .send()
        .await
        .expect_err("refused");
    let (code, message) = service_error(error.into_service_error());
    assert_eq!(code, "ValidationException");
    assert!(
        message.contains("Cross-account pass role is not allowed"),
        "{message}"
    );
    assert!(batch.lab.bedrock.batch_jobs().jobs().is_empty());
    let call = batch.lab.bedrock.calls().pop().expect("recorded");
    assert_eq!(call.operation, "CreateModelInvocationJob");
    assert_eq!(call.status, 400);
    assert_eq!(call.error_type.as_deref(), Some("ValidationException"));
}

/// A role Bedrock may not assume, and a caller not allowed to pass the role,
/// are refused at create, naming the role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_bedrock_cannot_assume_or_the_caller_cannot_pass_is_refused() {
    let batch = setup().await;
    let input = put_input(&batch.lab, "relay-untrusted", 10).await;
    // RoleA trusts the execution role, not Bedrock.
    let error = create(&batch, "relay-untrusted", &batch.lab.role_a_arn, &input)
        .send()
        .await
        .expect_err("refused");
    let (code, message) = service_error(error.into_service_error());
    assert_eq!(code, "ValidationException");
    assert!(message.contains(&batch.lab.role_a_arn), "{message}");

    let missing = format!("arn:aws:iam::{ACCOUNT_A}:role/NoSuchRole");
    let error = create(&batch, "relay-missing", &missing, &input)
        .send()
        .await
        .expect_err("refused");
    let (code, message) = service_error(error.into_service_error());
    assert_eq!(code, "ValidationException");
    assert!(message.contains(&missing), "{message}");

    let other = batch
        .lab
        .create_batch_service_role(ACCOUNT_A, "NotPassable", &[STAGING])
        .await
        .expect("role");
    let error = create(&batch, "relay-no-pass", &other, &input)
        .send()
        .await
        .expect_err("refused");
    let (code, message) = service_error(error.into_service_error());
    assert_eq!(code, "AccessDeniedException");
    assert!(
        message.contains("iam:PassRole") && message.contains(&other),
        "{message}"
    );
}

/// A staging bucket whose policy does not let the service role read it (it
/// is another account's, so the role's own policy is not enough) fails the
/// job during Validating, with the reason; so does a missing bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_the_service_role_cannot_read_fails_the_job_in_validation() {
    let batch = setup().await;
    batch.lab.create_bucket(UNSHARED).await.expect("bucket");
    batch
        .lab
        .put_object(
            UNSHARED,
            "in.jsonl",
            r#"{"recordId":"a","modelInput":{"messages":[{"role":"user","content":[{"text":"hi"}]}]}}"#,
            "application/jsonl",
        )
        .await
        .expect("input");
    let job_arn = create(
        &batch,
        "relay-unshared",
        &batch.service_role,
        &format!("s3://{UNSHARED}/in.jsonl"),
    )
    .send()
    .await
    .expect("accepted: the read fails later")
    .job_arn;
    let job = wait_for_end(&batch, &job_arn).await;
    assert_eq!(job.status, Some(ModelInvocationJobStatus::Failed));
    let message = job.message.expect("why");
    assert!(
        message.contains("s3:GetObject") && message.contains("bucket policy"),
        "{message}"
    );
    assert_eq!(
        batch.lab.bedrock.batch_jobs().history(&job_arn),
        ["Submitted", "Validating", "Failed"]
    );

    let missing = create(
        &batch,
        "relay-no-bucket",
        &batch.service_role,
        "s3://relay-no-such-bucket/in.jsonl",
    )
    .send()
    .await
    .expect("accepted")
    .job_arn;
    let job = wait_for_end(&batch, &missing).await;
    assert_eq!(job.status, Some(ModelInvocationJobStatus::Failed));
    assert!(
        job.message
            .as_deref()
            .is_some_and(|m| m.contains("does not exist")),
        "{:?}",
        job.message
    );
}

/// Records that error get error lines and leave the job PartiallyCompleted;
/// fewer records than the minimum are refused at create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_errors_make_the_job_partially_completed() {
    let batch = setup().await;
    batch.lab.bedrock.batch_jobs().set_knobs(BatchKnobs {
        fail_every_nth: Some(10),
        fail_record_ids_containing: Some("REC0000003".into()),
        min_records: 100,
        ..BatchKnobs::default()
    });
    let input = put_input(&batch.lab, "relay-too-few", 99).await;
    let error = create(&batch, "relay-too-few", &batch.service_role, &input)
        .send()
        .await
        .expect_err("below the minimum");
    let (code, message) = service_error(error.into_service_error());
    assert_eq!(code, "ValidationException");
    assert!(message.contains("minimum"), "{message}");

    let job_arn = start_job(&batch, "relay-partial", 250).await;
    let job = wait_for_end(&batch, &job_arn).await;
    assert_eq!(
        job.status,
        Some(ModelInvocationJobStatus::PartiallyCompleted)
    );
    // Every 10th in input order (REC…09, REC…19, …) and REC00000030 to 39.
    let failing: HashSet<String> = (0..250)
        .filter(|i| (i + 1) % 10 == 0 || record_id(*i).contains("REC0000003"))
        .map(record_id)
        .collect();
    assert_eq!(failing.len(), 25 + 9);
    assert_eq!(job.error_record_count, Some(failing.len() as i64));
    assert_eq!(job.success_record_count, Some(250 - failing.len() as i64));

    let (lines, manifest) = output(&batch, &job_arn).await;
    assert_eq!(lines.len(), 250);
    for line in &lines {
        let id = line["recordId"].as_str().expect("id");
        if failing.contains(id) {
            assert_eq!(line["error"]["errorCode"], 400, "{line}");
            assert!(line["error"]["errorMessage"].is_string());
            assert!(line.get("modelOutput").is_none());
            assert!(line["modelInput"].is_object());
        } else {
            assert!(line["modelOutput"].is_object(), "{line}");
        }
    }
    assert_eq!(manifest["errorRecordCount"], failing.len());
    assert_eq!(manifest["successRecordCount"], 250 - failing.len());
    assert_eq!(manifest["processedRecordCount"], 250);
}

/// A job that expires ends Expired with the records answered until then,
/// in its output and its manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_job_keeps_its_partial_output() {
    let batch = setup().await;
    batch.lab.bedrock.batch_jobs().set_knobs(BatchKnobs {
        expire_after_records: Some(100),
        ..BatchKnobs::default()
    });
    let job_arn = start_job(&batch, "relay-expired", 250).await;
    let job = wait_for_end(&batch, &job_arn).await;
    assert_eq!(job.status, Some(ModelInvocationJobStatus::Expired));
    assert!(job.message.is_some());
    assert_eq!(job.processed_record_count, Some(100));
    assert_eq!(job.total_record_count, Some(250));
    let (lines, manifest) = output(&batch, &job_arn).await;
    assert_eq!(lines.len(), 100);
    assert_eq!(ids(&lines).iter().collect::<HashSet<_>>().len(), 100);
    assert_eq!(manifest["totalRecordCount"], 250);
    assert_eq!(manifest["processedRecordCount"], 100);
    assert_eq!(manifest["successRecordCount"], 100);
}

/// StopModelInvocationJob moves a running job to Stopping, then Stopped with
/// the records answered until then; a stopped job cannot be stopped again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_job_keeps_its_partial_output() {
    let batch = setup().await;
    batch.lab.bedrock.batch_jobs().set_knobs(BatchKnobs {
        records_per_second: 50.0,
        ..BatchKnobs::default()
    });
    let job_arn = start_job(&batch, "relay-stopped", 250).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&batch, &job_arn)
        .await
        .processed_record_count
        .unwrap_or(0)
        < 10
    {
        assert!(Instant::now() < deadline, "job never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    batch
        .bedrock
        .stop_model_invocation_job()
        .job_identifier(&job_arn)
        .send()
        .await
        .expect("stop");
    let job = wait_for_end(&batch, &job_arn).await;
    assert_eq!(job.status, Some(ModelInvocationJobStatus::Stopped));
    let processed = job.processed_record_count.expect("count") as usize;
    assert!((10..250).contains(&processed), "{processed}");
    let (lines, manifest) = output(&batch, &job_arn).await;
    assert_eq!(lines.len(), processed);
    assert_eq!(manifest["processedRecordCount"], processed);
    assert_eq!(manifest["totalRecordCount"], 250);
    let history = batch.lab.bedrock.batch_jobs().history(&job_arn);
    assert_eq!(
        history[history.len() - 3..],
        ["InProgress", "Stopping", "Stopped"]
    );

    let again = batch
        .bedrock
        .stop_model_invocation_job()
        .job_identifier(job_id(&job_arn))
        .send()
        .await
        .expect_err("already stopped");
    assert_eq!(
        service_error(again.into_service_error()).0,
        "ConflictException"
    );
}

/// Every status a job takes is announced on account A's default bus as an
/// `aws.bedrock` batch job state change, in order, and a rule in A forwards
/// the relay's jobs' events to account B's default bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_reach_account_a_and_are_forwarded_to_b() {
    let batch = setup().await;
    let pattern = json!({"source": [SOURCE], "detail-type": [DETAIL_TYPE]});
    let in_a: BusWatch = batch
        .lab
        .watch_bus(ACCOUNT_A, "default", &pattern, "batch-events-a")
        .await
        .expect("watch A");
    let in_b = batch
        .lab
        .watch_bus(ACCOUNT_B, "default", &pattern, "batch-events-b")
        .await
        .expect("watch B");
    batch
        .lab
        .forward_batch_events(
            ACCOUNT_A,
            &format!("arn:aws:events:us-east-1:{ACCOUNT_B}:event-bus/default"),
            Some("relay-"),
        )
        .await
        .expect("forwarding rule");

    let job_arn = start_job(&batch, "relay-events", 20).await;
    assert_eq!(
        wait_for_end(&batch, &job_arn).await.status,
        Some(ModelInvocationJobStatus::Completed)
    );
    let statuses = [
        "Submitted",
        "Validating",
        "Scheduled",
        "InProgress",
        "Completed",
    ];
    let all_in = |events: &[Value]| events.len() >= statuses.len();
    let timeout = Duration::from_secs(20);
    let a = in_a.collect_until(all_in, timeout).await.expect("A");
    let b = in_b.collect_until(all_in, timeout).await.expect("B");

    let status_of = |e: &Value| {
        e["detail"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    // Standard queues do not keep order: order by the plane's own record.
    let published: Vec<String> = batch
        .lab
        .bedrock
        .batch_jobs()
        .events()
        .iter()
        .map(|e| {
            assert!(e.delivered, "{e:?}");
            assert_eq!(e.account, ACCOUNT_A);
            e.status.clone()
        })
        .collect();
    assert_eq!(published, statuses);
    let mut seen_a: Vec<String> = a.iter().map(status_of).collect();
    let mut seen_b: Vec<String> = b.iter().map(status_of).collect();
    seen_a.sort();
    seen_b.sort();
    let mut expected: Vec<String> = statuses.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(seen_a, expected, "each status once on A's bus");
    assert_eq!(seen_b, expected, "each status forwarded to B's bus");

    let by_status: HashMap<String, &Value> = a.iter().map(|e| (status_of(e), e)).collect();
    let completed = by_status["Completed"];
    assert_eq!(completed["source"], SOURCE);
    assert_eq!(completed["detail-type"], DETAIL_TYPE);
    // moto's envelope for an SQS target leaves `account` out; the plane
    // put the event as account A (checked on its own record above).
    assert!(completed.get("account").is_none_or(|a| a == ACCOUNT_A));
    assert_eq!(completed["resources"], json!([job_arn]));
    let detail = &completed["detail"];
    assert_eq!(detail["batchJobArn"], job_arn);
    assert_eq!(detail["batchJobName"], "relay-events");
    assert_eq!(detail["batchModelId"], MODEL);
    assert_eq!(detail["accountId"], ACCOUNT_A);
    assert_eq!(detail["failureMessage"], "");
    assert!(detail["creationTime"].is_string());
    assert!(b.iter().all(|e| e["detail"]["batchJobArn"] == job_arn));
}
