//! What a fanned-out batch reports: each chunk's [`ChunkSummary`], written
//! when the chunk is done, and the batch's [`Manifest`], added up from them
//! when the last chunk is done. Both are counted from the item lines
//! themselves, so a chunk that ran over several invocations counts each item
//! once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::batch_output::BedrockCounts;
use super::batch_state::{JobPart, SubmittedBatch};

/// The `detail-type` of the event sent when a batch is complete.
pub const BATCH_COMPLETED_DETAIL_TYPE: &str = "Bedrock Relay Batch Completed";

/// Work done on one target with one model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetUsage {
    /// The target alias (`none` for items that never reached one).
    pub target: String,
    /// The model.
    pub model: String,
    /// Items settled here.
    pub items: u64,
    /// Of which succeeded.
    pub succeeded: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Prompt tokens read from the prompt cache.
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    /// Prompt tokens written to the prompt cache.
    #[serde(default)]
    pub cache_write_input_tokens: u64,
    /// Model calls (attempts) made.
    pub calls: u64,
    /// Calls Bedrock throttled.
    pub throttles: u64,
}

/// Counts of a set of item lines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Items.
    pub items: u64,
    /// Items that succeeded.
    pub succeeded: u64,
    /// Items that failed.
    pub failed: u64,
    /// Items a guardrail answered instead of the model (neither succeeded
    /// nor failed).
    #[serde(default)]
    pub blocked: u64,
    /// By target and model, sorted.
    pub by_target: Vec<TargetUsage>,
}

impl Counts {
    /// Counts settled item lines (`pending` ones are not counted).
    pub fn of_lines<'a>(lines: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut by_target: BTreeMap<(String, String), TargetUsage> = BTreeMap::new();
        let mut counts = Self::default();
        for line in lines {
            let text = |pointer: &str| line.pointer(pointer).and_then(Value::as_str);
            let number = |pointer: &str| line.pointer(pointer).and_then(Value::as_u64).unwrap_or(0);
            let (succeeded, blocked) = match text("/status") {
                Some("succeeded") => (true, false),
                Some("blocked") => (false, true),
                Some("failed") => (false, false),
                _ => continue,
            };
            counts.items += 1;
            counts.succeeded += u64::from(succeeded);
            counts.blocked += u64::from(blocked);
            counts.failed += u64::from(!succeeded && !blocked);
            let target = text("/target/alias").unwrap_or("none").to_owned();
            let model = text("/model").unwrap_or("none").to_owned();
            let usage = by_target
                .entry((target.clone(), model.clone()))
                .or_insert_with(|| TargetUsage {
                    target,
                    model,
                    ..TargetUsage::default()
                });
            usage.items += 1;
            usage.succeeded += u64::from(succeeded);
            usage.input_tokens += number("/usage/input_tokens");
            usage.output_tokens += number("/usage/output_tokens");
            usage.cache_read_input_tokens += number("/usage/cache_read_input_tokens");
            usage.cache_write_input_tokens += number("/usage/cache_write_input_tokens");
            usage.calls += number("/calls");
            usage.throttles += number("/throttles");
        }
        counts.by_target = by_target.into_values().collect();
        counts
    }

    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &Counts) {
        self.items += other.items;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.blocked += other.blocked;
        for usage in &other.by_target {
            match self
                .by_target
                .iter_mut()
                .find(|u| u.target == usage.target && u.model == usage.model)
            {
                Some(mine) => {
                    mine.items += usage.items;
                    mine.succeeded += usage.succeeded;
                    mine.input_tokens += usage.input_tokens;
                    mine.output_tokens += usage.output_tokens;
                    mine.cache_read_input_tokens += usage.cache_read_input_tokens;
                    mine.cache_write_input_tokens += usage.cache_write_input_tokens;
                    mine.calls += usage.calls;
                    mine.throttles += usage.throttles;
                }
                None => self.by_target.push(usage.clone()),
            }
        }
        self.by_target
            .sort_by(|a, b| (&a.target, &a.model).cmp(&(&b.target, &b.model)));
    }
}

/// One chunk, done: written to the work store when its last item settles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSummary {
    /// The chunk's number.
    pub chunk: usize,
    /// Its items' counts.
    #[serde(flatten)]
    pub counts: Counts,
    /// Invocations that received it (SQS's receive count when it finished).
    pub receives: u64,
    /// RFC 3339, when it finished.
    pub finished_at: String,
}

/// A fanned-out batch, complete: `<prefix><id>.manifest.json` at an S3
/// destination (or one more message elsewhere), the detail of the completion
/// event, and `<id>/manifest.json` in the work store, written last, which
/// marks the batch assembled (what `bedrock-relay status` reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The batch's job id.
    pub job_id: String,
    /// How it ran: `fan-out`.
    pub mode: String,
    /// `succeeded` (every item), `partial`, or `failed` (no item succeeded).
    pub status: String,
    /// All items' counts, by target and model.
    #[serde(flatten)]
    pub counts: Counts,
    /// Chunks it was cut into.
    pub chunks: usize,
    /// Function invocations that worked on it: the planning one and each
    /// receive of a chunk.
    pub invocations: u64,
    /// Where the item results are.
    pub results: String,
    /// RFC 3339, when it was planned.
    pub started_at: String,
    /// RFC 3339, when it was assembled.
    pub finished_at: String,
    /// Why it ran as it did (`on-demand` or `batch-job`, and the condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The Bedrock batch jobs it ran as, in the batch-job mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch_jobs: Vec<BatchJobSummary>,
}

/// One Bedrock batch job of a batch, in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchJobSummary {
    /// `jobName`.
    pub name: String,
    /// The job's ARN.
    pub arn: Option<String>,
    /// Its final status.
    pub status: String,
    /// Bedrock's message, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The items it held.
    pub records: usize,
    /// Bedrock's own counts (`manifest.json.out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bedrock: Option<BedrockCounts>,
}

impl Manifest {
    /// The manifest of a batch whose chunks are all done.
    pub fn assemble(
        job_id: &str,
        started_at: &str,
        summaries: &[ChunkSummary],
        results: String,
    ) -> Self {
        let mut counts = Counts::default();
        for summary in summaries {
            counts.add(&summary.counts);
        }
        Self {
            job_id: job_id.to_owned(),
            mode: "fan-out".to_owned(),
            status: match (counts.succeeded, counts.failed) {
                (_, 0) => "succeeded",
                (0, _) => "failed",
                _ => "partial",
            }
            .to_owned(),
            counts,
            chunks: summaries.len(),
            invocations: 1 + summaries.iter().map(|s| s.receives).sum::<u64>(),
            results,
            started_at: started_at.to_owned(),
            finished_at: crate::domain::record::now_rfc3339(),
            reason: None,
            batch_jobs: Vec::new(),
        }
    }

    /// The manifest of a batch that ran as Bedrock batch jobs.
    pub fn with_batch_jobs(mut self, state: &SubmittedBatch) -> Self {
        self.mode = "batch-job".to_owned();
        self.batch_jobs = state.parts.iter().map(BatchJobSummary::of).collect();
        self
    }
}

impl BatchJobSummary {
    /// What the relay last recorded about `part`'s job.
    pub fn of(part: &JobPart) -> Self {
        Self {
            name: part.name.clone(),
            arn: part.arn.clone(),
            status: part.status.clone(),
            message: part.message.clone(),
            records: part.count,
            bedrock: part.counts.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn line(status: &str, target: &str, tokens: u64, calls: u64, throttles: u64) -> Value {
        json!({"status": status, "target": {"alias": target}, "model": "m",
               "usage": {"input_tokens": tokens, "output_tokens": 1},
               "calls": calls, "throttles": throttles})
    }

    /// Blocked items are counted apart (neither succeeded nor failed), and
    /// cache tokens are summed per target and model.
    #[test]
    fn blocked_items_and_cache_tokens_are_counted() {
        let lines = [
            json!({"status": "blocked", "target": {"alias": "a"}, "model": "m",
                   "usage": {"input_tokens": 5, "output_tokens": 0}}),
            json!({"status": "succeeded", "target": {"alias": "a"}, "model": "m",
                   "usage": {"input_tokens": 7, "output_tokens": 2,
                             "cache_read_input_tokens": 2000, "cache_write_input_tokens": 0}}),
            json!({"status": "succeeded", "target": {"alias": "a"}, "model": "m",
                   "usage": {"input_tokens": 7, "output_tokens": 2,
                             "cache_read_input_tokens": 0, "cache_write_input_tokens": 2000}}),
        ];
        let counts = Counts::of_lines(&lines);
        assert_eq!(
            (
                counts.items,
                counts.succeeded,
                counts.blocked,
                counts.failed
            ),
            (3, 2, 1, 0)
        );
        let usage = &counts.by_target[0];
        assert_eq!(
            (
                usage.cache_read_input_tokens,
                usage.cache_write_input_tokens
            ),
            (2000, 2000)
        );
    }

    /// A manifest adds up its chunks by target and model; pending lines are
    /// not items settled, and one failure makes the batch partial.
    #[test]
    fn a_manifest_adds_up_its_chunks_by_target_and_model() {
        let first = Counts::of_lines(&[
            line("succeeded", "a", 10, 1, 0),
            line("succeeded", "b", 5, 3, 2),
            json!({"status": "pending"}),
        ]);
        let second = Counts::of_lines(&[line("failed", "a", 0, 2, 1)]);
        let summary = |chunk, counts| ChunkSummary {
            chunk,
            counts,
            receives: 2,
            finished_at: "t".into(),
        };
        let manifest = Manifest::assemble(
            "j",
            "t0",
            &[summary(0, first), summary(1, second)],
            "s3://r/j.jsonl".into(),
        );
        assert_eq!(
            (
                manifest.counts.items,
                manifest.counts.succeeded,
                manifest.counts.failed
            ),
            (3, 2, 1)
        );
        assert_eq!(manifest.status, "partial");
        assert_eq!(manifest.invocations, 5);
        let none = Manifest::assemble(
            "j",
            "t0",
            &[summary(
                1,
                Counts::of_lines(&[line("failed", "a", 0, 1, 0)]),
            )],
            String::new(),
        );
        assert_eq!(none.status, "failed", "no item succeeded");
        let a = &manifest.counts.by_target[0];
        assert_eq!((a.target.as_str(), a.items, a.succeeded), ("a", 2, 1));
        assert_eq!((a.input_tokens, a.calls, a.throttles), (10, 3, 1));
        assert_eq!(manifest.counts.by_target[1].throttles, 2);
    }
}
