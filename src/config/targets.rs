//! The parts of the model accounts' settings (`RELAY_TARGETS`,
//! `RELAY_ALLOWED_MODELS`, session names and durations) checked on their own.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, MAX_CHAINED_SESSION_SECS, MIN_SESSION_SECS};
use crate::domain::target::{StatedQuota, Target};

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
    /// The account's stated quota (see [`stated_quota`]).
    pub(super) requests_per_minute: Option<RequestsPerMinute>,
}

/// `requests_per_minute`: one number for every model, or model id (or `*`)
/// → number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RequestsPerMinute {
    Every(u64),
    ByModel(BTreeMap<String, u64>),
}

/// The most requests per minute a target may state: far above any Bedrock
/// on-demand quota, low enough that the send gap stays above a microsecond.
const MAX_REQUESTS_PER_MINUTE: u64 = 10_000_000;

/// `RELAY_REQUESTS_PER_MINUTE`, the `requests_per_minute` of the target
/// `RELAY_ROLE_ARN` defines: a number, or a JSON object as in `RELAY_TARGETS`.
pub(super) fn requests_per_minute(
    raw: Option<String>,
) -> Result<Option<RequestsPerMinute>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let invalid = |reason| ConfigError::Invalid {
        var: "RELAY_REQUESTS_PER_MINUTE",
        reason,
    };
    let parsed: RequestsPerMinute = serde_json::from_str(raw.trim()).map_err(|_| {
        invalid(format!(
            "`{raw}` is neither a number nor a JSON object of model id → requests per minute; \
             use the account's quota, e.g. 6000 or {{\"amazon.nova-lite-v1:0\": 6000}}"
        ))
    })?;
    // Checked here too, so an error names this variable, not RELAY_ROLE_ARN.
    stated_quota(Some(parsed.clone())).map_err(invalid)?;
    Ok(Some(parsed))
}

/// A target's `requests_per_minute`, checked: each value 1 to
/// [`MAX_REQUESTS_PER_MINUTE`], each key a model id or `*`.
pub(super) fn stated_quota(spec: Option<RequestsPerMinute>) -> Result<StatedQuota, String> {
    let by_model = match spec {
        None => BTreeMap::new(),
        Some(RequestsPerMinute::Every(n)) => [(StatedQuota::EVERY_MODEL.to_owned(), n)].into(),
        Some(RequestsPerMinute::ByModel(by_model)) => by_model,
    };
    let mut checked = BTreeMap::new();
    for (model, n) in by_model {
        if model.trim().is_empty() {
            return Err("requests_per_minute has an empty model id; use a model id or `*`".into());
        }
        let n = u32::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_REQUESTS_PER_MINUTE).contains(&u64::from(*n)))
            .ok_or_else(|| {
                format!(
                    "requests_per_minute for `{model}` is {n}; use the account's quota from Service Quotas \
                     (\"On-demand model inference requests per minute\"), 1-{MAX_REQUESTS_PER_MINUTE}"
                )
            })?;
        checked.insert(model, n);
    }
    Ok(StatedQuota::new(checked))
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

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::super::Config;

    fn quota_of(pairs: &[(&str, &str)], model: &str) -> Option<u32> {
        let config = Config::from_lookup(env(pairs)).expect("config");
        let target = config.targets.iter().next().expect("a target");
        target.quota.requests_per_minute(model)
    }

    /// `requests_per_minute` is one number for every model or a value per
    /// model, with `*` for the rest; `RELAY_REQUESTS_PER_MINUTE` says the
    /// same for the target `RELAY_ROLE_ARN` defines.
    #[test]
    fn a_target_states_its_quota_for_every_model_or_per_model() {
        let targets = r#"{"a": {"role_arn": "arn:aws:iam::111111111111:role/RoleA",
            "requests_per_minute": {"amazon.nova-lite-v1:0": 2000, "*": 500}}}"#;
        let config = Config::from_lookup(env(&[("RELAY_TARGETS", targets)])).expect("config");
        let stated = |model| {
            config
                .targets
                .get("a")
                .expect("a")
                .quota
                .requests_per_minute(model)
        };
        assert_eq!(stated("amazon.nova-lite-v1:0"), Some(2000));
        assert_eq!(stated("amazon.nova-pro-v1:0"), Some(500));

        assert_eq!(
            quota_of(&[("RELAY_REQUESTS_PER_MINUTE", "6000")], "any"),
            Some(6000)
        );
        assert_eq!(
            quota_of(&[("RELAY_REQUESTS_PER_MINUTE", r#"{"m": 60}"#)], "m"),
            Some(60)
        );
        assert_eq!(quota_of(&[], "m"), None);
    }

    /// Zero, a fraction or a word is refused with what to put there.
    #[test]
    fn a_quota_that_is_not_a_positive_whole_number_is_refused() {
        for raw in ["0", "12.5", "\"fast\"", r#"{"m": 0}"#, r#"{"": 10}"#] {
            let err = Config::from_lookup(env(&[("RELAY_REQUESTS_PER_MINUTE", raw)]))
                .expect_err(raw)
                .to_string();
            assert!(err.contains("RELAY_REQUESTS_PER_MINUTE"), "{raw}: {err}");
            assert!(
                err.contains("requests per minute") || err.contains("requests_per_minute"),
                "{raw}: {err}"
            );
        }
        let lookup = env(&[
            (
                "RELAY_TARGETS",
                r#"{"a": {"role_arn": "arn:aws:iam::111111111111:role/RoleA"}}"#,
            ),
            ("RELAY_REQUESTS_PER_MINUTE", "6000"),
        ]);
        let err = Config::from_lookup(move |name: &str| {
            (name != "RELAY_ROLE_ARN").then(|| lookup(name)).flatten()
        })
        .expect_err("no RELAY_ROLE_ARN target to state it for")
        .to_string();
        assert!(err.contains("in each entry"), "{err}");
        let err = Config::from_lookup(env(&[("RELAY_RATE_TABLE", "arn:aws:s3:::bucket")]))
            .expect_err("not a table")
            .to_string();
        assert!(err.contains("RELAY_RATE_TABLE"), "{err}");
    }
}
