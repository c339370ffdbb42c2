//! The soak (a script, not a timed test): many events through the Runtime API
//! with injected faults and duplicate deliveries, then a count of what
//! happened to each. Nothing may be lost and nothing answered twice.
//!
//! Two function processes take events from one queue, as two Lambda
//! instances would. The mix: single jobs, small batches, duplicates (some
//! back to back, so that both processes run the same event at once; some
//! later) and invalid jobs. Lambda's asynchronous retry is played out: an
//! outcome of type `Retryable.*` (or no answer at all) is sent again after a
//! pause, at most twice (`MaximumRetryAttempts: 2`); `NonRetryable.*` is not.
//! Meanwhile the Bedrock emulator throws bursts of 429/500/503, holds a quota
//! and slows down now and then.
//!
//! Claims rest on S3 conditional writes. Plain `moto_server` checks
//! `If-None-Match` / `If-Match` and then writes, in a threaded server, so two
//! claims landing within a few milliseconds could both win there; the lab
//! starts moto through `lab/moto_server.py`, which serialises the writes to a
//! key, so that one of them is refused (412) as S3 refuses it (412/409). An
//! item answered twice is a relay fault; it is printed with its deliveries and
//! model calls.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::emulator::{Fault, Knobs};
use crate::runtime_api::{FunctionProcess, Outcome, RuntimeApi};
use crate::{Lab, LabError};

const MODEL: &str = "amazon.nova-lite-v1:0";
/// The function's remaining time per invocation: short, so that latency
/// spikes cut batches and their retries carry on.
const DEADLINE: Duration = Duration::from_secs(5);
/// Lambda's `MaximumRetryAttempts` for asynchronous invocations.
const MAX_RETRIES: u32 = 2;
/// Lambda waits a minute and more before a retry; the soak waits this long,
/// enough for the failed invocation's claim to be released or expire.
const RETRY_PAUSE: Duration = Duration::from_secs(6);
/// Function processes (Lambda instances) taking events at once.
const INSTANCES: usize = 2;

/// What an event asks for.
#[derive(Debug, Clone)]
enum Kind {
    /// One job: its prompt.
    Single(String),
    /// A batch: its items (each is also the prompt sent).
    Batch(Vec<String>),
    /// A job that must fail for good (a bad template, an unknown field, a
    /// destination not allowed).
    Invalid,
}

/// One distinct event (duplicates send the same bytes again).
#[derive(Debug, Clone)]
struct Event {
    id: String,
    kind: Kind,
    body: Vec<u8>,
}

/// One delivery to send: an event, which attempt, and not before when.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    event: usize,
    attempt: u32,
    not_before: Instant,
}

/// How each event's deliveries ended.
#[derive(Debug, Default)]
struct Ledger {
    /// Invocations made, retries included.
    invocations: usize,
    succeeded: usize,
    non_retryable: usize,
    retryable: usize,
    /// Invocations the function did not answer within the deadline.
    unanswered: usize,
    /// Error types seen, with counts.
    error_types: HashMap<String, usize>,
    /// Deliveries that still failed after the last retry (Lambda's DLQ).
    dead_letters: Vec<usize>,
    /// Events whose invalid job was not refused as non-retryable.
    invalid_accepted: usize,
    /// Each event's outcomes in order, with when each delivery started.
    history: HashMap<usize, Vec<String>>,
}

/// The soak's numbers.
#[derive(Debug, Default)]
pub struct SoakReport {
    /// Deliveries planned (first attempts, duplicates included).
    pub events_sent: usize,
    /// Distinct events among them.
    pub distinct_events: usize,
    /// Duplicate deliveries among them.
    pub duplicates: usize,
    /// Invocations made, retries included.
    pub invocations: usize,
    /// Invocations answered with a result.
    pub succeeded: usize,
    /// Invocations failed with `NonRetryable.*`.
    pub non_retryable: usize,
    /// Distinct events that are invalid on purpose.
    pub invalid_events: usize,
    /// Invocations failed with `Retryable.*` (each retried while attempts last).
    pub retryable: usize,
    /// Invocations not answered in time.
    pub unanswered: usize,
    /// Error types, most frequent first.
    pub error_types: Vec<(String, usize)>,
    /// Deliveries still failing after the last retry.
    pub dead_letters: usize,
    /// Invalid events that were not refused as non-retryable.
    pub invalid_accepted: usize,
    /// Single-job records with status `succeeded`.
    pub single_results: usize,
    /// Batch lines with status `succeeded`.
    pub batch_item_results: usize,
    /// Items (single jobs count as one) of the valid events.
    pub items_expected: usize,
    /// Records with status `failed` for the distinct events.
    pub error_records: usize,
    /// Model calls the emulator answered, and those it failed on purpose.
    pub model_calls_answered: usize,
    /// Model calls answered with an injected or quota error.
    pub model_calls_refused: usize,
    /// Most model calls answered for one item.
    pub max_calls_per_item: usize,
    /// Items of valid events with no succeeded result and not dead-lettered.
    pub lost: usize,
    /// Items the model answered more than once.
    pub duplicated: usize,
    /// Faults injected: bursts, quota phases, latency spikes.
    pub faults: String,
    /// Wall time.
    pub elapsed: Duration,
    /// For each item answered more than once: its prompt, the event's
    /// deliveries and the model calls, to see why.
    pub duplicate_details: Vec<String>,
}

impl SoakReport {
    /// Whether nothing was lost or answered twice.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.invalid_accepted == 0
    }

    /// The printed table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut row = |label: &str, value: String| {
            let _ = writeln!(out, "| {label:<58} | {value:>10} |");
        };
        row(
            "events sent (first deliveries)",
            self.events_sent.to_string(),
        );
        row("  distinct events", self.distinct_events.to_string());
        row("  duplicate deliveries", self.duplicates.to_string());
        row(
            "  invalid on purpose (distinct)",
            self.invalid_events.to_string(),
        );
        row(
            "invocations (retries included)",
            self.invocations.to_string(),
        );
        row("  succeeded", self.succeeded.to_string());
        row(
            "  NonRetryable.* (the invalid ones, and their duplicates)",
            self.non_retryable.to_string(),
        );
        row(
            "  Retryable.* (sent again while attempts last)",
            self.retryable.to_string(),
        );
        row("  not answered in time", self.unanswered.to_string());
        row(
            "deliveries still failing after 2 retries (DLQ)",
            self.dead_letters.to_string(),
        );
        row(
            "single-job results in S3 (status succeeded)",
            self.single_results.to_string(),
        );
        row(
            "batch lines in S3 (status succeeded)",
            self.batch_item_results.to_string(),
        );
        row(
            "items expected (valid events, single jobs count 1)",
            self.items_expected.to_string(),
        );
        row(
            "error records (status failed)",
            self.error_records.to_string(),
        );
        row(
            "model calls answered / refused (injected, quota)",
            format!(
                "{} / {}",
                self.model_calls_answered, self.model_calls_refused
            ),
        );
        row(
            "model calls answered per item (max)",
            self.max_calls_per_item.to_string(),
        );
        row(
            "invalid events not refused (must be 0)",
            self.invalid_accepted.to_string(),
        );
        row("items lost (must be 0)", self.lost.to_string());
        row(
            "items answered twice by the model (must be 0)",
            self.duplicated.to_string(),
        );
        row("wall time", format!("{:.1} s", self.elapsed.as_secs_f64()));
        let header = format!(
            "| {:<58} | {:>10} |\n|{}|{}|\n",
            "",
            "",
            "-".repeat(60),
            "-".repeat(12)
        );
        let mut text = header + &out;
        let _ = writeln!(text, "\nfaults: {}", self.faults);
        let types: Vec<String> = self
            .error_types
            .iter()
            .map(|(t, n)| format!("{t} x{n}"))
            .collect();
        let _ = writeln!(text, "error types: {}", types.join(", "));
        for detail in &self.duplicate_details {
            let _ = writeln!(text, "answered twice: {detail}");
        }
        text
    }
}

/// A small deterministic generator (SplitMix64): the same mix every run.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn envelope(id: &str, detail: Value) -> Vec<u8> {
    json!({
        "version": "0", "id": id, "detail-type": "Bedrock Relay Job",
        "source": "com.example.soak", "account": crate::ACCOUNT_B,
        "time": "2026-11-28T10:00:00Z", "region": crate::moto::REGION,
        "resources": [], "detail": detail,
    })
    .to_string()
    .into_bytes()
}

/// The distinct events and the delivery order (with duplicates) for `count`
/// deliveries.
fn plan(count: usize, mix: &mut Mix) -> (Vec<Event>, Vec<usize>) {
    let mut events: Vec<Event> = Vec::new();
    let mut order = Vec::with_capacity(count);
    while order.len() < count {
        let roll = mix.below(100);
        if roll < 10 && !events.is_empty() {
            // A duplicate: half back to back, half of some earlier event.
            let event = if roll < 5 {
                events.len() - 1
            } else {
                mix.below(events.len())
            };
            order.push(event);
            continue;
        }
        let n = events.len();
        let id = format!("50a10000-0000-4000-8000-{n:012}");
        let (kind, detail) = if roll < 15 {
            let reason = ["bad template", "unknown field", "disallowed destination"][n % 3];
            let detail = match reason {
                "bad template" => {
                    json!({"model": MODEL, "prompt": "summarise {{ detail.objekt.key }}"})
                }
                "unknown field" => json!({"model": MODEL, "promt": format!("soak {n}")}),
                _ => json!({"model": MODEL, "prompt": format!("soak {n}"),
                            "destination": "s3://somewhere-else/out/"}),
            };
            (Kind::Invalid, detail)
        } else if roll < 25 {
            let items: Vec<String> = (0..3 + mix.below(3))
                .map(|k| format!("soak batch {n} item {k}"))
                .collect();
            let detail = json!({"model": MODEL, "prompt": "{{ item }}", "items": items});
            (Kind::Batch(items), detail)
        } else {
            let prompt = format!("soak single {n}");
            let detail = json!({"model": MODEL, "prompt": prompt});
            (Kind::Single(prompt), detail)
        };
        events.push(Event {
            body: envelope(&id, detail),
            id,
            kind,
        });
        order.push(n);
    }
    (events, order)
}

/// Faults on a schedule while the soak runs; returns what it did.
async fn inject_faults(lab: Arc<Lab>, done: Arc<AtomicBool>) -> String {
    let mut mix = Mix(7);
    let (mut bursts, mut quotas, mut spikes) = (0, 0, 0);
    let mut tick = 0u64;
    while !done.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        tick += 1;
        let mut knobs = Knobs::default();
        match tick % 10 {
            // A throttling storm, a 5xx burst, an internal error burst.
            1 | 4 | 7 => {
                let (status, error_type) = [
                    (429, "ThrottlingException"),
                    (503, "ServiceUnavailableException"),
                    (500, "InternalServerException"),
                ][mix.below(3)];
                lab.bedrock.add_fault(Fault {
                    status,
                    error_type: error_type.into(),
                    count: 3 + mix.below(6) as u32,
                    model: None,
                    body_contains: None,
                });
                bursts += 1;
            }
            // A quota of 8 calls a second for this tick.
            5 => {
                knobs.quota_rpm = Some(480);
                knobs.quota_window_ms = Some(1000);
                quotas += 1;
            }
            // A latency spike: batch items take long enough to hit the deadline.
            9 => {
                knobs.latency_ms = 1500 + mix.below(1500) as u64;
                spikes += 1;
            }
            _ => {}
        }
        lab.bedrock.set_knobs(knobs);
    }
    lab.bedrock.set_knobs(Knobs::default());
    format!("{bursts} bursts of 429/500/503 (3-8 calls each), {quotas} quota phases (8/s), {spikes} latency spikes (1.5-3 s)")
}

/// Runs the soak with `function` for `count` deliveries.
pub async fn run(function: &Path, count: usize) -> Result<SoakReport, LabError> {
    let started = Instant::now();
    let lab = Arc::new(Lab::start().await?);
    let mut env = lab.function_env();
    env.push(("RELAY_MAX_CONCURRENCY".into(), "4".into()));
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        let runtime = RuntimeApi::start().await?;
        let process = FunctionProcess::spawn(function, &runtime, &env)?;
        instances.push((runtime, process));
    }

    let mut mix = Mix(42);
    let (events, order) = plan(count, &mut mix);
    let events = Arc::new(events);
    let now = Instant::now();
    let queue: Arc<Mutex<VecDeque<Delivery>>> = Arc::new(Mutex::new(
        order
            .iter()
            .map(|&event| Delivery {
                event,
                attempt: 0,
                not_before: now,
            })
            .collect(),
    ));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let done = Arc::new(AtomicBool::new(false));
    let faults = tokio::spawn(inject_faults(Arc::clone(&lab), Arc::clone(&done)));

    let progress = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for (runtime, _) in &instances {
        let runtime: &RuntimeApi = runtime;
        workers.push(work(
            runtime, &events, &queue, &in_flight, &ledger, &progress, count,
        ));
    }
    futures_join_all(workers).await;
    done.store(true, Ordering::SeqCst);
    let faults = faults.await.unwrap_or_default();

    let ledger = std::mem::take(&mut *lock(&ledger));
    let report = tally(&lab, &events, &order, ledger, faults, started).await?;
    drop(instances);
    Ok(report)
}

/// Joins the workers without another dependency.
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: Vec<F>) {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pinned.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pinned.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

fn epoch_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One instance's loop: take a due delivery, invoke, record, schedule a retry.
async fn work(
    runtime: &RuntimeApi,
    events: &[Event],
    queue: &Mutex<VecDeque<Delivery>>,
    in_flight: &AtomicUsize,
    ledger: &Mutex<Ledger>,
    progress: &AtomicUsize,
    total: usize,
) {
    loop {
        let next = {
            let mut queue = lock(queue);
            let now = Instant::now();
            match queue.iter().position(|d| d.not_before <= now) {
                Some(i) => {
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    queue.remove(i)
                }
                None if queue.is_empty() && in_flight.load(Ordering::SeqCst) == 0 => return,
                None => None,
            }
        };
        let Some(delivery) = next else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let event = &events[delivery.event];
        let sent_ms = epoch_ms();
        let outcome = runtime.invoke(event.body.clone(), DEADLINE).await;
        let retry = {
            let mut ledger = lock(ledger);
            ledger.invocations += 1;
            let error_type = match &outcome {
                Ok(Outcome::Response { .. }) => None,
                Ok(Outcome::Error { error_type, .. }) => Some(error_type.clone()),
                Err(_) => Some("(no answer in time)".to_owned()),
            };
            ledger
                .history
                .entry(delivery.event)
                .or_default()
                .push(format!(
                    "attempt {} at {sent_ms}: {}",
                    delivery.attempt,
                    error_type.as_deref().unwrap_or("ok")
                ));
            match &error_type {
                None => {
                    ledger.succeeded += 1;
                    if matches!(event.kind, Kind::Invalid) {
                        ledger.invalid_accepted += 1;
                    }
                    false
                }
                Some(t) => {
                    *ledger.error_types.entry(t.clone()).or_default() += 1;
                    if t.starts_with("NonRetryable.") {
                        // A valid job refused for good shows as lost in the tally.
                        ledger.non_retryable += 1;
                        false
                    } else {
                        if t.starts_with("Retryable.") {
                            ledger.retryable += 1;
                        } else {
                            ledger.unanswered += 1;
                        }
                        if delivery.attempt >= MAX_RETRIES {
                            ledger.dead_letters.push(delivery.event);
                            false
                        } else {
                            true
                        }
                    }
                }
            }
        };
        if retry {
            lock(queue).push_back(Delivery {
                attempt: delivery.attempt + 1,
                not_before: Instant::now() + RETRY_PAUSE,
                ..delivery
            });
        } else {
            let n = progress.fetch_add(1, Ordering::SeqCst) + 1;
            if n.is_multiple_of(100) {
                eprintln!("soak: {n}/{total} deliveries settled");
            }
        }
        in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads the results back and counts.
async fn tally(
    lab: &Lab,
    events: &[Event],
    order: &[usize],
    ledger: Ledger,
    faults: String,
    started: Instant,
) -> Result<SoakReport, LabError> {
    let mut report = SoakReport {
        events_sent: order.len(),
        distinct_events: events.len(),
        duplicates: order.len() - events.len(),
        invocations: ledger.invocations,
        succeeded: ledger.succeeded,
        non_retryable: ledger.non_retryable,
        retryable: ledger.retryable,
        unanswered: ledger.unanswered,
        dead_letters: ledger.dead_letters.len(),
        invalid_accepted: ledger.invalid_accepted,
        faults,
        ..SoakReport::default()
    };
    let mut types: Vec<(String, usize)> = ledger.error_types.into_iter().collect();
    types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    report.error_types = types;

    // Model calls answered per prompt (each prompt is one item's).
    let mut answered: HashMap<String, usize> = HashMap::new();
    let mut calls_by_prompt: HashMap<String, Vec<String>> = HashMap::new();
    for call in lab.bedrock.calls() {
        let text = call.request["messages"][0]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        calls_by_prompt
            .entry(text.clone())
            .or_default()
            .push(format!(
                "{} at {}",
                call.error_type.as_deref().unwrap_or("200"),
                call.at_ms
            ));
        if call.status != 200 {
            report.model_calls_refused += 1;
            continue;
        }
        report.model_calls_answered += 1;
        *answered.entry(text).or_default() += 1;
    }
    report.max_calls_per_item = answered.values().copied().max().unwrap_or(0);
    report.duplicated = answered.values().filter(|n| **n > 1).count();
    for (index, event) in events.iter().enumerate() {
        let prompts = match &event.kind {
            Kind::Single(prompt) => vec![prompt.clone()],
            Kind::Batch(items) => items.clone(),
            Kind::Invalid => Vec::new(),
        };
        for prompt in prompts
            .iter()
            .filter(|p| answered.get(*p).is_some_and(|n| *n > 1))
        {
            report.duplicate_details.push(format!(
                "{prompt:?} (event {}): deliveries [{}]; model calls [{}]",
                event.id,
                ledger
                    .history
                    .get(&index)
                    .map(|h| h.join("; "))
                    .unwrap_or_default(),
                calls_by_prompt
                    .get(prompt)
                    .map(|c| c.join("; "))
                    .unwrap_or_default()
            ));
        }
    }

    for (index, event) in events.iter().enumerate() {
        let dead = ledger.dead_letters.contains(&index);
        match &event.kind {
            Kind::Invalid => {
                report.invalid_events += 1;
                if lab
                    .record(&event.id)
                    .await?
                    .is_some_and(|r| r["status"] == "failed")
                {
                    report.error_records += 1;
                }
            }
            Kind::Single(_) => {
                report.items_expected += 1;
                match lab.record(&event.id).await? {
                    Some(r) if r["status"] == "succeeded" => report.single_results += 1,
                    Some(r) => {
                        if r["status"] == "failed" {
                            report.error_records += 1;
                        }
                        if !dead {
                            report.lost += 1;
                        }
                    }
                    None if !dead => report.lost += 1,
                    None => {}
                }
            }
            Kind::Batch(items) => {
                report.items_expected += items.len();
                let lines = lab.batch_lines(&event.id).await?.unwrap_or_default();
                // Counted by item index: a line written twice is one result.
                let mut indexes: Vec<u64> = lines
                    .iter()
                    .filter(|l| l["status"] == "succeeded")
                    .filter_map(|l| l["index"].as_u64())
                    .collect();
                indexes.sort_unstable();
                indexes.dedup();
                let succeeded = indexes.len();
                report.batch_item_results += succeeded;
                if !dead {
                    report.lost += items.len().saturating_sub(succeeded);
                }
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}
