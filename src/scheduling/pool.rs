//! Which members of a target pool were throttled lately, shared by the
//! invocations of a warm function so the next job starts on an account with
//! headroom.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::target::Target;

/// How long a throttled member is tried after the others.
const POOL_COOL_DOWN: Duration = Duration::from_secs(2);

/// Rotation and cool-downs of the pool members.
#[derive(Debug, Default)]
pub(crate) struct PoolState {
    next: AtomicUsize,
    cooling_until: Mutex<HashMap<String, Instant>>,
}

impl PoolState {
    /// The next start of the rotation: each call starts one member further on.
    pub(crate) fn next_start(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Puts `alias` last for a while.
    pub(crate) fn cool(&self, alias: &str) {
        if let Ok(mut cooling) = self.cooling_until.lock() {
            cooling.insert(alias.to_owned(), Instant::now() + POOL_COOL_DOWN);
        }
    }

    /// `alias` served: it is first-class again.
    pub(crate) fn clear(&self, alias: &str) {
        if let Ok(mut cooling) = self.cooling_until.lock() {
            cooling.remove(alias);
        }
    }

    /// Whether `alias` failed lately.
    pub(crate) fn is_cooling(&self, alias: &str) -> bool {
        let now = Instant::now();
        self.cooling_until
            .lock()
            .is_ok_and(|cooling| cooling.get(alias).is_some_and(|until| *until > now))
    }

    /// Members not cooling keep their order and come first.
    pub(crate) fn sort_coolest_first(&self, order: &mut [&Target]) {
        let now = Instant::now();
        let Ok(cooling) = self.cooling_until.lock() else {
            return;
        };
        order.sort_by_key(|t| cooling.get(&t.alias).is_some_and(|until| *until > now));
    }
}
