//! What the relay keeps about the Bedrock batch jobs one relay batch became:
//! which target and model, why the batch went to batch jobs, and per part
//! (a range of records, one job) its token, name, staged input, output
//! place, ARN and last known status. Kept in the work store next to the
//! batch's plan (`<store><id>/batch-jobs.json`); the poll and the
//! state-change events read it to find what to check, and the collection
//! reads it to find the output.

use serde::{Deserialize, Serialize};

use super::batch_output::{BatchJobStatus, BedrockCounts};

/// The layout version of [`SubmittedBatch`].
pub const STATE_VERSION: u32 = 1;

/// A relay batch that runs as Bedrock batch jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmittedBatch {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The relay job id.
    pub job_id: String,
    /// The target alias the jobs run in (a pool's first member).
    pub target: String,
    /// That target's account (where the jobs, their events and output are).
    pub account: String,
    /// The model.
    pub model: String,
    /// Why the batch runs as batch jobs (from the mode choice).
    pub reason: String,
    /// Whether records Bedrock did not answer run on-demand afterwards.
    pub retry_on_demand: bool,
    /// When the sender's `complete_within` runs out (epoch ms, from the
    /// submission); after it, what Bedrock did not answer is not run
    /// on-demand any more but failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_by_ms: Option<u64>,
    /// `timeoutDurationInHours` of every part.
    pub timeout_hours: u32,
    /// When the first part was submitted (RFC 3339).
    pub submitted_at: String,
    /// The parts, in record order.
    pub parts: Vec<JobPart>,
    /// Set once every part's output was read into the batch's chunks.
    #[serde(default)]
    pub collected: bool,
}

/// One batch job: a contiguous range of the batch's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPart {
    /// The part number (0-based).
    pub part: usize,
    /// The index of its first record.
    pub first: usize,
    /// How many records.
    pub count: usize,
    /// `jobName`.
    pub name: String,
    /// `clientRequestToken`.
    pub token: String,
    /// The staged records (`s3://`).
    pub input_uri: String,
    /// Where Bedrock writes this job's output (`s3://.../`).
    pub output_uri: String,
    /// The job's ARN once Bedrock accepted it; `None` while it waits for
    /// room under the account's concurrent-jobs quota.
    pub arn: Option<String>,
    /// The last status the relay saw (`Submitted`, ..., `Completed`).
    pub status: String,
    /// Bedrock's message for a failed, stopped or expired job.
    pub message: Option<String>,
    /// Bedrock's own counts (`manifest.json.out`), once read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<BedrockCounts>,
}

/// The status a part waiting for room has (not a Bedrock status).
pub const WAITING: &str = "Waiting";

impl JobPart {
    /// Bedrock's status of this part.
    pub fn status(&self) -> BatchJobStatus {
        BatchJobStatus::from(self.status.as_str())
    }

    /// Whether nothing more will happen to this part's job.
    pub fn has_ended(&self) -> bool {
        self.status().is_terminal()
    }

    /// The indexes of its records.
    pub fn indexes(&self) -> std::ops::Range<usize> {
        self.first..self.first + self.count
    }

    /// The job id Bedrock puts in output paths: the last segment of the ARN.
    pub fn bedrock_job_id(&self) -> Option<&str> {
        self.arn.as_deref().and_then(|arn| arn.rsplit('/').next())
    }
}

impl SubmittedBatch {
    /// Whether what Bedrock did not answer runs on-demand at `now_ms`: the
    /// job asks for it and its `complete_within` has not run out.
    pub fn runs_rest_on_demand(&self, now_ms: u64) -> bool {
        self.retry_on_demand && self.complete_by_ms.is_none_or(|by| now_ms < by)
    }

    /// Whether every part's job has ended.
    pub fn has_ended(&self) -> bool {
        self.parts.iter().all(JobPart::has_ended)
    }

    /// The part whose job is named `name` or has the ARN `arn`.
    pub fn part_of(&self, name: &str, arn: &str) -> Option<&JobPart> {
        self.parts
            .iter()
            .find(|p| p.name == name || p.arn.as_deref() == Some(arn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(status: &str, arn: Option<&str>) -> JobPart {
        JobPart {
            part: 0,
            first: 100,
            count: 50,
            name: "relay-n-p0".into(),
            token: "relay-t-p0".into(),
            input_uri: "s3://staging/in/p0.jsonl".into(),
            output_uri: "s3://staging/out/p0/".into(),
            arn: arn.map(str::to_owned),
            status: status.into(),
            message: None,
            counts: None,
        }
    }

    /// What Bedrock did not answer runs on-demand only when the job asks for
    /// it and its `complete_within` has not run out.
    #[test]
    fn the_rest_runs_on_demand_only_within_complete_within() {
        let batch = SubmittedBatch {
            version: STATE_VERSION,
            job_id: "b".into(),
            target: "default".into(),
            account: "111111111111".into(),
            model: "m".into(),
            reason: "auto".into(),
            retry_on_demand: true,
            complete_by_ms: Some(1_000),
            timeout_hours: 24,
            submitted_at: "2026-12-01T00:00:00Z".into(),
            parts: vec![],
            collected: false,
        };
        assert!(batch.runs_rest_on_demand(999));
        assert!(!batch.runs_rest_on_demand(1_000));
        let unbounded = SubmittedBatch {
            complete_by_ms: None,
            ..batch.clone()
        };
        assert!(unbounded.runs_rest_on_demand(u64::MAX));
        let refused = SubmittedBatch {
            retry_on_demand: false,
            ..batch
        };
        assert!(!refused.runs_rest_on_demand(0));
    }

    /// A part has ended only once Bedrock accepted it and its job reached a
    /// final status; a waiting part or a running job has not.
    #[test]
    fn a_part_ends_with_its_jobs_final_status() {
        let arn = Some("arn:aws:bedrock:us-east-1:111111111111:model-invocation-job/abc");
        assert!(!part(WAITING, None).has_ended());
        assert!(!part("InProgress", arn).has_ended());
        assert!(part("PartiallyCompleted", arn).has_ended());
        assert!(part("Expired", arn).has_ended());
        assert_eq!(part("Completed", arn).bedrock_job_id(), Some("abc"));
        assert_eq!(part("Completed", arn).indexes(), 100..150);
    }
}
