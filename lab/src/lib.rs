//! The local two-account lab for bedrock-relay: dev tooling only, never linked
//! into the function.
//!
//! # Layout
//!
//! - [`moto`]: starts `moto_server` (STS, IAM, S3, SQS, EventBridge) through
//!   `lab/moto_server.py`, which makes S3's conditional writes atomic, and
//!   reads the sessions it issued.
//! - [`emulator`]: a Bedrock Runtime emulator (Converse, InvokeModel) that
//!   checks SigV4 against moto's sessions and records who called.
//! - [`batch_jobs`]: the emulator's batch-inference control plane (Create /
//!   Get / List / StopModelInvocationJob) over moto's IAM, S3 and EventBridge.
//! - [`runtime_api`]: a minimal Lambda Runtime API and the function process.
//! - [`esm`]: an SQS event source mapping that drives several function
//!   processes as Lambda does (batch size, partial batch responses,
//!   `MaximumConcurrency`; the queue's redrive policy dead-letters).
//! - [`sigv4`]: signature checking and signing.
//! - [`mod@bench`]: the benchmark against the Python baselines.
//! - [`bench_fanout`]: the fan-out benchmark (a large batch over the work queue).
//! - [`soak`]: many events with faults and duplicates; nothing lost or answered twice.
//! - [`Lab`]: all of it wired as account B (`222222222222`, the function, the
//!   results bucket) and account A (`111111111111`, RoleA and the models).

#![warn(missing_docs)]

pub mod batch_jobs;
pub mod bench;
pub mod bench_cost;
pub mod bench_fanout;
pub mod emulator;
pub mod esm;
pub mod moto;
pub mod runtime_api;
pub mod services;
pub mod sigv4;
pub mod soak;
pub mod stub;

use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sdk_s3::config::Region;
use serde_json::{json, Value};
use thiserror::Error;

use crate::emulator::BedrockEmulator;
use crate::moto::{xml_value, Moto, MotoSession, REGION};

/// Account B: the function's account.
pub const ACCOUNT_B: &str = "222222222222";
/// Account A: the model account.
pub const ACCOUNT_A: &str = "111111111111";
/// The results bucket in account B.
pub const BUCKET: &str = "relay-results";
/// The prefix records go under.
pub const PREFIX: &str = "results/";
/// The ExternalId RoleA's trust policy asks for.
pub const EXTERNAL_ID: &str = "lab-external-id";

/// Something in the lab failed.
#[derive(Debug, Error)]
pub enum LabError {
    /// A lab service could not start or be set up.
    #[error("lab setup: {0}")]
    Setup(String),
    /// An admin call to moto failed.
    #[error("moto: {0}")]
    Aws(String),
    /// The function process or the Runtime API misbehaved.
    #[error("function: {0}")]
    Function(String),
    /// HTTP to a lab service failed.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// JSON from a lab service did not parse.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// moto and the Bedrock emulator, set up as accounts A and B.
pub struct Lab {
    /// The moto server.
    pub moto: Moto,
    /// The Bedrock Runtime emulator.
    pub bedrock: BedrockEmulator,
    /// An administrator session in account B.
    pub admin_b: Credentials,
    /// The function's execution role in account B.
    pub exec_role_arn: String,
    /// The execution role's session credentials, as Lambda hands them over.
    pub exec_credentials: Credentials,
    /// RoleA in account A.
    pub role_a_arn: String,
    s3: aws_sdk_s3::Client,
}

impl Lab {
    /// Starts moto and the emulator and creates: the execution role and the
    /// results bucket in B, RoleA (trusting the execution role, with an
    /// ExternalId condition) in A, and an execution-role session.
    pub async fn start() -> Result<Self, LabError> {
        let moto = Moto::start().await?;
        let admin_b = admin_session(&moto, ACCOUNT_B).await?;
        let admin_a = admin_session(&moto, ACCOUNT_A).await?;

        let exec_role_arn = create_role(
            &moto,
            &admin_b,
            "bedrock-relay-exec",
            &json!({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}),
        )
        .await?;

        let role_a_arn = create_target_role(&moto, &admin_a, &exec_role_arn).await?;

        let s3 = s3_client(moto.endpoint(), &admin_b);
        s3.create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .map_err(|e| LabError::Aws(format!("create bucket: {e:?}")))?;

        // What Lambda does for the function: a session of the execution role.
        let (_, exec_credentials) =
            assume(&moto, &admin_b, &exec_role_arn, "bedrock-relay", None).await?;

        let bedrock = BedrockEmulator::start(Some(moto.sessions())).await?;
        Ok(Self {
            moto,
            bedrock,
            admin_b,
            exec_role_arn,
            exec_credentials,
            role_a_arn,
            s3,
        })
    }

    /// The environment Lambda would give the function, plus the relay's
    /// settings for this lab.
    pub fn function_env(&self) -> Vec<(String, String)> {
        let c = &self.exec_credentials;
        [
            ("AWS_ACCESS_KEY_ID", c.access_key_id().to_owned()),
            ("AWS_SECRET_ACCESS_KEY", c.secret_access_key().to_owned()),
            (
                "AWS_SESSION_TOKEN",
                c.session_token().unwrap_or_default().to_owned(),
            ),
            ("AWS_ENDPOINT_URL", self.moto.endpoint().to_owned()),
            ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", self.bedrock.endpoint()),
            // The batch-job control plane is the same emulator.
            ("AWS_ENDPOINT_URL_BEDROCK", self.bedrock.endpoint()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("RELAY_ROLE_ARN", self.role_a_arn.clone()),
            ("RELAY_EXTERNAL_ID", EXTERNAL_ID.to_owned()),
            ("RELAY_DESTINATION", format!("s3://{BUCKET}/{PREFIX}")),
            // Any bucket in the lab; the relay's own prefixes stay refused.
            ("RELAY_ALLOWED_SOURCES", "s3://*".to_owned()),
            ("RELAY_BUCKET_OWNER", ACCOUNT_B.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The record for a job id, if one was written.
    pub async fn record(&self, job_id: &str) -> Result<Option<Value>, LabError> {
        let key = format!("{PREFIX}{job_id}.json");
        match self.s3.get_object().bucket(BUCKET).key(&key).send().await {
            Ok(output) => {
                let bytes = output
                    .body
                    .collect()
                    .await
                    .map_err(|e| LabError::Aws(format!("read {key}: {e}")))?
                    .into_bytes();
                Ok(Some(serde_json::from_slice(&bytes)?))
            }
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(err) => Err(LabError::Aws(format!("get {key}: {err:?}"))),
        }
    }

    /// Creates a bucket in account B.
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), LabError> {
        self.s3
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| LabError::Aws(format!("create bucket {bucket}: {e:?}")))
    }

    /// Puts an object in account B.
    pub async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: impl Into<Vec<u8>>,
        content_type: &str,
    ) -> Result<(), LabError> {
        self.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(body.into().into())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| LabError::Aws(format!("put s3://{bucket}/{key}: {e:?}")))
    }

    /// An object's bytes in account B, if it exists.
    pub async fn object(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, LabError> {
        match self.s3.get_object().bucket(bucket).key(key).send().await {
            Ok(output) => Ok(Some(
                output
                    .body
                    .collect()
                    .await
                    .map_err(|e| LabError::Aws(format!("read {key}: {e}")))?
                    .into_bytes()
                    .to_vec(),
            )),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(err) => Err(LabError::Aws(format!("get {key}: {err:?}"))),
        }
    }

    /// A batch's JSON Lines result (`<prefix><job id>.jsonl`), parsed, if written.
    pub async fn batch_lines(&self, job_id: &str) -> Result<Option<Vec<Value>>, LabError> {
        self.lines(&format!("{PREFIX}{job_id}.jsonl")).await
    }

    /// A JSON Lines object in the results bucket, parsed, if written.
    pub async fn lines(&self, key: &str) -> Result<Option<Vec<Value>>, LabError> {
        self.lines_in(BUCKET, key).await
    }

    /// A JSON Lines object in `bucket` (account B's), parsed, if written.
    pub async fn lines_in(&self, bucket: &str, key: &str) -> Result<Option<Vec<Value>>, LabError> {
        let Some(bytes) = self.object(bucket, key).await? else {
            return Ok(None);
        };
        bytes
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).map_err(LabError::from))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Every record key in the results bucket (claims left out).
    pub async fn record_keys(&self) -> Result<Vec<String>, LabError> {
        let output = self
            .s3
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix(PREFIX)
            .send()
            .await
            .map_err(|e| LabError::Aws(format!("list: {e:?}")))?;
        Ok(output
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            // Claims are the relay's bookkeeping for duplicate deliveries.
            .filter(|key| !key.starts_with(&format!("{PREFIX}_claims/")))
            .collect())
    }

    /// The RoleA sessions STS has issued so far (one per AssumeRole call).
    pub async fn role_a_sessions(&self) -> Result<Vec<MotoSession>, LabError> {
        self.sessions_of(&self.role_a_arn).await
    }

    /// The sessions STS has issued for `role_arn` so far.
    pub async fn sessions_of(&self, role_arn: &str) -> Result<Vec<MotoSession>, LabError> {
        Ok(self
            .moto
            .sessions()
            .all()
            .await?
            .into_iter()
            .filter(|s| s.role_arn == role_arn)
            .collect())
    }

    /// Attaches an inline policy to the execution role (as account B's admin).
    pub async fn grant_exec_role(&self, name: &str, policy: &Value) -> Result<(), LabError> {
        let role_name = self
            .exec_role_arn
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        self.moto
            .query(
                &self.admin_b,
                "iam",
                &[
                    ("Action", "PutRolePolicy"),
                    ("Version", "2010-05-08"),
                    ("RoleName", &role_name),
                    ("PolicyName", name),
                    ("PolicyDocument", &policy.to_string()),
                ],
            )
            .await
            .map(|_| ())
    }

    /// Turns on moto's IAM enforcement (`INITIAL_NO_AUTH_ACTION_COUNT=0`): from
    /// now on every call is checked against the caller's own identity policies
    /// (the execution role's `sts:AssumeRole`, `s3:PutObject`, ...). Cross-account
    /// trust policies are still not evaluated by moto. The lab's admin sessions
    /// stop working too, so set everything up first.
    pub async fn enforce_iam(&self) -> Result<(), LabError> {
        let response = reqwest::Client::new()
            .post(format!("{}/moto-api/reset-auth", self.moto.endpoint()))
            .header("content-type", "text/plain")
            .body("0")
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(LabError::Aws(format!("reset-auth: {}", response.status())));
        }
        Ok(())
    }

    /// Adds another model account: RoleA in `account`, trusting the same
    /// execution role with the same ExternalId. Returns its ARN.
    pub async fn add_target_account(&self, account: &str) -> Result<String, LabError> {
        let admin = admin_session(&self.moto, account).await?;
        create_target_role(&self.moto, &admin, &self.exec_role_arn).await
    }

    /// Puts `events` on account B's default bus with a rule of `pattern` that
    /// targets an SQS queue, and returns the events the queue received: which
    /// events the pattern matches, by EventBridge's own (moto's) matcher.
    pub async fn events_matching(
        &self,
        pattern: &Value,
        events: &[Value],
    ) -> Result<Vec<Value>, LabError> {
        let sqs = |target: &str, body: Value| {
            let target = format!("AmazonSQS.{target}");
            async move {
                self.moto
                    .json_call(
                        &self.admin_b,
                        "sqs",
                        &target,
                        "application/x-amz-json-1.0",
                        &body,
                    )
                    .await
            }
        };
        let events_call = |target: &str, body: Value| {
            let target = format!("AWSEvents.{target}");
            async move {
                self.moto
                    .json_call(
                        &self.admin_b,
                        "events",
                        &target,
                        "application/x-amz-json-1.1",
                        &body,
                    )
                    .await
            }
        };
        let name = format!("pattern-{}", std::process::id());
        let queue_url = sqs("CreateQueue", json!({"QueueName": name}))
            .await?
            .get("QueueUrl")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| LabError::Aws("CreateQueue returned no QueueUrl".into()))?;
        let queue_arn = format!("arn:aws:sqs:{REGION}:{ACCOUNT_B}:{name}");
        events_call(
            "PutRule",
            json!({"Name": name, "EventPattern": pattern.to_string(), "State": "ENABLED"}),
        )
        .await?;
        events_call(
            "PutTargets",
            json!({"Rule": name, "Targets": [{"Id": "queue", "Arn": queue_arn}]}),
        )
        .await?;
        for event in events {
            let entry = json!({
                "Source": event.get("source").cloned().unwrap_or(Value::Null),
                "DetailType": event.get("detail-type").cloned().unwrap_or(Value::Null),
                "Detail": event.get("detail").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                "Resources": event.get("resources").cloned().unwrap_or(json!([])),
                "EventBusName": "default",
            });
            events_call("PutEvents", json!({"Entries": [entry]})).await?;
        }
        let mut received = Vec::new();
        for _ in 0..3 {
            let answer = sqs(
                "ReceiveMessage",
                json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1}),
            )
            .await?;
            let messages = answer
                .get("Messages")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for message in messages {
                if let Some(body) = message.get("Body").and_then(Value::as_str) {
                    received.push(serde_json::from_str(body)?);
                }
            }
        }
        Ok(received)
    }
}

/// Serves `app` on `bind` (e.g. `127.0.0.1:0`) in a background task; the
/// bound address and the task, which the caller aborts to stop it.
pub(crate) async fn serve(
    app: axum::Router,
    bind: &str,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), LabError> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| LabError::Setup(format!("bind {bind}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| LabError::Setup(e.to_string()))?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

/// An administrator session in `account`. Keys moto did not issue act in its
/// default account; sessions of a role in any account can be assumed from there.
async fn admin_session(moto: &Moto, account: &str) -> Result<Credentials, LabError> {
    let bootstrap = Credentials::new(
        "AKIALABBOOTSTRAP0000",
        "lab-bootstrap-secret",
        None,
        None,
        "lab",
    );
    let role = format!("arn:aws:iam::{account}:role/LabAdmin");
    Ok(assume(moto, &bootstrap, &role, "lab-admin", None).await?.1)
}

/// Creates RoleA (`BedrockRelayTarget`) with `admin`'s credentials in its
/// account: trusting `exec_role_arn` with the lab's ExternalId, allowed to
/// invoke foundation models.
async fn create_target_role(
    moto: &Moto,
    admin: &Credentials,
    exec_role_arn: &str,
) -> Result<String, LabError> {
    let role_arn = create_role(
        moto,
        admin,
        "BedrockRelayTarget",
        &json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": exec_role_arn},
            "Action": ["sts:AssumeRole", "sts:SetSourceIdentity"],
            "Condition": {"StringEquals": {"sts:ExternalId": EXTERNAL_ID}}}]}),
    )
    .await?;
    moto.query(
        admin,
        "iam",
        &[
            ("Action", "PutRolePolicy"),
            ("Version", "2010-05-08"),
            ("RoleName", "BedrockRelayTarget"),
            ("PolicyName", "invoke-models"),
            (
                "PolicyDocument",
                &json!({"Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow", "Action": "bedrock:InvokeModel",
                    "Resource": "arn:aws:bedrock:*::foundation-model/*"}]})
                .to_string(),
            ),
        ],
    )
    .await?;
    Ok(role_arn)
}

/// An S3 client for the lab's moto, path-style.
pub fn s3_client(endpoint: &str, credentials: &Credentials) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(credentials.clone())
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(20))
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

async fn create_role(
    moto: &Moto,
    credentials: &Credentials,
    name: &str,
    trust: &Value,
) -> Result<String, LabError> {
    let xml = moto
        .query(
            credentials,
            "iam",
            &[
                ("Action", "CreateRole"),
                ("Version", "2010-05-08"),
                ("RoleName", name),
                ("AssumeRolePolicyDocument", &trust.to_string()),
            ],
        )
        .await?;
    xml_value(&xml, "Arn")
        .ok_or_else(|| LabError::Aws(format!("CreateRole {name}: no Arn in {xml}")))
}

/// AssumeRole through moto; returns the session's ARN and credentials.
pub async fn assume(
    moto: &Moto,
    credentials: &Credentials,
    role_arn: &str,
    session: &str,
    external_id: Option<&str>,
) -> Result<(String, Credentials), LabError> {
    let mut params = vec![
        ("Action", "AssumeRole"),
        ("Version", "2011-06-15"),
        ("RoleArn", role_arn),
        ("RoleSessionName", session),
    ];
    if let Some(id) = external_id {
        params.push(("ExternalId", id));
    }
    let xml = moto.query(credentials, "sts", &params).await?;
    let field = |tag: &str| {
        xml_value(&xml, tag)
            .ok_or_else(|| LabError::Aws(format!("AssumeRole {role_arn}: no {tag}")))
    };
    let credentials = Credentials::new(
        field("AccessKeyId")?,
        field("SecretAccessKey")?,
        Some(field("SessionToken")?),
        None,
        "lab",
    );
    Ok((field("Arn")?, credentials))
}
