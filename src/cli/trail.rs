//! CloudTrail, as AWS's cross-account guidance asks: pair the `AssumeRole`
//! events in account B with the Bedrock events in each target account, so an
//! operator sees who ran what, when, and which calls failed.
//!
//! Pairing uses the temporary access key AssumeRole returned (it is the
//! `userIdentity.accessKeyId` of every call made with those credentials), and
//! falls back to the session name and `SourceIdentity` when a key is missing.
//! The pairing is pure ([`pair`]); [`lookup`] fetches events with
//! `LookupEvents`, which returns management events (Bedrock's `InvokeModel`
//! and `Converse` among them) from the last 90 days.

use aws_sdk_cloudtrail::types::{LookupAttribute, LookupAttributeKey};
use serde::Serialize;
use serde_json::Value;

/// An `AssumeRole` into a target role, as account B's trail records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoleSession {
    /// When.
    pub time: String,
    /// Who asked (the execution role's session, or an operator).
    pub caller_arn: String,
    /// The role asked for.
    pub role_arn: String,
    /// `RoleSessionName`.
    pub session_name: String,
    /// `SourceIdentity`, if set.
    pub source_identity: Option<String>,
    /// The temporary access key issued.
    pub access_key_id: Option<String>,
    /// The failure, if STS refused.
    pub error: Option<String>,
}

/// A Bedrock call, as a target account's trail records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelCall {
    /// When.
    pub time: String,
    /// `Converse`, `InvokeModel`, ...
    pub operation: String,
    /// The model ID asked for.
    pub model_id: Option<String>,
    /// The caller's session ARN.
    pub caller_arn: String,
    /// The caller's access key.
    pub access_key_id: Option<String>,
    /// `SourceIdentity` carried by the session.
    pub source_identity: Option<String>,
    /// `errorCode: errorMessage`, if it failed.
    pub error: Option<String>,
}

/// An AssumeRole with the calls made under it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedSession {
    /// The AssumeRole.
    pub session: RoleSession,
    /// The Bedrock calls made with its credentials, in time order.
    pub calls: Vec<ModelCall>,
}

/// Who ran what.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrailReport {
    /// Sessions into the target roles, oldest first.
    pub sessions: Vec<PairedSession>,
    /// Bedrock calls by the target roles that no AssumeRole in B explains.
    pub unpaired_calls: Vec<ModelCall>,
    /// How many AssumeRole or Bedrock calls failed.
    pub failures: usize,
}

fn text(event: &Value, pointer: &str) -> Option<String> {
    event
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn error_of(event: &Value) -> Option<String> {
    text(event, "/errorCode").map(|code| match text(event, "/errorMessage") {
        Some(message) => format!("{code}: {message}"),
        None => code,
    })
}

/// Reads an `AssumeRole` event (the `CloudTrailEvent` JSON of LookupEvents).
pub fn parse_assume_role(event: &Value) -> Option<RoleSession> {
    if text(event, "/eventName").as_deref() != Some("AssumeRole") {
        return None;
    }
    Some(RoleSession {
        time: text(event, "/eventTime")?,
        caller_arn: text(event, "/userIdentity/arn").unwrap_or_default(),
        role_arn: text(event, "/requestParameters/roleArn")?,
        session_name: text(event, "/requestParameters/roleSessionName").unwrap_or_default(),
        source_identity: text(event, "/requestParameters/sourceIdentity"),
        access_key_id: text(event, "/responseElements/credentials/accessKeyId"),
        error: error_of(event),
    })
}

/// Reads a Bedrock event.
pub fn parse_model_call(event: &Value) -> Option<ModelCall> {
    if text(event, "/eventSource").as_deref() != Some("bedrock.amazonaws.com") {
        return None;
    }
    Some(ModelCall {
        time: text(event, "/eventTime")?,
        operation: text(event, "/eventName")?,
        model_id: text(event, "/requestParameters/modelId"),
        caller_arn: text(event, "/userIdentity/arn").unwrap_or_default(),
        access_key_id: text(event, "/userIdentity/accessKeyId"),
        source_identity: text(event, "/userIdentity/sessionContext/sourceIdentity"),
        error: error_of(event),
    })
}

/// `arn:aws:iam::A:role/R` and session `s` → `arn:aws:sts::A:assumed-role/R/s`.
fn assumed_role_arn(role_arn: &str, session_name: &str) -> Option<String> {
    let (prefix, name) = role_arn.split_once(":role/")?;
    let role_name = name.rsplit('/').next()?;
    Some(format!(
        "{}:assumed-role/{role_name}/{session_name}",
        prefix.replacen(":iam:", ":sts:", 1)
    ))
}

/// Pairs AssumeRole events into `role_arns` with the Bedrock calls made under
/// them. Calls by other principals are ignored; calls by a target role that no
/// AssumeRole explains are listed as unpaired.
pub fn pair(assume_events: &[Value], model_events: &[Value], role_arns: &[String]) -> TrailReport {
    let mut sessions: Vec<PairedSession> = assume_events
        .iter()
        .filter_map(parse_assume_role)
        .filter(|s| role_arns.contains(&s.role_arn))
        .map(|session| PairedSession {
            session,
            calls: Vec::new(),
        })
        .collect();
    sessions.sort_by(|a, b| a.session.time.cmp(&b.session.time));

    let mut report = TrailReport::default();
    let mut calls: Vec<ModelCall> = model_events.iter().filter_map(parse_model_call).collect();
    calls.sort_by(|a, b| a.time.cmp(&b.time));
    for call in calls {
        let by_key = call.access_key_id.as_ref().and_then(|key| {
            sessions
                .iter()
                .position(|s| s.session.access_key_id.as_ref() == Some(key))
        });
        // Without a key match: the latest earlier session with the same assumed-role
        // ARN and SourceIdentity.
        let by_name = || {
            sessions
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    s.session.error.is_none()
                        && s.session.time <= call.time
                        && assumed_role_arn(&s.session.role_arn, &s.session.session_name).as_deref()
                            == Some(call.caller_arn.as_str())
                        && s.session.source_identity == call.source_identity
                })
                .map(|(i, _)| i)
                .next_back()
        };
        match by_key.or_else(by_name) {
            Some(index) => sessions[index].calls.push(call),
            None => {
                let by_target_role = role_arns.iter().any(|role| {
                    role.split_once(":role/").is_some_and(|(prefix, name)| {
                        let role_name = name.rsplit('/').next().unwrap_or(name);
                        call.caller_arn.starts_with(&format!(
                            "{}:assumed-role/{role_name}/",
                            prefix.replacen(":iam:", ":sts:", 1)
                        ))
                    })
                });
                if by_target_role {
                    report.unpaired_calls.push(call);
                }
            }
        }
    }
    report.failures = sessions
        .iter()
        .map(|s| {
            usize::from(s.session.error.is_some())
                + s.calls.iter().filter(|c| c.error.is_some()).count()
        })
        .sum::<usize>()
        + report
            .unpaired_calls
            .iter()
            .filter(|c| c.error.is_some())
            .count();
    report.sessions = sessions;
    report
}

/// Fetches the `CloudTrailEvent` JSON of events matching `key = value` since
/// `start`, following pages (at most `max_pages`).
pub async fn lookup(
    client: &aws_sdk_cloudtrail::Client,
    key: LookupAttributeKey,
    value: &str,
    start: aws_smithy_types::DateTime,
    max_pages: usize,
) -> Result<Vec<Value>, String> {
    let attribute = LookupAttribute::builder()
        .attribute_key(key)
        .attribute_value(value)
        .build()
        .map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..max_pages {
        let page = client
            .lookup_events()
            .lookup_attributes(attribute.clone())
            .start_time(start)
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|err| {
                use aws_sdk_cloudtrail::error::ProvideErrorMetadata;
                let code = err.code().unwrap_or("no code").to_owned();
                let message = err.message().unwrap_or("no message").to_owned();
                if code.contains("AccessDenied") {
                    format!("cloudtrail:LookupEvents was denied ({message}); grant it to the caller (in a target account, to RoleA)")
                } else {
                    format!("cloudtrail:LookupEvents failed ({code}: {message})")
                }
            })?;
        for event in page.events() {
            if let Some(raw) = event.cloud_trail_event() {
                if let Ok(parsed) = serde_json::from_str::<Value>(raw) {
                    events.push(parsed);
                }
            }
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    Ok(events)
}

/// Renders the report for a person.
pub fn render(report: &TrailReport) -> String {
    let mut out = String::new();
    for paired in &report.sessions {
        let s = &paired.session;
        out.push_str(&format!(
            "{} AssumeRole {} -> {} (session {}, source identity {}){}\n",
            s.time,
            s.caller_arn,
            s.role_arn,
            s.session_name,
            s.source_identity.as_deref().unwrap_or("none"),
            s.error
                .as_ref()
                .map(|e| format!(" FAILED {e}"))
                .unwrap_or_default()
        ));
        for call in &paired.calls {
            out.push_str(&format!(
                "    {} {} {} {}\n",
                call.time,
                call.operation,
                call.model_id.as_deref().unwrap_or("?"),
                call.error
                    .as_ref()
                    .map(|e| format!("FAILED {e}"))
                    .unwrap_or_else(|| "ok".into())
            ));
        }
    }
    if !report.unpaired_calls.is_empty() {
        out.push_str("calls by a target role with no AssumeRole from account B in the window:\n");
        for call in &report.unpaired_calls {
            out.push_str(&format!(
                "    {} {} {} by {}\n",
                call.time,
                call.operation,
                call.model_id.as_deref().unwrap_or("?"),
                call.caller_arn
            ));
        }
    }
    out.push_str(&format!(
        "{} sessions, {} model calls, {} failed\n",
        report.sessions.len(),
        report.sessions.iter().map(|s| s.calls.len()).sum::<usize>() + report.unpaired_calls.len(),
        report.failures
    ));
    out
}

/// Parses `30m`, `1h`, `2d` into seconds.
pub fn parse_since(text: &str) -> Option<u64> {
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = number.parse().ok()?;
    match unit {
        "m" => Some(n * 60),
        "h" => Some(n * 3600),
        "d" => Some(n * 86_400),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_cloudtrail::operation::lookup_events::LookupEventsOutput;
    use aws_sdk_cloudtrail::types::Event;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};

    use super::*;

    fn fixture(name: &str) -> Vec<Value> {
        let path = format!(
            "{}/tests/fixtures/cloudtrail/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn roles() -> Vec<String> {
        vec![
            "arn:aws:iam::111111111111:role/BedrockRelayTarget".into(),
            "arn:aws:iam::333333333333:role/BedrockRelayTarget".into(),
        ]
    }

    #[test]
    fn calls_pair_with_the_assume_role_that_issued_their_key() {
        let report = pair(
            &fixture("account-b-assume-role.json"),
            &fixture("account-a-bedrock.json"),
            &roles(),
        );
        assert_eq!(
            report.sessions.len(),
            3,
            "alice's AssumeRole into Admin is not a relay session"
        );
        let first = &report.sessions[0];
        assert_eq!(
            first.session.access_key_id.as_deref(),
            Some("ASIAROLEASESSION0001")
        );
        assert_eq!(
            first.session.source_identity.as_deref(),
            Some("bedrock-relay")
        );
        let ops: Vec<&str> = first.calls.iter().map(|c| c.operation.as_str()).collect();
        assert_eq!(ops, vec!["Converse", "InvokeModel"]);
        assert!(first.calls[1]
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("ThrottlingException")));
        assert_eq!(
            report.sessions[1].calls.len(),
            1,
            "the second session's key"
        );
        let denied = &report.sessions[2];
        assert!(denied
            .session
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("AccessDenied")));
        assert!(
            report.unpaired_calls.is_empty(),
            "bob's call is not by a target role"
        );
        assert_eq!(report.failures, 2);
        let text = render(&report);
        assert!(text.contains("FAILED ThrottlingException"), "{text}");
        assert!(
            text.contains("3 sessions, 3 model calls, 2 failed"),
            "{text}"
        );
    }

    #[test]
    fn without_keys_calls_pair_by_session_name_and_source_identity() {
        let mut assume = fixture("account-b-assume-role.json");
        let mut calls = fixture("account-a-bedrock.json");
        for event in assume.iter_mut().chain(calls.iter_mut()) {
            if let Some(credentials) = event.pointer_mut("/responseElements/credentials") {
                credentials["accessKeyId"] = Value::Null;
            }
            if let Some(identity) = event.pointer_mut("/userIdentity") {
                identity["accessKeyId"] = Value::Null;
            }
        }
        let report = pair(&assume, &calls, &roles());
        // 09:15:01 and 09:40 follow the 09:15 session; 10:11 follows the 10:10 one.
        assert_eq!(report.sessions[0].calls.len(), 2);
        assert_eq!(report.sessions[1].calls.len(), 1);
    }

    #[test]
    fn calls_by_a_target_role_with_no_session_are_reported() {
        let report = pair(&[], &fixture("account-a-bedrock.json"), &roles());
        assert_eq!(report.unpaired_calls.len(), 3);
        assert!(render(&report).contains("no AssumeRole from account B"));
    }

    #[tokio::test]
    async fn lookup_follows_pages_and_reads_the_event_json() {
        let events = fixture("account-a-bedrock.json");
        let (first, second) = (events[0].to_string(), events[1].to_string());
        let pages = mock!(aws_sdk_cloudtrail::Client::lookup_events)
            .match_requests(|req| {
                req.lookup_attributes()
                    .first()
                    .is_some_and(|a| a.attribute_value() == "bedrock.amazonaws.com")
            })
            .sequence()
            .output(move || {
                LookupEventsOutput::builder()
                    .events(Event::builder().cloud_trail_event(first.clone()).build())
                    .next_token("page-2")
                    .build()
            })
            .output(move || {
                LookupEventsOutput::builder()
                    .events(Event::builder().cloud_trail_event(second.clone()).build())
                    .build()
            })
            .build();
        let client = mock_client!(aws_sdk_cloudtrail, RuleMode::Sequential, [&pages]);
        let found = lookup(
            &client,
            LookupAttributeKey::EventSource,
            "bedrock.amazonaws.com",
            aws_smithy_types::DateTime::from_secs(0),
            10,
        )
        .await
        .expect("events");
        assert_eq!(found.len(), 2);
        assert_eq!(pages.num_calls(), 2);
        assert_eq!(
            parse_model_call(&found[1])
                .and_then(|c| c.error)
                .as_deref()
                .map(|e| e.starts_with("Throttling")),
            Some(true)
        );
    }

    #[test]
    fn since_takes_minutes_hours_and_days() {
        assert_eq!(parse_since("30m"), Some(1800));
        assert_eq!(parse_since("1h"), Some(3600));
        assert_eq!(parse_since("2d"), Some(172_800));
        assert_eq!(parse_since("1w"), None);
        assert_eq!(parse_since(""), None);
    }
}
