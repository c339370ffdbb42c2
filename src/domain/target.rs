//! Targets: the model accounts the relay may call, each a named alias for a
//! role (RoleA) with its region, ExternalId, session length and model
//! allowlist.
//!
//! A job chooses a target by alias only. A role ARN never comes from an event:
//! anyone who can put an event on the bus must not be able to pick the role
//! the function assumes. Everything here is checked before any STS or Bedrock
//! call.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

/// The alias `RELAY_ROLE_ARN` defines.
pub const DEFAULT_ALIAS: &str = "default";

/// An IAM role ARN, split into the parts the relay reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleArn {
    /// The full ARN, as STS takes it.
    pub arn: String,
    /// The 12-digit account that owns the role (account A).
    pub account: String,
}

impl RoleArn {
    /// Parses `arn:<partition>:iam::<account>:role/<path/>name`.
    pub fn parse(arn: &str) -> Result<Self, String> {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let well_formed = parts.len() == 6
            && parts[0] == "arn"
            && !parts[1].is_empty()
            && parts[2] == "iam"
            && parts[3].is_empty()
            && parts[4].len() == 12
            && parts[4].bytes().all(|b| b.is_ascii_digit())
            && parts[5].starts_with("role/")
            && parts[5].len() > "role/".len();
        if !well_formed {
            return Err(format!(
                "`{arn}` is not an IAM role ARN; expected arn:aws:iam::<12-digit account>:role/<name>"
            ));
        }
        Ok(Self {
            arn: arn.to_owned(),
            account: parts[4].to_owned(),
        })
    }
}

/// One model account: RoleA there, and how to assume and use it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The alias jobs use.
    pub alias: String,
    /// RoleA.
    pub role: RoleArn,
    /// The `sts:ExternalId` RoleA's trust policy asks for, if any.
    pub external_id: Option<String>,
    /// The region Bedrock is called in.
    pub region: String,
    /// How long each assumed session lasts (900–3600 s).
    pub session_duration: Duration,
    /// The `RoleSessionName`: shows as `assumed-role/RoleA/<name>` in account A.
    pub session_name: String,
    /// The `SourceIdentity`: survives into every CloudTrail event account A records.
    pub source_identity: String,
    /// Model ID patterns (`*` and `?` wildcards) this target may be asked for;
    /// `None` allows any model.
    pub allowed_models: Option<Vec<String>>,
    /// The account's requests-per-minute quota per model, as the operator
    /// states it (`requests_per_minute`); batches pace to it.
    pub quota: StatedQuota,
}

/// A target's `requests_per_minute`: the Service Quotas value of "On-demand
/// model inference requests per minute" for each model, or one value for
/// every model (`*`). Bedrock's quotas are per model and account, so each
/// model's calls are paced to their own value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatedQuota {
    by_model: BTreeMap<String, u32>,
}

impl StatedQuota {
    /// The key that states a value for every model not named.
    pub const EVERY_MODEL: &'static str = "*";

    /// `by_model`: model id (or [`Self::EVERY_MODEL`]) → requests per minute.
    pub fn new(by_model: BTreeMap<String, u32>) -> Self {
        Self { by_model }
    }

    /// Whether any model's quota is stated.
    pub fn is_stated(&self) -> bool {
        !self.by_model.is_empty()
    }

    /// The stated requests per minute for `model`, if any.
    pub fn requests_per_minute(&self, model: &str) -> Option<u32> {
        self.by_model
            .get(model)
            .or_else(|| self.by_model.get(Self::EVERY_MODEL))
            .copied()
    }
}

impl Target {
    /// Whether `model` matches the allowlist.
    pub fn allows(&self, model: &str) -> bool {
        self.allowed_models.as_ref().is_none_or(|patterns| {
            patterns
                .iter()
                .any(|p| wildmatch::WildMatch::new(p).matches(model))
        })
    }

    /// What the record says about the target that served a job.
    pub fn to_record(&self) -> TargetRecord {
        TargetRecord {
            alias: self.alias.clone(),
            account: self.role.account.clone(),
            role_arn: self.role.arn.clone(),
            region: self.region.clone(),
        }
    }
}

/// Which target served a job, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetRecord {
    /// The alias.
    pub alias: String,
    /// Account A.
    pub account: String,
    /// RoleA.
    pub role_arn: String,
    /// Where Bedrock was called.
    pub region: String,
}

/// A job's target or model is not allowed. Never retryable: the job or the
/// configuration must change.
#[derive(Debug, Error)]
pub enum TargetError {
    /// The job named an ARN where an alias belongs.
    #[error("target: `{0}` is a role ARN; a job names a target alias from RELAY_TARGETS, never a role (known: {1})")]
    ArnNotAlias(String, String),
    /// No target with that alias.
    #[error("target: no target `{0}` is configured (known: {1}); add it to RELAY_TARGETS or fix the job")]
    Unknown(String, String),
    /// The job named no target and there is no default.
    #[error("target: the job names no `target` and there is no `default` target (known: {0}); name one in the job")]
    NoDefault(String),
    /// The model is outside the target's allowlist.
    #[error("model: `{model}` is not in RELAY_ALLOWED_MODELS for target `{alias}` ({allowed}); use an allowed model or extend the allowlist")]
    ModelNotAllowed {
        /// The model asked for.
        model: String,
        /// The target.
        alias: String,
        /// The allowlist, for the message.
        allowed: String,
    },
}

impl TargetError {
    /// A stable name for the record and the Lambda error type.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ArnNotAlias(..) | Self::Unknown(..) | Self::NoDefault(..) => "TargetNotAllowed",
            Self::ModelNotAllowed { .. } => "ModelNotAllowed",
        }
    }
}

/// The configured targets, by alias.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    by_alias: BTreeMap<String, Target>,
}

impl Targets {
    /// Builds the set; aliases are unique by construction of the map.
    pub fn new(by_alias: BTreeMap<String, Target>) -> Self {
        Self { by_alias }
    }

    /// Every target, in alias order.
    pub fn iter(&self) -> impl Iterator<Item = &Target> {
        self.by_alias.values()
    }

    /// The target with `alias`, if configured.
    pub fn get(&self, alias: &str) -> Option<&Target> {
        self.by_alias.get(alias)
    }

    /// The target a job runs on, and a check that it may run `model` there.
    /// `requested` is the job's `target`; without one, `default` (or the only
    /// target there is).
    pub fn select(&self, requested: Option<&str>, model: &str) -> Result<&Target, TargetError> {
        let known = || self.by_alias.keys().cloned().collect::<Vec<_>>().join(", ");
        let target = match requested {
            Some(alias) if alias.starts_with("arn:") => {
                return Err(TargetError::ArnNotAlias(alias.to_owned(), known()))
            }
            Some(alias) => self
                .by_alias
                .get(alias)
                .ok_or_else(|| TargetError::Unknown(alias.to_owned(), known()))?,
            None => match self.by_alias.get(DEFAULT_ALIAS) {
                Some(target) => target,
                None if self.by_alias.len() == 1 => self
                    .by_alias
                    .values()
                    .next()
                    .ok_or_else(|| TargetError::NoDefault(known()))?,
                None => return Err(TargetError::NoDefault(known())),
            },
        };
        if !target.allows(model) {
            return Err(TargetError::ModelNotAllowed {
                model: model.to_owned(),
                alias: target.alias.clone(),
                allowed: match target.allowed_models.as_deref().unwrap_or_default() {
                    [] => {
                        "none: the allowlist does not name this target and has no `*` entry".into()
                    }
                    patterns => patterns.join(", "),
                },
            });
        }
        Ok(target)
    }
}

impl Targets {
    /// The targets of a job: its aliases in order (duplicates dropped), or the
    /// default when it names none. Every one must exist and allow `model`.
    pub fn select_pool(
        &self,
        requested: &[String],
        model: &str,
    ) -> Result<Vec<&Target>, TargetError> {
        if requested.is_empty() {
            return Ok(vec![self.select(None, model)?]);
        }
        let mut pool: Vec<&Target> = Vec::with_capacity(requested.len());
        for alias in requested {
            let target = self.select(Some(alias), model)?;
            if !pool.iter().any(|t| t.alias == target.alias) {
                pool.push(target);
            }
        }
        Ok(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(alias: &str, account: &str, allowed: Option<&[&str]>) -> Target {
        Target {
            alias: alias.into(),
            role: RoleArn::parse(&format!("arn:aws:iam::{account}:role/RoleA")).expect("arn"),
            external_id: None,
            region: "us-east-1".into(),
            session_duration: Duration::from_secs(3600),
            session_name: "s".into(),
            source_identity: "fn".into(),
            allowed_models: allowed.map(|a| a.iter().map(|s| s.to_string()).collect()),
            quota: Default::default(),
        }
    }

    fn targets() -> Targets {
        Targets::new(
            [
                (
                    "default".to_owned(),
                    target("default", "111111111111", None),
                ),
                (
                    "research".to_owned(),
                    target(
                        "research",
                        "333333333333",
                        Some(&["anthropic.*", "us.anthropic.claude-3-?-*"]),
                    ),
                ),
            ]
            .into_iter()
            .collect(),
        )
    }

    #[test]
    fn jobs_pick_targets_by_alias_with_default_fallback() {
        let t = targets();
        assert_eq!(
            t.select(None, "amazon.nova-lite-v1:0")
                .expect("default")
                .role
                .account,
            "111111111111"
        );
        assert_eq!(
            t.select(Some("research"), "anthropic.claude-3-haiku-20240307-v1:0")
                .expect("research")
                .role
                .account,
            "333333333333"
        );
    }

    #[test]
    fn a_role_arn_or_unknown_alias_is_refused() {
        let t = targets();
        let err = t
            .select(Some("arn:aws:iam::444444444444:role/Evil"), "m")
            .expect_err("arn");
        assert_eq!(err.code(), "TargetNotAllowed");
        assert!(err.to_string().contains("never a role"), "{err}");
        let err = t.select(Some("prod"), "m").expect_err("unknown");
        assert!(err.to_string().contains("no target `prod`"), "{err}");
        assert!(err.to_string().contains("default, research"), "{err}");
    }

    #[test]
    fn allowlists_match_globs_and_name_themselves() {
        let t = targets();
        assert!(t
            .select(Some("research"), "us.anthropic.claude-3-5-sonnet")
            .is_ok());
        let err = t
            .select(Some("research"), "amazon.nova-lite-v1:0")
            .expect_err("not allowed");
        assert_eq!(err.code(), "ModelNotAllowed");
        let msg = err.to_string();
        assert!(
            msg.contains("RELAY_ALLOWED_MODELS") && msg.contains("anthropic.*"),
            "{msg}"
        );
    }

    #[test]
    fn pools_keep_order_drop_duplicates_and_check_every_member() {
        let t = targets();
        let pool = t
            .select_pool(
                &["research".into(), "default".into(), "research".into()],
                "anthropic.claude-v2",
            )
            .expect("pool");
        let aliases: Vec<&str> = pool.iter().map(|t| t.alias.as_str()).collect();
        assert_eq!(aliases, vec!["research", "default"]);
        assert_eq!(t.select_pool(&[], "m").expect("default").len(), 1);
        let err = t
            .select_pool(
                &["default".into(), "research".into()],
                "amazon.nova-lite-v1:0",
            )
            .expect_err("research refuses");
        assert_eq!(err.code(), "ModelNotAllowed");
    }

    #[test]
    fn without_default_a_single_target_serves_and_several_need_a_name() {
        let one = Targets::new(
            [("only".to_owned(), target("only", "111111111111", None))]
                .into_iter()
                .collect(),
        );
        assert_eq!(one.select(None, "m").expect("only").alias, "only");
        let two = Targets::new(
            [
                ("a".to_owned(), target("a", "111111111111", None)),
                ("b".to_owned(), target("b", "333333333333", None)),
            ]
            .into_iter()
            .collect(),
        );
        assert!(matches!(
            two.select(None, "m"),
            Err(TargetError::NoDefault(_))
        ));
    }
}
