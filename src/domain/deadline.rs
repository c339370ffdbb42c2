//! The time an invocation has left, as a value: the Lambda wiring turns the
//! runtime's deadline into a [`Deadline`] once, and everything below it
//! (scheduling, delivery, claims) asks it how long is left, so that code has
//! unit tests without a Lambda runtime.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Lambda sends the deadline as epoch milliseconds. Local runtimes may not:
/// `cargo lambda watch` sends a bare `600000` (ten minutes). A value that cannot
/// be an epoch time of this century is read as milliseconds from now, so local
/// runs get the budget they were given instead of none.
const EPOCH_MS_2001: u64 = 1_000_000_000_000;

/// When the invocation ends. Measured on tokio's clock, so tests with paused
/// time see it run out as their sleeps advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// The deadline the Lambda runtime gives (`Context::deadline`, epoch ms),
    /// or a relative one from a local runtime.
    pub fn from_lambda_ms(deadline_ms: u64) -> Self {
        if deadline_ms < EPOCH_MS_2001 {
            return Self::after(Duration::from_millis(deadline_ms));
        }
        let left = Duration::from_millis(deadline_ms.saturating_sub(now_epoch_ms()));
        Self::after(left)
    }

    /// A deadline `left` from now.
    pub fn after(left: Duration) -> Self {
        Self {
            at: Instant::now() + left,
        }
    }

    /// The time left, zero once it has passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The time left less `reserve`, or `None` when less than `floor` would
    /// be left: what a model call may take while `reserve` is kept to save
    /// its result.
    pub fn budget(&self, reserve: Duration, floor: Duration) -> Option<Duration> {
        self.remaining()
            .checked_sub(reserve)
            .filter(|budget| *budget >= floor)
    }

    /// The deadline as epoch milliseconds (what a claim records as its expiry).
    pub fn epoch_ms(&self) -> u64 {
        now_epoch_ms() + self.remaining().as_millis() as u64
    }
}

/// Now, as epoch milliseconds (0 if the clock is before 1970).
pub fn now_epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_deadlines_from_local_runtimes_are_read_as_budgets() {
        let in_30s = Deadline::from_lambda_ms(now_epoch_ms() + 30_000);
        assert!(in_30s.remaining() > Duration::from_secs(29));
        assert!(in_30s.remaining() <= Duration::from_secs(30));
        let local = Deadline::from_lambda_ms(600_000);
        let left = local.remaining();
        assert!(
            left <= Duration::from_secs(600) && left > Duration::from_secs(599),
            "{left:?}"
        );
        assert_eq!(
            Deadline::from_lambda_ms(EPOCH_MS_2001 + 1).remaining(),
            Duration::ZERO,
            "a real epoch deadline in the past leaves nothing"
        );
    }

    #[test]
    fn a_budget_keeps_the_reserve_and_refuses_what_is_under_the_floor() {
        let deadline = Deadline::after(Duration::from_secs(10));
        let budget = deadline
            .budget(Duration::from_secs(2), Duration::from_millis(250))
            .expect("8 s left");
        assert!(budget <= Duration::from_secs(8) && budget > Duration::from_millis(7_900));
        assert_eq!(
            deadline.budget(Duration::from_millis(9_900), Duration::from_millis(250)),
            None
        );
        assert_eq!(
            Deadline::after(Duration::from_secs(1)).budget(Duration::from_secs(2), Duration::ZERO),
            None
        );
    }

    #[test]
    fn the_epoch_form_is_now_plus_what_is_left() {
        let deadline = Deadline::after(Duration::from_secs(60));
        let at = deadline.epoch_ms();
        let now = now_epoch_ms();
        assert!(at >= now + 59_000 && at <= now + 60_000, "{at} vs {now}");
    }
}
