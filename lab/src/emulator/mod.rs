//! A Bedrock Runtime emulator: Converse and InvokeModel over the real wire
//! protocol (restJson1, model ID percent-encoded in the path, errors as status +
//! `x-amzn-ErrorType` + JSON `message`).
//!
//! - Replies are derived from the request, so a test can see what was sent.
//! - Every request's SigV4 signature is checked against the sessions moto
//!   issued; the calling account and role are recorded with the call.
//! - The 2026 model features are checked and answered as Bedrock does:
//!   structured output (`outputConfig.textFormat`, `schema.rs`), prompt
//!   caching (`cachePoint` blocks, `cache.rs`), guardrails (`guardrailConfig`,
//!   the InvokeModel guardrail headers and ApplyGuardrail,
//!   `POST /guardrail/{id}/version/{version}/apply`), service tiers
//!   (`serviceTier`, `X-Amzn-Bedrock-Service-Tier`) and the object check of
//!   `additionalModelRequestFields` (`features.rs`).
//! - [`Knobs`]: added latency; a requests-per-minute quota per account
//!   (answered with `ThrottlingException`); model access per account
//!   (`AccessDeniedException`); structured answers that mismatch their schema
//!   (`structured_mismatches`, `mismatch_when_contains`) and the refused schema
//!   keywords (`unsupported_schema_keywords`); the prompt cache's minimum
//!   prefix (`cache_min_tokens`); the guardrails that exist (`guardrails`); the
//!   tiers each model offers (`tiers`) and flex's added latency
//!   (`flex_extra_latency_ms`). Injected errors are queued apart ([`Fault`]).
//!
//! Control endpoints live under `/_lab/`: `GET calls`, `GET stats`,
//! `PUT knobs`, `POST faults`, `POST reset` (which also empties the prompt cache).
//!
//! This module owns the server: routing, signatures, quota, faults and the
//! record of calls; `reply.rs` builds the answers.
//!
//! The batch-inference control plane (Create / Get / List /
//! StopModelInvocationJob and its `/_lab/batch/` endpoints) is
//! [`crate::batch_jobs`], served on the same port.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::batch_jobs::BatchJobs;
use crate::moto::{MotoSession, MotoSessions};
use crate::sigv4::{expected_signature, Authorization};
use crate::LabError;

mod cache;
mod features;
mod knobs;
mod reply;
mod schema;

use cache::PromptCache;
use features::InvokeOptions;
pub use features::{LabGuardrail, UNKNOWN_GUARDRAIL};
pub use knobs::{Call, Fault, Knobs, Stats};
use reply::invoke_headers;
use reply::Live;
pub(crate) use reply::{converse_reply, invoke_reply, Env, Tokens};
pub use schema::DEFAULT_UNSUPPORTED_SCHEMA_KEYWORDS;

/// An error answer: HTTP status, `x-amzn-ErrorType`, message.
pub(crate) type ApiError = (u16, &'static str, String);

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) sessions: Option<MotoSessions>,
    pub(crate) calls: Mutex<Vec<Call>>,
    pub(crate) knobs: Mutex<Knobs>,
    faults: Mutex<VecDeque<Fault>>,
    quota: Mutex<HashMap<String, VecDeque<Instant>>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    cache: PromptCache,
    pub(crate) batch: BatchJobs,
}

/// A running emulator; stops when dropped.
#[derive(Debug)]
pub struct BedrockEmulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BedrockEmulator {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.batch.abort_all();
    }
}

impl BedrockEmulator {
    /// Starts on a free loopback port. With `sessions`, every request must be
    /// signed by a session moto issued; without, signatures are not checked.
    pub async fn start(sessions: Option<MotoSessions>) -> Result<Self, LabError> {
        Self::start_on(sessions, "127.0.0.1:0").await
    }

    /// Starts on a given address.
    pub async fn start_on(sessions: Option<MotoSessions>, bind: &str) -> Result<Self, LabError> {
        let shared = Arc::new(Shared {
            sessions,
            calls: Mutex::default(),
            knobs: Mutex::default(),
            faults: Mutex::default(),
            quota: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            cache: PromptCache::default(),
            batch: BatchJobs::default(),
        });
        let app = Router::new()
            .route("/model/{model_id}/{operation}", post(model_operation))
            .route(
                "/guardrail/{guardrail_id}/version/{guardrail_version}/apply",
                post(apply_guardrail),
            )
            .route("/_lab/calls", get(calls))
            .route("/_lab/stats", get(stats))
            .route("/_lab/knobs", put(set_knobs))
            .route("/_lab/faults", post(add_faults))
            .route("/_lab/reset", post(reset))
            .merge(crate::batch_jobs::routes())
            .with_state(Arc::clone(&shared));
        let (addr, task) = crate::serve(app, bind).await?;
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared.calls).clone()
    }

    /// Replaces the knobs.
    pub fn set_knobs(&self, knobs: Knobs) {
        *lock(&self.shared.knobs) = knobs;
    }

    /// Forgets every cached prompt prefix, as if their TTLs had passed.
    pub fn clear_prompt_cache(&self) {
        self.shared.cache.clear();
    }

    /// Queues injected errors.
    pub fn add_fault(&self, fault: Fault) {
        lock(&self.shared.faults).push_back(fault);
    }

    /// The batch-inference control plane served on this emulator's port.
    pub fn batch_jobs(&self) -> &BatchJobs {
        &self.shared.batch
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            requests: lock(&self.shared.calls).len(),
            max_in_flight: self.shared.max_in_flight.load(Ordering::SeqCst),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn calls(State(shared): State<Arc<Shared>>) -> Json<Vec<Call>> {
    Json(lock(&shared.calls).clone())
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<Stats> {
    Json(Stats {
        requests: lock(&shared.calls).len(),
        max_in_flight: shared.max_in_flight.load(Ordering::SeqCst),
    })
}

async fn set_knobs(State(shared): State<Arc<Shared>>, Json(knobs): Json<Knobs>) -> StatusCode {
    *lock(&shared.knobs) = knobs;
    StatusCode::NO_CONTENT
}

async fn add_faults(
    State(shared): State<Arc<Shared>>,
    Json(faults): Json<Vec<Fault>>,
) -> StatusCode {
    lock(&shared.faults).extend(faults);
    StatusCode::NO_CONTENT
}

async fn reset(State(shared): State<Arc<Shared>>) -> StatusCode {
    lock(&shared.calls).clear();
    lock(&shared.faults).clear();
    lock(&shared.quota).clear();
    *lock(&shared.knobs) = Knobs::default();
    shared.cache.clear();
    shared.max_in_flight.store(0, Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

/// An AWS-shaped error answer.
pub(crate) fn aws_error(status: u16, error_type: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [
            ("x-amzn-ErrorType", error_type),
            ("content-type", "application/json"),
        ],
        Json(json!({ "message": message })),
    )
        .into_response()
}

pub(crate) struct Caller {
    pub(crate) access_key_id: Option<String>,
    pub(crate) session: Option<MotoSession>,
}

/// Checks the signature; `Err` is the error answer.
pub(crate) async fn authenticate(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Caller, (u16, &'static str, String)> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(Authorization::parse);
    let Some(sessions) = &shared.sessions else {
        return Ok(Caller {
            access_key_id: auth.map(|a| a.access_key_id),
            session: None,
        });
    };
    let auth = auth.ok_or((
        403,
        "AccessDeniedException",
        "Missing Authentication Token".to_owned(),
    ))?;
    let session = sessions.lookup(&auth.access_key_id).await.ok_or((
        403,
        "UnrecognizedClientException",
        "The security token included in the request is invalid.".to_owned(),
    ))?;
    let token = headers
        .get("x-amz-security-token")
        .and_then(|v| v.to_str().ok());
    if token != Some(session.session_token.as_str()) {
        return Err((
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".to_owned(),
        ));
    }
    let header_pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let expected = expected_signature(
        &auth,
        &session.secret_access_key,
        Some(&session.session_token),
        method.as_str(),
        path_and_query,
        &header_pairs,
        body,
    )
    .map_err(|e| (403, "InvalidSignatureException", e))?;
    if expected != auth.signature {
        return Err((
            403,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided."
                .to_owned(),
        ));
    }
    Ok(Caller {
        access_key_id: Some(auth.access_key_id),
        session: Some(session),
    })
}

/// Decrements the in-flight count when a request ends, however it ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

enum Operation {
    Converse,
    InvokeModel,
    /// ApplyGuardrail of this guardrail version (the identifier is passed as
    /// the model id).
    ApplyGuardrail {
        version: String,
    },
}

/// `POST /model/{modelId}/converse` and `POST /model/{modelId}/invoke`.
async fn model_operation(
    State(shared): State<Arc<Shared>>,
    Path((model_id, operation)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let operation = match operation.as_str() {
        "converse" => Operation::Converse,
        "invoke" => Operation::InvokeModel,
        other => {
            return aws_error(
                404,
                "UnknownOperationException",
                &format!("unknown operation `{other}`"),
            )
        }
    };
    handle(shared, operation, model_id, method, uri, headers, body).await
}

/// `POST /guardrail/{guardrailIdentifier}/version/{guardrailVersion}/apply`.
async fn apply_guardrail(
    State(shared): State<Arc<Shared>>,
    Path((guardrail_id, version)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let operation = Operation::ApplyGuardrail { version };
    handle(shared, operation, guardrail_id, method, uri, headers, body).await
}

async fn handle(
    shared: Arc<Shared>,
    operation: Operation,
    model_id: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _in_flight = InFlight(&shared.in_flight);
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);

    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut call = Call::arriving(
        match operation {
            Operation::Converse => "Converse",
            Operation::InvokeModel => "InvokeModel",
            Operation::ApplyGuardrail { .. } => "ApplyGuardrail",
        },
        model_id.clone(),
        request.clone(),
        at_ms,
    );

    let outcome = answer(
        &shared, &operation, &model_id, &method, &uri, &headers, &body, &request, &mut call,
    )
    .await;
    let response = match outcome {
        Ok(reply) => {
            let mut response = Json(reply.body).into_response();
            for (name, value) in reply.headers {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        Err((status, error_type, message)) => {
            call.status = status;
            call.error_type = Some(error_type.to_owned());
            aws_error(status, error_type, &message)
        }
    };
    let mut calls = lock(&shared.calls);
    call.seq = calls.len();
    calls.push(call);
    response
}

#[allow(clippy::too_many_arguments)]
async fn answer(
    shared: &Shared,
    operation: &Operation,
    model_id: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    request: &Value,
    call: &mut Call,
) -> Result<Reply, ApiError> {
    let caller = authenticate(shared, method, uri, headers, body).await?;
    call.access_key_id = caller.access_key_id;
    if let Some(session) = &caller.session {
        call.account = Some(session.account_id.clone());
        call.role_arn = Some(session.role_arn.clone());
        call.principal_arn = Some(session.arn.clone());
    }
    let knobs = lock(&shared.knobs).clone();
    let account = call.account.clone().unwrap_or_else(|| "unknown".into());

    if let Operation::ApplyGuardrail { version } = operation {
        // A guardrail is no model: model access, quota and faults are the
        // model's; only the latency applies.
        sleep_ms(knobs.latency_ms).await;
        let body = features::apply_guardrail(&knobs, model_id, version, request)?;
        return Ok(Reply {
            body,
            headers: Vec::new(),
        });
    }

    if let Some(allowed) = &knobs.model_access {
        if !allowed.contains(&account) {
            return Err((
                403,
                "AccessDeniedException",
                format!("You don't have access to the model with the specified model ID (account {account})."),
            ));
        }
    }
    if let Some(rpm) = knobs.quota_rpm {
        let window_ms = knobs.quota_window_ms.unwrap_or(60_000).max(1);
        let allowed = (u64::from(rpm) * window_ms / 60_000).max(1) as usize;
        let mut quota = lock(&shared.quota);
        let window = quota.entry(account.clone()).or_default();
        let now = Instant::now();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_millis(window_ms))
        {
            window.pop_front();
        }
        if window.len() >= allowed {
            return Err((
                429,
                "ThrottlingException",
                "Too many requests, please wait before trying again.".into(),
            ));
        }
        window.push_back(now);
    }
    if let Some(fault) = take_fault(shared, model_id, body) {
        let error_type: &'static str = match fault.error_type.as_str() {
            "ThrottlingException" => "ThrottlingException",
            "ServiceUnavailableException" => "ServiceUnavailableException",
            "InternalServerException" => "InternalServerException",
            "ModelNotReadyException" => "ModelNotReadyException",
            "ModelTimeoutException" => "ModelTimeoutException",
            "AccessDeniedException" => "AccessDeniedException",
            "ValidationException" => "ValidationException",
            "ResourceNotFoundException" => "ResourceNotFoundException",
            _ => "InternalServerException",
        };
        return Err((fault.status, error_type, format!("injected {error_type}")));
    }
    let env = Env {
        knobs: &knobs,
        live: Some(Live {
            knobs: &shared.knobs,
            cache: &shared.cache,
            scope: format!("{account}/{model_id}"),
            now: Instant::now(),
        }),
    };
    let outcome = check_model_id(model_id).and_then(|()| match operation {
        Operation::Converse => converse_reply(model_id, request, &env),
        _ => invoke_reply(
            model_id,
            request,
            &InvokeOptions::from_headers(headers),
            &env,
        ),
    });
    // The answer takes its time whatever it is; flex adds to it.
    let latency_ms = outcome
        .as_ref()
        .map_or(knobs.latency_ms, |answer| answer.latency_ms);
    sleep_ms(latency_ms).await;
    let answer = outcome?;
    let headers = match operation {
        Operation::Converse => Vec::new(),
        _ => {
            let mut headers = invoke_headers(answer.latency_ms, answer.tokens);
            if let Some(tier) = answer.tier {
                headers.push(("x-amzn-bedrock-service-tier", tier));
            }
            headers
        }
    };
    Ok(Reply {
        body: answer.body,
        headers,
    })
}

async fn sleep_ms(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// A successful answer: the JSON body and any headers besides the content type.
struct Reply {
    body: Value,
    headers: Vec<(&'static str, String)>,
}

fn take_fault(shared: &Shared, model_id: &str, body: &[u8]) -> Option<Fault> {
    let mut faults = lock(&shared.faults);
    let index = faults.iter().position(|f| {
        f.count > 0
            && f.model.as_deref().is_none_or(|m| m == model_id)
            && f.body_contains.as_deref().is_none_or(|text| {
                body.windows(text.len().max(1))
                    .any(|window| window == text.as_bytes())
            })
    })?;
    let fault = faults.get_mut(index)?;
    fault.count -= 1;
    let taken = fault.clone();
    if fault.count == 0 {
        faults.remove(index);
    }
    Some(taken)
}

/// Bedrock's rule of thumb: `provider.name[:version]`, an inference profile
/// (`us.provider.name`), or an ARN.
pub(crate) fn check_model_id(model_id: &str) -> Result<(), (u16, &'static str, String)> {
    let plausible = model_id.starts_with("arn:aws")
        || (model_id.contains('.')
            && model_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:_".contains(c)));
    if plausible {
        Ok(())
    } else {
        Err((
            400,
            "ValidationException",
            "The provided model identifier is invalid.".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw request to the emulator: status, error type, answer headers and JSON body.
    async fn send(
        endpoint: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> (u16, Option<String>, HeaderMap, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{endpoint}{path}"))
            .json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("emulator answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let error_type = headers
            .get("x-amzn-ErrorType")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.json().await.unwrap_or(Value::Null);
        (status, error_type, headers, body)
    }

    async fn post(endpoint: &str, model_path: &str, body: Value) -> (u16, Option<String>, Value) {
        let (status, error_type, _, body) = send(
            endpoint,
            &format!("/model/{model_path}/converse"),
            &[],
            body,
        )
        .await;
        (status, error_type, body)
    }

    /// Sets knobs as a test client would, through `PUT /_lab/knobs`.
    async fn put_knobs(endpoint: &str, knobs: Value) {
        let status = reqwest::Client::new()
            .put(format!("{endpoint}/_lab/knobs"))
            .json(&knobs)
            .send()
            .await
            .expect("emulator answers")
            .status();
        assert_eq!(status.as_u16(), 204);
    }

    /// ApplyGuardrail over HTTP: blocked and passed texts, an unknown guardrail,
    /// the call recorded, and model access and quota not applied.
    #[tokio::test]
    async fn apply_guardrail_answers_over_http_without_model_access_or_quota() {
        let emulator = BedrockEmulator::start(None).await.expect("starts");
        let endpoint = emulator.endpoint();
        // Only the id: versions, trigger and message take their defaults.
        put_knobs(
            &endpoint,
            json!({"guardrails": [{"id": "gr1"}], "model_access": [], "quota_rpm": 1}),
        )
        .await;
        let blocked =
            json!({"source": "INPUT", "content": [{"text": {"text": "something FORBIDDEN"}}]});
        let arn = "arn%3Aaws%3Abedrock%3Aus-east-1%3A111122223333%3Aguardrail%2Fgr1";
        let (status, _, _, body) = send(
            &endpoint,
            &format!("/guardrail/{arn}/version/DRAFT/apply"),
            &[],
            blocked.clone(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["action"], "GUARDRAIL_INTERVENED");
        assert_eq!(
            body["outputs"],
            json!([{"text": "Sorry, I can't help with that."}])
        );
        assert_eq!(body["usage"]["wordPolicyUnits"], 1);
        let passed = json!({"source": "OUTPUT", "content": [{"text": {"text": "all fine"}}]});
        let (status, _, _, body) =
            send(&endpoint, "/guardrail/gr1/version/1/apply", &[], passed).await;
        assert_eq!((status, body["action"].as_str()), (200, Some("NONE")));
        let (status, error_type, _, _) =
            send(&endpoint, "/guardrail/gr1/version/3/apply", &[], blocked).await;
        assert_eq!(status, 404);
        assert_eq!(error_type.as_deref(), Some("ResourceNotFoundException"));
        let calls = emulator.calls();
        assert_eq!(calls.len(), 3);
        assert!(calls.iter().all(|c| c.operation == "ApplyGuardrail"));
        assert_eq!(
            calls[0].model_id,
            "arn:aws:bedrock:us-east-1:111122223333:guardrail/gr1"
        );
        assert_eq!(
            calls[2].error_type.as_deref(),
            Some("ResourceNotFoundException")
        );
    }

    /// Over HTTP the second call reads the first's prefix, and `POST /_lab/reset` empties the cache.
    #[tokio::test]
    async fn the_prompt_cache_counts_across_calls_and_reset_clears_it() {
        let emulator = BedrockEmulator::start(None).await.expect("starts");
        let endpoint = emulator.endpoint();
        let request = |question: &str| {
            json!({"messages": [{"role": "user", "content": [
                {"text": "one two three four"}, {"cachePoint": {"type": "default"}}, {"text": question}
            ]}]})
        };
        let model = "amazon.nova-pro-v1%3A0";
        let (_, _, first) = post(&endpoint, model, request("first?")).await;
        let (_, _, second) = post(&endpoint, model, request("and second?")).await;
        assert_eq!(first["usage"]["cacheWriteInputTokens"], 4);
        assert_eq!(second["usage"]["cacheReadInputTokens"], 4);
        assert_eq!(second["usage"]["inputTokens"], 2);
        let status = reqwest::Client::new()
            .post(format!("{endpoint}/_lab/reset"))
            .send()
            .await
            .expect("reset")
            .status();
        assert_eq!(status.as_u16(), 204);
        let (_, _, third) = post(&endpoint, model, request("third")).await;
        assert_eq!(third["usage"]["cacheReadInputTokens"], 0);
        assert_eq!(third["usage"]["cacheWriteInputTokens"], 4);
    }

    /// InvokeModel reports the tier it ran on in a header, flex slower; an unoffered tier is refused.
    #[tokio::test]
    async fn invoke_model_reports_its_tier_and_flex_is_slower() {
        let emulator = BedrockEmulator::start(None).await.expect("starts");
        emulator.set_knobs(Knobs {
            flex_extra_latency_ms: 300,
            ..Knobs::default()
        });
        let endpoint = emulator.endpoint();
        let body = json!({"inputText": "hello"});
        let path = "/model/amazon.nova-pro-v1%3A0/invoke";
        let started = Instant::now();
        let (status, _, headers, _) = send(
            &endpoint,
            path,
            &[("X-Amzn-Bedrock-Service-Tier", "flex")],
            body.clone(),
        )
        .await;
        assert_eq!(status, 200);
        assert!(started.elapsed() >= Duration::from_millis(300));
        let header = |headers: &HeaderMap, name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            header(&headers, "x-amzn-bedrock-service-tier").as_deref(),
            Some("flex")
        );
        assert_eq!(
            header(&headers, "x-amzn-bedrock-invocation-latency").as_deref(),
            Some("300")
        );
        let (_, _, headers, _) = send(&endpoint, path, &[], body.clone()).await;
        assert_eq!(
            header(&headers, "x-amzn-bedrock-service-tier"),
            None,
            "reported only when asked"
        );
        let (status, error_type, _, message) = send(
            &endpoint,
            "/model/amazon.nova-lite-v1%3A0/invoke",
            &[("X-Amzn-Bedrock-Service-Tier", "priority")],
            body,
        )
        .await;
        assert_eq!(
            (status, error_type.as_deref()),
            (400, Some("ValidationException"))
        );
        assert_eq!(
            message["message"],
            "The service tier 'priority' is not supported for model 'amazon.nova-lite-v1:0'."
        );
    }

    #[tokio::test]
    async fn quota_throttles_per_account_with_the_wire_error_shape() {
        let emulator = BedrockEmulator::start(None).await.expect("starts");
        emulator.set_knobs(Knobs {
            quota_rpm: Some(2),
            ..Knobs::default()
        });
        let body = json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]});
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(
                post(
                    &emulator.endpoint(),
                    "amazon.nova-lite-v1%3A0",
                    body.clone(),
                )
                .await,
            );
        }
        assert_eq!(statuses[0].0, 200);
        assert_eq!(statuses[1].0, 200);
        assert_eq!(statuses[2].0, 429);
        assert_eq!(statuses[2].1.as_deref(), Some("ThrottlingException"));
        assert!(statuses[2].2["message"]
            .as_str()
            .is_some_and(|m| m.contains("Too many requests")));
        let calls = emulator.calls();
        assert_eq!(
            calls[0].model_id, "amazon.nova-lite-v1:0",
            "model id decoded from the path"
        );
        assert_eq!(calls[2].error_type.as_deref(), Some("ThrottlingException"));
    }

    #[tokio::test]
    async fn injected_faults_are_served_in_order_then_cleared() {
        let emulator = BedrockEmulator::start(None).await.expect("starts");
        emulator.add_fault(Fault {
            status: 503,
            error_type: "ServiceUnavailableException".into(),
            count: 1,
            model: Some("other.model-v1".into()),
            body_contains: None,
        });
        emulator.add_fault(Fault {
            status: 500,
            error_type: "InternalServerException".into(),
            count: 1,
            model: None,
            body_contains: None,
        });
        let body = json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]});
        let endpoint = emulator.endpoint();
        assert_eq!(
            post(&endpoint, "a.model-v1", body.clone())
                .await
                .1
                .as_deref(),
            Some("InternalServerException")
        );
        assert_eq!(
            post(&endpoint, "a.model-v1", body.clone()).await.0,
            200,
            "the other fault is for another model"
        );
        assert_eq!(post(&endpoint, "other.model-v1", body.clone()).await.0, 503);
        assert_eq!(post(&endpoint, "other.model-v1", body).await.0, 200);
    }

    #[test]
    fn model_ids_are_checked_for_plausibility() {
        assert!(check_model_id("not a model").is_err());
        assert!(check_model_id("us.anthropic.claude-3-haiku-20240307-v1:0").is_ok());
    }

    #[tokio::test]
    async fn unsigned_requests_are_refused_when_signatures_are_checked() {
        let emulator = BedrockEmulator::start(Some(MotoSessions::new("http://127.0.0.1:9")))
            .await
            .expect("starts");
        let body = json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]});
        let (status, error_type, _) = post(&emulator.endpoint(), "a.model-v1", body).await;
        assert_eq!(status, 403);
        assert_eq!(error_type.as_deref(), Some("AccessDeniedException"));
    }
}
