//! bedrock-relay: an AWS Lambda in account B that, for each EventBridge event,
//! assumes a role in account A (RoleA), runs the Bedrock work the event
//! describes (Converse or InvokeModel, one job or a batch) with RoleA's
//! credentials, and delivers the results in account B (S3, SQS, SNS,
//! EventBridge or DynamoDB).
//!
//! # Documentation
//!
//! The operator's documentation lives in `docs/`, one page per topic:
//! `jobs.md` (the job format, templates, batches and modes), `templates.md`,
//! `model-features.md`, `batch-jobs.md`, `destinations.md`, `failures.md`
//! (every error code), `configuration.md` (every `RELAY_*` variable and SAM
//! parameter), `deploy.md`, `operations.md`, `benchmark.md`, `lab.md` and
//! `architecture.md`. `tests/docs.rs` keeps them in step with the code.
//!
//! # Layout
//!
//! Layers run one way: a module uses only modules below it
//! (`../shared/tools/module-cycles src` prints `no cycles`). Read
//! `docs/architecture.md` first; top to bottom:
//!
//! - `main.rs` (thin), `lambda` ([`Relay`]: the Lambda wiring, the runtime's
//!   deadline as a `Deadline`) and [`cli`] (`invoke`, `doctor`, `trail`,
//!   `status`, `schema`).
//! - `run`: the run modes as peers (a single job, a batch in one invocation,
//!   a batch fanned out over the work queue, one chunk of it)
//!   over the same parts: planning, the guarded run (claim → read back → run
//!   → release), preparing a job, and its outcome (records, delivery,
//!   metrics). `error` gathers the other modules' errors into [`RelayError`]
//!   and maps them to Lambda's error type.
//! - `scheduling`: calling the model on time (pool choice, pacer, slots of
//!   a stated quota, latency book); `config`: `RELAY_*` environment → [`Config`].
//! - Adapters that call AWS: `credentials` (AssumeRole into RoleA under the
//!   identity cache), `bedrock` (Converse and InvokeModel, error classes),
//!   `documents` (S3 objects as content blocks; `formats`, `items` for
//!   `items_from` JSON Lines), `destination` (S3, SQS, SNS, EventBridge,
//!   DynamoDB; `batching`, `spill`), `ledger` (claims and finished work, S3
//!   and DynamoDB side by side), `work` (the work store and queue of
//!   fanned-out batches), `rates` (the send schedules of stated quotas that
//!   every instance shares, in DynamoDB).
//! - `template` (Jinja with an allowlist, see docs/templates.md), `schema`
//!   (the job as JSON Schema), `observe` (logs, EMF metrics, X-Ray
//!   subsegments).
//! - `aws`: what every adapter shares (trust store, SDK-error classes, the
//!   retry helper, S3 URIs and ARNs); `domain`: plain data (job, input,
//!   target, record, deadline, the sources a job may read).
//!
//! # Public API
//!
//! Every module but [`cli`] is private. What the binary and the tests use is
//! re-exported here: [`Config`] and [`Relay`] (the function), [`cli`] (the
//! operator commands), [`RelayError`]; the job and event types ([`Job`],
//! [`Input`], [`Payload`]) and the template engine ([`Renderer`], [`Scope`])
//! for the property tests; [`Destinations`], [`DestinationSpec`] and
//! [`Ledger`] for the lab's destination tests; the JSON Schema functions; and
//! the EMF and X-Ray constants the template and lab tests check against.
//!
//! The local lab (`lab/`, a separate crate never linked into the function)
//! emulates Bedrock and the Lambda Runtime API for the end-to-end tests in
//! `tests/`.

#![warn(missing_docs)]

mod aws;
mod bedrock;
pub mod cli;
mod config;
mod credentials;
mod destination;
mod documents;
mod domain;
mod error;
mod lambda;
mod ledger;
mod observe;
mod rates;
mod run;
mod scheduling;
mod schema;
mod template;
mod work;

pub use config::Config;
pub use destination::dynamodb::Table;
pub use destination::eventbridge::{DETAIL_TYPE as EVENT_DETAIL_TYPE, SOURCE as EVENT_SOURCE};
pub use destination::{DestinationError, DestinationSpec, Destinations, Outgoing, S3Location};
pub use domain::input::{Input, InputError, Payload, MAX_JSON_DEPTH};
pub use domain::job::{Job, JobError};
pub use domain::record::Usage;
pub use error::RelayError;
pub use lambda::Relay;
pub use ledger::Ledger;
pub use observe::logs::init as init_logs;
pub use observe::metrics::{
    cold_start_document, emf_document, JobMetrics, DEFAULT_NAMESPACE as DEFAULT_METRICS_NAMESPACE,
};
pub use observe::xray::DAEMON_HEADER as XRAY_DAEMON_HEADER;
pub use schema::{
    job_event_schema, job_schema, pretty as pretty_schema, JOB_EVENT_SCHEMA_FILE, JOB_SCHEMA_FILE,
};
pub use template::{Renderer, Scope};
