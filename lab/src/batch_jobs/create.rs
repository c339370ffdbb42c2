//! CreateModelInvocationJob: idempotency (`clientRequestToken`), model
//! access, names and quotas, the service role's account, existence and trust
//! (`aws:SourceAccount` / `aws:SourceArn`), the caller's `iam:PassRole`, the
//! input read with the role's access, and the start of the job's task.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::ids::{arn_account, iso, now_ms, SplitMix};
use super::policy::{evaluate, Context, Principal, Verdict};
use super::request::CreateRequest;
use super::run::JobSpec;
use super::{validation, ApiError, BatchJob, BatchJobs, CallerInfo, Entry, BEDROCK_SERVICE};
use crate::emulator::{lock, Shared};
use crate::moto::REGION;

impl BatchJobs {
    pub(super) async fn create(
        &self,
        shared: &Shared,
        caller: &CallerInfo,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let request = CreateRequest::parse(body)?;
        let _one_at_a_time = self.inner.creating.lock().await;
        let role_account = arn_account(&request.role_arn).unwrap_or_default();
        let account = caller
            .account
            .clone()
            .unwrap_or_else(|| role_account.clone());

        if let Some(token) = &request.client_request_token {
            let jobs = lock(&self.inner.jobs);
            let earlier = jobs.iter().find(|e| {
                e.account == account && e.job.client_request_token.as_deref() == Some(token)
            });
            if let Some(earlier) = earlier {
                if earlier.request == *body {
                    return Ok(json!({"jobArn": earlier.job.job_arn}));
                }
                return Err((
                    409,
                    "ConflictException",
                    format!(
                        "The clientRequestToken {token} was already used for job {} with different parameters.",
                        earlier.job.job_arn
                    ),
                ));
            }
        }
        if role_account != account {
            return Err(validation("Cross-account pass role is not allowed."));
        }
        if let Some(allowed) = &lock(&shared.knobs).model_access {
            if !allowed.contains(&account) {
                return Err((
                    403,
                    "AccessDeniedException",
                    format!("You don't have access to the model with the specified model ID (account {account})."),
                ));
            }
        }
        let knobs = self.knobs();
        {
            let jobs = lock(&self.inner.jobs);
            let mine = || jobs.iter().filter(|e| e.account == account);
            if mine().any(|e| e.job.job_name == request.job_name) {
                return Err((
                    409,
                    "ConflictException",
                    format!(
                        "A batch inference job named {} already exists in this account.",
                        request.job_name
                    ),
                ));
            }
            if let Some(max) = knobs.max_active_jobs {
                if mine().filter(|e| !e.job.is_ended()).count() >= max {
                    return Err((
                        400,
                        "ServiceQuotaExceededException",
                        format!("The account has reached its quota of {max} batch inference jobs in progress."),
                    ));
                }
            }
        }
        let link = self.link().ok_or((
            500,
            "InternalServerException",
            "the lab's batch plane is not connected to moto (BatchJobs::connect or PUT /_lab/batch/moto)"
                .to_owned(),
        ))?;

        let id = self.new_id();
        let job_arn = format!("arn:aws:bedrock:{REGION}:{account}:model-invocation-job/{id}");
        let role = link
            .role(&account, &request.role_arn)
            .await
            .map_err(|e| (500, "InternalServerException", e))?
            .ok_or_else(|| {
                validation(format!(
                    "The provided role {} does not exist in account {account}.",
                    request.role_arn
                ))
            })?;
        let trusted = role.trust.as_ref().is_some_and(|trust| {
            let context = Context::from([
                ("aws:sourceaccount", account.clone()),
                ("aws:sourcearn", job_arn.clone()),
            ]);
            let who = Principal::service(BEDROCK_SERVICE);
            let verdict = evaluate(trust, "sts:AssumeRole", &role.arn, Some(&who), &context);
            verdict.allow && !verdict.deny
        });
        if !trusted {
            return Err(validation(format!(
                "The role {} does not let {BEDROCK_SERVICE} assume it (sts:AssumeRole) for this job: check its trust policy.",
                request.role_arn
            )));
        }
        if knobs.check_pass_role {
            if let Some(caller_role) = &caller.role_arn {
                let policies = link
                    .role_policies(&account, caller_role)
                    .await
                    .map_err(|e| (500, "InternalServerException", e))?;
                let context = Context::from([
                    ("iam:passedtoservice", BEDROCK_SERVICE.to_owned()),
                    ("aws:principalaccount", account.clone()),
                    ("aws:principalarn", caller_role.clone()),
                ]);
                let verdict = policies.iter().fold(Verdict::default(), |v, p| {
                    v.or(evaluate(p, "iam:PassRole", &role.arn, None, &context))
                });
                if !verdict.allow || verdict.deny {
                    let who = caller.principal_arn.as_deref().unwrap_or(caller_role);
                    return Err((
                        403,
                        "AccessDeniedException",
                        format!(
                            "User: {who} is not authorized to perform: iam:PassRole on resource: {}",
                            role.arn
                        ),
                    ));
                }
            }
        }

        let work = link.prepare(&role, &request, &id).await;
        let total = work
            .files
            .as_ref()
            .map(|files| files.iter().map(|f| f.records.len()).sum::<usize>());
        if let Ok(total) = total {
            if total < knobs.min_records {
                return Err(validation(format!(
                    "The input has {total} records, fewer than the minimum number of records per batch inference job ({}).",
                    knobs.min_records
                )));
            }
        }

        let submitted = now_ms();
        let hours = request.timeout_hours;
        let job = BatchJob {
            job_arn: job_arn.clone(),
            job_name: request.job_name.clone(),
            model_id: request.model_id.clone(),
            client_request_token: request.client_request_token.clone(),
            role_arn: request.role_arn.clone(),
            status: String::new(),
            message: None,
            submit_time: iso(submitted),
            last_modified_time: iso(submitted),
            end_time: None,
            input_data_config: request.input_config.clone(),
            output_data_config: request.output_config.clone(),
            timeout_duration_in_hours: hours,
            job_expiration_time: iso(submitted + i64::from(hours) * 3_600_000),
            model_invocation_type: request.invocation_type.clone(),
            total_record_count: None,
            processed_record_count: 0,
            success_record_count: 0,
            error_record_count: 0,
        };
        {
            let mut jobs = lock(&self.inner.jobs);
            jobs.push(Entry {
                job,
                account,
                request: body.clone(),
                stop: false,
                history: Vec::new(),
            });
            if let Some(entry) = jobs.last_mut() {
                self.set_status(entry, "Submitted", None);
            }
        }
        let plane = self.clone();
        let spec = JobSpec {
            id,
            model_id: request.model_id,
            invocation_type: request.invocation_type,
            knobs,
            hours,
        };
        let task = tokio::spawn(async move { plane.run(link, spec, work).await });
        lock(&self.inner.tasks).push(task);
        Ok(json!({ "jobArn": job_arn }))
    }

    fn new_id(&self) -> String {
        let n = self.inner.counter.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut rng = SplitMix(nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        (0..12)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.below(36)]))
            .collect()
    }
}
