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
    /// A table name or ARN (for `RELAY_IDEMPOTENCY_TABLE`).
    pub fn from_name_or_arn(text: &str) -> Result<Self, String> {
        Err(format!("`{text}`: DynamoDB tables are not implemented yet"))
    }

    /// Parses a table ARN.
    pub fn parse(text: &str) -> Result<Self, String> {
        Err(format!(
            "`{text}`: DynamoDB destinations are not implemented yet"
        ))
    }
}

/// STUB: the succeeded results of a job, by item index.
pub async fn succeeded(
    _client: &aws_sdk_dynamodb::Client,
    table: &Table,
    _job_id: &str,
) -> Result<std::collections::BTreeMap<usize, serde_json::Value>, super::DestinationError> {
    Err(super::DestinationError::Invalid {
        destination: table.arn.clone(),
        reason: "not implemented yet".into(),
    })
}
