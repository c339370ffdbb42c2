//! SNS topics: one message per result (SKELETON — to be implemented).

/// A topic, by ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// The topic ARN.
    pub arn: String,
    /// A FIFO topic (`.fifo`).
    pub fifo: bool,
}

impl Topic {
    /// Parses a topic ARN.
    pub fn parse(text: &str) -> Result<Self, String> {
        Err(format!(
            "`{text}`: SNS destinations are not implemented yet"
        ))
    }
}
