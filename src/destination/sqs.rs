//! SQS queues: one message per result (SKELETON — to be implemented).

/// A queue, by URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    /// The queue URL the API takes.
    pub url: String,
    /// A FIFO queue (`.fifo`): messages carry group and deduplication ids.
    pub fifo: bool,
}

impl Queue {
    /// Parses a queue URL or ARN.
    pub fn parse(text: &str) -> Result<Self, String> {
        Err(format!(
            "`{text}`: SQS destinations are not implemented yet"
        ))
    }
}
