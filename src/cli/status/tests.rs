//! The pure part of `status`: a [`Status`] from what was read, the
//! estimate, the text.

use serde_json::json;

use super::*;
use crate::domain::batch_output::BedrockCounts;
use crate::domain::batch_state::{JobPart, SubmittedBatch, WAITING};
use crate::domain::chunks::{ChunkRange, ItemsObject, ModeRecord};

const PLANNED_AT: &str = "2026-12-01T02:00:00Z";

fn at(rfc3339: &str) -> i64 {
    epoch_ms(rfc3339).expect("a time")
}

/// 30 items in chunks of 10, planned at [`PLANNED_AT`].
fn plan() -> BatchPlan {
    let chunk = |first: usize| ChunkRange {
        first,
        count: 10,
        start: first as u64 * 20,
        end: (first as u64 + 10) * 20,
        line: first + 1,
    };
    BatchPlan {
        version: 1,
        job_id: "nightly".into(),
        job: json!({"model": "m", "prompt": "p"}),
        event: None,
        shape: json!("job-event"),
        destination: "s3://results/r/".into(),
        group: "nightly".into(),
        items: ItemsObject {
            uri: "s3://in/items.jsonl".into(),
            etag: "\"e\"".into(),
            total: 30,
            staged: false,
        },
        chunks: vec![chunk(0), chunk(10), chunk(20)],
        planned_at: PLANNED_AT.into(),
        planned_by: "req".into(),
        mode: None,
    }
}

fn line(index: usize, status: &str, retryable: bool) -> Value {
    json!({"index": index, "status": status, "target": {"alias": "default"}, "model": "m",
           "usage": {"input_tokens": 10, "output_tokens": 2}, "calls": 2, "throttles": 1,
           "error": if status == "failed" { json!({"retryable": retryable}) } else { Value::Null },
           "finished_at": format!("2026-12-01T02:00:{:02}Z", 10 + index)})
}

fn summary(chunk: usize, lines: &[Value]) -> ChunkSummary {
    ChunkSummary {
        chunk,
        counts: Counts::of_lines(lines),
        receives: 1,
        finished_at: "2026-12-01T02:01:00Z".into(),
    }
}

/// Just planned: every item pending, no chunk done, and no estimate
/// until an item settles; elapsed runs from the plan.
#[test]
fn a_planned_batch_has_every_item_pending_and_no_estimate() {
    let status = Status::fan_out(&plan(), &BTreeMap::new(), &[], None, at(PLANNED_AT) + 5_000);
    assert_eq!(status.mode, Mode::FanOut);
    assert_eq!(status.status, "planned");
    assert_eq!((status.chunks_done, status.chunks_total), (0, 3));
    assert_eq!(
        (status.items, status.pending, status.settled()),
        (30, 30, 0)
    );
    assert_eq!((status.elapsed_secs, status.left_secs), (Some(5), None));
    assert!(!status.complete && status.finished_at.is_none());
    assert_eq!(status.exit_code(), EXIT_OK);
}

/// A done chunk counts from its summary and a running one from its
/// settled progress lines; a retryable failure is still pending. The
/// estimate is the time so far scaled by pending over settled, and a
/// summary of a chunk the plan does not have is ignored.
#[test]
fn done_chunks_and_progress_add_up_and_the_estimate_follows_the_pace() {
    let first: Vec<Value> = (0..10).map(|i| line(i, "succeeded", false)).collect();
    let summaries: BTreeMap<usize, ChunkSummary> =
        [(0, summary(0, &first)), (7, summary(7, &first))]
            .into_iter()
            .collect();
    let mut progress: Vec<Value> = (10..14).map(|i| line(i, "succeeded", false)).collect();
    progress.push(line(14, "failed", false));
    progress.push(line(15, "failed", true));
    progress.extend((16..20).map(|i| json!({"index": i, "status": "pending"})));

    let status = Status::fan_out(
        &plan(),
        &summaries,
        &progress,
        None,
        at(PLANNED_AT) + 90_000,
    );
    assert_eq!(status.status, "running");
    assert_eq!(status.chunks_done, 1);
    assert_eq!(
        (status.succeeded, status.failed, status.pending),
        (14, 1, 15)
    );
    assert_eq!((status.input_tokens, status.output_tokens), (150, 30));
    assert_eq!((status.calls, status.throttles), (30, 15));
    assert_eq!(status.elapsed_secs, Some(90));
    assert_eq!(status.left_secs, Some(90), "15 settled in 90 s, 15 to go");
}

/// Every chunk done but no manifest yet: the last chunk is assembling.
#[test]
fn every_chunk_done_without_a_manifest_is_assembling() {
    let lines: Vec<Value> = (0..10).map(|i| line(i, "succeeded", false)).collect();
    let summaries = (0..3).map(|c| (c, summary(c, &lines))).collect();
    let status = Status::fan_out(&plan(), &summaries, &[], None, at(PLANNED_AT) + 1_000);
    assert_eq!(
        (status.status.as_str(), status.complete),
        ("assembling", false)
    );
    assert_eq!((status.pending, status.left_secs), (0, Some(0)));
}

/// The manifest makes the batch complete: its status and counts, its
/// results, elapsed from planning to assembly, nothing left; a partial
/// batch ends the command with a failure.
#[test]
fn a_manifest_means_complete_with_its_status_and_finish_time() {
    let good: Vec<Value> = (0..29).map(|i| line(i, "succeeded", false)).collect();
    let bad = [line(29, "failed", false)];
    let summaries = [summary(0, &good), summary(1, &bad)];
    let mut manifest =
        Manifest::assemble("nightly", PLANNED_AT, &summaries, "s3://r/n.jsonl".into());
    manifest.finished_at = "2026-12-01T02:03:20Z".into();
    let status = Status::fan_out(&plan(), &BTreeMap::new(), &[], Some(&manifest), i64::MAX);
    assert!(status.complete);
    assert_eq!(status.status, "partial");
    assert_eq!((status.chunks_done, status.chunks_total), (3, 3));
    assert_eq!(
        (status.succeeded, status.failed, status.pending),
        (29, 1, 0)
    );
    assert_eq!(
        (status.elapsed_secs, status.left_secs),
        (Some(200), Some(0))
    );
    assert_eq!(status.finished_at.as_deref(), Some("2026-12-01T02:03:20Z"));
    assert_eq!(status.results.as_deref(), Some("s3://r/n.jsonl"));
    assert_eq!(status.exit_code(), EXIT_FAILED);
}

/// A batch in one invocation is one chunk; its progress counts settled
/// lines only and times from its first settled item; its final lines
/// make it complete, finished at its last item.
#[test]
fn an_in_invocation_batch_counts_its_lines() {
    let mut lines: Vec<Value> = (0..3).map(|i| line(i, "succeeded", false)).collect();
    lines.push(line(3, "failed", true));
    lines.push(json!({"index": 4, "status": "pending"}));
    let now = at("2026-12-01T02:00:16Z");
    let running = Status::in_invocation("b", &lines, false, "s3://r/b.progress.jsonl".into(), now);
    assert_eq!(
        (running.mode, running.status.as_str()),
        (Mode::InInvocation, "running")
    );
    assert_eq!((running.chunks_done, running.chunks_total), (0, 1));
    assert_eq!(
        (running.succeeded, running.failed, running.pending),
        (3, 0, 2)
    );
    assert_eq!(running.started_at.as_deref(), Some("2026-12-01T02:00:10Z"));
    assert_eq!(
        (running.elapsed_secs, running.left_secs),
        (Some(6), Some(4))
    );
    assert_eq!(running.results, None);

    lines.truncate(3);
    let done = Status::in_invocation("b", &lines, true, "s3://r/b.jsonl".into(), now);
    assert!(done.complete);
    assert_eq!((done.status.as_str(), done.chunks_done), ("succeeded", 1));
    assert_eq!(done.finished_at.as_deref(), Some("2026-12-01T02:00:12Z"));
    assert_eq!((done.elapsed_secs, done.left_secs), (Some(2), Some(0)));
}

/// A single job's record says how it ended, with its tokens, time and
/// error; a batch's own failure record shows as a failed batch.
#[test]
fn a_record_reports_its_status_and_error() {
    let ok = json!({"status": "succeeded", "usage": {"input_tokens": 7, "output_tokens": 3},
                    "started_at": "2026-12-01T02:00:00Z", "finished_at": "2026-12-01T02:00:04.500Z"});
    let status = Status::record("one", &ok, "s3://r/one.json".into(), 0);
    assert_eq!(
        (status.mode, status.status.as_str()),
        (Mode::Single, "succeeded")
    );
    assert_eq!((status.items, status.succeeded, status.pending), (1, 1, 0));
    assert_eq!((status.input_tokens, status.output_tokens), (7, 3));
    assert_eq!(status.elapsed_secs, Some(4));
    assert_eq!(status.exit_code(), EXIT_OK);

    // A guardrail's answer is a final result: shown as `blocked`, exit 0.
    let blocked = json!({"status": "blocked", "usage": {"input_tokens": 5, "output_tokens": 0}});
    let status = Status::record("g", &blocked, "s3://r/g.json".into(), 0);
    assert_eq!((status.status.as_str(), status.failed), ("blocked", 0));
    assert_eq!(status.exit_code(), EXIT_OK);

    let failed = json!({"status": "failed", "batch": true,
                        "error": {"type": "ItemsUnreadable", "message": "no such object"}});
    let status = Status::record("b", &failed, "s3://r/b.json".into(), 0);
    assert_eq!(
        (status.mode, status.status.as_str()),
        (Mode::InInvocation, "failed")
    );
    assert_eq!(
        status.error.as_deref(),
        Some("ItemsUnreadable: no such object")
    );
    assert_eq!(status.exit_code(), EXIT_FAILED);
}

/// No estimate while nothing has settled; otherwise the time so far
/// scaled by what is pending, rounded up to a second.
#[test]
fn the_estimate_is_unknown_until_an_item_settles() {
    assert_eq!(estimate_left(60_000, 0, 10), None);
    assert_eq!(estimate_left(60_000, 10, 0), Some(0));
    assert_eq!(estimate_left(60_000, 3, 7), Some(140));
    assert_eq!(estimate_left(1_001, 1, 1), Some(2));
}

/// Durations read as people say them.
#[test]
fn durations_read_as_people_say_them() {
    assert_eq!(human_duration(42), "42s");
    assert_eq!(human_duration(185), "3m 05s");
    assert_eq!(human_duration(7_620), "2h 07m");
    assert_eq!(human_duration(100_800), "1d 04h");
}

/// The text is one aligned `label: value` line per field, results and
/// error only when there are some.
#[test]
fn the_text_is_one_aligned_line_per_field() {
    let status = Status::fan_out(
        &plan(),
        &BTreeMap::new(),
        &[],
        None,
        at(PLANNED_AT) + 65_000,
    );
    let text = render(&status);
    let labels: Vec<&str> = text
        .lines()
        .map(|l| l.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        labels,
        [
            "job",
            "mode",
            "status",
            "chunks",
            "items",
            "tokens",
            "throttles",
            "elapsed",
            "left"
        ]
    );
    // Every value starts in the column after the longest label, `throttles:`.
    let value_columns: Vec<usize> = text
        .lines()
        .map(|l| l.len() - l.split_once(':').map_or(l, |(_, v)| v).trim_start().len())
        .collect();
    assert!(value_columns.iter().all(|c| *c == 11), "{text}");
    assert!(text.contains("mode:      fan-out\n"), "{text}");
    assert!(text.contains("chunks:    0/3 done\n"), "{text}");
    assert!(
        text.contains("items:     0/30 settled: 0 succeeded, 0 failed, 30 pending\n"),
        "{text}"
    );
    assert!(text.contains("elapsed:   1m 05s\n"), "{text}");
    assert!(
        text.contains("left:      unknown until an item settles\n"),
        "{text}"
    );
}

/// `--json` has these fields, by these names, and no others.
#[test]
fn the_json_field_names_are_stable() {
    let status = Status::fan_out(&plan(), &BTreeMap::new(), &[], None, 0);
    let value = json!(status);
    let names: Vec<&str> = value
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        names,
        [
            "job_id",
            "mode",
            "status",
            "complete",
            "chunks_done",
            "chunks_total",
            "items",
            "succeeded",
            "failed",
            "pending",
            "input_tokens",
            "output_tokens",
            "calls",
            "throttles",
            "started_at",
            "finished_at",
            "elapsed_secs",
            "left_secs",
            "results",
            "error",
            "reason",
            "batch_jobs"
        ]
    );
    assert_eq!(value["mode"], "fan-out");
    assert_eq!(
        (&value["reason"], &value["batch_jobs"]),
        (&Value::Null, &json!([]))
    );
}

/// The job id is the first argument that is neither a flag nor the
/// value of `--interval`.
#[test]
fn the_job_id_is_the_first_argument_that_is_not_a_flag() {
    let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    assert_eq!(
        job_id_arg(&args(&["nightly", "--json"])).as_deref(),
        Some("nightly")
    );
    assert_eq!(
        job_id_arg(&args(&["--watch", "--interval", "5", "a/b"])).as_deref(),
        Some("a/b")
    );
    assert_eq!(job_id_arg(&args(&["--json"])), None);
}

const REASON: &str = "auto: 30 items reach RELAY_BATCH_JOB_MIN_RECORDS and complete_within is P2D";

/// [`plan`], planned to run as batch jobs.
fn batch_job_plan() -> BatchPlan {
    BatchPlan {
        mode: Some(ModeRecord {
            mode: "batch-job".into(),
            reason: REASON.into(),
        }),
        ..plan()
    }
}

/// The 30 items as two jobs of 20 and 10, with these statuses (`Waiting`
/// has no ARN yet).
fn submitted(statuses: [&str; 2], collected: bool) -> SubmittedBatch {
    let part = |part: usize, first: usize, count: usize, status: &str| JobPart {
        part,
        first,
        count,
        name: format!("relay-nightly-p{part}"),
        token: format!("relay-t-p{part}"),
        input_uri: format!("s3://staging/relay/input/nightly/part-00000{part}.jsonl"),
        output_uri: format!("s3://staging/relay/output/nightly/part-00000{part}/"),
        arn: (status != WAITING).then(|| {
            format!("arn:aws:bedrock:us-east-1:111111111111:model-invocation-job/j{part}")
        }),
        status: status.into(),
        message: None,
        counts: None,
    };
    SubmittedBatch {
        version: 1,
        job_id: "nightly".into(),
        target: "default".into(),
        account: "111111111111".into(),
        model: "m".into(),
        reason: REASON.into(),
        retry_on_demand: true,
        complete_by_ms: None,
        timeout_hours: 48,
        submitted_at: PLANNED_AT.into(),
        parts: vec![part(0, 0, 20, statuses[0]), part(1, 20, 10, statuses[1])],
        collected,
    }
}

/// While its records are staged there is no job yet: a batch job is
/// planned, with the mode choice's reason and no jobs.
#[test]
fn a_batch_job_being_staged_is_planned_with_its_reason() {
    let status = Status::batch_job(
        &batch_job_plan(),
        None,
        &BTreeMap::new(),
        &[],
        None,
        at(PLANNED_AT) + 5_000,
    );
    assert_eq!(
        (status.mode, status.status.as_str()),
        (Mode::BatchJob, "planned")
    );
    assert_eq!(status.reason.as_deref(), Some(REASON));
    assert!(status.batch_jobs.is_empty());
    assert_eq!(json!(status)["mode"], "batch-job");
}

/// Submitted jobs hold every item: all pending, no estimate even when an
/// item that could not be a record settled at staging, and each job as the
/// relay last recorded it, one waiting for room without an ARN.
#[test]
fn submitted_batch_jobs_hold_their_items_and_show_each_job() {
    let rejected = [line(3, "failed", false)];
    let state = submitted(["InProgress", WAITING], false);
    let status = Status::batch_job(
        &batch_job_plan(),
        Some(&state),
        &BTreeMap::new(),
        &rejected,
        None,
        at(PLANNED_AT) + 60_000,
    );
    assert_eq!(status.status, "submitted");
    assert_eq!((status.failed, status.pending), (1, 29));
    assert_eq!(status.left_secs, None, "Bedrock's pace is not known");
    assert_eq!(status.exit_code(), EXIT_OK);
    let jobs = &json!(status)["batch_jobs"];
    assert_eq!(
        jobs[0],
        json!({"name": "relay-nightly-p0", "status": "InProgress", "records": 20,
               "arn": "arn:aws:bedrock:us-east-1:111111111111:model-invocation-job/j0"})
    );
    assert_eq!(
        (&jobs[1]["arn"], &jobs[1]["status"]),
        (&Value::Null, &json!("Waiting"))
    );
    assert_eq!(
        jobs_by_status(&status.batch_jobs),
        "1 InProgress, 1 Waiting"
    );
}

/// Every job ended but its answers are not read yet: collecting; once
/// collected, records run on-demand count as a fanned-out batch's chunks.
#[test]
fn ended_jobs_are_collecting_until_collected() {
    let plan = batch_job_plan();
    let ended = submitted(["Completed", "PartiallyCompleted"], false);
    let status = Status::batch_job(&plan, Some(&ended), &BTreeMap::new(), &[], None, 0);
    assert_eq!((status.status.as_str(), status.pending), ("collecting", 30));

    let lines: Vec<Value> = (0..10).map(|i| line(i, "succeeded", false)).collect();
    let summaries = [(0, summary(0, &lines))].into_iter().collect();
    let collected = submitted(["Completed", "PartiallyCompleted"], true);
    let now = at(PLANNED_AT) + 100_000;
    let status = Status::batch_job(&plan, Some(&collected), &summaries, &[], None, now);
    assert_eq!((status.status.as_str(), status.chunks_done), ("running", 1));
    assert_eq!(status.left_secs, Some(200), "10 settled in 100 s, 20 to go");
}

/// The manifest completes a batch job like a fanned-out batch, with each
/// job's final status and Bedrock's counts.
#[test]
fn a_collected_batch_job_is_complete_with_bedrocks_counts() {
    let good: Vec<Value> = (0..30).map(|i| line(i, "succeeded", false)).collect();
    let mut state = submitted(["Completed", "Completed"], true);
    state.parts[0].counts = Some(BedrockCounts {
        total_record_count: Some(20),
        processed_record_count: Some(20),
        success_record_count: Some(20),
        error_record_count: Some(0),
        ..BedrockCounts::default()
    });
    let manifest = Manifest::assemble(
        "nightly",
        PLANNED_AT,
        &[summary(0, &good)],
        "s3://r/n.jsonl".into(),
    )
    .with_batch_jobs(&state);
    let status = Status::batch_job(
        &batch_job_plan(),
        Some(&state),
        &BTreeMap::new(),
        &[],
        Some(&manifest),
        i64::MAX,
    );
    assert!(status.complete);
    assert_eq!(
        (status.status.as_str(), status.succeeded),
        ("succeeded", 30)
    );
    assert_eq!(
        json!(status)["batch_jobs"][0]["bedrock"]["success_record_count"],
        20
    );
    assert_eq!(json!(status)["batch_jobs"][1].get("bedrock"), None);
}

/// The text of a batch job names the reason and has a line per job: its
/// status, records, Bedrock's counts once read, its ARN or why it has
/// none, and Bedrock's message; the time left waits for Bedrock.
#[test]
fn the_text_of_a_batch_job_has_its_reason_and_a_line_per_job() {
    let mut state = submitted(["Expired", WAITING], false);
    state.parts[0].message = Some("the job timed out".into());
    state.parts[0].counts = Some(BedrockCounts {
        processed_record_count: Some(12),
        success_record_count: Some(11),
        error_record_count: Some(1),
        ..BedrockCounts::default()
    });
    let status = Status::batch_job(
        &batch_job_plan(),
        Some(&state),
        &BTreeMap::new(),
        &[],
        None,
        0,
    );
    let text = render(&status);
    assert!(text.contains("mode:      batch-job\n"), "{text}");
    assert!(text.contains(&format!("reason:    {REASON}\n")), "{text}");
    assert!(
        text.contains("batch job: relay-nightly-p0: Expired, 20 records, Bedrock processed 12 (11 succeeded, 1 failed), arn:aws:bedrock:us-east-1:111111111111:model-invocation-job/j0; Bedrock says: the job timed out\n"),
        "{text}"
    );
    assert!(
        text.contains("batch job: relay-nightly-p1: Waiting, 10 records, not submitted yet: it waits for room under the account's batch jobs quota\n"),
        "{text}"
    );
    assert!(
        text.contains("left:      unknown until Bedrock's batch jobs end and are collected\n"),
        "{text}"
    );
}
