//! DynamoDB tables: one item per result, keyed by job id and item index, and
//! read back so a redelivered event skips the results already recorded. The
//! same layout serves as the idempotency ledger (`RELAY_IDEMPOTENCY_TABLE`).
//!
//! An item: `job_id` (S, partition key), `item` (N, sort key: the batch index,
//! 0 for a single job), `status` (S, the record's), `record` (S, the record's
//! JSON, or the pointer to where it was spilled) and `written_at` (S, RFC 3339).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use serde_json::Value;

use crate::aws::retry::Backoff;

use super::{Delivery, DestinationError, Outgoing, Prepared};
use crate::aws::uri::split_arn;

/// The largest item DynamoDB stores, in bytes (400 KB).
pub(crate) const ITEM_LIMIT: usize = 409_600;

/// Items per `BatchWriteItem` call.
const BATCH_ITEMS: usize = 25;

/// How often unprocessed items are sent again, and the waits between (full
/// jitter under a ceiling from 50 ms, doubled each time): throttling that
/// outlasts ~0.75 s of ceilings is left to the event's retry.
const UNPROCESSED_RETRIES: u32 = 4;
const UNPROCESSED_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(50), Duration::from_millis(400));

/// `written_at` is at most this long (`2026-11-28T12:00:00.123456789Z` is 30);
/// counted in an item's size before the time is known.
const WRITTEN_AT_BYTES: usize = 32;

const ARN_FORM: &str = "arn:<partition>:dynamodb:<region>:<account id>:table/<table name>";

/// A table, by ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The table ARN, or the name of a table given by name
    /// ([`Table::from_name_or_arn`]); the API's `TableName` takes either, and
    /// only the ARN reaches a table in another account.
    pub arn: String,
    /// The table name.
    pub name: String,
}

impl Table {
    /// Parses a table ARN.
    pub fn parse(text: &str) -> Result<Self, String> {
        let arn = split_arn(text, "dynamodb", ARN_FORM)?;
        let name = arn
            .resource
            .strip_prefix("table/")
            .ok_or_else(|| format!("`{}` is not a table; expected {ARN_FORM}", arn.resource))?;
        check_name(name)?;
        Ok(Self {
            arn: text.to_owned(),
            name: name.to_owned(),
        })
    }

    /// A table ARN, or a bare table name (in the function's own account and
    /// region), as `RELAY_IDEMPOTENCY_TABLE` may give it.
    pub fn from_name_or_arn(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with("arn:") {
            return Self::parse(text);
        }
        check_name(text)?;
        Ok(Self {
            arn: text.to_owned(),
            name: text.to_owned(),
        })
    }

    /// The resource a denial asks to grant on: the ARN, or its shape for a
    /// table given by name.
    fn resource(&self) -> String {
        if self.arn.starts_with("arn:") {
            self.arn.clone()
        } else {
            format!("arn:aws:dynamodb:<region>:<account id>:table/{}", self.name)
        }
    }

    pub(crate) fn delivery(&self, action: &'static str) -> Delivery {
        Delivery {
            destination: self.arn.clone(),
            action,
            resource: self.resource(),
            what: format!("table `{}`", self.name),
            service: "DynamoDB",
        }
    }
}

/// Table names are 3-255 letters, digits, `_`, `-` and `.`.
fn check_name(name: &str) -> Result<(), String> {
    let ok = (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a table name (3-255 letters, digits, `_`, `-` and `.`); expected a name or {ARN_FORM}"
        ))
    }
}

/// The sort key of a result: its batch index, 0 for a single job, and -1 for
/// a batch's own record (a failure of the whole batch), so it never takes the
/// place of item 0's result.
fn item_number(outgoing: &Outgoing) -> i64 {
    match outgoing.index {
        Some(index) => i64::try_from(index).unwrap_or(i64::MAX),
        None if outgoing.body.get("batch") == Some(&Value::Bool(true)) => -1,
        None => 0,
    }
}

/// The record's `status`, when it has a string one.
fn status_of(body: &Value) -> Option<&str> {
    body.get("status").and_then(Value::as_str)
}

/// An item's size as DynamoDB counts it, near enough: attribute names and
/// string values in UTF-8 bytes, a number as its digits (DynamoDB stores
/// about half that), and the longest `written_at`.
pub(crate) fn item_size(outgoing: &Outgoing, text: &str) -> usize {
    let status = status_of(&outgoing.body).map_or(0, |s| "status".len() + s.len());
    "job_id".len()
        + outgoing.job_id.len()
        + "item".len()
        + item_number(outgoing).to_string().len()
        + status
        + "record".len()
        + text.len()
        + "written_at".len()
        + WRITTEN_AT_BYTES
}

/// Writes one item per prepared result; `table#job#index` for each, in order.
/// Two results with the same key leave the later one (DynamoDB refuses a batch
/// that writes one key twice, so the earlier is not sent).
pub(crate) async fn send(
    client: &aws_sdk_dynamodb::Client,
    table: &Table,
    ready: &[Prepared<'_>],
) -> Result<Vec<String>, DestinationError> {
    let delivery = table.delivery("dynamodb:BatchWriteItem");
    let written_at = crate::domain::record::now_rfc3339();
    let mut last_of_key: HashMap<(&str, i64), usize> = HashMap::new();
    for (position, prepared) in ready.iter().enumerate() {
        let outgoing = prepared.outgoing;
        last_of_key.insert((outgoing.job_id.as_str(), item_number(outgoing)), position);
    }
    let mut requests = Vec::with_capacity(last_of_key.len());
    for (position, prepared) in ready.iter().enumerate() {
        let outgoing = prepared.outgoing;
        if last_of_key.get(&(outgoing.job_id.as_str(), item_number(outgoing))) != Some(&position) {
            continue;
        }
        if crate::domain::record::is_final_status(status_of(&outgoing.body)) {
            requests.push(put_request(prepared, &written_at).map_err(|e| delivery.unbuildable(e))?);
        } else {
            put_unless_succeeded(client, table, &delivery, prepared, &written_at).await?;
        }
    }
    let mut requests = requests.into_iter().peekable();
    while requests.peek().is_some() {
        let chunk: Vec<WriteRequest> = requests.by_ref().take(BATCH_ITEMS).collect();
        write_chunk(client, table, &delivery, chunk).await?;
    }
    Ok(ready
        .iter()
        .map(|p| {
            format!(
                "{}#{}#{}",
                table.name,
                p.outgoing.job_id,
                item_number(p.outgoing)
            )
        })
        .collect())
}

/// Writes a result that is not a success with `PutItem`, on the condition
/// that no success is stored under its key: a failure (a retry's, or one
/// forged by a sender) never overwrites a success. `BatchWriteItem` takes no
/// conditions, so these go one by one; they are the rare ones.
async fn put_unless_succeeded(
    client: &aws_sdk_dynamodb::Client,
    table: &Table,
    delivery: &Delivery,
    prepared: &Prepared<'_>,
    written_at: &str,
) -> Result<(), DestinationError> {
    let item = item_of(prepared, written_at);
    let result = client
        .put_item()
        .table_name(&table.arn)
        .set_item(Some(item))
        .condition_expression(
            "attribute_not_exists(job_id) OR NOT (#status IN (:succeeded, :blocked))",
        )
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":succeeded", AttributeValue::S("succeeded".into()))
        .expression_attribute_values(":blocked", AttributeValue::S("blocked".into()))
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
        {
            tracing::info!(
                job_id = %prepared.outgoing.job_id,
                item = item_number(prepared.outgoing),
                "a success is already stored; the failure is not written over it"
            );
            Ok(())
        }
        Err(err) => Err(delivery.failed(err)),
    }
}

fn put_request(
    prepared: &Prepared<'_>,
    written_at: &str,
) -> Result<WriteRequest, aws_sdk_dynamodb::error::BuildError> {
    let put = PutRequest::builder()
        .set_item(Some(item_of(prepared, written_at)))
        .build()?;
    Ok(WriteRequest::builder().put_request(put).build())
}

fn item_of(prepared: &Prepared<'_>, written_at: &str) -> HashMap<String, AttributeValue> {
    let outgoing = prepared.outgoing;
    let mut item = HashMap::from([
        (
            "job_id".to_owned(),
            AttributeValue::S(outgoing.job_id.clone()),
        ),
        (
            "item".to_owned(),
            AttributeValue::N(item_number(outgoing).to_string()),
        ),
        (
            "record".to_owned(),
            AttributeValue::S(prepared.text.clone()),
        ),
        (
            "written_at".to_owned(),
            AttributeValue::S(written_at.to_owned()),
        ),
    ]);
    if let Some(status) = status_of(&outgoing.body) {
        item.insert("status".to_owned(), AttributeValue::S(status.to_owned()));
    }
    item
}

/// One `BatchWriteItem` of up to 25 items, sending `UnprocessedItems` again
/// with a doubling wait until none are left or the retries run out.
async fn write_chunk(
    client: &aws_sdk_dynamodb::Client,
    table: &Table,
    delivery: &Delivery,
    mut requests: Vec<WriteRequest>,
) -> Result<(), DestinationError> {
    let mut waits = UNPROCESSED_BACKOFF.waits();
    for retry in 0..=UNPROCESSED_RETRIES {
        if retry > 0 {
            tokio::time::sleep(waits.next_wait()).await;
        }
        let output = client
            .batch_write_item()
            .request_items(&table.arn, requests)
            .send()
            .await
            .map_err(|err| delivery.failed(err))?;
        // Keyed by the table as named in the request; there is only this one.
        requests = output
            .unprocessed_items
            .unwrap_or_default()
            .into_values()
            .flatten()
            .collect();
        if requests.is_empty() {
            return Ok(());
        }
    }
    Err(delivery.unavailable(format!(
        "{} items were still unprocessed after {UNPROCESSED_RETRIES} retries \
         (the table's write capacity is exhausted)",
        requests.len()
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use aws_sdk_dynamodb::operation::batch_write_item::{
        BatchWriteItemError, BatchWriteItemOutput,
    };
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use aws_smithy_types::error::ErrorMetadata;
    use serde_json::json;

    use super::*;

    const ARN: &str = "arn:aws:dynamodb:us-east-1:222222222222:table/relay-results";

    fn outgoing(job_id: &str, index: Option<usize>, status: &str) -> Outgoing {
        Outgoing {
            job_id: job_id.into(),
            index,
            group: job_id.into(),
            body: json!({"job_id": job_id, "status": status, "index": index}),
        }
    }

    /// Writes `results` to the table at [`ARN`], unspilled; their references.
    async fn write_all(client: &aws_sdk_dynamodb::Client, results: &[Outgoing]) -> Vec<String> {
        send(
            client,
            &Table::parse(ARN).expect("arn"),
            &Prepared::unspilled(results),
        )
        .await
        .expect("written")
    }

    type Calls = Arc<Mutex<Vec<Vec<WriteRequest>>>>;

    /// A BatchWriteItem mock recording each call's requests, leaving the
    /// first `unprocessed` of each of the first `calls_unprocessed` calls.
    fn writing(unprocessed: usize, calls_unprocessed: usize) -> (aws_smithy_mocks::Rule, Calls) {
        let calls: Calls = Arc::default();
        let seen = calls.clone();
        let rule =
            mock!(aws_sdk_dynamodb::Client::batch_write_item).then_compute_output(move |req| {
                let requests: Vec<WriteRequest> = req
                    .request_items()
                    .map(|items| items.values().flatten().cloned().collect())
                    .unwrap_or_default();
                let call = seen.lock().expect("lock").len();
                seen.lock().expect("lock").push(requests.clone());
                let mut output = BatchWriteItemOutput::builder();
                if call < calls_unprocessed {
                    let left: Vec<WriteRequest> = requests.into_iter().take(unprocessed).collect();
                    output = output.unprocessed_items(ARN, left);
                }
                output.build()
            });
        (rule, calls)
    }

    fn item_of(request: &WriteRequest) -> &HashMap<String, AttributeValue> {
        request.put_request().expect("put").item()
    }

    #[test]
    fn table_arns_and_names_parse() {
        let table = Table::parse(ARN).expect("arn");
        assert_eq!(
            (table.arn.as_str(), table.name.as_str()),
            (ARN, "relay-results")
        );
        let by_name = Table::from_name_or_arn("relay-ledger").expect("name");
        assert_eq!(
            (by_name.arn.as_str(), by_name.name.as_str()),
            ("relay-ledger", "relay-ledger")
        );
        assert_eq!(Table::from_name_or_arn(ARN).expect("arn"), table);
        for (text, expected) in [
            (
                "arn:aws:dynamodb:us-east-1:222222222222:relay",
                "not a table",
            ),
            (
                "arn:aws:dynamodb:us-east-1:222222222222:table/t/stream/x",
                "not a table name",
            ),
            (
                "arn:aws:dynamodb:us-east-1:222222222222:table/ab",
                "not a table name",
            ),
            (
                "arn:aws:s3:us-east-1:222222222222:table/abc",
                "not `dynamodb`",
            ),
        ] {
            let err = Table::parse(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
        assert!(Table::from_name_or_arn("bad name").is_err());
    }

    #[tokio::test]
    async fn items_carry_the_key_status_record_and_time_in_chunks_of_25() {
        let (rule, calls) = writing(0, 0);
        let failure = mock!(aws_sdk_dynamodb::Client::put_item)
            .match_requests(|req| {
                req.condition_expression()
                    == Some(
                        "attribute_not_exists(job_id) OR NOT (#status IN (:succeeded, :blocked))",
                    )
                    && req
                        .item()
                        .is_some_and(|i| i["item"] == AttributeValue::N("0".into()))
            })
            .then_output(|| {
                aws_sdk_dynamodb::operation::put_item::PutItemOutput::builder().build()
            });
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&rule, &failure]);
        let mut results: Vec<Outgoing> = (0..30)
            .map(|i| outgoing("b", Some(i), "succeeded"))
            .collect();
        results.push(outgoing("single", None, "failed"));
        let refs = write_all(&client, &results).await;
        assert_eq!(refs[3], "relay-results#b#3");
        assert_eq!(refs[30], "relay-results#single#0");
        assert_eq!(
            failure.num_calls(),
            1,
            "the failure is a conditional PutItem"
        );
        let calls = calls.lock().expect("lock");
        assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), [25, 5]);
        let item = item_of(&calls[0][3]);
        assert_eq!(item["job_id"], AttributeValue::S("b".into()));
        assert_eq!(item["item"], AttributeValue::N("3".into()));
        assert_eq!(item["status"], AttributeValue::S("succeeded".into()));
        assert_eq!(
            item["record"],
            AttributeValue::S(results[3].body.to_string())
        );
        let written_at = item["written_at"].as_s().expect("written_at");
        assert!(
            written_at.len() <= WRITTEN_AT_BYTES && written_at.ends_with('Z'),
            "{written_at}"
        );
    }

    /// A batch's own failure record (the whole batch failed) is stored at
    /// item -1, beside its items, never in item 0's place.
    #[tokio::test]
    async fn a_batch_level_record_never_takes_item_zeros_place() {
        let failure = mock!(aws_sdk_dynamodb::Client::put_item)
            .match_requests(|req| {
                req.item()
                    .is_some_and(|i| i["item"] == AttributeValue::N("-1".into()))
            })
            .then_output(|| {
                aws_sdk_dynamodb::operation::put_item::PutItemOutput::builder().build()
            });
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&failure]);
        let mut batch_failure = outgoing("nightly", None, "failed");
        batch_failure.body["batch"] = json!(true);
        let refs = write_all(&client, &[batch_failure]).await;
        assert_eq!(refs, ["relay-results#nightly#-1"]);
        assert_eq!(failure.num_calls(), 1);
    }

    /// A failure for a key that already holds a success is not written, and
    /// that is not an error: the success stands.
    #[tokio::test]
    async fn a_failure_never_overwrites_a_stored_success() {
        use aws_sdk_dynamodb::operation::put_item::PutItemError;
        use aws_sdk_dynamodb::types::error::ConditionalCheckFailedException;
        let refused = mock!(aws_sdk_dynamodb::Client::put_item).then_error(|| {
            PutItemError::ConditionalCheckFailedException(
                ConditionalCheckFailedException::builder().build(),
            )
        });
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&refused]);
        let refs = write_all(&client, &[outgoing("done", None, "failed")]).await;
        assert_eq!(refs, ["relay-results#done#0"]);
        assert_eq!(refused.num_calls(), 1);
    }

    #[tokio::test]
    async fn a_key_given_twice_is_written_once_with_the_later_record() {
        let (rule, calls) = writing(0, 0);
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&rule]);
        let results = [
            outgoing("j", Some(1), "failed"),
            outgoing("j", Some(1), "succeeded"),
        ];
        let refs = write_all(&client, &results).await;
        assert_eq!(refs, ["relay-results#j#1", "relay-results#j#1"]);
        let calls = calls.lock().expect("lock");
        assert_eq!(calls[0].len(), 1);
        assert_eq!(
            item_of(&calls[0][0])["status"],
            AttributeValue::S("succeeded".into())
        );
    }

    #[tokio::test]
    async fn unprocessed_items_are_sent_again_until_done() {
        let (rule, calls) = writing(2, 2);
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&rule]);
        let results: Vec<Outgoing> = (0..5)
            .map(|i| outgoing("j", Some(i), "succeeded"))
            .collect();
        write_all(&client, &results).await;
        let calls = calls.lock().expect("lock");
        assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), [5, 2, 2]);
        assert_eq!(item_of(&calls[2][1])["item"], AttributeValue::N("1".into()));
    }

    #[tokio::test]
    async fn items_left_unprocessed_after_the_retries_are_unavailable() {
        let (rule, calls) = writing(1, usize::MAX);
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&rule]);
        let results = [outgoing("j", None, "succeeded")];
        let err = send(
            &client,
            &Table::parse(ARN).expect("arn"),
            &Prepared::unspilled(&results),
        )
        .await
        .expect_err("unprocessed");
        assert_eq!(err.code(), "DestinationUnavailable", "{err}");
        assert_eq!(
            calls.lock().expect("lock").len(),
            1 + UNPROCESSED_RETRIES as usize
        );
    }

    #[tokio::test]
    async fn errors_name_the_permission_or_the_missing_table() {
        let results = [outgoing("j", None, "succeeded")];
        for (table, code, expected, text) in [
            (
                ARN,
                "AccessDeniedException",
                "DestinationDenied",
                format!("dynamodb:BatchWriteItem on {ARN}"),
            ),
            (
                ARN,
                "ResourceNotFoundException",
                "DestinationMissing",
                "table `relay-results`".to_owned(),
            ),
            (
                "ledger",
                "AccessDeniedException",
                "DestinationDenied",
                "<account id>:table/ledger".to_owned(),
            ),
            (
                ARN,
                "ProvisionedThroughputExceededException",
                "DestinationUnavailable",
                "ProvisionedThroughput".to_owned(),
            ),
        ] {
            let rule = mock!(aws_sdk_dynamodb::Client::batch_write_item).then_error(move || {
                BatchWriteItemError::generic(
                    ErrorMetadata::builder().code(code).message("no").build(),
                )
            });
            let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&rule]);
            let table = Table::from_name_or_arn(table).expect("table");
            let err = send(&client, &table, &Prepared::unspilled(&results))
                .await
                .expect_err(code);
            assert_eq!(err.code(), expected, "{code}: {err}");
            assert!(err.to_string().contains(&text), "{err}");
        }
    }
}
