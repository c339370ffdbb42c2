//! EventBridge buses: one event per result (`Source` `bedrock-relay`,
//! `DetailType` `Bedrock Relay Result`, the record as `Detail`), put with
//! `PutEvents` in runs within the API's entry and size limits.

use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use super::{BatchService, Delivery, DestinationError, EntryOutcome, Outgoing, Prepared};
use crate::aws::uri::split_arn;

/// Every event's `Source`: what rules match on.
pub const SOURCE: &str = "bedrock-relay";
/// Every event's `DetailType`.
pub const DETAIL_TYPE: &str = "Bedrock Relay Result";

/// The largest entry, and the most one `PutEvents` call carries, in bytes.
pub(crate) const ENTRY_LIMIT: usize = 262_144;

const ARN_FORM: &str = "arn:<partition>:events:<region>:<account id>:event-bus/<bus name>";

/// An event bus, by ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bus {
    /// The bus ARN (PutEvents' `EventBusName` takes it).
    pub arn: String,
    /// The events' `detail-type`: [`DETAIL_TYPE`] for results.
    pub detail_type: &'static str,
}

impl Bus {
    /// Parses a bus ARN.
    pub fn parse(text: &str) -> Result<Self, String> {
        let arn = split_arn(text, "events", ARN_FORM)?;
        let name = arn.resource.strip_prefix("event-bus/").ok_or_else(|| {
            format!(
                "`{}` is not an event bus; expected {ARN_FORM}",
                arn.resource
            )
        })?;
        // Partner buses (`aws.partner/...`) have slashes in their names.
        let ok = !name.is_empty()
            && name.len() <= 256
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
        if !ok {
            return Err(format!(
                "`{name}` is not an event bus name (1-256 letters, digits and /._-); expected {ARN_FORM}"
            ));
        }
        Ok(Self {
            arn: text.to_owned(),
            detail_type: DETAIL_TYPE,
        })
    }

    /// The same bus, for events of `detail_type`.
    pub fn for_events(mut self, detail_type: &'static str) -> Self {
        self.detail_type = detail_type;
        self
    }

    /// The bus's name.
    pub fn name(&self) -> &str {
        self.arn
            .split_once(":event-bus/")
            .map(|(_, name)| name)
            .unwrap_or_default()
    }
}

/// An entry's size as EventBridge documents it ("Calculating Amazon
/// EventBridge PutEvents event entry size"): the UTF-8 bytes of `Source`,
/// `DetailType`, `Detail` and each of `Resources` (none here), plus 14 for a
/// `Time` (not set here).
pub(crate) fn entry_size(_outgoing: &Outgoing, text: &str) -> usize {
    // The longest detail-type the relay sends, so the size is never under.
    SOURCE.len()
        + DETAIL_TYPE
            .len()
            .max(crate::domain::manifest::BATCH_COMPLETED_DETAIL_TYPE.len())
        + text.len()
}

/// Whether a failed entry may go through when sent again.
fn is_transient(code: &str) -> bool {
    matches!(code, "ThrottlingException" | "InternalFailure")
}

/// One event per result, with `PutEvents`.
impl BatchService for Bus {
    type Client = aws_sdk_eventbridge::Client;
    const MAX_BYTES: usize = ENTRY_LIMIT;

    fn size_of(outgoing: &Outgoing, text: &str) -> usize {
        entry_size(outgoing, text)
    }

    fn delivery(&self) -> Delivery {
        Delivery {
            destination: self.arn.clone(),
            action: "events:PutEvents",
            resource: self.arn.clone(),
            what: format!("event bus `{}`", self.name()),
            service: "EventBridge",
        }
    }

    /// One `PutEvents` call. Results come back in request order, so the n-th
    /// result is `positions[n]`'s.
    async fn call(
        &self,
        client: &aws_sdk_eventbridge::Client,
        delivery: &Delivery,
        batch: &[Prepared<'_>],
        positions: Vec<usize>,
    ) -> Result<Vec<(usize, EntryOutcome)>, DestinationError> {
        let entries: Vec<PutEventsRequestEntry> = positions
            .iter()
            .filter_map(|&position| batch.get(position))
            .map(|prepared| {
                PutEventsRequestEntry::builder()
                    .event_bus_name(&self.arn)
                    .source(SOURCE)
                    .detail_type(self.detail_type)
                    .detail(&prepared.text)
                    .build()
            })
            .collect();
        let output = client
            .put_events()
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|err| delivery.failed(err))?;
        let outcomes = positions
            .iter()
            .zip(output.entries())
            .filter_map(|(&position, result)| {
                let outcome = match (result.event_id(), result.error_code()) {
                    (_, Some(code)) => {
                        EntryOutcome::failed(code, result.error_message(), !is_transient(code))
                    }
                    (Some(id), None) => EntryOutcome::Sent(id.to_owned()),
                    (None, None) => return None,
                };
                Some((position, outcome))
            })
            .collect();
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::super::batching::send_all;
    use std::sync::{Arc, Mutex};

    use aws_sdk_eventbridge::operation::put_events::{PutEventsError, PutEventsOutput};
    use aws_sdk_eventbridge::types::PutEventsResultEntry;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use aws_smithy_types::error::ErrorMetadata;
    use serde_json::json;

    use super::*;

    const ARN: &str = "arn:aws:events:us-east-1:222222222222:event-bus/relay";

    fn outgoing(index: usize, body: serde_json::Value) -> Outgoing {
        Outgoing {
            job_id: "job".into(),
            index: Some(index),
            group: "job".into(),
            body,
        }
    }

    type Calls = Arc<Mutex<Vec<Vec<PutEventsRequestEntry>>>>;

    /// A PutEvents mock recording each call; the entry whose detail is
    /// `fail_detail` fails with `code` on the first call only.
    fn putting(fail_detail: &'static str, code: &'static str) -> (aws_smithy_mocks::Rule, Calls) {
        let calls: Calls = Arc::default();
        let seen = calls.clone();
        let rule = mock!(aws_sdk_eventbridge::Client::put_events).then_compute_output(move |req| {
            let entries = req.entries().to_vec();
            let first_call = seen.lock().expect("lock").is_empty();
            let call = seen.lock().expect("lock").len();
            seen.lock().expect("lock").push(entries.clone());
            let mut failed = 0;
            let results = entries
                .iter()
                .enumerate()
                .map(|(n, e)| {
                    if first_call && e.detail() == Some(fail_detail) {
                        failed += 1;
                        PutEventsResultEntry::builder()
                            .error_code(code)
                            .error_message("from eventbridge")
                            .build()
                    } else {
                        PutEventsResultEntry::builder()
                            .event_id(format!("ev-{call}-{n}"))
                            .build()
                    }
                })
                .collect();
            PutEventsOutput::builder()
                .failed_entry_count(failed)
                .set_entries(Some(results))
                .build()
        });
        (rule, calls)
    }

    #[test]
    fn bus_arns_parse() {
        assert_eq!(Bus::parse(ARN).expect("arn").name(), "relay");
        let partner = "arn:aws:events:us-east-1:222222222222:event-bus/aws.partner/saas.com/1/x";
        assert_eq!(
            Bus::parse(partner).expect("partner").name(),
            "aws.partner/saas.com/1/x"
        );
        for (text, expected) in [
            (
                "arn:aws:events:us-east-1:222222222222:rule/r",
                "not an event bus",
            ),
            (
                "arn:aws:events:us-east-1:222222222222:event-bus/",
                "not an event bus name",
            ),
            (
                "arn:aws:events:us-east-1:222222222222:event-bus/a b",
                "not an event bus name",
            ),
            (
                "arn:aws:events:us-east-1:relay:event-bus/x",
                "12-digit account id",
            ),
        ] {
            let err = Bus::parse(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn entry_size_is_source_detail_type_and_detail_in_utf8_bytes() {
        let result = outgoing(0, json!("é"));
        // "é" is two bytes in UTF-8, four with its quotes; the detail-type
        // counted is the longest the relay sends (`Bedrock Relay Batch Completed`).
        assert_eq!(entry_size(&result, "\"é\""), 13 + 29 + 4);
    }

    #[tokio::test]
    async fn events_carry_source_detail_type_and_the_record_in_size_bounded_runs() {
        let (rule, calls) = putting("never", "");
        let client = mock_client!(aws_sdk_eventbridge, RuleMode::MatchAny, [&rule]);
        // 12 small events, then two of ~200 KB that do not fit together: the
        // first joins the last two small ones, the second goes alone.
        let mut results: Vec<Outgoing> = (0..12).map(|i| outgoing(i, json!({"i": i}))).collect();
        results.push(outgoing(12, json!("a".repeat(200_000))));
        results.push(outgoing(13, json!("b".repeat(200_000))));
        let ids = send_all(
            &client,
            &Bus::parse(ARN).expect("arn"),
            &Prepared::unspilled(&results),
        )
        .await
        .expect("sent");
        assert_eq!(ids.len(), 14);
        assert_eq!(ids[0], "ev-0-0");
        assert_eq!(ids[13], "ev-2-0");
        let calls = calls.lock().expect("lock");
        assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), [10, 3, 1]);
        let first = &calls[0][0];
        assert_eq!(first.source(), Some(SOURCE));
        assert_eq!(first.detail_type(), Some(DETAIL_TYPE));
        assert_eq!(first.detail(), Some("{\"i\":0}"));
        assert_eq!(first.event_bus_name(), Some(ARN));
        assert!(first.resources().is_empty());
        assert!(first.time().is_none());
    }

    #[tokio::test]
    async fn throttled_entries_are_retried_and_invalid_ones_fail_at_once() {
        let (rule, calls) = putting("{\"i\":1}", "ThrottlingException");
        let client = mock_client!(aws_sdk_eventbridge, RuleMode::MatchAny, [&rule]);
        let results: Vec<Outgoing> = (0..3).map(|i| outgoing(i, json!({"i": i}))).collect();
        let bus = Bus::parse(ARN).expect("arn");
        let ids = send_all(&client, &bus, &Prepared::unspilled(&results))
            .await
            .expect("sent");
        assert_eq!(ids, ["ev-0-0", "ev-1-0", "ev-0-2"]);
        let calls_made = calls.lock().expect("lock").clone();
        assert_eq!(calls_made.len(), 2);
        assert_eq!(calls_made[1].len(), 1);
        assert_eq!(calls_made[1][0].detail(), Some("{\"i\":1}"));

        let (rule, calls) = putting("{\"i\":1}", "MalformedDetail");
        let client = mock_client!(aws_sdk_eventbridge, RuleMode::MatchAny, [&rule]);
        let err = send_all(&client, &bus, &Prepared::unspilled(&results))
            .await
            .expect_err("malformed");
        assert_eq!(err.code(), "InvalidDestination", "{err}");
        assert!(!err.is_retryable());
        assert_eq!(calls.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn errors_name_the_permission_or_the_missing_bus() {
        let bus = Bus::parse(ARN).expect("arn");
        let results = [outgoing(0, json!({}))];
        for (code, expected) in [
            ("AccessDeniedException", "DestinationDenied"),
            ("ResourceNotFoundException", "DestinationMissing"),
            ("InternalException", "DestinationUnavailable"),
        ] {
            let rule = mock!(aws_sdk_eventbridge::Client::put_events).then_error(move || {
                PutEventsError::generic(ErrorMetadata::builder().code(code).message("no").build())
            });
            let client = mock_client!(aws_sdk_eventbridge, RuleMode::MatchAny, [&rule]);
            let err = send_all(&client, &bus, &Prepared::unspilled(&results))
                .await
                .expect_err(code);
            assert_eq!(err.code(), expected, "{code}: {err}");
            if expected == "DestinationDenied" {
                assert!(
                    err.to_string()
                        .contains(&format!("events:PutEvents on {ARN}")),
                    "{err}"
                );
            }
        }
    }
}
