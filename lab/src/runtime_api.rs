//! A minimal Lambda Runtime API, and the function process it drives.
//!
//! The built `bootstrap` binary is started as Lambda starts it
//! (`AWS_LAMBDA_RUNTIME_API` and the `AWS_LAMBDA_*` variables set), polls
//! `GET /2018-06-01/runtime/invocation/next`, and posts a response or an error.
//! [`RuntimeApi::invoke`] queues one event and waits for what the function
//! answered, like an asynchronous Lambda invoke seen from inside.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use crate::LabError;

/// The function ARN the lab reports.
pub const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:222222222222:function:bedrock-relay";

/// What the function answered for one invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// `/response`.
    Response {
        /// The body, parsed as JSON when it is.
        body: serde_json::Value,
    },
    /// `/error`.
    Error {
        /// `errorType`.
        error_type: String,
        /// `errorMessage`.
        error_message: String,
    },
}

impl Outcome {
    /// The error type, if the invocation failed.
    pub fn error_type(&self) -> Option<&str> {
        match self {
            Self::Error { error_type, .. } => Some(error_type),
            Self::Response { .. } => None,
        }
    }
}

/// What Lambda sends in `Lambda-Runtime-Trace-Id` when the invoke does not
/// say: a trace that is not sampled, as with tracing off.
pub const UNSAMPLED_TRACE: &str =
    "Root=1-674800aa-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=0";

struct Pending {
    request_id: String,
    body: Bytes,
    deadline_ms: u128,
    trace: String,
}

struct Shared {
    first_poll: Mutex<Option<Instant>>,
    queue: tokio::sync::Mutex<mpsc::Receiver<Pending>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    init_error: Mutex<Option<String>>,
}

/// A running Runtime API; stops when dropped.
pub struct RuntimeApi {
    addr: SocketAddr,
    sender: mpsc::Sender<Pending>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RuntimeApi {
    /// Starts on a free loopback port.
    pub async fn start() -> Result<Self, LabError> {
        let (sender, receiver) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            first_poll: Mutex::default(),
            queue: tokio::sync::Mutex::new(receiver),
            waiting: Mutex::default(),
            init_error: Mutex::default(),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(Arc::clone(&shared));
        let (addr, task) = crate::serve(app, "127.0.0.1:0").await?;
        Ok(Self {
            addr,
            sender,
            shared,
            next_id: AtomicU64::new(1),
            task,
        })
    }

    /// `127.0.0.1:<port>`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// When the function first asked for an event: the end of its init.
    pub fn first_poll(&self) -> Option<Instant> {
        *self.shared.first_poll.lock().ok()?
    }

    /// What the function posted to `/init/error`, if anything.
    pub fn init_error(&self) -> Option<String> {
        self.shared.init_error.lock().ok()?.clone()
    }

    /// Sends one event with `timeout` as the function's remaining time, and
    /// waits (a little past the deadline) for its outcome.
    pub async fn invoke(
        &self,
        body: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Outcome, LabError> {
        let request_id = format!(
            "00000000-0000-4000-8000-{:012}",
            self.next_id.fetch_add(1, Ordering::SeqCst)
        );
        self.invoke_as(&request_id, body, timeout).await
    }

    /// [`RuntimeApi::invoke`] with a chosen `Lambda-Runtime-Trace-Id` header
    /// (`Root=…;Parent=…;Sampled=1` for a traced invocation).
    pub async fn invoke_traced(
        &self,
        body: impl Into<Bytes>,
        timeout: Duration,
        trace: &str,
    ) -> Result<Outcome, LabError> {
        let request_id = format!(
            "00000000-0000-4000-8000-{:012}",
            self.next_id.fetch_add(1, Ordering::SeqCst)
        );
        self.send_and_wait(&request_id, body.into(), timeout, trace)
            .await
    }

    /// [`RuntimeApi::invoke`] with a chosen request id.
    pub async fn invoke_as(
        &self,
        request_id: &str,
        body: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Outcome, LabError> {
        self.send_and_wait(request_id, body.into(), timeout, UNSAMPLED_TRACE)
            .await
    }

    async fn send_and_wait(
        &self,
        request_id: &str,
        body: Bytes,
        timeout: Duration,
        trace: &str,
    ) -> Result<Outcome, LabError> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut waiting) = self.shared.waiting.lock() {
            waiting.insert(request_id.to_owned(), tx);
        }
        let deadline_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            + timeout.as_millis();
        self.sender
            .send(Pending {
                request_id: request_id.to_owned(),
                body,
                deadline_ms,
                trace: trace.to_owned(),
            })
            .await
            .map_err(|_| LabError::Function("the Runtime API queue is closed".into()))?;
        // Lambda would stop the function at the deadline; the lab waits a little
        // longer so a late answer is seen as late rather than lost.
        match tokio::time::timeout(timeout + Duration::from_secs(5), rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(LabError::Function("the invocation was dropped".into())),
            Err(_) => Err(LabError::Function(format!(
                "no answer for {request_id} within its deadline"
            ))),
        }
    }
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    if let Ok(mut first) = shared.first_poll.lock() {
        first.get_or_insert_with(Instant::now);
    }
    let pending = shared.queue.lock().await.recv().await;
    let Some(pending) = pending else {
        return StatusCode::GONE.into_response();
    };
    let mut headers = HeaderMap::new();
    let pairs = [
        // Lambda always sends JSON; runtime clients (awslambdaric) decode by this header.
        ("content-type", "application/json".to_owned()),
        ("lambda-runtime-aws-request-id", pending.request_id.clone()),
        (
            "lambda-runtime-deadline-ms",
            pending.deadline_ms.to_string(),
        ),
        (
            "lambda-runtime-invoked-function-arn",
            FUNCTION_ARN.to_owned(),
        ),
        ("lambda-runtime-trace-id", pending.trace.clone()),
    ];
    for (name, value) in pairs {
        if let Ok(value) = value.parse() {
            headers.insert(name, value);
        }
    }
    (StatusCode::OK, headers, pending.body).into_response()
}

fn complete(shared: &Shared, id: &str, outcome: Outcome) -> StatusCode {
    let sender = shared.waiting.lock().ok().and_then(|mut w| w.remove(id));
    match sender {
        Some(tx) => {
            let _ = tx.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

async fn response(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
    complete(&shared, &id, Outcome::Response { body })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    error_type: Option<String>,
    error_message: Option<String>,
}

async fn error(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    let parsed: ErrorBody = serde_json::from_slice(&body).unwrap_or(ErrorBody {
        error_type: None,
        error_message: Some(String::from_utf8_lossy(&body).into()),
    });
    let outcome = Outcome::Error {
        error_type: parsed.error_type.unwrap_or_default(),
        error_message: parsed.error_message.unwrap_or_default(),
    };
    complete(&shared, &id, outcome)
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    if let Ok(mut slot) = shared.init_error.lock() {
        *slot = Some(String::from_utf8_lossy(&body).into());
    }
    StatusCode::ACCEPTED
}

/// The function's process, with its output (Lambda's log stream) captured.
///
/// Output goes to a file rather than a pipe: the function writes each log
/// line before it answers the Runtime API, so once an invocation's outcome is
/// back, [`FunctionProcess::logs`] holds every line written for it. A pipe read
/// by a task would leave that to the scheduler.
pub struct FunctionProcess {
    child: Child,
    log_path: PathBuf,
    echo: Option<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl FunctionProcess {
    /// Starts `binary` against `runtime`, with only the variables Lambda sets and
    /// those in `env` (nothing is inherited from the test's environment).
    pub fn spawn(
        binary: &Path,
        runtime: &RuntimeApi,
        env: &[(String, String)],
    ) -> Result<Self, LabError> {
        Self::spawn_command(Command::new(binary), runtime, env)
    }

    /// `instances` processes of `binary`, each with its own Runtime API, as
    /// Lambda runs several instances of one function: the Runtime APIs (to
    /// invoke them, or hand to the event source mapping) and the processes.
    pub async fn spawn_many(
        binary: &Path,
        instances: usize,
        env: &[(String, String)],
    ) -> Result<(Vec<RuntimeApi>, Vec<FunctionProcess>), LabError> {
        let mut runtimes = Vec::with_capacity(instances);
        let mut functions = Vec::with_capacity(instances);
        for _ in 0..instances {
            let runtime = RuntimeApi::start().await?;
            functions.push(Self::spawn(binary, &runtime, env)?);
            runtimes.push(runtime);
        }
        Ok((runtimes, functions))
    }

    /// [`FunctionProcess::spawn`] for any command (an interpreter and its
    /// runtime client, say).
    pub fn spawn_command(
        mut command: Command,
        runtime: &RuntimeApi,
        env: &[(String, String)],
    ) -> Result<Self, LabError> {
        let program = command
            .as_std()
            .get_program()
            .to_string_lossy()
            .into_owned();
        let log_path = log_file_path();
        let log_error = |e: std::io::Error| {
            LabError::Function(format!("cannot open {}: {e}", log_path.display()))
        };
        let stdout = std::fs::File::create(&log_path).map_err(log_error)?;
        let stderr = stdout.try_clone().map_err(log_error)?;
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", runtime.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", "bedrock-relay")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/bedrock-relay")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "2026/11/28/[$LATEST]lab")
            .env("AWS_REGION", crate::moto::REGION)
            .env("AWS_DEFAULT_REGION", crate::moto::REGION)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| LabError::Function(format!("cannot start {program}: {e}")))?;
        let echo = std::env::var_os("LAB_ECHO_LOGS")
            .is_some()
            .then(|| tokio::spawn(echo_lines(log_path.clone())));
        Ok(Self {
            child,
            log_path,
            echo,
            started: Instant::now(),
        })
    }

    /// Every line the function wrote so far.
    pub fn logs(&self) -> Vec<String> {
        read_lines(&self.log_path)
    }

    /// Waits up to `timeout` for the process to exit; its exit code if it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => Some(status.code()),
            _ => None,
        }
    }

    /// Time since the process started.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl Drop for FunctionProcess {
    fn drop(&mut self) {
        if let Some(echo) = self.echo.take() {
            echo.abort();
        }
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// A log file no other process of this or another test binary uses.
fn log_file_path() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    std::env::temp_dir().join(format!(
        "bedrock-relay-lab-{}-{}-{nanos}.log",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read(path)
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `LAB_ECHO_LOGS`: copies the function's lines to the test's stderr as they come.
async fn echo_lines(path: PathBuf) {
    let mut shown = 0;
    loop {
        let lines = read_lines(&path);
        for line in lines.iter().skip(shown) {
            eprintln!("[function] {line}");
        }
        shown = lines.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
