//! Plain data, no AWS calls: the job format, the event shapes, the model
//! accounts, the records written for results, and the deadline.

pub mod deadline;
pub mod input;
pub mod job;
pub mod record;
pub(crate) mod schema_rules;
pub mod sources;
pub mod target;
