//! The one retry helper: exponential backoff with full jitter, never past a
//! [`Deadline`]. The SDK already retries transient errors inside each call;
//! this is for what is left when it gives up (a destination's outage, a pool
//! whose every member is throttled, unprocessed batch entries), where a retry
//! of the whole event would pay for the model calls again.

use std::future::Future;
use std::time::Duration;

use crate::domain::deadline::Deadline;

/// How waits grow: from `initial`, doubling up to `max`; each wait is drawn
/// at random below the current ceiling (full jitter), so retries are never in
/// lockstep and never a busy loop for long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits from `initial`, doubling up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// A fresh sequence of waits.
    pub fn waits(self) -> Waits {
        Waits {
            ceiling: self.initial,
            max: self.max,
        }
    }
}

/// The waits of one retry loop.
#[derive(Debug, Clone)]
pub struct Waits {
    ceiling: Duration,
    max: Duration,
}

impl Waits {
    /// The next wait: at random below the ceiling, which then doubles.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.ceiling.mul_f64(fastrand::f64());
        self.ceiling = (self.ceiling * 2).min(self.max);
        wait
    }

    /// Sleeps the next wait if `deadline` still leaves `keep` after it, and
    /// says whether it did: `false` (and no sleep) means give up now.
    pub async fn sleep_within(&mut self, deadline: &Deadline, keep: Duration) -> bool {
        let wait = self.next_wait();
        if deadline.remaining() < wait + keep {
            return false;
        }
        tokio::time::sleep(wait).await;
        true
    }
}

/// Runs `attempt` again while it fails with an error `retryable` accepts and
/// `deadline` leaves room for a wait and `keep` after it; returns the first
/// success, the first error not worth retrying, or the last error when time
/// runs out. Each retry is logged as "`what` failed, trying again".
pub async fn retry<T, E, F, Fut>(
    what: &str,
    backoff: Backoff,
    deadline: &Deadline,
    keep: Duration,
    retryable: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut waits = backoff.waits();
    loop {
        match attempt().await {
            Err(err) if retryable(&err) => {
                let wait = waits.next_wait();
                if deadline.remaining() < wait + keep {
                    return Err(err);
                }
                tracing::warn!(
                    wait_ms = wait.as_millis() as u64,
                    "{what} failed, trying again: {err}"
                );
                tokio::time::sleep(wait).await;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

    #[test]
    fn waits_are_jittered_below_a_doubling_ceiling_capped_at_the_max() {
        let mut waits = BACKOFF.waits();
        let ceilings = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for ceiling in ceilings {
            let wait = waits.next_wait();
            assert!(
                wait <= Duration::from_millis(ceiling),
                "{wait:?} over {ceiling} ms"
            );
        }
        // Full jitter: over many draws the waits spread across the range.
        let draws: Vec<Duration> = (0..200).map(|_| BACKOFF.waits().next_wait()).collect();
        assert!(draws.iter().any(|w| *w < Duration::from_millis(30)));
        assert!(draws.iter().any(|w| *w > Duration::from_millis(70)));
    }

    /// An operation that keeps failing is tried again until the deadline
    /// leaves no room for a wait and the time to keep; it never runs past it.
    #[tokio::test(start_paused = true)]
    async fn a_lasting_failure_is_retried_until_the_deadline_and_no_further() {
        let deadline = Deadline::after(Duration::from_secs(10));
        let keep = Duration::from_millis(300);
        let attempts = Cell::new(0);
        let result: Result<(), String> = retry(
            "test",
            BACKOFF,
            &deadline,
            keep,
            |_| true,
            || {
                attempts.set(attempts.get() + 1);
                async { Err("unavailable".to_owned()) }
            },
        )
        .await;
        assert_eq!(result, Err("unavailable".to_owned()));
        // Waits average under 1 s once the ceiling is 2 s: many attempts fit in 10 s.
        assert!(attempts.get() >= 5, "{} attempts", attempts.get());
        assert!(
            deadline.remaining() >= keep,
            "{:?} left",
            deadline.remaining()
        );
    }

    /// An error the caller does not retry, and a success, end the loop at once.
    #[tokio::test(start_paused = true)]
    async fn success_or_a_lasting_error_ends_the_loop_at_once() {
        let deadline = Deadline::after(Duration::from_secs(10));
        let attempts = Cell::new(0);
        let denied: Result<(), String> = retry(
            "test",
            BACKOFF,
            &deadline,
            Duration::ZERO,
            |e: &String| e != "denied",
            || {
                attempts.set(attempts.get() + 1);
                async { Err("denied".to_owned()) }
            },
        )
        .await;
        assert_eq!(denied, Err("denied".to_owned()));
        assert_eq!(attempts.get(), 1);

        attempts.set(0);
        let recovered: Result<u32, String> = retry(
            "test",
            BACKOFF,
            &deadline,
            Duration::ZERO,
            |_| true,
            || {
                attempts.set(attempts.get() + 1);
                let n = attempts.get();
                async move {
                    if n < 3 {
                        Err("unavailable".to_owned())
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(recovered, Ok(3));
    }

    /// With less time left than the first wait could need, nothing is retried.
    #[tokio::test(start_paused = true)]
    async fn no_time_left_means_no_retry() {
        let deadline = Deadline::after(Duration::from_millis(200));
        let attempts = Cell::new(0);
        let result: Result<(), String> = retry(
            "test",
            BACKOFF,
            &deadline,
            Duration::from_millis(300),
            |_| true,
            || {
                attempts.set(attempts.get() + 1);
                async { Err("unavailable".to_owned()) }
            },
        )
        .await;
        assert!(result.is_err());
        assert_eq!(attempts.get(), 1);
    }
}
