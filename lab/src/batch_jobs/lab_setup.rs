//! Batch-job set-up in the [`Lab`]'s accounts (administrator sessions of
//! each): service roles, `iam:PassRole` for callers, shared buckets,
//! forwarding job events to another account's bus, watching a bus through
//! SQS ([`BusWatch`]), and reading what a job wrote.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use aws_sdk_eventbridge::types::{RuleState, Target};
use serde_json::{json, Value};

use super::ids::{arn_account, role_name};
use super::{BEDROCK_SERVICE, DETAIL_TYPE, SOURCE};
use crate::moto::REGION;
use crate::services::sdk_config;
use crate::{s3_client, Lab, LabError};

fn aws<E: std::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> LabError {
    move |e| LabError::Aws(format!("{what}: {e:?}"))
}

/// An SQS queue in one account that a rule on an event bus feeds, to read
/// what reached that bus.
#[derive(Debug, Clone)]
pub struct BusWatch {
    sqs: aws_sdk_sqs::Client,
    /// The queue's URL.
    pub queue_url: String,
    /// The rule's name.
    pub rule: String,
}

impl BusWatch {
    /// The events on the queue now (each deleted once read), as JSON envelopes.
    pub async fn drain(&self) -> Result<Vec<Value>, LabError> {
        let mut events = Vec::new();
        loop {
            let output = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .map_err(|e| LabError::Aws(format!("receive: {e:?}")))?;
            let messages = output.messages.unwrap_or_default();
            if messages.is_empty() {
                return Ok(events);
            }
            for message in messages {
                if let Some(body) = message.body() {
                    events.push(serde_json::from_str(body)?);
                }
                if let Some(handle) = message.receipt_handle() {
                    self.sqs
                        .delete_message()
                        .queue_url(&self.queue_url)
                        .receipt_handle(handle)
                        .send()
                        .await
                        .map_err(|e| LabError::Aws(format!("delete: {e:?}")))?;
                }
            }
        }
    }

    /// Drains until `done` holds for everything read so far, or `timeout`.
    pub async fn collect_until(
        &self,
        done: impl Fn(&[Value]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Value>, LabError> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        while !done(&events) && Instant::now() < deadline {
            events.extend(self.drain().await?);
        }
        Ok(events)
    }
}

/// Batch-job set-up in the lab's accounts (administrator sessions of each).
impl Lab {
    /// An administrator session in `account`.
    pub async fn admin_of(&self, account: &str) -> Result<Credentials, LabError> {
        crate::admin_session(&self.moto, account).await
    }

    /// Batch jobs as `deploy/account-a.yaml` sets them up with
    /// `EnableBatchJobs`: the batch plane connected, a staging bucket
    /// `bucket` in account A, a batch service role there that may use it, and
    /// RoleA allowed to pass that role. Returns the settings the function
    /// gets: `RELAY_BATCH_STAGING` (`s3://<bucket>/relay/`) and
    /// `RELAY_BATCH_ROLE_ARN`.
    pub async fn enable_batch_jobs(&self, bucket: &str) -> Result<(String, String), LabError> {
        self.connect_batch_jobs();
        let admin_a = self.admin_of(crate::ACCOUNT_A).await?;
        s3_client(self.moto.endpoint(), &admin_a)
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(aws("create the staging bucket"))?;
        let role = self
            .create_batch_service_role(crate::ACCOUNT_A, "BedrockBatchService", &[bucket])
            .await?;
        self.allow_batch_jobs(&self.role_a_arn, &role).await?;
        Ok((format!("s3://{bucket}/relay/"), role))
    }

    /// Connects the emulator's batch plane to this lab's moto.
    pub fn connect_batch_jobs(&self) {
        self.bedrock.batch_jobs().connect(self.moto.endpoint());
    }

    /// Creates a batch service role in `account`: trusting
    /// `bedrock.amazonaws.com` for jobs of that account (`aws:SourceAccount`),
    /// allowed `s3:GetObject`, `s3:PutObject` and `s3:ListBucket` on
    /// `buckets`. Returns its ARN.
    pub async fn create_batch_service_role(
        &self,
        account: &str,
        name: &str,
        buckets: &[&str],
    ) -> Result<String, LabError> {
        let admin = self.admin_of(account).await?;
        let trust = json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": BEDROCK_SERVICE},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": account}}}]});
        let arn = crate::create_role(&self.moto, &admin, name, &trust).await?;
        let resources: Vec<String> = buckets
            .iter()
            .flat_map(|b| [format!("arn:aws:s3:::{b}"), format!("arn:aws:s3:::{b}/*")])
            .collect();
        let policy = json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket"],
            "Resource": resources}]});
        self.put_role_policy(&admin, name, "batch-data", &policy)
            .await?;
        Ok(arn)
    }

    /// Lets `caller_role_arn` run batch jobs with `service_role_arn`:
    /// `iam:PassRole` on it (to `bedrock.amazonaws.com` only) and the four
    /// batch actions.
    pub async fn allow_batch_jobs(
        &self,
        caller_role_arn: &str,
        service_role_arn: &str,
    ) -> Result<(), LabError> {
        let account = arn_account(caller_role_arn)
            .ok_or_else(|| LabError::Setup(format!("not a role ARN: {caller_role_arn}")))?;
        let admin = self.admin_of(&account).await?;
        let policy = json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iam:PassRole", "Resource": service_role_arn,
             "Condition": {"StringEquals": {"iam:PassedToService": BEDROCK_SERVICE}}},
            {"Effect": "Allow", "Action": [
                "bedrock:CreateModelInvocationJob", "bedrock:GetModelInvocationJob",
                "bedrock:ListModelInvocationJobs", "bedrock:StopModelInvocationJob"],
             "Resource": "*"}]});
        self.put_role_policy(&admin, role_name(caller_role_arn), "batch-jobs", &policy)
            .await
    }

    async fn put_role_policy(
        &self,
        admin: &Credentials,
        role: &str,
        name: &str,
        policy: &Value,
    ) -> Result<(), LabError> {
        self.moto
            .query(
                admin,
                "iam",
                &[
                    ("Action", "PutRolePolicy"),
                    ("Version", "2010-05-08"),
                    ("RoleName", role),
                    ("PolicyName", name),
                    ("PolicyDocument", &policy.to_string()),
                ],
            )
            .await
            .map(|_| ())
    }

    /// Sets the policy of `bucket` (owned by `owner`) to let `principal_arn`
    /// read, write and list it.
    pub async fn share_bucket(
        &self,
        owner: &str,
        bucket: &str,
        principal_arn: &str,
    ) -> Result<(), LabError> {
        let admin = self.admin_of(owner).await?;
        let policy = json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "BatchObjects", "Effect": "Allow", "Principal": {"AWS": principal_arn},
             "Action": ["s3:GetObject", "s3:PutObject"], "Resource": format!("arn:aws:s3:::{bucket}/*")},
            {"Sid": "BatchList", "Effect": "Allow", "Principal": {"AWS": principal_arn},
             "Action": "s3:ListBucket", "Resource": format!("arn:aws:s3:::{bucket}")}]});
        s3_client(self.moto.endpoint(), &admin)
            .put_bucket_policy()
            .bucket(bucket)
            .policy(policy.to_string())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| LabError::Aws(format!("put bucket policy {bucket}: {e:?}")))
    }

    /// Forwards the batch job events of `from_account`'s default bus to the
    /// bus `to_bus_arn` in another account, as one sets it up in AWS: the
    /// target bus lets `from_account` put events (PutPermission), and a rule
    /// on `from_account`'s default bus matching `aws.bedrock` batch job state
    /// changes (of jobs named `job_name_prefix…`, if given) targets it. moto
    /// delivers cross-account bus targets itself (as a new event in the
    /// target account: its `account`, `time` and `resources` are not the
    /// original's). Returns the rule's name.
    pub async fn forward_batch_events(
        &self,
        from_account: &str,
        to_bus_arn: &str,
        job_name_prefix: Option<&str>,
    ) -> Result<String, LabError> {
        let to_account = arn_account(to_bus_arn)
            .ok_or_else(|| LabError::Setup(format!("not a bus ARN: {to_bus_arn}")))?;
        let to_bus = to_bus_arn.rsplit('/').next().unwrap_or("default");
        let target_events = aws_sdk_eventbridge::Client::new(
            &sdk_config(self.moto.endpoint(), &self.admin_of(&to_account).await?).await,
        );
        target_events
            .put_permission()
            .event_bus_name(to_bus)
            .action("events:PutEvents")
            .principal(from_account)
            .statement_id(format!("batch-events-from-{from_account}"))
            .send()
            .await
            .map_err(aws("put permission"))?;
        let mut pattern = json!({"source": [SOURCE], "detail-type": [DETAIL_TYPE]});
        if let Some(prefix) = job_name_prefix {
            pattern["detail"] = json!({"batchJobName": [{"prefix": prefix}]});
        }
        let events = aws_sdk_eventbridge::Client::new(
            &sdk_config(self.moto.endpoint(), &self.admin_of(from_account).await?).await,
        );
        let rule = format!("batch-events-to-{to_account}-{to_bus}");
        events
            .put_rule()
            .name(&rule)
            .event_pattern(pattern.to_string())
            .state(RuleState::Enabled)
            .send()
            .await
            .map_err(aws("put rule"))?;
        let target = Target::builder()
            .id("bus")
            .arn(to_bus_arn)
            .build()
            .map_err(aws("target"))?;
        events
            .put_targets()
            .rule(&rule)
            .targets(target)
            .send()
            .await
            .map_err(aws("put targets"))?;
        Ok(rule)
    }

    /// Creates, in `account`, a queue named `name` and a rule of `pattern` on
    /// `bus` (created unless `default`) that targets it.
    pub async fn watch_bus(
        &self,
        account: &str,
        bus: &str,
        pattern: &Value,
        name: &str,
    ) -> Result<BusWatch, LabError> {
        let config = sdk_config(self.moto.endpoint(), &self.admin_of(account).await?).await;
        let sqs = aws_sdk_sqs::Client::new(&config);
        let events = aws_sdk_eventbridge::Client::new(&config);
        let queue_url = sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .map_err(aws("create queue"))?
            .queue_url
            .ok_or_else(|| LabError::Aws(format!("create queue {name}: no url")))?;
        let queue_arn = format!("arn:aws:sqs:{REGION}:{account}:{name}");
        if bus != "default" {
            events
                .create_event_bus()
                .name(bus)
                .send()
                .await
                .map_err(aws("create bus"))?;
        }
        events
            .put_rule()
            .name(name)
            .event_bus_name(bus)
            .event_pattern(pattern.to_string())
            .state(RuleState::Enabled)
            .send()
            .await
            .map_err(aws("put rule"))?;
        let target = Target::builder()
            .id("queue")
            .arn(queue_arn)
            .build()
            .map_err(aws("target"))?;
        events
            .put_targets()
            .rule(name)
            .event_bus_name(bus)
            .targets(target)
            .send()
            .await
            .map_err(aws("put targets"))?;
        Ok(BusWatch {
            sqs,
            queue_url,
            rule: name.to_owned(),
        })
    }

    /// The `.jsonl.out` lines and the manifest a job wrote under
    /// `s3://bucket/prefix<job id>/` (read as `owner`'s administrator):
    /// output objects by name (`manifest.json.out` left out), each parsed
    /// line by line, and the manifest if written.
    pub async fn batch_output(
        &self,
        owner: &str,
        bucket: &str,
        prefix: &str,
        job_id: &str,
    ) -> Result<(HashMap<String, Vec<Value>>, Option<Value>), LabError> {
        let s3 = s3_client(self.moto.endpoint(), &self.admin_of(owner).await?);
        let root = format!("{prefix}{job_id}/");
        let listing = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&root)
            .send()
            .await
            .map_err(|e| LabError::Aws(format!("list s3://{bucket}/{root}: {e:?}")))?;
        let mut outputs = HashMap::new();
        let mut manifest = None;
        for key in listing.contents().iter().filter_map(|o| o.key()) {
            let bytes = s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| LabError::Aws(format!("get {key}: {e:?}")))?
                .body
                .collect()
                .await
                .map_err(|e| LabError::Aws(format!("read {key}: {e}")))?
                .into_bytes();
            let name = key.strip_prefix(&root).unwrap_or(key).to_owned();
            if name == "manifest.json.out" {
                manifest = Some(serde_json::from_slice(&bytes)?);
                continue;
            }
            let lines = bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(serde_json::from_slice)
                .collect::<Result<Vec<Value>, _>>()?;
            outputs.insert(name, lines);
        }
        Ok((outputs, manifest))
    }
}
