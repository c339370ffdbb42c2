//! Bedrock batch inference jobs in a model account: `CreateModelInvocationJob`,
//! `GetModelInvocationJob`, and `ListModelInvocationJobs` as the doctor's
//! probe, signed as RoleA like the runtime calls, and what their failures
//! mean.
//!
//! A batch job must be created in the model account: its service role has to
//! be a role of that account (Bedrock refuses another account's with
//! "Cross-account pass role is not allowed"), and RoleA needs `iam:PassRole`
//! on it. Those two are the failures users meet most, so each has its own
//! error that says what to change. A `clientRequestToken` makes creation
//! idempotent: a redelivered event sends the same token and gets the job
//! created the first time, never a second one.

use aws_config::identity::IdentityCache;
use aws_config::SdkConfig;
use aws_sdk_bedrock::error::SdkError;
use aws_sdk_bedrock::types::{
    ModelInvocationJobInputDataConfig, ModelInvocationJobOutputDataConfig,
    ModelInvocationJobS3InputDataConfig, ModelInvocationJobS3OutputDataConfig, ModelInvocationType,
    S3InputFormat, Tag,
};
use aws_smithy_runtime_api::client::auth::AuthSchemeId;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use thiserror::Error;

use crate::aws::errors::{Class, SdkFailure};
use crate::credentials::{AssumeRoleProvider, REFRESH_BEFORE_EXPIRY};
use crate::domain::target::Target;
use crate::observe::xray::Recorder;

/// A batch-job call that failed, with what to fix.
#[derive(Debug, Error)]
pub enum JobCallError {
    /// RoleA may not pass the service role to Bedrock.
    #[error("RoleA ({role_arn}) may not pass the batch service role {service_role} to Bedrock ({message}); grant RoleA iam:PassRole on that role with the condition iam:PassedToService = bedrock.amazonaws.com (deploy/account-a.yaml does when batch jobs are enabled)")]
    PassRoleDenied {
        /// RoleA.
        role_arn: String,
        /// The role the job was to run as.
        service_role: String,
        /// Bedrock's message.
        message: String,
    },
    /// The service role is not in the job's account.
    #[error("Bedrock refused the batch service role {service_role}: it must be a role in the model account, the one RoleA is in ({message}); set RELAY_BATCH_ROLE_ARN (or the target's batch_role_arn) to the role deploy/account-a.yaml creates")]
    CrossAccountRole {
        /// The role the job was to run as.
        service_role: String,
        /// Bedrock's message.
        message: String,
    },
    /// RoleA may not make this call.
    #[error("Bedrock refused RoleA ({role_arn}) for {operation} ({message}); grant RoleA bedrock:{operation} (deploy/account-a.yaml does when batch jobs are enabled)")]
    Denied {
        /// RoleA.
        role_arn: String,
        /// The API operation.
        operation: &'static str,
        /// Bedrock's message.
        message: String,
    },
    /// The account's concurrent-jobs quota is full: the job waits its turn.
    #[error("the model account already runs as many batch jobs as its quota allows ({message}); the job is submitted when one ends")]
    QuotaFull {
        /// Bedrock's message.
        message: String,
    },
    /// The token was used for a job with other parameters.
    #[error("the clientRequestToken {token} was already used for a batch job with other parameters ({message}); the relay job's items or settings changed after it was submitted: give the changed batch a new job id")]
    TokenReused {
        /// The token.
        token: String,
        /// Bedrock's message.
        message: String,
    },
    /// The job does not exist (or is not visible to RoleA).
    #[error("Bedrock has no batch job {job} in {region} ({message})")]
    NotFound {
        /// The job ARN or name.
        job: String,
        /// The target's region.
        region: String,
        /// Bedrock's message.
        message: String,
    },
    /// Bedrock refused the request itself.
    #[error("Bedrock refused the batch job request ({code}: {message})")]
    Rejected {
        /// The error code.
        code: String,
        /// Bedrock's message.
        message: String,
    },
    /// Throttled, failing, or not answering: trying later helps.
    #[error(
        "Bedrock's batch job API could not serve {operation} now ({summary}); it is tried again"
    )]
    Unavailable {
        /// The API operation.
        operation: &'static str,
        /// What happened.
        summary: String,
    },
}

impl JobCallError {
    /// The stable code (the record's `error.type`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::PassRoleDenied { .. } => "BatchPassRoleDenied",
            Self::CrossAccountRole { .. } => "BatchRoleCrossAccount",
            Self::Denied { .. } => "BatchJobDenied",
            Self::QuotaFull { .. } => "BatchJobQuotaFull",
            Self::TokenReused { .. } => "BatchJobTokenReused",
            Self::NotFound { .. } => "BatchJobNotFound",
            Self::Rejected { .. } => "BatchJobRejected",
            Self::Unavailable { .. } => "BatchJobUnavailable",
        }
    }

    /// Whether trying the same call later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::QuotaFull { .. } | Self::Unavailable { .. })
    }
}

/// What a batch job is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// `jobName`.
    pub name: String,
    /// `clientRequestToken`: the same for every delivery of one relay job part.
    pub token: String,
    /// The model, inference profile or ARN.
    pub model: String,
    /// The batch service role in the model account.
    pub service_role: String,
    /// The staged records: `s3://bucket/key.jsonl`.
    pub input_uri: String,
    /// Where Bedrock writes the output: `s3://bucket/prefix/`.
    pub output_uri: String,
    /// The staging bucket's owner, checked by Bedrock.
    pub bucket_owner: Option<String>,
    /// `timeoutDurationInHours` (24-168).
    pub timeout_hours: i32,
    /// Tags naming the relay job.
    pub tags: Vec<(String, String)>,
}

/// A batch job as `GetModelInvocationJob` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    /// The job's ARN.
    pub arn: String,
    /// Bedrock's status, as Bedrock spells it (`InProgress`, `Completed`, ...).
    pub status: String,
    /// Why it failed or stopped, when Bedrock says.
    pub message: Option<String>,
    /// The output location Bedrock writes to (`s3://bucket/prefix/`).
    pub output_uri: Option<String>,
}

/// The batch-job API of one target, signed as its RoleA.
#[derive(Debug, Clone)]
pub struct BatchJobs {
    client: aws_sdk_bedrock::Client,
    role_arn: String,
    region: String,
}

impl BatchJobs {
    /// Builds the client once at cold start, with RoleA's credentials through
    /// their own identity cache, the target's region and SigV4 only.
    pub fn new(base: &SdkConfig, sts: aws_sdk_sts::Client, target: &Target) -> Self {
        let config = aws_sdk_bedrock::config::Builder::from(base)
            .credentials_provider(AssumeRoleProvider::new(sts, target.clone()))
            .identity_cache(
                IdentityCache::lazy()
                    .buffer_time(REFRESH_BEFORE_EXPIRY)
                    .build(),
            )
            .region(aws_config::Region::new(target.region.clone()))
            .auth_scheme_preference([AuthSchemeId::new("sigv4")])
            .interceptor(Recorder::new())
            .build();
        Self::from_client(aws_sdk_bedrock::Client::from_conf(config), target)
    }

    /// Wraps an existing client (tests pass mocked ones).
    pub fn from_client(client: aws_sdk_bedrock::Client, target: &Target) -> Self {
        Self {
            client,
            role_arn: target.role.arn.clone(),
            region: target.region.clone(),
        }
    }

    /// Creates the job (or, for a token already used with the same
    /// parameters, gets the job it created); returns its ARN.
    pub async fn submit(&self, job: &Submission) -> Result<String, JobCallError> {
        let input = ModelInvocationJobS3InputDataConfig::builder()
            .s3_uri(&job.input_uri)
            .s3_input_format(S3InputFormat::Jsonl)
            .set_s3_bucket_owner(job.bucket_owner.clone())
            .build()
            .map_err(|e| rejected_locally(&e))?;
        let output = ModelInvocationJobS3OutputDataConfig::builder()
            .s3_uri(&job.output_uri)
            .set_s3_bucket_owner(job.bucket_owner.clone())
            .build()
            .map_err(|e| rejected_locally(&e))?;
        let tags = job
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| rejected_locally(&e))?;
        self.client
            .create_model_invocation_job()
            .job_name(&job.name)
            .client_request_token(&job.token)
            .role_arn(&job.service_role)
            .model_id(&job.model)
            .model_invocation_type(ModelInvocationType::Converse)
            .input_data_config(ModelInvocationJobInputDataConfig::S3InputDataConfig(input))
            .output_data_config(ModelInvocationJobOutputDataConfig::S3OutputDataConfig(
                output,
            ))
            .timeout_duration_in_hours(job.timeout_hours)
            .set_tags(Some(tags))
            .send()
            .await
            .map(|out| out.job_arn)
            .map_err(|err| self.classify(&err, "CreateModelInvocationJob", job))
    }

    /// What Bedrock says about the job `arn` now.
    pub async fn report(&self, arn: &str) -> Result<JobReport, JobCallError> {
        let out = self
            .client
            .get_model_invocation_job()
            .job_identifier(arn)
            .send()
            .await
            .map_err(|err| self.classify_for(&err, "GetModelInvocationJob", arn))?;
        let output_uri = out
            .output_data_config
            .as_ref()
            .and_then(|c| c.as_s3_output_data_config().ok())
            .map(|c| c.s3_uri.clone());
        Ok(JobReport {
            arn: out.job_arn,
            status: out
                .status
                .map_or_else(|| "Unknown".to_owned(), |s| s.as_str().to_owned()),
            message: out.message,
            output_uri,
        })
    }

    /// Lists at most one job of the account: whether RoleA may call the
    /// batch-job API at all, creating nothing (the doctor's probe). Returns
    /// how many jobs the page held (0 or 1).
    pub async fn list_probe(&self) -> Result<usize, JobCallError> {
        self.client
            .list_model_invocation_jobs()
            .max_results(1)
            .send()
            .await
            .map(|out| out.invocation_job_summaries().len())
            .map_err(|err| self.classify_for(&err, "ListModelInvocationJobs", "of the account"))
    }

    fn classify<E: aws_sdk_bedrock::error::ProvideErrorMetadata>(
        &self,
        err: &SdkError<E, HttpResponse>,
        operation: &'static str,
        job: &Submission,
    ) -> JobCallError {
        let failure = SdkFailure::read(err);
        let message = failure.message().to_owned();
        let lower = message.to_ascii_lowercase();
        match failure.code.as_deref() {
            Some("ConflictException") => JobCallError::TokenReused {
                token: job.token.clone(),
                message,
            },
            Some("ServiceQuotaExceededException") => JobCallError::QuotaFull { message },
            _ if lower.contains("cross-account pass role") => JobCallError::CrossAccountRole {
                service_role: job.service_role.clone(),
                message,
            },
            _ if failure.class() == Class::Denied && lower.contains("passrole") => {
                JobCallError::PassRoleDenied {
                    role_arn: self.role_arn.clone(),
                    service_role: job.service_role.clone(),
                    message,
                }
            }
            _ => self.classify_for(err, operation, &job.name),
        }
    }

    fn classify_for<E: aws_sdk_bedrock::error::ProvideErrorMetadata>(
        &self,
        err: &SdkError<E, HttpResponse>,
        operation: &'static str,
        job: &str,
    ) -> JobCallError {
        let failure = SdkFailure::read(err);
        let message = failure.message().to_owned();
        match (failure.class(), failure.code.clone()) {
            (Class::Denied, _) => JobCallError::Denied {
                role_arn: self.role_arn.clone(),
                operation,
                message,
            },
            (Class::Missing, _) => JobCallError::NotFound {
                job: job.to_owned(),
                region: self.region.clone(),
                message,
            },
            (Class::Rejected, Some(code)) => JobCallError::Rejected { code, message },
            (Class::Throttled | Class::Transient | Class::Other, _) | (Class::Rejected, None) => {
                JobCallError::Unavailable {
                    operation,
                    summary: failure.summary("Bedrock"),
                }
            }
        }
    }
}

/// A request the SDK's builder refused before sending: a bug in what the
/// relay put together, reported like Bedrock's own refusal.
fn rejected_locally(err: &aws_sdk_bedrock::error::BuildError) -> JobCallError {
    JobCallError::Rejected {
        code: "InvalidRequest".into(),
        message: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_bedrock::operation::create_model_invocation_job::{
        CreateModelInvocationJobError, CreateModelInvocationJobOutput,
    };
    use aws_sdk_bedrock::operation::get_model_invocation_job::GetModelInvocationJobOutput;
    use aws_sdk_bedrock::operation::list_model_invocation_jobs::{
        ListModelInvocationJobsError, ListModelInvocationJobsOutput,
    };
    use aws_sdk_bedrock::types::ModelInvocationJobStatus;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;
    use crate::bedrock::tests::target;

    fn submission() -> Submission {
        Submission {
            name: "nightly-1a2b3c-p0".into(),
            token: "relay-1a2b3c4d-p0".into(),
            model: "amazon.nova-lite-v1:0".into(),
            service_role: "arn:aws:iam::111111111111:role/BedrockBatchService".into(),
            input_uri: "s3://staging/input/nightly/p0.jsonl".into(),
            output_uri: "s3://staging/output/nightly/p0/".into(),
            bucket_owner: Some("111111111111".into()),
            timeout_hours: 48,
            tags: vec![("bedrock-relay:job".into(), "nightly".into())],
        }
    }

    fn create_failing(code: &'static str, message: &'static str) -> BatchJobs {
        let rule =
            mock!(aws_sdk_bedrock::Client::create_model_invocation_job).then_error(move || {
                CreateModelInvocationJobError::generic(
                    ErrorMetadata::builder().code(code).message(message).build(),
                )
            });
        let client = mock_client!(aws_sdk_bedrock, RuleMode::MatchAny, [&rule]);
        BatchJobs::from_client(client, &target())
    }

    /// A submission sends every field Bedrock needs for a Converse batch job:
    /// the token, the service role, the staged input and output locations
    /// with their owner, the timeout and the tags; the answer is the ARN.
    #[tokio::test]
    async fn a_submission_sends_the_token_role_locations_timeout_and_tags() {
        let rule = mock!(aws_sdk_bedrock::Client::create_model_invocation_job)
            .match_requests(|req| {
                let input = req
                    .input_data_config()
                    .and_then(|c| c.as_s3_input_data_config().ok());
                let output = req
                    .output_data_config()
                    .and_then(|c| c.as_s3_output_data_config().ok());
                req.client_request_token() == Some("relay-1a2b3c4d-p0")
                    && req.job_name() == Some("nightly-1a2b3c-p0")
                    && req.role_arn() == Some("arn:aws:iam::111111111111:role/BedrockBatchService")
                    && req.model_invocation_type() == Some(&ModelInvocationType::Converse)
                    && req.timeout_duration_in_hours() == Some(48)
                    && input.is_some_and(|i| {
                        i.s3_uri == "s3://staging/input/nightly/p0.jsonl"
                            && i.s3_bucket_owner.as_deref() == Some("111111111111")
                    })
                    && output.is_some_and(|o| o.s3_uri == "s3://staging/output/nightly/p0/")
                    && req
                        .tags()
                        .iter()
                        .any(|t| t.key == "bedrock-relay:job" && t.value == "nightly")
            })
            .then_output(|| {
                CreateModelInvocationJobOutput::builder()
                    .job_arn("arn:aws:bedrock:eu-west-1:111111111111:model-invocation-job/abc123")
                    .build()
                    .expect("output")
            });
        let client = mock_client!(aws_sdk_bedrock, RuleMode::MatchAny, [&rule]);
        let jobs = BatchJobs::from_client(client, &target());
        let arn = jobs.submit(&submission()).await.expect("submitted");
        assert!(arn.ends_with("/abc123"), "{arn}");
        assert_eq!(rule.num_calls(), 1);
    }

    /// The failures users meet most each name their fix: a service role from
    /// another account, RoleA without iam:PassRole, a token reused with other
    /// parameters; a full jobs quota waits its turn.
    #[tokio::test]
    async fn each_known_submission_failure_names_its_fix() {
        let err = create_failing(
            "ValidationException",
            "Cross-account pass role is not allowed.",
        )
        .submit(&submission())
        .await
        .expect_err("cross-account");
        assert!(
            matches!(err, JobCallError::CrossAccountRole { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("RELAY_BATCH_ROLE_ARN"), "{err}");
        assert!(!err.is_retryable());

        let err = create_failing(
            "AccessDeniedException",
            "User is not authorized to perform: iam:PassRole on resource",
        )
        .submit(&submission())
        .await
        .expect_err("pass role");
        assert!(
            matches!(err, JobCallError::PassRoleDenied { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("iam:PassedToService"), "{err}");

        let err = create_failing("ConflictException", "token used")
            .submit(&submission())
            .await
            .expect_err("conflict");
        assert!(matches!(err, JobCallError::TokenReused { .. }), "{err:?}");
        assert!(!err.is_retryable());

        let err = create_failing("ServiceQuotaExceededException", "too many jobs")
            .submit(&submission())
            .await
            .expect_err("quota");
        assert!(matches!(err, JobCallError::QuotaFull { .. }), "{err:?}");
        assert!(err.is_retryable());

        let err = create_failing("AccessDeniedException", "not authorized")
            .submit(&submission())
            .await
            .expect_err("denied");
        assert!(
            err.to_string().contains("bedrock:CreateModelInvocationJob"),
            "{err}"
        );
    }

    /// A report carries Bedrock's status, message and output location.
    #[tokio::test]
    async fn a_report_carries_status_message_and_output_location() {
        let rule = mock!(aws_sdk_bedrock::Client::get_model_invocation_job)
            .match_requests(|req| req.job_identifier() == Some("arn:job"))
            .then_output(|| {
                GetModelInvocationJobOutput::builder()
                    .job_arn("arn:job")
                    .role_arn("arn:role")
                    .model_id("m")
                    .status(ModelInvocationJobStatus::PartiallyCompleted)
                    .message("3 records failed")
                    .submit_time(aws_smithy_types::DateTime::from_secs(0))
                    .input_data_config(ModelInvocationJobInputDataConfig::S3InputDataConfig(
                        ModelInvocationJobS3InputDataConfig::builder()
                            .s3_uri("s3://staging/in.jsonl")
                            .build()
                            .expect("input"),
                    ))
                    .output_data_config(ModelInvocationJobOutputDataConfig::S3OutputDataConfig(
                        ModelInvocationJobS3OutputDataConfig::builder()
                            .s3_uri("s3://staging/out/")
                            .build()
                            .expect("output"),
                    ))
                    .build()
                    .expect("job")
            });
        let client = mock_client!(aws_sdk_bedrock, RuleMode::MatchAny, [&rule]);
        let report = BatchJobs::from_client(client, &target())
            .report("arn:job")
            .await
            .expect("report");
        assert_eq!(report.status, "PartiallyCompleted");
        assert_eq!(report.message.as_deref(), Some("3 records failed"));
        assert_eq!(report.output_uri.as_deref(), Some("s3://staging/out/"));
    }

    /// The doctor's probe asks for one job and creates nothing; RoleA
    /// without the permission gets the grant to add.
    #[tokio::test]
    async fn the_list_probe_asks_for_one_job_and_names_a_missing_grant() {
        let listed = mock!(aws_sdk_bedrock::Client::list_model_invocation_jobs)
            .match_requests(|req| req.max_results() == Some(1))
            .then_output(|| ListModelInvocationJobsOutput::builder().build());
        let client = mock_client!(aws_sdk_bedrock, RuleMode::MatchAny, [&listed]);
        let jobs = BatchJobs::from_client(client, &target());
        assert_eq!(jobs.list_probe().await.expect("listed"), 0);
        assert_eq!(listed.num_calls(), 1);

        let denied = mock!(aws_sdk_bedrock::Client::list_model_invocation_jobs).then_error(|| {
            ListModelInvocationJobsError::generic(
                ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .message("not authorized to perform bedrock:ListModelInvocationJobs")
                    .build(),
            )
        });
        let client = mock_client!(aws_sdk_bedrock, RuleMode::MatchAny, [&denied]);
        let err = BatchJobs::from_client(client, &target())
            .list_probe()
            .await
            .expect_err("denied");
        assert!(matches!(err, JobCallError::Denied { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("grant RoleA bedrock:ListModelInvocationJobs"),
            "{err}"
        );
    }
}
