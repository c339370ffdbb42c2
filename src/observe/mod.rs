//! What the function tells operators about itself: CloudWatch EMF metrics and
//! X-Ray subsegments.

pub mod logs;
pub mod metrics;
pub mod xray;
