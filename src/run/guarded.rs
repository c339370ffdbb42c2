//! The guarded run, one implementation for every run mode: claim the job,
//! read back what an earlier run already finished, run the rest, and release
//! the claim if the run fails.
//!
//! The claim is written before anything is read back: a claim that is new
//! proves no run ever claimed this job, so there is no earlier result to look
//! for, and a new event costs one write instead of a read and a write. See
//! [`crate::ledger`] for where claims and results live.

use std::future::Future;
use std::time::{Duration, UNIX_EPOCH};

use crate::destination::Destinations;
use crate::domain::deadline::{now_epoch_ms, Deadline};
use crate::error::RelayError;
use crate::ledger::{Claim, ClaimToken, Ledger};

/// Why a guarded run did not produce a result.
#[derive(Debug)]
pub(crate) enum GuardError {
    /// Another invocation holds the job and has not finished it.
    Busy(RelayError),
    /// The claim could not be written or the earlier results read.
    Ledger(RelayError),
    /// The run itself failed (its claim has been released).
    Run(RelayError),
}

/// One job's claim in its ledger, held by one invocation until its deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Guard<'a> {
    ledger: &'a Ledger,
    sinks: &'a Destinations,
    job_id: &'a str,
    request_id: &'a str,
    deadline: Deadline,
}

impl<'a> Guard<'a> {
    /// The guard of `job_id` in `ledger` for the invocation `request_id`.
    pub(crate) fn new(
        ledger: &'a Ledger,
        sinks: &'a Destinations,
        job_id: &'a str,
        request_id: &'a str,
        deadline: Deadline,
    ) -> Self {
        Self {
            ledger,
            sinks,
            job_id,
            request_id,
            deadline,
        }
    }

    /// Runs `work` once the job is claimed, given what is already done.
    ///
    /// - A new claim: nothing can be done yet; `work` gets `D::default()`.
    /// - A claim taken over (an earlier one expired or was released) or no
    ///   ledger to claim in: `read_back` says what is done; when that is
    ///   everything (`is_complete`) the claim is let go before `work` runs,
    ///   since there is nothing left to guard.
    /// - A claim held elsewhere: `work` runs (unclaimed) only if everything is
    ///   done, to answer with the earlier result; otherwise [`GuardError::Busy`].
    ///
    /// The claim is released when `work` fails, so a retry need not wait for
    /// it to expire; on success it is kept until the deadline, and a
    /// redelivery meanwhile finds the finished result.
    pub(crate) async fn run<D, T, ReadBack, ReadBackFut, Work, WorkFut>(
        &self,
        read_back: ReadBack,
        is_complete: impl Fn(&D) -> bool,
        work: Work,
    ) -> Result<T, GuardError>
    where
        D: Default,
        ReadBack: FnOnce() -> ReadBackFut,
        ReadBackFut: Future<Output = Result<D, RelayError>>,
        Work: FnOnce(D) -> WorkFut,
        WorkFut: Future<Output = Result<T, RelayError>>,
    {
        let (done, claim) = match self.claim().await.map_err(GuardError::Ledger)? {
            Claimed::New(token) => (D::default(), Some(token)),
            Claimed::Again(token) => match read_back().await {
                Ok(done) if is_complete(&done) => {
                    self.release(token.as_ref()).await;
                    (done, None)
                }
                Ok(done) => (done, token),
                Err(err) => {
                    self.release(token.as_ref()).await;
                    return Err(GuardError::Ledger(err));
                }
            },
            // Held elsewhere: still running, or finished and redelivered
            // before that run's claim ran out.
            Claimed::Elsewhere(busy) => match read_back().await {
                Ok(done) if is_complete(&done) => (done, None),
                Ok(_) => return Err(GuardError::Busy(busy)),
                Err(err) => return Err(GuardError::Ledger(err)),
            },
        };
        let result = work(done).await;
        if result.is_err() {
            self.release(claim.as_ref()).await;
        }
        result.map_err(GuardError::Run)
    }

    /// Claims the job for this invocation until its deadline.
    async fn claim(&self) -> Result<Claimed, RelayError> {
        let claim = self
            .ledger
            .claim(
                self.sinks,
                self.job_id,
                self.request_id,
                self.deadline.epoch_ms(),
                now_epoch_ms(),
            )
            .await?;
        Ok(match claim {
            Claim::Held(token) if token.took_over => Claimed::Again(Some(token)),
            Claim::Held(token) => Claimed::New(token),
            Claim::Unguarded => Claimed::Again(None),
            Claim::Elsewhere { until_ms } => {
                tracing::warn!(
                    job_id = self.job_id,
                    "another invocation holds this job's claim; not running it twice"
                );
                Claimed::Elsewhere(RelayError::InProgress {
                    job_id: self.job_id.to_owned(),
                    until: until_ms.map(until_text).unwrap_or_default(),
                })
            }
        })
    }

    async fn release(&self, token: Option<&ClaimToken>) {
        self.ledger.release(self.sinks, token).await;
    }
}

/// What claiming a job says about earlier runs of it.
#[derive(Debug)]
enum Claimed {
    /// A claim written where none was: no run ever claimed this job, so none
    /// can have finished it. Nothing to read back.
    New(ClaimToken),
    /// Held after an earlier claim expired or was released, or not guarded
    /// at all (`None`): an earlier run may have finished the work, so read
    /// back before running.
    Again(Option<ClaimToken>),
    /// Another invocation holds the claim: the error to return when the work
    /// is not found finished.
    Elsewhere(RelayError),
}

/// ` until <RFC 3339 time>` for a claim's expiry.
fn until_text(until_ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(until_ms);
    format!(
        " until {}",
        aws_smithy_types::DateTime::from(at)
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::{Arc, Mutex};

    use aws_sdk_s3::operation::get_object::GetObjectOutput;
    use aws_sdk_s3::operation::put_object::PutObjectOutput;
    use aws_sdk_s3::primitives::ByteStream;
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
    use aws_smithy_runtime_api::http::{Response as HttpResponse, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use serde_json::{json, Value};

    use super::*;
    use crate::destination::{S3Destination, S3Location};

    /// What the S3 ledger saw: each claim write's condition and body.
    type Writes = Arc<Mutex<Vec<(&'static str, Value)>>>;

    /// An S3 ledger where the job's claim object is absent (`None`) or held
    /// until `Some(until_ms)`. Claim writes are recorded in `Writes`.
    fn ledger(existing_until: Option<u64>) -> (Ledger, Destinations, Writes) {
        let writes: Writes = Arc::default();
        let seen = Arc::clone(&writes);
        let absent = existing_until.is_none();
        let put: Rule = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(move |req| {
                let condition = if req.if_none_match().is_some() {
                    "absent"
                } else {
                    "unchanged"
                };
                let body = req
                    .body()
                    .bytes()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                seen.lock().expect("lock").push((condition, body));
                // A new claim is refused where one exists.
                absent || req.if_none_match().is_none()
            })
            .then_output(|| PutObjectOutput::builder().e_tag("\"mine\"").build());
        let refused: Rule = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(|req| req.if_none_match().is_some())
            .then_http_response(|| {
                HttpResponse::new(
                    StatusCode::try_from(412).expect("status"),
                    SdkBody::from("<Error><Code>PreconditionFailed</Code></Error>"),
                )
            });
        let current: Rule = mock!(aws_sdk_s3::Client::get_object).then_output(move || {
            GetObjectOutput::builder()
                .e_tag("\"theirs\"")
                .body(ByteStream::from(
                    json!({"request_id": "earlier", "until_ms": existing_until.unwrap_or(0)})
                        .to_string()
                        .into_bytes(),
                ))
                .build()
        });
        let s3 = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&put, &refused, &current]);
        let base = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let location = S3Location::parse("s3://results/relay/").expect("location");
        let ledger = Ledger::S3(S3Destination::new(s3.clone(), location));
        let sinks = Destinations::new(&base, false, None).with_s3_client(s3);
        (ledger, sinks, writes)
    }

    fn released(writes: &Writes) -> bool {
        writes
            .lock()
            .expect("lock")
            .iter()
            .any(|(condition, body)| *condition == "unchanged" && body["released"] == true)
    }

    /// A new claim proves no run finished the job: nothing is read back, the
    /// work starts from nothing, and on success the claim is kept.
    #[tokio::test]
    async fn a_new_claim_runs_from_nothing_without_reading_back() {
        let (ledger, sinks, writes) = ledger(None);
        let guard = Guard::new(
            &ledger,
            &sinks,
            "j",
            "req-1",
            Deadline::after(Duration::from_secs(30)),
        );
        let read = Cell::new(false);
        let answer = guard
            .run(
                || async {
                    read.set(true);
                    Ok(Some(1))
                },
                Option::is_some,
                |done: Option<u32>| async move { Ok(done) },
            )
            .await
            .expect("ran");
        assert_eq!(answer, None, "the work got D::default()");
        assert!(!read.get(), "nothing read back for a new claim");
        let writes = writes.lock().expect("lock");
        assert_eq!(writes.len(), 1, "one claim write, not released");
        assert_eq!(writes[0].0, "absent");
        assert_eq!(writes[0].1["request_id"], "req-1");
    }

    /// A redelivery after an earlier run finished (its claim expired) takes
    /// the claim over, reads back the finished work, lets the claim go and
    /// hands the work what is done.
    #[tokio::test]
    async fn a_redelivery_after_success_reads_back_and_lets_the_claim_go() {
        let (ledger, sinks, writes) = ledger(Some(0));
        let guard = Guard::new(
            &ledger,
            &sinks,
            "j",
            "req-2",
            Deadline::after(Duration::from_secs(30)),
        );
        let answer = guard
            .run(
                || async { Ok(Some("earlier result")) },
                Option::is_some,
                |done| async move { Ok(done) },
            )
            .await
            .expect("answered");
        assert_eq!(answer, Some("earlier result"));
        assert!(released(&writes), "a complete job needs no claim");
    }

    /// A claim held by a live invocation: unfinished work is refused as busy
    /// without running; finished work is answered without a claim.
    #[tokio::test]
    async fn a_claim_held_elsewhere_is_busy_unless_the_work_is_finished() {
        let until = now_epoch_ms() + 600_000;
        let (ledger, sinks, writes) = ledger(Some(until));
        let guard = Guard::new(
            &ledger,
            &sinks,
            "j",
            "req-3",
            Deadline::after(Duration::from_secs(30)),
        );
        let ran = Cell::new(false);
        let busy = guard
            .run(
                || async { Ok(None::<u32>) },
                Option::is_some,
                |_| async {
                    ran.set(true);
                    Ok(())
                },
            )
            .await;
        match busy {
            Err(GuardError::Busy(RelayError::InProgress { job_id, until })) => {
                assert_eq!(job_id, "j");
                assert!(until.starts_with(" until 20"), "{until}");
            }
            other => panic!("expected busy, got {other:?}"),
        }
        assert!(!ran.get());
        let finished = guard
            .run(
                || async { Ok(Some(7)) },
                Option::is_some,
                |done| async move { Ok(done) },
            )
            .await
            .expect("finished");
        assert_eq!(finished, Some(7));
        assert!(
            !released(&writes),
            "another invocation's claim is never touched"
        );
    }

    /// Work that fails releases its claim at once, so a retry need not wait
    /// for the deadline; the error comes back as the run's.
    #[tokio::test]
    async fn a_failed_run_releases_its_claim() {
        let (ledger, sinks, writes) = ledger(None);
        let guard = Guard::new(
            &ledger,
            &sinks,
            "j",
            "req-4",
            Deadline::after(Duration::from_secs(30)),
        );
        let failed = guard
            .run(
                || async { Ok(None::<u32>) },
                Option::is_some,
                |_| async {
                    Err::<(), _>(RelayError::InProgress {
                        job_id: "stand-in".into(),
                        until: String::new(),
                    })
                },
            )
            .await;
        assert!(matches!(failed, Err(GuardError::Run(_))), "{failed:?}");
        assert!(released(&writes), "released after the failure");
    }
}
