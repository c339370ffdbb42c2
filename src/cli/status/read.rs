//! The reads behind `status` (the work store, the destination) and the
//! command itself: once, or `--watch`ing until the job is complete. A batch
//! job's state is read again on every read (the check schedule and Bedrock's
//! events change it); the plan and the chunks done are read once.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use super::{human_duration, jobs_by_status, render, Status};
use crate::cli::{EXIT_FAILED, EXIT_USAGE};
use crate::config::Config;
use crate::destination::s3::parse_lines;
use crate::destination::{DestinationError, DestinationSpec, S3Destination};
use crate::domain::chunks::BatchPlan;
use crate::domain::manifest::{ChunkSummary, Manifest};
use crate::work::WorkStore;

/// Failed reads in a row after which `--watch` gives up.
const MAX_FAILED_POLLS: u32 = 5;
/// Chunk summaries and progress objects read at once.
const READS_AT_ONCE: usize = 16;

/// Why no status could be read, and the exit code that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// [`EXIT_FAILED`] or [`EXIT_USAGE`].
    pub code: i32,
    /// What went wrong and what to do.
    pub message: String,
}

impl Problem {
    fn read(err: impl std::fmt::Display) -> Self {
        Self {
            code: EXIT_FAILED,
            message: format!("the status could not be read: {err}"),
        }
    }

    fn report(&self, job_id: &str, json_output: bool) -> i32 {
        match json_output {
            true => println!("{}", json!({"job_id": job_id, "error": self.message})),
            false => eprintln!("{}", self.message),
        }
        self.code
    }
}

/// Where `status` reads: the work store (when batches fan out) and the
/// default destination (when it is S3; else its text).
#[derive(Debug)]
pub struct Reader {
    store: Option<WorkStore>,
    destination: Result<S3Destination, String>,
    /// The plan, once read: it never changes.
    plan: Option<BatchPlan>,
    /// Summaries read so far: a chunk done stays done.
    summaries: BTreeMap<usize, ChunkSummary>,
}

impl Reader {
    /// A reader with the clients of `base` and the places `config` names.
    pub fn new(config: &Config, base: &aws_config::SdkConfig) -> Self {
        let sinks = config.destinations(base);
        Self {
            store: config
                .fan_out
                .as_ref()
                .map(|fan_out| WorkStore::new(&sinks, &fan_out.store)),
            destination: match &config.destination {
                DestinationSpec::S3(location) => Ok(sinks.s3_at(location)),
                other => Err(other.to_string()),
            },
            plan: None,
            summaries: BTreeMap::new(),
        }
    }

    /// Where `job_id` has got now.
    pub async fn read(&mut self, job_id: &str) -> Result<Status, Problem> {
        let mut looked = Vec::new();
        if let Some(store) = self.store.clone() {
            if self.plan.is_none() {
                self.plan = store.read_plan(job_id).await.map_err(Problem::read)?;
            }
            if let Some(plan) = self.plan.clone() {
                return self.fan_out(&store, &plan).await.map_err(Problem::read);
            }
            looked.push(store.plan_uri(job_id));
        }
        let s3 = match &self.destination {
            Ok(s3) => s3,
            Err(destination) => {
                let plan = match looked.first() {
                    Some(uri) => format!("no fan-out plan of `{job_id}` at {uri}, and "),
                    None => String::new(),
                };
                return Err(Problem {
                    code: EXIT_USAGE,
                    message: format!("{plan}status reads batches in one invocation and single jobs from an S3 destination only, and RELAY_DESTINATION is {destination}: set RELAY_DESTINATION to the s3://bucket/prefix/ the job wrote to, or read its results in {destination} directly"),
                });
            }
        };
        let location = s3.location();
        let now = now_ms();
        let keys = [
            location.batch_key_for(job_id),
            location.progress_key_for(job_id),
            location.key_for(job_id),
        ];
        for (i, key) in keys.iter().enumerate() {
            let uri = location.uri_of(key);
            let Some(bytes) = s3.read(key).await.map_err(Problem::read)? else {
                looked.push(uri);
                continue;
            };
            return match i {
                0 | 1 => Ok(Status::in_invocation(
                    job_id,
                    &parse_lines(&bytes).collect::<Vec<_>>(),
                    i == 0,
                    uri,
                    now,
                )),
                _ => {
                    let record: Value = serde_json::from_slice(&bytes).map_err(|err| Problem {
                        code: EXIT_FAILED,
                        message: format!("{uri} is not a job record ({err}); it is not what bedrock-relay writes there"),
                    })?;
                    Ok(Status::record(job_id, &record, uri, now))
                }
            };
        }
        Err(Problem {
            code: EXIT_FAILED,
            message: format!(
                "no job `{job_id}` found: looked for {}; check the job id (an id scoped by RELAY_ID_PREFIX carries its prefix) and that RELAY_WORK_STORE and RELAY_DESTINATION are the function's",
                looked.join(", ")
            ),
        })
    }

    /// A fanned-out batch (or one run as batch jobs): the manifest, or the
    /// chunks so far.
    async fn fan_out(
        &mut self,
        store: &WorkStore,
        plan: &BatchPlan,
    ) -> Result<Status, DestinationError> {
        let batch = plan.job_id.as_str();
        let batch_jobs = plan.mode.as_ref().is_some_and(|m| m.mode == "batch-job");
        // Read before the chunks: a state that says collected then comes
        // with every chunk the collection saved.
        let state = match batch_jobs {
            true => store.read_batch_jobs(batch).await?,
            false => None,
        };
        let status = |summaries: &BTreeMap<usize, ChunkSummary>,
                      progress: &[Value],
                      manifest: Option<&Manifest>| match batch_jobs {
            true => Status::batch_job(
                plan,
                state.as_ref(),
                summaries,
                progress,
                manifest,
                now_ms(),
            ),
            false => Status::fan_out(plan, summaries, progress, manifest, now_ms()),
        };
        if let Some(manifest) = store.manifest(batch).await? {
            return Ok(status(&self.summaries, &[], Some(&manifest)));
        }
        let (done, with_progress) = store.chunk_numbers(batch).await?;
        let new: Vec<usize> = done
            .iter()
            .copied()
            .filter(|chunk| !self.summaries.contains_key(chunk))
            .collect();
        let read: Vec<_> = stream::iter(new)
            .map(|chunk| store.summary(batch, chunk))
            .buffer_unordered(READS_AT_ONCE)
            .collect()
            .await;
        for summary in read {
            if let Some(summary) = summary? {
                self.summaries.insert(summary.chunk, summary);
            }
        }
        let running: Vec<usize> = with_progress
            .iter()
            .copied()
            .filter(|chunk| *chunk < plan.chunks.len() && !self.summaries.contains_key(chunk))
            .collect();
        let read: Vec<_> = stream::iter(running)
            .map(|chunk| store.chunk_progress(batch, chunk))
            .buffer_unordered(READS_AT_ONCE)
            .collect()
            .await;
        let mut progress = Vec::new();
        for lines in read {
            progress.extend(lines?);
        }
        Ok(status(&self.summaries, &progress, None))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn print(status: &Status, json_output: bool) {
    match json_output {
        true => println!("{}", json!(status)),
        false => print!("{}", render(status)),
    }
}

/// Prints where `job_id` has got; with `watch`, keeps reading every
/// `interval` until it is complete (a progress bar on stderr, or one JSON
/// line per read). Returns the exit code.
pub async fn run(
    reader: &mut Reader,
    job_id: &str,
    watch: bool,
    interval: Duration,
    json_output: bool,
) -> i32 {
    let mut status = match reader.read(job_id).await {
        Ok(status) => status,
        Err(problem) => return problem.report(job_id, json_output),
    };
    if !watch || status.complete {
        print(&status, json_output);
        return status.exit_code();
    }
    let bar = match json_output {
        true => None,
        false => Some(progress_bar(&status)),
    };
    let mut failed_polls = 0;
    loop {
        match &bar {
            Some(bar) => show(bar, &status),
            None => print(&status, true),
        }
        tokio::time::sleep(interval).await;
        match reader.read(job_id).await {
            Ok(now) => {
                failed_polls = 0;
                status = now;
            }
            Err(problem) => {
                failed_polls += 1;
                if failed_polls >= MAX_FAILED_POLLS {
                    if let Some(bar) = &bar {
                        bar.abandon();
                    }
                    return problem.report(job_id, json_output);
                }
                let warning = format!(
                    "{}; reading again in {}s",
                    problem.message,
                    interval.as_secs()
                );
                match &bar {
                    Some(bar) => bar.println(warning),
                    None => eprintln!("{warning}"),
                }
                continue;
            }
        }
        if status.complete {
            if let Some(bar) = &bar {
                show(bar, &status);
                bar.finish_and_clear();
            }
            print(&status, json_output);
            return status.exit_code();
        }
    }
}

/// A bar over the job's items, drawn on stderr so stdout stays clean.
fn progress_bar(status: &Status) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(status.items), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} items {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(status.job_id.clone());
    bar
}

fn show(bar: &ProgressBar, status: &Status) {
    bar.set_length(status.items);
    bar.set_position(status.settled());
    let left = match status.left_secs {
        Some(secs) => format!(", about {} left", human_duration(secs)),
        None => String::new(),
    };
    let jobs = match status.batch_jobs.is_empty() {
        true => String::new(),
        false => format!(
            "; {}, batch jobs: {}",
            status.status,
            jobs_by_status(&status.batch_jobs)
        ),
    };
    bar.set_message(format!(
        "({} succeeded, {} failed, {} throttles; chunks {}/{}{left}{jobs})",
        status.succeeded, status.failed, status.throttles, status.chunks_done, status.chunks_total
    ));
}
