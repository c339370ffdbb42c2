//! The doctor's guardrail links: for each target and each guardrail of
//! `RELAY_GUARDRAILS`, RoleA applies the guardrail once to a short harmless
//! text (`ApplyGuardrail`), which shows the guardrail exists in the target's
//! account at that version and that RoleA may apply it (`guardrail:<alias>`).

use std::time::Duration;

use super::Check;
use crate::bedrock::{Bedrock, BedrockError};
use crate::config::Config;
use crate::domain::target::Target;

/// Longest the doctor waits for one guardrail.
const PROBE_BUDGET: Duration = Duration::from_secs(20);

/// One check per configured guardrail for `target`; none when no guardrail
/// is configured.
pub(super) async fn checks(
    base: &aws_config::SdkConfig,
    sts: &aws_sdk_sts::Client,
    config: &Config,
    target: &Target,
) -> Vec<Check> {
    if config.features.guardrails.is_empty() {
        return Vec::new();
    }
    let bedrock = Bedrock::new(base, sts.clone(), target, config.max_attempts);
    let mut checks = Vec::with_capacity(config.features.guardrails.len());
    for (alias, guardrail) in &config.features.guardrails {
        let result = bedrock.apply_guardrail(guardrail, PROBE_BUDGET).await;
        checks.push(Check {
            check: format!("guardrail:{alias}"),
            target: Some(target.alias.clone()),
            ok: result.is_ok(),
            skipped: false,
            detail: match result {
                Ok(action) => format!(
                    "RoleA applied guardrail `{}` version {} (action {action})",
                    guardrail.identifier, guardrail.version
                ),
                Err(BedrockError::NotFound { .. }) => format!(
                    "guardrail `{}` version {} does not exist in account {} ({}); create it there, or fix `{alias}` in RELAY_GUARDRAILS",
                    guardrail.identifier, guardrail.version, target.role.account, target.region
                ),
                Err(BedrockError::AccessDenied { message, .. }) => format!(
                    "RoleA may not apply guardrail `{}` ({message}); grant bedrock:ApplyGuardrail on it to RoleA in account {} (deploy/account-a.yaml: GuardrailArns)",
                    guardrail.identifier, target.role.account
                ),
                Err(err) => err.to_string(),
            },
        });
    }
    checks
}
