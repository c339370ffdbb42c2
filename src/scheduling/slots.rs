//! Pacing to a stated quota: when a target states its account's
//! `requests_per_minute` for a model, every batch item to that model there
//! takes a send slot from one schedule, `60 s / (0.98 × requests_per_minute)`
//! apart ([`STATED_SHARE`]). With
//! `RELAY_RATE_TABLE` the schedule is shared by every instance of the
//! function ([`crate::rates`]); without it, each instance keeps its own.
//!
//! This sits before the [`super::pacer`], not instead of it: the stated rate
//! is a ceiling the instances share, and the pacer still cuts an instance's
//! rate on throttles, for when the quota is lower than stated or other
//! callers use it too.
//!
//! An instance takes slots in blocks: the calls that wait while one take is
//! in flight are served by the next take together, and while the schedule
//! runs ahead of the clock a take waits for more calls to join it (without
//! getting later slots for it), so the table sees one update per block, not
//! per call: 6.7 calls per update in the 20,000-item benchmark (2.4 with 8
//! calls in flight per instance instead of 16).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::aws::uri::foundation_model_id;
use crate::domain::target::Target;
use crate::rates::{epoch_micros, RateTable, Schedule};

/// The share of the stated rate the schedule hands out. A quota counts
/// requests as they arrive, and arrivals drift by a few milliseconds from
/// their slots (the network, the instances' clocks): at exactly the stated
/// rate, a request that drifts early finds the last window still full. At
/// 98 % a minute's window has 1.2 s of slack, a second's 20 ms.
pub(crate) const STATED_SHARE: f64 = 0.98;

/// How late a held slot may still be used, or a gap when that is longer: a
/// slot of a take comes back already past by up to the take's time, and a
/// send within a gap of its slot adds at most one request to any window.
const LATE_AT_MOST: Duration = Duration::from_millis(10);
/// How much of the schedule's lead a gathering take leaves, on top of twice
/// the last take's time.
const GATHER_LEAD: Duration = Duration::from_millis(5);
/// The longest a take waits for more calls.
const MAX_GATHER: Duration = Duration::from_millis(250);
/// The most slots one take asks for.
const MAX_BLOCK: usize = 16;

/// The longest a take from the rate table may take: then the instance paces
/// on its own, as after a failure (a call must not wait out its deadline on
/// the table).
const TAKE_TIMEOUT: Duration = Duration::from_millis(500);

/// After the rate table fails, how long an instance paces on its own before
/// it tries the table again.
const TABLE_REST: Duration = Duration::from_secs(30);

/// `count` slots `gap` apart from a schedule whose next free slot is `next`
/// (`None`: never used) at `now`: the first slot and the schedule's new next
/// free slot. A schedule behind `now` starts again at `now`: slots nobody
/// took are gone, never saved up for a burst. The rate table does the same
/// in two conditional updates.
pub(crate) fn take(next: Option<u64>, now: u64, count: u32, gap: u64) -> (u64, u64) {
    let first = next.map_or(now, |next| next.max(now));
    (
        first,
        first.saturating_add(gap.saturating_mul(u64::from(count))),
    )
}

/// Where a schedule lives.
#[derive(Debug)]
enum Source {
    /// This instance alone; microseconds since `origin`.
    Local,
    /// Every instance: the item `key` of the rate table.
    Shared { table: RateTable, key: String },
    /// A schedule shared by simulated instances, each take `delay` long.
    #[cfg(test)]
    Simulated {
        schedule: Arc<SimulatedSchedule>,
        delay: Duration,
    },
}

/// The shared store of simulated instances (`src/scheduling/pacer/sim.rs`):
/// the next free slot, in microseconds since `origin`.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct SimulatedSchedule {
    next: Mutex<Option<u64>>,
    origin: Instant,
    /// Takes so far.
    pub(crate) takes: AtomicUsize,
}

#[cfg(test)]
impl SimulatedSchedule {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            next: Mutex::new(None),
            origin: Instant::now(),
            takes: AtomicUsize::new(0),
        })
    }
}

/// The send slots of one model in one account, as one instance sees them.
#[derive(Debug)]
pub(crate) struct SlotBook {
    source: Source,
    /// Between two slots: 60 s / ([`STATED_SHARE`] × the stated requests per minute).
    gap: Duration,
    /// Slots taken and not yet handed out.
    held: Mutex<VecDeque<Instant>>,
    /// One take at a time; the calls waiting meanwhile share the next.
    taking: tokio::sync::Mutex<()>,
    /// Calls waiting for a slot.
    waiting: AtomicUsize,
    /// How long the last take took.
    take_time: Mutex<Duration>,
    /// How far ahead of the clock the last take's first slot was.
    ahead: Mutex<Duration>,
    /// The schedule's next free slot after the last take.
    next_known: Mutex<Option<Instant>>,
    /// The local schedule, used alone or while the table rests.
    local: Mutex<Option<u64>>,
    origin: Instant,
    /// Until when the table is not tried after a failure.
    table_rests_until: Mutex<Option<Instant>>,
    /// The state the last take found the shared schedule in: the next take
    /// tries that update first.
    last_found: Mutex<Schedule>,
}

/// One call counted as waiting for a slot, until it is dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Self(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl SlotBook {
    fn new(source: Source, requests_per_minute: u32) -> Self {
        Self {
            source,
            gap: Duration::from_secs_f64(
                60.0 / (f64::from(requests_per_minute.max(1)) * STATED_SHARE),
            ),
            held: Mutex::new(VecDeque::new()),
            taking: tokio::sync::Mutex::new(()),
            waiting: AtomicUsize::new(0),
            take_time: Mutex::new(Duration::ZERO),
            ahead: Mutex::new(Duration::ZERO),
            next_known: Mutex::new(None),
            local: Mutex::new(None),
            origin: Instant::now(),
            table_rests_until: Mutex::new(None),
            last_found: Mutex::new(Schedule::Busy),
        }
    }

    /// A schedule shared by simulated instances (`src/scheduling/pacer/sim.rs`).
    #[cfg(test)]
    pub(crate) fn simulated(
        schedule: Arc<SimulatedSchedule>,
        delay: Duration,
        requests_per_minute: u32,
    ) -> Self {
        Self::new(Source::Simulated { schedule, delay }, requests_per_minute)
    }

    /// When the schedule's next free slot was at the last take (or now).
    pub(crate) fn next_free(&self) -> Instant {
        let now = Instant::now();
        lock(&self.held)
            .front()
            .copied()
            .or(*lock(&self.next_known))
            .map_or(now, |at| at.max(now))
    }

    /// The next send slot for this instance; the caller waits until it.
    /// A call dropped while it waits (its deadline, its batch failing) is
    /// no longer counted.
    pub(crate) async fn next_slot(&self) -> Instant {
        let _waiting = Waiting::count(&self.waiting);
        let _taking = self.taking.lock().await;
        let slot = match self.pop_held() {
            Some(slot) => slot,
            None => {
                if let Some(until) = self.gather_until() {
                    tokio::time::sleep_until(until).await;
                }
                let count = self.waiting.load(Ordering::SeqCst).clamp(1, MAX_BLOCK);
                let slots = self.take(count as u32).await;
                let mut held = lock(&self.held);
                held.extend(slots);
                held.pop_front().unwrap_or_else(Instant::now)
            }
        };
        slot
    }

    /// Until when a take may wait for more calls to join it. At the last
    /// take the schedule ran `ahead` of the clock (its first slot that far
    /// off): a take made up to half of that later still gets slots no later
    /// than the calls would wait anyway, so the schedule never idles, and
    /// the calls that ask meanwhile share one update of the table.
    fn gather_until(&self) -> Option<Instant> {
        // A take of this instance's own schedule costs nothing.
        if matches!(self.source, Source::Local) || self.table_resting(Instant::now()) {
            return None;
        }
        let ahead = *lock(&self.ahead);
        let take_time = *lock(&self.take_time);
        let lead = take_time * 2 + GATHER_LEAD;
        // However close the schedule runs, a take may wait as long as the
        // last one took: at most twice the wait, for takes shared by the
        // calls that ask meanwhile (a slow table is a busy one).
        let wait = (ahead / 2)
            .saturating_sub(lead)
            .max(take_time)
            .min(MAX_GATHER);
        (!wait.is_zero()).then(|| Instant::now() + wait)
    }

    /// A held slot, unless it passed more than [`LATE_AT_MOST`] (or a gap)
    /// ago: sent now, it would bunch with the next ones.
    fn pop_held(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut held = lock(&self.held);
        while let Some(slot) = held.pop_front() {
            if slot + self.gap.max(LATE_AT_MOST) >= now {
                return Some(slot);
            }
        }
        None
    }

    /// Whether the rate table rests at `at`, after a failure.
    fn table_resting(&self, at: Instant) -> bool {
        lock(&self.table_rests_until).is_some_and(|until| at < until)
    }

    /// `count` slots from the schedule, as instants of this process.
    async fn take(&self, count: u32) -> Vec<Instant> {
        // Rounded up: a shorter gap would send faster than the share.
        let gap = micros(self.gap + Duration::from_nanos(999));
        let started = Instant::now();
        let shared = match &self.source {
            Source::Local => None,
            Source::Shared { table, key } => {
                if self.table_resting(started) {
                    None
                } else {
                    let now = epoch_micros();
                    let from = *lock(&self.last_found);
                    let taken =
                        tokio::time::timeout(TAKE_TIMEOUT, table.take(key, count, gap, now, from))
                            .await
                            .unwrap_or_else(|_| Err(table.timed_out(TAKE_TIMEOUT)));
                    match taken {
                        Ok(taken) => {
                            *lock(&self.last_found) = taken.from;
                            Some((taken.first, now))
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, rest_s = TABLE_REST.as_secs(), "rate table unavailable; pacing this instance alone meanwhile");
                            *lock(&self.table_rests_until) = Some(Instant::now() + TABLE_REST);
                            None
                        }
                    }
                }
            }
            #[cfg(test)]
            Source::Simulated { schedule, delay } => {
                // As with the table: the caller's clock at the start of the
                // take, the store reached half way, the answer back the other.
                let now = micros(started.duration_since(schedule.origin));
                tokio::time::sleep(*delay / 2).await;
                let first = {
                    let mut next = lock(&schedule.next);
                    let (first, after) = take(*next, now, count, gap);
                    *next = Some(after);
                    first
                };
                schedule.takes.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(*delay / 2).await;
                Some((first, now))
            }
        };
        let (first, now) = shared.unwrap_or_else(|| {
            let now = micros(started.duration_since(self.origin));
            let mut local = lock(&self.local);
            let (first, after) = take(*local, now, count, gap);
            *local = Some(after);
            (first, now)
        });
        // `now` in the schedule's clock is `started` in this process's.
        let at = |us: u64| started + Duration::from_micros(us.saturating_sub(now));
        let slots: Vec<Instant> = (0..u64::from(count))
            .map(|i| at(first.saturating_add(i * gap)))
            .collect();
        *lock(&self.next_known) = Some(at(first.saturating_add(u64::from(count) * gap)));
        *lock(&self.take_time) = started.elapsed();
        *lock(&self.ahead) = slots.first().map_or(Duration::ZERO, |first| {
            first.saturating_duration_since(Instant::now())
        });
        slots
    }
}

/// The slot books, one per target and model with a stated quota; kept across
/// the invocations of a warm function.
#[derive(Debug, Default)]
pub(crate) struct SlotBooks {
    table: Option<RateTable>,
    /// By account, region and model ([`RateTable::key`]): the quota's own key,
    /// so two aliases of one account share a book.
    books: Mutex<HashMap<String, Option<Arc<SlotBook>>>>,
}

impl SlotBooks {
    /// Books whose schedules live in `table`, or in each instance without one.
    pub(crate) fn new(table: Option<RateTable>) -> Self {
        Self {
            table,
            books: Mutex::new(HashMap::new()),
        }
    }

    /// The book of `model` on `target`, when the target states its quota.
    /// A foundation model's ARN and its id share one book and one stated
    /// quota: they are one model to Bedrock's quotas.
    pub(crate) fn get(&self, target: &Target, model: &str) -> Option<Arc<SlotBook>> {
        let model = foundation_model_id(model);
        let key = RateTable::key(&target.role.account, &target.region, model);
        let mut books = lock(&self.books);
        books
            .entry(key.clone())
            .or_insert_with(|| {
                let rpm = target.quota.requests_per_minute(model)?;
                let source = match &self.table {
                    None => Source::Local,
                    Some(table) => Source::Shared {
                        table: table.clone(),
                        key,
                    },
                };
                Some(Arc::new(SlotBook::new(source, rpm)))
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A busy schedule hands out consecutive slots a gap apart; one that fell
    /// behind the clock starts at now, without a burst of the skipped slots.
    #[test]
    fn slots_follow_the_schedule_and_an_idle_one_restarts_at_now() {
        assert_eq!(take(None, 1_000, 3, 10), (1_000, 1_030));
        assert_eq!(take(Some(1_030), 1_005, 2, 10), (1_030, 1_050));
        assert_eq!(take(Some(1_050), 9_000, 1, 10), (9_000, 9_010));
    }

    /// 600 requests a minute: slots a gap apart (102 ms at 98 %) however many
    /// calls ask at once, and the calls that waited together were served by
    /// one take.
    #[tokio::test(start_paused = true)]
    async fn calls_asking_at_once_get_slots_a_gap_apart_from_few_takes() {
        let schedule = SimulatedSchedule::new();
        let book = Arc::new(SlotBook::simulated(
            schedule.clone(),
            Duration::from_millis(10),
            600,
        ));
        let gap = book.gap;
        assert!(
            (gap.as_secs_f64() - 0.1 / STATED_SHARE).abs() < 1e-6,
            "{gap:?}"
        );
        let start = Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let book = book.clone();
            calls.spawn(async move { book.next_slot().await });
        }
        let mut slots: Vec<Instant> = calls.join_all().await;
        slots.sort();
        for pair in slots.windows(2) {
            let apart = (pair[1] - pair[0]).as_secs_f64();
            assert!((apart - gap.as_secs_f64()).abs() < 2e-6, "{apart}");
        }
        assert!(
            slots[0] - start <= Duration::from_millis(10),
            "{:?}",
            slots[0] - start
        );
        // The first call took one slot; the seven that waited meanwhile, the
        // next seven in one take: 8 slots of schedule in all.
        let after = lock(&schedule.next).expect("taken");
        assert_eq!(
            after,
            8 * micros(gap + Duration::from_nanos(999)),
            "{after}"
        );
        assert_eq!(schedule.takes.load(Ordering::SeqCst), 2);
    }

    /// A rate table that fails (here: denied) costs no item: the instance
    /// takes its slots from its own schedule at the stated rate, and does not
    /// ask the table again for [`TABLE_REST`].
    #[tokio::test(start_paused = true)]
    async fn a_failing_rate_table_falls_back_to_the_instances_own_schedule() {
        use aws_smithy_mocks::{mock, mock_client, RuleMode};
        let denied = mock!(aws_sdk_dynamodb::Client::update_item).then_http_response(|| {
            aws_smithy_runtime_api::http::Response::new(
                aws_smithy_runtime_api::http::StatusCode::try_from(400).expect("status"),
                aws_smithy_types::body::SdkBody::from(
                    r#"{"__type":"com.amazon.coral.service#AccessDeniedException","message":"no"}"#,
                ),
            )
        });
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&denied]);
        let table = RateTable::new(
            client,
            crate::destination::dynamodb::Table::from_name_or_arn("relay-rates").expect("table"),
        );
        let source = Source::Shared {
            table,
            key: "k".into(),
        };
        let book = SlotBook::new(source, 600);
        let first = book.next_slot().await;
        let second = book.next_slot().await;
        let apart = (second - first).as_secs_f64();
        assert!((apart - book.gap.as_secs_f64()).abs() < 2e-6, "{apart}");
        assert_eq!(denied.num_calls(), 1, "the table rests after a failure");

        tokio::time::advance(TABLE_REST + Duration::from_secs(1)).await;
        book.next_slot().await;
        assert_eq!(denied.num_calls(), 2, "and is tried again after the rest");
    }

    /// A target without `requests_per_minute` for a model has no book: its
    /// calls are paced by the pacer alone. A foundation model's ARN shares
    /// its id's book.
    #[test]
    fn only_a_stated_quota_gets_a_book() {
        let mut target = crate::bedrock::tests::target();
        target.quota = crate::domain::target::StatedQuota::new(
            [("amazon.nova-lite-v1:0".to_owned(), 600)].into(),
        );
        let books = SlotBooks::new(None);
        let book = books.get(&target, "amazon.nova-lite-v1:0").expect("book");
        assert!((book.gap.as_secs_f64() - 0.1 / STATED_SHARE).abs() < 1e-6);
        assert!(books.get(&target, "amazon.nova-pro-v1:0").is_none());
        // The model's ARN is the same model: the same book.
        let by_arn = books
            .get(
                &target,
                "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0",
            )
            .expect("book");
        assert!(Arc::ptr_eq(&book, &by_arn));
    }
}
