//! X-Ray subsegments for the function's AWS calls: one per SDK operation
//! (STS, Bedrock Runtime, S3, SQS, SNS, EventBridge, DynamoDB), sent to the
//! X-Ray daemon Lambda runs next to the function.
//!
//! `lambda_runtime` has no X-Ray exporter and the OpenTelemetry SDK is far
//! heavier than the job needs, so this module owns the little that is needed:
//!
//! - [`TraceHeader`]: the invocation's `Root=…;Parent=…;Sampled=…` header.
//!   `lambda_runtime` 1.x puts it in `_X_AMZN_TRACE_ID` before each
//!   invocation (sequential `Runtime::run`, the mode this function uses), so
//!   the header is read from there when a call starts; no plumbing through
//!   the relay is needed.
//! - [`Recorder`]: an SDK interceptor attached to every client the function
//!   builds. It notes the start of an operation, its attempts and its outcome
//!   (retries included: the hooks wrap the whole operation) and sends one
//!   subsegment whose parent is Lambda's function segment (`Parent`).
//! - the daemon emitter: one UDP datagram per subsegment,
//!   `{"format": "json", "version": 1}\n<document>`, to
//!   `AWS_XRAY_DAEMON_ADDRESS`, non-blocking and best-effort.
//!
//! Nothing is done, and no socket is opened, unless the invocation's header
//! says `Sampled=1`: outside Lambda, or with tracing off, the interceptor
//! costs one environment lookup per call.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef, Input,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use serde_json::{json, Map, Value};
use thiserror::Error;

/// The variable `lambda_runtime` sets to the current invocation's trace header.
pub const TRACE_HEADER_ENV: &str = "_X_AMZN_TRACE_ID";
/// The variable Lambda sets to the daemon's address when tracing is active.
pub const DAEMON_ADDRESS_ENV: &str = "AWS_XRAY_DAEMON_ADDRESS";
/// What the daemon expects in front of every document.
pub const DAEMON_HEADER: &str = r#"{"format": "json", "version": 1}"#;

/// Why subsegments cannot be sent. Never fails a call: logged at debug.
#[derive(Debug, Error)]
pub enum XRayError {
    /// The daemon address is not `host:port` or `udp:host:port tcp:host:port`.
    #[error("{DAEMON_ADDRESS_ENV} `{0}` names no UDP address; expected host:port or `udp:host:port tcp:host:port`")]
    Address(String),
    /// No UDP socket could be opened.
    #[error("cannot open a UDP socket for the X-Ray daemon: {0}")]
    Socket(#[source] io::Error),
    /// A datagram could not be sent.
    #[error("cannot send a subsegment to the X-Ray daemon at {addr}: {source}")]
    Send {
        /// The daemon.
        addr: SocketAddr,
        /// What the socket said.
        #[source]
        source: io::Error,
    },
}

/// An invocation's X-Ray trace header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeader {
    /// The trace id, `1-<8 hex time>-<24 hex>`.
    pub root: String,
    /// The id of the segment the function's work belongs under: Lambda's
    /// function segment.
    pub parent: String,
    /// Whether this trace is recorded (`Sampled=1`).
    pub sampled: bool,
}

impl TraceHeader {
    /// Parses `Root=…;Parent=…;Sampled=…` (any order, other keys such as
    /// `Lineage` ignored). `None` when the root or parent is missing or
    /// malformed; a header that is not sampled (`0`, `?` or absent) parses
    /// with `sampled: false`.
    pub fn parse(text: &str) -> Option<Self> {
        let (mut root, mut parent, mut sampled) = (None, None, false);
        for part in text.split(';') {
            let Some((key, value)) = part.split_once('=') else {
                continue;
            };
            match key.trim() {
                "Root" => root = Some(value.trim()),
                "Parent" => parent = Some(value.trim()),
                "Sampled" => sampled = value.trim() == "1",
                _ => {}
            }
        }
        let (root, parent) = (root?, parent?);
        if !is_trace_id(root) || !is_hex_id(parent) {
            return None;
        }
        Some(Self {
            root: root.to_owned(),
            parent: parent.to_owned(),
            sampled,
        })
    }
}

/// `1-<8 hex>-<24 hex>`.
fn is_trace_id(text: &str) -> bool {
    let mut parts = text.split('-');
    let hex_of = |part: Option<&str>, len: usize| {
        part.is_some_and(|p| p.len() == len && p.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    parts.next() == Some("1")
        && hex_of(parts.next(), 8)
        && hex_of(parts.next(), 24)
        && parts.next().is_none()
}

/// A 64-bit segment id: 16 hex digits.
fn is_hex_id(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A new subsegment id. Not security-sensitive: X-Ray only needs it unique
/// within the trace.
fn new_id() -> String {
    format!("{:016x}", fastrand::u64(1..))
}

/// Seconds since the epoch, as X-Ray wants them (microseconds kept).
fn epoch_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as f64 / 1e6)
        .unwrap_or(0.0)
}

/// One operation in flight, kept in its config bag between the hooks.
#[derive(Debug, Clone)]
pub struct Call {
    /// The invocation's header.
    pub header: TraceHeader,
    /// The subsegment name: the service as X-Ray names AWS services
    /// (`STS`, `Bedrock Runtime`, `S3`, ...; the SDK's own service name,
    /// known once the operation's configuration is applied).
    pub service: String,
    /// The operation, e.g. `AssumeRole`.
    pub operation: String,
    /// The client's region.
    pub region: Option<String>,
    /// When the operation started (epoch seconds).
    pub start: f64,
    /// HTTP attempts made so far.
    pub attempts: u32,
    /// Service-specific `aws` fields: `bucket_name`, `key`, `queue_url`,
    /// `topic_arn`, `table_name(s)`, `model_id`, `role_arn`.
    pub resource: Map<String, Value>,
}

impl Storable for Call {
    type Storer = StoreReplace<Self>;
}

/// How an operation ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// When it ended (epoch seconds).
    pub end: f64,
    /// The last HTTP status, if a response came back.
    pub status: Option<u16>,
    /// The service's request id (`x-amzn-requestid`, `x-amz-request-id`).
    pub request_id: Option<String>,
    /// S3's extended request id (`x-amz-id-2`).
    pub id_2: Option<String>,
    /// The response's `content-length`.
    pub content_length: Option<u64>,
    /// The operation returned an error.
    pub failed: bool,
}

/// The subsegment document for a finished call, with id `id`.
///
/// Error flags follow X-Ray's meaning: `throttle` (with `error`) for 429,
/// `error` for other 4xx, `fault` for 5xx and for a failure with no
/// response at all (a timeout or a connection that never answered).
pub fn subsegment(call: &Call, outcome: &Outcome, id: &str) -> Value {
    let mut aws = Map::new();
    aws.insert("operation".into(), json!(call.operation));
    if let Some(region) = &call.region {
        aws.insert("region".into(), json!(region));
    }
    if let Some(request_id) = &outcome.request_id {
        aws.insert("request_id".into(), json!(request_id));
    }
    if let Some(id_2) = &outcome.id_2 {
        aws.insert("id_2".into(), json!(id_2));
    }
    aws.insert("retries".into(), json!(call.attempts.saturating_sub(1)));
    aws.extend(call.resource.clone());

    let mut doc = Map::new();
    doc.insert("name".into(), json!(call.service));
    doc.insert("id".into(), json!(id));
    doc.insert("trace_id".into(), json!(call.header.root));
    doc.insert("parent_id".into(), json!(call.header.parent));
    doc.insert("start_time".into(), json!(call.start));
    // A clock step backwards must not make an invalid document.
    doc.insert("end_time".into(), json!(outcome.end.max(call.start)));
    doc.insert("type".into(), json!("subsegment"));
    doc.insert("namespace".into(), json!("aws"));
    doc.insert("aws".into(), Value::Object(aws));
    if let Some(status) = outcome.status {
        let mut response = Map::new();
        response.insert("status".into(), json!(status));
        if let Some(length) = outcome.content_length {
            response.insert("content_length".into(), json!(length));
        }
        doc.insert("http".into(), json!({ "response": response }));
    }
    let (error, throttle, fault) = match outcome.status {
        Some(429) => (true, true, false),
        Some(400..=499) => (true, false, false),
        Some(500..=599) => (false, false, true),
        Some(_) => (false, false, false),
        None => (false, false, outcome.failed),
    };
    for (flag, set) in [("error", error), ("throttle", throttle), ("fault", fault)] {
        if set {
            doc.insert(flag.into(), json!(true));
        }
    }
    Value::Object(doc)
}

/// The `aws` fields that name what a call touched, from its input.
fn resource_of(input: &Input) -> Map<String, Value> {
    let mut fields = Map::new();
    let mut put = |key: &str, value: Option<&str>| {
        if let Some(value) = value {
            fields.insert(key.to_owned(), json!(value));
        }
    };
    if let Some(i) = input.downcast_ref::<aws_sdk_sts::operation::assume_role::AssumeRoleInput>() {
        put("role_arn", i.role_arn());
    } else if let Some(i) =
        input.downcast_ref::<aws_sdk_bedrockruntime::operation::converse::ConverseInput>()
    {
        put("model_id", i.model_id());
    } else if let Some(i) =
        input.downcast_ref::<aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelInput>()
    {
        put("model_id", i.model_id());
    } else if let Some(i) =
        input.downcast_ref::<aws_sdk_s3::operation::get_object::GetObjectInput>()
    {
        put("bucket_name", i.bucket());
        put("key", i.key());
    } else if let Some(i) =
        input.downcast_ref::<aws_sdk_s3::operation::put_object::PutObjectInput>()
    {
        put("bucket_name", i.bucket());
        put("key", i.key());
    } else if let Some(i) =
        input.downcast_ref::<aws_sdk_sqs::operation::send_message_batch::SendMessageBatchInput>()
    {
        put("queue_url", i.queue_url());
    } else if let Some(i) =
        input.downcast_ref::<aws_sdk_sns::operation::publish_batch::PublishBatchInput>()
    {
        put("topic_arn", i.topic_arn());
    } else if let Some(i) =
        input.downcast_ref::<aws_sdk_eventbridge::operation::put_events::PutEventsInput>()
    {
        put(
            "event_bus_name",
            i.entries().first().and_then(|e| e.event_bus_name()),
        );
    } else if let Some(i) = input.downcast_ref::<aws_sdk_dynamodb::operation::query::QueryInput>() {
        put("table_name", i.table_name());
    } else if let Some(i) =
        input.downcast_ref::<aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemInput>()
    {
        if let Some(items) = i.request_items() {
            let mut tables: Vec<&String> = items.keys().collect();
            tables.sort();
            fields.insert("table_names".into(), json!(tables));
        }
    }
    fields
}

/// Where the header comes from (the environment, or a fixed one in tests).
type HeaderSource = dyn Fn() -> Option<String> + Send + Sync;
/// Where finished documents go (the daemon, or a list in tests).
type Sink = dyn Fn(&Value) + Send + Sync;

/// The SDK interceptor that records one X-Ray subsegment per operation of
/// the client it is attached to.
#[derive(Clone)]
pub struct Recorder {
    header: Arc<HeaderSource>,
    sink: Arc<Sink>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Recorder")
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// Reads the header from `_X_AMZN_TRACE_ID` at each call and sends to the
    /// daemon at `AWS_XRAY_DAEMON_ADDRESS`.
    pub fn new() -> Self {
        Self::with(|| std::env::var(TRACE_HEADER_ENV).ok(), send_to_daemon)
    }

    /// A recorder with its own header source and sink.
    pub fn with(
        header: impl Fn() -> Option<String> + Send + Sync + 'static,
        sink: impl Fn(&Value) + Send + Sync + 'static,
    ) -> Self {
        Self {
            header: Arc::new(header),
            sink: Arc::new(sink),
        }
    }
}

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "BedrockRelayXRayRecorder"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Read at call time: the variable changes with every invocation.
        let header = (self.header)();
        let Some(header) = header
            .as_deref()
            .and_then(TraceHeader::parse)
            .filter(|h| h.sampled)
        else {
            return Ok(());
        };
        // The operation's name is not in the bag yet: client interceptors see
        // this hook before the operation's configuration is applied.
        let call = Call {
            header,
            service: "AWS".into(),
            operation: "unknown".into(),
            region: cfg
                .load::<aws_config::Region>()
                .map(|r| r.as_ref().to_owned()),
            start: epoch_seconds(SystemTime::now()),
            attempts: 0,
            resource: resource_of(context.input()),
        };
        cfg.interceptor_state().store_put(call);
        Ok(())
    }

    fn read_after_attempt(
        &self,
        _context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(call) = cfg.get_mut_from_interceptor_state::<Call>() {
            call.attempts += 1;
        }
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(call) = cfg.load::<Call>() else {
            return Ok(());
        };
        let mut call = call.clone();
        if let Some(metadata) = cfg.load::<Metadata>() {
            call.service = metadata.service().to_owned();
            call.operation = metadata.name().to_owned();
        }
        let response = context.response();
        let header = |name: &str| {
            response
                .and_then(|r| r.headers().get(name))
                .map(str::to_owned)
        };
        let outcome = Outcome {
            end: epoch_seconds(SystemTime::now()),
            status: response.map(|r| r.status().as_u16()),
            request_id: header("x-amzn-requestid").or_else(|| header("x-amz-request-id")),
            id_2: header("x-amz-id-2"),
            content_length: header("content-length").and_then(|l| l.parse().ok()),
            failed: context.output_or_error().is_some_and(|r| r.is_err()),
        };
        (self.sink)(&subsegment(&call, &outcome, &new_id()));
        Ok(())
    }
}

/// Reads `AWS_XRAY_DAEMON_ADDRESS`: `host:port`, or Lambda's two-protocol
/// form `udp:host:port tcp:host:port` (either order).
pub fn daemon_address(text: &str) -> Result<SocketAddr, XRayError> {
    let text = text.trim();
    let udp = text
        .split_whitespace()
        .find_map(|part| part.strip_prefix("udp:"))
        .or_else(|| (!text.contains(' ') && !text.starts_with("tcp:")).then_some(text))
        .ok_or_else(|| XRayError::Address(text.to_owned()))?;
    if let Ok(addr) = udp.parse() {
        return Ok(addr);
    }
    // A host name (`localhost:2000`): resolved once, when the first
    // subsegment is sent.
    udp.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| XRayError::Address(text.to_owned()))
}

/// A socket to the daemon, opened on the first sampled subsegment.
#[derive(Debug)]
struct Daemon {
    socket: UdpSocket,
    addr: SocketAddr,
}

impl Daemon {
    fn connect() -> Result<Option<Self>, XRayError> {
        let Ok(text) = std::env::var(DAEMON_ADDRESS_ENV) else {
            return Ok(None);
        };
        let addr = daemon_address(&text)?;
        let local: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = UdpSocket::bind(local).map_err(XRayError::Socket)?;
        // A full socket buffer drops the subsegment rather than stalling the call.
        socket.set_nonblocking(true).map_err(XRayError::Socket)?;
        Ok(Some(Self { socket, addr }))
    }

    fn send(&self, doc: &Value) -> Result<(), XRayError> {
        let datagram = format!("{DAEMON_HEADER}\n{doc}");
        self.socket
            .send_to(datagram.as_bytes(), self.addr)
            .map(|_| ())
            .map_err(|source| XRayError::Send {
                addr: self.addr,
                source,
            })
    }
}

/// The process's daemon socket; `None` when there is no daemon to send to.
fn daemon() -> Option<&'static Daemon> {
    static DAEMON: OnceLock<Option<Daemon>> = OnceLock::new();
    DAEMON
        .get_or_init(|| {
            Daemon::connect()
                .inspect_err(|err| tracing::debug!("X-Ray subsegments are off: {err}"))
                .ok()
                .flatten()
        })
        .as_ref()
}

/// Sends a document to the daemon; tracing never fails or slows a call, so
/// errors are only logged.
fn send_to_daemon(doc: &Value) {
    if let Some(daemon) = daemon() {
        if let Err(err) = daemon.send(doc) {
            tracing::debug!("{err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::operation::put_object::PutObjectOutput;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    const ROOT: &str = "1-674800aa-0123456789abcdef01234567";
    const SAMPLED: &str =
        "Root=1-674800aa-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1";

    #[test]
    fn headers_parse_in_any_order_and_only_sampled_ones_record() {
        let header = TraceHeader::parse(SAMPLED).expect("parses");
        assert_eq!(
            header,
            TraceHeader {
                root: ROOT.into(),
                parent: "53995c3f42cd8ad8".into(),
                sampled: true
            }
        );
        let reordered = TraceHeader::parse(&format!(
            "Sampled=1;Lineage=a87bd80c:0; Parent=53995c3f42cd8ad8; Root={ROOT}"
        ))
        .expect("parses");
        assert_eq!(reordered, header);
        for unsampled in ["Sampled=0", "Sampled=?", ""] {
            let text = format!("Root={ROOT};Parent=53995c3f42cd8ad8;{unsampled}");
            assert!(
                !TraceHeader::parse(&text).expect("parses").sampled,
                "{text}"
            );
        }
        for bad in [
            "Root=1-674800aa-0123456789abcdef01234567;Sampled=1",
            "Parent=53995c3f42cd8ad8;Sampled=1",
            "Root=2-674800aa-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1",
            "Root=1-674800aa-0123;Parent=53995c3f42cd8ad8;Sampled=1",
            "Root=1-674800aa-0123456789abcdef01234567;Parent=xyz;Sampled=1",
            "garbage",
        ] {
            assert_eq!(TraceHeader::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn daemon_addresses_take_lambdas_two_protocol_form() {
        let addr: SocketAddr = "169.254.79.129:2000".parse().expect("addr");
        assert_eq!(daemon_address("169.254.79.129:2000").expect("plain"), addr);
        assert_eq!(
            daemon_address("tcp:127.0.0.1:2000 udp:169.254.79.129:2000").expect("pair"),
            addr
        );
        assert!(daemon_address("tcp:127.0.0.1:2000").is_err());
        assert!(daemon_address("not an address").is_err());
    }

    fn call() -> Call {
        Call {
            header: TraceHeader::parse(SAMPLED).expect("header"),
            service: "S3".into(),
            operation: "PutObject".into(),
            region: Some("us-east-1".into()),
            start: 1_764_321_300.25,
            attempts: 3,
            resource: [
                ("bucket_name".to_owned(), json!("results")),
                ("key".to_owned(), json!("r/1.json")),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn a_subsegment_names_the_service_and_hangs_under_lambdas_segment() {
        let doc = subsegment(
            &call(),
            &Outcome {
                end: 1_764_321_300.5,
                status: Some(200),
                request_id: Some("REQ".into()),
                content_length: Some(0),
                ..Outcome::default()
            },
            "00000000000000ab",
        );
        assert_eq!(
            doc,
            json!({
                "name": "S3",
                "id": "00000000000000ab",
                "trace_id": ROOT,
                "parent_id": "53995c3f42cd8ad8",
                "start_time": 1_764_321_300.25,
                "end_time": 1_764_321_300.5,
                "type": "subsegment",
                "namespace": "aws",
                "aws": {"operation": "PutObject", "region": "us-east-1", "request_id": "REQ",
                        "retries": 2, "bucket_name": "results", "key": "r/1.json"},
                "http": {"response": {"status": 200, "content_length": 0}},
            })
        );
        assert!(is_hex_id(&new_id()));
    }

    #[test]
    fn error_flags_follow_the_status_class() {
        let flags = |status: Option<u16>, failed: bool| {
            let doc = subsegment(
                &call(),
                &Outcome {
                    end: 0.0,
                    status,
                    failed,
                    ..Outcome::default()
                },
                "1",
            );
            assert_eq!(
                doc["end_time"], doc["start_time"],
                "never ends before it starts"
            );
            ["error", "throttle", "fault"].map(|f| doc.get(f).is_some())
        };
        assert_eq!(flags(Some(429), true), [true, true, false]);
        assert_eq!(flags(Some(404), true), [true, false, false]);
        assert_eq!(flags(Some(503), true), [false, false, true]);
        assert_eq!(
            flags(None, true),
            [false, false, true],
            "no response: a fault"
        );
        assert_eq!(flags(Some(200), false), [false, false, false]);
    }

    type Sent = Arc<Mutex<Vec<Value>>>;

    fn recorder(header: Option<&'static str>) -> (Recorder, Sent) {
        let sent: Sent = Arc::default();
        let sink = Arc::clone(&sent);
        let recorder = Recorder::with(
            move || header.map(str::to_owned),
            move |doc| sink.lock().expect("lock").push(doc.clone()),
        );
        (recorder, sent)
    }

    #[tokio::test]
    async fn each_sdk_operation_sends_one_subsegment_with_its_resource() {
        let put = mock!(aws_sdk_s3::Client::put_object)
            .then_output(|| PutObjectOutput::builder().build());
        let get = mock!(aws_sdk_s3::Client::get_object).then_error(|| {
            GetObjectError::generic(ErrorMetadata::builder().code("NoSuchKey").build())
        });
        let (rec, sent) = recorder(Some(SAMPLED));
        let s3 = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&put, &get], |c| c
            .interceptor(rec.clone()));
        s3.put_object()
            .bucket("results")
            .key("r/1.json")
            .send()
            .await
            .expect("put");
        let _ = s3
            .get_object()
            .bucket("results")
            .key("r/2.json")
            .send()
            .await;

        let sent = sent.lock().expect("lock");
        assert_eq!(sent.len(), 2, "{sent:?}");
        let (put, get) = (&sent[0], &sent[1]);
        assert_eq!(put["name"], "S3");
        assert_eq!(put["aws"]["operation"], "PutObject");
        assert_eq!(put["aws"]["bucket_name"], "results");
        assert_eq!(put["aws"]["key"], "r/1.json");
        assert_eq!(put["aws"]["retries"], 0);
        assert_eq!(put["trace_id"], ROOT);
        assert_eq!(put["parent_id"], "53995c3f42cd8ad8");
        assert!(put["end_time"].as_f64() >= put["start_time"].as_f64());
        assert_eq!(get["aws"]["operation"], "GetObject");
        assert_eq!(get["aws"]["key"], "r/2.json");
        assert_ne!(put["id"], get["id"]);
    }

    #[tokio::test]
    async fn message_and_table_destinations_name_their_queue_topic_bus_and_table() {
        use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
        use aws_sdk_eventbridge::types::PutEventsRequestEntry;

        let (rec, sent) = recorder(Some(SAMPLED));
        let sqs_rule = mock!(aws_sdk_sqs::Client::send_message_batch).then_output(|| {
            aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput::builder()
                .set_successful(Some(Vec::new()))
                .set_failed(Some(Vec::new()))
                .build()
                .expect("output")
        });
        let sqs = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&sqs_rule], |c| c
            .interceptor(rec.clone()));
        let _ = sqs
            .send_message_batch()
            .queue_url("https://q/1/results")
            .send()
            .await;
        let sns_rule = mock!(aws_sdk_sns::Client::publish_batch).then_output(|| {
            aws_sdk_sns::operation::publish_batch::PublishBatchOutput::builder().build()
        });
        let sns = mock_client!(aws_sdk_sns, RuleMode::MatchAny, [&sns_rule], |c| c
            .interceptor(rec.clone()));
        let _ = sns
            .publish_batch()
            .topic_arn("arn:aws:sns:us-east-1:222222222222:t")
            .send()
            .await;
        let events_rule = mock!(aws_sdk_eventbridge::Client::put_events).then_output(|| {
            aws_sdk_eventbridge::operation::put_events::PutEventsOutput::builder().build()
        });
        let events = mock_client!(
            aws_sdk_eventbridge,
            RuleMode::MatchAny,
            [&events_rule],
            |c| c.interceptor(rec.clone())
        );
        let _ = events
            .put_events()
            .entries(
                PutEventsRequestEntry::builder()
                    .event_bus_name("bus")
                    .build(),
            )
            .send()
            .await;
        let dynamo_rule = mock!(aws_sdk_dynamodb::Client::batch_write_item).then_output(|| {
            aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemOutput::builder().build()
        });
        let dynamo = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&dynamo_rule], |c| c
            .interceptor(rec.clone()));
        let put = WriteRequest::builder()
            .put_request(
                PutRequest::builder()
                    .set_item(Some(Default::default()))
                    .build()
                    .expect("put"),
            )
            .build();
        let _ = dynamo
            .batch_write_item()
            .request_items("results", vec![put])
            .send()
            .await;

        let sent = sent.lock().expect("lock");
        let seen: Vec<(&str, &str, &Value)> = sent
            .iter()
            .map(|d| {
                (
                    d["name"].as_str().unwrap_or(""),
                    d["aws"]["operation"].as_str().unwrap_or(""),
                    &d["aws"],
                )
            })
            .collect();
        assert_eq!(seen.len(), 4, "{sent:?}");
        assert_eq!((seen[0].0, seen[0].1), ("SQS", "SendMessageBatch"));
        assert_eq!(seen[0].2["queue_url"], "https://q/1/results");
        assert_eq!((seen[1].0, seen[1].1), ("SNS", "PublishBatch"));
        assert_eq!(
            seen[1].2["topic_arn"],
            "arn:aws:sns:us-east-1:222222222222:t"
        );
        assert_eq!((seen[2].0, seen[2].1), ("EventBridge", "PutEvents"));
        assert_eq!(seen[2].2["event_bus_name"], "bus");
        assert_eq!((seen[3].0, seen[3].1), ("DynamoDB", "BatchWriteItem"));
        assert_eq!(seen[3].2["table_names"], json!(["results"]));
    }

    #[tokio::test]
    async fn unsampled_or_untraced_calls_send_nothing() {
        for header in [
            None,
            Some("Root=1-674800aa-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=0"),
        ] {
            let put = mock!(aws_sdk_s3::Client::put_object)
                .then_output(|| PutObjectOutput::builder().build());
            let (rec, sent) = recorder(header);
            let s3 = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&put], |c| c
                .interceptor(rec.clone()));
            s3.put_object()
                .bucket("b")
                .key("k")
                .send()
                .await
                .expect("put");
            assert!(sent.lock().expect("lock").is_empty(), "{header:?}");
        }
    }
}
