//! The batch-job mode's plain data: a job's `mode` and `complete_within`,
//! which mode a batch runs in and why ([`choose`]), the timeout, names,
//! tokens and record ids a Bedrock batch inference job
//! (`CreateModelInvocationJob`) is given, and how a batch is split into jobs.
//! What Bedrock writes back is `batch_output.rs`.
//!
//! Nothing here calls AWS. Every name and token is derived from the relay's
//! job id, so a redelivered event derives the same ones: Bedrock's
//! `clientRequestToken` then refuses to start the same job twice.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The fewest hours `timeoutDurationInHours` takes, and so the shortest
/// `complete_within` a batch job fits in: Bedrock may take that long.
pub const MIN_TIMEOUT_HOURS: u32 = 24;
/// The most hours `timeoutDurationInHours` takes.
pub const MAX_TIMEOUT_HOURS: u32 = 168;
/// Bedrock's usual quota of records a job needs (`RELAY_BATCH_JOB_MIN_RECORDS`'s default).
pub const DEFAULT_MIN_RECORDS: usize = 100;
/// Bedrock's usual quota of records per job (`RELAY_BATCH_JOB_MAX_RECORDS`'s default).
pub const DEFAULT_MAX_RECORDS: usize = 50_000;
/// Bedrock's usual quota of bytes per input file (1 GB): the caller splits
/// staged files under it with `line_bytes` (`bedrock/batch_records.rs`).
pub const MAX_INPUT_FILE_BYTES: u64 = 1_000_000_000;

/// Bedrock's limit on `jobName`.
const JOB_NAME_MAX: usize = 63;
/// Digits after the `r` of a record id: sortable as text up to 10^10 items,
/// far past `RELAY_MAX_ITEMS`'s ceiling.
const RECORD_ID_DIGITS: usize = 10;
/// Hex digits of the job id's hash in a job name: names are for people (the
/// token is what makes a submission unique), so a short hash that tells two
/// ids with the same readable prefix apart is enough.
const JOB_NAME_HASH_HEX: usize = 12;

/// A job's `mode`: how its batch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobMode {
    /// Model calls now, in this invocation or fanned out in chunks.
    OnDemand,
    /// A Bedrock batch inference job: half the price, done within `complete_within`.
    BatchJob,
    /// A batch job when the batch is large enough and may take 24 hours, else on-demand.
    Auto,
}

impl JobMode {
    /// The mode as written in a job or `RELAY_DEFAULT_MODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnDemand => "on-demand",
            Self::BatchJob => "batch-job",
            Self::Auto => "auto",
        }
    }

    /// Parses `on-demand`, `batch-job` or `auto`.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::OnDemand, Self::BatchJob, Self::Auto]
            .into_iter()
            .find(|mode| mode.as_str() == text)
    }
}

impl fmt::Display for JobMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a job's `complete_within`: an ISO 8601 duration (`PT24H`, `PT90M`,
/// `P2D`, `P1W`) that is positive. Days are 24 hours and weeks 7 days; years
/// and months are refused, having no fixed length.
pub fn parse_complete_within(text: &str) -> Result<Duration, String> {
    let span = jiff::fmt::temporal::SpanParser::new()
        .parse_span(text.trim())
        .map_err(|_| {
            "not an ISO 8601 duration; write e.g. PT24H (24 hours), PT36H or P2D (2 days)"
                .to_owned()
        })?;
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(
            "years and months have no fixed length; give days, weeks or hours, e.g. P30D".into(),
        );
    }
    if span.is_negative() || span.is_zero() {
        return Err("the duration must be positive, e.g. PT24H".into());
    }
    span.to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .ok()
        .and_then(|signed| Duration::try_from(signed).ok())
        .ok_or_else(|| "the duration is too long; give at most a few years in days".to_owned())
}

/// The mode a batch runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunMode {
    /// Model calls now.
    OnDemand,
    /// Bedrock batch inference jobs.
    BatchJob,
}

/// The mode chosen for a batch, and why (for the record and the manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModeChoice {
    /// The mode.
    pub mode: RunMode,
    /// Which condition decided, in words, e.g. `auto: 40 items is under ...`.
    pub reason: String,
}

/// What the configuration allows for a batch's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchJobSettings {
    /// `RELAY_BATCH_STAGING` is set and every target of the batch has a batch
    /// service role.
    pub configured: bool,
    /// The fewest records a job takes (`RELAY_BATCH_JOB_MIN_RECORDS`).
    pub min_records: usize,
}

/// What a batch asks of its run mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Items in the batch.
    pub items: usize,
    /// The job's `complete_within`.
    pub complete_within: Option<Duration>,
    /// Whether items are Converse requests (`prompt` or `messages`); `invoke`
    /// jobs are not, and batch jobs here take only Converse records.
    pub converse: bool,
    /// A feature the items ask for that only on-demand calls have (a
    /// guardrail, a service tier), named as the job names it.
    pub on_demand_feature: Option<&'static str>,
}

/// `batch-job` was asked for but cannot run; each says what to change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModeError {
    /// No staging location, or a target without a batch service role.
    #[error("mode: `batch-job` needs RELAY_BATCH_STAGING and a batch service role for each of the job's targets (RELAY_BATCH_ROLE_ARN, or `batch_role_arn` in RELAY_TARGETS); configure them, or use mode `auto` or `on-demand`")]
    NotConfigured,
    /// An `invoke` job.
    #[error("mode: `batch-job` sends Converse records, so it runs `prompt` and `messages` jobs; run an `invoke` job with mode `on-demand`")]
    NotConverse,
    /// A feature batch jobs do not take.
    #[error("mode: `batch-job` records take no `{feature}` (Bedrock applies guardrails and service tiers to on-demand calls), so this batch runs with mode `on-demand` or `auto`; or leave `{feature}` out")]
    OnDemandFeature {
        /// The job's field.
        feature: &'static str,
    },
    /// Fewer items than a job takes.
    #[error("mode: `batch-job` needs at least {min_records} items (RELAY_BATCH_JOB_MIN_RECORDS) and the batch has {items}; add items, or use mode `auto` or `on-demand`")]
    TooFewItems {
        /// Items in the batch.
        items: usize,
        /// The minimum.
        min_records: usize,
    },
    /// No time window of at least 24 hours.
    #[error("complete_within: a batch job may take up to 24 hours, so `batch-job` needs complete_within of at least PT24H ({given}); give PT24H or more, or use mode `auto` or `on-demand`")]
    TooSoon {
        /// What the job gave, in words.
        given: String,
    },
}

/// Chooses how a batch runs. `on-demand` always runs on-demand; `batch-job`
/// runs as batch jobs or fails saying what is missing; `auto` runs as batch
/// jobs only when they are configured for the batch's targets, the items are
/// Converse requests, `complete_within` is at least 24 hours and the batch has
/// at least `min_records` items, and otherwise on-demand, naming the condition
/// that decided.
pub fn choose(
    requested: JobMode,
    work: &Workload,
    settings: &BatchJobSettings,
) -> Result<ModeChoice, ModeError> {
    let on_demand = |reason: String| ModeChoice {
        mode: RunMode::OnDemand,
        reason,
    };
    match requested {
        JobMode::OnDemand => Ok(on_demand("requested: mode `on-demand`".into())),
        JobMode::BatchJob => match batch_obstacle(work, settings, false) {
            Some(error) => Err(error),
            None => Ok(ModeChoice {
                mode: RunMode::BatchJob,
                reason: "requested: mode `batch-job`".into(),
            }),
        },
        JobMode::Auto => Ok(match batch_obstacle(work, settings, true) {
            None => ModeChoice {
                mode: RunMode::BatchJob,
                reason: format!(
                    "auto: {} items and complete_within of {} allow a batch job (half the on-demand price)",
                    work.items,
                    work.complete_within.map(hours_text).unwrap_or_default()
                ),
            },
            Some(ModeError::NotConfigured) => on_demand(
                "auto: batch jobs are not configured for this job's targets (RELAY_BATCH_STAGING and a batch role)".into(),
            ),
            Some(ModeError::NotConverse) => on_demand(
                "auto: an `invoke` job runs on-demand (batch jobs here take Converse records)".into(),
            ),
            Some(ModeError::OnDemandFeature { feature }) => on_demand(format!(
                "auto: `{feature}` applies to on-demand calls only, so the batch runs on-demand"
            )),
            Some(ModeError::TooSoon { given }) => on_demand(match work.complete_within {
                None => "auto: no complete_within, so the batch runs now; give complete_within of at least PT24H to allow a batch job".into(),
                Some(_) => format!("auto: complete_within of {given} is under the 24 hours a batch job may take"),
            }),
            Some(ModeError::TooFewItems { items, min_records }) => on_demand(format!(
                "auto: {items} items is under the {min_records} records a batch job needs (RELAY_BATCH_JOB_MIN_RECORDS)"
            )),
        }),
    }
}

/// The first reason the batch cannot run as batch jobs, in the order `auto`
/// reports them. `needs_window`: whether a missing `complete_within` is one
/// (for `auto`, which then runs now; an explicit `batch-job` without one
/// takes Bedrock's longest timeout, see [`timeout_hours`]).
fn batch_obstacle(
    work: &Workload,
    settings: &BatchJobSettings,
    needs_window: bool,
) -> Option<ModeError> {
    let day = Duration::from_secs(u64::from(MIN_TIMEOUT_HOURS) * 3600);
    let too_soon = match work.complete_within {
        Some(within) if within < day => Some(hours_text(within)),
        None if needs_window => Some("none given".to_owned()),
        _ => None,
    };
    if !work.converse {
        Some(ModeError::NotConverse)
    } else if let Some(feature) = work.on_demand_feature {
        Some(ModeError::OnDemandFeature { feature })
    } else if !settings.configured {
        Some(ModeError::NotConfigured)
    } else if let Some(given) = too_soon {
        Some(ModeError::TooSoon { given })
    } else if work.items < settings.min_records {
        Some(ModeError::TooFewItems {
            items: work.items,
            min_records: settings.min_records,
        })
    } else {
        None
    }
}

/// A duration for people: whole hours as `48 h`, else hours to one decimal.
fn hours_text(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs % 3600 == 0 {
        format!("{} h", secs / 3600)
    } else {
        format!("{:.1} h", duration.as_secs_f64() / 3600.0)
    }
}

/// `timeoutDurationInHours` for a batch job: the caller's whole window
/// (`complete_within`), rounded down to whole hours so the job never outlives
/// it, and kept within Bedrock's 24–168 hours. No window: 168 hours, the
/// longest Bedrock allows.
pub fn timeout_hours(complete_within: Option<Duration>) -> u32 {
    let Some(within) = complete_within else {
        return MAX_TIMEOUT_HOURS;
    };
    let hours = u32::try_from(within.as_secs() / 3600).unwrap_or(u32::MAX);
    hours.clamp(MIN_TIMEOUT_HOURS, MAX_TIMEOUT_HOURS)
}

/// The `recordId` of the item at `index` (from 0, over the whole batch, not
/// per job): `r` and ten zero-padded digits, e.g. `r0000000123`, so ids sort
/// as text in input order. Bedrock's output is in no order; the id maps each
/// answer back to its item.
pub fn record_id(index: usize) -> String {
    format!("r{index:0width$}", width = RECORD_ID_DIGITS)
}

/// The item index a `recordId` made by [`record_id`] stands for; `None` for
/// any other text (another writer's id, or a non-canonical one such as `r12`).
pub fn parse_record_id(id: &str) -> Option<usize> {
    let digits = id.strip_prefix('r')?;
    if digits.len() < RECORD_ID_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index: usize = digits.parse().ok()?;
    (record_id(index) == id).then_some(index)
}

/// The lowercase hex SHA-256 of `text`.
fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The `clientRequestToken` of a batch's job `part`: `relay-`, the SHA-256
/// of the job id in hex, and `-p<part>` (at most 92 characters, within
/// Bedrock's 256 and its pattern `[a-zA-Z0-9](-*[a-zA-Z0-9])*` whatever the
/// id holds). The same job id and part always give the same token, so a
/// redelivered event gets the job already submitted back instead of a second
/// one.
pub fn client_request_token(job_id: &str, part: usize) -> String {
    format!("relay-{}-p{part}", sha256_hex(job_id))
}

/// The `jobName` of a batch's job `part`, for people reading the console:
/// `relay-`, the job id with every character outside letters, digits, `.`
/// and `+` made `-` (runs of `-` folded) and cut to fit, a short hash of the
/// whole id, and `-p<part>`. Always within Bedrock's 63 characters and its
/// pattern `[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}`.
pub fn job_name(job_id: &str, part: usize) -> String {
    let hash = sha256_hex(job_id);
    let tail = format!("{}-p{part}", &hash[..JOB_NAME_HASH_HEX]);
    let mut readable = String::new();
    for c in job_id.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '.' || c == '+' {
            c
        } else {
            '-'
        };
        if !(c == '-' && (readable.is_empty() || readable.ends_with('-'))) {
            readable.push(c);
        }
    }
    let room = JOB_NAME_MAX.saturating_sub("relay-".len() + 1 + tail.len());
    readable.truncate(room);
    let readable = readable.trim_end_matches('-');
    if readable.is_empty() {
        format!("relay-{tail}")
    } else {
        format!("relay-{readable}-{tail}")
    }
}

/// Splits `records` items into jobs of at most `max_records_per_job`: as
/// few jobs as fit, and items shared evenly between them (the first jobs
/// take one more when they do not divide), in input order. Even shares make
/// the smallest job as large as any split into that many jobs can, so no job
/// falls under the minimum records when any split avoids it: with a minimum
/// of at most half the maximum (what the configuration checks), every batch
/// of at least the minimum gives jobs of at least the minimum.
pub fn split_parts(records: usize, max_records_per_job: usize) -> Vec<Range<usize>> {
    if records == 0 {
        return Vec::new();
    }
    let max = max_records_per_job.max(1);
    let parts = records.div_ceil(max);
    let (share, extra) = (records / parts, records % parts);
    let mut start = 0;
    (0..parts)
        .map(|part| {
            let len = share + usize::from(part < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn settings() -> BatchJobSettings {
        BatchJobSettings {
            configured: true,
            min_records: 100,
        }
    }

    fn work(items: usize, hours: Option<u32>) -> Workload {
        Workload {
            items,
            complete_within: hours.map(|h| h * HOUR),
            converse: true,
            on_demand_feature: None,
        }
    }

    /// `PT24H`, `P2D`, `P1W` and fractions parse; years, months, zero,
    /// negative and friendly or junk text are refused with what to write.
    #[test]
    fn complete_within_takes_iso_8601_durations_of_fixed_length() {
        assert_eq!(parse_complete_within("PT24H"), Ok(24 * HOUR));
        assert_eq!(parse_complete_within("P2D"), Ok(48 * HOUR));
        assert_eq!(parse_complete_within("P1W"), Ok(168 * HOUR));
        assert_eq!(parse_complete_within("P1DT12H"), Ok(36 * HOUR));
        assert_eq!(
            parse_complete_within("PT90M"),
            Ok(90 * 60 * Duration::from_secs(1))
        );
        assert_eq!(parse_complete_within(" pt36h "), Ok(36 * HOUR));
        assert!(parse_complete_within("P1M").is_err_and(|e| e.contains("P30D")));
        assert!(parse_complete_within("P1Y").is_err_and(|e| e.contains("no fixed length")));
        assert!(parse_complete_within("PT0S").is_err_and(|e| e.contains("positive")));
        assert!(parse_complete_within("-PT24H").is_err_and(|e| e.contains("positive")));
        for junk in ["24h", "24 hours", "", "P", "tomorrow"] {
            assert!(
                parse_complete_within(junk).is_err_and(|e| e.contains("ISO 8601")),
                "{junk}"
            );
        }
    }

    /// `auto` picks a batch job only when every condition holds, and names
    /// the one that sent it on-demand otherwise.
    #[test]
    fn auto_names_the_condition_that_decided() {
        let choice = choose(JobMode::Auto, &work(120, Some(48)), &settings()).expect("auto");
        assert_eq!(choice.mode, RunMode::BatchJob);
        assert!(
            choice.reason.contains("120 items") && choice.reason.contains("48 h"),
            "{}",
            choice.reason
        );

        let choice = choose(JobMode::Auto, &work(40, Some(48)), &settings()).expect("auto");
        assert_eq!(choice.mode, RunMode::OnDemand);
        assert_eq!(
            choice.reason,
            "auto: 40 items is under the 100 records a batch job needs (RELAY_BATCH_JOB_MIN_RECORDS)"
        );

        let choice = choose(JobMode::Auto, &work(500, Some(12)), &settings()).expect("auto");
        assert_eq!(choice.mode, RunMode::OnDemand);
        assert!(
            choice.reason.contains("12 h is under the 24 hours"),
            "{}",
            choice.reason
        );

        let choice = choose(JobMode::Auto, &work(500, None), &settings()).expect("auto");
        assert_eq!(choice.mode, RunMode::OnDemand);
        assert!(
            choice.reason.contains("no complete_within"),
            "{}",
            choice.reason
        );

        let off = BatchJobSettings {
            configured: false,
            ..settings()
        };
        let choice = choose(JobMode::Auto, &work(500, Some(48)), &off).expect("auto");
        assert_eq!(choice.mode, RunMode::OnDemand);
        assert!(
            choice.reason.contains("not configured"),
            "{}",
            choice.reason
        );

        let invoke = Workload {
            converse: false,
            ..work(500, Some(48))
        };
        let choice = choose(JobMode::Auto, &invoke, &settings()).expect("auto");
        assert_eq!(choice.mode, RunMode::OnDemand);
        assert!(choice.reason.contains("`invoke`"), "{}", choice.reason);
    }

    /// Exactly the minimum and exactly 24 hours are enough.
    #[test]
    fn auto_counts_the_minimum_and_a_day_as_enough() {
        let choice = choose(JobMode::Auto, &work(100, Some(24)), &settings()).expect("auto");
        assert_eq!(choice.mode, RunMode::BatchJob);
        let just_under = Workload {
            complete_within: Some(24 * HOUR - Duration::from_secs(1)),
            ..work(100, None)
        };
        let choice = choose(JobMode::Auto, &just_under, &settings()).expect("auto");
        assert_eq!(choice.mode, RunMode::OnDemand);
    }

    /// An explicit `batch-job` that cannot run is an error saying what to
    /// fix; one that can runs even past 168 hours or with no window.
    #[test]
    fn an_explicit_batch_job_runs_or_says_what_is_missing() {
        let off = BatchJobSettings {
            configured: false,
            ..settings()
        };
        let err = choose(JobMode::BatchJob, &work(500, Some(48)), &off).expect_err("off");
        assert_eq!(err, ModeError::NotConfigured);
        assert!(err.to_string().contains("RELAY_BATCH_STAGING"), "{err}");
        let err = choose(JobMode::BatchJob, &work(40, Some(48)), &settings()).expect_err("few");
        assert!(err.to_string().contains("at least 100 items"), "{err}");
        assert!(err.to_string().contains("has 40"), "{err}");
        let err = choose(JobMode::BatchJob, &work(500, Some(6)), &settings()).expect_err("soon");
        assert!(err.to_string().starts_with("complete_within:"), "{err}");
        assert!(err.to_string().contains("(6 h)"), "{err}");
        let invoke = Workload {
            converse: false,
            ..work(500, Some(48))
        };
        assert_eq!(
            choose(JobMode::BatchJob, &invoke, &settings()),
            Err(ModeError::NotConverse)
        );
        for hours in [None, Some(24), Some(500)] {
            let choice = choose(JobMode::BatchJob, &work(100, hours), &settings()).expect("runs");
            assert_eq!(choice.mode, RunMode::BatchJob, "{hours:?}");
        }
    }

    /// `on-demand` is on-demand whatever else holds.
    #[test]
    fn on_demand_is_always_on_demand() {
        let choice = choose(JobMode::OnDemand, &work(10_000, Some(100)), &settings()).expect("ok");
        assert_eq!(choice.mode, RunMode::OnDemand);
        assert_eq!(choice.reason, "requested: mode `on-demand`");
    }

    /// The timeout is the window in whole hours, rounded down, within 24–168.
    #[test]
    fn the_timeout_is_the_window_rounded_down_within_bedrocks_range() {
        assert_eq!(timeout_hours(Some(48 * HOUR)), 48);
        assert_eq!(
            timeout_hours(Some(48 * HOUR + 59 * 60 * Duration::from_secs(1))),
            48
        );
        assert_eq!(timeout_hours(Some(2 * HOUR)), 24);
        assert_eq!(timeout_hours(Some(1000 * HOUR)), 168);
        assert_eq!(timeout_hours(Some(Duration::MAX)), 168);
        assert_eq!(timeout_hours(None), 168);
    }

    /// Record ids are 11 characters, sort as their indexes do, and parse
    /// back; anything not made by `record_id` does not parse.
    #[test]
    fn record_ids_sort_in_input_order_and_parse_back() {
        assert_eq!(record_id(123), "r0000000123");
        assert_eq!(record_id(0).len(), 11);
        assert!(record_id(9) < record_id(10) && record_id(99_999) < record_id(100_000));
        for index in [0, 1, 123, 49_999, 1_000_000, 9_999_999_999] {
            assert_eq!(parse_record_id(&record_id(index)), Some(index));
        }
        for other in [
            "",
            "r",
            "r12",
            "x0000000123",
            "r00000001a3",
            "r+000000123",
            "r00000000123",
        ] {
            assert_eq!(parse_record_id(other), None, "{other}");
        }
    }

    fn token_ok(token: &str) -> bool {
        // `[a-zA-Z0-9](-*[a-zA-Z0-9])*`: alphanumeric at both ends, `-` between.
        !token.is_empty()
            && token.len() <= 256
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && token
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && token
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric())
    }

    fn name_ok(name: &str) -> bool {
        // `[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}`, at most 63 characters.
        !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    }

    /// Any job id gives a valid token and name, the same ones every time,
    /// and different ones for another id or part.
    #[test]
    fn tokens_and_names_are_valid_and_stable_for_any_job_id() {
        let long = "x/".repeat(300);
        for id in [
            "daily/2026-11-28",
            "a",
            "_:/",
            "ünïcode id",
            long.as_str(),
            "",
        ] {
            for part in [0, 1, 99_999] {
                let token = client_request_token(id, part);
                assert!(token_ok(&token), "{token}");
                assert_eq!(token, client_request_token(id, part));
                let name = job_name(id, part);
                assert!(name_ok(&name), "{name}");
                assert_eq!(name, job_name(id, part));
            }
        }
        assert_ne!(client_request_token("a", 0), client_request_token("a", 1));
        assert_ne!(client_request_token("a", 0), client_request_token("b", 0));
        assert_ne!(
            job_name("a/b", 0),
            job_name("a:b", 0),
            "the hash tells them apart"
        );
        let name = job_name("reports/2026-11-28", 2);
        assert!(
            name.starts_with("relay-reports-2026-11-28-") && name.ends_with("-p2"),
            "{name}"
        );
    }

    /// Parts are even, in order, cover every record once, and respect the
    /// maximum.
    #[test]
    fn parts_are_even_and_never_over_the_maximum() {
        let lens = |parts: Vec<Range<usize>>| parts.iter().map(|r| r.len()).collect::<Vec<_>>();
        assert_eq!(split_parts(0, 50_000), Vec::<Range<usize>>::new());
        assert_eq!(split_parts(100, 50_000), vec![0..100]);
        assert_eq!(lens(split_parts(100_000, 50_000)), vec![50_000, 50_000]);
        assert_eq!(lens(split_parts(50_001, 50_000)), vec![25_001, 25_000]);
        assert_eq!(
            lens(split_parts(120_000, 50_000)),
            vec![40_000, 40_000, 40_000]
        );
        assert_eq!(lens(split_parts(10, 3)), vec![3, 3, 2, 2]);
        assert_eq!(
            lens(split_parts(3, 0)),
            vec![1, 1, 1],
            "a zero maximum counts as one"
        );
        for (records, max) in [(120_001, 50_000), (7, 7), (1_000_000, 50_000), (201, 200)] {
            let parts = split_parts(records, max);
            assert_eq!(parts.first().map(|r| r.start), Some(0));
            assert_eq!(parts.last().map(|r| r.end), Some(records));
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
            assert!(parts.iter().all(|r| r.len() <= max && r.len() >= max / 2));
        }
    }

    /// The wire names of the modes round-trip.
    #[test]
    fn job_modes_are_kebab_case() {
        for mode in [JobMode::OnDemand, JobMode::BatchJob, JobMode::Auto] {
            assert_eq!(JobMode::parse(mode.as_str()), Some(mode));
            assert_eq!(
                serde_json::to_value(mode).expect("serializes"),
                json!(mode.as_str())
            );
        }
        assert_eq!(JobMode::parse("batch"), None);
    }
}
