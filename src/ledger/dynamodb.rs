//! The ledger's DynamoDB side: results and claims in a table with the
//! destination layout (`job_id` + `item`, see [`crate::destination::dynamodb`]),
//! the destination table itself or `RELAY_IDEMPOTENCY_TABLE`. A job's claim is
//! the item below every index (`item` = -1).

use std::collections::BTreeMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;

use crate::destination::dynamodb::Table;
use crate::destination::DestinationError;

/// The results recorded as settled for `job_id` (succeeded, or failed for
/// good), by item index (0 for a single job): each item's `record` parsed,
/// which for a spilled result is the pointer object. Reads are consistent, so
/// a write just made is seen. Items whose record does not parse are left out
/// (and so done again).
pub(crate) async fn settled(
    client: &aws_sdk_dynamodb::Client,
    table: &Table,
    job_id: &str,
) -> Result<BTreeMap<usize, Value>, DestinationError> {
    let delivery = table.delivery("dynamodb:Query");
    let mut found = BTreeMap::new();
    let mut start_key = None;
    loop {
        let output = client
            .query()
            .table_name(&table.arn)
            .key_condition_expression("job_id = :id")
            .expression_attribute_values(":id", AttributeValue::S(job_id.to_owned()))
            .consistent_read(true)
            .set_exclusive_start_key(start_key)
            .send()
            .await
            .map_err(|err| delivery.failed(err))?;
        for item in output.items() {
            let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok());
            let succeeded = match text("status").map(String::as_str) {
                Some("succeeded" | "blocked") => true,
                Some("failed") => false,
                _ => continue,
            };
            let index = item
                .get("item")
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<usize>().ok());
            let record = text("record").and_then(|r| serde_json::from_str::<Value>(r).ok());
            match (index, record) {
                (Some(index), Some(record)) if succeeded || super::is_settled(&record) => {
                    found.insert(index, record);
                }
                (Some(_), Some(_)) => {}
                _ => tracing::warn!(
                    table = %table.arn,
                    job_id,
                    "a succeeded item has no readable `item` or `record`; it will be done again"
                ),
            }
        }
        match output.last_evaluated_key {
            Some(key) if !key.is_empty() => start_key = Some(key),
            _ => return Ok(found),
        }
    }
}

/// The sort key of a job's claim item: below every item index.
const CLAIM_ITEM: &str = "-1";

/// Claims `job_id` for `request_id` until `until_ms` (epoch ms): one
/// conditional write of the claim item (`item` = -1, `status` = `claimed`),
/// which succeeds when there is no claim or the last one has expired. Returns
/// whether this invocation now holds the job.
pub(crate) async fn claim(
    client: &aws_sdk_dynamodb::Client,
    table: &Table,
    job_id: &str,
    request_id: &str,
    until_ms: u64,
    now_ms: u64,
) -> Result<Option<bool>, DestinationError> {
    let result = client
        .put_item()
        .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
        .table_name(&table.arn)
        .item("job_id", AttributeValue::S(job_id.to_owned()))
        .item("item", AttributeValue::N(CLAIM_ITEM.into()))
        .item("status", AttributeValue::S("claimed".into()))
        .item("request_id", AttributeValue::S(request_id.to_owned()))
        .item("claim_until", AttributeValue::N(until_ms.to_string()))
        .condition_expression("attribute_not_exists(job_id) OR claim_until < :now")
        .expression_attribute_values(":now", AttributeValue::N(now_ms.to_string()))
        .send()
        .await;
    match result {
        Ok(output) => Ok(Some(output.attributes.is_some_and(|old| !old.is_empty()))),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
        {
            Ok(None)
        }
        Err(err) => Err(table.delivery("dynamodb:PutItem").failed(err)),
    }
}

/// Ends `request_id`'s claim on `job_id` early, so a retry need not wait for
/// the claim to expire. Only this invocation's own claim is touched.
pub(crate) async fn release(
    client: &aws_sdk_dynamodb::Client,
    table: &Table,
    job_id: &str,
    request_id: &str,
) -> Result<(), DestinationError> {
    let result = client
        .update_item()
        .table_name(&table.arn)
        .key("job_id", AttributeValue::S(job_id.to_owned()))
        .key("item", AttributeValue::N(CLAIM_ITEM.into()))
        .update_expression("SET claim_until = :zero")
        .condition_expression("request_id = :me")
        .expression_attribute_values(":zero", AttributeValue::N("0".into()))
        .expression_attribute_values(":me", AttributeValue::S(request_id.to_owned()))
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
        {
            Ok(())
        }
        Err(err) => Err(table.delivery("dynamodb:UpdateItem").failed(err)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use aws_sdk_dynamodb::operation::query::QueryOutput;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use serde_json::json;

    use super::*;

    const ARN: &str = "arn:aws:dynamodb:us-east-1:222222222222:table/relay-results";

    #[tokio::test]
    async fn succeeded_reads_every_page_and_keeps_succeeded_items() {
        let item = |index: &str, status: &str, record: &str| {
            HashMap::from([
                ("job_id".to_owned(), AttributeValue::S("j".into())),
                ("item".to_owned(), AttributeValue::N(index.into())),
                ("status".to_owned(), AttributeValue::S(status.into())),
                ("record".to_owned(), AttributeValue::S(record.into())),
            ])
        };
        let first = item("0", "succeeded", r#"{"n":0}"#);
        let pages = mock!(aws_sdk_dynamodb::Client::query)
            .match_requests(|req| {
                req.consistent_read() == Some(true)
                    && req.key_condition_expression() == Some("job_id = :id")
                    && req.expression_attribute_values().and_then(|v| v.get(":id"))
                        == Some(&AttributeValue::S("j".into()))
            })
            .sequence()
            .output(move || {
                QueryOutput::builder()
                    .items(first.clone())
                    .items(item("1", "failed", r#"{"n":1}"#))
                    .last_evaluated_key("job_id", AttributeValue::S("j".into()))
                    .last_evaluated_key("item", AttributeValue::N("1".into()))
                    .build()
            })
            .output(move || {
                QueryOutput::builder()
                    .items(item("2", "succeeded", r#"{"spilled_to":"s3://b/k"}"#))
                    .items(item("3", "succeeded", "not json"))
                    .build()
            })
            .build();
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&pages]);
        let found = settled(&client, &Table::parse(ARN).expect("arn"), "j")
            .await
            .expect("read");
        assert_eq!(
            found,
            BTreeMap::from([(0, json!({"n": 0})), (2, json!({"spilled_to": "s3://b/k"}))])
        );
        assert_eq!(pages.num_calls(), 2);
    }
}
