//! What arrives: the three input shapes, told apart by shape alone.
//!
//! 1. A job event: an EventBridge envelope whose `detail-type` is
//!    [`JOB_DETAIL_TYPE`]; its `detail` is the job.
//! 2. Any other envelope (a schedule's `Scheduled Event`, an AWS service event):
//!    the configured default job runs, with the envelope at hand.
//! 3. A bare job object, as EventBridge Scheduler's universal target or a rule's
//!    constant input delivers it.
//!
//! An object is an envelope when it has all of `detail-type`, `source` and
//! `detail`; field names of the job are never used to guess.
//!
//! The Lambda runtime parses the payload before a handler sees it. So that a
//! payload that is not JSON, or is too large, still ends in an error record,
//! [`PayloadGuardLayer`] screens the raw bytes first and hands the handler a
//! [`Payload::Unreadable`] in their place. It also refuses JSON nested deeper
//! than [`MAX_JSON_DEPTH`]: the runtime's parser would stop at 128 levels
//! with no record written.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::tower::{Layer, Service};
use lambda_runtime::LambdaInvocation;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::domain::job::{json_kind, Job, JobError};

/// The `detail-type` that marks an event whose `detail` is a job.
pub const JOB_DETAIL_TYPE: &str = "Bedrock Relay Job";

/// The key under which [`PayloadGuardLayer`] passes an unreadable payload on.
/// Not a field anyone sends: it only ever comes from the guard.
const UNREADABLE_KEY: &str = "bedrock-relay:unreadable-payload";

const ENVELOPE_KEYS: [&str; 3] = ["detail-type", "source", "detail"];

/// Deepest nesting of arrays and objects an event may have. No job needs
/// more than a handful of levels; the limit sits below serde_json's 128 so
/// that the guard, not the runtime's parser (which would fail the invocation
/// without a record), is what refuses a deeper event.
pub const MAX_JSON_DEPTH: usize = 100;

/// Input that cannot become a job, with what was expected.
#[derive(Debug, Error)]
pub enum InputError {
    /// The payload is not JSON.
    #[error("the event is not valid JSON ({reason}); expected an EventBridge event or a bare job object")]
    NotJson {
        /// The parser's complaint.
        reason: String,
    },
    /// The payload is larger than `RELAY_MAX_EVENT_BYTES`.
    #[error("the event is {bytes} bytes, over the {limit}-byte limit (EventBridge events are at most 256 KB); put large inputs in S3 and keep the event small")]
    TooLarge {
        /// The payload's size.
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Arrays and objects nested deeper than [`MAX_JSON_DEPTH`].
    #[error("the event nests arrays and objects more than {limit} levels deep; flatten it, or put deeply nested data in S3 and pass its s3:// URI")]
    TooDeep {
        /// The deepest nesting accepted.
        limit: usize,
    },
    /// Neither an object envelope nor a bare job object.
    #[error("the event is {kind}; expected an EventBridge event (an object with `detail-type`, `source` and `detail`) or a bare job object")]
    NotAnObject {
        /// What it is instead.
        kind: &'static str,
    },
    /// Some envelope keys but not all.
    #[error("the event has {present} but not {missing}: an EventBridge event needs all of `detail-type`, `source` and `detail`, and a bare job has none of them")]
    PartialEnvelope {
        /// Keys found.
        present: String,
        /// Keys missing.
        missing: String,
    },
    /// The envelope's own fields are malformed.
    #[error("the EventBridge envelope is malformed: {0}")]
    Envelope(String),
    /// The `detail` of a job event is not a valid job.
    #[error("detail (of a `Bedrock Relay Job` event): {0}")]
    JobDetail(#[source] JobError),
    /// A bare job object is not a valid job.
    #[error("bare job (an object without `detail-type`, `source` and `detail`): {0}")]
    BareJob(#[source] JobError),
    /// An envelope that carries no job, and no default job is configured.
    #[error("the event from `{event_source}` (detail-type `{detail_type}`) carries no job and RELAY_DEFAULT_JOB is not set; set RELAY_DEFAULT_JOB, or send detail-type `Bedrock Relay Job` with the job in `detail`")]
    NoDefaultJob {
        /// The envelope's source.
        event_source: String,
        /// The envelope's detail-type.
        detail_type: String,
    },
}

/// The envelope fields the record keeps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    /// The event's id: the default job id.
    pub id: Option<String>,
    /// `source`.
    pub source: String,
    /// `detail-type`.
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    /// `time`.
    pub time: Option<String>,
    /// The whole event, for the default job (templating builds on it).
    #[serde(skip)]
    pub event: Value,
}

/// Which of the three shapes arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// An envelope with `detail-type: Bedrock Relay Job`.
    JobEvent,
    /// Any other envelope, running the default job.
    DefaultJob,
    /// A bare job object.
    BareJob,
}

/// A job with where it came from.
#[derive(Debug, Clone)]
pub struct Input {
    /// The shape it arrived in.
    pub shape: Shape,
    /// The envelope, when there was one.
    pub envelope: Option<Envelope>,
    /// The job.
    pub job: Job,
}

/// The payload as the handler receives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Parsed JSON.
    Json(Value),
    /// Bytes the guard refused.
    Unreadable(Unreadable),
}

/// Why the guard refused a payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Unreadable {
    /// Not JSON.
    NotJson {
        /// The parser's complaint.
        error: String,
    },
    /// Over the size limit.
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Nested deeper than [`MAX_JSON_DEPTH`].
    TooDeep {
        /// The deepest nesting accepted.
        limit: usize,
    },
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        if let Value::Object(map) = &value {
            if map.len() == 1 {
                if let Some(inner) = map.get(UNREADABLE_KEY) {
                    if let Ok(unreadable) = serde_json::from_value(inner.clone()) {
                        return Ok(Payload::Unreadable(unreadable));
                    }
                }
            }
        }
        Ok(Payload::Json(value))
    }
}

impl Envelope {
    /// The envelope of `payload`, if it is one; used to label error records.
    pub fn peek(payload: &Payload) -> Option<Self> {
        let Payload::Json(value) = payload else {
            return None;
        };
        let map = value.as_object()?;
        if !ENVELOPE_KEYS.iter().all(|k| map.contains_key(*k)) {
            return None;
        }
        let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(Self {
            id: text("id"),
            source: text("source").unwrap_or_default(),
            detail_type: text("detail-type").unwrap_or_default(),
            time: text("time"),
            event: value.clone(),
        })
    }
}

impl Payload {
    /// The payload the handler gets for raw bytes, exactly as the Lambda path
    /// (guard, then the runtime's JSON parsing) produces it.
    pub fn from_bytes(body: &[u8], max_bytes: usize) -> Self {
        if let Some(unreadable) = screen(body, max_bytes) {
            return Self::Unreadable(unreadable);
        }
        serde_json::from_slice(body).unwrap_or_else(|err| {
            Self::Unreadable(Unreadable::NotJson {
                error: err.to_string(),
            })
        })
    }
}

impl Input {
    /// Tells the shape and extracts the job. `default_job` is `RELAY_DEFAULT_JOB`.
    pub fn from_payload(payload: &Payload, default_job: Option<&Job>) -> Result<Self, InputError> {
        let value = match payload {
            Payload::Json(value) => value,
            Payload::Unreadable(Unreadable::NotJson { error }) => {
                return Err(InputError::NotJson {
                    reason: error.clone(),
                })
            }
            Payload::Unreadable(Unreadable::TooLarge { bytes, limit }) => {
                return Err(InputError::TooLarge {
                    bytes: *bytes,
                    limit: *limit,
                })
            }
            Payload::Unreadable(Unreadable::TooDeep { limit }) => {
                return Err(InputError::TooDeep { limit: *limit })
            }
        };
        let Value::Object(map) = value else {
            return Err(InputError::NotAnObject {
                kind: json_kind(value),
            });
        };

        let present: Vec<&str> = ENVELOPE_KEYS
            .iter()
            .copied()
            .filter(|k| map.contains_key(*k))
            .collect();
        if present.is_empty() {
            let job = Job::from_value(value.clone()).map_err(InputError::BareJob)?;
            return Ok(Self {
                shape: Shape::BareJob,
                envelope: None,
                job,
            });
        }
        if present.len() < ENVELOPE_KEYS.len() {
            let missing: Vec<String> = ENVELOPE_KEYS
                .iter()
                .filter(|k| !present.contains(k))
                .map(|k| format!("`{k}`"))
                .collect();
            return Err(InputError::PartialEnvelope {
                present: present
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                missing: missing.join(", "),
            });
        }

        let event: EventBridgeEvent<Value> =
            serde_path_to_error::deserialize(value).map_err(|err| {
                let message = crate::domain::job::without_values(&err.inner().to_string());
                InputError::Envelope(format!("{}: {message}", err.path()))
            })?;
        let envelope = Envelope {
            id: event.id.clone(),
            source: event.source.clone(),
            detail_type: event.detail_type.clone(),
            time: map.get("time").and_then(Value::as_str).map(str::to_owned),
            event: value.clone(),
        };

        if event.detail_type == JOB_DETAIL_TYPE {
            let job = Job::from_value(event.detail).map_err(InputError::JobDetail)?;
            return Ok(Self {
                shape: Shape::JobEvent,
                envelope: Some(envelope),
                job,
            });
        }
        match default_job {
            Some(job) => Ok(Self {
                shape: Shape::DefaultJob,
                envelope: Some(envelope),
                job: job.clone(),
            }),
            None => Err(InputError::NoDefaultJob {
                event_source: envelope.source,
                detail_type: envelope.detail_type,
            }),
        }
    }
}

/// A layer over the Lambda runtime that screens raw payload bytes: payloads
/// over the size limit or that are not JSON are replaced by a small marker the
/// handler turns into an error record, rather than failing inside the runtime
/// where the function could not record them.
#[derive(Debug, Clone, Copy)]
pub struct PayloadGuardLayer {
    max_bytes: usize,
}

impl PayloadGuardLayer {
    /// Screens payloads larger than `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes }
    }
}

impl<S> Layer<S> for PayloadGuardLayer {
    type Service = PayloadGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PayloadGuard {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

/// The service [`PayloadGuardLayer`] makes.
#[derive(Debug, Clone)]
pub struct PayloadGuard<S> {
    inner: S,
    max_bytes: usize,
}

impl<S> Service<LambdaInvocation> for PayloadGuard<S>
where
    S: Service<LambdaInvocation>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut invocation: LambdaInvocation) -> Self::Future {
        if let Some(reason) = screen(&invocation.body, self.max_bytes) {
            let marker = serde_json::json!({ UNREADABLE_KEY: reason });
            invocation.body = bytes::Bytes::from(marker.to_string());
        }
        Box::pin(self.inner.call(invocation))
    }
}

/// Why `body` cannot be handed to the handler as JSON, if it cannot.
fn screen(body: &[u8], max_bytes: usize) -> Option<Unreadable> {
    if body.len() > max_bytes {
        return Some(Unreadable::TooLarge {
            bytes: body.len(),
            limit: max_bytes,
        });
    }
    // `IgnoredAny` alone would not do: serde_json skips it without a depth limit.
    let too_deep = Cell::new(false);
    let mut parser = serde_json::Deserializer::from_slice(body);
    let checked = Nesting {
        depth: 0,
        too_deep: &too_deep,
    }
    .deserialize(&mut parser)
    .and_then(|()| parser.end());
    match checked {
        Ok(()) => None,
        Err(_) if too_deep.get() => Some(Unreadable::TooDeep {
            limit: MAX_JSON_DEPTH,
        }),
        Err(err) => Some(Unreadable::NotJson {
            error: err.to_string(),
        }),
    }
}

/// Walks a JSON value without keeping it, refusing nesting deeper than
/// [`MAX_JSON_DEPTH`]; `depth` is the number of arrays and objects around it.
#[derive(Clone, Copy)]
struct Nesting<'a> {
    depth: usize,
    too_deep: &'a Cell<bool>,
}

impl Nesting<'_> {
    fn inside<E: serde::de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_JSON_DEPTH {
            self.too_deep.set(true);
            return Err(E::custom(format_args!(
                "nested more than {MAX_JSON_DEPTH} levels deep"
            )));
        }
        Ok(Self {
            depth: self.depth + 1,
            ..self
        })
    }
}

impl<'de> DeserializeSeed<'de> for Nesting<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Nesting<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.inside()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.inside()?;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fixture(name: &str) -> Payload {
        let path = format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn default_job() -> Job {
        Job::from_value(json!({"prompt": "nightly digest"})).expect("valid")
    }

    #[test]
    fn job_event_takes_its_job_from_detail() {
        let input = Input::from_payload(&fixture("job-event.json"), None).expect("valid");
        assert_eq!(input.shape, Shape::JobEvent);
        let envelope = input.envelope.expect("envelope");
        assert_eq!(envelope.detail_type, JOB_DETAIL_TYPE);
        assert!(envelope.id.is_some());
        assert!(input.job.prompt.is_some() || input.job.messages.is_some());
    }

    #[test]
    fn scheduled_event_runs_the_default_job_with_the_envelope() {
        let payload = fixture("scheduled-event.json");
        let input = Input::from_payload(&payload, Some(&default_job())).expect("valid");
        assert_eq!(input.shape, Shape::DefaultJob);
        let envelope = input.envelope.expect("envelope");
        assert_eq!(envelope.source, "aws.events");
        assert_eq!(envelope.detail_type, "Scheduled Event");
        assert_eq!(envelope.time.as_deref(), Some("2026-11-28T02:00:00Z"));
        assert_eq!(input.job.prompt.as_deref(), Some("nightly digest"));
    }

    #[test]
    fn scheduled_event_without_default_job_says_what_to_set() {
        let err = Input::from_payload(&fixture("scheduled-event.json"), None)
            .expect_err("no default job");
        let msg = err.to_string();
        assert!(msg.contains("RELAY_DEFAULT_JOB is not set"), "{msg}");
        assert!(msg.contains("aws.events"), "{msg}");
    }

    #[test]
    fn bare_job_is_taken_as_is() {
        let input = Input::from_payload(&fixture("scheduler-bare-job.json"), None).expect("valid");
        assert_eq!(input.shape, Shape::BareJob);
        assert!(input.envelope.is_none());
    }

    #[test]
    fn malformed_job_event_names_shape_and_field() {
        let msg = Input::from_payload(&fixture("malformed-job-event.json"), None)
            .expect_err("malformed")
            .to_string();
        assert!(
            msg.starts_with("detail (of a `Bedrock Relay Job` event)"),
            "{msg}"
        );
        assert!(
            msg.contains("both `prompt` and `messages`") || msg.contains("unknown field"),
            "{msg}"
        );
    }

    #[test]
    fn shape_is_told_by_envelope_keys_not_job_fields() {
        // A job field named like an envelope key does not make an envelope.
        let err = Input::from_payload(&Payload::Json(json!({"source": "x", "prompt": "hi"})), None)
            .expect_err("partial");
        let msg = err.to_string();
        assert!(
            msg.contains("has `source` but not `detail-type`, `detail`"),
            "{msg}"
        );
        let msg = Input::from_payload(&Payload::Json(json!({"promt": "hi"})), None)
            .expect_err("typo")
            .to_string();
        assert!(msg.starts_with("bare job"), "{msg}");
        assert!(msg.contains("unknown field `promt`"), "{msg}");
        let msg = Input::from_payload(&Payload::Json(json!("hello")), None)
            .expect_err("string")
            .to_string();
        assert!(
            msg.contains("the event is a string; expected an EventBridge event"),
            "{msg}"
        );
    }

    #[test]
    fn guard_marks_non_json_and_oversize_bytes() {
        assert_eq!(screen(br#"{"prompt":"hi"}"#, 1024), None);
        assert!(matches!(
            screen(b"{not json", 1024),
            Some(Unreadable::NotJson { .. })
        ));
        assert_eq!(
            screen(&[b' '; 2048], 1024),
            Some(Unreadable::TooLarge {
                bytes: 2048,
                limit: 1024
            })
        );
        // The marker round-trips into the handler's payload type.
        let marker = json!({ UNREADABLE_KEY: Unreadable::TooLarge { bytes: 9, limit: 1 } });
        let payload: Payload = serde_json::from_value(marker).expect("payload");
        let err = Input::from_payload(&payload, None).expect_err("too large");
        assert!(err
            .to_string()
            .starts_with("the event is 9 bytes, over the 1-byte limit"));
    }

    #[test]
    fn guard_refuses_nesting_past_the_limit_before_the_runtime_parser_would() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(screen(nested(MAX_JSON_DEPTH).as_bytes(), 1 << 20), None);
        let body = format!(r#"{{"prompt":"hi","metadata":{{"x":{}}}}}"#, nested(200));
        assert_eq!(
            screen(body.as_bytes(), 1 << 20),
            Some(Unreadable::TooDeep {
                limit: MAX_JSON_DEPTH
            })
        );
        // What passes the guard, the runtime's parser (limit 128) takes.
        let payload: Payload = serde_json::from_str(&nested(MAX_JSON_DEPTH)).expect("parses");
        assert!(matches!(payload, Payload::Json(_)));
        // Trailing bytes and broken JSON are still not JSON.
        assert!(matches!(
            screen(b"{} {}", 1024),
            Some(Unreadable::NotJson { .. })
        ));
        assert!(matches!(
            screen(b"[[[", 1024),
            Some(Unreadable::NotJson { .. })
        ));
    }
}
