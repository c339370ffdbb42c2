//! The doctor's batch-job links, for each target with a batch service role
//! when `RELAY_BATCH_STAGING` is set:
//!
//! | check | what |
//! |---|---|
//! | `batch-staging` | RoleA writes `<staging>input/_doctor/probe.json` and lists `<staging>output/` ([`Staging::probe`]) |
//! | `batch-role` | the batch service role is in the target's account (the configuration refuses another; restated here) |
//! | `batch-api` | RoleA may call Bedrock's batch-job API: `ListModelInvocationJobs` for one job, nothing created |
//! | `batch-pass-role` | always skipped: `iam:PassRole` shows only when a job is created; says which statement grants it |
//!
//! The failures' texts are built here: the adapters' own S3 messages name
//! the execution role, and these calls are RoleA's.

use super::Check;
use crate::bedrock::jobs::{BatchJobs, JobCallError};
use crate::config::Config;
use crate::destination::{DestinationError, S3Location};
use crate::domain::target::{RoleArn, Target};
use crate::work::Staging;

/// The batch-job checks of `target`; none while batch jobs are off.
pub(super) async fn checks(
    base: &aws_config::SdkConfig,
    sts: &aws_sdk_sts::Client,
    config: &Config,
    target: &Target,
) -> Vec<Check> {
    let Some(location) = &config.batch_jobs.staging else {
        return Vec::new();
    };
    let Some(role) = config.batch_jobs.role_for(&target.alias) else {
        return vec![check(
            "batch-jobs",
            target,
            Verdict::Skip,
            "skipped: no batch service role for this target (RELAY_BATCH_ROLE_ARN, or batch_role_arn in RELAY_TARGETS), so its batches run on-demand".into(),
        )];
    };
    let s3 =
        crate::credentials::role_a_s3_client(base, sts.clone(), target, config.s3_force_path_style);
    let staging = Staging::new(s3, location, &target.role.account);
    let jobs = BatchJobs::new(base, sts.clone(), target);
    vec![
        staging_check(&staging.probe().await, location, target),
        role_check(role, target),
        api_check(&jobs.list_probe().await, target),
        pass_role_note(role, target),
    ]
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Fail,
    Skip,
}

fn check(name: &str, target: &Target, verdict: Verdict, detail: String) -> Check {
    Check {
        check: name.to_owned(),
        target: Some(target.alias.clone()),
        ok: verdict != Verdict::Fail,
        skipped: verdict == Verdict::Skip,
        detail,
    }
}

/// RoleA's write and list of the staging location.
fn staging_check(
    probed: &Result<String, DestinationError>,
    location: &S3Location,
    target: &Target,
) -> Check {
    let (bucket, prefix) = (&location.bucket, &location.prefix);
    let account = &target.role.account;
    let detail = match probed {
        Ok(uri) => {
            let output = location.uri_of(&format!("{prefix}output/"));
            return check(
                "batch-staging",
                target,
                Verdict::Pass,
                format!("RoleA wrote {uri} and listed {output}"),
            );
        }
        Err(DestinationError::Denied {
            action,
            destination,
            message,
            ..
        }) => {
            let (grant, statement) = match *action {
                "s3:ListBucket" => (
                    format!("s3:ListBucket on arn:aws:s3:::{bucket} for the prefix {prefix}output/*"),
                    "ListOutput",
                ),
                _ => (
                    format!("{action} on arn:aws:s3:::{bucket}/{prefix}input/*"),
                    "StageRecords",
                ),
            };
            format!(
                "RoleA ({}) was refused {action} on {destination} ({message}): grant RoleA {grant} (deploy/account-a.yaml's {statement} statement does, for its bucket), and check that the bucket is account {account}'s (the relay expects the model account to own it)",
                target.role.arn
            )
        }
        Err(DestinationError::Missing { .. }) => format!(
            "the staging bucket `{bucket}` does not exist: set RELAY_BATCH_STAGING to the s3://bucket/prefix/ deploy/account-a.yaml creates in account {account} (deployed with EnableBatchJobs=true), or create the bucket there"
        ),
        Err(DestinationError::Unavailable {
            destination,
            message,
        }) => format!(
            "RoleA could not reach the staging location at {destination} ({message}): check RELAY_BATCH_STAGING and that the bucket is in {}, then run the doctor again",
            target.region
        ),
        Err(other) => other.to_string(),
    };
    check("batch-staging", target, Verdict::Fail, detail)
}

/// The batch service role is in the target's account.
fn role_check(role: &RoleArn, target: &Target) -> Check {
    let account = &target.role.account;
    match &role.account == account {
        true => check(
            "batch-role",
            target,
            Verdict::Pass,
            format!(
                "the batch service role {} is in account {account}, the target's, as Bedrock requires",
                role.arn
            ),
        ),
        false => check(
            "batch-role",
            target,
            Verdict::Fail,
            format!(
                "the batch service role {} is in account {}, not the target's ({account}), and Bedrock refuses it (\"Cross-account pass role is not allowed\"): set RELAY_BATCH_ROLE_ARN, or batch_role_arn for `{}` in RELAY_TARGETS, to the role deploy/account-a.yaml creates in account {account}",
                role.arn, role.account, target.alias
            ),
        ),
    }
}

/// RoleA may call the batch-job API.
fn api_check(listed: &Result<usize, JobCallError>, target: &Target) -> Check {
    let region = &target.region;
    match listed {
        Ok(_) => check(
            "batch-api",
            target,
            Verdict::Pass,
            format!("RoleA may call Bedrock's batch-job API in {region}: ListModelInvocationJobs answered (CreateModelInvocationJob itself is tried only when a batch is submitted)"),
        ),
        Err(JobCallError::Unavailable { summary, .. }) => check(
            "batch-api",
            target,
            Verdict::Fail,
            format!("Bedrock's batch-job API in {region} did not answer ListModelInvocationJobs ({summary}): check that batch inference is offered in {region} (and AWS_ENDPOINT_URL_BEDROCK, if set), then run the doctor again"),
        ),
        Err(err) => check("batch-api", target, Verdict::Fail, err.to_string()),
    }
}

/// `iam:PassRole` cannot be checked without creating a job: what grants it.
fn pass_role_note(role: &RoleArn, target: &Target) -> Check {
    check(
        "batch-pass-role",
        target,
        Verdict::Skip,
        format!(
            "skipped: whether RoleA may pass {} to Bedrock (iam:PassRole) shows only when a job is created; RoleA's policy needs deploy/account-a.yaml's PassTheBatchServiceRole statement: iam:PassRole on that role with iam:PassedToService = bedrock.amazonaws.com",
            role.arn
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bedrock::tests::target;

    fn staging() -> S3Location {
        S3Location::parse("s3://staging-a/relay/").expect("uri")
    }

    fn role(account: &str) -> RoleArn {
        RoleArn::parse(&format!("arn:aws:iam::{account}:role/BedrockBatchService")).expect("arn")
    }

    /// A staging location RoleA wrote and listed passes, naming both.
    #[test]
    fn a_staging_location_role_a_wrote_and_listed_passes() {
        let probed = Ok("s3://staging-a/relay/input/_doctor/probe.json".to_owned());
        let check = staging_check(&probed, &staging(), &target());
        assert!(check.ok && !check.skipped, "{check:?}");
        assert!(
            check.detail.contains("listed s3://staging-a/relay/output/"),
            "{}",
            check.detail
        );
    }

    /// Each staging failure names its fix: RoleA's grant and the statement
    /// that gives it for a refusal, the bucket to set for a missing one.
    #[test]
    fn each_staging_failure_names_its_fix() {
        let denied = |action: &'static str| {
            Err(DestinationError::Denied {
                action,
                destination: "s3://staging-a/relay/input/_doctor/probe.json".into(),
                message: "Access Denied".into(),
                fix: "grant the execution role ...".into(),
            })
        };
        let check = staging_check(&denied("s3:PutObject"), &staging(), &target());
        assert!(!check.ok);
        assert!(
            check
                .detail
                .contains("grant RoleA s3:PutObject on arn:aws:s3:::staging-a/relay/input/*"),
            "{}",
            check.detail
        );
        assert!(check.detail.contains("StageRecords"), "{}", check.detail);
        assert!(!check.detail.contains("execution role"), "{}", check.detail);

        let check = staging_check(&denied("s3:ListBucket"), &staging(), &target());
        assert!(
            check
                .detail
                .contains("s3:ListBucket on arn:aws:s3:::staging-a for the prefix relay/output/*")
                && check.detail.contains("ListOutput"),
            "{}",
            check.detail
        );

        let missing = Err(DestinationError::Missing {
            destination: "s3://staging-a/relay/input/_doctor/probe.json".into(),
            what: "bucket `staging-a`".into(),
        });
        let check = staging_check(&missing, &staging(), &target());
        assert!(!check.ok);
        assert!(
            check.detail.starts_with(
                "the staging bucket `staging-a` does not exist: set RELAY_BATCH_STAGING"
            ),
            "{}",
            check.detail
        );
    }

    /// The batch role of the target's account passes; another account's
    /// fails with the role to set.
    #[test]
    fn the_batch_role_must_be_in_the_targets_account() {
        let target = target();
        let own = role_check(&role(&target.role.account), &target);
        assert!(own.ok, "{own:?}");
        let other = role_check(&role("999999999999"), &target);
        assert!(!other.ok);
        assert!(
            other
                .detail
                .contains("Cross-account pass role is not allowed")
                && other.detail.contains("set RELAY_BATCH_ROLE_ARN"),
            "{}",
            other.detail
        );
    }

    /// The API check passes when Bedrock answers; a refusal names the grant
    /// and an unanswered call says to check the region and try again.
    #[test]
    fn the_api_check_names_the_grant_or_the_region() {
        let target = target();
        assert!(api_check(&Ok(0), &target).ok);
        let denied = api_check(
            &Err(JobCallError::Denied {
                role_arn: target.role.arn.clone(),
                operation: "ListModelInvocationJobs",
                message: "not authorized".into(),
            }),
            &target,
        );
        assert!(!denied.ok);
        assert!(
            denied
                .detail
                .contains("grant RoleA bedrock:ListModelInvocationJobs"),
            "{}",
            denied.detail
        );
        let down = api_check(
            &Err(JobCallError::Unavailable {
                operation: "ListModelInvocationJobs",
                summary: "connection refused".into(),
            }),
            &target,
        );
        assert!(!down.ok);
        assert!(
            down.detail.contains("run the doctor again") && !down.detail.contains("tried again"),
            "{}",
            down.detail
        );
    }

    /// iam:PassRole is never reported as checked: the line is skipped (it
    /// does not fail the doctor) and points at the statement that grants it.
    #[test]
    fn pass_role_is_an_advisory_that_names_the_statement() {
        let target = target();
        let note = pass_role_note(&role(&target.role.account), &target);
        assert!(note.ok && note.skipped, "{note:?}");
        assert!(
            note.detail.contains("PassTheBatchServiceRole")
                && note
                    .detail
                    .contains("iam:PassedToService = bedrock.amazonaws.com"),
            "{}",
            note.detail
        );
    }
}
