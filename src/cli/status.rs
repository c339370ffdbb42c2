//! `bedrock-relay status <job-id> [--watch] [--interval SECS] [--json]`: how
//! far a job has got, read with the caller's credentials; nothing is written.
//!
//! Where it looks, in order:
//!
//! 1. With `RELAY_WORK_QUEUE` and `RELAY_WORK_STORE` set, the plan
//!    `<store><id>/plan.json`: the batch fans out (mode `fan-out`). Its
//!    `<id>/manifest.json` there means it is assembled; before that the
//!    summaries of the chunks done and the progress lines of the others are
//!    added up. A plan whose mode is `batch-job` runs as Bedrock batch jobs
//!    (mode `batch-job`): `<id>/batch-jobs.json` there holds each job as the
//!    relay last recorded it (the check schedule and Bedrock's events update
//!    it; `status` reads only the store and never asks Bedrock), and the
//!    collection saves the answers as the batch's chunks, counted as above.
//! 2. In `RELAY_DESTINATION` (S3 only): `<prefix><id>.jsonl`, a batch run in
//!    one invocation and finished (mode `in-invocation`);
//!    `<prefix><id>.progress.jsonl`, one cut short and waiting for Lambda's
//!    retry; `<prefix><id>.json`, a single job's record (mode `single`) or the
//!    record of a batch that failed as a whole.
//!
//! The pure part ([`Status`] from what was read, the estimate, the text) is
//! here, apart from the reads and the watching ([`Reader`], [`run`]).
//!
//! # JSON fields (`--json`)
//!
//! | field | what |
//! |---|---|
//! | `job_id` | the job id, as given (scoped ids carry their `RELAY_ID_PREFIX`) |
//! | `mode` | `fan-out`, `batch-job`, `in-invocation` or `single` |
//! | `status` | `planned`, `running` or `assembling` while not complete; a batch job also `submitted` (its jobs are with Bedrock) and `collecting` (every job ended, the answers are being read); then `succeeded`, `partial` (some items failed) or `failed` |
//! | `complete` | whether it has finished (nothing more will change) |
//! | `chunks_done`, `chunks_total` | chunks done and planned (a batch in one invocation, or a single job, is one chunk) |
//! | `items` | items in the batch (1 for a single job, 0 for a batch that failed before its items were read) |
//! | `succeeded`, `failed` | items settled so far, by how they ended |
//! | `pending` | `items` less those settled; an item whose failure is retryable counts here until it settles, and a batch job's items until they are collected |
//! | `input_tokens`, `output_tokens` | tokens of the settled items |
//! | `calls`, `throttles` | model calls made for the settled items, and of those the ones Bedrock throttled |
//! | `started_at` | RFC 3339: when it was planned (fan-out), when its first item settled (in-invocation: its lines name no start), when the invocation started (single); `null` if unknown |
//! | `finished_at` | RFC 3339, once complete; `null` before |
//! | `elapsed_secs` | seconds from `started_at` to `finished_at`, or to now; `null` if unknown |
//! | `left_secs` | estimate: `elapsed_secs × pending / settled`; `0` once complete, `null` while nothing has settled or a batch's Bedrock jobs run |
//! | `results` | where the results are once complete (`s3://`, or for a fanned-out batch sent elsewhere the destination and count); `null` before |
//! | `error` | the error type and message of a failed single job (or whole batch); `null` otherwise |
//! | `reason` | why a planned batch runs in its mode (`auto: ...`, from the mode choice); `null` when the plan records none, and for batches in one invocation and single jobs |
//! | `batch_jobs` | a batch job's Bedrock jobs, in record order, as the relay last recorded them: `name`, `arn` (`null` while the part waits for room under the jobs quota), `status` (Bedrock's, e.g. `InProgress`, or `Waiting`), `records`, and when known `message` (Bedrock's, for a failed, stopped or expired job) and `bedrock` (its own counts, `manifest.json.out`, read at collection); `[]` in other modes |
//!
//! With `--watch`, one such object per poll, each on its own line, the last
//! one complete. A batch that cannot complete (a chunk in the dead-letter
//! queue, a batch in one invocation whose retries ran out) stays `running`,
//! and `--watch` runs until it is stopped. Errors go to stderr, or with `--json` as
//! `{"job_id": ..., "error": ...}` on stdout.
//!
//! Exit codes: 0 read (succeeded, or not finished yet); 1 finished `partial`
//! or `failed`, or nothing found or readable; 2 usage or configuration.

mod read;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

pub use read::{run, Reader};

use super::{EXIT_FAILED, EXIT_OK};
use crate::domain::batch_state::SubmittedBatch;
use crate::domain::chunks::BatchPlan;
use crate::domain::manifest::{BatchJobSummary, ChunkSummary, Counts, Manifest};
use crate::domain::record::is_final_status;
use crate::ledger::is_settled;

/// How often `--watch` reads again unless `--interval` says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// How the job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Planned onto the work queue, run chunk by chunk.
    FanOut,
    /// Planned, and run by Bedrock batch inference jobs in the model account.
    BatchJob,
    /// A batch run in one invocation (and its retries).
    InInvocation,
    /// A single job.
    Single,
}

impl Mode {
    fn text(self) -> &'static str {
        match self {
            Self::FanOut => "fan-out",
            Self::BatchJob => "batch-job",
            Self::InInvocation => "in-invocation",
            Self::Single => "single",
        }
    }
}

/// Where a job has got (the fields are those of `--json`, see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The job id, as given.
    pub job_id: String,
    /// How it runs.
    pub mode: Mode,
    /// `planned`, `running`, `assembling`; `succeeded`, `partial`, `failed`.
    pub status: String,
    /// Whether it has finished.
    pub complete: bool,
    /// Chunks done.
    pub chunks_done: usize,
    /// Chunks planned.
    pub chunks_total: usize,
    /// Items in the batch.
    pub items: u64,
    /// Items that succeeded.
    pub succeeded: u64,
    /// Items that failed (for good, until complete).
    pub failed: u64,
    /// Items not settled yet.
    pub pending: u64,
    /// Prompt tokens of the settled items.
    pub input_tokens: u64,
    /// Generated tokens of the settled items.
    pub output_tokens: u64,
    /// Model calls made for the settled items.
    pub calls: u64,
    /// Of those, calls Bedrock throttled.
    pub throttles: u64,
    /// RFC 3339, when it started (see the module doc).
    pub started_at: Option<String>,
    /// RFC 3339, once complete.
    pub finished_at: Option<String>,
    /// Seconds from the start to the finish, or to now.
    pub elapsed_secs: Option<u64>,
    /// Estimated seconds left.
    pub left_secs: Option<u64>,
    /// Where the results are, once complete.
    pub results: Option<String>,
    /// A failed job's error type and message.
    pub error: Option<String>,
    /// Why a planned batch runs in its mode.
    pub reason: Option<String>,
    /// A batch job's Bedrock jobs, as last recorded.
    pub batch_jobs: Vec<BatchJobSummary>,
}

impl Status {
    fn new(job_id: &str, mode: Mode, items: u64, chunks_total: usize) -> Self {
        Self {
            job_id: job_id.to_owned(),
            mode,
            status: "running".into(),
            complete: false,
            chunks_done: 0,
            chunks_total,
            items,
            succeeded: 0,
            failed: 0,
            pending: items,
            input_tokens: 0,
            output_tokens: 0,
            calls: 0,
            throttles: 0,
            started_at: None,
            finished_at: None,
            elapsed_secs: None,
            left_secs: None,
            results: None,
            error: None,
            reason: None,
            batch_jobs: Vec::new(),
        }
    }

    /// A fanned-out batch: complete once its `manifest` is there; before,
    /// the `summaries` of done chunks (by number) and the `progress` lines of
    /// the chunks not done.
    pub fn fan_out(
        plan: &BatchPlan,
        summaries: &BTreeMap<usize, ChunkSummary>,
        progress: &[Value],
        manifest: Option<&Manifest>,
        now_ms: i64,
    ) -> Self {
        let total = plan.chunks.len();
        let mut status = Self::new(&plan.job_id, Mode::FanOut, plan.items.total as u64, total);
        status.reason = plan.mode.as_ref().map(|mode| mode.reason.clone());
        let finished_at = match manifest {
            Some(manifest) => {
                status.count(&manifest.counts);
                status.chunks_done = total;
                status.complete = true;
                status.status = manifest.status.clone();
                status.results = Some(manifest.results.clone());
                Some(manifest.finished_at.clone())
            }
            None => {
                let mut counts = Counts::default();
                let done = summaries.range(..total).map(|(_, summary)| summary);
                for summary in done {
                    counts.add(&summary.counts);
                    status.chunks_done += 1;
                }
                counts.add(&Counts::of_lines(progress.iter().filter(|l| is_settled(l))));
                status.count(&counts);
                status.status = match (status.chunks_done, status.settled()) {
                    (done, _) if done == total => "assembling",
                    (0, 0) => "planned",
                    _ => "running",
                }
                .into();
                None
            }
        };
        status.timed(Some(plan.planned_at.clone()), finished_at, now_ms)
    }

    /// A batch planned to run as Bedrock batch jobs: counted as a fanned-out
    /// batch (the collection saves the answers as its chunks), with its jobs
    /// from `state` (`None` while its records are still being staged). Until
    /// every job's answers are collected, its status says where the jobs are
    /// and there is no estimate: Bedrock's pace is not known.
    pub fn batch_job(
        plan: &BatchPlan,
        state: Option<&SubmittedBatch>,
        summaries: &BTreeMap<usize, ChunkSummary>,
        progress: &[Value],
        manifest: Option<&Manifest>,
        now_ms: i64,
    ) -> Self {
        let mut status = Self::fan_out(plan, summaries, progress, manifest, now_ms);
        status.mode = Mode::BatchJob;
        if let Some(state) = state {
            status.reason = Some(state.reason.clone());
            status.batch_jobs = state.parts.iter().map(BatchJobSummary::of).collect();
        }
        if status.complete {
            return status;
        }
        let stage = match state {
            None => "planned",
            Some(state) if !state.has_ended() => "submitted",
            Some(state) if !state.collected => "collecting",
            // Collected, with records run on-demand through the work queue:
            // counted as a fanned-out batch's chunks.
            Some(_) if status.status == "planned" => "running",
            Some(_) => return status,
        };
        status.status = stage.into();
        status.left_secs = None;
        status
    }

    /// Whether the batch's Bedrock jobs still hold its items: no estimate
    /// can be made from the items settled so far.
    fn with_bedrock(&self) -> bool {
        self.mode == Mode::BatchJob
            && matches!(self.status.as_str(), "planned" | "submitted" | "collecting")
    }

    /// A batch in one invocation, from its lines: the final ones when
    /// `complete` (at `results`), else its progress.
    pub fn in_invocation(
        job_id: &str,
        lines: &[Value],
        complete: bool,
        results: String,
        now_ms: i64,
    ) -> Self {
        let mut status = Self::new(job_id, Mode::InInvocation, lines.len() as u64, 1);
        // A finished batch's lines are final, a retryable failure included.
        let counts = match complete {
            true => Counts::of_lines(lines),
            false => Counts::of_lines(lines.iter().filter(|l| is_settled(l))),
        };
        status.count(&counts);
        let times: Vec<(i64, &str)> = lines
            .iter()
            .filter_map(|line| line.get("finished_at")?.as_str())
            .filter_map(|at| Some((epoch_ms(at)?, at)))
            .collect();
        let first = times.iter().min().map(|(_, at)| (*at).to_owned());
        let last = times.iter().max().map(|(_, at)| (*at).to_owned());
        if complete {
            status.finish(&counts, results);
            return status.timed(first, last, now_ms);
        }
        status.timed(first, None, now_ms)
    }

    /// A job's record `<id>.json` (at `results`): a single job, or a batch
    /// that failed as a whole.
    pub fn record(job_id: &str, record: &Value, results: String, now_ms: i64) -> Self {
        let batch = record.get("batch").and_then(Value::as_bool) == Some(true);
        let mut status = match batch {
            true => Self::new(job_id, Mode::InInvocation, 0, 1),
            false => Self::new(job_id, Mode::Single, 1, 1),
        };
        let text = |pointer: &str| record.pointer(pointer).and_then(Value::as_str);
        let number = |pointer: &str| record.pointer(pointer).and_then(Value::as_u64);
        // A guardrail's answer (`blocked`) is as final as the model's.
        let succeeded = is_final_status(text("/status"));
        if !batch {
            status.succeeded = u64::from(succeeded);
            status.failed = u64::from(!succeeded);
            status.pending = 0;
            status.input_tokens = number("/usage/input_tokens").unwrap_or(0);
            status.output_tokens = number("/usage/output_tokens").unwrap_or(0);
        }
        status.status = match text("/status") {
            Some(final_status) if succeeded => final_status,
            _ => "failed",
        }
        .into();
        status.complete = true;
        status.chunks_done = 1;
        status.results = Some(results);
        status.error = match (text("/error/type"), text("/error/message")) {
            (Some(kind), Some(message)) => Some(format!("{kind}: {message}")),
            (Some(kind), None) => Some(kind.to_owned()),
            _ => None,
        };
        let started = text("/started_at").map(str::to_owned);
        let finished = text("/finished_at").map(str::to_owned);
        status.timed(started, finished, now_ms)
    }

    fn count(&mut self, counts: &Counts) {
        self.succeeded = counts.succeeded;
        self.failed = counts.failed;
        self.pending = self.items.saturating_sub(counts.items);
        let usage = counts.by_target.iter();
        self.input_tokens = usage.clone().map(|u| u.input_tokens).sum();
        self.output_tokens = usage.clone().map(|u| u.output_tokens).sum();
        self.calls = usage.clone().map(|u| u.calls).sum();
        self.throttles = usage.map(|u| u.throttles).sum();
    }

    fn finish(&mut self, counts: &Counts, results: String) {
        self.complete = true;
        self.chunks_done = self.chunks_total;
        self.status = if counts.failed == 0 {
            "succeeded"
        } else {
            "partial"
        }
        .into();
        self.results = Some(results);
    }

    /// Items settled so far.
    pub fn settled(&self) -> u64 {
        self.succeeded + self.failed
    }

    fn timed(mut self, started: Option<String>, finished: Option<String>, now_ms: i64) -> Self {
        let start_ms = started.as_deref().and_then(epoch_ms);
        let end_ms = match &finished {
            Some(at) => epoch_ms(at),
            None => Some(now_ms),
        };
        let elapsed_ms = match (start_ms, end_ms) {
            (Some(start), Some(end)) => Some(u64::try_from(end - start).unwrap_or(0)),
            _ => None,
        };
        self.elapsed_secs = elapsed_ms.map(|ms| ms / 1000);
        self.left_secs = match self.complete {
            true => Some(0),
            false => elapsed_ms.and_then(|ms| estimate_left(ms, self.settled(), self.pending)),
        };
        self.started_at = started;
        self.finished_at = finished.filter(|_| self.complete);
        self
    }

    /// The process exit code this status ends a command with.
    pub fn exit_code(&self) -> i32 {
        match self.complete && !is_final_status(Some(&self.status)) {
            true => EXIT_FAILED,
            false => EXIT_OK,
        }
    }
}

/// Seconds left, at the pace so far (`settled` items in `elapsed_ms`);
/// `None` while nothing has settled.
pub fn estimate_left(elapsed_ms: u64, settled: u64, pending: u64) -> Option<u64> {
    if settled == 0 {
        return None;
    }
    let left_ms = u128::from(elapsed_ms) * u128::from(pending) / u128::from(settled);
    Some(u64::try_from(left_ms.div_ceil(1000)).unwrap_or(u64::MAX))
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn epoch_ms(rfc3339: &str) -> Option<i64> {
    aws_smithy_types::DateTime::from_str(rfc3339, aws_smithy_types::date_time::Format::DateTime)
        .ok()?
        .to_millis()
        .ok()
}

/// `42s`, `3m 05s`, `2h 07m`, `1d 04h`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {:02}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// The status as aligned `label: value` lines.
pub fn render(status: &Status) -> String {
    let left = match (status.complete, status.left_secs) {
        (true, _) => "none, complete".to_owned(),
        (false, Some(secs)) => format!("about {}", human_duration(secs)),
        (false, None) if status.with_bedrock() => {
            "unknown until Bedrock's batch jobs end and are collected".to_owned()
        }
        (false, None) => "unknown until an item settles".to_owned(),
    };
    let mut rows = vec![
        ("job", status.job_id.clone()),
        ("mode", status.mode.text().to_owned()),
    ];
    rows.extend(status.reason.clone().map(|reason| ("reason", reason)));
    rows.extend([
        ("status", status.status.clone()),
        (
            "chunks",
            format!("{}/{} done", status.chunks_done, status.chunks_total),
        ),
        (
            "items",
            format!(
                "{}/{} settled: {} succeeded, {} failed, {} pending",
                status.settled(),
                status.items,
                status.succeeded,
                status.failed,
                status.pending
            ),
        ),
        (
            "tokens",
            format!("{} in, {} out", status.input_tokens, status.output_tokens),
        ),
        (
            "throttles",
            format!("{} of {} calls", status.throttles, status.calls),
        ),
        (
            "elapsed",
            status
                .elapsed_secs
                .map_or_else(|| "unknown".to_owned(), human_duration),
        ),
        ("left", left),
    ]);
    rows.extend(
        status
            .batch_jobs
            .iter()
            .map(|job| ("batch job", batch_job_line(job))),
    );
    rows.extend(status.results.clone().map(|uri| ("results", uri)));
    rows.extend(status.error.clone().map(|error| ("error", error)));
    let width = rows
        .iter()
        .map(|(label, _)| label.len() + 1)
        .max()
        .unwrap_or(0);
    rows.iter()
        .map(|(label, value)| format!("{:<width$} {value}\n", format!("{label}:")))
        .collect()
}

/// One Bedrock job as a line: its name, status and records, Bedrock's counts
/// once read, its ARN (or why it has none yet) and Bedrock's message.
pub fn batch_job_line(job: &BatchJobSummary) -> String {
    let mut line = format!("{}: {}, {} records", job.name, job.status, job.records);
    if let Some(counts) = &job.bedrock {
        let known = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
        line.push_str(&format!(
            ", Bedrock processed {} ({} succeeded, {} failed)",
            known(counts.processed_record_count),
            known(counts.success_record_count),
            known(counts.error_record_count)
        ));
    }
    match &job.arn {
        Some(arn) => line.push_str(&format!(", {arn}")),
        None => line.push_str(
            ", not submitted yet: it waits for room under the account's batch jobs quota",
        ),
    }
    if let Some(message) = &job.message {
        line.push_str(&format!("; Bedrock says: {message}"));
    }
    line
}

/// The Bedrock jobs by status, e.g. `1 Completed, 2 InProgress`; empty
/// without jobs.
pub fn jobs_by_status(jobs: &[BatchJobSummary]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for job in jobs {
        *counts.entry(job.status.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The job id in `status`'s arguments (after the subcommand): the first that
/// is neither a flag nor `--interval`'s value.
pub fn job_id_arg(args: &[String]) -> Option<String> {
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--interval" => {
                rest.next();
            }
            flag if flag.starts_with("--") => {}
            id => return Some(id.to_owned()),
        }
    }
    None
}
