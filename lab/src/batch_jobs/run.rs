//! A job's life after create: the task that moves it Submitted →
//! Validating → Scheduled → InProgress, answers its records (shuffled by the
//! job id, paced at `records_per_second`, with the knobs' injected errors)
//! through the runtime's Converse / InvokeModel logic, has the output
//! written and ends it (`Completed`, `PartiallyCompleted`, `Failed`,
//! `Expired` or `Stopped`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::data::{Manifest, Record, Work};
use super::ids::{seed_of, shuffle};
use super::link::MotoLink;
use super::{BatchJob, BatchJobs, BatchKnobs};
use crate::emulator::{self, lock};

impl BatchJobs {
    /// Moves a job on unless it is being stopped; false when it is.
    fn advance(&self, id: &str, status: &str) -> bool {
        let mut jobs = lock(&self.inner.jobs);
        let Some(entry) = jobs.iter_mut().find(|e| e.job.id() == id) else {
            return false;
        };
        if entry.stop {
            return false;
        }
        self.set_status(entry, status, None);
        true
    }

    /// Ends a job; a stop asked for before makes any end but `Failed` `Stopped`.
    fn finish(&self, id: &str, status: &str, message: Option<String>) {
        let mut jobs = lock(&self.inner.jobs);
        let Some(entry) = jobs.iter_mut().find(|e| e.job.id() == id) else {
            return;
        };
        if entry.job.is_ended() {
            return;
        }
        let (status, message) = if entry.stop && status != "Failed" {
            ("Stopped", None)
        } else {
            (status, message)
        };
        self.set_status(entry, status, message);
    }

    fn stop_requested(&self, id: &str) -> bool {
        lock(&self.inner.jobs)
            .iter()
            .find(|e| e.job.id() == id)
            .is_some_and(|e| e.stop)
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut BatchJob)) {
        if let Some(entry) = lock(&self.inner.jobs).iter_mut().find(|e| e.job.id() == id) {
            change(&mut entry.job);
        }
    }

    /// The job's life after create.
    pub(super) async fn run(self, link: Arc<MotoLink>, spec: JobSpec, work: Work) {
        let id = spec.id.as_str();
        let knobs = &spec.knobs;
        let phase = Duration::from_millis(knobs.phase_ms);
        tokio::time::sleep(phase).await;
        if !self.advance(id, "Validating") {
            return self.finish(id, "Stopped", None);
        }
        tokio::time::sleep(phase).await;
        let files = match (&knobs.fail_validation, work.files) {
            (Some(message), _) => Err(message.clone()),
            (None, files) => files,
        };
        let files = match files {
            Ok(files) => files,
            Err(message) => return self.finish(id, "Failed", Some(message)),
        };
        if !self.advance(id, "Scheduled") {
            return self.finish(id, "Stopped", None);
        }
        tokio::time::sleep(phase).await;
        if !self.advance(id, "InProgress") {
            return self.finish(id, "Stopped", None);
        }

        let mut order = Vec::new();
        for (f, file) in files.iter().enumerate() {
            for r in 0..file.records.len() {
                order.push((f, r, order.len() + 1));
            }
        }
        let total = order.len();
        self.update(id, |job| job.total_record_count = Some(total as u64));
        shuffle(&mut order, seed_of(id));

        let mut lines: Vec<Vec<String>> = vec![Vec::new(); files.len()];
        let mut counts = Manifest {
            total_record_count: total as u64,
            ..Manifest::default()
        };
        let rate = knobs.records_per_second.max(0.001);
        let started = Instant::now();
        let mut ending: Option<(&str, Option<String>)> = None;
        for (n, &(f, r, position)) in order.iter().enumerate() {
            if self.stop_requested(id) {
                ending = Some(("Stopped", None));
                break;
            }
            if knobs.expire_after_records == Some(n) {
                ending = Some((
                    "Expired",
                    Some(format!(
                        "The job did not finish within its timeout of {} hours.",
                        spec.hours
                    )),
                ));
                break;
            }
            let record = &files[f].records[r];
            let (line, tokens) = answer_record(&spec, record, position);
            lines[f].push(line.to_string());
            counts.processed_record_count += 1;
            match tokens {
                Some(tokens) => {
                    counts.success_record_count += 1;
                    counts.input_token_count += tokens.input.max(0) as u64;
                    counts.output_token_count += tokens.output.max(0) as u64;
                }
                None => counts.error_record_count += 1,
            }
            self.update(id, |job| {
                job.processed_record_count = counts.processed_record_count;
                job.success_record_count = counts.success_record_count;
                job.error_record_count = counts.error_record_count;
            });
            let due = started + Duration::from_secs_f64((n + 1) as f64 / rate);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }

        if let Err(message) = link
            .write_output(&work.output, id, &files, &lines, &counts)
            .await
        {
            return self.finish(id, "Failed", Some(message));
        }
        let (status, message) = match ending {
            Some((status, message)) => (status, message),
            None if counts.error_record_count == 0 => ("Completed", None),
            None if counts.success_record_count == 0 => (
                "Failed",
                Some(
                    "Every record of the job failed: see the error lines in the output.".to_owned(),
                ),
            ),
            None => ("PartiallyCompleted", None),
        };
        self.finish(id, status, message);
    }
}

/// What the task needs besides the work: the job's settings.
pub(super) struct JobSpec {
    pub(super) id: String,
    pub(super) model_id: String,
    pub(super) invocation_type: String,
    pub(super) knobs: BatchKnobs,
    pub(super) hours: i32,
}

/// One record's output line, and its token counts if answered.
fn answer_record(
    spec: &JobSpec,
    record: &Record,
    position: usize,
) -> (Value, Option<emulator::Tokens>) {
    let knobs = &spec.knobs;
    let injected = knobs
        .fail_record_ids_containing
        .as_deref()
        .is_some_and(|text| record.record_id.contains(text))
        || knobs
            .fail_every_nth
            .is_some_and(|n| n > 0 && position.is_multiple_of(n));
    let error = |code: u16, message: &str| {
        json!({
            "recordId": record.record_id,
            "modelInput": record.model_input,
            "error": {"errorCode": code, "errorMessage": message},
        })
    };
    if injected {
        return (
            error(knobs.record_error_code, &knobs.record_error_message),
            None,
        );
    }
    // A record gets the model's checks (tiers, schemas, cache points) as the
    // knobs' defaults set them, but no prompt cache: batch inference has none.
    let defaults = emulator::Knobs::default();
    let env = emulator::Env::offline(&defaults);
    let output = if spec.invocation_type == "Converse" {
        emulator::converse_reply(&spec.model_id, &record.model_input, &env)
    } else {
        emulator::invoke_reply(
            &spec.model_id,
            &record.model_input,
            &Default::default(),
            &env,
        )
    }
    .map(|answer| (answer.body, answer.tokens));
    match output {
        Ok((reply, tokens)) => (
            json!({
                "recordId": record.record_id,
                "modelInput": record.model_input,
                "modelOutput": reply,
            }),
            Some(tokens),
        ),
        Err((status, _, message)) => (error(status, &message), None),
    }
}
