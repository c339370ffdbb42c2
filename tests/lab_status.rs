//! `bedrock-relay status` as a command line in the lab: a fanned-out batch
//! just planned, watched while the work queue drains, and complete; a batch
//! run in one invocation and a single job; and the messages when there is
//! nothing to read.
//!
//! Needs the lab's Python tools: `scripts/setup` (the test command runs it).

use std::path::Path;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use lab::esm::{self, Mapping};
use lab::runtime_api::{FunctionProcess, Outcome, RuntimeApi};
use lab::services::{sdk_config, LabQueue, Services};
use lab::{Lab, BUCKET, PREFIX};
use serde_json::{json, Value};

const MODEL: &str = "amazon.nova-lite-v1:0";
/// How long one invocation may run.
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(20);

/// What one run of the command line left.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// Stdout as one JSON object.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Runs the built binary with `args` and exactly `env` (plus `PATH` and the
/// region), as an operator's shell would.
async fn run(env: &[(String, String)], args: &[&str]) -> Ran {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_bedrock-relay"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_REGION", lab::moto::REGION)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .await
        .expect("binary runs");
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `env` with `settings` in place of what it had for the same names.
fn with(mut env: Vec<(String, String)>, settings: &[(&str, &str)]) -> Vec<(String, String)> {
    for (key, value) in settings {
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.to_string()));
    }
    env
}

/// The lab with a work queue and one function process that fans out batches
/// in chunks of 10 (the parts of `lab_fanout.rs`'s bench this needs).
struct FanOut {
    lab: Lab,
    sqs: aws_sdk_sqs::Client,
    work: LabQueue,
    env: Vec<(String, String)>,
    runtime: RuntimeApi,
    function: FunctionProcess,
}

impl FanOut {
    async fn start() -> Self {
        let lab = Lab::start().await.expect("lab");
        let services = Services::of(&lab).await;
        let sqs = aws_sdk_sqs::Client::new(&sdk_config(lab.moto.endpoint(), &lab.admin_b).await);
        let work = services.create_queue("work").await.expect("work queue");
        sqs.set_queue_attributes()
            .queue_url(&work.url)
            .attributes(QueueAttributeName::VisibilityTimeout, "60")
            .send()
            .await
            .expect("visibility");
        let store = format!("s3://{BUCKET}/{PREFIX}_batches/");
        let env = with(
            lab.function_env(),
            &[
                ("RELAY_WORK_QUEUE", work.url.as_str()),
                ("RELAY_WORK_STORE", store.as_str()),
                ("RELAY_CHUNK_ITEMS", "10"),
                ("RELAY_CHUNK_RETRY_SECONDS", "0"),
            ],
        );
        let runtime = RuntimeApi::start().await.expect("runtime api");
        let function = FunctionProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_bedrock-relay")),
            &runtime,
            &env,
        )
        .expect("function");
        Self {
            lab,
            sqs,
            work,
            env,
            runtime,
            function,
        }
    }

    /// The job event `id` around `detail`, invoked as EventBridge would.
    async fn send_job(&self, id: &str, detail: Value) -> Value {
        let outcome = self
            .runtime
            .invoke(event(id, detail).to_string().into_bytes(), FUNCTION_TIMEOUT)
            .await
            .unwrap_or_else(|err| panic!("{err}; logs:\n{}", self.function.logs().join("\n")));
        match outcome {
            Outcome::Response { body } => body,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    /// Runs the work queue through the function until it has been empty for
    /// a few seconds.
    async fn drain(&self) -> esm::Report {
        let mapping = Mapping {
            queue_url: self.work.url.clone(),
            queue_arn: self.work.arn.clone(),
            batch_size: 1,
            maximum_concurrency: 1,
            function_timeout: FUNCTION_TIMEOUT,
        };
        esm::run(
            &self.sqs,
            &mapping,
            std::slice::from_ref(&self.runtime),
            Duration::from_secs(3),
            Duration::from_secs(120),
        )
        .await
        .expect("mapping")
    }
}

fn event(id: &str, detail: Value) -> Value {
    json!({
        "version": "0", "id": id, "detail-type": "Bedrock Relay Job",
        "source": "com.example.nightly", "account": "222222222222",
        "time": "2026-12-01T02:00:00Z", "region": "us-east-1", "resources": [],
        "detail": detail,
    })
}

fn batch(n: usize) -> Value {
    let items: Vec<Value> = (0..n)
        .map(|i| json!({"text": format!("review {i}")}))
        .collect();
    json!({"model": MODEL, "prompt": "Sentiment of: {{ item.text }}", "items": items})
}

/// A 30-item batch in chunks of 10, just planned: `status` reads the plan
/// (fan-out, 0 of 3 chunks, every item pending). A `--watch --json` started
/// then prints a line per read until the queue is drained, its positions
/// never going back; afterwards `status` reads the manifest: complete, every
/// item succeeded, 3 of 3 chunks, with tokens and the results' URI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_a_fanned_out_batch_from_plan_to_manifest() {
    let bench = FanOut::start().await;
    let id = "status-nightly";
    let planned = bench.send_job(id, batch(30)).await;
    assert_eq!(
        (planned["status"].as_str(), planned["chunks"].as_u64()),
        (Some("planned"), Some(3)),
        "{planned}"
    );

    let ran = run(&bench.env, &["status", id, "--json"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let status = ran.json();
    assert_eq!(status["mode"], "fan-out", "{status}");
    assert_eq!(status["status"], "planned");
    assert_eq!(status["complete"], false);
    assert_eq!(
        (
            status["chunks_done"].as_u64(),
            status["chunks_total"].as_u64()
        ),
        (Some(0), Some(3))
    );
    assert_eq!(
        (status["items"].as_u64(), status["pending"].as_u64()),
        (Some(30), Some(30))
    );
    assert_eq!(
        status["left_secs"],
        Value::Null,
        "nothing settled: no estimate"
    );

    let env = bench.env.clone();
    let watch = tokio::spawn(async move {
        run(
            &env,
            &["status", "--watch", "--json", "--interval", "1", id],
        )
        .await
    });
    let report = bench.drain().await;
    assert_eq!(report.records, 3, "{report:?}");
    let watched = tokio::time::timeout(Duration::from_secs(30), watch)
        .await
        .expect("the watch ends once the batch is complete")
        .expect("watch task");
    assert_eq!(watched.code, 0, "{watched:?}");
    let polls: Vec<Value> = watched
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = polls.last().expect("at least one line");
    assert_eq!(
        (last["complete"].as_bool(), last["succeeded"].as_u64()),
        (Some(true), Some(30))
    );
    let settled: Vec<u64> = polls
        .iter()
        .map(|p| p["succeeded"].as_u64().unwrap_or(0) + p["failed"].as_u64().unwrap_or(0))
        .collect();
    assert!(settled.windows(2).all(|w| w[0] <= w[1]), "{settled:?}");

    let status = run(&bench.env, &["status", id, "--json"]).await.json();
    assert_eq!(status["complete"], true, "{status}");
    assert_eq!(status["status"], "succeeded");
    assert_eq!(
        (status["succeeded"].as_u64(), status["failed"].as_u64()),
        (Some(30), Some(0))
    );
    assert_eq!(
        (
            status["chunks_done"].as_u64(),
            status["chunks_total"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert_eq!(
        (status["pending"].as_u64(), status["left_secs"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(status["calls"], 30);
    assert!(status["input_tokens"].as_u64() > Some(0), "{status}");
    assert!(status["finished_at"].is_string() && status["elapsed_secs"].is_u64());
    assert_eq!(
        status["results"],
        format!("s3://{BUCKET}/{PREFIX}{id}.jsonl")
    );
    let lines = bench.lab.batch_lines(id).await.expect("s3").expect("jsonl");
    assert_eq!(lines.len(), 30, "what the manifest says is there");

    // The same, for people: aligned lines on stdout.
    let text = run(&bench.env, &["status", id]).await;
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout.contains("mode:      fan-out\n"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("chunks:    3/3 done\n"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("30 succeeded, 0 failed, 0 pending"),
        "{}",
        text.stdout
    );

    // An id nobody ran: where it looked, and a failure.
    let unknown = run(&bench.env, &["status", "never-ran"]).await;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    for uri in [
        format!("s3://{BUCKET}/{PREFIX}_batches/never-ran/plan.json"),
        format!("s3://{BUCKET}/{PREFIX}never-ran.jsonl"),
        format!("s3://{BUCKET}/{PREFIX}never-ran.progress.jsonl"),
        format!("s3://{BUCKET}/{PREFIX}never-ran.json"),
    ] {
        assert!(unknown.stderr.contains(&uri), "{uri} in {}", unknown.stderr);
    }
    assert!(unknown.stdout.is_empty(), "{unknown:?}");
    let unknown = run(&bench.env, &["status", "never-ran", "--json"]).await;
    assert_eq!(unknown.code, 1);
    assert!(unknown.json()["error"]
        .as_str()
        .is_some_and(|e| e.starts_with("no job `never-ran` found: looked for")));
}

/// Without a work queue a batch runs in its invocation: `status` reads its
/// `.jsonl` (in-invocation, complete). A single job reads from its record.
/// With a destination other than S3 there is nothing `status` can read, and
/// it says what to do; a bad id or `--interval` is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_batches_in_one_invocation_and_single_jobs() {
    let lab = Lab::start().await.expect("lab");
    let env = lab.function_env();
    let file = std::env::temp_dir().join(format!("lab-status-{}.json", std::process::id()));
    std::fs::write(&file, event("status-small", batch(5)).to_string()).expect("event file");
    let path = file.to_str().expect("utf-8");
    let invoked = run(&env, &["invoke", "--event", path, "--json"]).await;
    let _ = std::fs::remove_file(&file);
    assert_eq!(invoked.code, 0, "{invoked:?}");

    let status = run(&env, &["status", "status-small", "--json"])
        .await
        .json();
    assert_eq!(status["mode"], "in-invocation", "{status}");
    assert_eq!(
        (status["complete"].as_bool(), status["status"].as_str()),
        (Some(true), Some("succeeded"))
    );
    assert_eq!(
        (status["items"].as_u64(), status["succeeded"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(
        (
            status["chunks_done"].as_u64(),
            status["chunks_total"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(
        status["results"],
        format!("s3://{BUCKET}/{PREFIX}status-small.jsonl")
    );

    let invoked = run(&env, &["invoke", "--event", "events/job-event.json"]).await;
    assert_eq!(invoked.code, 0, "{invoked:?}");
    let ran = run(
        &env,
        &[
            "status",
            "6f2c1f5e-2b1d-4c8e-9a57-0d3c2b9e7a11",
            "--json",
            "--watch",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let status = ran.json();
    assert_eq!(
        (status["mode"].as_str(), status["status"].as_str()),
        (Some("single"), Some("succeeded"))
    );
    assert_eq!(
        status["complete"], true,
        "a finished job ends the watch at once"
    );

    let queue = with(
        env.clone(),
        &[(
            "RELAY_DESTINATION",
            "https://sqs.us-east-1.amazonaws.com/222222222222/results",
        )],
    );
    let ran = run(&queue, &["status", "status-small"]).await;
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.contains("from an S3 destination only"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("set RELAY_DESTINATION to the s3://"),
        "{}",
        ran.stderr
    );

    for args in [
        &["status"][..],
        &["status", "../escape"],
        &["status", "x", "--watch", "--interval", "0"],
    ] {
        assert_eq!(run(&env, args).await.code, 2, "{args:?}");
    }
}
