//! The fan-out benchmark: one large `items_from` batch planned by one
//! invocation, its chunks run from the work queue by several function
//! processes under the lab's SQS event source mapping ([`crate::esm`]), over
//! pooled model accounts with an emulated quota and model latency.
//!
//! Measured from outside the function, as [`crate::bench`] measures: wall
//! time (planner invocation → manifest in S3), the model calls the emulator
//! saw (answered, throttled, answered more than once), the final `.jsonl`
//! (items without a `succeeded` line), and each process's peak RSS and CPU
//! from `/proc`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use serde::Serialize;
use serde_json::json;

use crate::bench::{cpu_ticks, peak_rss_kb};
use crate::esm::{self, Mapping};
use crate::runtime_api::{FunctionProcess, Outcome};
use crate::services::{sdk_config, Services};
use crate::{Lab, LabError, BUCKET, PREFIX};

/// The bucket the `items_from` object is put in.
const INPUTS: &str = "relay-inputs";
/// The model every item asks.
const MODEL: &str = "amazon.nova-lite-v1:0";
/// USER_HZ on Linux: `/proc/<pid>/stat` counts CPU in these.
const TICKS_PER_SECOND: f64 = 100.0;

/// One fan-out run's settings.
#[derive(Debug, Clone, Copy)]
pub struct FanOutLoad {
    /// Items in the batch.
    pub items: usize,
    /// Pooled model accounts.
    pub accounts: usize,
    /// Quota per account, requests per minute.
    pub quota_rpm: u32,
    /// The quota's window, ms (the quota scaled to it).
    pub quota_window_ms: u64,
    /// Model latency, ms.
    pub latency_ms: u64,
    /// `RELAY_MAX_CONCURRENCY`: items in flight per instance.
    pub concurrency: usize,
    /// `RELAY_CHUNK_ITEMS`.
    pub chunk_items: usize,
    /// Function processes (and the mapping's `MaximumConcurrency`).
    pub instances: usize,
    /// The function timeout each invocation gets (the work queue's
    /// visibility timeout is 6x this).
    pub function_timeout: Duration,
    /// The `requests_per_minute` each target states, shared through a rate
    /// table (`RELAY_RATE_TABLE`); `None`: paced by throttles alone.
    pub stated_rpm: Option<u32>,
}

impl FanOutLoad {
    /// The pooled quota, requests per second.
    pub fn pooled_rps(&self) -> f64 {
        f64::from(self.quota_rpm) / 60.0 * self.accounts as f64
    }
}

/// One row of the fan-out table.
#[derive(Debug, Clone, Serialize)]
pub struct FanOutFigures {
    /// Items in the batch.
    pub items: usize,
    /// The `requests_per_minute` each target stated, if any.
    pub stated_rpm: Option<u32>,
    /// Chunks the planner cut.
    pub chunks: usize,
    /// Function processes.
    pub instances: usize,
    /// `RELAY_MAX_CONCURRENCY`.
    pub concurrency: usize,
    /// The pooled quota, requests per second.
    pub pooled_rps: f64,
    /// Planner invocation sent → manifest present in S3, seconds.
    pub wall_s: f64,
    /// The planner invocation alone (stream `items_from`, write the plan,
    /// send the chunk messages), seconds.
    pub plan_s: f64,
    /// Planner answered → first model call, seconds.
    pub to_first_call_s: f64,
    /// First model call → last answered model call (arrival), seconds: the
    /// steady part the quota share is measured over.
    pub steady_s: f64,
    /// Last answered model call → manifest present (the last chunk's save,
    /// summary and the assembly), seconds.
    pub tail_s: f64,
    /// Answered (200) model calls.
    pub answered: usize,
    /// Answered calls per second over `steady_s`.
    pub achieved_rps: f64,
    /// `achieved_rps` / `pooled_rps`.
    pub share_of_quota: f64,
    /// Median of the per-second answered counts, the first and last second
    /// left out, over the pooled quota: the steady state without its edges.
    pub median_second_share: f64,
    /// Throttled (429) model calls.
    pub throttled: usize,
    /// The most throttles one item met before its answer.
    pub max_throttles_per_item: usize,
    /// Model calls answered with anything else.
    pub other_errors: usize,
    /// Items without a `succeeded` line in the final `.jsonl`.
    pub lost: usize,
    /// Prompts answered (200) more than once.
    pub duplicates: usize,
    /// Answered calls per account, in alias order.
    pub answered_per_account: Vec<usize>,
    /// Updates of the rate table (its items' `takes`), when a quota was stated.
    pub rate_table_updates: Option<u64>,
    /// Highest VmHWM over the processes, MB.
    pub peak_rss_max_mb: f64,
    /// Mean VmHWM over the processes, MB.
    pub peak_rss_mean_mb: f64,
    /// utime + stime of every process (init included) per item, ms.
    pub cpu_ms_per_item: f64,
    /// utime + stime of every process, s.
    pub cpu_total_s: f64,
    /// The whole machine's CPU busy over the run (every process: the
    /// functions, moto, the lab), % of all cores.
    pub machine_busy: f64,
    /// The lab's own CPU over the run (the Bedrock emulator, the Runtime APIs,
    /// the event source mapping), s.
    pub lab_cpu_s: f64,
    /// moto's CPU over the run (S3, SQS, STS), s.
    pub moto_cpu_s: f64,
    /// Invocations: the planner's and the mapping's.
    pub invocations: usize,
    /// Records the mapping handed over (chunks plus their redeliveries).
    pub records: usize,
    /// The most invocations running at once.
    pub peak_concurrency: usize,
    /// Chunks received more than once.
    pub redelivered_chunks: usize,
    /// Per chunk: first model call → last answered call, seconds (mean).
    pub chunk_run_mean_s: f64,
    /// On one instance, one chunk's last answered call → the next chunk's
    /// first call, seconds (mean and max): what a chunk costs besides its
    /// model calls (the last answer, the saves, the summary, the mapping's
    /// delete and receive, reading the plan and the items, the claim).
    /// `None` when no instance ran two chunks.
    pub chunk_gap_mean_s: Option<f64>,
    /// See `chunk_gap_mean_s`.
    pub chunk_gap_max_s: Option<f64>,
    /// The last round: from the first of the last `instances` chunks to
    /// finish (when instances start running out of work) to the last answer,
    /// seconds.
    pub last_round_spread_s: f64,
    /// The quota left unused over `last_round_spread_s`, as a share of the
    /// quota over the whole steady part: what the stragglers cost.
    pub last_round_cost: f64,
}

/// Runs one fan-out batch of `load.items` items and measures it.
pub async fn run(function: &Path, load: FanOutLoad) -> Result<FanOutFigures, LabError> {
    let lab = Lab::start().await?;
    let services = Services::of(&lab).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(lab.moto.endpoint(), &lab.admin_b).await);

    // The work queue as the template makes it: dead-lettered after five
    // receives, visible again after 6x the function timeout.
    let dead_letters = services.create_queue("work-dlq").await?;
    let work = services.create_queue("work").await?;
    let redrive = format!(
        r#"{{"deadLetterTargetArn":"{}","maxReceiveCount":"5"}}"#,
        dead_letters.arn
    );
    sqs.set_queue_attributes()
        .queue_url(&work.url)
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            (load.function_timeout.as_secs() * 6).to_string(),
        )
        .send()
        .await
        .map_err(|e| LabError::Aws(format!("work queue attributes: {e:?}")))?;

    // The items.
    lab.create_bucket(INPUTS).await?;
    let key = format!("bench/items-{}.jsonl", load.items);
    let body: String = (0..load.items)
        .map(|i| format!("{}\n", json!({"text": format!("item {i:06}")})))
        .collect();
    lab.put_object(INPUTS, &key, body, "application/x-ndjson")
        .await?;

    // The pooled accounts, the quota and the latency.
    let mut targets = serde_json::Map::new();
    let target = |role: &str| {
        let mut target = json!({"role_arn": role, "external_id": crate::EXTERNAL_ID});
        if let Some(rpm) = load.stated_rpm {
            target["requests_per_minute"] = json!(rpm);
        }
        target
    };
    targets.insert("a1".into(), target(&lab.role_a_arn));
    for n in 2..=load.accounts {
        let role = lab.add_target_account(&format!("33333333333{n}")).await?;
        targets.insert(format!("a{n}"), target(&role));
    }
    // As the template makes it when a target states its quota, on a moto
    // of its own: in AWS, DynamoDB and S3 do not slow each other down, and
    // moto spends milliseconds of one core on each conditional update.
    let rate_table = match load.stated_rpm {
        Some(_) => {
            let moto = crate::moto::Moto::start().await?;
            let tables = Services::at(moto.endpoint(), &lab.admin_b).await;
            let arn = tables.create_rate_table("relay-rates").await?;
            Some((moto, tables, arn))
        }
        None => None,
    };
    let aliases: Vec<String> = targets.keys().cloned().collect();
    lab.bedrock.set_knobs(crate::emulator::Knobs {
        latency_ms: load.latency_ms,
        quota_rpm: Some(load.quota_rpm),
        quota_window_ms: Some(load.quota_window_ms),
        ..Default::default()
    });

    // The function processes, configured as the template configures them.
    let mut env = lab.function_env();
    env.retain(|(k, _)| k != "RELAY_ROLE_ARN" && k != "RELAY_EXTERNAL_ID");
    let store = format!("s3://{BUCKET}/{PREFIX}_batches/");
    for (name, value) in [
        (
            "RELAY_TARGETS",
            serde_json::Value::Object(targets).to_string(),
        ),
        ("RELAY_MAX_CONCURRENCY", load.concurrency.to_string()),
        ("RELAY_MAX_ITEMS", "100000".to_owned()),
        ("RELAY_WORK_QUEUE", work.url.clone()),
        ("RELAY_WORK_STORE", store),
        ("RELAY_CHUNK_ITEMS", load.chunk_items.to_string()),
        (
            "RELAY_RATE_TABLE",
            rate_table
                .as_ref()
                .map(|(_, _, arn)| arn.clone())
                .unwrap_or_default(),
        ),
        // BENCH_LOGS=<path>: info logs, written there after the run.
        (
            "AWS_LAMBDA_LOG_LEVEL",
            if std::env::var_os("BENCH_LOGS").is_some() {
                "info"
            } else {
                "warn"
            }
            .to_owned(),
        ),
        ("RELAY_METRICS_NAMESPACE", "Bench".to_owned()),
    ] {
        env.push((name.to_owned(), value));
    }
    if let Some((moto, _, _)) = &rate_table {
        env.push((
            "AWS_ENDPOINT_URL_DYNAMODB".to_owned(),
            moto.endpoint().to_owned(),
        ));
    }
    let (runtimes, functions) =
        FunctionProcess::spawn_many(function, load.instances.max(1), &env).await?;
    let pids: Vec<u32> = functions
        .iter()
        .map(|f| f.pid().ok_or_else(|| LabError::Function("no pid".into())))
        .collect::<Result<_, _>>()?;
    let logs = || {
        functions
            .iter()
            .enumerate()
            .map(|(n, f)| format!("-- instance {n}\n{}", f.logs().join("\n")))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // The job, as EventBridge delivers it, on instance 0: the planner.
    let job_id = format!("fanout-{}", load.items);
    let event = json!({
        "version": "0", "id": job_id, "detail-type": "Bedrock Relay Job",
        "source": "com.example.bench", "account": crate::ACCOUNT_B,
        "time": "2026-12-01T02:00:00Z", "region": crate::moto::REGION, "resources": [],
        "detail": {
            "model": MODEL,
            "target": aliases,
            "prompt": "Classify {{ item.text }}",
            "items_from": format!("s3://{INPUTS}/{key}"),
        },
    });
    let busy_before = machine_ticks();
    let lab_before = cpu_ticks(std::process::id())?;
    let moto_before = descendants_ticks(&pids);
    let started = Instant::now();
    let planned = runtimes[0]
        .invoke(event.to_string().into_bytes(), load.function_timeout)
        .await?;
    let plan_s = started.elapsed().as_secs_f64();
    let epoch_planned = epoch_ms();
    let chunks = match &planned {
        Outcome::Response { body } if body["status"] == "planned" => {
            body["chunks"].as_u64().unwrap_or(0) as usize
        }
        other => {
            return Err(LabError::Function(format!(
                "the planner answered {other:?}; logs:\n{}",
                logs()
            )))
        }
    };

    // The chunks, through the event source mapping, while the manifest is
    // watched for.
    let mapping = Mapping {
        queue_url: work.url.clone(),
        queue_arn: work.arn.clone(),
        batch_size: 1,
        maximum_concurrency: load.instances,
        function_timeout: load.function_timeout,
    };
    let manifest_key = format!("{PREFIX}{job_id}.manifest.json");
    let limit = Duration::from_secs(900);
    let watch = async {
        loop {
            if lab.object(BUCKET, &manifest_key).await?.is_some() {
                let ticks = (
                    machine_ticks(),
                    cpu_ticks(std::process::id())?,
                    descendants_ticks(&pids),
                );
                return Ok::<_, LabError>(Some((started.elapsed(), ticks)));
            }
            if started.elapsed() > limit {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let drain = esm::run(&sqs, &mapping, &runtimes, Duration::from_secs(3), limit);
    let (report, wall) = tokio::join!(drain, watch);
    let report = report?;
    let (wall, (busy_after, lab_after, moto_after)) = wall?.ok_or_else(|| {
        LabError::Function(format!(
            "no manifest after {limit:?} (mapping: {report:?}); logs:\n{}",
            logs()
        ))
    })?;
    // Up to the manifest, not the mapping's idle wait after it.
    let machine_busy = machine_busy(busy_before, busy_after);

    let mut cpu_ticks_total = 0;
    let mut rss_kb = Vec::with_capacity(pids.len());
    for pid in &pids {
        cpu_ticks_total += cpu_ticks(*pid)?;
        rss_kb.push(peak_rss_kb(*pid)?);
    }

    // The model calls.
    let calls = lab.bedrock.calls();
    let answered: Vec<&crate::emulator::Call> = calls.iter().filter(|c| c.status == 200).collect();
    let throttled = calls.iter().filter(|c| c.status == 429).count();
    let other_errors = calls.len() - answered.len() - throttled;
    let mut per_prompt: HashMap<&str, usize> = HashMap::new();
    for call in &answered {
        if let Some(text) = call.request["messages"][0]["content"][0]["text"].as_str() {
            *per_prompt.entry(text).or_default() += 1;
        }
    }
    let duplicates = per_prompt.values().filter(|n| **n > 1).count();
    let mut throttles_per_prompt: HashMap<&str, usize> = HashMap::new();
    for call in calls.iter().filter(|c| c.status == 429) {
        if let Some(text) = call.request["messages"][0]["content"][0]["text"].as_str() {
            *throttles_per_prompt.entry(text).or_default() += 1;
        }
    }
    let max_throttles_per_item = throttles_per_prompt.values().copied().max().unwrap_or(0);
    let first_call = calls.iter().map(|c| c.at_ms).min().unwrap_or(epoch_planned);
    let last_answer = answered.iter().map(|c| c.at_ms).max().unwrap_or(first_call);
    let steady_s = (last_answer - first_call) as f64 / 1000.0;
    let achieved_rps = answered.len() as f64 / steady_s.max(0.001);

    // Per second since the first call: answered, throttled.
    let mut per_second: BTreeMap<u128, (usize, usize)> = BTreeMap::new();
    for call in &calls {
        let entry = per_second
            .entry((call.at_ms - first_call) / 1000)
            .or_default();
        match call.status {
            200 => entry.0 += 1,
            429 => entry.1 += 1,
            _ => {}
        }
    }
    let mut inner: Vec<f64> = per_second
        .values()
        .map(|(ok, _)| *ok as f64)
        .collect::<Vec<_>>();
    if inner.len() > 2 {
        inner.remove(0);
        inner.pop();
    }
    inner.sort_by(f64::total_cmp);
    let median_second = inner.get(inner.len() / 2).copied().unwrap_or(0.0);
    if std::env::var_os("BENCH_DEBUG").is_some() {
        eprintln!("per second since the first call (answered, throttled): {per_second:?}");
    }

    // Which account answered, by the role's account.
    let accounts_in_order: Vec<String> = std::iter::once(crate::ACCOUNT_A.to_owned())
        .chain((2..=load.accounts).map(|n| format!("33333333333{n}")))
        .collect();
    let answered_per_account = accounts_in_order
        .iter()
        .map(|a| {
            answered
                .iter()
                .filter(|c| c.account.as_deref() == Some(a))
                .count()
        })
        .collect();

    let rate_table_updates = match &rate_table {
        Some((_, tables, _)) => Some(
            tables
                .scan_table("relay-rates")
                .await?
                .iter()
                .filter_map(|item| item["takes"].as_u64())
                .sum(),
        ),
        None => None,
    };

    // Per chunk: first call → last answer, from the item number in the prompt,
    // and the access keys that signed its calls (each instance has its own
    // session per account, so the keys tell which instance ran it).
    let mut chunk_spans: BTreeMap<usize, (u128, u128)> = BTreeMap::new();
    let mut chunk_keys: BTreeMap<usize, std::collections::BTreeSet<String>> = BTreeMap::new();
    for call in &calls {
        let Some(item) = call.request["messages"][0]["content"][0]["text"]
            .as_str()
            .and_then(|t| t.strip_prefix("Classify item "))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let chunk = item / load.chunk_items.max(1);
        if let Some(key) = &call.access_key_id {
            chunk_keys.entry(chunk).or_default().insert(key.clone());
        }
        let span = chunk_spans.entry(chunk).or_insert((call.at_ms, call.at_ms));
        span.0 = span.0.min(call.at_ms);
        if call.status == 200 {
            span.1 = span.1.max(call.at_ms);
        }
    }
    let chunk_run_mean_s = chunk_spans
        .values()
        .map(|(a, b)| (b - a) as f64 / 1000.0)
        .sum::<f64>()
        / chunk_spans.len().max(1) as f64;

    let mut ends: Vec<u128> = chunk_spans.values().map(|(_, end)| *end).collect();
    ends.sort_unstable();
    let round_start = ends
        .len()
        .checked_sub(load.instances.max(1))
        .and_then(|i| ends.get(i).copied())
        .or_else(|| ends.first().copied())
        .unwrap_or(last_answer);
    let last_round_spread_s = (last_answer - round_start) as f64 / 1000.0;
    let in_last_round = answered.iter().filter(|c| c.at_ms > round_start).count() as f64;
    let last_round_cost = (load.pooled_rps() * last_round_spread_s - in_last_round).max(0.0)
        / (load.pooled_rps() * steady_s).max(1.0);
    let gaps = chunk_gaps(&chunk_spans, &chunk_keys);
    let chunk_gap_mean_s = (!gaps.is_empty()).then(|| gaps.iter().sum::<f64>() / gaps.len() as f64);
    let chunk_gap_max_s = gaps.iter().copied().reduce(f64::max);

    // The result.
    let lines = lab.batch_lines(&job_id).await?.unwrap_or_default();
    let succeeded: std::collections::HashSet<u64> = lines
        .iter()
        .filter(|l| l["status"] == "succeeded")
        .filter_map(|l| l["index"].as_u64())
        .collect();
    let lost_indexes: Vec<u64> = (0..load.items as u64)
        .filter(|i| !succeeded.contains(i))
        .collect();
    let lost = lost_indexes.len();
    // What went wrong, on stderr: the model calls answered with an error
    // other than a throttle, and the lines of the items lost.
    for call in calls.iter().filter(|c| c.status != 200 && c.status != 429) {
        eprintln!(
            "bench-fanout: model call {} at +{} ms answered {} {}: {}",
            call.seq,
            call.at_ms.saturating_sub(first_call),
            call.status,
            call.error_type.as_deref().unwrap_or("-"),
            call.request["messages"][0]["content"][0]["text"]
        );
    }
    for index in lost_indexes.iter().take(10) {
        let line = lines.iter().find(|l| l["index"].as_u64() == Some(*index));
        eprintln!(
            "bench-fanout: item {index} lost: {}",
            line.map_or_else(|| "no line".to_owned(), |l| l.to_string())
        );
    }

    let wall_s = wall.as_secs_f64();
    let to_first_call_s = (first_call.saturating_sub(epoch_planned)) as f64 / 1000.0;
    let tail_s = wall_s - plan_s - to_first_call_s - steady_s;
    if let Some(path) = std::env::var_os("BENCH_LOGS") {
        std::fs::write(&path, logs()).map_err(|e| LabError::Setup(e.to_string()))?;
    }
    drop(functions);
    Ok(FanOutFigures {
        items: load.items,
        stated_rpm: load.stated_rpm,
        chunks,
        instances: load.instances,
        concurrency: load.concurrency,
        pooled_rps: load.pooled_rps(),
        wall_s,
        plan_s,
        to_first_call_s,
        steady_s,
        tail_s,
        answered: answered.len(),
        achieved_rps,
        share_of_quota: achieved_rps / load.pooled_rps(),
        median_second_share: median_second / load.pooled_rps(),
        throttled,
        max_throttles_per_item,
        other_errors,
        lost,
        duplicates,
        answered_per_account,
        rate_table_updates,
        peak_rss_max_mb: rss_kb.iter().copied().fold(0.0, f64::max) / 1024.0,
        peak_rss_mean_mb: rss_kb.iter().sum::<f64>() / rss_kb.len().max(1) as f64 / 1024.0,
        cpu_ms_per_item: cpu_ticks_total as f64 / TICKS_PER_SECOND * 1000.0
            / load.items.max(1) as f64,
        cpu_total_s: cpu_ticks_total as f64 / TICKS_PER_SECOND,
        machine_busy,
        lab_cpu_s: lab_after.saturating_sub(lab_before) as f64 / TICKS_PER_SECOND,
        moto_cpu_s: moto_after.saturating_sub(moto_before) as f64 / TICKS_PER_SECOND,
        invocations: report.invocations + 1,
        records: report.records,
        peak_concurrency: report.peak_concurrency,
        redelivered_chunks: report.records.saturating_sub(chunks),
        chunk_run_mean_s,
        chunk_gap_mean_s,
        chunk_gap_max_s,
        last_round_spread_s,
        last_round_cost,
    })
}

/// The gaps between consecutive chunks on one instance, seconds. Instances
/// are told apart by their access keys: the chunks that share a key ran on
/// the same instance.
fn chunk_gaps(
    spans: &BTreeMap<usize, (u128, u128)>,
    keys: &BTreeMap<usize, std::collections::BTreeSet<String>>,
) -> Vec<f64> {
    // Each chunk starts as its own group; chunks sharing a key are merged.
    let mut group: BTreeMap<usize, usize> = spans.keys().map(|c| (*c, *c)).collect();
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for (chunk, chunk_keys) in keys {
        for key in chunk_keys {
            match owner.get(key.as_str()) {
                Some(other) => {
                    let (from, to) = (group[chunk], group[other]);
                    for g in group.values_mut() {
                        if *g == from {
                            *g = to;
                        }
                    }
                }
                None => {
                    owner.insert(key, *chunk);
                }
            }
        }
    }
    let mut by_instance: BTreeMap<usize, Vec<(u128, u128)>> = BTreeMap::new();
    for (chunk, span) in spans {
        by_instance.entry(group[chunk]).or_default().push(*span);
    }
    let mut gaps = Vec::new();
    for runs in by_instance.values_mut() {
        runs.sort();
        for pair in runs.windows(2) {
            gaps.push(pair[1].0.saturating_sub(pair[0].1) as f64 / 1000.0);
        }
    }
    gaps
}

fn epoch_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// utime + stime of this process's descendants other than `functions`
/// (moto and its helpers), clock ticks.
fn descendants_ticks(functions: &[u32]) -> u64 {
    let mut total = 0;
    let mut stack = children(std::process::id());
    while let Some(pid) = stack.pop() {
        if functions.contains(&pid) {
            continue;
        }
        total += cpu_ticks(pid).unwrap_or(0);
        stack.extend(children(pid));
    }
    total
}

/// A process's children, from `/proc/<pid>/task/*/children`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// (busy, total) clock ticks of every CPU, from the first line of `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle and iowait.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn machine_busy(before: (u64, u64), after: (u64, u64)) -> f64 {
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1) as f64;
    if total > 0.0 {
        busy / total
    } else {
        f64::NAN
    }
}

/// The fan-out figures as a Markdown table, one column per run, and the
/// linearity check between the first two runs.
pub fn table(rows: &[FanOutFigures]) -> String {
    let mut out = String::from("| |");
    for r in rows {
        out.push_str(&format!(" {} items |", r.items));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(rows.len()));
    out.push('\n');
    let line = |label: &str, value: &dyn Fn(&FanOutFigures) -> String| {
        let cells: Vec<String> = rows.iter().map(value).collect();
        format!("| {label} | {} |\n", cells.join(" | "))
    };
    out.push_str(&line(
        "stated quota (`requests_per_minute`, rate table)",
        &|r| {
            r.stated_rpm
                .map_or_else(|| "none".to_owned(), |rpm| format!("{rpm} per account"))
        },
    ));
    out.push_str(&line("chunks × items", &|r| {
        format!("{} × {}", r.chunks, r.items.div_ceil(r.chunks.max(1)))
    }));
    out.push_str(&line(
        "wall time (planner invoked → manifest in S3)",
        &|r| format!("{:.1} s", r.wall_s),
    ));
    out.push_str(&line(
        "… planning / to first model call / steady / tail",
        &|r| {
            format!(
                "{:.2} / {:.2} / {:.1} / {:.2} s",
                r.plan_s, r.to_first_call_s, r.steady_s, r.tail_s
            )
        },
    ));
    out.push_str(&line("answered model calls", &|r| r.answered.to_string()));
    out.push_str(&line("achieved (steady part)", &|r| {
        format!("{:.1} req/s of {:.0}", r.achieved_rps, r.pooled_rps)
    }));
    out.push_str(&line("**share of the pooled quota**", &|r| {
        format!("**{:.1} %**", r.share_of_quota * 100.0)
    }));
    out.push_str(&line("share, median second (edges left out)", &|r| {
        format!("{:.1} %", r.median_second_share * 100.0)
    }));
    out.push_str(&line("throttled requests", &|r| {
        format!(
            "{} ({:.1} % of requests)",
            r.throttled,
            r.throttled as f64 * 100.0 / (r.answered + r.throttled + r.other_errors).max(1) as f64
        )
    }));
    out.push_str(&line("most throttles for one item", &|r| {
        r.max_throttles_per_item.to_string()
    }));
    out.push_str(&line("other model errors", &|r| r.other_errors.to_string()));
    out.push_str(&line("answered per account", &|r| {
        r.answered_per_account
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(" / ")
    }));
    out.push_str(&line("rate-table updates (model calls per update)", &|r| {
        r.rate_table_updates.map_or_else(
            || "none".to_owned(),
            |n| {
                let calls = r.answered + r.throttled + r.other_errors;
                format!("{n} ({:.1})", calls as f64 / n.max(1) as f64)
            },
        )
    }));
    out.push_str(&line("**items lost**", &|r| format!("**{}**", r.lost)));
    out.push_str(&line("**duplicate model calls**", &|r| {
        format!("**{}**", r.duplicates)
    }));
    out.push_str(&line("peak RSS per instance (max / mean)", &|r| {
        format!("{:.1} / {:.1} MB", r.peak_rss_max_mb, r.peak_rss_mean_mb)
    }));
    out.push_str(&line("CPU per item (all instances, user+sys)", &|r| {
        format!("{:.3} ms", r.cpu_ms_per_item)
    }));
    out.push_str(&line("CPU, all instances", &|r| {
        format!("{:.1} s", r.cpu_total_s)
    }));
    out.push_str(&line("CPU of the lab / moto during the run", &|r| {
        format!("{:.1} s / {:.1} s", r.lab_cpu_s, r.moto_cpu_s)
    }));
    out.push_str(&line(
        "machine CPU busy during the run (2 cores, all processes)",
        &|r| format!("{:.0} %", r.machine_busy * 100.0),
    ));
    out.push_str(&line("invocations (1 planner + chunk receives)", &|r| {
        r.invocations.to_string()
    }));
    out.push_str(&line("chunks received again", &|r| {
        r.redelivered_chunks.to_string()
    }));
    out.push_str(&line("most chunk invocations at once", &|r| {
        r.peak_concurrency.to_string()
    }));
    out.push_str(&line("one chunk's model calls, mean span", &|r| {
        format!("{:.1} s", r.chunk_run_mean_s)
    }));
    out.push_str(&line(
        "between two chunks on an instance (mean / max)",
        &|r| match (r.chunk_gap_mean_s, r.chunk_gap_max_s) {
            (Some(mean), Some(max)) => format!("{mean:.2} / {max:.2} s"),
            _ => "n/a (one chunk each)".to_owned(),
        },
    ));
    out.push_str(&line(
        "last round: first of the last chunks to finish → last answer",
        &|r| {
            format!(
                "{:.1} s, {:.1} % of the quota unused",
                r.last_round_spread_s,
                r.last_round_cost * 100.0
            )
        },
    ));
    if let [small, large, ..] = rows {
        let ratio = large.items as f64 / small.items.max(1) as f64;
        let fixed_small = small.wall_s - small.steady_s;
        let fixed_large = large.wall_s - large.steady_s;
        out.push_str(&format!(
            "\n{}x the items: wall time {:.2}x ({:.1} s → {:.1} s); the steady part {:.2}x \
             ({:.1} s → {:.1} s); outside it (planning, first call, tail) {:.1} s → {:.1} s. \
             Linear from the small run would be {:.1} s.\n",
            ratio,
            large.wall_s / small.wall_s.max(0.001),
            small.wall_s,
            large.wall_s,
            large.steady_s / small.steady_s.max(0.001),
            small.steady_s,
            large.steady_s,
            fixed_small,
            fixed_large,
            fixed_small + small.steady_s * ratio,
        ));
    }
    out
}
