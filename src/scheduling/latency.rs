//! How long each model has been taking, so that a call whose answer would
//! arrive after the deadline is not started (its tokens would be paid for and
//! its answer lost).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::MIN_MODEL_BUDGET;

/// How fast one slow answer is forgotten.
const LATENCY_HALF_LIFE: Duration = Duration::from_secs(60);

/// The estimate is the slowest recent call, halving every
/// [`LATENCY_HALF_LIFE`] so that one slow answer does not keep a model from
/// being tried for the rest of a warm function's life.
#[derive(Debug, Default)]
pub(crate) struct LatencyBook {
    slowest: Mutex<HashMap<String, (Duration, Instant)>>,
}

impl LatencyBook {
    /// Notes that a call to `model` took `took`.
    pub(crate) fn record(&self, model: &str, took: Duration) {
        if let Ok(mut slowest) = self.slowest.lock() {
            let now = Instant::now();
            let decayed = slowest
                .get(model)
                .map_or(Duration::ZERO, |(d, at)| decay(*d, now.duration_since(*at)));
            slowest.insert(model.to_owned(), (took.max(decayed), now));
        }
    }

    /// The time a call to `model` should be given, at least [`MIN_MODEL_BUDGET`].
    pub(crate) fn expected(&self, model: &str) -> Duration {
        let recent = self
            .slowest
            .lock()
            .ok()
            .and_then(|slowest| slowest.get(model).map(|(d, at)| decay(*d, at.elapsed())))
            .unwrap_or(Duration::ZERO);
        recent.max(MIN_MODEL_BUDGET)
    }
}

fn decay(slowest: Duration, age: Duration) -> Duration {
    slowest.mul_f64(0.5_f64.powf(age.as_secs_f64() / LATENCY_HALF_LIFE.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_recent_answer_sets_the_estimate_and_fades_by_half_a_minute() {
        let book = LatencyBook::default();
        assert_eq!(book.expected("m"), MIN_MODEL_BUDGET, "unknown: the floor");
        book.record("m", Duration::from_secs(4));
        book.record("m", Duration::from_secs(1));
        let expected = book.expected("m");
        assert!(expected > Duration::from_millis(3_900) && expected <= Duration::from_secs(4));
        assert_eq!(book.expected("other"), MIN_MODEL_BUDGET);
        let a_minute_later = decay(Duration::from_secs(4), LATENCY_HALF_LIFE);
        assert_eq!(a_minute_later, Duration::from_secs(2));
    }
}
