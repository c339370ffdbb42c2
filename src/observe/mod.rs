//! What the function tells operators about itself: CloudWatch EMF metrics and
//! X-Ray subsegments.

pub(crate) mod logs;
pub(crate) mod metrics;
pub(crate) mod xray;
