//! The model-feature settings: the defaults a job that does not say gets
//! (`RELAY_DEFAULT_CACHE`, `RELAY_DEFAULT_SERVICE_TIER`) and the guardrails
//! jobs may name by alias (`RELAY_GUARDRAILS`, `RELAY_DEFAULT_GUARDRAIL`).

use std::collections::BTreeMap;

use super::ConfigError;
use crate::domain::features::{CacheTtl, FeatureDefaults, Guardrail, ServiceTier};

/// Reads the model-feature settings through `get`.
pub(super) fn feature_defaults(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<FeatureDefaults, ConfigError> {
    let cache = match get("RELAY_DEFAULT_CACHE") {
        None => CacheTtl::None,
        Some(raw) => CacheTtl::parse(raw.trim()).ok_or_else(|| ConfigError::Invalid {
            var: "RELAY_DEFAULT_CACHE",
            reason: format!(
                "`{raw}` is not `none`, `5m` or `1h` (the time to live of the cache points put after a job's system prompt and documents)"
            ),
        })?,
    };
    let service_tier = get("RELAY_DEFAULT_SERVICE_TIER")
        .map(|raw| {
            ServiceTier::parse(raw.trim()).ok_or_else(|| ConfigError::Invalid {
                var: "RELAY_DEFAULT_SERVICE_TIER",
                reason: format!("`{raw}` is not `default`, `flex` or `priority`"),
            })
        })
        .transpose()?;
    let guardrails = match get("RELAY_GUARDRAILS") {
        None => BTreeMap::new(),
        Some(raw) => parse_guardrails(&raw)?,
    };
    let guardrail = get("RELAY_DEFAULT_GUARDRAIL").map(|alias| alias.trim().to_owned());
    if let Some(alias) = &guardrail {
        if !guardrails.contains_key(alias) {
            return Err(ConfigError::Invalid {
                var: "RELAY_DEFAULT_GUARDRAIL",
                reason: format!(
                    "`{alias}` is not an alias of RELAY_GUARDRAILS ({}); name one of its keys",
                    if guardrails.is_empty() {
                        "which is not set".to_owned()
                    } else {
                        format!(
                            "known: {}",
                            guardrails.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    }
                ),
            });
        }
    }
    Ok(FeatureDefaults {
        cache,
        service_tier,
        guardrails,
        guardrail,
    })
}

/// `RELAY_GUARDRAILS`: a JSON object of alias → `{identifier, version, trace?}`.
fn parse_guardrails(raw: &str) -> Result<BTreeMap<String, Guardrail>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        var: "RELAY_GUARDRAILS",
        reason,
    };
    let entries: BTreeMap<String, Guardrail> = serde_json::from_str(raw).map_err(|err| {
        invalid(format!(
            "not a JSON object of alias → {{\"identifier\": \"<ID or ARN>\", \"version\": \"DRAFT|<n>\", \"trace\": \"disabled|enabled|enabled_full\"}} ({err})"
        ))
    })?;
    for (alias, guardrail) in &entries {
        if alias.is_empty()
            || alias.len() > 64
            || !alias
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(format!(
                "alias `{alias}` is not 1-64 letters, digits, `-` or `_`"
            )));
        }
        guardrail
            .check()
            .map_err(|reason| invalid(format!("`{alias}`: {reason}")))?;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::features::GuardrailTrace;

    fn read(vars: &[(&str, &str)]) -> Result<FeatureDefaults, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        feature_defaults(&|name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    /// Unset: no cache, Bedrock's tier, no guardrail.
    #[test]
    fn defaults_are_off_until_set() {
        assert_eq!(read(&[]).expect("valid"), FeatureDefaults::default());
    }

    #[test]
    fn guardrails_are_read_by_alias_with_their_default() {
        let defaults = read(&[
            (
                "RELAY_GUARDRAILS",
                r#"{"pii": {"identifier": "gr1abc", "version": "2", "trace": "enabled"}}"#,
            ),
            ("RELAY_DEFAULT_GUARDRAIL", "pii"),
            ("RELAY_DEFAULT_CACHE", "5m"),
            ("RELAY_DEFAULT_SERVICE_TIER", "flex"),
        ])
        .expect("valid");
        assert_eq!(defaults.guardrail.as_deref(), Some("pii"));
        assert_eq!(defaults.guardrails["pii"].trace, GuardrailTrace::Enabled);
        assert_eq!(defaults.cache, CacheTtl::FiveMinutes);
        assert_eq!(defaults.service_tier, Some(ServiceTier::Flex));
    }

    /// Each bad value names its variable and what is accepted.
    #[test]
    fn bad_values_name_the_variable_and_the_fix() {
        let msg = |vars: &[(&str, &str)]| read(vars).expect_err("invalid").to_string();
        assert!(msg(&[("RELAY_DEFAULT_CACHE", "10m")])
            .starts_with("RELAY_DEFAULT_CACHE is invalid: `10m` is not `none`, `5m` or `1h`"));
        assert!(msg(&[("RELAY_DEFAULT_SERVICE_TIER", "fast")])
            .contains("`default`, `flex` or `priority`"));
        assert!(msg(&[("RELAY_GUARDRAILS", "[1]")])
            .starts_with("RELAY_GUARDRAILS is invalid: not a JSON object"));
        assert!(msg(&[(
            "RELAY_GUARDRAILS",
            r#"{"a": {"identifier": "x y", "version": "1"}}"#
        )])
        .contains("`a`: identifier"));
        assert!(msg(&[(
            "RELAY_GUARDRAILS",
            r#"{"a": {"identifier": "x", "version": "1", "extra": 1}}"#
        )])
        .contains("unknown field `extra`"));
        assert!(msg(&[("RELAY_DEFAULT_GUARDRAIL", "pii")]).contains("which is not set"));
    }
}
