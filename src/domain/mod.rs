//! Plain data, no AWS calls: the job format, the event shapes, the model
//! accounts, the records written for results, the deadline, the model
//! features a job may ask for, and the batch-job mode's names and Bedrock
//! output shapes.

pub(crate) mod batch_job;
pub(crate) mod batch_output;
pub(crate) mod batch_state;
pub(crate) mod chunks;
pub(crate) mod deadline;
pub(crate) mod features;
pub(crate) mod input;
pub(crate) mod job;
pub(crate) mod manifest;
pub(crate) mod record;
pub(crate) mod schema_rules;
pub(crate) mod sources;
pub(crate) mod target;
