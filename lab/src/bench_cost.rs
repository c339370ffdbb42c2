//! The cost benchmark: the same `items_from` batch, every item sharing a
//! 2,000-token system prompt, run through the function four times: on-demand
//! (fanned out over the work queue) without and with prompt caching
//! (`cache: 5m`), and as a Bedrock batch job in account A without and with
//! it; with what Bedrock would bill for each from the tokens the manifests
//! count (cache reads and writes apart) and [`PRICES`].
//!
//! The lab's batch-job plane applies no prompt cache to batch records: no AWS
//! page says whether batch inference honours cache points. The table adds the
//! projection "batch job, cache honoured": the cached on-demand run's tokens
//! at the batch price.
//!
//! The lab's wall times are the lab's: its batch-job plane answers 1,000
//! records a second, where Bedrock takes minutes to a day (within the job's
//! timeout). What carries over is the spend and what each mode costs in model
//! calls and quota: a batch job uses none of the on-demand quota.

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{json, Value};

use crate::esm::{self, Mapping};
use crate::runtime_api::{FunctionProcess, Outcome};
use crate::services::{sdk_config, Services};
use crate::{Lab, LabError, ACCOUNT_B, BUCKET, PREFIX};

const INPUTS: &str = "relay-inputs";
const STAGING: &str = "relay-staging-a";
const MODEL: &str = "amazon.nova-lite-v1:0";

/// USD per 1,000 tokens, on-demand, by model: (input, output).
///
/// Source: the Amazon Bedrock pricing page (aws.amazon.com/bedrock/pricing),
/// Amazon Nova Lite in US East (N. Virginia), on-demand: $0.00006 per 1,000
/// input tokens, $0.00024 per 1,000 output tokens. Check the page for today's
/// prices and other regions.
pub const PRICES: [(&str, f64, f64); 1] = [(MODEL, 0.000_06, 0.000_24)];

/// What batch inference costs against on-demand: 50 % (the Bedrock pricing
/// page's batch column; AWS's batch-orchestrator sample and ML blog say the
/// same).
pub const BATCH_PRICE_RATIO: f64 = 0.5;

/// A prompt-cache read against an input token: 0.1x (the Bedrock pricing
/// page's prompt-caching columns and the prompt-caching user guide: "cache
/// read ... 90% discount").
pub const CACHE_READ_RATIO: f64 = 0.1;

/// A five-minute prompt-cache write against an input token: 1.25x (the
/// Bedrock pricing page's cache-write column for Claude models; some models,
/// Nova among them, bill writes at the input rate, which this overstates).
pub const CACHE_WRITE_RATIO: f64 = 1.25;

/// Words (the emulator's tokens) of the system prompt every item shares.
pub const SHARED_SYSTEM_TOKENS: usize = 2_000;

/// One mode's run.
#[derive(Debug, Clone)]
pub struct CostFigures {
    /// `on-demand`, `on-demand, cached`, `batch job`, ...
    pub mode: &'static str,
    /// Figures derived from another run's tokens, not measured.
    pub projected: bool,
    /// Items in the batch.
    pub items: usize,
    /// Items that succeeded.
    pub succeeded: u64,
    /// The event sent → the manifest in S3, in the lab.
    pub wall_s: f64,
    /// On-demand model calls the emulator answered.
    pub on_demand_calls: usize,
    /// Batch jobs the emulator ran.
    pub batch_jobs: usize,
    /// Prompt tokens, from the manifest.
    pub input_tokens: u64,
    /// Generated tokens, from the manifest.
    pub output_tokens: u64,
    /// Prompt tokens read from the cache, from the manifest.
    pub cache_read_tokens: u64,
    /// Prompt tokens written to the cache, from the manifest.
    pub cache_write_tokens: u64,
    /// USD for the whole batch.
    pub spend: f64,
}

impl CostFigures {
    /// A run of `items` items whose `manifest` is in, started at `started`,
    /// priced at `price_ratio` of on-demand (no calls or jobs counted yet).
    fn measured(
        mode: &'static str,
        items: usize,
        manifest: &Value,
        started: Instant,
        price_ratio: f64,
    ) -> Self {
        let used = tokens(manifest);
        Self {
            mode,
            projected: false,
            items,
            succeeded: manifest["succeeded"].as_u64().unwrap_or(0),
            wall_s: started.elapsed().as_secs_f64(),
            on_demand_calls: 0,
            batch_jobs: 0,
            input_tokens: used.input,
            output_tokens: used.output,
            cache_read_tokens: used.cache_read,
            cache_write_tokens: used.cache_write,
            spend: on_demand_price(MODEL, used) * price_ratio,
        }
    }

    /// USD per 1,000 items.
    pub fn per_thousand(&self) -> f64 {
        self.spend / self.items as f64 * 1000.0
    }
}

/// Token counts of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tokens {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
}

/// The tokens of a manifest, summed over its targets and models.
fn tokens(manifest: &Value) -> Tokens {
    let rows = manifest["by_target"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sum = |field: &str| rows.iter().filter_map(|r| r[field].as_u64()).sum();
    Tokens {
        input: sum("input_tokens"),
        output: sum("output_tokens"),
        cache_read: sum("cache_read_input_tokens"),
        cache_write: sum("cache_write_input_tokens"),
    }
}

/// What `tokens` of `model` cost on-demand: input and output at their
/// prices, cache reads and writes at theirs against the input price.
fn on_demand_price(model: &str, tokens: Tokens) -> f64 {
    let (_, per_in, per_out) = PRICES
        .iter()
        .find(|(m, _, _)| *m == model)
        .copied()
        .unwrap_or((model, 0.0, 0.0));
    let input = tokens.input as f64
        + tokens.cache_read as f64 * CACHE_READ_RATIO
        + tokens.cache_write as f64 * CACHE_WRITE_RATIO;
    input / 1000.0 * per_in + tokens.output as f64 / 1000.0 * per_out
}

/// The system prompt every item shares: [`SHARED_SYSTEM_TOKENS`] words.
fn shared_system() -> String {
    let rules = [
        "Label",
        "each",
        "review",
        "positive,",
        "negative",
        "or",
        "mixed;",
        "quote",
        "the",
        "words",
        "that",
        "decide",
        "it.",
    ];
    (0..SHARED_SYSTEM_TOKENS)
        .map(|i| rules[i % rules.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `items` items on-demand and as a batch job through `function`.
pub async fn run(function: &Path, items: usize) -> Result<Vec<CostFigures>, LabError> {
    let lab = Lab::start().await?;
    let (staging, role) = lab.enable_batch_jobs(STAGING).await?;
    let services = Services::of(&lab).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(lab.moto.endpoint(), &lab.admin_b).await);
    let work = services.create_queue("work").await?;
    sqs.set_queue_attributes()
        .queue_url(&work.url)
        .attributes(QueueAttributeName::VisibilityTimeout, "720")
        .send()
        .await
        .map_err(|e| LabError::Aws(format!("work queue: {e:?}")))?;
    lab.create_bucket(INPUTS).await?;
    let body: String = (0..items)
        .map(|i| {
            format!(
                "{}\n",
                json!({"text": format!("review number {i} of the nightly batch")})
            )
        })
        .collect();
    lab.put_object(INPUTS, "cost/items.jsonl", body, "application/x-ndjson")
        .await?;

    let mut env = lab.function_env();
    let store = format!("s3://{BUCKET}/{PREFIX}_batches/");
    for (key, value) in [
        ("RELAY_WORK_QUEUE", work.url.as_str()),
        ("RELAY_WORK_STORE", store.as_str()),
        ("RELAY_BATCH_STAGING", staging.as_str()),
        ("RELAY_BATCH_ROLE_ARN", role.as_str()),
        ("RELAY_MAX_CONCURRENCY", "8"),
        // Chunks of 100: the on-demand run fans out (and gets a manifest)
        // even for a few hundred items.
        ("RELAY_CHUNK_ITEMS", "100"),
    ] {
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
    }
    let (runtimes, functions) = FunctionProcess::spawn_many(function, 4, &env).await?;
    let timeout = Duration::from_secs(120);
    let invoke = |event: Value| {
        let runtime = &runtimes[0];
        async move {
            runtime
                .invoke(event.to_string().into_bytes(), timeout)
                .await
        }
    };
    let system = shared_system();
    // Bedrock caches nothing under a checkpoint's minimum (1,024 tokens for
    // many models); the shared prompt is over it, as a real one must be.
    lab.bedrock.set_knobs(crate::emulator::Knobs {
        cache_min_tokens: 1024,
        ..crate::emulator::Knobs::default()
    });
    let job = |id: &str, extra: Value| {
        let mut detail = json!({
            "model": MODEL,
            "system": system,
            "prompt": "Give the sentiment of this review in one word: {{ item.text }}",
            "items_from": "s3://relay-inputs/cost/items.jsonl",
        });
        if let (Some(detail), Some(extra)) = (detail.as_object_mut(), extra.as_object()) {
            detail.extend(extra.clone());
        }
        json!({"version": "0", "id": id, "detail-type": "Bedrock Relay Job", "source": "bench.cost",
            "account": ACCOUNT_B, "time": "2026-12-01T02:00:00Z", "region": "us-east-1",
            "resources": [], "detail": detail})
    };
    let manifest = |id: String| {
        let lab = &lab;
        async move {
            let key = format!("{PREFIX}{id}.manifest.json");
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                if let Some(bytes) = lab.object(BUCKET, &key).await? {
                    return serde_json::from_slice::<Value>(&bytes)
                        .map_err(|e| LabError::Setup(format!("manifest: {e}")));
                }
                if Instant::now() > deadline {
                    return Err(LabError::Setup(format!("no manifest for {id}")));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let answered = |lab: &Lab| {
        lab.bedrock
            .calls()
            .iter()
            .filter(|c| {
                c.status == 200 && matches!(c.operation.as_str(), "Converse" | "InvokeModel")
            })
            .count()
    };

    let mapping = Mapping {
        queue_url: work.url.clone(),
        queue_arn: work.arn.clone(),
        batch_size: 1,
        maximum_concurrency: runtimes.len(),
        function_timeout: timeout,
    };
    let mut rows = Vec::new();
    // On-demand, fanned out over the work queue: without and with the cache.
    for (mode, id, extra) in [
        ("on-demand", "cost-on-demand", json!({"mode": "on-demand"})),
        (
            "on-demand, cached",
            "cost-on-demand-cached",
            json!({"mode": "on-demand", "cache": "5m"}),
        ),
    ] {
        let calls = answered(&lab);
        let started = Instant::now();
        expect_answer(invoke(job(id, extra)).await?)?;
        esm::run(
            &sqs,
            &mapping,
            &runtimes,
            Duration::from_secs(2),
            Duration::from_secs(600),
        )
        .await?;
        let manifest = manifest(id.into()).await?;
        rows.push(CostFigures {
            on_demand_calls: answered(&lab) - calls,
            ..CostFigures::measured(mode, items, &manifest, started, 1.0)
        });
    }

    // The same batch as a batch job (`auto`: it may take two days).
    let plane = lab.bedrock.batch_jobs();
    for (mode, id, extra) in [
        (
            "batch job",
            "cost-batch-job",
            json!({"complete_within": "P2D"}),
        ),
        (
            "batch job, cache points sent",
            "cost-batch-job-cached",
            json!({"complete_within": "P2D", "cache": "5m"}),
        ),
    ] {
        let calls = answered(&lab);
        let jobs_before = plane.jobs().len();
        let started = Instant::now();
        expect_answer(invoke(job(id, extra)).await?)?;
        for job in plane.jobs() {
            plane
                .wait_for_end(&job.job_arn, Duration::from_secs(600))
                .await?;
        }
        expect_answer(invoke(json!({"relay": "check-batch-jobs"})).await?)?;
        let manifest = manifest(id.into()).await?;
        rows.push(CostFigures {
            on_demand_calls: answered(&lab) - calls,
            batch_jobs: plane.jobs().len() - jobs_before,
            ..CostFigures::measured(mode, items, &manifest, started, BATCH_PRICE_RATIO)
        });
    }
    if let Some(cached) = rows.iter().find(|r| r.mode == "on-demand, cached").cloned() {
        let batch_jobs = rows.last().map_or(0, |r| r.batch_jobs);
        rows.push(CostFigures {
            mode: "batch job, cache honoured (projection)",
            projected: true,
            on_demand_calls: 0,
            batch_jobs,
            spend: cached.spend * BATCH_PRICE_RATIO,
            ..cached
        });
    }
    drop(functions);
    Ok(rows)
}

fn expect_answer(outcome: Outcome) -> Result<(), LabError> {
    match outcome {
        Outcome::Response { .. } => Ok(()),
        Outcome::Error {
            error_type,
            error_message,
        } => Err(LabError::Setup(format!("{error_type}: {error_message}"))),
    }
}

/// The figures as a Markdown table.
pub fn table(rows: &[CostFigures]) -> String {
    let mut out = String::from("| | ");
    out += &rows.iter().map(|r| r.mode).collect::<Vec<_>>().join(" | ");
    out += " |\n|---|";
    out += &"---|".repeat(rows.len());
    out.push('\n');
    let mut line = |name: &str, cell: &dyn Fn(&CostFigures) -> String| {
        out += &format!(
            "| {name} | {} |\n",
            rows.iter().map(cell).collect::<Vec<_>>().join(" | ")
        );
    };
    line("items (succeeded)", &|r| {
        format!("{} ({})", r.items, r.succeeded)
    });
    line("wall time in the lab", &|r| match r.projected {
        true => "—".into(),
        false => format!("{:.1} s", r.wall_s),
    });
    line("on-demand model calls", &|r| r.on_demand_calls.to_string());
    line("batch jobs", &|r| r.batch_jobs.to_string());
    line("input / output tokens", &|r| {
        format!("{} / {}", r.input_tokens, r.output_tokens)
    });
    line("cache read / write tokens", &|r| {
        format!("{} / {}", r.cache_read_tokens, r.cache_write_tokens)
    });
    line("spend for the batch", &|r| format!("${:.6}", r.spend));
    line("**spend per 1,000 items**", &|r| {
        format!("**${:.6}**", r.per_thousand())
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch job's spend is half the on-demand spend for the same tokens;
    /// cache reads cost a tenth of input and writes a quarter more.
    #[test]
    fn prices_follow_the_table_and_the_ratios() {
        let plain = |input, output| Tokens {
            input,
            output,
            ..Tokens::default()
        };
        let on_demand = on_demand_price(MODEL, plain(1_000_000, 500_000));
        assert!((on_demand - (0.06 + 0.12)).abs() < 1e-9, "{on_demand}");
        assert!((on_demand * BATCH_PRICE_RATIO - 0.09).abs() < 1e-9);
        let cached = on_demand_price(
            MODEL,
            Tokens {
                cache_read: 1_000_000,
                cache_write: 1_000_000,
                ..Tokens::default()
            },
        );
        assert!((cached - 0.06 * (0.1 + 1.25)).abs() < 1e-9, "{cached}");
        let manifest = json!({"by_target": [
            {"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 7},
            {"input_tokens": 5, "output_tokens": 1, "cache_write_input_tokens": 3}]});
        assert_eq!(
            tokens(&manifest),
            Tokens {
                input: 15,
                output: 21,
                cache_read: 7,
                cache_write: 3
            }
        );
        assert_eq!(
            shared_system().split_whitespace().count(),
            SHARED_SYSTEM_TOKENS
        );
    }
}
