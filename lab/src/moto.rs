//! moto: starting `moto_server` on a free loopback port (through the lab's
//! launcher, `lab/moto_server.py`, which makes S3 writes atomic per key),
//! reading the STS sessions it issued, and the few admin calls the lab makes
//! to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials;
use serde::Deserialize;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::sigv4::sign_headers;
use crate::LabError;

/// The region the lab uses.
pub const REGION: &str = "us-east-1";

/// A session moto issued through AssumeRole.
#[derive(Debug, Clone, Deserialize)]
pub struct MotoSession {
    /// Access key id.
    pub access_key_id: String,
    /// Secret.
    pub secret_access_key: String,
    /// Session token.
    pub session_token: String,
    /// The account the session acts in.
    pub account_id: String,
    /// The assumed role.
    pub role_arn: String,
    /// `arn:aws:sts::<account>:assumed-role/<role>/<session>`.
    pub arn: String,
    /// The session name.
    pub session_name: String,
    /// The ExternalId given, if any.
    pub external_id: Option<String>,
}

/// Reads moto's issued sessions (`/moto-api/data.json`), caching by access key.
#[derive(Debug, Clone)]
pub struct MotoSessions {
    endpoint: String,
    http: reqwest::Client,
    cache: Arc<Mutex<HashMap<String, MotoSession>>>,
}

impl MotoSessions {
    /// Sessions of the moto server at `endpoint`.
    pub fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            http: reqwest::Client::new(),
            cache: Arc::default(),
        }
    }

    /// Every session moto has issued, in order.
    pub async fn all(&self) -> Result<Vec<MotoSession>, LabError> {
        let data: serde_json::Value = self
            .http
            .get(format!("{}/moto-api/data.json", self.endpoint))
            .send()
            .await?
            .json()
            .await?;
        let sessions = data
            .pointer("/sts/AssumedRole")
            .cloned()
            .unwrap_or(serde_json::Value::Array(Vec::new()));
        Ok(serde_json::from_value(sessions)?)
    }

    /// The session of an access key, asking moto again on a cache miss.
    ///
    /// moto serialises its whole state for `data.json`; a write landing
    /// meanwhile (a busy lab: thousands of S3 and SQS calls) can fail that
    /// one answer. A failed read is tried again, so a session moto did issue
    /// is never reported unknown (the emulator would answer 403).
    pub async fn lookup(&self, access_key_id: &str) -> Option<MotoSession> {
        let mut cache = self.cache.lock().await;
        if let Some(found) = cache.get(access_key_id) {
            return Some(found.clone());
        }
        let mut sessions = None;
        for wait_ms in [0, 20, 50, 100, 200, 400, 800] {
            tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
            match self.all().await {
                Ok(all) => {
                    sessions = Some(all);
                    break;
                }
                Err(err) => tracing::warn!("reading moto's sessions failed, trying again: {err}"),
            }
        }
        for session in sessions? {
            cache.insert(session.access_key_id.clone(), session);
        }
        cache.get(access_key_id).cloned()
    }
}

/// A running `moto_server`; killed when dropped.
#[derive(Debug)]
pub struct Moto {
    endpoint: String,
    child: Child,
    http: reqwest::Client,
}

impl Moto {
    /// Starts moto's server: the lab's launcher `lab/moto_server.py` run by
    /// `.venv/bin/python` at the workspace root, which is `moto_server` with
    /// S3 writes made atomic per key (so that of two conditional PUTs of one
    /// key only one wins, as in S3). `LAB_MOTO_SERVER` names another
    /// executable taking `moto_server`'s flags (`-H`, `-p`) instead, e.g.
    /// `.venv/bin/moto_server` itself.
    ///
    /// `MOTO_ACCOUNT_ID` is removed from its environment: it would pin every
    /// request to one account, where the lab needs each call to land in the
    /// account of the session that signed it.
    pub async fn start() -> Result<Self, LabError> {
        let (exe, launcher_args) = moto_server_command();
        for needed in std::iter::once(&exe).chain(&launcher_args) {
            if !needed.exists() {
                return Err(LabError::Setup(format!(
                    "{} not found: run scripts/setup to install the lab's Python tools (or set LAB_MOTO_SERVER)",
                    needed.display()
                )));
            }
        }
        let port = free_port()?;
        let child = Command::new(&exe)
            .args(&launcher_args)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env_remove("MOTO_ACCOUNT_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| LabError::Setup(format!("cannot start {}: {e}", exe.display())))?;
        let mut moto = Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
            http: reqwest::Client::new(),
        };
        let command = std::iter::once(&exe)
            .chain(&launcher_args)
            .map(|part| part.display().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        moto.wait_ready(&command).await?;
        Ok(moto)
    }

    /// Waits for the server to answer; `command` names it in errors.
    async fn wait_ready(&mut self, command: &str) -> Result<(), LabError> {
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(LabError::Setup(format!(
                    "{command} exited ({status}) before answering: run it by hand to see why"
                )));
            }
            let ready = self
                .http
                .get(format!("{}/moto-api/data.json", self.endpoint))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(LabError::Setup(format!(
            "{command} did not answer within 15 s"
        )))
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A reader of the sessions this server issued.
    pub fn sessions(&self) -> MotoSessions {
        MotoSessions::new(&self.endpoint)
    }

    /// Stops the server (a later call to a client fails like an outage).
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends a signed AWS query-protocol call (IAM, STS) and returns the XML body.
    pub async fn query(
        &self,
        credentials: &Credentials,
        service: &str,
        params: &[(&str, &str)],
    ) -> Result<String, LabError> {
        let body =
            serde_urlencoded::to_string(params).map_err(|e| LabError::Setup(e.to_string()))?;
        let headers = [(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )];
        self.signed_post(credentials, service, &headers, body)
            .await
            .map_err(|e| LabError::Aws(format!("{service} {params:?}: {e}")))
    }

    /// Sends a signed AWS JSON-protocol call (EventBridge, SQS) and returns the JSON answer.
    pub async fn json_call(
        &self,
        credentials: &Credentials,
        service: &str,
        target: &str,
        content_type: &str,
        payload: &serde_json::Value,
    ) -> Result<serde_json::Value, LabError> {
        let headers = [("content-type", content_type), ("x-amz-target", target)];
        let text = self
            .signed_post(credentials, service, &headers, payload.to_string())
            .await
            .map_err(|e| LabError::Aws(format!("{target}: {e}")))?;
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// POSTs `body` to moto signed with `credentials`; the answer's text, or
    /// an error holding the status and body.
    async fn signed_post(
        &self,
        credentials: &Credentials,
        service: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<String, String> {
        let url = format!("{}/", self.endpoint);
        let host = self.endpoint.trim_start_matches("http://").to_owned();
        let mut to_sign = vec![("host", host.as_str())];
        to_sign.extend_from_slice(headers);
        let signed = sign_headers(
            credentials,
            REGION,
            service,
            "POST",
            &url,
            &to_sign,
            body.as_bytes(),
        )?;
        let mut request = self.http.post(&url).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        for (name, value) in signed {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        Ok(text)
    }
}

/// Picks the value of `<tag>` from an XML answer.
pub fn xml_value(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    Some(xml[start..end].to_owned())
}

/// The workspace root (the folder holding the function's `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The program that serves moto and the arguments before its flags:
/// `LAB_MOTO_SERVER` alone if set, else the venv's Python and the launcher.
fn moto_server_command() -> (PathBuf, Vec<PathBuf>) {
    match std::env::var_os("LAB_MOTO_SERVER") {
        Some(exe) => (PathBuf::from(exe), Vec::new()),
        None => (
            workspace_root().join(".venv/bin/python"),
            vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("moto_server.py")],
        ),
    }
}

/// A free loopback port (bound then released; the lab starts its server at once).
pub fn free_port() -> Result<u16, LabError> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| LabError::Setup(e.to_string()))?;
    Ok(listener
        .local_addr()
        .map_err(|e| LabError::Setup(e.to_string()))?
        .port())
}
