//! Calling the model on time: which account of a pool serves a call, how fast
//! a batch sends ([`pacer`]), and whether the time left can hold the answer
//! ([`latency`]). [`ModelCaller`] is built once at cold start and shared by
//! every run mode; it never starts a call whose answer would come after the
//! [`Deadline`].

mod latency;
pub(crate) mod pacer;
mod pool;
pub(crate) mod slots;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::aws::retry::Backoff;
use crate::bedrock::{Attempts, Bedrock, BedrockError};
use crate::domain::deadline::Deadline;
use crate::domain::features::{validate_answer, OutputMismatch};
use crate::domain::job::ResolvedJob;
use crate::domain::record::ModelReply;
use crate::domain::target::Target;
use crate::observe::metrics::CallStats;

use latency::LatencyBook;
use pacer::{Pacer, Pacers};
use pool::PoolState;
use slots::{SlotBook, SlotBooks};

use crate::rates::RateTable;

/// Below this, a model call cannot be worth starting.
pub(crate) const MIN_MODEL_BUDGET: Duration = Duration::from_millis(250);

/// Waits when every pool member is throttled or failing. Short: the members'
/// quotas free up continuously, and a long wait leaves them idle.
const POOL_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// How a call is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// A single job: pool members in turn, the SDK's own retries on a lone target.
    Job,
    /// A batch item: through the pacers of its pool.
    Item,
}

/// The RoleA-signed Bedrock clients, one per target alias, and what is known
/// about their accounts across invocations.
#[derive(Debug)]
pub(crate) struct ModelCaller {
    bedrock: HashMap<String, Bedrock>,
    pool: PoolState,
    latency: LatencyBook,
    pacers: Pacers,
    /// The send schedules of stated quotas ([`slots`]).
    slots: SlotBooks,
    /// Kept back from every call to write its result (`RELAY_DEADLINE_RESERVE_MS`).
    reserve: Duration,
}

/// What answers are timed by: the model and the service tier, since a
/// `flex` answer may take much longer than a `default` one of the same model.
fn latency_key(job: &ResolvedJob) -> String {
    format!("{} {}", job.model, job.features.tier())
}

/// `reply` with its answer parsed, when it matches `schema`; a guardrail's
/// answer is taken as it is (it is not the model's).
fn with_json(
    schema: &serde_json::Value,
    mut reply: ModelReply,
) -> Result<ModelReply, OutputMismatch> {
    if !reply.is_blocked() {
        reply.json = Some(validate_answer(schema, &reply.text)?);
    }
    Ok(reply)
}

fn output_invalid(job: &ResolvedJob, mismatch: OutputMismatch) -> BedrockError {
    BedrockError::OutputInvalid {
        model: job.model.clone(),
        mismatch,
    }
}

/// The target that served (or last failed) and the result.
pub(crate) type Served<'t> = (&'t Target, Result<ModelReply, BedrockError>);

impl ModelCaller {
    /// `bedrock` holds a client for each target alias; `rate_table`, when
    /// set, shares the schedules of stated quotas with the other instances.
    pub(crate) fn new(
        bedrock: HashMap<String, Bedrock>,
        reserve: Duration,
        rate_table: Option<RateTable>,
    ) -> Self {
        Self {
            bedrock,
            pool: PoolState::default(),
            latency: LatencyBook::default(),
            pacers: Pacers::default(),
            slots: SlotBooks::new(rate_table),
            reserve,
        }
    }

    /// Time for a model call: what is left before the deadline, less the
    /// reserve kept to write the record. `None` when too little is left.
    pub(crate) fn budget(&self, deadline: &Deadline) -> Option<Duration> {
        deadline.budget(self.reserve, MIN_MODEL_BUDGET)
    }

    /// Calls the model for `job` on `pool`, unless the time left cannot hold
    /// the model's recent answers: then nothing is sent and the result is a
    /// deadline error (a retry of the event gets a fresh invocation's time).
    pub(crate) async fn call_in_time<'t>(
        &self,
        job: &ResolvedJob,
        pool: &[&'t Target],
        deadline: &Deadline,
        stats: &Arc<CallStats>,
        pace: Pace,
    ) -> Served<'t> {
        let (served_by, result) = self
            .call_once_in_time(job, pool, deadline, stats, pace)
            .await;
        let Some(schema) = &job.features.output_schema else {
            return (served_by, result);
        };
        let mismatch = match result.map(|reply| with_json(schema, reply)) {
            Ok(Ok(reply)) => return (served_by, Ok(reply)),
            Ok(Err(mismatch)) => mismatch,
            Err(err) => return (served_by, Err(err)),
        };
        // One re-ask, when the time left can hold another answer: a model
        // without constrained decoding may get it right the second time.
        let again = self
            .budget(deadline)
            .is_some_and(|budget| budget >= self.latency.expected(&latency_key(job)));
        if !again {
            return (served_by, Err(output_invalid(job, mismatch)));
        }
        tracing::info!(path = %mismatch.path, "the answer does not match output_schema; asking once more");
        let (served_by, result) = self
            .call_once_in_time(job, pool, deadline, stats, pace)
            .await;
        let result = result.and_then(|reply| {
            with_json(schema, reply).map_err(|mismatch| output_invalid(job, mismatch))
        });
        (served_by, result)
    }

    /// One answer for `job`, unless the time left cannot hold the model's
    /// recent answers in the job's tier.
    async fn call_once_in_time<'t>(
        &self,
        job: &ResolvedJob,
        pool: &[&'t Target],
        deadline: &Deadline,
        stats: &Arc<CallStats>,
        pace: Pace,
    ) -> Served<'t> {
        let key = latency_key(job);
        let needed = self.latency.expected(&key);
        if self.budget(deadline).is_none_or(|budget| budget < needed) {
            tracing::warn!(
                needed_ms = needed.as_millis() as u64,
                left_ms = deadline.remaining().as_millis() as u64,
                "not starting a model call whose answer would come after the deadline"
            );
            return out_of_time(pool[0], &job.model, deadline);
        }
        let (served_by, result) = match pace {
            Pace::Item => self.call_paced(job, pool, deadline, stats).await,
            Pace::Job => self.call_pool(job, pool, deadline, stats).await,
        };
        if let Ok(reply) = &result {
            // Bedrock's own figure when it gives one: the call's time also holds
            // throttling retries, which say nothing about how long an answer takes.
            let took = reply
                .model_latency_ms
                .and_then(|ms| u64::try_from(ms).ok())
                .unwrap_or(reply.call_latency_ms as u64);
            self.latency.record(&key, Duration::from_millis(took));
        }
        (served_by, result)
    }

    /// Runs the job on its target, or spreads it over a pool: members are tried
    /// in turn (starting at a rotating member, those recently throttled last),
    /// one attempt each, so a throttled or failing account hands the work to the
    /// next at once instead of backing off. Only when every member is throttled
    /// does it wait (full jitter, doubling) and go round again, within the
    /// deadline.
    async fn call_pool<'t>(
        &self,
        job: &ResolvedJob,
        pool: &[&'t Target],
        deadline: &Deadline,
        stats: &Arc<CallStats>,
    ) -> Served<'t> {
        let first = pool[0];
        if pool.len() == 1 {
            let Some(budget) = self.budget(deadline) else {
                return out_of_time(first, &job.model, deadline);
            };
            return (
                first,
                self.bedrock_for(first)
                    .converse_counted(job, budget, Attempts::Configured, stats)
                    .await,
            );
        }
        let mut order: Vec<&'t Target> = pool.to_vec();
        order.rotate_left(self.pool.next_start() % pool.len());
        let mut waits = POOL_BACKOFF.waits();
        loop {
            self.pool.sort_coolest_first(&mut order);
            let mut last = None;
            for target in &order {
                let Some(budget) = self.budget(deadline) else {
                    return out_of_time(target, &job.model, deadline);
                };
                match self
                    .bedrock_for(target)
                    .converse_counted(job, budget, Attempts::One, stats)
                    .await
                {
                    Ok(reply) => {
                        self.pool.clear(&target.alias);
                        return (target, Ok(reply));
                    }
                    Err(err) if hands_on(&err) => {
                        tracing::warn!(target = %target.alias, error = %err, "pool member could not serve; trying the next");
                        self.pool.cool(&target.alias);
                        last = Some((*target, err));
                    }
                    Err(err) => return (target, Err(err)),
                }
            }
            let Some((target, err)) = last else {
                return out_of_time(first, &job.model, deadline);
            };
            if !waits
                .sleep_within(deadline, self.reserve + MIN_MODEL_BUDGET)
                .await
            {
                return (target, Err(err));
            }
        }
    }

    /// Runs a batch item through the pacers of its pool (see [`pacer`]), and
    /// the schedule of each member that states its quota (see [`slots`]):
    /// each send takes a slot from the member whose next slot comes first
    /// (members that failed lately after the others), and a throttled send
    /// takes a new slot, on whichever member is free first, instead of backing
    /// off on its own. A lone target's SDK call retries 5xx answers and
    /// transport errors itself; in a pool they hand the item to the next member.
    async fn call_paced<'t>(
        &self,
        job: &ResolvedJob,
        pool: &[&'t Target],
        deadline: &Deadline,
        stats: &Arc<CallStats>,
    ) -> Served<'t> {
        let attempts = if pool.len() == 1 {
            Attempts::Paced
        } else {
            Attempts::One
        };
        let pacers: Vec<Arc<Pacer>> = pool
            .iter()
            .map(|target| self.pacers.get(&target.alias, &job.model))
            .collect();
        let books: Vec<Option<Arc<SlotBook>>> = pool
            .iter()
            .map(|target| self.slots.get(target, &job.model))
            .collect();
        let next_free = |i: usize| {
            let paced = pacers[i].next_free();
            books[i]
                .as_ref()
                .map_or(paced, |book| paced.max(book.next_free()))
        };
        let start = self.pool.next_start();
        let mut last: Option<(&'t Target, BedrockError)> = None;
        let give_up = |target: &'t Target, last: Option<(&'t Target, BedrockError)>| {
            last.map_or_else(
                || out_of_time(target, &job.model, deadline),
                |(target, err)| (target, Err(err)),
            )
        };
        let mut unavailable_in_row = 0;
        let mut waits = POOL_BACKOFF.waits();
        // One send per pacer slot until an answer or a lasting failure; bounded
        // by the deadline, which is checked before every send and every wait.
        loop {
            let now = tokio::time::Instant::now();
            let Some((member, slot)) = (0..pool.len())
                .map(|k| (start + k) % pool.len())
                .map(|i| (i, next_free(i)))
                .min_by_key(|(i, slot)| (self.pool.is_cooling(&pool[*i].alias), *slot))
            else {
                return give_up(pool[0], last);
            };
            let target = pool[member];
            // Never wait for a slot the time left cannot follow with a call.
            let wait = slot.saturating_duration_since(now);
            if self
                .budget(deadline)
                .is_none_or(|budget| budget < wait + MIN_MODEL_BUDGET)
            {
                return give_up(target, last);
            }
            tokio::time::sleep_until(pacers[member].reserve()).await;
            if let Some(book) = &books[member] {
                // Waiting for a slot (other calls' gathering, the take) ends
                // in time for a call, like every other wait here.
                let Some(limit) = self
                    .budget(deadline)
                    .and_then(|budget| budget.checked_sub(MIN_MODEL_BUDGET))
                else {
                    return give_up(target, last);
                };
                let Ok(slot) = tokio::time::timeout(limit, book.next_slot()).await else {
                    return give_up(target, last);
                };
                let wait = slot.saturating_duration_since(tokio::time::Instant::now());
                if self
                    .budget(deadline)
                    .is_none_or(|budget| budget < wait + MIN_MODEL_BUDGET)
                {
                    return give_up(target, last);
                }
                tokio::time::sleep_until(slot).await;
            }
            let Some(budget) = self.budget(deadline) else {
                return give_up(target, last);
            };
            match self
                .bedrock_for(target)
                .converse_counted(job, budget, attempts, stats)
                .await
            {
                Ok(reply) => {
                    pacers[member].answered();
                    self.pool.clear(&target.alias);
                    return (target, Ok(reply));
                }
                Err(err @ BedrockError::Throttled { .. }) => {
                    pacers[member].throttled();
                    unavailable_in_row = 0;
                    last = Some((target, err));
                }
                Err(err @ BedrockError::Unavailable { .. }) if pool.len() > 1 => {
                    tracing::warn!(target = %target.alias, error = %err, "pool member could not serve; trying the next");
                    self.pool.cool(&target.alias);
                    last = Some((target, err));
                    unavailable_in_row += 1;
                    if unavailable_in_row >= pool.len() {
                        // Every member failed in turn: back off before the next round.
                        if !waits
                            .sleep_within(deadline, self.reserve + MIN_MODEL_BUDGET)
                            .await
                        {
                            return give_up(target, last);
                        }
                        unavailable_in_row = 0;
                    }
                }
                Err(err) => return (target, Err(err)),
            }
        }
    }

    fn bedrock_for(&self, target: &Target) -> &Bedrock {
        // One client per configured target is built at cold start.
        &self.bedrock[&target.alias]
    }
}

/// Failures a pool member hands to the next member instead of failing the job.
fn hands_on(err: &BedrockError) -> bool {
    matches!(
        err,
        BedrockError::Throttled { .. } | BedrockError::Unavailable { .. }
    )
}

/// `target`'s answer when the time left cannot hold a model call: a deadline
/// error for `model`, nothing sent.
fn out_of_time<'t>(target: &'t Target, model: &str, deadline: &Deadline) -> Served<'t> {
    (
        target,
        Err(BedrockError::Deadline {
            model: model.to_owned(),
            left_ms: deadline.remaining().as_millis(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::job::Job;

    fn job(tier: Option<&str>) -> ResolvedJob {
        let mut job = json!({"model": "amazon.nova-pro-v1:0", "prompt": "hi"});
        if let Some(tier) = tier {
            job["service_tier"] = json!(tier);
        }
        Job::from_value(job)
            .and_then(|job| job.resolve(None, "t"))
            .expect("valid")
    }

    /// A slow `flex` answer raises the time `flex` calls of the model are
    /// given, not its `default` calls: latency is learnt per model and tier.
    #[test]
    fn latency_is_learnt_per_model_and_tier() {
        let book = LatencyBook::default();
        let (flex, default, unset) = (job(Some("flex")), job(Some("default")), job(None));
        assert_eq!(
            latency_key(&default),
            latency_key(&unset),
            "no tier is the default tier"
        );
        book.record(&latency_key(&flex), Duration::from_secs(30));
        assert!(book.expected(&latency_key(&flex)) > Duration::from_secs(29));
        assert_eq!(book.expected(&latency_key(&default)), MIN_MODEL_BUDGET);
    }
}
