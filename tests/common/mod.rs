//! What the lab tests share: the lab, a Runtime API and the function process
//! started against them, and the sample events in `events/`.

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::time::Duration;

use lab::runtime_api::{FunctionProcess, Outcome, RuntimeApi};
use lab::Lab;
use serde_json::{json, Value};

pub const TIMEOUT: Duration = Duration::from_secs(20);

pub fn event_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("events")
        .join(name)
}

pub fn event_bytes(name: &str) -> Vec<u8> {
    let path = event_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lab, a Runtime API and the function process started against them.
pub struct Bench {
    pub lab: Lab,
    pub runtime: RuntimeApi,
    pub function: FunctionProcess,
}

impl Bench {
    pub async fn start(extra_env: &[(&str, &str)]) -> Self {
        let lab = Lab::start().await.expect("lab starts");
        Self::start_in(lab, extra_env).await
    }

    pub async fn start_in(lab: Lab, extra_env: &[(&str, &str)]) -> Self {
        let runtime = RuntimeApi::start().await.expect("runtime api");
        let mut env = lab.function_env();
        for (key, value) in extra_env {
            env.retain(|(k, _)| k != key);
            env.push((key.to_string(), value.to_string()));
        }
        let function = FunctionProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_bedrock-relay")),
            &runtime,
            &env,
        )
        .expect("function starts");
        Self {
            lab,
            runtime,
            function,
        }
    }

    pub async fn invoke(&self, name: &str) -> Outcome {
        self.invoke_bytes(event_bytes(name), TIMEOUT).await
    }

    pub async fn invoke_bytes(&self, body: Vec<u8>, timeout: Duration) -> Outcome {
        match self.runtime.invoke(body, timeout).await {
            Ok(outcome) => outcome,
            Err(err) => panic!("{err}; function logs:\n{}", self.function.logs().join("\n")),
        }
    }

    pub async fn record(&self, job_id: &str) -> Value {
        self.lab
            .record(job_id)
            .await
            .expect("s3 readable")
            .unwrap_or_else(|| {
                panic!(
                    "no record for {job_id}; logs:\n{}",
                    self.function.logs().join("\n")
                )
            })
    }
}

/// The error type of a failed invocation.
pub fn error_type(outcome: &Outcome) -> &str {
    outcome
        .error_type()
        .unwrap_or_else(|| panic!("expected an error, got {outcome:?}"))
}

/// A `Bedrock Relay Job` event around `detail`, with the envelope id `id`,
/// from account B.
pub fn job_event(id: &str, detail: Value) -> Vec<u8> {
    json!({
        "version": "0",
        "id": id,
        "detail-type": "Bedrock Relay Job",
        "source": "com.example.tests",
        "account": "222222222222",
        "time": "2026-11-28T10:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    })
    .to_string()
    .into_bytes()
}

/// The response body of an invocation that answered.
pub fn answer(outcome: &Outcome) -> &Value {
    match outcome {
        Outcome::Response { body } => body,
        other => panic!("expected an answer, got {other:?}"),
    }
}
