//! X-Ray subsegments from the built function in the local lab: a UDP socket
//! stands in for Lambda's X-Ray daemon (`AWS_XRAY_DAEMON_ADDRESS`), and the
//! Runtime API sends each invocation's `Lambda-Runtime-Trace-Id`.
//!
//! Needs the lab's Python tools: `scripts/setup` (the test command runs it).

use std::time::Duration;

use bedrock_relay::XRAY_DAEMON_HEADER as DAEMON_HEADER;
use lab::runtime_api::Outcome;
use serde_json::{json, Value};
use tokio::net::UdpSocket;

mod common;
use common::{event_bytes, Bench, TIMEOUT};

/// How long the daemon waits for one more datagram before it calls a batch
/// complete. The function sends before it answers, so this only covers
/// loopback delivery.
const QUIET: Duration = Duration::from_millis(300);

/// A stand-in X-Ray daemon.
struct Daemon {
    socket: UdpSocket,
}

impl Daemon {
    async fn bind() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("udp bind");
        Self { socket }
    }

    fn address(&self) -> String {
        self.socket.local_addr().expect("local addr").to_string()
    }

    /// The documents received until the socket has been quiet for [`QUIET`],
    /// each checked for the daemon's protocol header.
    async fn drain(&self) -> Vec<Value> {
        let mut docs = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while let Ok(received) = tokio::time::timeout(QUIET, self.socket.recv(&mut buf)).await {
            let len = received.expect("udp recv");
            let text = std::str::from_utf8(&buf[..len]).expect("utf-8 datagram");
            let (header, doc) = text.split_once('\n').expect("header line");
            assert_eq!(header, DAEMON_HEADER);
            docs.push(serde_json::from_str(doc).expect("json document"));
        }
        docs
    }
}

/// A trace header with its own root and parent; `n` keeps them apart.
fn trace(n: u8, sampled: bool) -> (String, String, String) {
    let root = format!("1-674800aa-{:024x}", 0xabc000 + u32::from(n));
    let parent = format!("{:016x}", 0x5399_5c3f_0000 + u64::from(n));
    let header = format!("Root={root};Parent={parent};Sampled={}", u8::from(sampled));
    (header, root, parent)
}

async fn invoke_traced(bench: &Bench, event: &Value, header: &str) {
    let outcome = bench
        .runtime
        .invoke_traced(event.to_string().into_bytes(), TIMEOUT, header)
        .await
        .expect("invocation answered");
    assert!(
        matches!(outcome, Outcome::Response { .. }),
        "{outcome:?}\n{}",
        bench.function.logs().join("\n")
    );
}

/// A new job on a warm function: the claim, the model call, the record (RoleA's
/// credentials are cached, and a new claim means nothing to read back).
const WARM_JOB_CALLS: &[(&str, &str)] = &[
    ("S3", "PutObject"),
    ("Bedrock Runtime", "Converse"),
    ("S3", "PutObject"),
];

/// Invokes `event` under sampled trace `n` and returns the subsegments it
/// sent, after checking they are the `expected` calls, in start order, all
/// under the invocation's trace.
async fn sampled_calls(
    bench: &Bench,
    daemon: &Daemon,
    n: u8,
    event: &Value,
    expected: &[(&str, &str)],
) -> Vec<Value> {
    let (header, root, parent) = trace(n, true);
    invoke_traced(bench, event, &header).await;
    let mut docs = daemon.drain().await;
    assert_eq!(calls(&mut docs), pairs(expected), "{docs:#?}");
    assert_under(&docs, &root, &parent);
    docs
}

async fn traced_bench(daemon: &Daemon) -> Bench {
    Bench::start(&[("AWS_XRAY_DAEMON_ADDRESS", &daemon.address())]).await
}

fn job_event() -> Value {
    serde_json::from_slice(&event_bytes("job-event.json")).expect("json")
}

/// `(name, operation)` of each subsegment, in start order.
fn calls(docs: &mut [Value]) -> Vec<(String, String)> {
    docs.sort_by(|a, b| {
        let start = |d: &Value| d["start_time"].as_f64().unwrap_or(0.0);
        start(a).total_cmp(&start(b))
    });
    docs.iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap_or("").to_owned(),
                d["aws"]["operation"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(n, o)| ((*n).to_owned(), (*o).to_owned()))
        .collect()
}

/// Every subsegment belongs to the invocation's trace, hangs under Lambda's
/// function segment and is a well-formed AWS subsegment.
fn assert_under(docs: &[Value], root: &str, parent: &str) {
    let mut ids = Vec::new();
    for doc in docs {
        assert_eq!(doc["trace_id"], root, "{doc}");
        assert_eq!(doc["parent_id"], parent, "{doc}");
        assert_eq!(doc["type"], "subsegment", "{doc}");
        assert_eq!(doc["namespace"], "aws", "{doc}");
        assert_eq!(doc["aws"]["region"], "us-east-1", "{doc}");
        let id = doc["id"].as_str().expect("id");
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{doc}"
        );
        ids.push(id.to_owned());
        let (start, end) = (
            doc["start_time"].as_f64().expect("start"),
            doc["end_time"].as_f64().expect("end"),
        );
        assert!(start > 1.7e9 && end >= start, "{doc}");
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), docs.len(), "subsegment ids are unique");
}

/// A cold sampled job sends one subsegment per AWS call (the S3 read-back,
/// the claim, Converse, the AssumeRole it needs, the record), named as X-Ray names AWS
/// services; a warm one reuses RoleA's credentials and sends no STS subsegment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_invocations_send_a_subsegment_per_aws_call() {
    let daemon = Daemon::bind().await;
    let bench = traced_bench(&daemon).await;

    let event = job_event();
    let docs = sampled_calls(
        &bench,
        &daemon,
        1,
        &event,
        &[
            ("S3", "PutObject"),
            ("Bedrock Runtime", "Converse"),
            ("STS", "AssumeRole"),
            ("S3", "PutObject"),
        ],
    )
    .await;
    let [claim, converse, assume_role, put] = &docs[..] else {
        unreachable!("four calls checked above");
    };
    let key = format!("results/{}.json", event["id"].as_str().expect("id"));
    // The job is claimed (a conditional write) before the model call; a new
    // claim proves there is no earlier result, so nothing is read back.
    assert_eq!(
        claim["aws"]["key"],
        format!("results/_claims/{}.json", event["id"].as_str().expect("id")).as_str()
    );
    assert_eq!(claim["http"]["response"]["status"], 200);

    assert_eq!(converse["aws"]["model_id"], "amazon.nova-lite-v1:0");
    assert_eq!(converse["http"]["response"]["status"], 200);
    assert_eq!(converse["aws"]["retries"], 0);
    // AssumeRole runs inside Converse: the identity cache fetches RoleA's
    // credentials while signing the first attempt.
    let within = |inner: &Value, outer: &Value, field: &str| {
        inner[field].as_f64() >= outer["start_time"].as_f64()
            && inner[field].as_f64() <= outer["end_time"].as_f64()
    };
    assert!(within(assume_role, converse, "start_time"));
    assert!(within(assume_role, converse, "end_time"));
    assert_eq!(
        assume_role["aws"]["role_arn"],
        bench.lab.role_a_arn.as_str()
    );
    assert_eq!(assume_role["http"]["response"]["status"], 200);
    assert!(
        assume_role["aws"]["request_id"].is_string(),
        "STS request id recorded: {assume_role}"
    );

    assert_eq!(put["aws"]["bucket_name"], "relay-results");
    assert_eq!(put["aws"]["key"], key.as_str());
    assert_eq!(put["http"]["response"]["status"], 200);
    for doc in [converse, assume_role, put] {
        for flag in ["error", "throttle", "fault"] {
            assert!(doc.get(flag).is_none(), "{flag} on a success: {doc}");
        }
    }

    // Warm: a new event under a new trace; RoleA's credentials are cached.
    let mut event = job_event();
    event["id"] = json!("6f2c1f5e-2b1d-4c8e-9a57-0000000000aa");
    sampled_calls(&bench, &daemon, 2, &event, WARM_JOB_CALLS).await;

    // The same event again (a redelivery): the claim is refused with 412, a
    // client error and not a fault; the claim and the result are read back
    // and the model is not called.
    let docs = sampled_calls(
        &bench,
        &daemon,
        3,
        &event,
        &[
            ("S3", "PutObject"),
            ("S3", "GetObject"),
            ("S3", "GetObject"),
        ],
    )
    .await;
    let [refused, _claim, read_back] = &docs[..] else {
        unreachable!("three calls checked above");
    };
    assert_eq!(refused["http"]["response"]["status"], 412);
    assert_eq!(refused["error"], true);
    assert!(refused.get("fault").is_none());
    assert_eq!(
        read_back["aws"]["key"],
        format!("results/{}.json", event["id"].as_str().expect("id")).as_str()
    );
    assert_eq!(read_back["http"]["response"]["status"], 200);
}

/// Invocations that are not sampled send nothing to the daemon, whatever
/// tracing mode sent them; the same process then traces a sampled one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_invocations_send_nothing() {
    let daemon = Daemon::bind().await;
    let bench = traced_bench(&daemon).await;

    for (n, header) in [
        trace(1, false).0,
        // Sampling not decided upstream: Lambda decides, and said nothing.
        trace(2, false).0.replace("Sampled=0", "Sampled=?"),
        // No sampling decision at all.
        trace(3, false).0.replace(";Sampled=0", ""),
    ]
    .iter()
    .enumerate()
    {
        let mut event = job_event();
        event["id"] = json!(format!("6f2c1f5e-2b1d-4c8e-9a57-00000000010{n}"));
        invoke_traced(&bench, &event, header).await;
    }
    // The lab's default header is not sampled either.
    let outcome = bench.invoke("scheduler-bare-job.json").await;
    assert!(matches!(outcome, Outcome::Response { .. }), "{outcome:?}");
    let docs = daemon.drain().await;
    assert!(docs.is_empty(), "{docs:#?}");

    let mut event = job_event();
    event["id"] = json!("6f2c1f5e-2b1d-4c8e-9a57-0000000001ff");
    sampled_calls(&bench, &daemon, 4, &event, WARM_JOB_CALLS).await;
}
