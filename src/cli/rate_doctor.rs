//! The doctor's rate-table link (`rate-table`): when a target states its
//! quota and `RELAY_RATE_TABLE` is set, one take of no slots from a probe
//! schedule of its own (`doctor/<function>`, never a real one) shows the
//! table exists and the function's role may update it.

use super::Check;
use crate::config::Config;
use crate::destination::Destinations;
use crate::rates::{epoch_micros, RateTable, Schedule};

/// The rate-table check; `None` when no target states a quota and no table
/// is set (nothing to check).
pub(super) async fn check(config: &Config, destinations: &Destinations) -> Option<Check> {
    let stated: Vec<&str> = config
        .targets
        .iter()
        .filter(|t| t.quota.is_stated())
        .map(|t| t.alias.as_str())
        .collect();
    let check = |ok, skipped, detail| Check {
        check: "rate-table".into(),
        target: None,
        ok,
        skipped,
        detail,
    };
    match (&config.rate_table, stated.is_empty()) {
        (None, true) => None,
        (None, false) => Some(check(
            true,
            true,
            format!(
                "skipped: {} state requests_per_minute but RELAY_RATE_TABLE is unset, so each instance paces to it on its own; set it for fanned-out batches to share one schedule",
                stated.join(", ")
            ),
        )),
        (Some(table), true) => Some(check(
            true,
            true,
            format!("skipped: RELAY_RATE_TABLE is {} but no target states requests_per_minute, so it is never used", table.name),
        )),
        (Some(table), false) => {
            let rates = RateTable::configured(Some(table), destinations)?;
            let probe = format!("doctor/{}", config.function_name);
            // A probe takes no slots, so its schedule never runs ahead: idle,
            // one write.
            Some(match rates.take(&probe, 0, 1, epoch_micros(), Schedule::Idle).await {
                Ok(_) => check(
                    true,
                    false,
                    format!("updated `{probe}` in {} (the schedules of {})", table.name, stated.join(", ")),
                ),
                Err(err) => check(false, false, err.to_string()),
            })
        }
    }
}
