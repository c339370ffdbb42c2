//! The benchmark: the release binary and two Python baselines, each driven
//! through the same Runtime API against the same lab, measured from outside
//! the process so every variant is measured the same way.
//!
//! Figures per variant: init (process start → first `/next`), first
//! invocation, warm wall time per event, CPU (user + sys of the process) per
//! warm event, peak RSS, AssumeRole calls per 100 warm events, package size.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::process::Command;

use crate::moto::workspace_root;
use crate::runtime_api::{FunctionProcess, Outcome, RuntimeApi};
use crate::{Lab, LabError};

/// How a variant is started.
#[derive(Debug, Clone)]
pub enum Program {
    /// A native binary.
    Binary(PathBuf),
    /// `python -m awslambdaric <module>.handler`, run in `bench/python`.
    Python {
        /// The interpreter (the lab's venv).
        interpreter: PathBuf,
        /// The handler module.
        module: String,
    },
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// The variant's name.
    pub name: String,
    /// Process start → first `/next`, ms (median of the cold starts).
    pub init_ms: f64,
    /// Wall time of the first event, ms (median of the cold starts).
    pub first_ms: f64,
    /// Median wall time of a warm event, ms.
    pub warm_p50_ms: f64,
    /// Mean wall time per warm event outside the emulators (the function,
    /// the Runtime API and the network between them), ms.
    pub added_per_event_ms: f64,
    /// User + sys CPU per warm event, ms.
    pub cpu_per_event_ms: f64,
    /// Peak resident set, MB.
    pub peak_rss_mb: f64,
    /// AssumeRole calls per 100 warm events.
    pub sts_per_100: f64,
    /// Package size, MB (binary or zip); `None` when not applicable.
    pub package_mb: Option<f64>,
    /// Warm events that failed.
    pub failures: usize,
}

/// Runs one variant for `warm_events` warm events.
pub async fn measure(
    name: &str,
    program: &Program,
    warm_events: usize,
    package: Option<&Path>,
) -> Result<Figures, LabError> {
    let lab = Lab::start().await?;
    // Every variant reaches the emulators through keep-alive fronts, as it
    // would reach S3, STS and Bedrock (moto itself closes the connection after
    // each answer); the fronts also time the emulators, so the time a variant
    // adds beyond them can be told apart.
    let moto_front = crate::stub::KeepAliveFront::start(lab.moto.endpoint()).await?;
    let bedrock_front = crate::stub::KeepAliveFront::start(&lab.bedrock.endpoint()).await?;
    let emulators_busy = || moto_front.busy() + bedrock_front.busy();
    let mut env = lab.function_env();
    for (name, value) in &mut env {
        match name.as_str() {
            "AWS_ENDPOINT_URL" => *value = moto_front.endpoint(),
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME" => *value = bedrock_front.endpoint(),
            _ => {}
        }
    }
    env.push(("AWS_LAMBDA_LOG_LEVEL".into(), "warn".into()));
    let command = || match program {
        Program::Binary(path) => Command::new(path),
        Program::Python {
            interpreter,
            module,
        } => {
            let mut command = Command::new(interpreter);
            command
                .args(["-m", "awslambdaric", &format!("{module}.handler")])
                .current_dir(workspace_root().join("bench/python"));
            command
        }
    };
    let template: serde_json::Value = serde_json::from_slice(
        &std::fs::read(workspace_root().join("events/job-event.json"))
            .map_err(|e| LabError::Setup(e.to_string()))?,
    )?;
    // Every event is a new one: a redelivered event would find its result and
    // skip the model call, which is not what a warm event costs.
    let event_numbered = |n: usize| {
        let mut event = template.clone();
        event["id"] = serde_json::json!(format!("00000000-0000-4000-8000-{n:012}"));
        event.to_string().into_bytes()
    };

    // Init and the first event from several cold starts (medians): one start
    // is at the mercy of the page cache and the scheduler. The last process
    // stays up for the warm events.
    let mut inits = Vec::with_capacity(COLD_STARTS);
    let mut firsts = Vec::with_capacity(COLD_STARTS);
    let mut warm = None;
    for start in 0..COLD_STARTS {
        let runtime = RuntimeApi::start().await?;
        let started = Instant::now();
        let function = FunctionProcess::spawn_command(command(), &runtime, &env)?;
        // The first event waits for init; init ends at the first poll.
        let first_started = Instant::now();
        let first = runtime
            .invoke(event_numbered(1_000_000 + start), Duration::from_secs(60))
            .await?;
        firsts.push(ms(first_started.elapsed()));
        if let Outcome::Error {
            error_type,
            error_message,
        } = &first
        {
            return Err(LabError::Function(format!(
                "{name}: first event failed: {error_type}: {error_message}"
            )));
        }
        inits.push(
            runtime
                .first_poll()
                .map_or(f64::NAN, |t| ms(t.duration_since(started))),
        );
        warm = Some((runtime, function));
    }
    let Some((runtime, function)) = warm else {
        return Err(LabError::Setup("no cold start ran".into()));
    };
    let pid = function
        .pid()
        .ok_or_else(|| LabError::Function("no pid".into()))?;

    let sessions_before = lab.role_a_sessions().await?.len();
    let cpu_before = cpu_ticks(pid)?;
    let busy_before = emulators_busy();
    let warm_started = Instant::now();
    let mut walls = Vec::with_capacity(warm_events);
    let mut failures = 0;
    for n in 1..=warm_events {
        let event = event_numbered(n);
        let t = Instant::now();
        if runtime
            .invoke(event, Duration::from_secs(30))
            .await?
            .error_type()
            .is_some()
        {
            failures += 1;
        }
        walls.push(ms(t.elapsed()));
    }
    let cpu_after = cpu_ticks(pid)?;
    let warm_wall = warm_started.elapsed();
    let in_emulators = emulators_busy() - busy_before;
    let sessions_after = lab.role_a_sessions().await?.len();
    let peak_rss_mb = peak_rss_kb(pid)? / 1024.0;
    drop(function);

    let ticks_per_second = 100.0; // USER_HZ on Linux
    Ok(Figures {
        name: name.to_owned(),
        init_ms: median(&mut inits),
        first_ms: median(&mut firsts),
        warm_p50_ms: median(&mut walls),
        added_per_event_ms: ms(warm_wall.saturating_sub(in_emulators)) / warm_events as f64,
        cpu_per_event_ms: (cpu_after - cpu_before) as f64 / ticks_per_second * 1000.0
            / warm_events as f64,
        peak_rss_mb,
        sts_per_100: (sessions_after - sessions_before) as f64 * 100.0 / warm_events as f64,
        package_mb: package
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len() as f64 / 1_048_576.0),
        failures,
    })
}

/// Cold starts per variant; init and first-event figures are their medians.
const COLD_STARTS: usize = 5;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// utime + stime of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64, LabError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| LabError::Function(e.to_string()))?;
    // Fields after the `(comm)`, which may hold spaces: state is field 3, utime 14, stime 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(field(14) + field(15))
}

pub(crate) fn peak_rss_kb(pid: u32) -> Result<f64, LabError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| LabError::Function(e.to_string()))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN))
}

/// The figures as a Markdown table, with Rust/Python ratios.
pub fn table(rows: &[Figures], hello: Option<&Figures>) -> String {
    let mut out = String::from("| | ");
    out.push_str(
        &rows
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
    );
    out.push_str(" |\n|---|");
    out.push_str(&"---|".repeat(rows.len()));
    out.push('\n');
    let line = |label: &str, value: &dyn Fn(&Figures) -> String| {
        let cells: Vec<String> = rows.iter().map(value).collect();
        format!("| {label} | {} |\n", cells.join(" | "))
    };
    out.push_str(&line("init (process start → first /next)", &|r| {
        format!("{:.1} ms", r.init_ms)
    }));
    out.push_str(&line("first invocation", &|r| {
        format!("{:.1} ms", r.first_ms)
    }));
    out.push_str(&line("warm wall per event (p50)", &|r| {
        format!("{:.2} ms", r.warm_p50_ms)
    }));
    out.push_str(&line("warm time added beyond the emulators (mean)", &|r| {
        format!("{:.2} ms", r.added_per_event_ms)
    }));
    out.push_str(&line("CPU per warm event (user+sys)", &|r| {
        format!("{:.3} ms", r.cpu_per_event_ms)
    }));
    out.push_str(&line("peak RSS", &|r| format!("{:.1} MB", r.peak_rss_mb)));
    out.push_str(&line("AssumeRole per 100 warm events", &|r| {
        format!("{:.0}", r.sts_per_100)
    }));
    out.push_str(&line("package", &|r| {
        r.package_mb
            .map_or("n/a".into(), |mb| format!("{mb:.2} MB"))
    }));
    out.push_str(&line("failed warm events", &|r| r.failures.to_string()));
    if let Some(rust) = rows.first() {
        for other in &rows[1..] {
            out.push_str(&format!(
                "\n{} / {}: init {:.1}x faster, CPU per event {:.1}x less, peak RSS {:.1}x less\n",
                rust.name,
                other.name,
                other.init_ms / rust.init_ms,
                other.cpu_per_event_ms / rust.cpu_per_event_ms.max(0.001),
                other.peak_rss_mb / rust.peak_rss_mb
            ));
        }
        if let Some(hello) = hello {
            out.push_str(&format!(
                "\nhello-world lambda_runtime init: {:.1} ms; {} init is {:.2}x that\n",
                hello.init_ms,
                rust.name,
                rust.init_ms / hello.init_ms
            ));
            // The floor under any Rust function here: the Runtime API loop
            // (`/next`, then the response) and nothing else.
            out.push_str(&format!(
                "\nhello-world lambda_runtime warm event: CPU {:.3} ms, time added {:.2} ms \
                 (the Runtime API loop alone); {} spends {:.3} ms CPU and {:.2} ms more\n",
                hello.cpu_per_event_ms,
                hello.added_per_event_ms,
                rust.name,
                rust.cpu_per_event_ms - hello.cpu_per_event_ms,
                rust.added_per_event_ms - hello.added_per_event_ms
            ));
        }
    }
    out
}

/// A bar chart (SVG) of init and CPU per warm event, log scale.
pub fn chart(rows: &[Figures]) -> String {
    let width = 720.0;
    let bar_height = 22.0;
    let mut y = 40.0;
    let mut body = String::new();
    let max_log = rows
        .iter()
        .flat_map(|r| [r.init_ms, r.cpu_per_event_ms])
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(|v| (v * 1000.0).log10())
        .fold(1.0_f64, f64::max);
    for (title, value, color) in [
        (
            "init (ms)",
            &(|r: &Figures| r.init_ms) as &dyn Fn(&Figures) -> f64,
            "#2f6db5",
        ),
        (
            "CPU per warm event (ms)",
            &(|r: &Figures| r.cpu_per_event_ms),
            "#d9822b",
        ),
    ] {
        body.push_str(&format!(
            "<text x=\"10\" y=\"{y}\" font-weight=\"bold\">{title}</text>\n"
        ));
        y += 10.0;
        for row in rows {
            let v = value(row);
            let len = if v > 0.0 && v.is_finite() {
                (v * 1000.0).log10() / max_log * (width - 260.0)
            } else {
                0.0
            };
            body.push_str(&format!(
                "<text x=\"10\" y=\"{:.0}\">{}</text><rect x=\"170\" y=\"{:.0}\" width=\"{len:.0}\" height=\"{}\" fill=\"{color}\"/><text x=\"{:.0}\" y=\"{:.0}\">{v:.2}</text>\n",
                y + 15.0,
                row.name,
                y,
                bar_height - 4.0,
                175.0 + len,
                y + 15.0
            ));
            y += bar_height;
        }
        y += 20.0;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{y}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <text x=\"10\" y=\"20\" font-size=\"15\">bedrock-relay vs Python (log scale, same lab and Runtime API)</text>\n{body}</svg>\n"
    )
}

/// Batch throughput: one batch job spread over `accounts` pooled model
/// accounts, each with the same emulated quota and model latency.
#[derive(Debug, Clone, Serialize)]
pub struct BatchFigures {
    /// Pooled model accounts.
    pub accounts: usize,
    /// Items in the batch.
    pub items: usize,
    /// Quota per account, requests per minute.
    pub quota_rpm: u32,
    /// First model call → last answer, seconds.
    pub seconds: f64,
    /// Answered requests per minute over that time.
    pub achieved_rpm: f64,
    /// `achieved_rpm` / (`quota_rpm` × `accounts`).
    pub share_of_quota: f64,
    /// Items without a `succeeded` line in the result.
    pub lost: usize,
    /// Requests the emulator throttled.
    pub throttled: usize,
    /// Invocations it took (a batch cut by the deadline is retried).
    pub invocations: usize,
    /// The function's CPU (user + system) per item, ms, cold start included.
    pub cpu_per_item_ms: f64,
    /// The function's peak RSS, MB.
    pub peak_rss_mb: f64,
}

/// The emulated quota and latency for [`batch_throughput`].
#[derive(Debug, Clone, Copy)]
pub struct BatchLoad {
    /// Items in the batch.
    pub items: usize,
    /// Quota per account, requests per minute.
    pub quota_rpm: u32,
    /// The quota's window, ms (the quota scaled to it).
    pub quota_window_ms: u64,
    /// Model latency, ms.
    pub latency_ms: u64,
    /// `RELAY_MAX_CONCURRENCY`.
    pub concurrency: usize,
}

/// Runs one batch of `load.items` items over `accounts` pooled accounts
/// through the Runtime API, retrying the event while the relay reports the
/// batch incomplete (as Lambda would), and measures the rate the model
/// accounts were used at.
pub async fn batch_throughput(
    function: &Path,
    accounts: usize,
    load: BatchLoad,
) -> Result<BatchFigures, LabError> {
    use serde_json::json;

    let lab = Lab::start().await?;
    let mut targets = serde_json::Map::new();
    targets.insert(
        "a1".into(),
        json!({"role_arn": lab.role_a_arn, "external_id": crate::EXTERNAL_ID}),
    );
    for n in 2..=accounts {
        let account = format!("33333333333{n}");
        let role = lab.add_target_account(&account).await?;
        targets.insert(
            format!("a{n}"),
            json!({"role_arn": role, "external_id": crate::EXTERNAL_ID}),
        );
    }
    let aliases: Vec<String> = targets.keys().cloned().collect();
    lab.bedrock.set_knobs(crate::emulator::Knobs {
        latency_ms: load.latency_ms,
        quota_rpm: Some(load.quota_rpm),
        quota_window_ms: Some(load.quota_window_ms),
        ..Default::default()
    });
    let runtime = RuntimeApi::start().await?;
    let mut env = lab.function_env();
    env.retain(|(k, _)| k != "RELAY_ROLE_ARN" && k != "RELAY_EXTERNAL_ID");
    env.push((
        "RELAY_TARGETS".into(),
        serde_json::Value::Object(targets).to_string(),
    ));
    env.push(("RELAY_MAX_CONCURRENCY".into(), load.concurrency.to_string()));
    env.push(("AWS_LAMBDA_LOG_LEVEL".into(), "warn".into()));
    env.push(("RELAY_METRICS_NAMESPACE".into(), "Bench".into()));
    let function = FunctionProcess::spawn(function, &runtime, &env)?;
    let pid = function
        .pid()
        .ok_or_else(|| LabError::Function("no pid".into()))?;

    let job_id = format!("batch-{accounts}");
    let target = if aliases.len() == 1 {
        json!(aliases[0])
    } else {
        json!(aliases)
    };
    let event = json!({
        "id": job_id,
        "model": "amazon.nova-lite-v1:0",
        "target": target,
        "prompt": "Classify item {{ item }}",
        "items": (0..load.items).collect::<Vec<_>>(),
    })
    .to_string();
    let mut invocations = 0;
    loop {
        invocations += 1;
        let outcome = runtime
            .invoke(event.clone(), Duration::from_secs(900))
            .await?;
        match outcome.error_type() {
            Some(error) if error.starts_with("Retryable.") && invocations < 5 => continue,
            _ => break,
        }
    }

    let cpu_seconds = cpu_ticks(pid)? as f64 / 100.0; // USER_HZ on Linux
    let peak_rss_mb = peak_rss_kb(pid)? / 1024.0;
    drop(function);
    let calls = lab.bedrock.calls();
    let answered: Vec<u128> = calls
        .iter()
        .filter(|c| c.status == 200)
        .map(|c| c.at_ms)
        .collect();
    let first = calls.iter().map(|c| c.at_ms).min().unwrap_or(0);
    if std::env::var_os("BENCH_DEBUG").is_some() {
        let mut per_second: std::collections::BTreeMap<u128, (usize, usize)> = Default::default();
        for c in &calls {
            let e = per_second.entry((c.at_ms - first) / 1000).or_default();
            if c.status == 200 {
                e.0 += 1
            } else {
                e.1 += 1
            }
        }
        eprintln!("per second (accepted, throttled): {per_second:?}");
    }
    let last = answered.iter().copied().max().unwrap_or(first) + u128::from(load.latency_ms);
    let seconds = (last - first) as f64 / 1000.0;
    let achieved_rpm = answered.len() as f64 / seconds.max(0.001) * 60.0;
    let lines = lab.batch_lines(&job_id).await?.unwrap_or_default();
    let succeeded = lines.iter().filter(|l| l["status"] == "succeeded").count();
    Ok(BatchFigures {
        accounts,
        items: load.items,
        quota_rpm: load.quota_rpm,
        seconds,
        achieved_rpm,
        share_of_quota: achieved_rpm / (f64::from(load.quota_rpm) * accounts as f64),
        lost: load.items - succeeded.min(load.items),
        throttled: calls.iter().filter(|c| c.status == 429).count(),
        invocations,
        cpu_per_item_ms: cpu_seconds * 1000.0 / load.items.max(1) as f64,
        peak_rss_mb,
    })
}

/// The batch figures as a Markdown table.
pub fn batch_table(rows: &[BatchFigures]) -> String {
    let mut out = String::from(
        "| pooled accounts | items | quota per account | time | achieved | share of the pooled quota | throttled requests | invocations | lost | CPU per item | peak RSS |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} rpm | {:.1} s | {:.0} rpm | {:.1} % | {} | {} | {} | {:.3} ms | {:.1} MB |\n",
            r.accounts,
            r.items,
            r.quota_rpm,
            r.seconds,
            r.achieved_rpm,
            r.share_of_quota * 100.0,
            r.throttled,
            r.invocations,
            r.lost,
            r.cpu_per_item_ms,
            r.peak_rss_mb
        ));
    }
    if let [one, two, ..] = rows {
        out.push_str(&format!(
            "\n{} accounts / 1 account: {:.2}x the throughput\n",
            two.accounts,
            two.achieved_rpm / one.achieved_rpm.max(0.001)
        ));
    }
    out
}
