//! Bedrock Runtime: the client signed with RoleA's credentials, the Converse
//! call, and what its failures mean.
//!
//! Retries of throttling and 5xx answers are the SDK's own standard retry
//! (exponential backoff with full jitter); this module only bounds the whole
//! call, retries included, by the time left before the Lambda deadline, and
//! classifies what is left when the SDK gives up. A batch item's throttles
//! are the exception: they end the call and go back to the target's
//! pacer (`src/scheduling/pacer.rs`, [`Attempts::Paced`]).

pub(crate) mod batch_records;
pub(crate) mod jobs;
mod reply;
mod request;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::identity::IdentityCache;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::SdkConfig;
use aws_sdk_bedrockruntime::config::retry::{ClientRateLimiter, RetryPartition, TokenBucket};
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::auth::AuthSchemeId;
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::retries::classifiers::{
    ClassifyRetry, RetryAction, RetryClassifierPriority, RetryReason,
};
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::retry::ErrorKind;
use thiserror::Error;

use crate::aws::errors::{Class, SdkFailure};
use crate::credentials::{
    find_assume_role_error, AssumeRoleError, AssumeRoleProvider, REFRESH_BEFORE_EXPIRY,
};
use crate::domain::job::ResolvedJob;
pub use crate::domain::record::ModelReply;
#[cfg(test)]
use crate::domain::record::Usage;
use crate::domain::target::Target;
use crate::observe::metrics::{AttemptCounter, CallStats};
use crate::observe::xray::Recorder;
#[cfg(test)]
use reply::read_invoke_body;

/// A Bedrock call that did not produce an answer, with which side to fix.
#[derive(Debug, Error)]
pub enum BedrockError {
    /// RoleA could not be assumed (the STS side).
    #[error(transparent)]
    AssumeRole(#[from] AssumeRoleError),
    /// Bedrock refused RoleA (the account-A side).
    #[error(
        "bedrock:InvokeModel on `{model}` was denied to {role_arn} ({message}); fix it in account A: RoleA's policy must \
         allow bedrock:InvokeModel on this model (for an inference profile, on the profile and on its foundation models \
         in every region it routes to), and model access must be enabled for the model in account A"
    )]
    AccessDenied {
        /// The model asked for.
        model: String,
        /// RoleA.
        role_arn: String,
        /// What Bedrock said.
        message: String,
    },
    /// Still throttled when the retries ran out.
    #[error("Bedrock throttled `{model}` and retries ran out ({message}); the model's quota in account A is exhausted for now")]
    Throttled {
        /// The model.
        model: String,
        /// What Bedrock said.
        message: String,
    },
    /// 5xx, model not ready or model timeout when the retries ran out.
    #[error("Bedrock could not serve `{model}` ({code}: {message}); this is usually transient")]
    Unavailable {
        /// The model.
        model: String,
        /// Bedrock's error code.
        code: String,
        /// What Bedrock said.
        message: String,
    },
    /// The request itself is wrong for this model.
    #[error("Bedrock rejected the request for `{model}` ({code}: {message}); fix the job")]
    Rejected {
        /// The model.
        model: String,
        /// Bedrock's error code.
        code: String,
        /// What Bedrock said.
        message: String,
    },
    /// Bedrock refused a model feature the job asked for.
    #[error("Bedrock rejected {feature} for `{model}` ({message}); {fix}")]
    FeatureRejected {
        /// The model.
        model: String,
        /// The feature, e.g. ``service tier `flex` ``.
        feature: String,
        /// What Bedrock said.
        message: String,
        /// What to change.
        fix: String,
    },
    /// The answer does not match the job's `output_schema`, after one
    /// re-ask when the time left allowed it.
    #[error("the answer of `{model}` does not match the job's output_schema {mismatch}; make the schema easier to meet or the prompt clearer, or use a model that supports structured output")]
    OutputInvalid {
        /// The model.
        model: String,
        /// Where the answer first fails the schema.
        mismatch: crate::domain::features::OutputMismatch,
    },
    /// The model or profile does not exist where it was asked for.
    #[error("`{model}` was not found in {region} ({message}); check the model ID, or use the inference profile ID for cross-region models")]
    NotFound {
        /// The model.
        model: String,
        /// The region called.
        region: String,
        /// What Bedrock said.
        message: String,
    },
    /// Not enough time left before the Lambda deadline.
    #[error("the Lambda deadline left {left_ms} ms, too little to call `{model}` and record the result; raise the function's timeout")]
    Deadline {
        /// The model.
        model: String,
        /// Time that was left when the call was given up.
        left_ms: u128,
    },
    /// Bedrock could not be reached.
    #[error("could not reach Bedrock for `{model}` ({message})")]
    Unreachable {
        /// The model.
        model: String,
        /// What went wrong.
        message: String,
    },
}

impl BedrockError {
    /// A stable name for the record and the Lambda error type.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AssumeRole(AssumeRoleError::Denied { .. }) => "AssumeRoleDenied",
            Self::AssumeRole(AssumeRoleError::Invalid { .. }) => "AssumeRoleInvalid",
            Self::AssumeRole(AssumeRoleError::Unavailable { .. }) => "AssumeRoleUnavailable",
            Self::AccessDenied { .. } => "BedrockAccessDenied",
            Self::Throttled { .. } => "BedrockThrottled",
            Self::Unavailable { .. } => "BedrockUnavailable",
            Self::Rejected { .. } | Self::FeatureRejected { .. } => "BedrockRejected",
            Self::OutputInvalid { .. } => "OutputInvalid",
            Self::NotFound { .. } => "BedrockModelNotFound",
            Self::Deadline { .. } => "DeadlineExceeded",
            Self::Unreachable { .. } => "BedrockUnreachable",
        }
    }

    /// Whether the same event may succeed when Lambda retries it.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::AssumeRole(inner) => inner.is_retryable(),
            Self::Throttled { .. }
            | Self::Unavailable { .. }
            | Self::Deadline { .. }
            | Self::Unreachable { .. } => true,
            Self::AccessDenied { .. }
            | Self::Rejected { .. }
            | Self::FeatureRejected { .. }
            | Self::OutputInvalid { .. }
            | Self::NotFound { .. } => false,
        }
    }
}

/// The Bedrock Runtime client for one target, signed as RoleA.
#[derive(Debug, Clone)]
pub struct Bedrock {
    client: aws_sdk_bedrockruntime::Client,
    role_arn: String,
    region: String,
}

impl Bedrock {
    /// Builds the client once at cold start from the function's base config.
    pub fn new(
        base: &SdkConfig,
        sts: aws_sdk_sts::Client,
        target: &Target,
        max_attempts: u32,
    ) -> Self {
        let builder = aws_sdk_bedrockruntime::config::Builder::from(base);
        let config = Self::configure(builder, sts, target, max_attempts).build();
        Self::from_client(aws_sdk_bedrockruntime::Client::from_conf(config), target)
    }

    /// Applies the relay's settings to a client config: RoleA credentials
    /// through the provider, held by a lazy identity cache that refreshes them
    /// [`REFRESH_BEFORE_EXPIRY`] early; the target's region; SigV4 only; the
    /// standard retry; an X-Ray subsegment per call.
    pub fn configure(
        builder: aws_sdk_bedrockruntime::config::Builder,
        sts: aws_sdk_sts::Client,
        target: &Target,
        max_attempts: u32,
    ) -> aws_sdk_bedrockruntime::config::Builder {
        builder
            .credentials_provider(AssumeRoleProvider::new(sts, target.clone()))
            .identity_cache(
                IdentityCache::lazy()
                    .buffer_time(REFRESH_BEFORE_EXPIRY)
                    .build(),
            )
            .region(aws_config::Region::new(target.region.clone()))
            // Sign with SigV4 even if a Bedrock API key is in the environment (config
            // refuses one; this keeps a later change from silently re-enabling it).
            .auth_scheme_preference([AuthSchemeId::new("sigv4")])
            .retry_config(retry_config(max_attempts))
            .interceptor(Recorder::new())
            // The SDK's default retry token bucket is shared by the whole process and,
            // once a throttling storm drains it, stops retrying for every later
            // invocation of a warm function. Here each call is already bounded by
            // RELAY_MAX_ATTEMPTS and the Lambda deadline, so retries stay per call.
            .retry_partition(
                RetryPartition::custom("bedrock-relay")
                    .token_bucket(TokenBucket::unlimited())
                    // One rate limiter per model account: its quota is its own.
                    .client_rate_limiter(ClientRateLimiter::new(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64()),
                    ))
                    .build(),
            )
    }

    /// Wraps an existing client (tests pass mocked ones).
    pub fn from_client(client: aws_sdk_bedrockruntime::Client, target: &Target) -> Self {
        Self {
            client,
            role_arn: target.role.arn.clone(),
            region: target.region.clone(),
        }
    }

    /// Runs `job` through Converse, giving up when `budget` runs out.
    pub async fn converse(
        &self,
        job: &ResolvedJob,
        budget: Duration,
    ) -> Result<ModelReply, BedrockError> {
        self.converse_counted(job, budget, Attempts::Configured, &Arc::default())
            .await
    }

    /// One attempt only: for pools, where a throttled or failing member hands
    /// the work to the next one instead of backing off.
    pub async fn converse_once(
        &self,
        job: &ResolvedJob,
        budget: Duration,
    ) -> Result<ModelReply, BedrockError> {
        self.converse_counted(job, budget, Attempts::One, &Arc::default())
            .await
    }

    /// [`Bedrock::converse`] with the retry behaviour of `attempts`, that
    /// adds its attempts and throttled attempts to `stats`. A job with `invoke`
    /// goes to InvokeModel instead, its answer kept as parsed JSON.
    pub async fn converse_counted(
        &self,
        job: &ResolvedJob,
        budget: Duration,
        attempts: Attempts,
        stats: &Arc<CallStats>,
    ) -> Result<ModelReply, BedrockError> {
        let started = Instant::now();
        let timeout = TimeoutConfig::builder().operation_timeout(budget).build();
        let mut overrides = aws_sdk_bedrockruntime::config::Builder::default()
            .timeout_config(timeout)
            .interceptor(AttemptCounter(Arc::clone(stats)));
        let retry = match attempts {
            Attempts::Configured => None,
            Attempts::One => Some(RetryConfig::standard().with_max_attempts(1)),
            Attempts::Paced => Some(
                RetryConfig::standard()
                    .with_max_attempts(BATCH_MAX_ATTEMPTS)
                    .with_initial_backoff(BATCH_INITIAL_BACKOFF)
                    .with_max_backoff(BATCH_MAX_BACKOFF),
            ),
        };
        if attempts == Attempts::Paced {
            overrides = overrides.retry_classifier(ThrottlingHandedBack);
        }
        if let Some(retry) = retry {
            overrides = overrides.retry_config(retry);
        }
        let result = match &job.invoke {
            Some(invoke) => request::invoke(&self.client, job, invoke)
                .customize()
                .config_override(overrides)
                .send()
                .await
                .map(|output| {
                    reply::invoke_reply(
                        &output.body.into_inner(),
                        stats.reported(),
                        output.service_tier.map(|tier| tier.as_str().to_owned()),
                        started.elapsed().as_millis(),
                    )
                })
                .map_err(|err| self.classify(&job.model, err, budget)),
            None => {
                let trace = job
                    .features
                    .guardrail
                    .as_ref()
                    .filter(|(_, g)| g.trace.is_on())
                    .map(|_| reply::GuardrailTraceReader::default());
                if let Some(trace) = &trace {
                    overrides = overrides.interceptor(trace.clone());
                }
                request::converse(&self.client, job)
                    .customize()
                    .config_override(overrides)
                    .send()
                    .await
                    .map(|output| {
                        reply::converse_reply(
                            output,
                            started.elapsed().as_millis(),
                            trace.and_then(|t| t.take()),
                        )
                    })
                    .map_err(|err| self.classify(&job.model, err, budget))
            }
        };
        result.map_err(|err| explain_rejection(err, job))
    }

    /// Runs `guardrail` once over a short harmless text with RoleA
    /// (`ApplyGuardrail`, what `doctor` uses to show the guardrail is there
    /// and RoleA may apply it): the action Bedrock took.
    pub async fn apply_guardrail(
        &self,
        guardrail: &crate::domain::features::Guardrail,
        budget: Duration,
    ) -> Result<String, BedrockError> {
        use aws_sdk_bedrockruntime::types::{
            GuardrailContentBlock, GuardrailContentSource, GuardrailTextBlock,
        };
        let text = GuardrailTextBlock::builder()
            .text("bedrock-relay doctor: is this guardrail reachable?")
            .build()
            .map_err(|err| BedrockError::Unreachable {
                model: guardrail.identifier.clone(),
                message: err.to_string(),
            })?;
        let timeout = TimeoutConfig::builder().operation_timeout(budget).build();
        self.client
            .apply_guardrail()
            .guardrail_identifier(&guardrail.identifier)
            .guardrail_version(&guardrail.version)
            .source(GuardrailContentSource::Input)
            .content(GuardrailContentBlock::Text(text))
            .customize()
            .config_override(
                aws_sdk_bedrockruntime::config::Builder::default().timeout_config(timeout),
            )
            .send()
            .await
            .map(|output| output.action.as_str().to_owned())
            .map_err(|err| self.classify(&guardrail.identifier, err, budget))
    }

    fn classify<E>(
        &self,
        model: &str,
        err: SdkError<E, HttpResponse>,
        budget: Duration,
    ) -> BedrockError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        if let Some(assume) = find_assume_role_error(&err) {
            return assume.clone().into();
        }
        let model = model.to_owned();
        if let SdkError::TimeoutError(_) = &err {
            return BedrockError::Deadline {
                model,
                left_ms: budget.as_millis(),
            };
        }
        let failure = SdkFailure::read(&err);
        let message = failure.message().to_owned();
        let Some(code) = failure.code.clone() else {
            // No error code: the request never got a service answer.
            return BedrockError::Unreachable {
                model,
                message: {
                    // The SDK's own top line ("dispatch failure") says nothing; its sources do.
                    let detail: Vec<String> = crate::aws::errors::chain(&err)
                        .skip(1)
                        .map(|e| e.to_string())
                        .collect();
                    if detail.is_empty() {
                        "no detail".into()
                    } else {
                        detail.join(": ")
                    }
                },
            };
        };
        match failure.class() {
            Class::Denied => BedrockError::AccessDenied {
                model,
                role_arn: self.role_arn.clone(),
                message,
            },
            Class::Throttled => BedrockError::Throttled { model, message },
            Class::Missing => BedrockError::NotFound {
                model,
                region: self.region.clone(),
                message,
            },
            Class::Rejected => BedrockError::Rejected {
                model,
                code,
                message,
            },
            Class::Transient | Class::Other => BedrockError::Unavailable {
                model,
                code,
                message,
            },
        }
    }
}

/// A request Bedrock refused because of a feature the job asked for: the
/// feature named with what to change (Bedrock's own message kept).
fn explain_rejection(err: BedrockError, job: &ResolvedJob) -> BedrockError {
    let BedrockError::Rejected { model, message, .. } = &err else {
        return err;
    };
    let said = message.to_ascii_lowercase();
    let features = &job.features;
    let (feature, fix) = if let Some(tier) = features.service_tier.filter(|_| said.contains("tier"))
    {
        (
            format!("service tier `{tier}`"),
            "the model does not offer this tier here: use `default` (or leave service_tier out), or a model that offers it".to_owned(),
        )
    } else if let Some((alias, guardrail)) = features
        .guardrail
        .as_ref()
        .filter(|_| said.contains("guardrail"))
    {
        (
            format!("guardrail `{alias}`"),
            format!(
                "guardrail `{}` version {} must exist in account A in this region (check RELAY_GUARDRAILS), and RoleA needs bedrock:ApplyGuardrail on it",
                guardrail.identifier, guardrail.version
            ),
        )
    } else if features.output_schema.is_some() && said.contains("schema") {
        (
            "output_schema".to_owned(),
            "use only the JSON Schema keywords the model supports for structured output (Bedrock names what it refused), or a model that supports structured output".to_owned(),
        )
    } else {
        return err;
    };
    BedrockError::FeatureRejected {
        model: model.clone(),
        feature,
        message: message.clone(),
        fix,
    }
}

/// How many attempts a call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempts {
    /// `RELAY_MAX_ATTEMPTS`, backoff from 200 ms up to 10 s: a single job.
    Configured,
    /// One: a pool member, which hands the work on instead of backing off.
    One,
    /// As many as the deadline allows for 5xx answers and transport errors
    /// (backoff from 50 ms up to 1 s), none for throttling: a batch item, whose
    /// throttled attempts go back to the target's pacer (`src/scheduling/pacer.rs`) for
    /// the next send slot instead of sleeping on their own.
    Paced,
}

/// A bound for [`Attempts::Paced`]; the operation timeout (the time left in
/// the invocation) ends the retries first.
const BATCH_MAX_ATTEMPTS: u32 = 10_000;
const BATCH_INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const BATCH_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Keeps the SDK's standard retry for everything but throttling, which it
/// forbids: runs after the SDK's own classifiers and overrules their
/// "throttled, retry" verdict, so the call ends and the pacer decides when the
/// item is sent again.
#[derive(Debug, Default)]
struct ThrottlingHandedBack;

impl ClassifyRetry for ThrottlingHandedBack {
    fn classify_retry(&self, _ctx: &InterceptorContext) -> RetryAction {
        RetryAction::NoActionIndicated
    }

    fn classify_retry_v2(&self, _ctx: &InterceptorContext, previous: &RetryAction) -> RetryAction {
        match previous {
            RetryAction::RetryIndicated(RetryReason::RetryableError {
                kind: ErrorKind::ThrottlingError,
                ..
            }) => RetryAction::RetryForbidden,
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "BedrockRelayThrottlingHandedBack"
    }

    fn priority(&self) -> RetryClassifierPriority {
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

/// The SDK's standard retry: exponential backoff with full jitter, for
/// throttling, 5xx and transient transport errors.
fn retry_config(max_attempts: u32) -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(max_attempts)
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(10))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::SystemTime;

    use aws_sdk_bedrockruntime::operation::converse::{
        ConverseError, ConverseOutput as ConverseOperationOutput,
    };
    use aws_sdk_bedrockruntime::types::{
        ConverseOutput as Output, Message, StopReason, TokenUsage,
    };
    use aws_sdk_sts::operation::assume_role::AssumeRoleOutput;
    use aws_smithy_async::time::SystemTimeSource;
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
    use aws_smithy_runtime_api::http::{Response as HttpResponse, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;
    use crate::domain::job::Job;
    use crate::domain::target::RoleArn;

    pub(crate) fn target() -> Target {
        Target {
            alias: "default".into(),
            allowed_models: None,
            quota: Default::default(),
            role: RoleArn::parse("arn:aws:iam::111111111111:role/RoleA").expect("arn"),
            external_id: None,
            region: "us-west-2".into(),
            session_duration: Duration::from_secs(3600),
            session_name: "bedrock-relay-fn".into(),
            source_identity: "fn".into(),
        }
    }

    /// STS answering with credentials that expire `lifetime` from the moment of the call.
    pub(crate) fn sts_issuing(lifetime: Duration) -> (Rule, aws_sdk_sts::Client) {
        let rule = mock!(aws_sdk_sts::Client::assume_role).then_output(move || {
            AssumeRoleOutput::builder()
                .credentials(
                    aws_sdk_sts::types::Credentials::builder()
                        .access_key_id("ASIAROLEA")
                        .secret_access_key("secret")
                        .session_token("token")
                        .expiration(aws_smithy_types::DateTime::from(
                            SystemTime::now() + lifetime,
                        ))
                        .build()
                        .expect("credentials"),
                )
                .build()
        });
        let client = mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&rule]);
        (rule, client)
    }

    /// A Converse answer of `text` with the given token counts.
    pub(crate) fn converse_output(
        text: &str,
        input_tokens: i32,
        output_tokens: i32,
    ) -> ConverseOperationOutput {
        ConverseOperationOutput::builder()
            .output(Output::Message(
                Message::builder()
                    .role(aws_sdk_bedrockruntime::types::ConversationRole::Assistant)
                    .content(aws_sdk_bedrockruntime::types::ContentBlock::Text(
                        text.into(),
                    ))
                    .build()
                    .expect("message"),
            ))
            .stop_reason(StopReason::EndTurn)
            .usage(
                TokenUsage::builder()
                    .input_tokens(input_tokens)
                    .output_tokens(output_tokens)
                    .total_tokens(input_tokens + output_tokens)
                    .build()
                    .expect("usage"),
            )
            .build()
            .expect("output")
    }

    fn converse_ok() -> Rule {
        mock!(aws_sdk_bedrockruntime::Client::converse)
            .then_output(|| converse_output("hello", 3, 1))
    }

    pub(crate) fn relay_bedrock(
        sts: aws_sdk_sts::Client,
        converse: &Rule,
        max_attempts: u32,
    ) -> Bedrock {
        let client = mock_client!(
            aws_sdk_bedrockruntime,
            RuleMode::MatchAny,
            [converse],
            |builder| {
                // The test defaults freeze the clock; the identity cache must see real time.
                Bedrock::configure(builder, sts.clone(), &target(), max_attempts)
                    .time_source(SystemTimeSource::new())
            }
        );
        Bedrock::from_client(client, &target())
    }

    fn job() -> ResolvedJob {
        Job::from_value(serde_json::json!({"prompt": "hi", "model": "amazon.nova-lite-v1:0"}))
            .expect("job")
            .resolve(None, "id")
            .expect("resolved")
    }

    #[test]
    fn invoke_bodies_of_known_families_give_text_and_usage() {
        let anthropic = serde_json::json!({"content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 7, "output_tokens": 2}});
        let (text, stop, usage) = read_invoke_body(&anthropic);
        assert_eq!((text.as_str(), stop.as_str()), ("hi", "end_turn"));
        assert_eq!(usage, Some(Usage::new(7, 2, 9)));
        let llama = serde_json::json!({"generation": "yo", "stop_reason": "stop", "prompt_token_count": 4, "generation_token_count": 1});
        assert_eq!(read_invoke_body(&llama).2.map(|u| u.total_tokens), Some(5));
        let embedding = serde_json::json!({"embedding": [0.1, 0.2], "inputTextTokenCount": 3});
        let (text, _, usage) = read_invoke_body(&embedding);
        assert!(text.is_empty());
        assert_eq!(usage.map(|u| u.input_tokens), Some(3));
        assert_eq!(
            read_invoke_body(&serde_json::json!({"whatever": 1})).2,
            None,
            "no usage reported, none recorded"
        );
    }

    /// InvokeModel's token counts and latency come from Bedrock's response
    /// headers, which every model family gets; the body's usage (model-specific,
    /// often absent) is the fallback.
    #[tokio::test]
    async fn invoke_model_usage_and_latency_come_from_bedrocks_headers() {
        let answer = |headers: &'static [(&'static str, &'static str)], body: &'static str| {
            move || {
                let mut response = HttpResponse::new(
                    StatusCode::try_from(200).expect("status"),
                    SdkBody::from(body),
                );
                for (name, value) in headers {
                    response.headers_mut().insert(*name, *value);
                }
                response
            }
        };
        let rule = mock!(aws_sdk_bedrockruntime::Client::invoke_model)
            .sequence()
            .http_response(answer(
                &[
                    ("x-amzn-bedrock-invocation-latency", "812"),
                    ("x-amzn-bedrock-input-token-count", "41"),
                    ("x-amzn-bedrock-output-token-count", "9"),
                ],
                r#"{"generation": "a llama answer"}"#,
            ))
            .http_response(answer(
                &[],
                r#"{"content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 7, "output_tokens": 2}}"#,
            ))
            .build();
        let (_, sts) = sts_issuing(Duration::from_secs(3600));
        let client = mock_client!(
            aws_sdk_bedrockruntime,
            RuleMode::Sequential,
            [&rule],
            |builder| Bedrock::configure(builder, sts.clone(), &target(), 1)
        );
        let bedrock = Bedrock::from_client(client, &target());
        let job = Job::from_value(serde_json::json!({
            "model": "meta.llama3-8b-instruct-v1:0",
            "invoke": {"body": {"prompt": "hi"}}
        }))
        .expect("job")
        .resolve(None, "id")
        .expect("resolved");

        let reply = bedrock
            .converse(&job, Duration::from_secs(10))
            .await
            .expect("reply");
        assert_eq!(
            reply.usage,
            Some(Usage::new(41, 9, 50)),
            "a body without usage is counted from the headers"
        );
        assert_eq!(reply.model_latency_ms, Some(812));

        let reply = bedrock
            .converse(&job, Duration::from_secs(10))
            .await
            .expect("reply");
        assert_eq!(
            reply.usage.map(|u| u.input_tokens),
            Some(7),
            "no headers: the body's usage"
        );
        assert_eq!(
            reply.model_latency_ms, None,
            "no header, no latency invented"
        );
    }

    #[tokio::test]
    async fn warm_calls_reuse_cached_role_credentials() {
        let (sts_rule, sts) = sts_issuing(Duration::from_secs(3600));
        let converse = converse_ok();
        let bedrock = relay_bedrock(sts, &converse, 1);
        for _ in 0..3 {
            let reply = bedrock
                .converse(&job(), Duration::from_secs(10))
                .await
                .expect("reply");
            assert_eq!(reply.text, "hello");
            assert_eq!(reply.usage, Some(Usage::new(3, 1, 4)));
        }
        assert_eq!(converse.num_calls(), 3);
        assert_eq!(sts_rule.num_calls(), 1, "one AssumeRole for three calls");
    }

    #[tokio::test]
    async fn credentials_are_refreshed_before_they_expire() {
        // Credentials that expire inside the refresh window are fetched again
        // before the next call, never used until they lapse. (The cache adds up to
        // half the window as jitter, so the window is 150-300 s before expiry.)
        let (sts_rule, sts) = sts_issuing(Duration::from_secs(100));
        let converse = converse_ok();
        let bedrock = relay_bedrock(sts, &converse, 1);
        bedrock
            .converse(&job(), Duration::from_secs(10))
            .await
            .expect("first");
        bedrock
            .converse(&job(), Duration::from_secs(10))
            .await
            .expect("second");
        assert_eq!(sts_rule.num_calls(), 2);
    }

    /// A Converse mock answering every call with the error `code`.
    pub(crate) fn converse_error(code: &'static str) -> Rule {
        mock!(aws_sdk_bedrockruntime::Client::converse).then_error(move || {
            ConverseError::generic(
                ErrorMetadata::builder()
                    .code(code)
                    .message("from bedrock")
                    .build(),
            )
        })
    }

    #[tokio::test]
    async fn errors_are_classified_by_side_and_retryability() {
        for (code, expected, retryable) in [
            ("AccessDeniedException", "BedrockAccessDenied", false),
            ("ThrottlingException", "BedrockThrottled", true),
            ("ServiceUnavailableException", "BedrockUnavailable", true),
            ("ModelNotReadyException", "BedrockUnavailable", true),
            ("ValidationException", "BedrockRejected", false),
            ("ResourceNotFoundException", "BedrockModelNotFound", false),
        ] {
            let (_, sts) = sts_issuing(Duration::from_secs(3600));
            let rule = converse_error(code);
            let err = relay_bedrock(sts, &rule, 1)
                .converse(&job(), Duration::from_secs(10))
                .await
                .expect_err(code);
            assert_eq!(err.code(), expected, "{code}");
            assert_eq!(err.is_retryable(), retryable, "{code}");
        }
    }

    #[tokio::test]
    async fn a_warm_client_keeps_retrying_throttling_after_a_storm() {
        // 150 throttled calls would drain the SDK's default retry bucket (500
        // tokens, 5 a throttle retry); each call must still get its retries.
        let (_, sts) = sts_issuing(Duration::from_secs(3600));
        let throttled = mock!(aws_sdk_bedrockruntime::Client::converse)
            .sequence()
            .error(|| {
                ConverseError::generic(ErrorMetadata::builder().code("ThrottlingException").build())
            })
            .times(300)
            .output(|| converse_output("finally", 1, 1))
            .build();
        let client = mock_client!(
            aws_sdk_bedrockruntime,
            RuleMode::Sequential,
            [&throttled],
            |builder| {
                Bedrock::configure(builder, sts.clone(), &target(), 2)
                    .time_source(SystemTimeSource::new())
                    .retry_config(retry_config(2).with_initial_backoff(Duration::from_millis(1)))
            }
        );
        let bedrock = Bedrock::from_client(client, &target());
        for _ in 0..150 {
            let err = bedrock
                .converse(&job(), Duration::from_secs(10))
                .await
                .expect_err("throttled");
            assert_eq!(err.code(), "BedrockThrottled");
        }
        assert_eq!(
            throttled.num_calls(),
            300,
            "every call made both of its attempts"
        );
    }

    /// A batch item's call: a 5xx answer is retried by the SDK, a throttle
    /// ends the call after one attempt (the pacer sends it again).
    #[tokio::test]
    async fn a_paced_call_retries_server_errors_but_hands_throttling_back() {
        let (_, sts) = sts_issuing(Duration::from_secs(3600));
        let rule = mock!(aws_sdk_bedrockruntime::Client::converse)
            .sequence()
            .http_response(|| {
                HttpResponse::new(
                    StatusCode::try_from(503).expect("status"),
                    SdkBody::from("unavailable"),
                )
            })
            .times(2)
            .output(|| converse_output("after two 503s", 1, 1))
            .error(|| {
                ConverseError::generic(ErrorMetadata::builder().code("ThrottlingException").build())
            })
            .output(|| converse_output("not reached by the throttled call", 1, 1))
            .build();
        let client = mock_client!(
            aws_sdk_bedrockruntime,
            RuleMode::Sequential,
            [&rule],
            |builder| {
                Bedrock::configure(builder, sts.clone(), &target(), 2)
                    .time_source(SystemTimeSource::new())
            }
        );
        let bedrock = Bedrock::from_client(client, &target());
        let stats = Arc::new(CallStats::default());
        let reply = bedrock
            .converse_counted(&job(), Duration::from_secs(10), Attempts::Paced, &stats)
            .await
            .expect("served after the SDK's retries");
        assert_eq!(reply.text, "after two 503s");
        assert_eq!(stats.attempts(), 3);

        let stats = Arc::new(CallStats::default());
        let err = bedrock
            .converse_counted(&job(), Duration::from_secs(10), Attempts::Paced, &stats)
            .await
            .expect_err("throttled");
        assert_eq!(err.code(), "BedrockThrottled");
        assert_eq!(stats.attempts(), 1, "the throttle was not retried");
        assert_eq!(rule.num_calls(), 4);
    }

    #[tokio::test]
    async fn sts_denial_surfaces_through_the_bedrock_call() {
        let sts_rule = mock!(aws_sdk_sts::Client::assume_role).then_error(|| {
            aws_sdk_sts::operation::assume_role::AssumeRoleError::generic(
                ErrorMetadata::builder()
                    .code("AccessDenied")
                    .message("not authorized")
                    .build(),
            )
        });
        let sts = mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&sts_rule]);
        // No Bedrock rule: a modeled answer would mask the failed identity resolution,
        // and without credentials the request is never sent anyway.
        let config = aws_sdk_bedrockruntime::Config::builder()
            .with_test_defaults_v2()
            .http_client(aws_smithy_mocks::create_mock_http_client());
        let client = aws_sdk_bedrockruntime::Client::from_conf(
            Bedrock::configure(config, sts, &target(), 1).build(),
        );
        let err = Bedrock::from_client(client, &target())
            .converse(&job(), Duration::from_secs(10))
            .await
            .expect_err("denied");
        assert_eq!(err.code(), "AssumeRoleDenied", "{err}");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("trust policy"));
        assert_eq!(sts_rule.num_calls(), 1);
    }
}
