//! DynamoDB tables: one item per result, keyed by job id and item index
//! (SKELETON — to be implemented).

/// A table, by ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The table ARN.
    pub arn: String,
    /// The table name.
    pub name: String,
}

impl Table {
    /// Parses a table ARN.
    pub fn parse(text: &str) -> Result<Self, String> {
        Err(format!("`{text}`: DynamoDB destinations are not implemented yet"))
    }
}
