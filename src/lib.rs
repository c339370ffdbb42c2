//! bedrock-relay: an AWS Lambda in account B that, for each EventBridge event,
//! assumes a role in account A (RoleA), runs the Bedrock work the event
//! describes (Converse or InvokeModel, one job or a batch) with RoleA's
//! credentials, and delivers the results in account B (S3, SQS, SNS,
//! EventBridge or DynamoDB).
//!
//! # Layout
//!
//! Layers run one way: a module uses only modules below it
//! (`../shared/tools/module-cycles src` prints `no cycles`). Read
//! `docs/architecture.md` first; top to bottom:
//!
//! - `main.rs` (thin), [`lambda`] ([`Relay`]: the Lambda wiring, the
//!   runtime's deadline as a [`domain::deadline::Deadline`]) and [`cli`]
//!   (`invoke`, `doctor`, `trail`, `schema`).
//! - `run` (crate-private): the run modes as peers (a single job, a batch in
//!   one invocation) over the same parts: planning, the guarded run (claim →
//!   read back → run → release), preparing a job, and its outcome (records,
//!   delivery, metrics). [`error`] gathers the other modules' errors into
//!   [`RelayError`] and maps them to Lambda's error type.
//! - `scheduling` (crate-private): calling the model on time (pool choice,
//!   pacer, latency book); [`config`]: `RELAY_*` environment → [`Config`].
//! - Adapters that call AWS: [`credentials`] (AssumeRole into RoleA under the
//!   identity cache), [`bedrock`] (Converse and InvokeModel, error classes),
//!   [`documents`] (S3 objects as content blocks, `items_from` JSON Lines),
//!   [`destination`] (S3, SQS, SNS, EventBridge, DynamoDB, spill), [`ledger`]
//!   (claims and finished work, S3 and DynamoDB side by side).
//! - [`template`] (locked-down Jinja), [`schema`] (the job as JSON Schema),
//!   [`observe`] (EMF metrics, X-Ray subsegments).
//! - [`aws`]: what every adapter shares (trust store, SDK-error classes,
//!   the retry helper, S3 URIs and ARNs); [`domain`]: plain data (job, input,
//!   target, record, deadline).
//!
//! The local lab (`lab/`, a separate crate never linked into the function)
//! emulates Bedrock and the Lambda Runtime API for the end-to-end tests in
//! `tests/`.

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
pub use observe::logs::init as init_logs;
