//! Batches that run as Bedrock batch inference jobs in account A, end to end
//! in the lab: the function (in account B) stages the records in account A's
//! staging bucket with RoleA, submits the job, learns its outcome from the
//! check schedule or from Bedrock's state-change event, and delivers the
//! results in input order to account B's destination, as an on-demand batch
//! would — with what Bedrock did not answer run on-demand.
//!
//! Needs the lab's Python tools: `scripts/setup` (the test command runs it).

use std::path::Path;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use lab::batch_jobs::{BatchKnobs, DETAIL_TYPE, SOURCE};
use lab::esm::{self, Mapping};
use lab::runtime_api::{FunctionProcess, Outcome, RuntimeApi};
use lab::services::{sdk_config, LabQueue, Services};
use lab::{Lab, ACCOUNT_A, ACCOUNT_B, BUCKET, PREFIX};
use serde_json::{json, Value};

mod common;
use common::answer;

const MODEL: &str = "amazon.nova-lite-v1:0";
const INPUTS: &str = "relay-inputs";
/// The staging bucket, in account A.
const STAGING: &str = "relay-staging-a";
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The lab with batch jobs set up as deploy/account-a.yaml sets them up (a
/// staging bucket and a batch service role in account A, RoleA allowed to
/// pass it), a work queue and store in account B, and `instances` function
/// processes.
struct Batches {
    lab: Lab,
    sqs: aws_sdk_sqs::Client,
    work: LabQueue,
    runtimes: Vec<RuntimeApi>,
    functions: Vec<FunctionProcess>,
}

impl Batches {
    async fn start(instances: usize, knobs: BatchKnobs) -> Self {
        Self::start_with(instances, knobs, &[]).await
    }

    /// [`Self::start`] with more function settings.
    async fn start_with(instances: usize, knobs: BatchKnobs, extra_env: &[(&str, &str)]) -> Self {
        let lab = Lab::start().await.expect("lab");
        let (staging, service_role) = lab.enable_batch_jobs(STAGING).await.expect("batch jobs");
        lab.bedrock.batch_jobs().set_knobs(knobs);
        let services = Services::of(&lab).await;
        let sqs = aws_sdk_sqs::Client::new(&sdk_config(lab.moto.endpoint(), &lab.admin_b).await);
        let work = services.create_queue("work").await.expect("work queue");
        sqs.set_queue_attributes()
            .queue_url(&work.url)
            .attributes(QueueAttributeName::VisibilityTimeout, "60")
            .send()
            .await
            .expect("visibility");
        lab.create_bucket(INPUTS).await.expect("inputs bucket");

        let mut env = lab.function_env();
        let store = format!("s3://{BUCKET}/{PREFIX}_batches/");
        for (key, value) in [
            ("RELAY_WORK_QUEUE", work.url.as_str()),
            ("RELAY_WORK_STORE", store.as_str()),
            ("RELAY_CHUNK_ITEMS", "50"),
            ("RELAY_CHUNK_RETRY_SECONDS", "0"),
            ("RELAY_BATCH_STAGING", staging.as_str()),
            ("RELAY_BATCH_ROLE_ARN", service_role.as_str()),
        ]
        .into_iter()
        .chain(extra_env.iter().copied())
        {
            env.retain(|(k, _)| k != key);
            env.push((key.to_owned(), value.to_owned()));
        }
        let (runtimes, functions) = FunctionProcess::spawn_many(
            Path::new(env!("CARGO_BIN_EXE_bedrock-relay")),
            instances,
            &env,
        )
        .await
        .expect("functions");
        Self {
            lab,
            sqs,
            work,
            runtimes,
            functions,
        }
    }

    async fn invoke(&self, event: &Value) -> Outcome {
        self.runtimes[0]
            .invoke(event.to_string().into_bytes(), FUNCTION_TIMEOUT)
            .await
            .unwrap_or_else(|err| panic!("{err}; logs:\n{}", self.logs()))
    }

    /// The job event `id` around `detail`, as an EventBridge schedule sends it.
    async fn send_job(&self, id: &str, detail: Value) -> Outcome {
        self.invoke(&json!({
            "version": "0", "id": id, "detail-type": "Bedrock Relay Job",
            "source": "com.example.nightly", "account": ACCOUNT_B,
            "time": "2026-12-01T02:00:00Z", "region": "us-east-1", "resources": [],
            "detail": detail,
        }))
        .await
    }

    /// What the check schedule sends.
    async fn check(&self) -> Outcome {
        self.invoke(&json!({"relay": "check-batch-jobs"})).await
    }

    async fn put_items(&self, key: &str, n: usize) {
        let body: String = (0..n)
            .map(|i| format!("{}\n", json!({"text": format!("review {i}")})))
            .collect();
        self.lab
            .put_object(INPUTS, key, body, "application/x-ndjson")
            .await
            .expect("items");
    }

    /// Waits until every batch job the emulator holds has ended.
    async fn wait_for_jobs(&self) {
        for job in self.lab.bedrock.batch_jobs().jobs() {
            self.lab
                .bedrock
                .batch_jobs()
                .wait_for_end(&job.job_arn, Duration::from_secs(60))
                .await
                .expect("job ends");
        }
    }

    /// Waits until every job ended, then sends one check, which must
    /// collect the (only) batch in flight.
    async fn collect(&self) {
        self.wait_for_jobs().await;
        let checked = self.check().await;
        assert_eq!(
            answer(&checked)["checked"][0]["collected"],
            true,
            "{checked:?}\n{}",
            self.logs()
        );
    }

    /// Runs the work queue through the instances until it stays empty.
    async fn drain(&self) -> esm::Report {
        let mapping = Mapping {
            queue_url: self.work.url.clone(),
            queue_arn: self.work.arn.clone(),
            batch_size: 1,
            maximum_concurrency: self.runtimes.len(),
            function_timeout: FUNCTION_TIMEOUT,
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

    async fn manifest(&self, id: &str) -> Option<Value> {
        self.lab
            .object(BUCKET, &format!("{PREFIX}{id}.manifest.json"))
            .await
            .expect("s3")
            .map(|bytes| serde_json::from_slice(&bytes).expect("manifest JSON"))
    }

    /// On-demand model calls the runtime answered (the batch-job API's calls
    /// are counted by the emulator too).
    fn on_demand_calls(&self) -> usize {
        self.lab
            .bedrock
            .calls()
            .iter()
            .filter(|c| {
                c.status == 200 && matches!(c.operation.as_str(), "Converse" | "InvokeModel")
            })
            .count()
    }

    fn logs(&self) -> String {
        self.functions
            .iter()
            .map(|f| f.logs().join("\n"))
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

fn job(items_from: &str) -> Value {
    json!({
        "model": MODEL,
        "prompt": "Sentiment of: {{ item.text }}",
        "items_from": items_from,
        "complete_within": "P2D",
    })
}

/// A nightly batch of 150 items that accepts two days (`complete_within:
/// P2D`, mode `auto`) runs as one Bedrock batch job in account A: the
/// planner stages it and submits the job, a second delivery of the event
/// submits nothing more, and once the job completed the check schedule
/// delivers every answer in input order to account B's results, with the
/// job and Bedrock's counts in the manifest. No on-demand call is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_can_wait_runs_as_one_batch_job_and_is_delivered_in_order() {
    let lab = Batches::start(1, BatchKnobs::default()).await;
    lab.put_items("nightly/reviews.jsonl", 150).await;
    let id = "nightly-batch-job";
    let detail = job("s3://relay-inputs/nightly/reviews.jsonl");
    let first = lab.send_job(id, detail.clone()).await;
    let first = answer(&first);
    assert_eq!(first["status"], "submitted", "{first}\n{}", lab.logs());
    assert_eq!(first["mode"], "batch-job");
    assert!(
        first["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("auto:")),
        "{first}"
    );
    assert_eq!(first["jobs"].as_array().map(Vec::len), Some(1));
    let second = lab.send_job(id, detail).await;
    assert_eq!(answer(&second)["status"], "submitted", "{second:?}");
    let jobs = lab.lab.bedrock.batch_jobs().jobs();
    assert_eq!(jobs.len(), 1, "one submission for two deliveries");
    assert_eq!(jobs[0].model_invocation_type, "Converse");
    assert!(jobs[0].job_arn.contains(ACCOUNT_A), "created in account A");

    lab.collect().await;

    let lines = lab
        .lab
        .batch_lines(id)
        .await
        .expect("s3")
        .unwrap_or_else(|| panic!("no result; logs:\n{}", lab.logs()));
    assert_eq!(lines.len(), 150);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i, "input order");
        assert_eq!(line["status"], "succeeded", "{line}");
        assert_eq!(
            line["output"]["text"],
            format!("Echo from {MODEL}: Sentiment of: review {i}")
        );
        assert!(line["usage"]["input_tokens"].as_u64() > Some(0), "{line}");
    }
    let manifest = lab.manifest(id).await.expect("manifest");
    assert_eq!(manifest["mode"], "batch-job", "{manifest}");
    assert_eq!(manifest["status"], "succeeded");
    assert_eq!(manifest["succeeded"], 150);
    assert_eq!(manifest["batch_jobs"][0]["status"], "Completed");
    assert_eq!(
        manifest["batch_jobs"][0]["bedrock"]["success_record_count"],
        150
    );
    assert_eq!(lab.on_demand_calls(), 0, "no on-demand call");

    // A later check finds nothing in flight.
    let again = lab.check().await;
    assert_eq!(answer(&again)["checked"], json!([]));
}

/// A job that ends PartiallyCompleted (every 10th record answered with an
/// error), its outcome learned from Bedrock's state-change event: the failed
/// records run on-demand through the work queue, and the batch is complete
/// with each item answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_bedrock_failed_run_on_demand_after_the_state_change_event() {
    let knobs = BatchKnobs {
        fail_every_nth: Some(10),
        ..BatchKnobs::default()
    };
    let lab = Batches::start(2, knobs).await;
    lab.put_items("nightly/partial.jsonl", 120).await;
    let id = "nightly-partial";
    let submitted = lab
        .send_job(id, job("s3://relay-inputs/nightly/partial.jsonl"))
        .await;
    assert_eq!(answer(&submitted)["mode"], "batch-job", "{submitted:?}");
    lab.wait_for_jobs().await;

    let ended = lab
        .lab
        .bedrock
        .batch_jobs()
        .events()
        .into_iter()
        .find(|e| e.status == "PartiallyCompleted")
        .expect("a PartiallyCompleted event");
    let event = json!({
        "version": "0", "id": "ev-1", "detail-type": DETAIL_TYPE, "source": SOURCE,
        "account": ended.account, "time": "2026-12-01T03:00:00Z", "region": "us-east-1",
        "resources": [ended.job_arn], "detail": ended.detail,
    });
    let collected = lab.invoke(&event).await;
    assert_eq!(
        answer(&collected)["collected"],
        true,
        "{collected:?}\n{}",
        lab.logs()
    );
    assert_eq!(
        lab.on_demand_calls(),
        0,
        "nothing on-demand before the chunks run"
    );

    let report = lab.drain().await;
    assert!(report.records >= 1, "{report:?}");
    let lines = lab
        .lab
        .batch_lines(id)
        .await
        .expect("s3")
        .unwrap_or_else(|| panic!("no result; logs:\n{}", lab.logs()));
    assert_eq!(lines.len(), 120);
    assert!(
        lines.iter().all(|l| l["status"] == "succeeded"),
        "every item answered"
    );
    assert_eq!(
        lab.on_demand_calls(),
        12,
        "only the 12 records Bedrock failed run on-demand"
    );
    let manifest = lab.manifest(id).await.expect("manifest");
    assert_eq!(manifest["batch_jobs"][0]["status"], "PartiallyCompleted");
    assert_eq!(manifest["succeeded"], 120);
}

/// A state-change event that names a job this relay did not submit, or comes
/// from an account that is not one of its targets, is refused with an error
/// record, and nothing is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_state_change_events_are_refused() {
    let lab = Batches::start(1, BatchKnobs::default()).await;
    let forged = |account: &str, name: &str| {
        json!({
            "version": "0", "id": "forged", "detail-type": DETAIL_TYPE, "source": SOURCE,
            "account": account, "time": "2026-12-01T03:00:00Z", "region": "us-east-1",
            "resources": [], "detail": {
                "batchJobName": name,
                "batchJobArn": format!("arn:aws:bedrock:us-east-1:{account}:model-invocation-job/x1"),
                "status": "Completed", "accountId": account,
            },
        })
    };
    for (account, name) in [(ACCOUNT_A, "not-ours"), ("333333333333", "relay-x-p0")] {
        match lab.invoke(&forged(account, name)).await {
            Outcome::Error {
                error_type,
                error_message,
            } => {
                assert_eq!(error_type, "NonRetryable.NotOurBatchJob", "{error_message}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    let record = lab
        .lab
        .record("batch-job-not-ours")
        .await
        .expect("s3")
        .expect("an error record");
    assert_eq!(record["error"]["type"], "NotOurBatchJob");
    assert!(lab.lab.bedrock.batch_jobs().jobs().is_empty());
}

/// A job that expires half-way (its timeout reached with 60 of 120 records
/// answered), for a job that does not want the rest run on-demand
/// (`retry_on_demand: false`): the 60 answers are delivered, the other 60
/// are failed lines that name the expired job, and nothing runs on-demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_job_keeps_its_answers_and_fails_the_rest_when_asked_not_to_retry() {
    let knobs = BatchKnobs {
        expire_after_records: Some(60),
        ..BatchKnobs::default()
    };
    let lab = Batches::start(1, knobs).await;
    lab.put_items("nightly/expiring.jsonl", 120).await;
    let id = "nightly-expiring";
    let mut detail = job("s3://relay-inputs/nightly/expiring.jsonl");
    detail["retry_on_demand"] = json!(false);
    let submitted = lab.send_job(id, detail).await;
    assert_eq!(answer(&submitted)["mode"], "batch-job", "{submitted:?}");
    lab.collect().await;

    let lines = lab
        .lab
        .batch_lines(id)
        .await
        .expect("s3")
        .unwrap_or_else(|| panic!("no result; logs:\n{}", lab.logs()));
    assert_eq!(lines.len(), 120);
    let failed: Vec<&Value> = lines.iter().filter(|l| l["status"] == "failed").collect();
    assert_eq!(
        failed.len(),
        60,
        "the records the expired job did not answer"
    );
    for line in &failed {
        assert_eq!(line["error"]["type"], "BatchRecordUnanswered", "{line}");
        assert!(
            line["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("Expired")),
            "{line}"
        );
    }
    assert_eq!(lab.on_demand_calls(), 0);
    let manifest = lab.manifest(id).await.expect("manifest");
    assert_eq!(manifest["status"], "partial");
    assert_eq!(manifest["batch_jobs"][0]["status"], "Expired");
}

/// A batch of 250 records with jobs of at most 100 becomes three jobs; with
/// room for one job at a time in the account, the second and third wait and
/// are submitted by later checks as the earlier ones end. The results are
/// in input order across the three jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_over_the_accounts_quota_wait_for_their_turn() {
    let knobs = BatchKnobs {
        max_active_jobs: Some(1),
        ..BatchKnobs::default()
    };
    let lab = Batches::start_with(
        1,
        knobs,
        &[
            ("RELAY_BATCH_JOB_MAX_RECORDS", "100"),
            ("RELAY_BATCH_JOB_MIN_RECORDS", "50"),
        ],
    )
    .await;
    lab.put_items("nightly/large.jsonl", 250).await;
    let id = "nightly-large";
    let submitted = lab
        .send_job(id, job("s3://relay-inputs/nightly/large.jsonl"))
        .await;
    let submitted = answer(&submitted);
    let jobs = submitted["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 3, "{submitted}");
    assert_eq!(jobs[0]["status"], "Submitted");
    assert_eq!(jobs[1]["status"], "Waiting", "{submitted}");
    assert_eq!(lab.lab.bedrock.batch_jobs().jobs().len(), 1);

    let mut collected = false;
    for _ in 0..10 {
        lab.wait_for_jobs().await;
        let checked = lab.check().await;
        if answer(&checked)["checked"][0]["collected"] == true {
            collected = true;
            break;
        }
    }
    assert!(
        collected,
        "collected within ten checks; logs:\n{}",
        lab.logs()
    );
    assert_eq!(
        lab.lab.bedrock.batch_jobs().jobs().len(),
        3,
        "one job per part, each once"
    );
    let lines = lab.lab.batch_lines(id).await.expect("s3").expect("result");
    assert_eq!(lines.len(), 250);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i);
        assert_eq!(line["status"], "succeeded", "{line}");
    }
    let manifest = lab.manifest(id).await.expect("manifest");
    assert_eq!(manifest["batch_jobs"].as_array().map(Vec::len), Some(3));
}

/// `bedrock-relay status` of a batch that runs as one batch job, read from
/// the work store only: once submitted it is mode `batch-job` with the mode
/// choice's reason and the job (name, ARN, `Submitted`, 120 records), every
/// item pending and no estimate; after the job ended in Bedrock it still
/// shows what the relay last recorded; once the check schedule collected it,
/// it is complete, the job `Completed` with Bedrock's counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_batch_job_before_and_after_collection() {
    let lab = Batches::start(1, BatchKnobs::default()).await;
    lab.put_items("nightly/status.jsonl", 120).await;
    let id = "nightly-status";
    let submitted = lab
        .send_job(id, job("s3://relay-inputs/nightly/status.jsonl"))
        .await;
    assert_eq!(answer(&submitted)["mode"], "batch-job", "{submitted:?}");
    let arn = answer(&submitted)["jobs"][0]["arn"].clone();
    assert!(arn.is_string(), "{submitted:?}");

    let (code, before) = cli_status(&lab, id).await;
    assert_eq!(code, 0, "{before}");
    assert_eq!(before["mode"], "batch-job", "{before}");
    assert_eq!(before["status"], "submitted");
    assert!(
        before["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("auto:")),
        "{before}"
    );
    assert_eq!(
        (before["items"].as_u64(), before["pending"].as_u64()),
        (Some(120), Some(120))
    );
    assert_eq!(
        before["left_secs"],
        Value::Null,
        "Bedrock's pace is unknown"
    );
    let jobs = before["batch_jobs"].as_array().cloned().unwrap_or_default();
    assert_eq!(jobs.len(), 1, "{before}");
    assert_eq!(jobs[0]["arn"], arn);
    assert_eq!(jobs[0]["status"], "Submitted");
    assert_eq!(jobs[0]["records"], 120);
    assert!(jobs[0]["name"]
        .as_str()
        .is_some_and(|n| n.starts_with("relay-")));

    lab.wait_for_jobs().await;
    let (_, ended) = cli_status(&lab, id).await;
    assert_eq!(
        ended["batch_jobs"][0]["status"], "Submitted",
        "status reads the store, never Bedrock: {ended}"
    );

    let checked = lab.check().await;
    assert_eq!(
        answer(&checked)["checked"][0]["collected"],
        true,
        "{checked:?}"
    );
    let (code, after) = cli_status(&lab, id).await;
    assert_eq!(code, 0, "{after}");
    assert_eq!(
        (after["complete"].as_bool(), after["status"].as_str()),
        (Some(true), Some("succeeded")),
        "{after}"
    );
    assert_eq!(
        (after["succeeded"].as_u64(), after["pending"].as_u64()),
        (Some(120), Some(0))
    );
    let job = &after["batch_jobs"][0];
    assert_eq!(job["status"], "Completed", "{after}");
    assert_eq!(job["bedrock"]["success_record_count"], 120, "{after}");
    assert_eq!(
        after["results"],
        format!("s3://{BUCKET}/{PREFIX}{id}.jsonl")
    );

    // The same, for people.
    let text = cli(&lab, &["status", id]).await;
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("mode:      batch-job\n"), "{stdout}");
    assert!(
        stdout.contains(
            ": Completed, 120 records, Bedrock processed 120 (120 succeeded, 0 failed), arn:"
        ),
        "{stdout}"
    );
}

/// Runs the built binary as a command line with the function's environment.
async fn cli(lab: &Batches, args: &[&str]) -> std::process::Output {
    let store = format!("s3://{BUCKET}/{PREFIX}_batches/");
    let staging = format!("s3://{STAGING}/relay/");
    let role = lab
        .lab
        .bedrock
        .batch_jobs()
        .jobs()
        .first()
        .map(|job| job.role_arn.clone())
        .expect("a submitted job names the service role");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_bedrock-relay"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_REGION", lab::moto::REGION)
        .envs(lab.lab.function_env())
        .envs([
            ("RELAY_WORK_QUEUE", lab.work.url.as_str()),
            ("RELAY_WORK_STORE", store.as_str()),
            ("RELAY_BATCH_STAGING", staging.as_str()),
            ("RELAY_BATCH_ROLE_ARN", role.as_str()),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .await
        .expect("binary runs")
}

/// `status <id> --json`: the exit code and the object printed.
async fn cli_status(lab: &Batches, id: &str) -> (i32, Value) {
    let output = cli(lab, &["status", id, "--json"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), value)
}

/// The destination is down when the job's results arrive (its bucket is
/// missing): the check that collects them fails and keeps the batch in
/// flight; once the bucket is back, the next check delivers the complete
/// result, and Bedrock is not asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_down_when_results_arrive_is_retried_by_the_next_check() {
    const FINAL: &str = "relay-final";
    let lab = Batches::start_with(
        1,
        BatchKnobs::default(),
        &[("RELAY_ALLOWED_DESTINATIONS", "s3://relay-final/*")],
    )
    .await;
    lab.put_items("nightly/outage.jsonl", 110).await;
    let id = "nightly-outage";
    let mut detail = job("s3://relay-inputs/nightly/outage.jsonl");
    detail["destination"] = json!("s3://relay-final/nightly/");
    let submitted = lab.send_job(id, detail).await;
    assert_eq!(answer(&submitted)["mode"], "batch-job", "{submitted:?}");
    lab.wait_for_jobs().await;

    let failed = lab.check().await;
    let failed = answer(&failed);
    assert!(
        failed["checked"][0]["error"]
            .as_str()
            .is_some_and(|code| code.starts_with("Destination")),
        "{failed}"
    );
    lab.lab.create_bucket(FINAL).await.expect("bucket back");
    let collected = lab.check().await;
    assert_eq!(
        answer(&collected)["checked"][0]["collected"],
        true,
        "{collected:?}\n{}",
        lab.logs()
    );

    let lines = lab
        .lab
        .lines_in(FINAL, &format!("nightly/{id}.jsonl"))
        .await
        .expect("s3")
        .unwrap_or_else(|| panic!("not delivered; logs:\n{}", lab.logs()));
    assert_eq!(lines.len(), 110);
    assert!(lines
        .iter()
        .enumerate()
        .all(|(i, l)| l["index"] == i && l["status"] == "succeeded"));
    assert_eq!(
        lab.lab.bedrock.batch_jobs().jobs().len(),
        1,
        "one job, never resubmitted"
    );
    assert_eq!(lab.on_demand_calls(), 0);
}

/// To a queue destination, a batch-job batch sends each item's result once,
/// whether Bedrock's job answered it or it ran on-demand afterwards (every
/// 10th record failed in the job), and the manifest last, as an on-demand
/// batch does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_destination_gets_every_item_once_from_the_job_and_on_demand() {
    let knobs = BatchKnobs {
        fail_every_nth: Some(10),
        ..BatchKnobs::default()
    };
    let lab = Batches::start_with(
        2,
        knobs,
        &[("RELAY_ALLOWED_DESTINATIONS", "*/222222222222/results")],
    )
    .await;
    let services = Services::of(&lab.lab).await;
    let results = services.create_queue("results").await.expect("queue");
    lab.put_items("nightly/to-queue.jsonl", 110).await;
    let id = "nightly-to-queue";
    let mut detail = job("s3://relay-inputs/nightly/to-queue.jsonl");
    detail["destination"] = json!(results.url);
    let submitted = lab.send_job(id, detail).await;
    assert_eq!(answer(&submitted)["mode"], "batch-job", "{submitted:?}");
    lab.collect().await;
    lab.drain().await;

    let bodies: Vec<Value> = services
        .receive_all(&results.url)
        .await
        .expect("results")
        .iter()
        .map(|m| m.json().expect("JSON"))
        .collect();
    let mut indexes: Vec<u64> = bodies.iter().filter_map(|b| b["index"].as_u64()).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..110).collect::<Vec<u64>>(), "each item once");
    assert!(bodies
        .iter()
        .filter(|b| b["index"].is_u64())
        .all(|b| b["status"] == "succeeded"));
    let manifests: Vec<&Value> = bodies.iter().filter(|b| b["mode"] == "batch-job").collect();
    assert_eq!(manifests.len(), 1, "{bodies:?}");
    assert_eq!(manifests[0]["succeeded"], 110);
    assert_eq!(lab.on_demand_calls(), 11, "only the records the job failed");
}

/// A batch under the batch-job minimum (40 items, 100 needed) that could
/// wait still runs on-demand under `auto`, at once, and its answer says which
/// mode ran and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_under_the_minimum_runs_on_demand_and_says_why() {
    let lab = Batches::start(1, BatchKnobs::default()).await;
    lab.put_items("nightly/small.jsonl", 40).await;
    let outcome = lab
        .send_job(
            "nightly-small",
            job("s3://relay-inputs/nightly/small.jsonl"),
        )
        .await;
    let answer = answer(&outcome);
    assert_eq!(answer["status"], "succeeded", "{answer}");
    assert_eq!(answer["mode"], "on-demand");
    assert!(
        answer["reason"]
            .as_str()
            .is_some_and(|r| r.contains("40 items") && r.contains("RELAY_BATCH_JOB_MIN_RECORDS")),
        "{answer}"
    );
    assert!(lab.lab.bedrock.batch_jobs().jobs().is_empty());
    assert_eq!(lab.on_demand_calls(), 40);
}

/// A batch whose records would make an input file over the size limit
/// (`RELAY_BATCH_JOB_MAX_FILE_BYTES`, 1 GB at Bedrock; 8 KiB here) is split
/// into more jobs than the records limit alone needs, each file under the
/// limit, and the results are still complete and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_over_the_file_size_limit_are_split_into_more_jobs() {
    let lab = Batches::start_with(
        1,
        BatchKnobs::default(),
        &[("RELAY_BATCH_JOB_MAX_FILE_BYTES", "8192")],
    )
    .await;
    lab.put_items("nightly/sized.jsonl", 150).await;
    let id = "nightly-sized";
    let submitted = lab
        .send_job(id, job("s3://relay-inputs/nightly/sized.jsonl"))
        .await;
    let jobs = answer(&submitted)["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(jobs.len() >= 3, "{submitted:?}");
    let records: u64 = jobs.iter().filter_map(|j| j["records"].as_u64()).sum();
    assert_eq!(records, 150, "the parts cover every item once: {jobs:?}");
    let admin_a = lab.lab.admin_of(ACCOUNT_A).await.expect("admin");
    let s3 = lab::s3_client(lab.lab.moto.endpoint(), &admin_a);
    for part in 0..jobs.len() {
        let key = format!("relay/input/{id}/part-{part:06}.jsonl");
        let head = s3
            .head_object()
            .bucket(STAGING)
            .key(&key)
            .send()
            .await
            .expect("staged");
        assert!(
            head.content_length().unwrap_or(0) <= 8192,
            "{key}: {head:?}"
        );
    }

    lab.collect().await;
    let lines = lab.lab.batch_lines(id).await.expect("s3").expect("result");
    assert_eq!(lines.len(), 150);
    assert!(lines
        .iter()
        .enumerate()
        .all(|(i, l)| l["index"] == i && l["status"] == "succeeded"));
}

/// A batch job's records carry the job's model features as on-demand calls
/// would (structured output, the cache points, the model fields), and the
/// answers collected are validated against the schema (`output.json`); a
/// batch with a guardrail runs on-demand instead, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_job_records_carry_the_features_and_answers_are_validated() {
    let lab = Batches::start_with(
        1,
        BatchKnobs::default(),
        &[(
            "RELAY_GUARDRAILS",
            r#"{"strict": {"identifier": "gr1abc", "version": "1"}}"#,
        )],
    )
    .await;
    lab.put_items("nightly/labels.jsonl", 120).await;
    let schema = json!({"type": "object", "properties": {"label": {"enum": ["good", "bad"]}}, "required": ["label"]});
    let mut detail = job("s3://relay-inputs/nightly/labels.jsonl");
    detail["system"] = json!("You label reviews.");
    detail["cache"] = json!("5m");
    detail["output_schema"] = schema.clone();
    detail["model_fields"] = json!({"inferenceConfig": {"topK": 5}});
    let submitted = lab.send_job("labels-job", detail.clone()).await;
    assert_eq!(
        answer(&submitted)["mode"],
        "batch-job",
        "{submitted:?}\n{}",
        lab.logs()
    );
    let jobs = lab.lab.bedrock.batch_jobs().jobs();
    let input = jobs[0].input_data_config["s3InputDataConfig"]["s3Uri"]
        .as_str()
        .expect("input uri")
        .to_owned();
    let (bucket, key) = input
        .trim_start_matches("s3://")
        .split_once('/')
        .expect("bucket/key");
    let records = lab
        .lab
        .lines_in(bucket, key)
        .await
        .expect("s3")
        .expect("staged records");
    let first = &records[0]["modelInput"];
    assert_eq!(
        first["system"][1],
        json!({"cachePoint": {"type": "default", "ttl": "5m"}})
    );
    assert_eq!(
        first["messages"][0]["content"][0],
        json!({"text": "Sentiment of: "})
    );
    assert_eq!(
        first["messages"][0]["content"][1]["cachePoint"]["ttl"],
        "5m"
    );
    assert_eq!(first["outputConfig"]["textFormat"]["type"], "json_schema");
    assert_eq!(
        first["additionalModelRequestFields"],
        json!({"inferenceConfig": {"topK": 5}})
    );

    lab.collect().await;
    let lines = lab
        .lab
        .batch_lines("labels-job")
        .await
        .expect("s3")
        .expect("lines");
    assert_eq!(lines.len(), 120);
    for line in &lines {
        assert_eq!(line["status"], "succeeded", "{line}");
        assert!(
            ["good", "bad"].contains(&line["output"]["json"]["label"].as_str().unwrap_or("")),
            "{line}"
        );
    }

    detail["guardrail"] = json!("strict");
    lab.lab.bedrock.set_knobs(lab::emulator::Knobs {
        guardrails: vec![lab::emulator::LabGuardrail::new("gr1abc")],
        ..lab::emulator::Knobs::default()
    });
    let guarded = lab.send_job("labels-guarded", detail).await;
    let guarded = answer(&guarded);
    assert!(
        guarded["reason"]
            .as_str()
            .is_some_and(|r| r.contains("`guardrail`")),
        "{guarded}"
    );
    assert_ne!(guarded["mode"], "batch-job", "{guarded}");
}
