//! The function's configuration: every `RELAY_*` environment variable, read and
//! validated once at cold start.
//!
//! Nothing here touches the network. A bad value fails init with a message that
//! names the variable and says what would be accepted, so a deploy with a typo
//! never reaches its first event.

use std::time::Duration;

use thiserror::Error;

use std::collections::BTreeMap;

mod batch_jobs;
mod fan_out;
mod features;
mod targets;

pub use batch_jobs::BatchJobs;
pub use fan_out::FanOut;
use fan_out::{check_store_apart, fan_out};
use targets::{
    apply_allowlist, check_external_id, check_session_duration, requests_per_minute, stated_quota,
    sts_name, TargetSpec,
};

use crate::destination::{dynamodb, DestinationError, DestinationSpec, S3Location};
use crate::domain::job::{Job, JobError};
use crate::domain::sources::SourcePolicy;
use crate::domain::target::{RoleArn, Target, Targets, DEFAULT_ALIAS};

/// STS refuses chained sessions (Lambda execution role → RoleA) longer than an hour.
const MAX_CHAINED_SESSION_SECS: u64 = 3600;
/// STS's floor for any assumed-role session.
const MIN_SESSION_SECS: u64 = 900;
/// The most items one batch may have (`RELAY_MAX_ITEMS`'s ceiling): a
/// fanned-out batch holds one chunk in memory at a time.
const MAX_ITEMS_CEILING: u64 = 1_000_000;
/// EventBridge's limit for one event entry; Lambda's async payload limit is no smaller.
const DEFAULT_MAX_EVENT_BYTES: usize = 256 * 1024;

/// A configuration problem found at cold start. Each names the variable to fix.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A required variable is absent or empty.
    #[error("{var} is not set: {hint}")]
    Missing {
        /// The variable's name.
        var: &'static str,
        /// What to set it to.
        hint: &'static str,
    },
    /// A variable is present but its value cannot be used.
    #[error("{var} is invalid: {reason}")]
    Invalid {
        /// The variable's name.
        var: &'static str,
        /// Why, and what would be accepted.
        reason: String,
    },
    /// `RELAY_DEFAULT_JOB` is not a valid job.
    #[error("RELAY_DEFAULT_JOB is not a valid job: {0}")]
    DefaultJob(#[source] JobError),
}

/// Everything the function needs to know, read once at cold start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Lambda function's name (`AWS_LAMBDA_FUNCTION_NAME`).
    pub function_name: String,
    /// The model accounts, by alias (`RELAY_TARGETS`, or `RELAY_ROLE_ARN` as `default`).
    pub targets: Targets,
    /// Where results go unless a job names its own (`RELAY_DESTINATION`).
    pub destination: DestinationSpec,
    /// Patterns a job's own `destination` must match (`RELAY_ALLOWED_DESTINATIONS`).
    pub allowed_destinations: Vec<String>,
    /// DynamoDB table that remembers finished work when the destination cannot be
    /// read back (`RELAY_IDEMPOTENCY_TABLE`).
    pub idempotency_table: Option<dynamodb::Table>,
    /// DynamoDB table where the instances of the function share each stated
    /// quota's send schedule (`RELAY_RATE_TABLE`); `None`: each instance
    /// paces to the stated quota on its own.
    pub rate_table: Option<dynamodb::Table>,
    /// Where results too large for a message service go (`RELAY_SPILL_S3`).
    pub spill: Option<S3Location>,
    /// Batch items run at once (`RELAY_MAX_CONCURRENCY`).
    pub max_concurrency: usize,
    /// Most items one batch may have (`RELAY_MAX_ITEMS`).
    pub max_items: usize,
    /// Address S3 by path rather than virtual host (`RELAY_S3_FORCE_PATH_STYLE`), for
    /// S3-compatible endpoints and local emulators.
    pub s3_force_path_style: bool,
    /// Model for jobs that name none (`RELAY_DEFAULT_MODEL`).
    pub default_model: Option<String>,
    /// The job run for envelopes that carry none (`RELAY_DEFAULT_JOB`).
    pub default_job: Option<Job>,
    /// Attempts per Bedrock call, the first included (`RELAY_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// Time kept back from the Lambda deadline to write the record (`RELAY_DEADLINE_RESERVE_MS`).
    pub deadline_reserve: Duration,
    /// Largest accepted event, in bytes (`RELAY_MAX_EVENT_BYTES`).
    pub max_event_bytes: usize,
    /// Log prompt and output text (`RELAY_LOG_CONTENT`); off by default.
    pub log_content: bool,
    /// CloudWatch EMF namespace (`RELAY_METRICS_NAMESPACE`).
    pub metrics_namespace: String,
    /// Which CAs the HTTPS client trusts (`RELAY_TLS_ROOTS`: `amazon`, the
    /// default, or `system`).
    pub tls_roots: crate::aws::tls::TlsRoots,
    /// The account that owns the results, claims and spill buckets
    /// (`RELAY_BUCKET_OWNER`), passed as `ExpectedBucketOwner` on every call
    /// to them.
    pub bucket_owner: Option<String>,
    /// The function's memory in MB (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, which
    /// Lambda sets; 1024 outside Lambda).
    pub memory_mb: u64,
    /// What `documents` and `items_from` may read (`RELAY_ALLOWED_SOURCES`,
    /// minus the relay's own prefixes).
    pub sources: SourcePolicy,
    /// A template rendered from the envelope that scopes every job id of an
    /// EventBridge event (`RELAY_ID_PREFIX`, e.g. `{{ event.source }}/`).
    pub id_prefix: Option<String>,
    /// Where batches larger than a chunk fan out (`RELAY_WORK_QUEUE` and
    /// `RELAY_WORK_STORE`); `None`: every batch runs in its invocation.
    pub fan_out: Option<FanOut>,
    /// The event bus told when a fanned-out batch is complete
    /// (`RELAY_EVENT_BUS`, an ARN).
    pub event_bus: Option<crate::destination::eventbridge::Bus>,
    /// How batches may run as Bedrock batch inference jobs (`RELAY_DEFAULT_MODE`, `RELAY_BATCH_*`).
    pub batch_jobs: BatchJobs,
    /// Model-feature defaults and guardrail aliases (`RELAY_DEFAULT_CACHE`,
    /// `RELAY_DEFAULT_SERVICE_TIER`, `RELAY_GUARDRAILS`, `RELAY_DEFAULT_GUARDRAIL`).
    pub features: crate::domain::features::FeatureDefaults,
}

impl Config {
    /// `RELAY_LOG_CONTENT` on its own, before the rest is read, so logging can
    /// start first (and log a configuration error); a value that is not a
    /// boolean counts as off here and fails [`Config::from_env`].
    pub fn log_content_from_env() -> bool {
        parse_bool(std::env::var("RELAY_LOG_CONTENT").ok(), "RELAY_LOG_CONTENT").unwrap_or(false)
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, so tests need not touch the
    /// process environment. Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());

        // The SDK would let this token replace RoleA's credentials for Bedrock, which
        // silently moves the calls out of account A's role and its CloudTrail trail.
        if get("AWS_BEARER_TOKEN_BEDROCK").is_some() {
            return Err(ConfigError::Invalid {
                var: "AWS_BEARER_TOKEN_BEDROCK",
                reason: "bedrock-relay signs every Bedrock call with RoleA's assumed-role credentials; \
                         a Bedrock API key would bypass RoleA and account A's CloudTrail attribution. \
                         Remove the variable from the function's environment"
                    .into(),
            });
        }

        let function_name =
            get("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "bedrock-relay".into());
        let function_region = get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION"));

        let source_identity = match get("RELAY_SOURCE_IDENTITY") {
            Some(id) => {
                if id.len() < 2 || id.len() > 64 || sts_name(&id) != id {
                    return Err(ConfigError::Invalid {
                        var: "RELAY_SOURCE_IDENTITY",
                        reason:
                            "a SourceIdentity is 2-64 characters of letters, digits and _+=,.@-"
                                .into(),
                    });
                }
                id
            }
            None => sts_name(&function_name),
        };
        let session_name = sts_name(&format!("bedrock-relay-{function_name}"));
        let default_region = get("RELAY_BEDROCK_REGION").or(function_region);
        let target = |alias: &str,
                      spec: TargetSpec,
                      var: &'static str|
         -> Result<Target, ConfigError> {
            let invalid = |reason: String| ConfigError::Invalid {
                var,
                reason: if var == "RELAY_TARGETS" {
                    format!("target `{alias}`: {reason}")
                } else {
                    reason
                },
            };
            let role = RoleArn::parse(spec.role_arn.trim()).map_err(invalid)?;
            if let Some(id) = &spec.external_id {
                check_external_id(id).map_err(invalid)?;
            }
            let session_duration =
                check_session_duration(spec.session_duration.unwrap_or(MAX_CHAINED_SESSION_SECS))
                    .map_err(invalid)?;
            let quota = stated_quota(spec.requests_per_minute).map_err(invalid)?;
            let region = spec.region.or_else(|| default_region.clone()).ok_or(ConfigError::Missing {
                var: "RELAY_BEDROCK_REGION",
                hint: "neither a target region, RELAY_BEDROCK_REGION nor AWS_REGION is set; set the region Bedrock is called in",
            })?;
            Ok(Target {
                alias: alias.to_owned(),
                role,
                external_id: spec.external_id,
                region,
                session_duration,
                session_name: session_name.clone(),
                source_identity: source_identity.clone(),
                allowed_models: None,
                quota,
            })
        };

        let mut targets = BTreeMap::new();
        let mut batch_roles = BTreeMap::new();
        if let Some(raw) = get("RELAY_TARGETS") {
            let specs: BTreeMap<String, TargetSpec> = serde_json::from_str(&raw).map_err(|err| ConfigError::Invalid {
                var: "RELAY_TARGETS",
                reason: format!(
                    "{err}; expected {{\"alias\": {{\"role_arn\": \"arn:aws:iam::111111111111:role/RoleA\", \"region\": \"us-east-1\", \"external_id\": \"...\", \"session_duration\": 3600, \"requests_per_minute\": 6000}}}} (requests_per_minute: a whole number, or {{\"model id\": n}})"
                ),
            })?;
            for (alias, mut spec) in specs {
                if alias.is_empty()
                    || !alias
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
                {
                    return Err(ConfigError::Invalid {
                        var: "RELAY_TARGETS",
                        reason: format!("alias `{alias}`: use letters, digits, `_` and `-`"),
                    });
                }
                if let Some(role) = spec.batch_role_arn.take() {
                    batch_roles.insert(alias.clone(), role);
                }
                let built = target(&alias, spec, "RELAY_TARGETS")?;
                targets.insert(alias, built);
            }
        }
        if let Some(role_arn) = get("RELAY_ROLE_ARN") {
            if targets.contains_key(DEFAULT_ALIAS) {
                return Err(ConfigError::Invalid {
                    var: "RELAY_ROLE_ARN",
                    reason: "RELAY_TARGETS also defines `default`; set one or the other".into(),
                });
            }
            let duration = match get("RELAY_SESSION_DURATION") {
                None => None,
                Some(raw) => Some(raw.trim().parse::<u64>().map_err(|_| ConfigError::Invalid {
                    var: "RELAY_SESSION_DURATION",
                    reason: format!("`{raw}` is not a whole number of seconds; use {MIN_SESSION_SECS}-{MAX_CHAINED_SESSION_SECS}"),
                })?),
            };
            if let Some(secs) = duration {
                check_session_duration(secs).map_err(|reason| ConfigError::Invalid {
                    var: "RELAY_SESSION_DURATION",
                    reason,
                })?;
            }
            let external_id = get("RELAY_EXTERNAL_ID");
            if let Some(id) = &external_id {
                check_external_id(id).map_err(|reason| ConfigError::Invalid {
                    var: "RELAY_EXTERNAL_ID",
                    reason,
                })?;
            }
            let spec = TargetSpec {
                role_arn,
                region: None,
                external_id,
                session_duration: duration,
                batch_role_arn: None,
                requests_per_minute: requests_per_minute(get("RELAY_REQUESTS_PER_MINUTE"))?,
            };
            targets.insert(
                DEFAULT_ALIAS.to_owned(),
                target(DEFAULT_ALIAS, spec, "RELAY_ROLE_ARN")?,
            );
        }
        if get("RELAY_ROLE_ARN").is_none() && get("RELAY_REQUESTS_PER_MINUTE").is_some() {
            return Err(ConfigError::Invalid {
                var: "RELAY_REQUESTS_PER_MINUTE",
                reason: "it states the quota of the target RELAY_ROLE_ARN defines, and RELAY_ROLE_ARN is unset; with RELAY_TARGETS, state \"requests_per_minute\" in each entry".into(),
            });
        }
        if targets.is_empty() {
            return Err(ConfigError::Missing {
                var: "RELAY_ROLE_ARN",
                hint: "set it to RoleA's ARN in the model account (e.g. arn:aws:iam::111111111111:role/BedrockRelayTarget), or define several targets in RELAY_TARGETS",
            });
        }
        if let Some(raw) = get("RELAY_ALLOWED_MODELS") {
            apply_allowlist(&raw, &mut targets)?;
        }

        let destination = get("RELAY_DESTINATION").ok_or(ConfigError::Missing {
            var: "RELAY_DESTINATION",
            hint: "set it to where records go, e.g. s3://my-bucket/bedrock-relay/ (or an SQS queue, SNS topic, EventBridge bus or DynamoDB table ARN)",
        })?;
        let destination =
            DestinationSpec::parse(&destination).map_err(|err| ConfigError::Invalid {
                var: "RELAY_DESTINATION",
                reason: err.to_string(),
            })?;
        let allowed_destinations = patterns(get("RELAY_ALLOWED_DESTINATIONS"));
        let idempotency_table = parse_optional(
            get("RELAY_IDEMPOTENCY_TABLE"),
            "RELAY_IDEMPOTENCY_TABLE",
            dynamodb::Table::from_name_or_arn,
        )?;
        let rate_table = parse_optional(
            get("RELAY_RATE_TABLE"),
            "RELAY_RATE_TABLE",
            dynamodb::Table::from_name_or_arn,
        )?;
        let spill = parse_optional(get("RELAY_SPILL_S3"), "RELAY_SPILL_S3", S3Location::parse)?;

        let batch_jobs = batch_jobs::batch_jobs(&get, &targets, batch_roles)?;
        let fan_out = fan_out(&get)?;
        if let (Some(fan_out), DestinationSpec::S3(results)) = (&fan_out, &destination) {
            check_store_apart(&fan_out.store, results)?;
        }
        if batch_jobs.staging.is_some() && fan_out.is_none() {
            return Err(ConfigError::Invalid {
                var: "RELAY_BATCH_STAGING",
                reason: "batch jobs keep their state in RELAY_WORK_STORE and run what Bedrock did not answer through RELAY_WORK_QUEUE; set both".into(),
            });
        }
        let mut own = own_prefixes(&destination, &allowed_destinations, spill.as_ref());
        if let Some(fan_out) = &fan_out {
            own.push(format!(
                "s3://{}/{}",
                fan_out.store.bucket, fan_out.store.prefix
            ));
        }
        own.extend(batch_jobs.staging_uri());
        let sources = SourcePolicy::new(&patterns(get("RELAY_ALLOWED_SOURCES")), &own);
        let event_bus = parse_optional(
            get("RELAY_EVENT_BUS"),
            "RELAY_EVENT_BUS",
            crate::destination::eventbridge::Bus::parse,
        )?;
        let id_prefix = get("RELAY_ID_PREFIX").map(|p| p.trim().to_owned());
        let bucket_owner = get("RELAY_BUCKET_OWNER").map(|o| o.trim().to_owned());
        if let Some(owner) = &bucket_owner {
            if owner.len() != 12 || !owner.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ConfigError::Invalid {
                    var: "RELAY_BUCKET_OWNER",
                    reason: format!("`{owner}` is not a 12-digit account id"),
                });
            }
        }
        if let Some(prefix) = id_prefix.as_deref() {
            check_id_prefix(prefix).map_err(|reason| ConfigError::Invalid {
                var: "RELAY_ID_PREFIX",
                reason,
            })?;
        }

        let default_model = get("RELAY_DEFAULT_MODEL").map(|m| m.trim().to_owned());
        if let Some(model) = &default_model {
            crate::domain::job::check_model_id(model).map_err(|reason| ConfigError::Invalid {
                var: "RELAY_DEFAULT_MODEL",
                reason,
            })?;
        }

        let features = features::feature_defaults(&get)?;
        let default_job = match get("RELAY_DEFAULT_JOB") {
            None => None,
            Some(raw) => {
                let job = Job::from_json(&raw).map_err(ConfigError::DefaultJob)?;
                // Check now what can be checked without an event: shape and limits.
                // A templated id is checked once rendered, per event.
                let mut probe = job.clone();
                if probe
                    .id
                    .as_deref()
                    .is_some_and(crate::template::is_template)
                {
                    probe.id = None;
                }
                probe
                    .resolve_with(
                        &crate::domain::job::Defaults {
                            model: default_model.as_deref(),
                            features: &features,
                        },
                        "default",
                    )
                    .map_err(ConfigError::DefaultJob)?;
                Some(job)
            }
        };

        Ok(Self {
            targets: Targets::new(targets),
            function_name,
            destination,
            allowed_destinations,
            idempotency_table,
            rate_table,
            spill,
            max_concurrency: parse_number(
                get("RELAY_MAX_CONCURRENCY"),
                "RELAY_MAX_CONCURRENCY",
                1..=64,
                4,
            )? as usize,
            max_items: parse_number(
                get("RELAY_MAX_ITEMS"),
                "RELAY_MAX_ITEMS",
                1..=MAX_ITEMS_CEILING,
                10_000,
            )? as usize,
            s3_force_path_style: parse_bool(
                get("RELAY_S3_FORCE_PATH_STYLE"),
                "RELAY_S3_FORCE_PATH_STYLE",
            )? || get("AWS_ENDPOINT_URL_S3")
                .or_else(|| get("AWS_ENDPOINT_URL"))
                .is_some_and(|url| endpoint_needs_path_style(&url)),
            default_model,
            default_job,
            max_attempts: parse_number(get("RELAY_MAX_ATTEMPTS"), "RELAY_MAX_ATTEMPTS", 1..=20, 5)?,
            deadline_reserve: Duration::from_millis(parse_number(
                get("RELAY_DEADLINE_RESERVE_MS"),
                "RELAY_DEADLINE_RESERVE_MS",
                100..=60_000,
                2_000,
            )?),
            max_event_bytes: parse_number(
                get("RELAY_MAX_EVENT_BYTES"),
                "RELAY_MAX_EVENT_BYTES",
                1024..=6 * 1024 * 1024,
                DEFAULT_MAX_EVENT_BYTES as u64,
            )? as usize,
            log_content: parse_bool(get("RELAY_LOG_CONTENT"), "RELAY_LOG_CONTENT")?,
            metrics_namespace: get("RELAY_METRICS_NAMESPACE")
                .unwrap_or_else(|| crate::observe::metrics::DEFAULT_NAMESPACE.into()),
            sources,
            id_prefix,
            fan_out,
            event_bus,
            batch_jobs,
            features,
            bucket_owner,
            memory_mb: get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
                .and_then(|m| m.trim().parse::<u64>().ok())
                .filter(|m| *m >= 128)
                .unwrap_or(1024),
            tls_roots: match get("RELAY_TLS_ROOTS") {
                None => crate::aws::tls::TlsRoots::default(),
                Some(value) => {
                    crate::aws::tls::TlsRoots::parse(&value).ok_or_else(|| ConfigError::Invalid {
                        var: "RELAY_TLS_ROOTS",
                        reason: format!(
                            "`{value}` is not `amazon` (only Amazon Trust Services roots) or `system` (the OS trust store)"
                        ),
                    })?
                }
            },
        })
    }
}

impl Config {
    /// What a job that does not say is given: the default model and the
    /// model-feature defaults.
    pub fn job_defaults(&self) -> crate::domain::job::Defaults<'_> {
        crate::domain::job::Defaults {
            model: self.default_model.as_deref(),
            features: &self.features,
        }
    }

    /// The destination clients this configuration asks for: path-style S3
    /// when set, the spill location, the expected owner of the relay's
    /// buckets.
    pub fn destinations(&self, base: &aws_config::SdkConfig) -> crate::destination::Destinations {
        crate::destination::Destinations::new(base, self.s3_force_path_style, self.spill.clone())
            .with_bucket_owner(self.bucket_owner.clone())
    }

    /// The bytes of documents one job may hold when `at_once` jobs (batch
    /// items) load theirs at the same time: a quarter of the function's
    /// memory, shared between them, so documents cannot push the process out
    /// of memory.
    pub fn document_budget(&self, at_once: usize) -> u64 {
        let quarter = self.memory_mb.saturating_mul(1024 * 1024) / 4;
        quarter / u64::try_from(at_once.max(1)).unwrap_or(u64::MAX)
    }

    /// The destination for a job: its own `destination` (already rendered) if it
    /// matches `RELAY_ALLOWED_DESTINATIONS`, else the configured one.
    pub fn destination_for(
        &self,
        requested: Option<&str>,
    ) -> Result<DestinationSpec, DestinationError> {
        let Some(requested) = requested else {
            return Ok(self.destination.clone());
        };
        let spec = DestinationSpec::parse(requested)?;
        if spec == self.destination {
            return Ok(spec);
        }
        let text = spec.to_string();
        let allowed = self.allowed_destinations.iter().any(|pattern| {
            let pattern = wildmatch::WildMatch::new(pattern);
            pattern.matches(&text) || pattern.matches(requested.trim())
        });
        if allowed {
            Ok(spec)
        } else {
            Err(DestinationError::NotAllowed {
                destination: text,
                allowed: if self.allowed_destinations.is_empty() {
                    "none".into()
                } else {
                    self.allowed_destinations.join(", ")
                },
            })
        }
    }
}

/// A comma- or newline-separated list of patterns.
fn patterns(raw: Option<String>) -> Vec<String> {
    raw.map(|raw| {
        raw.split([',', '\n'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

/// Where the relay writes in S3, so never a source: the results prefix, every
/// S3 destination a job may choose, and the spill location.
fn own_prefixes(
    destination: &DestinationSpec,
    allowed_destinations: &[String],
    spill: Option<&S3Location>,
) -> Vec<String> {
    let mut own = Vec::new();
    if let DestinationSpec::S3(_) = destination {
        own.push(destination.to_string());
    }
    own.extend(
        allowed_destinations
            .iter()
            .filter(|p| p.starts_with("s3://"))
            .cloned(),
    );
    if let Some(spill) = spill {
        own.push(format!("s3://{}/{}", spill.bucket, spill.prefix));
    }
    own
}

/// `RELAY_ID_PREFIX` is a template (rendered per event) or literal text that
/// keeps to a job id's characters.
fn check_id_prefix(prefix: &str) -> Result<(), String> {
    if crate::template::is_template(prefix) {
        return Ok(());
    }
    let probe = format!("{prefix}x");
    crate::domain::job::check_job_id(&probe)
        .map_err(|reason| format!("a prefix for job ids must make a valid id: {reason}"))
}

/// Virtual-hosted S3 addressing puts the bucket in the host name, which cannot
/// work for an endpoint on `localhost` or an IP address (local emulators).
fn endpoint_needs_path_style(url: &str) -> bool {
    let authority = url.split("://").nth(1).unwrap_or(url);
    let host_port = authority.split('/').next().unwrap_or_default();
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host_port
            .rsplit_once(':')
            .map_or(host_port, |(host, _)| host)
    };
    host == "localhost" || host.ends_with(".localhost") || host.parse::<std::net::IpAddr>().is_ok()
}

/// `raw` (a variable that may be unset) parsed by `parse`; a value it
/// refuses is an error naming `var`.
pub(super) fn parse_optional<T>(
    raw: Option<String>,
    var: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    raw.map(|raw| parse(raw.trim()))
        .transpose()
        .map_err(|reason| ConfigError::Invalid { var, reason })
}

fn parse_bool(raw: Option<String>, var: &'static str) -> Result<bool, ConfigError> {
    match raw.as_deref().map(str::trim) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
        Some(v) => Err(ConfigError::Invalid {
            var,
            reason: format!("`{v}` is not a boolean; use true or false"),
        }),
    }
}

fn parse_number<T>(
    raw: Option<String>,
    var: &'static str,
    range: std::ops::RangeInclusive<T>,
    default: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(raw) = raw else { return Ok(default) };
    match raw.trim().parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ConfigError::Invalid {
            var,
            reason: format!(
                "`{raw}` is not a number from {} to {}",
                range.start(),
                range.end()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A lookup with the required settings and `pairs` (which win).
    pub(super) fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let mut map: HashMap<String, String> = [
            ("AWS_LAMBDA_FUNCTION_NAME", "relay-fn"),
            ("AWS_REGION", "eu-west-1"),
            ("RELAY_ROLE_ARN", "arn:aws:iam::111111111111:role/RoleA"),
            ("RELAY_DESTINATION", "s3://results-bucket/relay/"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in pairs {
            map.insert(k.to_string(), v.to_string());
        }
        move |name| map.get(name).cloned()
    }

    fn only(config: &Config) -> &Target {
        config.targets.iter().next().expect("a target")
    }

    fn error_of(pairs: &[(&str, &str)]) -> String {
        Config::from_lookup(env(pairs))
            .expect_err("config should be refused")
            .to_string()
    }

    #[test]
    fn minimal_config_takes_documented_defaults() {
        let config = Config::from_lookup(env(&[])).expect("valid");
        assert_eq!(only(&config).role.account, "111111111111");
        assert_eq!(
            only(&config).region,
            "eu-west-1",
            "Bedrock region defaults to the function's"
        );
        assert_eq!(only(&config).session_duration, Duration::from_secs(3600));
        assert_eq!(only(&config).session_name, "bedrock-relay-relay-fn");
        assert_eq!(only(&config).source_identity, "relay-fn");
        let DestinationSpec::S3(location) = &config.destination else {
            panic!("an S3 destination, got {}", config.destination)
        };
        assert_eq!(location.bucket, "results-bucket");
        assert_eq!(location.prefix, "relay/");
        assert!(config.default_job.is_none());
        assert!(!config.log_content);
    }

    #[test]
    fn session_duration_outside_chained_limits_is_refused_with_the_reason() {
        for bad in ["7200", "600", "3601"] {
            let msg = error_of(&[("RELAY_SESSION_DURATION", bad)]);
            assert!(
                msg.starts_with("RELAY_SESSION_DURATION is invalid"),
                "{msg}"
            );
            assert!(msg.contains("chains into RoleA"), "{msg}");
        }
        let msg = error_of(&[("RELAY_SESSION_DURATION", "an hour")]);
        assert!(msg.contains("not a whole number"), "{msg}");
        let ok =
            Config::from_lookup(env(&[("RELAY_SESSION_DURATION", "900")])).expect("900 is allowed");
        assert_eq!(only(&ok).session_duration, Duration::from_secs(900));
    }

    #[test]
    fn each_bad_variable_is_named() {
        assert!(error_of(&[("RELAY_ROLE_ARN", "")]).starts_with("RELAY_ROLE_ARN is not set"));
        assert!(error_of(&[("RELAY_ROLE_ARN", "")]).contains("RELAY_TARGETS"));
        assert!(
            error_of(&[("RELAY_ROLE_ARN", "arn:aws:iam::1111:role/RoleA")])
                .starts_with("RELAY_ROLE_ARN is invalid")
        );
        assert!(
            error_of(&[("RELAY_ROLE_ARN", "arn:aws:iam::111111111111:user/bob")])
                .starts_with("RELAY_ROLE_ARN is invalid")
        );
        assert!(error_of(&[("RELAY_DESTINATION", "")]).starts_with("RELAY_DESTINATION is not set"));
        assert!(error_of(&[("RELAY_DESTINATION", "https://bucket/x")])
            .starts_with("RELAY_DESTINATION is invalid"));
        assert!(error_of(&[("RELAY_EXTERNAL_ID", "has spaces in it")])
            .starts_with("RELAY_EXTERNAL_ID is invalid"));
        assert!(error_of(&[("RELAY_DEFAULT_MODEL", "two words")])
            .starts_with("RELAY_DEFAULT_MODEL is invalid"));
        assert!(
            error_of(&[("RELAY_MAX_ATTEMPTS", "0")]).starts_with("RELAY_MAX_ATTEMPTS is invalid")
        );
        assert!(error_of(&[("RELAY_LOG_CONTENT", "yes please")])
            .starts_with("RELAY_LOG_CONTENT is invalid"));
        assert!(
            error_of(&[("AWS_REGION", ""), ("RELAY_BEDROCK_REGION", "")])
                .starts_with("RELAY_BEDROCK_REGION is not set")
        );
    }

    #[test]
    fn default_job_is_validated_at_init_naming_the_field() {
        let msg = error_of(&[("RELAY_DEFAULT_JOB", r#"{"prompt": "hi", "modle": "x"}"#)]);
        assert!(
            msg.starts_with("RELAY_DEFAULT_JOB is not a valid job"),
            "{msg}"
        );
        assert!(msg.contains("modle"), "{msg}");
        let msg = error_of(&[("RELAY_DEFAULT_JOB", r#"{"prompt": "#)]);
        assert!(msg.contains("not valid JSON"), "{msg}");
        let msg = error_of(&[("RELAY_DEFAULT_JOB", r#"{"prompt": "hi"}"#)]);
        assert!(
            msg.contains("RELAY_DEFAULT_MODEL"),
            "a job with no model and no default model is refused: {msg}"
        );
        let ok = Config::from_lookup(env(&[
            ("RELAY_DEFAULT_JOB", r#"{"prompt": "hi"}"#),
            ("RELAY_DEFAULT_MODEL", "amazon.nova-micro-v1:0"),
        ]))
        .expect("valid default job");
        assert!(ok.default_job.is_some());
    }

    /// Fan-out needs both a work queue and a store; each alone is refused
    /// naming the other, a FIFO queue is refused, and the store is never a
    /// source a job may read.
    #[test]
    fn fan_out_needs_a_standard_queue_and_a_store() {
        let queue = (
            "RELAY_WORK_QUEUE",
            "https://sqs.eu-west-1.amazonaws.com/222222222222/work",
        );
        let store = ("RELAY_WORK_STORE", "s3://results-bucket/relay/_batches/");
        assert!(Config::from_lookup(env(&[]))
            .expect("valid")
            .fan_out
            .is_none());
        let config = Config::from_lookup(env(&[queue, store])).expect("valid");
        let fan_out = config.fan_out.as_ref().expect("fans out");
        assert_eq!((fan_out.chunk_items, fan_out.retry_after_secs), (500, 30));
        assert_eq!(fan_out.queue.arn, "arn:aws:sqs:eu-west-1:222222222222:work");
        assert!(config
            .sources
            .check(
                "items_from",
                "s3://results-bucket/relay/_batches/b/items.jsonl"
            )
            .is_err());
        assert!(error_of(&[queue]).starts_with("RELAY_WORK_STORE is not set"));
        assert!(error_of(&[store]).starts_with("RELAY_WORK_QUEUE is not set"));
        let fifo = (
            "RELAY_WORK_QUEUE",
            "https://sqs.eu-west-1.amazonaws.com/222222222222/work.fifo",
        );
        assert!(error_of(&[fifo, store]).contains("is a FIFO queue"));
        assert!(error_of(&[queue, store, ("RELAY_CHUNK_ITEMS", "0")])
            .starts_with("RELAY_CHUNK_ITEMS is invalid"));
        assert!(error_of(&[("RELAY_EVENT_BUS", "relay-done")])
            .starts_with("RELAY_EVENT_BUS is invalid"));
        assert!(
            error_of(&[("RELAY_MAX_ITEMS", "1000001")]).starts_with("RELAY_MAX_ITEMS is invalid")
        );
        for overlapping in [
            "s3://results-bucket/relay/",
            "s3://results-bucket/relay/batches/",
            "s3://results-bucket/",
        ] {
            let msg = error_of(&[queue, ("RELAY_WORK_STORE", overlapping)]);
            assert!(
                msg.contains("overlaps RELAY_DESTINATION"),
                "{overlapping}: {msg}"
            );
        }
        assert!(
            Config::from_lookup(env(&[queue, ("RELAY_WORK_STORE", "s3://other/relay/")])).is_ok()
        );
        let big = Config::from_lookup(env(&[("RELAY_MAX_ITEMS", "1000000")])).expect("valid");
        assert_eq!(big.max_items, 1_000_000);
    }

    #[test]
    fn a_bedrock_bearer_token_is_refused_loudly() {
        let msg = error_of(&[("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-abc")]);
        assert!(
            msg.starts_with("AWS_BEARER_TOKEN_BEDROCK is invalid"),
            "{msg}"
        );
        assert!(msg.contains("bypass RoleA"), "{msg}");
        assert!(
            !msg.contains("bedrock-api-key-abc"),
            "the token itself is never echoed"
        );
    }

    #[test]
    fn relay_targets_defines_several_accounts_beside_the_shorthand() {
        let targets = r#"{
            "research": {"role_arn": "arn:aws:iam::333333333333:role/RoleA", "region": "us-west-2", "external_id": "ext-r", "session_duration": 900},
            "eu": {"role_arn": "arn:aws:iam::444444444444:role/RoleA"}
        }"#;
        let config = Config::from_lookup(env(&[("RELAY_TARGETS", targets)])).expect("valid");
        let aliases: Vec<&str> = config.targets.iter().map(|t| t.alias.as_str()).collect();
        assert_eq!(aliases, vec!["default", "eu", "research"]);
        let research = config
            .targets
            .select(Some("research"), "m")
            .expect("research");
        assert_eq!(research.role.account, "333333333333");
        assert_eq!(research.region, "us-west-2");
        assert_eq!(research.external_id.as_deref(), Some("ext-r"));
        assert_eq!(research.session_duration, Duration::from_secs(900));
        let eu = config.targets.select(Some("eu"), "m").expect("eu");
        assert_eq!(eu.region, "eu-west-1", "region defaults to the function's");

        let only_targets =
            Config::from_lookup(env(&[("RELAY_ROLE_ARN", ""), ("RELAY_TARGETS", targets)]))
                .expect("valid");
        assert_eq!(only_targets.targets.iter().count(), 2);

        let msg = error_of(&[(
            "RELAY_TARGETS",
            r#"{"x": {"role_arn": "arn:aws:iam::333333333333:role/R", "duration": 5}}"#,
        )]);
        assert!(
            msg.starts_with("RELAY_TARGETS is invalid") && msg.contains("unknown field `duration`"),
            "{msg}"
        );
        let msg = error_of(&[(
            "RELAY_TARGETS",
            r#"{"x": {"role_arn": "arn:aws:iam::333333333333:role/R", "session_duration": 7200}}"#,
        )]);
        assert!(
            msg.contains("target `x`") && msg.contains("chains into RoleA"),
            "{msg}"
        );
        let msg = error_of(&[(
            "RELAY_TARGETS",
            r#"{"default": {"role_arn": "arn:aws:iam::333333333333:role/R"}}"#,
        )]);
        assert!(msg.starts_with("RELAY_ROLE_ARN is invalid"), "{msg}");
        let msg = error_of(&[(
            "RELAY_TARGETS",
            r#"{"bad alias": {"role_arn": "arn:aws:iam::333333333333:role/R"}}"#,
        )]);
        assert!(msg.contains("alias `bad alias`"), "{msg}");
    }

    /// Documents get a quarter of the function's memory, shared by the
    /// batch items that run at once.
    #[test]
    fn the_document_budget_follows_the_functions_memory() {
        let config =
            Config::from_lookup(env(&[("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")])).expect("valid");
        assert_eq!(config.document_budget(1), 64 * 1024 * 1024);
        assert_eq!(config.document_budget(4), 16 * 1024 * 1024);
        assert_eq!(config.document_budget(0), 64 * 1024 * 1024);
    }

    /// A per-target allowlist that names only some targets and has no `*`
    /// entry denies the others every model, rather than allowing them all.
    #[test]
    fn a_target_the_allowlist_does_not_mention_may_call_nothing() {
        let targets = r#"{"research": {"role_arn": "arn:aws:iam::333333333333:role/RoleA"}}"#;
        let config = Config::from_lookup(env(&[
            ("RELAY_TARGETS", targets),
            ("RELAY_ALLOWED_MODELS", r#"{"research": ["anthropic.*"]}"#),
        ]))
        .expect("valid");
        assert!(config
            .targets
            .select(Some("research"), "anthropic.claude-v2")
            .is_ok());
        let err = config
            .targets
            .select(None, "amazon.nova-lite-v1:0")
            .expect_err("default is not mentioned");
        assert_eq!(err.code(), "ModelNotAllowed");
        assert!(
            err.to_string().contains("does not name this target"),
            "{err}"
        );
    }

    #[test]
    fn allowed_models_apply_to_all_targets_or_per_alias() {
        let config = Config::from_lookup(env(&[(
            "RELAY_ALLOWED_MODELS",
            "amazon.nova-*, anthropic.claude-3-haiku-*",
        )]))
        .expect("valid");
        assert!(config.targets.select(None, "amazon.nova-lite-v1:0").is_ok());
        assert!(config
            .targets
            .select(None, "meta.llama3-8b-instruct-v1:0")
            .is_err());

        let targets = r#"{"research": {"role_arn": "arn:aws:iam::333333333333:role/RoleA"}}"#;
        let allowed = r#"{"*": ["amazon.nova-micro-v1:0"], "research": ["anthropic.*"]}"#;
        let config = Config::from_lookup(env(&[
            ("RELAY_TARGETS", targets),
            ("RELAY_ALLOWED_MODELS", allowed),
        ]))
        .expect("valid");
        assert!(config
            .targets
            .select(Some("research"), "anthropic.claude-v2")
            .is_ok());
        assert!(
            config
                .targets
                .select(Some("research"), "amazon.nova-micro-v1:0")
                .is_ok(),
            "`*` applies too"
        );
        assert!(
            config.targets.select(None, "anthropic.claude-v2").is_err(),
            "only research may use anthropic"
        );

        let msg = error_of(&[("RELAY_ALLOWED_MODELS", r#"{"nope": ["x"]}"#)]);
        assert!(
            msg.starts_with("RELAY_ALLOWED_MODELS is invalid") && msg.contains("`nope`"),
            "{msg}"
        );
    }

    #[test]
    fn local_s3_endpoints_get_path_style() {
        for local in [
            "http://localhost:4566",
            "http://127.0.0.1:5000",
            "http://[::1]:9000/",
            "http://s3.localhost:80",
        ] {
            assert!(endpoint_needs_path_style(local), "{local}");
            let config = Config::from_lookup(env(&[("AWS_ENDPOINT_URL", local)])).expect("valid");
            assert!(config.s3_force_path_style, "{local}");
        }
        assert!(!endpoint_needs_path_style(
            "https://s3.eu-west-1.amazonaws.com"
        ));
        assert!(
            !Config::from_lookup(env(&[]))
                .expect("valid")
                .s3_force_path_style
        );
    }

    #[test]
    fn session_names_fit_sts_alphabet_and_length() {
        assert_eq!(sts_name("my fn/with:odd*chars"), "my-fn-with-odd-chars");
        assert_eq!(sts_name(&"x".repeat(100)).len(), 64);
        assert_eq!(sts_name("a"), "a-");
    }
}
