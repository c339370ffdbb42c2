//! Cross-account credentials: RoleA in account A, assumed from the function's
//! execution role in account B, with `SourceIdentity` set.
//!
//! `aws_config::sts::AssumeRoleProvider` cannot set `SourceIdentity`, which is
//! what makes account A's CloudTrail show *who* called through RoleA. So this
//! module is a small [`ProvideCredentials`] over `aws-sdk-sts`. It does not
//! cache: the Bedrock client's identity cache (the SDK's lazy cache) holds the
//! credentials and calls the provider again shortly before they expire, so a
//! warm invocation makes no STS call.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{self, error::CredentialsError, ProvideCredentials};
use aws_credential_types::Credentials;
use aws_sdk_sts::error::SdkError;
use thiserror::Error;

use crate::aws::errors::{Class, SdkFailure};
use crate::domain::target::Target;

/// How long before expiry the identity cache fetches new credentials. Longer than
/// the SDK's 10 s default so a refresh never races a slow STS call or a long model
/// call. (The cache subtracts up to half of it as jitter: refreshes happen 150-300 s
/// before expiry.)
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// Why RoleA could not be assumed. Carried inside the SDK's credentials error, and
/// found again by [`crate::bedrock`] to say which side to fix.
#[derive(Debug, Clone, Error)]
pub enum AssumeRoleError {
    /// STS said no: a trust, ExternalId or permission problem.
    #[error(
        "sts:AssumeRole into {role_arn} was denied ({message}); fix it on the STS side: RoleA's trust policy must name \
         this function's execution role and allow sts:SetSourceIdentity, its sts:ExternalId condition must match \
         RELAY_EXTERNAL_ID, and the execution role must be allowed sts:AssumeRole and sts:SetSourceIdentity on RoleA"
    )]
    Denied {
        /// RoleA.
        role_arn: String,
        /// What STS said.
        message: String,
    },
    /// STS refused the request's parameters (duration, names).
    #[error("sts:AssumeRole into {role_arn} was refused as invalid ({message}); check RELAY_SESSION_DURATION against RoleA's maximum session duration")]
    Invalid {
        /// RoleA.
        role_arn: String,
        /// What STS said.
        message: String,
    },
    /// STS could not be reached or failed; worth retrying.
    #[error("sts:AssumeRole into {role_arn} failed ({message}); this is usually transient")]
    Unavailable {
        /// RoleA.
        role_arn: String,
        /// What went wrong.
        message: String,
    },
}

impl AssumeRoleError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Loads account B's base configuration: the execution role's credentials and
/// the region. Under Lambda both are in environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION`), so only those providers are built, not the default chains'
/// web-identity, SSO, container and IMDS providers that can never answer
/// there. Anywhere else (the CLI on a laptop) the default chains apply. The
/// HTTPS client trusts `roots` (see [`crate::aws::tls`]).
pub async fn load_base_config(roots: crate::aws::tls::TlsRoots) -> aws_config::SdkConfig {
    use aws_config::environment::{
        EnvironmentVariableCredentialsProvider, EnvironmentVariableRegionProvider,
    };

    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let under_lambda = set("AWS_LAMBDA_FUNCTION_NAME")
        && set("AWS_ACCESS_KEY_ID")
        && set("AWS_SECRET_ACCESS_KEY")
        && set("AWS_REGION");
    let loader = if under_lambda {
        loader
            .credentials_provider(EnvironmentVariableCredentialsProvider::new())
            .region(EnvironmentVariableRegionProvider::new())
    } else {
        loader
    };
    let loader = match roots.http_client() {
        Some(client) => loader.http_client(client),
        None => loader,
    };
    loader.load().await
}

/// The STS client for AssumeRole, with account B's credentials from `base`
/// and an X-Ray subsegment per call.
pub fn sts_client(base: &aws_config::SdkConfig) -> aws_sdk_sts::Client {
    let conf = aws_sdk_sts::config::Builder::from(base)
        .interceptor(crate::observe::xray::Recorder::new())
        .build();
    aws_sdk_sts::Client::from_conf(conf)
}

/// An S3 client signed as `target`'s RoleA, in its region: for the batch-job
/// staging location in the model account (everything else in S3 is account
/// B's and uses the function's own credentials).
pub fn role_a_s3_client(
    base: &aws_config::SdkConfig,
    sts: aws_sdk_sts::Client,
    target: &Target,
    force_path_style: bool,
) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(base)
        .credentials_provider(AssumeRoleProvider::new(sts, target.clone()))
        .identity_cache(
            aws_config::identity::IdentityCache::lazy()
                .buffer_time(REFRESH_BEFORE_EXPIRY)
                .build(),
        )
        .region(aws_config::Region::new(target.region.clone()))
        .force_path_style(force_path_style)
        .interceptor(crate::observe::xray::Recorder::new())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Assumes RoleA with `SourceIdentity`, `ExternalId` and a bounded duration.
#[derive(Debug, Clone)]
pub struct AssumeRoleProvider {
    sts: aws_sdk_sts::Client,
    target: Target,
}

impl AssumeRoleProvider {
    /// `sts` carries the execution role's own (account B) credentials.
    pub fn new(sts: aws_sdk_sts::Client, target: Target) -> Self {
        Self { sts, target }
    }

    async fn assume(&self) -> Result<Credentials, CredentialsError> {
        let target = &self.target;
        let role_arn = target.role.arn.clone();
        let output = self
            .sts
            .assume_role()
            .role_arn(&role_arn)
            .role_session_name(&target.session_name)
            .source_identity(&target.source_identity)
            .set_external_id(target.external_id.clone())
            .duration_seconds(target.session_duration.as_secs() as i32)
            .send()
            .await
            .map_err(|err| CredentialsError::provider_error(classify(&role_arn, err)))?;

        let creds = output.credentials.ok_or_else(|| {
            CredentialsError::provider_error(AssumeRoleError::Unavailable {
                role_arn: role_arn.clone(),
                message: "STS answered without credentials".into(),
            })
        })?;
        let expiry = SystemTime::try_from(creds.expiration).map_err(|_| {
            CredentialsError::provider_error(AssumeRoleError::Unavailable {
                role_arn: role_arn.clone(),
                message: "STS answered with an expiry time out of range".into(),
            })
        })?;
        tracing::info!(
            role_arn = %role_arn,
            target_account = %target.role.account,
            source_identity = %target.source_identity,
            expires_in_s = expiry.duration_since(SystemTime::now()).map(|d| d.as_secs()).unwrap_or(0),
            "assumed RoleA"
        );
        Ok(Credentials::new(
            creds.access_key_id,
            creds.secret_access_key,
            Some(creds.session_token),
            Some(expiry),
            "bedrock-relay-assume-role",
        ))
    }
}

impl ProvideCredentials for AssumeRoleProvider {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(self.assume())
    }
}

fn classify(
    role_arn: &str,
    err: SdkError<
        aws_sdk_sts::operation::assume_role::AssumeRoleError,
        aws_smithy_runtime_api::http::Response,
    >,
) -> AssumeRoleError {
    let role_arn = role_arn.to_owned();
    let failure = SdkFailure::read(&err);
    let code = failure.code.clone().unwrap_or_default();
    // No service message: a network or timeout failure. Say so without the
    // request's details, which may hold headers.
    let message = match (&failure.message, &failure.code) {
        (Some(message), _) => message.clone(),
        (None, Some(code)) => format!("{code} (no message)"),
        (None, None) => failure.unanswered("STS"),
    };
    match (code.as_str(), failure.class()) {
        ("ExpiredTokenException" | "InvalidClientTokenId" | "SignatureDoesNotMatch", _) => {
            AssumeRoleError::Denied {
                role_arn,
                message: format!(
                    "{message}; the execution role's own credentials were not accepted"
                ),
            }
        }
        (_, Class::Denied) => AssumeRoleError::Denied { role_arn, message },
        (_, Class::Rejected) => AssumeRoleError::Invalid { role_arn, message },
        _ => AssumeRoleError::Unavailable { role_arn, message },
    }
}

/// Finds an [`AssumeRoleError`] anywhere in an error's source chain: the SDK
/// wraps the provider's error in its own layers.
pub fn find_assume_role_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a AssumeRoleError> {
    crate::aws::errors::chain(err).find_map(|e| e.downcast_ref::<AssumeRoleError>())
}

#[cfg(test)]
mod tests {
    use aws_sdk_sts::operation::assume_role::{
        AssumeRoleError as StsAssumeRoleError, AssumeRoleOutput,
    };
    use aws_sdk_sts::types::Credentials as StsCredentials;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;
    use crate::domain::target::RoleArn;

    pub(crate) fn target() -> Target {
        Target {
            alias: "default".into(),
            allowed_models: None,
            quota: Default::default(),
            role: RoleArn::parse("arn:aws:iam::111111111111:role/RoleA").expect("arn"),
            external_id: Some("ext-123".into()),
            region: "us-east-1".into(),
            session_duration: Duration::from_secs(900),
            session_name: "bedrock-relay-fn".into(),
            source_identity: "fn".into(),
        }
    }

    #[tokio::test]
    async fn assume_sends_source_identity_external_id_and_duration() {
        let rule = mock!(aws_sdk_sts::Client::assume_role)
            .match_requests(|req| {
                req.role_arn() == Some("arn:aws:iam::111111111111:role/RoleA")
                    && req.source_identity() == Some("fn")
                    && req.external_id() == Some("ext-123")
                    && req.duration_seconds() == Some(900)
                    && req.role_session_name() == Some("bedrock-relay-fn")
            })
            .then_output(|| {
                AssumeRoleOutput::builder()
                    .credentials(
                        StsCredentials::builder()
                            .access_key_id("ASIAA")
                            .secret_access_key("secretA")
                            .session_token("tokenA")
                            .expiration(aws_smithy_types::DateTime::from_secs(4_000_000_000))
                            .build()
                            .expect("creds"),
                    )
                    .build()
            });
        let sts = mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&rule]);
        let creds = AssumeRoleProvider::new(sts, target())
            .provide_credentials()
            .await
            .expect("credentials");
        assert_eq!(creds.access_key_id(), "ASIAA");
        assert_eq!(creds.session_token(), Some("tokenA"));
        assert_eq!(
            creds.expiry(),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000))
        );
        assert_eq!(rule.num_calls(), 1);
    }

    #[tokio::test]
    async fn access_denied_points_at_trust_policy_and_external_id() {
        let rule = mock!(aws_sdk_sts::Client::assume_role).then_error(|| {
            StsAssumeRoleError::generic(
                ErrorMetadata::builder()
                    .code("AccessDenied")
                    .message("User is not authorized to perform: sts:AssumeRole")
                    .build(),
            )
        });
        let sts = mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&rule]);
        let err = AssumeRoleProvider::new(sts, target())
            .provide_credentials()
            .await
            .expect_err("denied");
        let found = find_assume_role_error(&err).expect("assume-role error in chain");
        assert!(!found.is_retryable());
        let msg = found.to_string();
        assert!(msg.contains("trust policy"), "{msg}");
        assert!(msg.contains("RELAY_EXTERNAL_ID"), "{msg}");
        assert!(msg.contains("sts:AssumeRole"), "{msg}");
    }

    #[tokio::test]
    async fn throttled_sts_is_retryable() {
        let rule = mock!(aws_sdk_sts::Client::assume_role).then_error(|| {
            StsAssumeRoleError::generic(
                ErrorMetadata::builder()
                    .code("Throttling")
                    .message("Rate exceeded")
                    .build(),
            )
        });
        let sts = mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&rule]);
        let err = AssumeRoleProvider::new(sts, target())
            .provide_credentials()
            .await
            .expect_err("throttled");
        assert!(find_assume_role_error(&err)
            .expect("in chain")
            .is_retryable());
    }
}
