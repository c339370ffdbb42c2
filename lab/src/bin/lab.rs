//! The lab from the command line.
//!
//! - `lab demo --function PATH`: start the two-account lab, run the function
//!   binary through the Lambda Runtime API with the sample events, print what
//!   landed where, and stop everything.
//! - `lab up`: start the lab and keep it running for `cargo lambda watch`;
//!   writes the function's environment to `.lab/function.env`.
//! - `lab bench --function PATH [--hello PATH] [--events N] [--zip PATH]
//!   [--only-rust | --only-batch]`: the benchmark (see `scripts/bench`).
//! - `lab bench-fanout --function PATH [--items 2000,20000] [--concurrency N]
//!   [--instances N] [--chunk-items N] [--timeout SECONDS]`: the fan-out
//!   benchmark, one batch per item count over the work queue (see
//!   `scripts/bench fanout` and docs/benchmark.md).
//! - `lab soak --function PATH [--events N]`: many events with injected
//!   faults and duplicates; prints what became of them and exits 1 if any
//!   item was lost or answered twice (see `scripts/soak`).
//! - `lab emulator [--moto URL] [--port N]`: only the Bedrock emulator, checking
//!   signatures against the moto at URL (none given: signatures not checked).
//!   Knobs over HTTP: `PUT /_lab/knobs`, `POST /_lab/faults`, `GET /_lab/calls`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lab::moto::workspace_root;
use lab::runtime_api::{FunctionProcess, Outcome, RuntimeApi};
use lab::{Lab, LabError, BUCKET};
use serde_json::Value;

const DEMO_EVENTS: [(&str, &str); 16] = [
    (
        "job-event.json",
        "an application event carrying a job (detail-type: Bedrock Relay Job)",
    ),
    (
        "messages-job-event.json",
        "a job event with a Converse conversation",
    ),
    (
        "invoke-job-event.json",
        "a job event with a raw InvokeModel body (Anthropic messages API)",
    ),
    (
        "scheduled-event.json",
        "a scheduled rule's event, running RELAY_DEFAULT_JOB",
    ),
    (
        "scheduler-bare-job.json",
        "a bare job, as EventBridge Scheduler delivers it",
    ),
    (
        "s3-object-created.json",
        "an S3 Object Created event, running RELAY_DEFAULT_JOB",
    ),
    (
        "document-job-event.json",
        "a job with a PDF from S3, sent as a document block (templated URI)",
    ),
    (
        "batch-job-event.json",
        "a batch: one templated prompt per item, one JSON Lines result",
    ),
    (
        "items-from-job-event.json",
        "a batch whose items come from a JSON Lines object in S3",
    ),
    (
        "sqs-destination-job-event.json",
        "a job whose result goes to a FIFO queue (allowed by RELAY_ALLOWED_DESTINATIONS)",
    ),
    (
        "structured-output-job-event.json",
        "structured output: the answer must match a JSON Schema (output.json)",
    ),
    (
        "cached-batch-job-event.json",
        "a batch with prompt caching: items 2..n read the shared prefix from the cache",
    ),
    (
        "guardrail-job-event.json",
        "a job under the guardrail `customer-facing` (RELAY_GUARDRAILS)",
    ),
    (
        "flex-tier-job-event.json",
        "the flex service tier on a model that offers it",
    ),
    (
        "reasoning-job-event.json",
        "Claude's extended thinking through model_fields",
    ),
    (
        "malformed-job-event.json",
        "a malformed job event (both prompt and messages, an unknown field)",
    ),
];

const DEMO_DEFAULT_JOB: &str =
    r#"{"prompt": "Write the nightly platform digest.", "metadata": {"kind": "default-job"}}"#;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(function_path(&args)).await,
        Some("up") => up().await,
        Some("emulator") => emulator(&args).await,
        Some("bench") => bench(&args).await,
        Some("bench-fanout") => bench_fanout(&args).await,
        Some("bench-cost") => bench_cost(&args).await,
        Some("soak") => soak(&args).await,
        _ => {
            eprintln!(
                "usage: lab demo [--function PATH] | lab up | lab bench ... | lab bench-fanout ... | lab bench-cost [--function PATH] [--items N] | lab soak [--function PATH] [--events N] | lab emulator [--moto URL] [--port N]"
            );
            std::process::exit(2);
        }
    };
    if let Err(err) = result {
        eprintln!("lab: {err}");
        std::process::exit(1);
    }
}

/// `lab soak --function PATH [--events N]`: prints the table; exits 1 when an
/// item was lost or answered twice.
async fn soak(args: &[String]) -> Result<(), LabError> {
    let function = function_path(args);
    let events: usize = flag(args, "--events")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    println!("soak: {events} events through {}", function.display());
    let report = lab::soak::run(&function, events).await?;
    println!("{}", report.table());
    if !report.passed() {
        eprintln!("soak: FAILED: items lost, answered twice, or invalid events accepted");
        std::process::exit(1);
    }
    println!("soak: passed");
    Ok(())
}

/// `lab bench --function PATH [--hello PATH] [--events N]`: the release binary
/// against the naive and careful Python baselines.
async fn bench(args: &[String]) -> Result<(), LabError> {
    use lab::bench::{batch_table, batch_throughput, chart, measure, table, BatchLoad, Program};

    let function = function_path(args);
    let events: usize = flag(args, "--events")
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let python = workspace_root().join(".venv/bin/python");
    let zip = flag(args, "--zip").map(PathBuf::from);
    let package = zip.clone().unwrap_or_else(|| function.clone());
    let mut rows = Vec::new();
    let only_batch = args.iter().any(|a| a == "--only-batch");
    // Only the function's own row: a quick loop while tuning the warm path.
    let only_rust = args.iter().any(|a| a == "--only-rust");
    println!("bench: {events} warm events per variant");
    if only_batch {
        rows.clear();
    } else {
        rows.push(
            measure(
                "rust",
                &Program::Binary(function.clone()),
                events,
                Some(&package),
            )
            .await?,
        );
        if only_rust {
            println!("{}", table(&rows, None));
            return Ok(());
        }
        for module in ["careful", "naive"] {
            let program = Program::Python {
                interpreter: python.clone(),
                module: module.into(),
            };
            rows.push(measure(&format!("python-{module}"), &program, events, None).await?);
        }
    }
    let hello = match flag(args, "--hello") {
        Some(path) => {
            Some(measure("hello", &Program::Binary(PathBuf::from(path)), events, None).await?)
        }
        None => None,
    };
    let mut text = if only_batch {
        String::new()
    } else {
        table(&rows, hello.as_ref())
    };
    println!("{text}");

    // Batch throughput: 500 items against a per-account quota, 1 and 2 pooled accounts.
    let load = BatchLoad {
        items: flag(args, "--items")
            .and_then(|n| n.parse().ok())
            .unwrap_or(500),
        quota_rpm: flag(args, "--quota-rpm")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1200),
        quota_window_ms: 1000,
        latency_ms: flag(args, "--latency-ms")
            .and_then(|n| n.parse().ok())
            .unwrap_or(50),
        concurrency: flag(args, "--concurrency")
            .and_then(|n| n.parse().ok())
            .unwrap_or(16),
    };
    println!(
        "bench: batch of {} items, quota {} rpm per account (enforced per {} ms), model latency {} ms, concurrency {}",
        load.items, load.quota_rpm, load.quota_window_ms, load.latency_ms, load.concurrency
    );
    let batches = vec![
        batch_throughput(&function, 1, load).await?,
        batch_throughput(&function, 2, load).await?,
    ];
    let batch_text = batch_table(&batches);
    println!("{batch_text}");
    text.push_str(
        "
## Batch throughput

",
    );
    text.push_str(&batch_text);
    if only_batch {
        return Ok(());
    }
    let dir = workspace_root().join("bench");
    std::fs::write(dir.join("chart.svg"), chart(&rows))
        .map_err(|e| LabError::Setup(e.to_string()))?;
    std::fs::write(dir.join("results.md"), &text).map_err(|e| LabError::Setup(e.to_string()))?;
    println!("wrote bench/chart.svg and bench/results.md");
    Ok(())
}

/// `lab bench-fanout`: batches of `--items` (comma-separated) fanned out over
/// the work queue, two pooled accounts at 100 requests/s each and 100 ms model
/// latency, chunks of 500, eight instances; prints the table. Exits 1 when an
/// item was lost or answered twice.
async fn bench_fanout(args: &[String]) -> Result<(), LabError> {
    use lab::bench_fanout::{run, table, FanOutLoad};

    let function = function_path(args);
    let number = |name: &str, default: usize| -> Result<usize, LabError> {
        flag(args, name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| LabError::Setup(format!("{name} {v}: not a number")))
        })
    };
    let items: Vec<usize> = flag(args, "--items")
        .unwrap_or("2000,20000")
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .map_err(|_| LabError::Setup(format!("--items: `{n}` is not a number")))
        })
        .collect::<Result<_, _>>()?;
    let base = FanOutLoad {
        items: 0,
        accounts: 2,
        quota_rpm: 6000,
        quota_window_ms: 1000,
        latency_ms: 100,
        concurrency: number("--concurrency", 8)?,
        chunk_items: number("--chunk-items", 500)?,
        instances: number("--instances", 8)?,
        function_timeout: Duration::from_secs(number("--timeout", 120)? as u64),
        // 0: nothing stated, paced by throttles alone.
        stated_rpm: match number("--stated-rpm", 0)? {
            0 => None,
            rpm => Some(
                u32::try_from(rpm)
                    .map_err(|_| LabError::Setup(format!("--stated-rpm {rpm}: too large")))?,
            ),
        },
    };
    println!(
        "bench-fanout: {} pooled accounts, {} rpm each (enforced per {} ms: {:.0} req/s pooled),          model latency {} ms; chunks of {}, {} instances (MaximumConcurrency {}, BatchSize 1),          RELAY_MAX_CONCURRENCY {}, function timeout {} s (visibility {} s)",
        base.accounts,
        base.quota_rpm,
        base.quota_window_ms,
        base.pooled_rps(),
        base.latency_ms,
        base.chunk_items,
        base.instances,
        base.instances,
        base.concurrency,
        base.function_timeout.as_secs(),
        base.function_timeout.as_secs() * 6
    );
    let mut rows = Vec::new();
    for n in items {
        println!("bench-fanout: {n} items ...");
        let row = run(&function, FanOutLoad { items: n, ..base }).await?;
        println!(
            "bench-fanout: {n} items: {:.1} s, {:.1} % of the pooled quota, {} throttled, {} lost, {} duplicates",
            row.wall_s,
            row.share_of_quota * 100.0,
            row.throttled,
            row.lost,
            row.duplicates
        );
        rows.push(row);
    }
    println!("{}", table(&rows));
    if rows.iter().any(|r| r.lost > 0 || r.duplicates > 0) {
        eprintln!("bench-fanout: FAILED: items lost or answered twice");
        std::process::exit(1);
    }
    Ok(())
}

/// `lab bench-cost`: the same batch with a 2,000-token shared system prompt,
/// on-demand and as a Bedrock batch job, each without and with prompt
/// caching; prints what each would cost from the manifests' tokens.
async fn bench_cost(args: &[String]) -> Result<(), LabError> {
    let function = function_path(args);
    let items: usize = flag(args, "--items")
        .unwrap_or("2000")
        .parse()
        .map_err(|_| LabError::Setup("--items: not a number".into()))?;
    println!(
        "bench-cost: {items} items of {} ...",
        lab::bench_cost::PRICES[0].0
    );
    let rows = lab::bench_cost::run(&function, items).await?;
    println!("{}", lab::bench_cost::table(&rows));
    Ok(())
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].as_str())
}

fn function_path(args: &[String]) -> PathBuf {
    flag(args, "--function")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/bedrock-relay"))
}

async fn emulator(args: &[String]) -> Result<(), LabError> {
    let sessions = flag(args, "--moto").map(lab::moto::MotoSessions::new);
    let bind = format!("127.0.0.1:{}", flag(args, "--port").unwrap_or("0"));
    let emulator = lab::emulator::BedrockEmulator::start_on(sessions, &bind).await?;
    println!(
        "bedrock emulator on {} (AWS_ENDPOINT_URL_BEDROCK_RUNTIME); Ctrl-C stops it",
        emulator.endpoint()
    );
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}

async fn demo(function: PathBuf) -> Result<(), LabError> {
    if !function.exists() {
        return Err(LabError::Setup(format!(
            "{} not found: build it first (cargo build)",
            function.display()
        )));
    }
    println!(
        "== starting the lab: moto (accounts A=111111111111, B=222222222222) + Bedrock emulator"
    );
    let lab = Lab::start().await?;
    println!("   moto            {}", lab.moto.endpoint());
    println!("   bedrock         {}", lab.bedrock.endpoint());
    println!("   RoleA           {}", lab.role_a_arn);
    println!("   execution role  {}", lab.exec_role_arn);

    // Inputs and a destination the samples use.
    let events_dir = workspace_root().join("events");
    lab.create_bucket("relay-inputs").await?;
    lab.put_object(
        "relay-inputs",
        "contracts/C-0042.pdf",
        b"%PDF-1.4\n% a stand-in contract\n%%EOF\n".to_vec(),
        "application/pdf",
    )
    .await?;
    let reviews = std::fs::read(events_dir.join("inputs/reviews.jsonl"))
        .map_err(|e| LabError::Setup(format!("events/inputs/reviews.jsonl: {e}")))?;
    lab.put_object(
        "relay-inputs",
        "batches/reviews.jsonl",
        reviews,
        "application/x-ndjson",
    )
    .await?;
    let services = lab::services::Services::of(&lab).await;
    let queue = services.create_queue("relay-results.fifo").await?;
    println!("   inputs          s3://relay-inputs/ (a PDF, a JSON Lines batch)");
    println!("   FIFO queue      {}", queue.arn);

    let runtime = RuntimeApi::start().await?;
    let mut env = lab.function_env();
    env.push(("RELAY_ALLOWED_DESTINATIONS".into(), queue.arn.clone()));
    env.push(("RELAY_DEFAULT_JOB".into(), DEMO_DEFAULT_JOB.into()));
    env.push((
        "RELAY_DEFAULT_MODEL".into(),
        "amazon.nova-micro-v1:0".into(),
    ));
    env.push((
        "RELAY_GUARDRAILS".into(),
        r#"{"customer-facing": {"identifier": "gr1demo", "version": "1", "trace": "enabled"}}"#
            .into(),
    ));
    // Account A's guardrail, as the emulator knows it.
    lab.bedrock.set_knobs(lab::emulator::Knobs {
        guardrails: vec![lab::emulator::LabGuardrail::new("gr1demo")],
        ..lab::emulator::Knobs::default()
    });
    let function_process = FunctionProcess::spawn(&function, &runtime, &env)?;
    println!(
        "== function started through the Lambda Runtime API at {}",
        runtime.address()
    );

    for (name, what) in DEMO_EVENTS {
        let body = std::fs::read(events_dir.join(name))
            .map_err(|e| LabError::Setup(format!("events/{name}: {e}")))?;
        println!("\n-- events/{name}: {what}");
        let outcome = runtime.invoke(body, Duration::from_secs(30)).await?;
        match &outcome {
            Outcome::Response { body } => println!(
                "   lambda: ok -> {}",
                body["record"].as_str().unwrap_or("?")
            ),
            Outcome::Error {
                error_type,
                error_message,
            } => {
                println!("   lambda: error {error_type}");
                println!("           {error_message}");
            }
        }
        if let Some(id) = job_id(name, &outcome, &events_dir) {
            if let Some(record) = lab.record(&id).await? {
                print_record(&id, &record);
            }
            if let Some(lines) = lab.batch_lines(&id).await? {
                println!("   batch {id}.jsonl: {} lines", lines.len());
                for line in lines.iter().take(3) {
                    println!(
                        "     [{}] {} {}",
                        line["index"],
                        line["status"],
                        line["output"]["text"].as_str().unwrap_or_default()
                    );
                }
            }
        }
    }

    println!("\n== messages on {}", queue.arn);
    for message in services.receive_all(&queue.url).await? {
        let record = message.json()?;
        println!(
            "   group={} dedup={} job_id={} output: {}",
            message.group_id.as_deref().unwrap_or("-"),
            message.deduplication_id.as_deref().unwrap_or("-"),
            record["job_id"],
            record["output"]["text"].as_str().unwrap_or_default()
        );
    }

    println!("\n== Bedrock calls, by signer (seen by the emulator's SigV4 check)");
    for call in lab.bedrock.calls() {
        println!(
            "   {} {:<40} {} as {}",
            call.status,
            call.model_id,
            call.account.as_deref().unwrap_or("?"),
            call.principal_arn.as_deref().unwrap_or("?")
        );
    }
    let sessions = lab.role_a_sessions().await?;
    println!(
        "   AssumeRole calls into RoleA: {} (cold start only)",
        sessions.len()
    );
    println!("\n== records in s3://{BUCKET}/");
    for key in lab.record_keys().await? {
        println!("   {key}");
    }
    drop(function_process);
    println!("\n== lab stopped");
    Ok(())
}

/// The record key for an event: the job id, the envelope id, or (for a bare
/// job without id) the one in the Lambda response.
fn job_id(name: &str, outcome: &Outcome, events_dir: &Path) -> Option<String> {
    if let Outcome::Response { body } = outcome {
        return body["job_id"].as_str().map(str::to_owned);
    }
    let event: Value = serde_json::from_slice(&std::fs::read(events_dir.join(name)).ok()?).ok()?;
    event["id"].as_str().map(str::to_owned)
}

fn print_record(id: &str, record: &Value) {
    println!(
        "   record {id}.json: status={} shape={} model={}",
        record["status"], record["shape"], record["model"]
    );
    if let Some(text) = record["output"]["text"].as_str() {
        println!("     output: {text}");
        if !record["output"]["json"].is_null() {
            println!("     json:   {}", record["output"]["json"]);
        }
        if let Some(tier) = record["output"]["service_tier"].as_str() {
            println!("     tier:   {tier}");
        }
        println!(
            "     usage:  {}  stop_reason: {}",
            record["usage"], record["output"]["stop_reason"]
        );
    }
    if !record["error"].is_null() {
        println!(
            "     error:  {} (retryable: {})",
            record["error"]["type"], record["error"]["retryable"]
        );
    }
}

async fn up() -> Result<(), LabError> {
    let lab = Lab::start().await?;
    let dir = workspace_root().join(".lab");
    std::fs::create_dir_all(&dir).map_err(|e| LabError::Setup(e.to_string()))?;
    let env_file = dir.join("function.env");
    let mut text = String::new();
    // Quoted: session tokens hold `+`, `/` and `=`, which dotenv parsers reject bare.
    for (key, value) in lab.function_env() {
        text.push_str(&format!("{key}=\"{value}\"\n"));
    }
    text.push_str("AWS_REGION=\"us-east-1\"\n");
    std::fs::write(&env_file, text).map_err(|e| LabError::Setup(e.to_string()))?;
    println!(
        "lab up: moto {} , bedrock {}",
        lab.moto.endpoint(),
        lab.bedrock.endpoint()
    );
    println!("function environment written to {}", env_file.display());
    println!("in another shell:");
    println!("  .venv/bin/cargo-lambda lambda watch --env-file .lab/function.env");
    println!(
        "  .venv/bin/cargo-lambda lambda invoke bedrock-relay --data-file events/job-event.json"
    );
    println!("Ctrl-C stops the lab.");
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}
