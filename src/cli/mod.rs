//! The same binary outside Lambda: a command line for operators.
//!
//! - `bedrock-relay invoke --event FILE [--timeout SECS] [--json]` runs one
//!   event through exactly the Lambda code path (payload guard, handler,
//!   record) with the caller's credentials.
//! - `bedrock-relay trail [--since 1h] [--json]` pairs account B's
//!   `AssumeRole` events with each target account's Bedrock events.
//! - `bedrock-relay doctor [--target ALIAS] [--model ID] [--json]` walks the
//!   chain link by link and prints each with pass/fail and the fix: identity in
//!   account B, AssumeRole into each target, identity in account A, a 1-token
//!   Converse, with `RELAY_BATCH_STAGING` the batch-job links of each target
//!   (`batch_doctor.rs`), with `RELAY_GUARDRAILS` each guardrail applied once
//!   by RoleA (`guardrail_doctor.rs`), a write to the destination.
//! - `bedrock-relay schema [--event]` prints the job's JSON Schema (with
//!   `--event`, that of a whole `Bedrock Relay Job` EventBridge event).
//! - `bedrock-relay status JOB_ID [--watch] [--interval SECS] [--json]`
//!   tells how far a job has got (mode, chunks, items, tokens, throttles,
//!   elapsed, time left, and a batch job's Bedrock jobs) from the work store
//!   and the destination; `--watch` draws a progress bar until it is complete.
//!
//! Exit codes: 0 all good, 1 a job or check failed, 2 usage or configuration.

mod batch_doctor;
mod guardrail_doctor;
mod rate_doctor;
mod status;
mod trail;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::provider::ProvideCredentials;
use lambda_runtime::{Context, LambdaEvent};
use serde::Serialize;
use serde_json::json;

use crate::aws::errors::chain_text;
use crate::bedrock::Bedrock;
use crate::config::Config;
use crate::credentials::{find_assume_role_error, AssumeRoleProvider};
use crate::domain::input::Payload;
use crate::domain::job::{Inference, Job};
use crate::lambda::Relay;

/// Exit code: everything passed.
pub const EXIT_OK: i32 = 0;
/// Exit code: a job or a check failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: bad usage or configuration.
pub const EXIT_USAGE: i32 = 2;

const USAGE: &str = "usage:
  bedrock-relay invoke --event FILE [--timeout SECS] [--json]
  bedrock-relay doctor [--target ALIAS] [--model MODEL_ID] [--json]
  bedrock-relay trail [--since 1h] [--json]
  bedrock-relay schema [--event]
  bedrock-relay status JOB_ID [--watch] [--interval SECS] [--json]
Reads the same RELAY_* environment as the Lambda function.";

/// Runs the command line; returns the process exit code.
pub async fn run(args: &[String]) -> i32 {
    let flag = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
    let json_output = args.iter().any(|a| a == "--json");
    match args.first().map(String::as_str) {
        Some("invoke") => {
            let Some(file) = flag("--event") else {
                eprintln!("{USAGE}");
                return EXIT_USAGE;
            };
            let timeout = match flag("--timeout").map(|t| t.parse::<u64>()) {
                None => Duration::from_secs(900),
                Some(Ok(secs)) if secs > 0 => Duration::from_secs(secs),
                Some(_) => {
                    eprintln!("--timeout takes a whole number of seconds");
                    return EXIT_USAGE;
                }
            };
            invoke(&file, timeout, json_output).await
        }
        Some("doctor") => doctor(flag("--target"), flag("--model"), json_output).await,
        Some("trail") => {
            let since = flag("--since").unwrap_or_else(|| "1h".into());
            let Some(seconds) = crate::cli::trail::parse_since(&since) else {
                eprintln!("--since takes minutes, hours or days: 30m, 1h, 2d");
                return EXIT_USAGE;
            };
            trail(seconds, json_output).await
        }
        Some("status") => {
            let Some(job_id) = crate::cli::status::job_id_arg(&args[1..]) else {
                eprintln!("{USAGE}");
                return EXIT_USAGE;
            };
            if let Err(reason) = crate::domain::job::check_job_id(&job_id) {
                eprintln!("not a job id: {reason}");
                return EXIT_USAGE;
            }
            let interval = match flag("--interval").map(|t| t.parse::<u64>()) {
                None => crate::cli::status::DEFAULT_INTERVAL,
                Some(Ok(secs)) if secs > 0 => Duration::from_secs(secs),
                Some(_) => {
                    eprintln!("--interval takes a whole number of seconds");
                    return EXIT_USAGE;
                }
            };
            let watch = args.iter().any(|a| a == "--watch");
            status(&job_id, watch, interval, json_output).await
        }
        Some("schema") => {
            let schema = if args.iter().any(|a| a == "--event") {
                crate::schema::job_event_schema()
            } else {
                crate::schema::job_schema()
            };
            print!("{}", crate::schema::pretty(&schema));
            EXIT_OK
        }
        Some("help") | Some("--help") | Some("-h") => {
            println!("{USAGE}");
            EXIT_OK
        }
        _ => {
            eprintln!("{USAGE}");
            EXIT_USAGE
        }
    }
}

fn load_config() -> Result<Config, i32> {
    Config::from_env().map_err(|err| {
        eprintln!("configuration: {err}");
        EXIT_USAGE
    })
}

async fn invoke(file: &str, timeout: Duration, json_output: bool) -> i32 {
    let config = match load_config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let body = match std::fs::read(file) {
        Ok(body) => body,
        Err(err) => {
            eprintln!("cannot read {file}: {err}");
            return EXIT_USAGE;
        }
    };
    let payload = Payload::from_bytes(&body, config.max_event_bytes);
    let relay = Relay::from_config(config).await.without_metrics();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut context = Context::default();
    context.request_id = format!("local-{now_ms}");
    context.deadline = now_ms + timeout.as_millis() as u64;
    context.invoked_function_arn = "local".into();
    match relay.handle(LambdaEvent::new(payload, context)).await {
        Ok(answer) => {
            if json_output {
                println!("{answer}");
            } else {
                println!(
                    "ok: {} -> {}",
                    answer["job_id"].as_str().unwrap_or("?"),
                    answer["record"].as_str().unwrap_or("?")
                );
            }
            EXIT_OK
        }
        Err(diagnostic) => {
            if json_output {
                println!(
                    "{}",
                    json!({"error_type": diagnostic.error_type, "error_message": diagnostic.error_message})
                );
            } else {
                println!(
                    "failed: {}\n  {}",
                    diagnostic.error_type, diagnostic.error_message
                );
            }
            EXIT_FAILED
        }
    }
}

/// One link of the chain.
#[derive(Debug, Serialize)]
struct Check {
    check: String,
    target: Option<String>,
    ok: bool,
    /// Not run (nothing to run it with); does not fail the doctor.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    skipped: bool,
    detail: String,
}

async fn doctor(only_target: Option<String>, model: Option<String>, json_output: bool) -> i32 {
    let config = match load_config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Some(alias) = &only_target {
        if !config.targets.iter().any(|t| &t.alias == alias) {
            eprintln!("no target `{alias}` is configured");
            return EXIT_USAGE;
        }
    }
    let base = aws_config::load_defaults(BehaviorVersion::latest()).await;
    let mut checks = Vec::new();

    checks.push(identity_in_b(&base).await);
    let sts = aws_sdk_sts::Client::new(&base);
    for target in config.targets.iter() {
        if only_target
            .as_ref()
            .is_some_and(|alias| alias != &target.alias)
        {
            continue;
        }
        let alias = Some(target.alias.clone());
        let provider = AssumeRoleProvider::new(sts.clone(), target.clone());
        let credentials = match provider.provide_credentials().await {
            Ok(credentials) => {
                checks.push(Check {
                    check: "assume-role".into(),
                    target: alias.clone(),
                    ok: true,
                    skipped: false,
                    detail: format!(
                        "assumed {} (ExternalId {}, SourceIdentity {}, {} s)",
                        target.role.arn,
                        if target.external_id.is_some() {
                            "sent"
                        } else {
                            "none"
                        },
                        target.source_identity,
                        target.session_duration.as_secs()
                    ),
                });
                credentials
            }
            Err(err) => {
                let detail = find_assume_role_error(&err)
                    .map_or_else(|| err.to_string(), ToString::to_string);
                checks.push(Check {
                    check: "assume-role".into(),
                    target: alias,
                    ok: false,
                    skipped: false,
                    detail,
                });
                continue;
            }
        };

        let in_a = aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::config::Builder::from(&base)
                .credentials_provider(credentials)
                .build(),
        );
        checks.push(match in_a.get_caller_identity().send().await {
            Ok(identity) if identity.account() == Some(target.role.account.as_str()) => Check {
                check: "identity-in-target".into(),
                target: alias.clone(),
                ok: true,
                skipped: false,
                detail: format!("acting as {}", identity.arn().unwrap_or("?")),
            },
            Ok(identity) => Check {
                check: "identity-in-target".into(),
                target: alias.clone(),
                ok: false,
                skipped: false,
                detail: format!(
                    "the assumed session acts in account {}, not {}: check RELAY_ROLE_ARN / RELAY_TARGETS",
                    identity.account().unwrap_or("?"),
                    target.role.account
                ),
            },
            Err(err) => Check {
                check: "identity-in-target".into(),
                target: alias.clone(),
                ok: false,
                skipped: false,
                detail: format!("sts:GetCallerIdentity with RoleA's credentials failed: {}", chain_text(&err)),
            },
        });

        let probe_model = model
            .clone()
            .or_else(|| config.default_model.clone())
            .or_else(|| {
                target
                    .allowed_models
                    .as_ref()
                    .and_then(|patterns| patterns.iter().find(|p| !p.contains(['*', '?'])).cloned())
            });
        checks.push(match probe_model {
            None => Check {
                check: "model".into(),
                target: alias.clone(),
                ok: true,
                skipped: true,
                detail: "skipped: no model to try; pass --model or set RELAY_DEFAULT_MODEL".into(),
            },
            Some(model_id) => model_check(&base, &sts, target, &config, &model_id).await,
        });
        checks.extend(batch_doctor::checks(&base, &sts, &config, target).await);
        checks.extend(guardrail_doctor::checks(&base, &sts, &config, target).await);
    }

    let destinations = config.destinations(&base);
    checks.push(match destinations.probe(&config.destination).await {
        Ok(uri) if uri.is_empty() => Check {
            check: "destination".into(),
            target: None,
            ok: true,
            skipped: true,
            detail: format!(
                "skipped: {} is not probed (only S3 destinations are written to by the doctor)",
                config.destination
            ),
        },
        Ok(uri) => Check {
            check: "destination".into(),
            target: None,
            ok: true,
            skipped: false,
            detail: format!("wrote {uri}"),
        },
        Err(err) => Check {
            check: "destination".into(),
            target: None,
            ok: false,
            skipped: false,
            detail: err.to_string(),
        },
    });

    checks.extend(rate_doctor::check(&config, &destinations).await);

    let all_ok = checks.iter().all(|c| c.ok);
    if json_output {
        println!("{}", json!({"ok": all_ok, "checks": checks}));
    } else {
        for check in &checks {
            let target = check
                .target
                .as_deref()
                .map(|t| format!(" [{t}]"))
                .unwrap_or_default();
            println!(
                "{} {}{target}: {}",
                match (check.ok, check.skipped) {
                    (_, true) => "SKIP",
                    (true, false) => "PASS",
                    (false, false) => "FAIL",
                },
                check.check,
                check.detail
            );
        }
    }
    if all_ok {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

async fn trail(seconds: u64, json_output: bool) -> i32 {
    use aws_sdk_cloudtrail::types::LookupAttributeKey;

    let config = match load_config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let base = aws_config::load_defaults(BehaviorVersion::latest()).await;
    let start = aws_smithy_types::DateTime::from(SystemTime::now() - Duration::from_secs(seconds));
    let trail_b = aws_sdk_cloudtrail::Client::new(&base);
    let assume_events = match crate::cli::trail::lookup(
        &trail_b,
        LookupAttributeKey::EventName,
        "AssumeRole",
        start,
        MAX_TRAIL_PAGES,
    )
    .await
    {
        Ok(events) => events,
        Err(err) => {
            eprintln!("account B: {err}");
            return EXIT_FAILED;
        }
    };
    let sts = aws_sdk_sts::Client::new(&base);
    let mut model_events = Vec::new();
    let mut problems = Vec::new();
    for target in config.targets.iter() {
        // Each target's trail is read with RoleA's credentials, in its region.
        let provider = AssumeRoleProvider::new(sts.clone(), target.clone());
        let client = aws_sdk_cloudtrail::Client::from_conf(
            aws_sdk_cloudtrail::config::Builder::from(&base)
                .credentials_provider(provider)
                .region(aws_config::Region::new(target.region.clone()))
                .build(),
        );
        match crate::cli::trail::lookup(
            &client,
            LookupAttributeKey::EventSource,
            "bedrock.amazonaws.com",
            start,
            MAX_TRAIL_PAGES,
        )
        .await
        {
            Ok(events) => model_events.extend(events),
            Err(err) => problems.push(format!("target `{}`: {err}", target.alias)),
        }
    }
    let roles: Vec<String> = config.targets.iter().map(|t| t.role.arn.clone()).collect();
    let report = crate::cli::trail::pair(&assume_events, &model_events, &roles);
    if json_output {
        println!("{}", json!({"report": report, "problems": problems}));
    } else {
        print!("{}", crate::cli::trail::render(&report));
        for problem in &problems {
            println!("could not read: {problem}");
        }
    }
    if problems.is_empty() && report.failures == 0 {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

async fn status(job_id: &str, watch: bool, interval: Duration, json_output: bool) -> i32 {
    let config = match load_config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let base = aws_config::load_defaults(BehaviorVersion::latest()).await;
    let mut reader = crate::cli::status::Reader::new(&config, &base);
    crate::cli::status::run(&mut reader, job_id, watch, interval, json_output).await
}

/// LookupEvents serves 50 events a page at 2 requests a second: enough for an
/// hour of a busy relay without running for minutes.
const MAX_TRAIL_PAGES: usize = 40;

async fn identity_in_b(base: &SdkConfig) -> Check {
    match aws_sdk_sts::Client::new(base).get_caller_identity().send().await {
        Ok(identity) => Check {
            check: "identity".into(),
            target: None,
            ok: true,
            skipped: false,
            detail: format!("calling as {} in account {}", identity.arn().unwrap_or("?"), identity.account().unwrap_or("?")),
        },
        Err(err) => Check {
            check: "identity".into(),
            target: None,
            ok: false,
            skipped: false,
            detail: format!(
                "no usable credentials in account B ({}): run with the execution role's or an admin's credentials",
                chain_text(&err)
            ),
        },
    }
}

async fn model_check(
    base: &SdkConfig,
    sts: &aws_sdk_sts::Client,
    target: &crate::domain::target::Target,
    config: &Config,
    model_id: &str,
) -> Check {
    let alias = Some(target.alias.clone());
    if !target.allows(model_id) {
        return Check {
            check: "model".into(),
            target: alias,
            ok: false,
            skipped: false,
            detail: format!("`{model_id}` is not in RELAY_ALLOWED_MODELS for this target"),
        };
    }
    let job = Job::from_value(json!({"model": model_id, "prompt": "ping"}))
        .and_then(|job| job.resolve(None, "doctor"));
    let mut job = match job {
        Ok(job) => job,
        Err(err) => {
            return Check {
                check: "model".into(),
                target: alias,
                ok: false,
                skipped: false,
                detail: err.to_string(),
            }
        }
    };
    job.inference = Some(Inference {
        max_tokens: Some(1),
        ..Inference::default()
    });
    let bedrock = Bedrock::new(base, sts.clone(), target, config.max_attempts);
    match bedrock.converse(&job, Duration::from_secs(30)).await {
        Ok(reply) => Check {
            check: "model".into(),
            target: alias,
            ok: true,
            skipped: false,
            detail: format!(
                "`{model_id}` answered in {} ms ({} output token)",
                reply.call_latency_ms,
                reply.usage.map_or(0, |u| u.output_tokens)
            ),
        },
        Err(err) => Check {
            check: "model".into(),
            target: alias,
            ok: false,
            skipped: false,
            detail: err.to_string(),
        },
    }
}

/// Used by `main`: whether this process was started by the Lambda service.
pub fn under_lambda(args: &[String]) -> bool {
    args.is_empty() && std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}
