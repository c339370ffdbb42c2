//! The batch-job settings: the default mode (`RELAY_DEFAULT_MODE`), where
//! batch inference input and output are staged in the model account
//! (`RELAY_BATCH_STAGING`), the batch service roles (`RELAY_BATCH_ROLE_ARN`,
//! or `batch_role_arn` per target in `RELAY_TARGETS`) and the job limits.
//!
//! A batch service role is passed to Bedrock, which refuses one from another
//! account than the job's ("Cross-account pass role is not allowed"), so each
//! target's batch role must be in that target's account: checked here, at
//! cold start.

use std::collections::BTreeMap;

use super::{parse_number, parse_optional, ConfigError, MAX_ITEMS_CEILING};
use crate::destination::S3Location;
use crate::domain::batch_job::{
    BatchJobSettings, JobMode, DEFAULT_MAX_RECORDS, DEFAULT_MIN_RECORDS, MAX_INPUT_FILE_BYTES,
};
use crate::domain::target::{RoleArn, Target};

/// Concurrent batch jobs per account Bedrock usually allows (submitted and
/// in progress); `RELAY_BATCH_MAX_ACTIVE_JOBS`'s default.
const DEFAULT_MAX_ACTIVE_JOBS: u64 = 20;

/// How batches may run as Bedrock batch inference jobs.
#[derive(Debug, Clone)]
pub struct BatchJobs {
    /// The mode of jobs that name none (`RELAY_DEFAULT_MODE`; `auto` by default).
    pub default_mode: JobMode,
    /// Where input records and Bedrock's output go (`RELAY_BATCH_STAGING`,
    /// `s3://bucket/prefix/` in the model account, read and written with
    /// RoleA); `None`: batch jobs are off.
    pub staging: Option<S3Location>,
    /// Each target's batch service role, by alias: its `batch_role_arn`, else
    /// `RELAY_BATCH_ROLE_ARN`. A target missing here runs on-demand only.
    pub roles: BTreeMap<String, RoleArn>,
    /// The fewest records a job takes (`RELAY_BATCH_JOB_MIN_RECORDS`).
    pub min_records: usize,
    /// The most records a job takes (`RELAY_BATCH_JOB_MAX_RECORDS`); larger
    /// batches are split (`domain::batch_job::split_parts`).
    pub max_records: usize,
    /// Jobs submitted or in progress at once per account
    /// (`RELAY_BATCH_MAX_ACTIVE_JOBS`); more wait their turn.
    pub max_active_jobs: usize,
    /// The largest input file a job takes (`RELAY_BATCH_JOB_MAX_FILE_BYTES`,
    /// Bedrock's per-model quota, 1 GB by default); a part that would be
    /// larger is split into more jobs.
    pub max_file_bytes: u64,
}

impl BatchJobs {
    /// The batch service role of the target `alias`, if it has one.
    pub fn role_for(&self, alias: &str) -> Option<&RoleArn> {
        self.roles.get(alias)
    }

    /// What [`crate::domain::batch_job::choose`] needs to know for a batch
    /// on `pool`: batch jobs are configured when there is a staging location
    /// and every target of the pool has a batch role.
    pub fn settings(&self, pool: &[&Target]) -> BatchJobSettings {
        BatchJobSettings {
            configured: self.staging.is_some()
                && !pool.is_empty()
                && pool.iter().all(|t| self.roles.contains_key(&t.alias)),
            min_records: self.min_records,
        }
    }

    /// The staging prefix as `s3://bucket/prefix/`: never a source a job may
    /// read (it holds other jobs' rendered records).
    pub(super) fn staging_uri(&self) -> Option<String> {
        self.staging
            .as_ref()
            .map(|staging| staging.uri_of(&staging.prefix))
    }
}

/// Reads the batch-job settings for `targets`, whose `batch_role_arn`s (as
/// given in `RELAY_TARGETS`) are `target_roles`.
pub(super) fn batch_jobs(
    get: &impl Fn(&str) -> Option<String>,
    targets: &BTreeMap<String, Target>,
    target_roles: BTreeMap<String, String>,
) -> Result<BatchJobs, ConfigError> {
    let default_mode = match get("RELAY_DEFAULT_MODE") {
        None => JobMode::Auto,
        Some(raw) => JobMode::parse(raw.trim()).ok_or_else(|| ConfigError::Invalid {
            var: "RELAY_DEFAULT_MODE",
            reason: format!("`{}` is not `on-demand`, `batch-job` or `auto`", raw.trim()),
        })?,
    };
    let staging = parse_optional(
        get("RELAY_BATCH_STAGING"),
        "RELAY_BATCH_STAGING",
        S3Location::parse,
    )?;
    let default_role = parse_optional(
        get("RELAY_BATCH_ROLE_ARN"),
        "RELAY_BATCH_ROLE_ARN",
        RoleArn::parse,
    )?;
    let roles = target_batch_roles(targets, target_roles, default_role.as_ref())?;

    match (&staging, roles.is_empty()) {
        (Some(_), true) => {
            return Err(ConfigError::Missing {
                var: "RELAY_BATCH_ROLE_ARN",
                hint: "RELAY_BATCH_STAGING is set, so batch jobs need a batch service role in the model account (trusting bedrock.amazonaws.com): set it, or `batch_role_arn` per target in RELAY_TARGETS, or unset RELAY_BATCH_STAGING",
            })
        }
        (None, false) => {
            return Err(ConfigError::Missing {
                var: "RELAY_BATCH_STAGING",
                hint: "a batch service role is set, so batch jobs need a staging location for their records: set it to s3://bucket/prefix/ in the model account (deploy/account-a.yaml creates one), or unset the batch roles",
            })
        }
        _ => {}
    }
    if staging.is_none() && default_mode == JobMode::BatchJob {
        return Err(ConfigError::Missing {
            var: "RELAY_BATCH_STAGING",
            hint: "RELAY_DEFAULT_MODE is `batch-job`, which needs batch jobs configured: set RELAY_BATCH_STAGING and RELAY_BATCH_ROLE_ARN, or use `auto` or `on-demand`",
        });
    }

    let max_records = parse_number(
        get("RELAY_BATCH_JOB_MAX_RECORDS"),
        "RELAY_BATCH_JOB_MAX_RECORDS",
        1..=MAX_ITEMS_CEILING,
        DEFAULT_MAX_RECORDS as u64,
    )?;
    let min_records = parse_number(
        get("RELAY_BATCH_JOB_MIN_RECORDS"),
        "RELAY_BATCH_JOB_MIN_RECORDS",
        1..=MAX_ITEMS_CEILING,
        DEFAULT_MIN_RECORDS as u64,
    )?;
    // Even parts of a split batch are over half the maximum, so every batch
    // that reaches the minimum splits into jobs that reach it too.
    if min_records > max_records / 2 {
        return Err(ConfigError::Invalid {
            var: "RELAY_BATCH_JOB_MIN_RECORDS",
            reason: format!(
                "{min_records} is over half of RELAY_BATCH_JOB_MAX_RECORDS ({max_records}), so a split batch could make jobs under the minimum; set it to at most {} or raise the maximum",
                max_records / 2
            ),
        });
    }
    let max_active_jobs = parse_number(
        get("RELAY_BATCH_MAX_ACTIVE_JOBS"),
        "RELAY_BATCH_MAX_ACTIVE_JOBS",
        1..=1000,
        DEFAULT_MAX_ACTIVE_JOBS,
    )?;
    let max_file_bytes = parse_number(
        get("RELAY_BATCH_JOB_MAX_FILE_BYTES"),
        "RELAY_BATCH_JOB_MAX_FILE_BYTES",
        1024..=MAX_INPUT_FILE_BYTES * 100,
        MAX_INPUT_FILE_BYTES,
    )?;
    Ok(BatchJobs {
        max_file_bytes,
        default_mode,
        staging,
        roles,
        min_records: usize::try_from(min_records).unwrap_or(usize::MAX),
        max_records: usize::try_from(max_records).unwrap_or(usize::MAX),
        max_active_jobs: usize::try_from(max_active_jobs).unwrap_or(usize::MAX),
    })
}

/// Each target's batch role: its own `batch_role_arn`, else the default
/// one, each in the target's account.
fn target_batch_roles(
    targets: &BTreeMap<String, Target>,
    mut target_roles: BTreeMap<String, String>,
    default_role: Option<&RoleArn>,
) -> Result<BTreeMap<String, RoleArn>, ConfigError> {
    let cross_account = |role: &RoleArn, target: &Target, fix: &str| {
        format!(
            "`{}` is in account {} but target `{}` runs in account {} (its role_arn); Bedrock refuses a batch service role from another account (\"Cross-account pass role is not allowed\"): {fix}",
            role.arn, role.account, target.alias, target.role.account
        )
    };
    let mut roles = BTreeMap::new();
    for (alias, target) in targets {
        let role = match target_roles.remove(alias) {
            Some(raw) => {
                let invalid = |reason: String| ConfigError::Invalid {
                    var: "RELAY_TARGETS",
                    reason: format!("target `{alias}`: batch_role_arn: {reason}"),
                };
                let role = RoleArn::parse(raw.trim()).map_err(invalid)?;
                if role.account != target.role.account {
                    return Err(invalid(cross_account(
                        &role,
                        target,
                        "use the batch service role in the target's account",
                    )));
                }
                role
            }
            None => match default_role {
                None => continue,
                Some(role) if role.account != target.role.account => {
                    return Err(ConfigError::Invalid {
                        var: "RELAY_BATCH_ROLE_ARN",
                        reason: cross_account(
                            role,
                            target,
                            &format!("set `batch_role_arn` for `{alias}` in RELAY_TARGETS to a role in its account"),
                        ),
                    });
                }
                Some(role) => role.clone(),
            },
        };
        roles.insert(alias.clone(), role);
    }
    Ok(roles)
}

#[cfg(test)]
mod tests {

    use super::super::Config;
    use super::*;

    const STAGING: (&str, &str) = ("RELAY_BATCH_STAGING", "s3://staging-111/relay-batch/");
    const ROLE: (&str, &str) = (
        "RELAY_BATCH_ROLE_ARN",
        "arn:aws:iam::111111111111:role/BedrockBatch",
    );

    /// The required settings, a work queue and store (batch jobs need
    /// them), and `pairs`.
    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let mut all = vec![
            (
                "RELAY_WORK_QUEUE",
                "https://sqs.eu-west-1.amazonaws.com/222222222222/relay-work",
            ),
            ("RELAY_WORK_STORE", "s3://results-bucket/_work/"),
        ];
        all.extend_from_slice(pairs);
        super::super::tests::env(&all)
    }

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::from_lookup(env(pairs)).expect("valid")
    }

    fn error_of(pairs: &[(&str, &str)]) -> String {
        Config::from_lookup(env(pairs))
            .expect_err("config should be refused")
            .to_string()
    }

    fn pool(config: &Config) -> Vec<&Target> {
        config.targets.iter().collect()
    }

    /// Without any batch variable nothing changes: `auto`, batch jobs off,
    /// the documented limits.
    #[test]
    fn without_batch_settings_batch_jobs_are_off() {
        let config = config(&[]);
        let batch = &config.batch_jobs;
        assert_eq!(batch.default_mode, JobMode::Auto);
        assert!(batch.staging.is_none() && batch.roles.is_empty());
        assert_eq!(
            (batch.min_records, batch.max_records, batch.max_active_jobs),
            (100, 50_000, 20)
        );
        assert!(!batch.settings(&pool(&config)).configured);
    }

    /// Staging and a role configure batch jobs for the targets in the role's
    /// account; the staging prefix is never a source.
    #[test]
    fn staging_and_a_role_configure_batch_jobs() {
        let config = config(&[STAGING, ROLE, ("RELAY_DEFAULT_MODE", "batch-job")]);
        let batch = &config.batch_jobs;
        assert_eq!(batch.default_mode, JobMode::BatchJob);
        let staging = batch.staging.as_ref().expect("staging");
        assert_eq!(
            (staging.bucket.as_str(), staging.prefix.as_str()),
            ("staging-111", "relay-batch/")
        );
        assert_eq!(
            batch.role_for("default").map(|r| r.arn.as_str()),
            Some("arn:aws:iam::111111111111:role/BedrockBatch")
        );
        let settings = batch.settings(&pool(&config));
        assert!(settings.configured);
        assert_eq!(settings.min_records, 100);
        assert!(!batch.settings(&[]).configured);
        assert!(config
            .sources
            .check("items_from", "s3://staging-111/relay-batch/job/input.jsonl")
            .is_err());
    }

    /// Per-target roles: each in its target's account; a target without one
    /// leaves a pool that includes it unconfigured.
    #[test]
    fn per_target_batch_roles_must_be_in_the_targets_account() {
        let targets = r#"{
            "research": {"role_arn": "arn:aws:iam::333333333333:role/RoleA", "batch_role_arn": "arn:aws:iam::333333333333:role/Batch"},
            "eu": {"role_arn": "arn:aws:iam::444444444444:role/RoleA"}
        }"#;
        let config = config(&[("RELAY_ROLE_ARN", ""), ("RELAY_TARGETS", targets), STAGING]);
        let batch = &config.batch_jobs;
        let research = config.targets.get("research").expect("research");
        let eu = config.targets.get("eu").expect("eu");
        assert!(batch.settings(&[research]).configured);
        assert!(!batch.settings(&[research, eu]).configured);
        assert!(batch.role_for("eu").is_none());

        let crossed = r#"{"research": {"role_arn": "arn:aws:iam::333333333333:role/RoleA", "batch_role_arn": "arn:aws:iam::111111111111:role/Batch"}}"#;
        let msg = error_of(&[("RELAY_TARGETS", crossed), STAGING]);
        assert!(
            msg.starts_with("RELAY_TARGETS is invalid: target `research`: batch_role_arn"),
            "{msg}"
        );
        assert!(
            msg.contains("Cross-account pass role is not allowed"),
            "{msg}"
        );
        let not_a_role = r#"{"research": {"role_arn": "arn:aws:iam::333333333333:role/RoleA", "batch_role_arn": "arn:aws:iam::333333333333:user/bob"}}"#;
        let msg = error_of(&[("RELAY_TARGETS", not_a_role), STAGING]);
        assert!(msg.contains("is not an IAM role ARN"), "{msg}");
    }

    /// The shared role is checked against every target that would use it.
    #[test]
    fn the_shared_role_must_be_in_each_targets_account() {
        let targets = r#"{"eu": {"role_arn": "arn:aws:iam::444444444444:role/RoleA"}}"#;
        let msg = error_of(&[("RELAY_TARGETS", targets), STAGING, ROLE]);
        assert!(msg.starts_with("RELAY_BATCH_ROLE_ARN is invalid"), "{msg}");
        assert!(
            msg.contains("target `eu` runs in account 444444444444"),
            "{msg}"
        );
        assert!(
            msg.contains("Cross-account pass role is not allowed"),
            "{msg}"
        );
        assert!(msg.contains("set `batch_role_arn` for `eu`"), "{msg}");
        let own = r#"{"eu": {"role_arn": "arn:aws:iam::444444444444:role/RoleA", "batch_role_arn": "arn:aws:iam::444444444444:role/Batch"}}"#;
        let config = config(&[("RELAY_TARGETS", own), STAGING, ROLE]);
        assert_eq!(
            config.batch_jobs.roles.len(),
            2,
            "default keeps the shared role"
        );
    }

    /// Half a configuration is refused naming what is missing.
    #[test]
    fn staging_and_roles_come_together() {
        assert!(error_of(&[STAGING]).starts_with("RELAY_BATCH_ROLE_ARN is not set"));
        assert!(error_of(&[ROLE]).starts_with("RELAY_BATCH_STAGING is not set"));
        let msg = error_of(&[("RELAY_DEFAULT_MODE", "batch-job")]);
        assert!(
            msg.starts_with("RELAY_BATCH_STAGING is not set") && msg.contains("RELAY_DEFAULT_MODE"),
            "{msg}"
        );
        assert!(error_of(&[("RELAY_BATCH_STAGING", "https://x/y"), ROLE])
            .starts_with("RELAY_BATCH_STAGING is invalid"));
        assert!(error_of(&[
            STAGING,
            ("RELAY_BATCH_ROLE_ARN", "arn:aws:iam::111111111111:user/x")
        ])
        .starts_with("RELAY_BATCH_ROLE_ARN is invalid"));
        let msg = error_of(&[("RELAY_DEFAULT_MODE", "batch")]);
        assert!(
            msg.starts_with("RELAY_DEFAULT_MODE is invalid") && msg.contains("`on-demand`"),
            "{msg}"
        );
        let on_demand = config(&[("RELAY_DEFAULT_MODE", "on-demand")]);
        assert_eq!(on_demand.batch_jobs.default_mode, JobMode::OnDemand);
    }

    /// The limits are numbers in range, and the minimum at most half the
    /// maximum so split batches keep to it.
    #[test]
    fn job_limits_are_checked() {
        let config = config(&[
            ("RELAY_BATCH_JOB_MIN_RECORDS", "50"),
            ("RELAY_BATCH_JOB_MAX_RECORDS", "100000"),
            ("RELAY_BATCH_MAX_ACTIVE_JOBS", "10"),
        ]);
        let batch = &config.batch_jobs;
        assert_eq!(
            (batch.min_records, batch.max_records, batch.max_active_jobs),
            (50, 100_000, 10)
        );
        let msg = error_of(&[("RELAY_BATCH_JOB_MIN_RECORDS", "30000")]);
        assert!(
            msg.starts_with("RELAY_BATCH_JOB_MIN_RECORDS is invalid")
                && msg.contains("at most 25000"),
            "{msg}"
        );
        for (var, bad) in [
            ("RELAY_BATCH_JOB_MIN_RECORDS", "0"),
            ("RELAY_BATCH_JOB_MAX_RECORDS", "many"),
            ("RELAY_BATCH_JOB_MAX_RECORDS", "1000001"),
            ("RELAY_BATCH_MAX_ACTIVE_JOBS", "0"),
        ] {
            assert!(
                error_of(&[(var, bad)]).starts_with(&format!("{var} is invalid")),
                "{var}={bad}"
            );
        }
    }

    /// Batch jobs keep their state in the work store and finish through the
    /// work queue: staging without them is refused at cold start.
    #[test]
    fn staging_needs_the_work_queue_and_store() {
        let lookup = env(&[STAGING, ROLE]);
        let without = move |name: &str| match name {
            "RELAY_WORK_QUEUE" | "RELAY_WORK_STORE" => None,
            _ => lookup(name),
        };
        let msg = Config::from_lookup(without)
            .expect_err("refused")
            .to_string();
        assert!(
            msg.contains("RELAY_WORK_STORE") && msg.contains("RELAY_WORK_QUEUE"),
            "{msg}"
        );
    }
}
