//! The Lambda wiring: [`Relay`] is built once at cold start, owns the shared
//! services (so credentials and connections stay warm between events) and
//! serves the Runtime API: each invocation's payload, request id and deadline
//! go to the run layer (`src/run/`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lambda_runtime::layers::TracingLayer;
use lambda_runtime::{service_fn, Diagnostic, LambdaEvent, Runtime};
use serde_json::Value;

use crate::bedrock::jobs::BatchJobs;
use crate::bedrock::Bedrock;
use crate::config::Config;
use crate::destination::Destinations;
use crate::domain::deadline::Deadline;
use crate::domain::input::{Payload, PayloadGuardLayer};
use crate::run::{run_event, BatchSide, Report, Services};
use crate::work::Staging;

/// The function's state across invocations.
#[derive(Debug, Clone)]
pub struct Relay {
    services: Arc<Services>,
    /// Cleared by the first invocation, which reports the cold start.
    cold: Arc<AtomicBool>,
}

impl Relay {
    /// Builds the clients from the Lambda environment: account B's credentials
    /// for STS and the destinations, RoleA's (through the identity cache) for Bedrock.
    pub async fn from_config(config: Config) -> Self {
        let base = crate::credentials::load_base_config(config.tls_roots).await;
        Self::from_sdk_config(config, &base)
    }

    /// [`Relay::from_config`] with an already loaded base configuration.
    pub fn from_sdk_config(config: Config, base: &aws_config::SdkConfig) -> Self {
        let sts = crate::credentials::sts_client(base);
        let bedrock = config
            .targets
            .iter()
            .map(|target| {
                (
                    target.alias.clone(),
                    Bedrock::new(base, sts.clone(), target, config.max_attempts),
                )
            })
            .collect();
        let destinations = config.destinations(base);
        let batch = batch_sides(&config, base, &sts);
        let mut relay = Self::new(config, bedrock, destinations);
        if let Some(services) = Arc::get_mut(&mut relay.services) {
            services.set_batch_sides(batch);
        }
        relay
    }

    /// Assembles a relay from parts (tests pass mocked clients): `bedrock` holds
    /// a client for each target alias.
    pub fn new(
        config: Config,
        bedrock: HashMap<String, Bedrock>,
        destinations: Destinations,
    ) -> Self {
        let report = Report::to_namespace(config.metrics_namespace.clone(), config.targets.clone());
        Self {
            services: Arc::new(Services::new(config, bedrock, destinations, report)),
            cold: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Stops the relay writing EMF metric lines to stdout (the CLI's stdout is
    /// its own output).
    pub fn without_metrics(mut self) -> Self {
        match Arc::get_mut(&mut self.services) {
            Some(services) => services.silence_metrics(),
            // Only a clone of this relay shares its services (the CLI calls this
            // right after building it).
            None => tracing::warn!("metrics stay on: the relay's services are shared"),
        }
        self
    }

    /// Serves invocations from the Lambda Runtime API until the process ends.
    pub async fn serve(self) -> Result<(), lambda_runtime::Error> {
        let max_event_bytes = self.services.config().max_event_bytes;
        let relay = Arc::new(self);
        let handler = service_fn(move |event: LambdaEvent<Payload>| {
            let relay = Arc::clone(&relay);
            async move { relay.handle(event).await }
        });
        Runtime::new(handler)
            .layer(PayloadGuardLayer::new(max_event_bytes))
            .layer(TracingLayer::new())
            .run()
            .await
    }

    /// Handles one event; the Lambda error type says whether a retry may help.
    pub async fn handle(&self, event: LambdaEvent<Payload>) -> Result<Value, Diagnostic> {
        let ctx = &event.context;
        if self.cold.swap(false, Ordering::Relaxed) {
            self.services
                .report()
                .cold_start(&ctx.env_config.function_name, &ctx.request_id);
        }
        let deadline = Deadline::from_lambda_ms(ctx.deadline);
        run_event(&self.services, &event.payload, &ctx.request_id, deadline)
            .await
            .map_err(Diagnostic::from)
    }
}

/// RoleA's batch-job clients of each target with a batch role, when
/// `RELAY_BATCH_STAGING` is set.
fn batch_sides(
    config: &Config,
    base: &aws_config::SdkConfig,
    sts: &aws_sdk_sts::Client,
) -> HashMap<String, BatchSide> {
    let Some(staging) = &config.batch_jobs.staging else {
        return HashMap::new();
    };
    config
        .targets
        .iter()
        .filter(|target| config.batch_jobs.role_for(&target.alias).is_some())
        .map(|target| {
            let s3 = crate::credentials::role_a_s3_client(
                base,
                sts.clone(),
                target,
                config.s3_force_path_style,
            );
            let side = BatchSide {
                jobs: BatchJobs::new(base, sts.clone(), target),
                staging: Staging::new(s3, staging, &target.role.account),
            };
            (target.alias.clone(), side)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use aws_sdk_bedrockruntime::operation::converse::ConverseOutput;
    use aws_sdk_bedrockruntime::types::StopReason;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::operation::put_object::{PutObjectError, PutObjectOutput};
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
    use aws_smithy_runtime_api::http::{Response as HttpResponse, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use lambda_runtime::Context;
    use serde_json::json;

    use super::*;
    use crate::bedrock::tests::{converse_error, converse_output};
    use crate::domain::target::Target;

    fn config() -> Config {
        config_with(&[])
    }

    /// The test configuration with `extra` variables added or replaced.
    fn config_with(extra: &[(&str, &str)]) -> Config {
        let mut vars = vec![
            ("AWS_REGION", "us-east-1"),
            ("RELAY_ROLE_ARN", "arn:aws:iam::111111111111:role/RoleA"),
            ("RELAY_DESTINATION", "s3://results/relay/"),
        ];
        vars.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        vars.extend_from_slice(extra);
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
        .expect("config")
    }

    fn context() -> Context {
        let mut ctx = Context::default();
        ctx.request_id = "req-1".into();
        ctx.deadline = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            + 30_000;
        ctx
    }

    /// S3 mock that keeps each written record.
    fn s3_capturing(written: &Arc<Mutex<Vec<(String, Value)>>>) -> Rule {
        let written = Arc::clone(written);
        mock!(aws_sdk_s3::Client::put_object)
            .match_requests(move |req| {
                let body = req
                    .body()
                    .bytes()
                    .and_then(|b| serde_json::from_slice(b).ok());
                // Claims (`_claims/`) are bookkeeping, not records.
                if let (Some(key), Some(body)) = (req.key(), body) {
                    if !key.contains("/_claims/") {
                        written.lock().expect("lock").push((key.to_owned(), body));
                    }
                }
                req.bucket() == Some("results")
            })
            .then_output(|| PutObjectOutput::builder().build())
    }

    /// An S3 mock refusing every write with AccessDenied.
    fn put_denied() -> Rule {
        mock!(aws_sdk_s3::Client::put_object).then_error(|| {
            PutObjectError::generic(
                ErrorMetadata::builder()
                    .code("AccessDenied")
                    .message("denied")
                    .build(),
            )
        })
    }

    /// An S3 mock with no earlier record for any job.
    fn no_earlier_record() -> Rule {
        mock!(aws_sdk_s3::Client::get_object).then_error(|| {
            GetObjectError::generic(ErrorMetadata::builder().code("NoSuchKey").build())
        })
    }

    /// A relay over `config` with a Bedrock client per target from `bedrock`
    /// and `s3` for every S3 call.
    fn assemble(
        config: Config,
        bedrock: impl Fn(&Target) -> Bedrock,
        s3: aws_sdk_s3::Client,
    ) -> Relay {
        assemble_with(config, bedrock, |d| d.with_s3_client(s3))
    }

    /// [`assemble`] with the destination clients `clients` puts in.
    fn assemble_with(
        config: Config,
        bedrock: impl Fn(&Target) -> Bedrock,
        clients: impl FnOnce(Destinations) -> Destinations,
    ) -> Relay {
        let base = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let models = config
            .targets
            .iter()
            .map(|target| (target.alias.clone(), bedrock(target)))
            .collect();
        Relay::new(
            config,
            models,
            clients(Destinations::new(&base, false, None)),
        )
    }

    fn relay(converse: &Rule, put: &Rule) -> Relay {
        let bedrock = mock_client!(aws_sdk_bedrockruntime, RuleMode::MatchAny, [converse]);
        let s3 = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [put, &no_earlier_record()]);
        assemble(
            config(),
            |target| Bedrock::from_client(bedrock.clone(), target),
            s3,
        )
    }

    fn event(payload: Value) -> LambdaEvent<Payload> {
        LambdaEvent::new(Payload::Json(payload), context())
    }

    #[tokio::test]
    async fn a_bare_job_is_answered_and_recorded_under_its_id() {
        let converse = mock!(aws_sdk_bedrockruntime::Client::converse)
            .match_requests(|req| req.model_id() == Some("amazon.nova-lite-v1:0"))
            .then_output(|| converse_output("four", 5, 1));
        let written = Arc::default();
        let put = s3_capturing(&written);
        let answer = relay(&converse, &put)
            .handle(event(json!({"id": "sums/1", "model": "amazon.nova-lite-v1:0", "prompt": "2+2?", "metadata": {"k": 1}})))
            .await
            .expect("success");
        assert_eq!(answer["record"], "s3://results/relay/sums/1.json");
        let written = written.lock().expect("lock");
        assert_eq!(written.len(), 1);
        let (key, record) = &written[0];
        assert_eq!(key, "relay/sums/1.json");
        assert_eq!(record["status"], "succeeded");
        assert_eq!(record["shape"], "bare-job");
        assert_eq!(record["request_id"], "req-1");
        assert_eq!(
            record["output"],
            json!({"text": "four", "stop_reason": "end_turn"})
        );
        assert_eq!(record["usage"]["total_tokens"], 6);
        assert_eq!(record["metadata"], json!({"k": 1}));
        assert_eq!(record["target"]["account"], "111111111111");
    }

    #[tokio::test]
    async fn a_refused_model_call_leaves_an_error_record_and_a_non_retryable_error() {
        let converse = converse_error("AccessDeniedException");
        let written = Arc::default();
        let put = s3_capturing(&written);
        let err = relay(&converse, &put)
            .handle(event(
                json!({"model": "amazon.nova-lite-v1:0", "prompt": "hi"}),
            ))
            .await
            .expect_err("denied");
        assert_eq!(err.error_type, "NonRetryable.BedrockAccessDenied");
        let written = written.lock().expect("lock");
        let (key, record) = &written[0];
        assert_eq!(key, "relay/req-1.json", "no envelope: keyed by request id");
        assert_eq!(record["status"], "failed");
        assert_eq!(record["error"]["type"], "BedrockAccessDenied");
        assert_eq!(record["error"]["retryable"], false);
    }

    #[tokio::test]
    async fn an_unwritable_destination_stops_the_job_before_the_model_call() {
        // The claim is the first write: when it is refused, the model is not
        // paid for a result that could not be kept, and the event is retryable
        // (the policy can be fixed).
        let converse = mock!(aws_sdk_bedrockruntime::Client::converse).then_output(|| {
            ConverseOutput::builder()
                .stop_reason(StopReason::EndTurn)
                .build()
                .expect("output")
        });
        let put = put_denied();
        let err = relay(&converse, &put)
            .handle(event(
                json!({"model": "amazon.nova-lite-v1:0", "prompt": "hi"}),
            ))
            .await
            .expect_err("unwritable");
        assert_eq!(err.error_type, "Retryable.DestinationDenied");
        assert!(err
            .error_message
            .contains("grant the execution role s3:PutObject on arn:aws:s3:::results/relay/*"));
        assert_eq!(converse.num_calls(), 0);
    }

    #[tokio::test]
    async fn an_expired_deadline_stops_before_the_model_call() {
        let converse = mock!(aws_sdk_bedrockruntime::Client::converse).then_output(|| {
            ConverseOutput::builder()
                .stop_reason(StopReason::EndTurn)
                .build()
                .expect("output")
        });
        let written = Arc::default();
        let put = s3_capturing(&written);
        let mut ctx = context();
        ctx.deadline -= 29_000; // one second left, under the 2 s reserve
        let err = relay(&converse, &put)
            .handle(LambdaEvent::new(
                Payload::Json(json!({"model": "amazon.nova-lite-v1:0", "prompt": "hi"})),
                ctx,
            ))
            .await
            .expect_err("deadline");
        assert_eq!(err.error_type, "Retryable.DeadlineExceeded");
        assert_eq!(converse.num_calls(), 0);
        assert_eq!(
            written.lock().expect("lock")[0].1["error"]["type"],
            "DeadlineExceeded"
        );
    }

    /// S3 mocks for a job whose claim object already exists: conditional
    /// writes of a new claim fail with 412, and the claim reads back as
    /// holding the job until `until_ms` (epoch ms).
    fn claim_exists(until_ms: u64) -> (Rule, Rule) {
        let refused = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(|req| {
                req.key().is_some_and(|k| k.contains("/_claims/")) && req.if_none_match().is_some()
            })
            .then_http_response(|| {
                HttpResponse::new(
                    StatusCode::try_from(412).expect("status"),
                    SdkBody::from(
                        "<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>",
                    ),
                )
            });
        let current = mock!(aws_sdk_s3::Client::get_object)
            .match_requests(|req| req.key().is_some_and(|k| k.contains("/_claims/")))
            .then_output(move || {
                aws_sdk_s3::operation::get_object::GetObjectOutput::builder()
                    .e_tag("\"claim-1\"")
                    .body(aws_sdk_s3::primitives::ByteStream::from(
                        json!({"request_id": "earlier", "until_ms": until_ms})
                            .to_string()
                            .into_bytes(),
                    ))
                    .build()
            });
        (refused, current)
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// Runs job `nightly/1` against an S3 where the job's claim exists (held
    /// until `claim_until`) and reading its result is answered by `result`.
    /// Returns the answer, the model calls and the records written.
    async fn run_with_existing_claim(
        claim_until: u64,
        result: &Rule,
    ) -> (Result<Value, Diagnostic>, usize, usize) {
        let converse = mock!(aws_sdk_bedrockruntime::Client::converse)
            .then_output(|| converse_output("again", 1, 1));
        let (refused, current) = claim_exists(claim_until);
        let written: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let put = s3_capturing(&written);
        let bedrock = mock_client!(aws_sdk_bedrockruntime, RuleMode::MatchAny, [&converse]);
        let s3 = mock_client!(
            aws_sdk_s3,
            RuleMode::MatchAny,
            [&refused, &current, result, &put]
        );
        let relay = assemble(config(), |t| Bedrock::from_client(bedrock.clone(), t), s3);
        let answer = relay
            .handle(event(
                json!({"id": "nightly/1", "model": "amazon.nova-lite-v1:0", "prompt": "hi"}),
            ))
            .await;
        let written = written.lock().expect("lock").len();
        (answer, converse.num_calls(), written)
    }

    /// A redelivered event finds its earlier success whether that run's claim
    /// is still live (redelivered within its deadline) or has run out: the
    /// model is not called and nothing is rewritten.
    #[tokio::test]
    async fn a_job_that_already_succeeded_is_not_sent_to_the_model_again() {
        for claim_until in [now_ms() + 600_000, 0] {
            let earlier = mock!(aws_sdk_s3::Client::get_object)
                .match_requests(|req| req.key() == Some("relay/nightly/1.json"))
                .then_output(|| {
                    aws_sdk_s3::operation::get_object::GetObjectOutput::builder()
                        .body(aws_sdk_s3::primitives::ByteStream::from_static(
                            br#"{"job_id": "nightly/1", "status": "succeeded"}"#,
                        ))
                        .build()
                });
            let (answer, model_calls, written) =
                run_with_existing_claim(claim_until, &earlier).await;
            let answer = answer.expect("success");
            assert_eq!(answer["already_done"], true, "claim until {claim_until}");
            assert_eq!(model_calls, 0);
            assert_eq!(earlier.num_calls(), 1, "the result was read back");
            assert_eq!(written, 0, "nothing rewritten");
        }
    }

    /// A transient error reading back an earlier result (the claim had run
    /// out, so the job may have finished) is retryable and writes nothing: no
    /// failure record over a success that may be there, no model call.
    #[tokio::test]
    async fn a_transient_read_back_error_writes_no_failure_record() {
        let unavailable = mock!(aws_sdk_s3::Client::get_object)
            .match_requests(|req| req.key() == Some("relay/nightly/1.json"))
            .then_http_response(|| {
                HttpResponse::new(
                    StatusCode::try_from(503).expect("status"),
                    SdkBody::from("<Error><Code>SlowDown</Code><Message>Reduce your request rate</Message></Error>"),
                )
            });
        let (answer, model_calls, written) = run_with_existing_claim(0, &unavailable).await;
        let err = answer.expect_err("unavailable");
        assert!(
            err.error_type.starts_with("Retryable."),
            "{}",
            err.error_type
        );
        assert_eq!(model_calls, 0);
        assert_eq!(written, 0, "no record written over what may be a success");
    }

    /// A success sent to a queue whose idempotency ledger then cannot take
    /// it is sent once, and the job still succeeds: it is delivered.
    #[tokio::test]
    async fn a_sent_result_is_not_sent_again_when_the_ledger_write_fails() {
        use aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemError;
        use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput;
        use aws_sdk_sqs::types::SendMessageBatchResultEntry;

        let config = config_with(&[
            (
                "RELAY_DESTINATION",
                "arn:aws:sqs:us-east-1:222222222222:results",
            ),
            (
                "RELAY_IDEMPOTENCY_TABLE",
                "arn:aws:dynamodb:us-east-1:222222222222:table/ledger",
            ),
        ]);
        let converse = mock!(aws_sdk_bedrockruntime::Client::converse)
            .then_output(|| converse_output("answer", 1, 1));
        let sent = mock!(aws_sdk_sqs::Client::send_message_batch).then_compute_output(|req| {
            let ok = req
                .entries()
                .iter()
                .map(|e| {
                    SendMessageBatchResultEntry::builder()
                        .id(e.id())
                        .message_id("m")
                        .md5_of_message_body("x")
                        .build()
                        .expect("entry")
                })
                .collect::<Vec<_>>();
            SendMessageBatchOutput::builder()
                .set_successful(Some(ok))
                .set_failed(Some(vec![]))
                .build()
                .expect("output")
        });
        let claim = mock!(aws_sdk_dynamodb::Client::put_item).then_output(|| {
            aws_sdk_dynamodb::operation::put_item::PutItemOutput::builder().build()
        });
        let unremembered = mock!(aws_sdk_dynamodb::Client::batch_write_item).then_error(|| {
            BatchWriteItemError::generic(
                ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .message("not authorized to perform dynamodb:BatchWriteItem")
                    .build(),
            )
        });
        let bedrock = mock_client!(aws_sdk_bedrockruntime, RuleMode::MatchAny, [&converse]);
        let sqs = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&sent]);
        let dynamodb = mock_client!(
            aws_sdk_dynamodb,
            RuleMode::MatchAny,
            [&claim, &unremembered]
        );
        let relay = assemble_with(
            config,
            |t| Bedrock::from_client(bedrock.clone(), t),
            |d| d.with_sqs_client(sqs).with_dynamodb_client(dynamodb),
        );
        let answer = relay
            .handle(event(
                json!({"id": "q-1", "model": "amazon.nova-lite-v1:0", "prompt": "hi"}),
            ))
            .await
            .expect("delivered, so succeeded");
        assert_eq!(answer["status"], "succeeded", "{answer}");
        assert_eq!(sent.num_calls(), 1, "sent once");
        assert!(unremembered.num_calls() >= 1);
    }

    /// A batch whose items share their documents reads each once for the
    /// whole batch, not once per item.
    #[tokio::test]
    async fn documents_every_item_shares_are_read_once_per_batch() {
        let config = config_with(&[("RELAY_ALLOWED_SOURCES", "s3://inputs/*")]);
        let converse = mock!(aws_sdk_bedrockruntime::Client::converse)
            .then_output(|| converse_output("ok", 1, 1));
        let guide = mock!(aws_sdk_s3::Client::get_object)
            .match_requests(|req| req.bucket() == Some("inputs"))
            .then_output(|| {
                aws_sdk_s3::operation::get_object::GetObjectOutput::builder()
                    .content_length(5)
                    .body(aws_sdk_s3::primitives::ByteStream::from_static(b"guide"))
                    .build()
            });
        let written: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let put = s3_capturing(&written);
        let bedrock = mock_client!(aws_sdk_bedrockruntime, RuleMode::MatchAny, [&converse]);
        let s3 = mock_client!(
            aws_sdk_s3,
            RuleMode::MatchAny,
            [&guide, &put, &no_earlier_record()]
        );
        let relay = assemble(config, |t| Bedrock::from_client(bedrock.clone(), t), s3);
        let answer = relay
            .handle(event(json!({
                "id": "shared-docs", "model": "amazon.nova-lite-v1:0",
                "documents": ["s3://inputs/guide.txt"], "prompt": "{{ item }}: {{ documents[0].text }}",
                "items": ["a", "b", "c", "d"]
            })))
            .await
            .expect("batch");
        assert_eq!(answer["succeeded"], 4, "{answer}");
        assert_eq!(converse.num_calls(), 4);
        assert_eq!(guide.num_calls(), 1, "read once for four items");
    }

    /// A job held by another invocation that has not finished it is refused
    /// as in progress (retryable), without calling the model.
    #[tokio::test]
    async fn a_job_claimed_elsewhere_and_not_finished_is_in_progress() {
        let (answer, model_calls, written) =
            run_with_existing_claim(now_ms() + 600_000, &no_earlier_record()).await;
        let err = answer.expect_err("in progress");
        assert_eq!(err.error_type, "Retryable.JobInProgress");
        assert_eq!(model_calls, 0);
        assert_eq!(written, 0, "no record written");
    }

    /// A new job's claim is its first S3 call, and being new it proves there
    /// is no earlier result: nothing is read back before the model call.
    #[tokio::test]
    async fn a_new_job_reads_nothing_back() {
        let converse = mock!(aws_sdk_bedrockruntime::Client::converse)
            .then_output(|| converse_output("four", 5, 1));
        let reads = no_earlier_record();
        let written: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let put = s3_capturing(&written);
        let bedrock = mock_client!(aws_sdk_bedrockruntime, RuleMode::MatchAny, [&converse]);
        let s3 = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&put, &reads]);
        let relay = assemble(config(), |t| Bedrock::from_client(bedrock.clone(), t), s3);
        relay
            .handle(event(
                json!({"id": "nightly/2", "model": "amazon.nova-lite-v1:0", "prompt": "hi"}),
            ))
            .await
            .expect("success");
        assert_eq!(converse.num_calls(), 1);
        assert_eq!(reads.num_calls(), 0, "no GetObject for a new job");
        assert_eq!(put.num_calls(), 2, "the claim and the record");
    }

    /// RoleA's credentials that expire while a batch runs are fetched again
    /// before they lapse: every item is answered once, none fails.
    #[tokio::test]
    async fn credentials_expiring_mid_batch_are_refreshed_without_losing_items() {
        // 100 s credentials sit inside the 150-300 s refresh window: each call
        // finds them expiring and fetches new ones.
        let (sts_rule, sts) = crate::bedrock::tests::sts_issuing(Duration::from_secs(100));
        let converse = mock!(aws_sdk_bedrockruntime::Client::converse)
            .then_output(|| converse_output("ok", 1, 1));
        let lines: Arc<Mutex<Vec<u8>>> = Arc::default();
        let captured = Arc::clone(&lines);
        let put = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(move |req| {
                if req.key().is_some_and(|k| k.ends_with(".jsonl")) {
                    if let Some(bytes) = req.body().bytes() {
                        captured.lock().expect("lock").extend_from_slice(bytes);
                    }
                }
                true
            })
            .then_output(|| PutObjectOutput::builder().build());
        let mut config = config();
        config.max_concurrency = 1;
        let s3 = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&put, &no_earlier_record()]);
        let relay = assemble(
            config,
            |_| crate::bedrock::tests::relay_bedrock(sts.clone(), &converse, 3),
            s3,
        );
        let answer = relay
            .handle(event(json!({
                "id": "refresh/1", "model": "amazon.nova-lite-v1:0",
                "prompt": "item {{ item }}", "items": [1, 2, 3]
            })))
            .await
            .expect("batch succeeds");
        assert_eq!(answer["succeeded"], 3);
        assert_eq!(converse.num_calls(), 3);
        assert!(sts_rule.num_calls() >= 2, "credentials refreshed mid-batch");
        let lines = lines.lock().expect("lock");
        let statuses: Vec<Value> = lines
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice::<Value>(l).expect("line")["status"].clone())
            .collect();
        assert_eq!(statuses, vec![json!("succeeded"); 3]);
    }
}
