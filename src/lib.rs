//! bedrock-relay: an AWS Lambda in account B that, for each EventBridge event,
//! assumes a role in account A (RoleA), runs the Bedrock work the event
//! describes (Converse or InvokeModel, one job or a batch) with RoleA's
//! credentials, and delivers the results in account B (S3, SQS, SNS,
//! EventBridge or DynamoDB).
//!
//! # Layout
//!
//! Data flows one way, one module a step:
//!
//! - [`config`]: `RELAY_*` environment → [`Config`], validated at cold start.
//! - [`input`]: the three event shapes (job event, other envelope + default
//!   job, bare job) → [`input::Input`]; the raw-payload guard.
//! - [`job`]: the job format, strict parsing and validation; [`schema`]: the
//!   same as a JSON Schema.
//! - [`template`]: Jinja templates in job fields, locked down.
//! - [`target`]: the model accounts (aliases → RoleA, region, allowlist) and
//!   the choice of one for a job.
//! - [`credentials`]: AssumeRole into RoleA with SourceIdentity, as a
//!   credentials provider under the SDK's identity cache.
//! - [`documents`]: the S3 objects a job reads with account B's credentials
//!   (`documents` as Converse document/image blocks, `items_from` JSON Lines).
//! - [`bedrock`]: the RoleA-signed Bedrock client, Converse, error classes.
//! - `pacer` (crate-private): a batch's send rate per model and account, learned from
//!   throttles.
//! - [`batch`]: one job per item, bounded concurrency, deadline-aware.
//! - [`ledger`]: idempotency: finished work read back, and claims against
//!   concurrent duplicates.
//! - [`record`]: the result/error record, and a batch's item lines.
//! - [`metrics`]: CloudWatch EMF metrics, one line per job.
//! - [`xray`]: an X-Ray subsegment per AWS call (STS, Bedrock, destinations),
//!   sent to Lambda's X-Ray daemon when the invocation is sampled.
//! - [`destination`]: delivering results with account B's credentials: S3,
//!   SQS, SNS, EventBridge, DynamoDB, spill to S3.
//! - [`error`]: [`RelayError`] and its mapping to Lambda's error type.
//! - [`relay`]: one invocation end to end; the Lambda runtime wiring.
//! - [`tls`]: the CAs the HTTPS client trusts (Amazon Trust Services by default).
//! - [`cli`]: the same binary outside Lambda: `invoke`, `doctor`, `trail`.
//! - [`trail`]: pairing account B's AssumeRole events with the target
//!   accounts' Bedrock events from CloudTrail.
//!
//! `main.rs` only starts tracing, reads the config and serves. The local lab
//! (`lab/`, a separate crate) emulates Bedrock and the Lambda Runtime API for
//! the end-to-end tests in `tests/`.

#![warn(missing_docs)]

pub mod aws;
pub mod bedrock;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod destination;
pub mod documents;
pub mod domain;
pub mod error;
pub mod lambda;
pub mod ledger;
pub mod observe;
mod run;
pub(crate) mod scheduling;
pub mod schema;
pub mod template;

pub use config::Config;
pub use error::RelayError;
pub use lambda::Relay;
