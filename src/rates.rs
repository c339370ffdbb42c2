//! The rate table (`RELAY_RATE_TABLE`): one DynamoDB item per model account
//! and model whose quota a target states, holding the next free send slot of
//! the schedule every instance of the function shares.
//!
//! Many instances share one account's quota. Each pacing on its own must
//! probe above its share to find it, and the probes of all of them add up
//! to throttles (see `src/scheduling/pacer/sim.rs`). With the quota stated
//! (`requests_per_minute`), the instances instead take their send slots from
//! one schedule, a gap apart (`src/scheduling/slots.rs` sets it to 98 % of
//! the stated rate), so together they send at that rate and no faster.
//!
//! This is a generic cell rate algorithm kept in one item: `next_us` is the
//! next free slot in microseconds since the Unix epoch. A take of `n` slots
//! moves it `n` gaps on; a schedule that fell behind the clock starts again
//! from now, so slots nobody took are gone, never saved up for a burst; one
//! more than [`MAX_AHEAD`] ahead does too. Each state is one conditional
//! update, so a take tries first the state its schedule was last found in:
//! one write per take while the state holds, two when it changes.
//!
//! Item: `pk` (S, `<account>/<region>/<model>`), `next_us` (N), `takes` (N,
//! the updates that took slots, for operators; a failed conditional update
//! is billed as a write too but not counted), `expires_at` (N, epoch
//! seconds, the table's TTL attribute: an idle schedule is removed a day
//! later). The function needs `dynamodb:UpdateItem` on the table, and
//! nothing else.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use thiserror::Error;

use crate::aws::errors::{Class, SdkFailure};
use crate::destination::dynamodb::Table;
use crate::destination::Destinations;

/// How long an untouched schedule stays in the table.
const IDLE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Rounds of the two conditional updates before giving up: each round fails
/// only when another instance moved the schedule between the two.
const ROUNDS: usize = 4;

/// The farthest ahead of the clock a schedule may run. No caller waits
/// longer than an invocation (at most 15 minutes), so a schedule beyond that
/// serves nobody: it comes from a clock far ahead or a damaged item, and is
/// started again at now instead of stalling every instance.
pub const MAX_AHEAD: Duration = Duration::from_secs(15 * 60);

/// Which state a take found its schedule in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Ahead of the clock: the slots follow those already taken.
    Busy,
    /// Behind the clock (or new): the slots start at now.
    Idle,
}

/// One take's figures, the same for both of its updates.
struct Take<'a> {
    key: &'a str,
    /// The slots' length: count × gap, in microseconds.
    span: u64,
    now_us: u64,
    /// The farthest a busy schedule may be ahead: `now_us` + [`MAX_AHEAD`].
    latest: u64,
    /// The TTL, in epoch seconds.
    expires: u64,
}

/// What a take got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// The first slot, in microseconds since the Unix epoch.
    pub first: u64,
    /// The state the schedule was found in: the next take tries it first.
    pub from: Schedule,
}

type UpdateFailure = aws_sdk_dynamodb::error::SdkError<
    aws_sdk_dynamodb::operation::update_item::UpdateItemError,
    aws_smithy_runtime_api::http::Response,
>;

/// A take from the rate table failed; the caller paces on its own meanwhile.
#[derive(Debug, Error)]
pub enum RateTableError {
    /// The function's role may not update the table.
    #[error("rate table {table}: access denied ({message}); grant the function's role dynamodb:UpdateItem on it, or unset RELAY_RATE_TABLE")]
    Denied {
        /// The table.
        table: String,
        /// DynamoDB's words.
        message: String,
    },
    /// The table does not exist.
    #[error("rate table {table} does not exist ({message}); create it (partition key `pk`, a string) or fix RELAY_RATE_TABLE")]
    Missing {
        /// The table.
        table: String,
        /// DynamoDB's words.
        message: String,
    },
    /// The table refused the update itself: the wrong key schema.
    #[error("rate table {table} refused the update ({message}); it needs a string partition key `pk` and no sort key, as template.yaml's RateTable: point RELAY_RATE_TABLE at such a table")]
    Invalid {
        /// The table.
        table: String,
        /// DynamoDB's words.
        message: String,
    },
    /// Anything else: throttled, unreachable, contended, too slow.
    #[error("rate table {table}: {reason}")]
    Unavailable {
        /// The table.
        table: String,
        /// What happened.
        reason: String,
    },
}

/// The rate table, through account B's DynamoDB client.
#[derive(Debug, Clone)]
pub struct RateTable {
    client: aws_sdk_dynamodb::Client,
    table: Table,
}

/// The clock the table's schedules run on: microseconds since the Unix
/// epoch. Lambda instances keep their clocks in step (NTP), within a few
/// milliseconds, which is what sharing one schedule needs.
pub fn epoch_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl RateTable {
    /// The table `table`, through `client`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: Table) -> Self {
        Self { client, table }
    }

    /// The table `RELAY_RATE_TABLE` names, if any, through account B's
    /// DynamoDB client.
    pub fn configured(table: Option<&Table>, destinations: &Destinations) -> Option<Self> {
        table.map(|table| Self::new(destinations.dynamodb_client().clone(), table.clone()))
    }

    /// The key of the schedule of `model` in `account`'s `region`.
    pub fn key(account: &str, region: &str, model: &str) -> String {
        format!("{account}/{region}/{model}")
    }

    /// Takes `count` consecutive slots, `gap_us` apart, from the schedule
    /// `key` at the time `now_us` ([`epoch_micros`]).
    ///
    /// A take is one conditional update when it guesses the schedule's
    /// state right and two when not, so `from` says which to try first: the
    /// state the last take found ([`Taken::from`]). A schedule
    /// [`MAX_AHEAD`] or more ahead of the clock is started again at now, as
    /// an idle one.
    pub async fn take(
        &self,
        key: &str,
        count: u32,
        gap_us: u64,
        now_us: u64,
        from: Schedule,
    ) -> Result<Taken, RateTableError> {
        let take = Take {
            key,
            span: gap_us.saturating_mul(u64::from(count)),
            now_us,
            latest: now_us.saturating_add(u64::try_from(MAX_AHEAD.as_micros()).unwrap_or(u64::MAX)),
            expires: (now_us / 1_000_000).saturating_add(IDLE_TTL.as_secs()),
        };
        let order = match from {
            Schedule::Busy => [Schedule::Busy, Schedule::Idle],
            Schedule::Idle => [Schedule::Idle, Schedule::Busy],
        };
        for _ in 0..ROUNDS {
            for state in order {
                match self.update(&take, state).await {
                    Ok(Some(first)) => return Ok(Taken { first, from: state }),
                    Ok(None) => {
                        return Err(self.unavailable("the update returned no next_us".into()))
                    }
                    Err(err) if !is_condition_failed(&err) => return Err(self.error(&err)),
                    // The schedule is in the other state, or another
                    // instance moved it in between: try the other update.
                    Err(_) => {}
                }
            }
        }
        Err(self.unavailable(format!(
            "the schedule `{key}` changed under {ROUNDS} rounds of takes"
        )))
    }

    /// The conditional update of a take from a schedule in `state`; the
    /// first slot taken.
    /// - Busy (from now to [`MAX_AHEAD`] ahead): moved on from where it
    ///   is; the first slot is where it stood.
    /// - Idle (behind the clock, new, or implausibly far ahead): started
    ///   again at now.
    async fn update(&self, take: &Take<'_>, state: Schedule) -> Result<Option<u64>, UpdateFailure> {
        let (expression, condition) = match state {
            Schedule::Busy => (
                "SET next_us = next_us + :span, expires_at = :expires ADD takes :one",
                "next_us BETWEEN :now AND :latest",
            ),
            Schedule::Idle => (
                "SET next_us = :next, expires_at = :expires ADD takes :one",
                "attribute_not_exists(next_us) OR next_us < :now OR next_us > :latest",
            ),
        };
        let request = self
            .client
            .update_item()
            .table_name(&self.table.arn)
            .key("pk", AttributeValue::S(take.key.to_owned()))
            .update_expression(expression)
            .condition_expression(condition)
            .expression_attribute_values(":one", number(1))
            .expression_attribute_values(":now", number(take.now_us))
            .expression_attribute_values(":latest", number(take.latest))
            .expression_attribute_values(":expires", number(take.expires));
        // DynamoDB refuses values an expression does not use: each state
        // adds its own.
        match state {
            Schedule::Busy => {
                let out = request
                    .expression_attribute_values(":span", number(take.span))
                    .return_values(ReturnValue::UpdatedNew)
                    .send()
                    .await?;
                Ok(out
                    .attributes()
                    .and_then(|a| a.get("next_us"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse::<u64>().ok())
                    .map(|next| next.saturating_sub(take.span)))
            }
            Schedule::Idle => {
                request
                    .expression_attribute_values(
                        ":next",
                        number(take.now_us.saturating_add(take.span)),
                    )
                    .send()
                    .await?;
                Ok(Some(take.now_us))
            }
        }
    }

    /// A take that did not answer within `limit`.
    pub fn timed_out(&self, limit: Duration) -> RateTableError {
        self.unavailable(format!("no answer within {} ms", limit.as_millis()))
    }

    fn unavailable(&self, reason: String) -> RateTableError {
        RateTableError::Unavailable {
            table: self.table.name.clone(),
            reason,
        }
    }

    fn error<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(
        &self,
        err: &aws_sdk_dynamodb::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> RateTableError {
        let failure = SdkFailure::read(err);
        let table = self.table.name.clone();
        let message = failure.summary("DynamoDB");
        match failure.class() {
            Class::Denied => RateTableError::Denied { table, message },
            Class::Missing => RateTableError::Missing { table, message },
            Class::Rejected => RateTableError::Invalid { table, message },
            _ => RateTableError::Unavailable {
                table,
                reason: message,
            },
        }
    }
}

fn number(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

fn is_condition_failed(err: &UpdateFailure) -> bool {
    err.as_service_error()
        .is_some_and(|e| e.is_conditional_check_failed_exception())
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
    use aws_sdk_dynamodb::types::error::ConditionalCheckFailedException;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};

    use super::*;

    fn table(client: aws_sdk_dynamodb::Client) -> RateTable {
        RateTable::new(
            client,
            Table::from_name_or_arn("relay-rates").expect("table"),
        )
    }

    fn condition_failed() -> UpdateItemError {
        UpdateItemError::ConditionalCheckFailedException(
            ConditionalCheckFailedException::builder().build(),
        )
    }

    /// A busy schedule is moved on by the slots taken, and the first of them
    /// is where it stood.
    #[tokio::test]
    async fn a_take_from_a_busy_schedule_starts_where_it_stood() {
        let busy = mock!(aws_sdk_dynamodb::Client::update_item)
            .match_requests(|req| {
                req.condition_expression() == Some("next_us BETWEEN :now AND :latest")
                    && req.expression_attribute_values().is_some_and(|v| {
                        v[":span"] == AttributeValue::N("30000".into())
                            && v[":now"] == AttributeValue::N("5000000".into())
                            && v[":latest"] == AttributeValue::N("905000000".into())
                    })
                    && req.key().is_some_and(|k| {
                        k["pk"] == AttributeValue::S("111111111111/us-east-1/m".into())
                    })
            })
            .then_output(|| {
                UpdateItemOutput::builder()
                    .attributes("next_us", AttributeValue::N("5100000".into()))
                    .build()
            });
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&busy]);
        let key = RateTable::key("111111111111", "us-east-1", "m");
        let taken = table(client)
            .take(&key, 3, 10_000, 5_000_000, Schedule::Busy)
            .await;
        assert_eq!(
            taken.expect("taken"),
            Taken {
                first: 5_070_000,
                from: Schedule::Busy
            }
        );
        assert_eq!(busy.num_calls(), 1);
    }

    /// A schedule behind the clock (or none yet, or implausibly far ahead)
    /// starts again at now: the slots it skipped are not saved up. Guessed
    /// busy, that is two updates; the next take, guessing idle as this one
    /// found it, makes one.
    #[tokio::test]
    async fn an_idle_schedule_starts_again_at_now() {
        let busy = mock!(aws_sdk_dynamodb::Client::update_item)
            .match_requests(|req| {
                req.condition_expression()
                    .is_some_and(|c| c.contains("BETWEEN"))
            })
            .then_error(condition_failed);
        let idle = mock!(aws_sdk_dynamodb::Client::update_item)
            .match_requests(|req| {
                req.condition_expression()
                    == Some("attribute_not_exists(next_us) OR next_us < :now OR next_us > :latest")
                    && req
                        .expression_attribute_values()
                        .is_some_and(|v| v[":next"] == AttributeValue::N("5020000".into()))
            })
            .then_output(|| UpdateItemOutput::builder().build());
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&busy, &idle]);
        let rates = table(client);
        let taken = rates
            .take("k", 2, 10_000, 5_000_000, Schedule::Busy)
            .await
            .expect("taken");
        assert_eq!(
            taken,
            Taken {
                first: 5_000_000,
                from: Schedule::Idle
            }
        );
        assert_eq!((busy.num_calls(), idle.num_calls()), (1, 1));

        let again = rates
            .take("k", 2, 10_000, 5_000_000, taken.from)
            .await
            .expect("taken");
        assert_eq!(again.from, Schedule::Idle);
        assert_eq!((busy.num_calls(), idle.num_calls()), (1, 2), "one update");
    }

    /// A role without UpdateItem gets the fix in the error.
    #[tokio::test]
    async fn a_denied_take_says_which_grant_is_missing() {
        let denied = mock!(aws_sdk_dynamodb::Client::update_item).then_http_response(|| {
            aws_smithy_runtime_api::http::Response::new(
                aws_smithy_runtime_api::http::StatusCode::try_from(400).expect("status"),
                aws_smithy_types::body::SdkBody::from(
                    r#"{"__type":"com.amazon.coral.service#AccessDeniedException","message":"not authorized"}"#,
                ),
            )
        });
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&denied]);
        let err = table(client)
            .take("k", 1, 10_000, 5_000_000, Schedule::Idle)
            .await
            .expect_err("denied");
        assert!(matches!(err, RateTableError::Denied { .. }), "{err:?}");
        assert!(err.to_string().contains("dynamodb:UpdateItem"), "{err}");
    }
}
