//! The plane's HTTP: the routes of Create / Get / List /
//! StopModelInvocationJob (restJson1) and of the `/_lab/batch/*` control
//! endpoints; each Bedrock call authenticated (SigV4 → moto session) and
//! recorded in the emulator's `calls()`; Get, List (filters, sort order,
//! pages) and Stop themselves.

use std::sync::Arc;

use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::ids::now_ms;
use super::{
    constraint, matches_ident, not_found, validation, ApiError, BatchEvent, BatchJob, BatchJobs,
    BatchKnobs, CallerInfo, Entry, STATUSES,
};
use crate::emulator::{self, lock, Call, Shared};

/// The control plane's routes, merged into the emulator's router.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/model-invocation-job", post(create_route))
        .route("/model-invocation-job/{job}", get(get_route))
        .route("/model-invocation-job/{job}/stop", post(stop_route))
        .route("/model-invocation-jobs", get(list_route))
        .route("/_lab/batch/knobs", get(get_knobs).put(put_knobs))
        .route("/_lab/batch/jobs", get(jobs_route))
        .route("/_lab/batch/events", get(events_route))
        .route("/_lab/batch/moto", put(moto_route))
        .route("/_lab/batch/reset", post(reset_route))
}

enum Op {
    Create,
    Get(String),
    List,
    Stop(String),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Create => "CreateModelInvocationJob",
            Op::Get(_) => "GetModelInvocationJob",
            Op::List => "ListModelInvocationJobs",
            Op::Stop(_) => "StopModelInvocationJob",
        }
    }
}

struct Incoming {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

async fn create_route(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Incoming {
        method,
        uri,
        headers,
        body,
    };
    control(shared, Op::Create, incoming).await
}

async fn get_route(
    State(shared): State<Arc<Shared>>,
    Path(job): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Incoming {
        method,
        uri,
        headers,
        body,
    };
    control(shared, Op::Get(job), incoming).await
}

async fn stop_route(
    State(shared): State<Arc<Shared>>,
    Path(job): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Incoming {
        method,
        uri,
        headers,
        body,
    };
    control(shared, Op::Stop(job), incoming).await
}

async fn list_route(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Incoming {
        method,
        uri,
        headers,
        body,
    };
    control(shared, Op::List, incoming).await
}

/// Authenticates, answers and records one control-plane call.
async fn control(shared: Arc<Shared>, op: Op, incoming: Incoming) -> Response {
    let at_ms = now_ms().max(0) as u128;
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(incoming.uri.query().unwrap_or_default()).unwrap_or_default();
    let request = match &op {
        Op::Create => serde_json::from_slice(&incoming.body).unwrap_or(Value::Null),
        Op::Get(job) | Op::Stop(job) => json!({ "jobIdentifier": job }),
        Op::List => Value::Object(
            query
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        ),
    };
    let model_id = request
        .get("modelId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut call = Call::arriving(op.name(), model_id, request.clone(), at_ms);
    let outcome = answer(&shared, &op, &incoming, &request, &query, &mut call).await;
    let response = match outcome {
        Ok(body) => Json(body).into_response(),
        Err((status, error_type, message)) => {
            call.status = status;
            call.error_type = Some(error_type.to_owned());
            emulator::aws_error(status, error_type, &message)
        }
    };
    let mut calls = lock(&shared.calls);
    call.seq = calls.len();
    calls.push(call);
    response
}

async fn answer(
    shared: &Shared,
    op: &Op,
    incoming: &Incoming,
    request: &Value,
    query: &[(String, String)],
    call: &mut Call,
) -> Result<Value, ApiError> {
    let caller = emulator::authenticate(
        shared,
        &incoming.method,
        &incoming.uri,
        &incoming.headers,
        &incoming.body,
    )
    .await?;
    call.access_key_id = caller.access_key_id;
    if let Some(session) = &caller.session {
        call.account = Some(session.account_id.clone());
        call.role_arn = Some(session.role_arn.clone());
        call.principal_arn = Some(session.arn.clone());
    }
    let info = CallerInfo {
        account: call.account.clone(),
        role_arn: call.role_arn.clone(),
        principal_arn: call.principal_arn.clone(),
    };
    let plane = &shared.batch;
    match op {
        Op::Create => plane.create(shared, &info, request).await,
        Op::Get(job) => {
            let job = plane.get(&info, job)?;
            call.model_id = job.model_id.clone();
            serde_json::to_value(job).map_err(|e| (500, "InternalServerException", e.to_string()))
        }
        Op::List => plane.list(&info, query),
        Op::Stop(job) => {
            call.model_id = plane.stop(&info, job)?;
            Ok(json!({}))
        }
    }
}

async fn get_knobs(State(shared): State<Arc<Shared>>) -> Json<BatchKnobs> {
    Json(shared.batch.knobs())
}

async fn put_knobs(State(shared): State<Arc<Shared>>, Json(knobs): Json<BatchKnobs>) -> StatusCode {
    shared.batch.set_knobs(knobs);
    StatusCode::NO_CONTENT
}

async fn jobs_route(State(shared): State<Arc<Shared>>) -> Json<Vec<BatchJob>> {
    Json(shared.batch.jobs())
}

async fn events_route(State(shared): State<Arc<Shared>>) -> Json<Vec<BatchEvent>> {
    Json(shared.batch.events())
}

#[derive(Deserialize)]
struct MotoEndpoint {
    endpoint: String,
}

async fn moto_route(
    State(shared): State<Arc<Shared>>,
    Json(moto): Json<MotoEndpoint>,
) -> StatusCode {
    shared.batch.connect(&moto.endpoint);
    StatusCode::NO_CONTENT
}

async fn reset_route(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.batch.reset();
    StatusCode::NO_CONTENT
}

impl BatchJobs {
    fn get(&self, caller: &CallerInfo, ident: &str) -> Result<BatchJob, ApiError> {
        lock(&self.inner.jobs)
            .iter()
            .find(|e| visible(e, caller) && matches_ident(&e.job, ident))
            .map(|e| e.job.clone())
            .ok_or_else(|| not_found(ident))
    }

    fn list(&self, caller: &CallerInfo, query: &[(String, String)]) -> Result<Value, ApiError> {
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let time = |name: &str| -> Result<Option<DateTime>, ApiError> {
            param(name)
                .map(|v| {
                    DateTime::from_str(v, Format::DateTime)
                        .map_err(|_| constraint(name, v, "Member must be a timestamp"))
                })
                .transpose()
        };
        let after = time("submitTimeAfter")?;
        let before = time("submitTimeBefore")?;
        if let Some(status) = param("statusEquals") {
            if !STATUSES.contains(&status) {
                return Err(constraint(
                    "statusEquals",
                    status,
                    &format!(
                        "Member must satisfy enum value set: [{}]",
                        STATUSES.join(", ")
                    ),
                ));
            }
        }
        let max = match param("maxResults") {
            None => 1000,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    return Err(constraint(
                        "maxResults",
                        v,
                        "Member must have value between 1 and 1000",
                    ))
                }
            },
        };
        let start = match param("nextToken") {
            None => 0,
            Some(token) => token
                .parse::<usize>()
                .map_err(|_| validation("The provided nextToken is invalid."))?,
        };
        let descending = match param("sortOrder") {
            None | Some("Descending") => true,
            Some("Ascending") => false,
            Some(other) => {
                return Err(constraint(
                    "sortOrder",
                    other,
                    "Member must satisfy enum value set: [Ascending, Descending]",
                ))
            }
        };
        let jobs = lock(&self.inner.jobs);
        let mut matching: Vec<&BatchJob> = jobs
            .iter()
            .filter(|e| visible(e, caller))
            .map(|e| &e.job)
            .filter(|j| param("statusEquals").is_none_or(|s| j.status == s))
            .filter(|j| param("nameContains").is_none_or(|n| j.job_name.contains(n)))
            .filter(|j| {
                let at = DateTime::from_str(&j.submit_time, Format::DateTime).ok();
                after.is_none_or(|a| at.is_some_and(|t| t > a))
                    && before.is_none_or(|b| at.is_some_and(|t| t < b))
            })
            .collect();
        if descending {
            matching.reverse();
        }
        let page: Vec<&BatchJob> = matching.iter().skip(start).take(max).copied().collect();
        let mut answer = json!({ "invocationJobSummaries": page });
        if start + page.len() < matching.len() {
            answer["nextToken"] = json!((start + page.len()).to_string());
        }
        Ok(answer)
    }

    fn stop(&self, caller: &CallerInfo, ident: &str) -> Result<String, ApiError> {
        let mut jobs = lock(&self.inner.jobs);
        let entry = jobs
            .iter_mut()
            .find(|e| visible(e, caller) && matches_ident(&e.job, ident))
            .ok_or_else(|| not_found(ident))?;
        if entry.job.is_ended() {
            return Err((
                409,
                "ConflictException",
                format!(
                    "The job {} is {} and cannot be stopped.",
                    entry.job.job_arn, entry.job.status
                ),
            ));
        }
        if !entry.stop {
            entry.stop = true;
            self.set_status(entry, "Stopping", None);
        }
        Ok(entry.job.model_id.clone())
    }
}

fn visible(entry: &Entry, caller: &CallerInfo) -> bool {
    caller.account.as_ref().is_none_or(|a| *a == entry.account)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admin_routes_set_knobs_and_an_unconnected_plane_refuses_jobs() {
        let emulator = crate::emulator::BedrockEmulator::start(None)
            .await
            .expect("starts");
        let http = reqwest::Client::new();
        let endpoint = emulator.endpoint();
        let status = http
            .put(format!("{endpoint}/_lab/batch/knobs"))
            .json(&json!({"records_per_second": 5.0, "fail_every_nth": 3}))
            .send()
            .await
            .expect("put knobs")
            .status();
        assert_eq!(status, 204);
        let knobs: BatchKnobs = http
            .get(format!("{endpoint}/_lab/batch/knobs"))
            .send()
            .await
            .expect("get knobs")
            .json()
            .await
            .expect("knobs");
        assert_eq!(knobs.records_per_second, 5.0);
        assert_eq!(knobs.fail_every_nth, Some(3));
        assert_eq!(knobs.min_records, 1, "unset knobs keep their defaults");
        assert_eq!(emulator.batch_jobs().knobs(), knobs);

        let body = json!({
            "jobName": "j1", "roleArn": "arn:aws:iam::111111111111:role/Batch",
            "modelId": "amazon.nova-lite-v1:0",
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://in-bucket/a.jsonl"}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://out-bucket/"}},
        });
        let response = http
            .post(format!("{endpoint}/model-invocation-job"))
            .json(&body)
            .send()
            .await
            .expect("create");
        assert_eq!(response.status(), 500);
        assert_eq!(
            response
                .headers()
                .get("x-amzn-ErrorType")
                .and_then(|v| v.to_str().ok()),
            Some("InternalServerException")
        );
        let missing = http
            .get(format!(
                "{endpoint}/model-invocation-job/arn%3Aaws%3Abedrock%3Aus-east-1%3A111111111111%3Amodel-invocation-job%2Fabcdefghijkl"
            ))
            .send()
            .await
            .expect("get");
        assert_eq!(missing.status(), 404);
        let jobs: Vec<BatchJob> = http
            .get(format!("{endpoint}/_lab/batch/jobs"))
            .send()
            .await
            .expect("jobs")
            .json()
            .await
            .expect("json");
        assert!(jobs.is_empty());
        let calls = emulator.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].operation, "CreateModelInvocationJob");
        assert_eq!(calls[0].model_id, "amazon.nova-lite-v1:0");
        assert_eq!(calls[1].operation, "GetModelInvocationJob");
        assert_eq!(
            calls[1].request["jobIdentifier"],
            "arn:aws:bedrock:us-east-1:111111111111:model-invocation-job/abcdefghijkl"
        );
        assert_eq!(
            calls[1].error_type.as_deref(),
            Some("ResourceNotFoundException")
        );
    }
}
