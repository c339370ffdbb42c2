//! Pacing a batch's model calls to what a model account's quota grants.
//!
//! A batch runs many items at once against one account's quota. Left to
//! themselves, throttled items each back off on their own, and since they are
//! throttled together they sleep together: the quota frees up while nobody
//! asks for it. A [`Pacer`] is shared by every call to one model in one
//! account; each call takes the next send slot from it, and a throttled call
//! takes a new slot instead of sleeping. A throttle costs no quota, so what
//! matters is that a request arrives whenever quota is free; the pacer keeps
//! the send rate a little above the rate the quota grants.
//!
//! The rate is learned from the answers: each answer raises it by
//! [`RAISE_PER_ANSWER`], and a throttle cuts it by [`CUT_PER_THROTTLE`] — at
//! most once per send gap, so a burst of throttles that were all sent before
//! the cut counts once — but never below the rate the quota granted over the
//! last [`ANCHOR_HORIZON`] (plus [`HEADROOM`]). The floor is what keeps the pacer close to the
//! quota when a quota window is full for a long stretch (every request
//! throttled until the window slides): the rate does not decay while it waits,
//! and freed quota is used at once.
//!
//! Nothing here knows the quota's window. The cut and the raise are driven by
//! the answers alone; the floor averages over a minute, the unit Bedrock
//! states its quotas in (requests and tokens per minute), so a quota enforced
//! over any window up to a minute — a 1 s sliding window in the lab, Bedrock's
//! per-minute quotas in an account — is tracked the same way.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Each answer raises the rate by 1 %: from a cut, the rate is back within a
/// few dozen answers, while a throttle cuts 20 %, so the rate settles where
/// a small share of requests are throttled.
pub(crate) const RAISE_PER_ANSWER: f64 = 0.01;
/// What a throttle takes off the rate.
pub(crate) const CUT_PER_THROTTLE: f64 = 0.2;
/// How far above the granted rate a cut stops: the pacer never settles just
/// under the quota, where a slot freed between two sends waits for the next.
pub(crate) const HEADROOM: f64 = 0.05;
/// How far back the granted rate (the floor of a cut) is measured.
pub(crate) const ANCHOR_HORIZON: Duration = Duration::from_secs(60);
/// The rate a pacer starts at, and its ceiling: in effect unpaced, so a fresh
/// account gets the burst its quota allows and the first throttles set the pace.
pub(crate) const MAX_RATE: f64 = 1000.0;
/// The slowest pace: one probe every five seconds.
pub(crate) const MIN_RATE: f64 = 0.2;

/// The send slots of one model in one account, shared by its concurrent calls
/// (and by the invocations of a warm function: the quota is the account's).
#[derive(Debug)]
pub(crate) struct Pacer {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Sends per second.
    rate: f64,
    /// The earliest time the next send may go.
    next_slot: Instant,
    /// The last cut, so one cut is made per send gap.
    last_cut: Option<Instant>,
    /// Answers within [`ANCHOR_HORIZON`].
    answered: VecDeque<Instant>,

    /// When the pacer last went from idle to busy.
    busy_since: Instant,
    /// The last slot handed out.
    last_send: Option<Instant>,
}

impl Default for Pacer {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new(State {
                rate: MAX_RATE,
                next_slot: now,
                last_cut: None,
                answered: VecDeque::new(),
                busy_since: now,
                last_send: None,
            }),
        }
    }
}

impl Pacer {
    /// When the next slot would be, without taking it.
    pub(crate) fn next_free(&self) -> Instant {
        let now = Instant::now();
        self.with(|state| state.next_slot.max(now))
    }

    /// Takes the next send slot; the caller waits until it before sending.
    pub(crate) fn reserve(&self) -> Instant {
        let now = Instant::now();
        self.with(|state| {
            // After a horizon without sends every quota window up to it has
            // refilled: start over, unpaced, and learn the rate again.
            if state
                .last_send
                .is_none_or(|last| now.duration_since(last) > ANCHOR_HORIZON)
            {
                state.rate = MAX_RATE;
                state.answered.clear();
                state.last_cut = None;
                state.busy_since = now;
            }
            let slot = state.next_slot.max(now);
            state.next_slot = slot + Duration::from_secs_f64(1.0 / state.rate);
            state.last_send = Some(slot);
            slot
        })
    }

    /// An answer: the quota had room for this send.
    pub(crate) fn answered(&self) {
        let now = Instant::now();
        self.with(|state| {
            state.answered.push_back(now);
            state.prune(now);
            state.rate = (state.rate * (1.0 + RAISE_PER_ANSWER)).min(MAX_RATE);
        });
    }

    /// A throttle: the quota had no room for this send.
    pub(crate) fn throttled(&self) {
        let now = Instant::now();
        self.with(|state| {
            let gap = Duration::from_secs_f64(1.0 / state.rate);
            if state
                .last_cut
                .is_some_and(|last| now.duration_since(last) < gap)
            {
                return;
            }
            state.prune(now);
            let cut = state.rate * (1.0 - CUT_PER_THROTTLE);
            let floor = state.granted(now) * (1.0 + HEADROOM);
            state.rate = cut.max(floor).clamp(MIN_RATE, state.rate);
            state.last_cut = Some(now);
        });
    }

    /// The current rate, sends per second.
    #[cfg(test)]
    pub(crate) fn rate(&self) -> f64 {
        self.with(|state| state.rate)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A poisoned lock only means another call panicked mid-update; the
        // numbers in it are still usable.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut state)
    }
}

impl State {
    fn prune(&mut self, now: Instant) {
        while self
            .answered
            .front()
            .is_some_and(|t| now.duration_since(*t) > ANCHOR_HORIZON)
        {
            self.answered.pop_front();
        }
    }

    /// Answers per second over the horizon, or over the busy stretch when that
    /// is shorter (a fresh pacer has no minute behind it).
    fn granted(&self, now: Instant) -> f64 {
        let span = now
            .duration_since(self.busy_since)
            .min(ANCHOR_HORIZON)
            .max(Duration::from_millis(1));
        self.answered.len() as f64 / span.as_secs_f64()
    }
}

/// The pacers, one per target alias and model: Bedrock's quotas are per
/// model and account (and region, which an alias fixes). Kept across the
/// invocations of a warm function, like the quota they track.
#[derive(Debug, Default)]
pub(crate) struct Pacers(Mutex<HashMap<(String, String), Arc<Pacer>>>);

impl Pacers {
    /// The pacer of `model` in the account of `alias`.
    pub(crate) fn get(&self, alias: &str, model: &str) -> Arc<Pacer> {
        let mut pacers = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(
            pacers
                .entry((alias.to_owned(), model.to_owned()))
                .or_default(),
        )
    }
}

#[cfg(test)]
mod sim;

#[cfg(test)]
mod tests {
    use super::*;

    use super::sim::Quota;

    /// Sends `items` through a pacer against `quota` in paused time, with
    /// answers coming back at once; returns (seconds taken, throttles).
    async fn run(items: usize, mut quota: Quota) -> (f64, usize) {
        let pacer = Pacer::default();
        let started = Instant::now();
        let (mut done, mut throttles) = (0, 0);
        let mut last_answer = started;
        while done < items {
            tokio::time::sleep_until(pacer.reserve()).await;
            if quota.admit(Instant::now()) {
                pacer.answered();
                done += 1;
                last_answer = Instant::now();
            } else {
                pacer.throttled();
                throttles += 1;
            }
        }
        (last_answer.duration_since(started).as_secs_f64(), throttles)
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_second_quota_is_used_at_its_rate_with_few_throttles() {
        // 20 per second: 500 items need 24 s at the full rate (the first 20 at
        // once). One send at a time with instant answers is the pacer's worst
        // case (no other call is waiting when a slot frees); the lab's batch
        // benchmark, 16 items at a time, reaches 97 %.
        let (seconds, throttles) = run(500, Quota::new(20, Duration::from_secs(1))).await;
        assert!(seconds < 24.0 / 0.93, "{seconds} s");
        assert!(throttles < 250, "{throttles} throttles for 500 items");
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_minute_quota_is_used_at_its_rate_after_a_full_window() {
        // 60 per minute: the first 60 at once, then the window is full for a
        // minute; 600 items need 9 minutes at the full rate. The pacer waits
        // out the full window at the granted rate (1 a second) rather than
        // decaying, and keeps that rate when the window frees.
        let (seconds, throttles) = run(600, Quota::new(60, Duration::from_secs(60))).await;
        assert!(seconds < 540.0 / 0.9, "{seconds} s");
        assert!(throttles < 1500, "{throttles} throttles for 600 items");
    }

    #[tokio::test(start_paused = true)]
    async fn throttles_sent_before_a_cut_count_once() {
        let pacer = Pacer::default();
        for _ in 0..50 {
            pacer.answered();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..10 {
            pacer.throttled();
        }
        // One cut of 20 %, not ten.
        assert!(
            (pacer.rate() - MAX_RATE * 0.8).abs() < 1e-6,
            "{}",
            pacer.rate()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_stops_at_the_rate_the_quota_granted() {
        let pacer = Pacer::default();
        pacer.reserve();
        // 20 answers a second for 5 s, then only throttles.
        for _ in 0..5 {
            for _ in 0..20 {
                pacer.answered();
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        for _ in 0..40 {
            pacer.throttled();
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        // 100 answers in the 9 s since the pacer got busy, plus the headroom.
        let rate = pacer.rate();
        assert!(
            (100.0 / 9.0 * (1.0 + HEADROOM) - rate).abs() < 0.2,
            "{rate}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_by_the_rate_and_an_idle_pacer_starts_over() {
        let pacer = Pacer::default();
        let first = pacer.reserve();
        pacer.throttled();
        let rate = pacer.rate();
        let second = pacer.reserve();
        let third = pacer.reserve();
        let gap = third.duration_since(second).as_secs_f64();
        assert!((gap - 1.0 / rate).abs() < 1e-6, "{gap}");
        assert!(second >= first);
        assert_eq!(
            pacer.next_free(),
            third + Duration::from_secs_f64(1.0 / rate)
        );

        tokio::time::advance(ANCHOR_HORIZON + Duration::from_secs(1)).await;
        pacer.reserve();
        assert_eq!(pacer.rate(), MAX_RATE);
    }
}
