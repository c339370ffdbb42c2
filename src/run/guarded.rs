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
