//! The parts of the model accounts' settings (`RELAY_TARGETS`,
//! `RELAY_ALLOWED_MODELS`, session names and durations) checked on their own.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, MAX_CHAINED_SESSION_SECS, MIN_SESSION_SECS};
use crate::domain::target::Target;

/// One entry of `RELAY_TARGETS`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetSpec {
    pub(super) role_arn: String,
    pub(super) region: Option<String>,
    pub(super) external_id: Option<String>,
    pub(super) session_duration: Option<u64>,
    /// The batch service role in the target's account (`RELAY_BATCH_ROLE_ARN`
    /// for this target alone); read by `batch_jobs.rs`.
    pub(super) batch_role_arn: Option<String>,
}

/// STS: 2-1224 characters of `[\w+=,.@:/-]`.
pub(super) fn check_external_id(id: &str) -> Result<(), String> {
    let ok = (2..=1224).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c));
    if ok {
        Ok(())
    } else {
        Err("an ExternalId is 2-1224 characters of letters, digits and _+=,.@:/-".into())
    }
}

pub(super) fn check_session_duration(secs: u64) -> Result<Duration, String> {
    if (MIN_SESSION_SECS..=MAX_CHAINED_SESSION_SECS).contains(&secs) {
        Ok(Duration::from_secs(secs))
    } else {
        Err(format!(
            "{secs} is outside {MIN_SESSION_SECS}-{MAX_CHAINED_SESSION_SECS} seconds: the Lambda execution role \
             chains into RoleA, and STS refuses chained sessions longer than one hour or shorter than 15 minutes"
        ))
    }
}

/// `RELAY_ALLOWED_MODELS`: comma-separated patterns for every target, or a
/// JSON object of alias → patterns, where `*` applies to every target.
pub(super) fn apply_allowlist(
    raw: &str,
    targets: &mut BTreeMap<String, Target>,
) -> Result<(), ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        var: "RELAY_ALLOWED_MODELS",
        reason,
    };
    let by_alias: BTreeMap<String, Vec<String>> = if raw.trim_start().starts_with('{') {
        serde_json::from_str(raw).map_err(|e| {
            invalid(format!(
                "{e}; expected {{\"alias\": [\"model-or-pattern\", ...], \"*\": [...]}}"
            ))
        })?
    } else {
        let all: Vec<String> = raw
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        [("*".to_owned(), all)].into_iter().collect()
    };
    for (alias, patterns) in &by_alias {
        if patterns.is_empty() {
            return Err(invalid(format!(
                "`{alias}` has an empty list; it would allow no model"
            )));
        }
        if alias != "*" && !targets.contains_key(alias) {
            return Err(invalid(format!("`{alias}` is not a configured target")));
        }
    }
    // Once an allowlist is set, it is the whole rule: a target it does not
    // mention, with no `*` entry, may call nothing (failing closed).
    for (alias, target) in targets.iter_mut() {
        let mut patterns: Vec<String> = by_alias.get("*").cloned().unwrap_or_default();
        patterns.extend(by_alias.get(alias).cloned().unwrap_or_default());
        target.allowed_models = Some(patterns);
    }
    Ok(())
}

/// Makes `raw` fit STS's `RoleSessionName`/`SourceIdentity` alphabet
/// (`[\w+=,.@-]`, at most 64 characters) by replacing anything else with `-`.
pub(super) fn sts_name(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    while name.len() < 2 {
        name.push('-');
    }
    name
}
