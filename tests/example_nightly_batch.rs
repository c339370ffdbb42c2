//! `examples/nightly-batch/template.yaml`: an EventBridge Scheduler schedule
//! sends the nested relay a bare job over a JSON Lines object every night; the
//! batch fans out over the work queue, its results go to S3 and its completion
//! event, on the example's bus, is e-mailed through an SNS topic.
//!
//! The template checks need no lab; the end-to-end test runs the schedule's
//! payload through the built function in the lab, configured from the
//! evaluated templates (needs the lab's Python tools: `scripts/setup`).

#[path = "common/stack.rs"]
mod stack;

use std::path::Path;
use std::time::Duration;

use aws_sdk_eventbridge::types::{RuleState, Target};
use aws_sdk_sqs::types::QueueAttributeName;
use lab::esm::{self, Mapping};
use lab::runtime_api::FunctionProcess;
use lab::services::{sdk_config, Services};
use lab::{Lab, BUCKET, PREFIX};
use serde_json::{json, Value};

mod common;
use common::answer;
use stack::{glob, matches, Stack, ROLE_A};

const EXAMPLE: &str = "examples/nightly-batch/template.yaml";
const INPUTS: &str = "nightly-inputs";
const EMAIL: &str = "ops@example.com";
const TONIGHT: &str = "2026-12-01T02:00:00Z";
const TOMORROW: &str = "2026-12-02T02:00:00Z";
/// What EventBridge Scheduler replaces with the run's scheduled time.
const SCHEDULED_TIME: &str = "<aws.scheduler.scheduled-time>";
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(20);

/// The example with its required parameters and `overrides`, as the lab's
/// account B (results in `relay-results/results/`).
fn example(overrides: &[(&str, &str)]) -> Stack {
    let mut all = vec![
        ("TargetRoleArn", ROLE_A),
        ("DestinationBucket", BUCKET),
        ("DestinationPrefix", PREFIX),
        ("InputBucket", INPUTS),
        ("Email", EMAIL),
    ];
    all.extend_from_slice(overrides);
    Stack::deploy(EXAMPLE, &all)
}

fn resource(stack: &Stack, name: &str, kind: &str) -> Value {
    let resource = &stack.template["Resources"][name];
    assert_eq!(resource["Type"].as_str(), Some(kind), "{name}");
    stack.eval(&resource["Properties"])
}

/// The nested relay's parameters, as strings.
fn relay_parameters(stack: &Stack) -> Vec<(String, String)> {
    let params = stack.eval(&stack.template["Resources"]["Relay"]["Properties"]["Parameters"]);
    params
        .as_object()
        .expect("parameters")
        .iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("{k}: nested stack parameters are strings"));
            (k.clone(), v.to_owned())
        })
        .collect()
}

/// The relay template deployed with the example's parameters (panics on an
/// undeclared or a missing required one), its work queue at `work_queue`.
fn nested_relay(stack: &Stack, work_queue: &str) -> Stack {
    let params = relay_parameters(stack);
    let overrides: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut relay = Stack::deploy("template.yaml", &overrides);
    relay
        .resources
        .insert("WorkQueue".into(), work_queue.to_owned());
    relay
}

/// The schedule's payload for the run scheduled at `time`, as Scheduler sends it.
fn scheduled_payload(stack: &Stack, time: &str) -> Value {
    let schedule = resource(stack, "NightlySchedule", "AWS::Scheduler::Schedule");
    let input = schedule["Target"]["Input"].as_str().expect("Input");
    assert!(input.contains(SCHEDULED_TIME), "{input}");
    serde_json::from_str(&input.replace(SCHEDULED_TIME, time)).expect("the Input is JSON")
}

fn completion_pattern(stack: &Stack) -> Value {
    resource(stack, "CompletionRule", "AWS::Events::Rule")["EventPattern"].clone()
}

/// A completion event as the relay sends it: detail is the batch's manifest.
fn completion_event(job_id: &str) -> Value {
    json!({
        "version": "0", "id": "0d5c6b54-0f40-4a5e-9d1e-6a4f0c2f9b11",
        "detail-type": "Bedrock Relay Batch Completed", "source": bedrock_relay::EVENT_SOURCE,
        "account": "222222222222", "time": "2026-12-01T02:09:41Z", "region": "us-east-1",
        "resources": [],
        "detail": {
            "job_id": job_id, "mode": "fan-out", "status": "partial",
            "items": 25, "succeeded": 24, "failed": 1, "blocked": 0, "by_target": [],
            "chunks": 3, "invocations": 4,
            "results": format!("s3://{BUCKET}/{PREFIX}{job_id}.jsonl"),
            "started_at": "2026-12-01T02:00:01Z", "finished_at": "2026-12-01T02:09:41Z"
        }
    })
}

/// EventBridge's input transformer for a string template: each `<name>` is
/// the value at its `$.a.b` path (strings unquoted); the result is the JSON
/// string the target receives.
fn transform(transformer: &Value, event: &Value) -> String {
    let mut text = transformer["InputTemplate"]
        .as_str()
        .expect("InputTemplate")
        .to_owned();
    for (name, path) in transformer["InputPathsMap"].as_object().expect("paths") {
        let pointer = path
            .as_str()
            .and_then(|p| p.strip_prefix('$'))
            .expect("a $. path")
            .replace('.', "/");
        let value = event
            .pointer(&pointer)
            .unwrap_or_else(|| panic!("{path} is not in the event"));
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text = text.replace(&format!("<{name}>"), &value);
    }
    assert!(!text.contains("<"), "every placeholder is mapped: {text}");
    serde_json::from_str::<String>(&text).expect("the template is a JSON string")
}

/// The schedule runs every night at 02:00 UTC by default, exactly on time, and
/// targets the nested relay with a bare job: a valid batch over the input
/// object, on-demand by default, whose id is the run's scheduled time, so each
/// night is a new job and every retry of one night's run is the same job.
#[test]
fn schedule_sends_the_relay_a_bare_job_that_is_new_each_night_and_the_same_on_retry() {
    let stack = example(&[]);
    let schedule = resource(&stack, "NightlySchedule", "AWS::Scheduler::Schedule");
    assert_eq!(schedule["ScheduleExpression"], "cron(0 2 * * ? *)");
    assert_eq!(schedule["ScheduleExpressionTimezone"], "UTC");
    assert_eq!(schedule["FlexibleTimeWindow"], json!({"Mode": "OFF"}));
    assert_eq!(schedule["State"], "ENABLED");
    let target = &schedule["Target"];
    assert_eq!(target["Arn"], "getatt:Relay.Outputs.FunctionArn");
    assert_eq!(target["RoleArn"], "getatt:SchedulerRole.Arn");
    assert_eq!(
        target["DeadLetterConfig"]["Arn"],
        "getatt:Relay.Outputs.FailedEventsQueueArn"
    );
    assert_eq!(target["RetryPolicy"]["MaximumRetryAttempts"], 185);

    let payload = scheduled_payload(&stack, TONIGHT);
    // A bare job: the relay takes it as is, with no envelope.
    let input =
        bedrock_relay::Input::from_payload(&bedrock_relay::Payload::Json(payload.clone()), None)
            .expect("a valid input");
    assert_eq!(format!("{:?}", input.shape), "BareJob");
    assert!(input.envelope.is_none());
    let job = bedrock_relay::Job::from_value(payload.clone()).expect("a valid job");
    assert!(job.is_batch());
    let resolved = job.resolve(None, "lambda-request-id").expect("resolves");
    assert_eq!(resolved.id, format!("nightly-batch/{TONIGHT}"));
    assert_eq!(resolved.model, "amazon.nova-lite-v1:0");
    assert!(resolved.complete_within.is_some());
    assert_eq!(payload["complete_within"], "PT6H", "on-demand by default");
    assert_eq!(
        payload["items_from"],
        format!("s3://{INPUTS}/nightly/items.jsonl")
    );
    assert!(payload["prompt"]
        .as_str()
        .is_some_and(|p| p.contains("{{ item.text }}")));
    assert!(
        payload.get("destination").is_none(),
        "the relay's S3 destination"
    );

    // A retry of tonight's run carries the same id; tomorrow's run another.
    let again = bedrock_relay::Job::from_value(scheduled_payload(&stack, TONIGHT)).unwrap();
    let tomorrow = bedrock_relay::Job::from_value(scheduled_payload(&stack, TOMORROW)).unwrap();
    let id = |job: &bedrock_relay::Job, request: &str| job.resolve(None, request).unwrap().id;
    assert_eq!(id(&again, "another-request"), resolved.id);
    assert_ne!(id(&tomorrow, "lambda-request-id"), resolved.id);

    // The relay may read the input object, and only it.
    let params = relay_parameters(&stack);
    let inputs = &params
        .iter()
        .find(|(k, _)| k == "InputObjectArns")
        .expect("InputObjectArns")
        .1;
    assert_eq!(
        inputs,
        &format!("arn:aws:s3:::{INPUTS}/nightly/items.jsonl")
    );
    assert!(!glob(
        inputs,
        &format!("arn:aws:s3:::{INPUTS}/nightly/other.jsonl")
    ));

    // A batch job when the deadline allows: P2D is a valid complete_within.
    let batch = example(&[("CompleteWithin", "P2D")]);
    let job = bedrock_relay::Job::from_value(scheduled_payload(&batch, TONIGHT)).unwrap();
    assert!(job.resolve(None, "r").unwrap().complete_within.is_some());
}

/// Scheduler may assume the role only for this account, and the role may
/// invoke exactly the relay function and dead-letter to its failure queue.
#[test]
fn scheduler_role_may_invoke_only_the_relay() {
    let stack = example(&[]);
    let role = resource(&stack, "SchedulerRole", "AWS::IAM::Role");
    let trust = &role["AssumeRolePolicyDocument"]["Statement"];
    assert_eq!(trust.as_array().map(Vec::len), Some(1));
    assert_eq!(
        trust[0]["Principal"],
        json!({"Service": "scheduler.amazonaws.com"})
    );
    assert_eq!(trust[0]["Action"], "sts:AssumeRole");
    assert_eq!(
        trust[0]["Condition"],
        json!({"StringEquals": {"aws:SourceAccount": "222222222222"}})
    );
    assert!(role.get("ManagedPolicyArns").is_none());
    let policies = role["Policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 1);
    let statements = policies[0]["PolicyDocument"]["Statement"]
        .as_array()
        .expect("statements");
    let grants: Vec<(String, String)> = statements
        .iter()
        .map(|s| {
            assert_eq!(s["Effect"], "Allow");
            assert!(s.get("NotAction").is_none() && s.get("NotResource").is_none());
            (
                s["Action"].as_str().expect("one action").to_owned(),
                s["Resource"].as_str().expect("one resource").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        grants,
        [
            (
                "lambda:InvokeFunction".to_owned(),
                "getatt:Relay.Outputs.FunctionArn".to_owned()
            ),
            (
                "sqs:SendMessage".to_owned(),
                "getatt:Relay.Outputs.FailedEventsQueueArn".to_owned()
            ),
        ]
    );
}

/// The completion rule, on the example's bus, matches a `Bedrock Relay Batch
/// Completed` event and no result event, and e-mails a readable summary (job
/// id, status, counts, result location) through the topic.
#[test]
fn completion_rule_matches_the_batch_completed_event_and_targets_the_topic() {
    let stack = example(&[]);
    let rule = resource(&stack, "CompletionRule", "AWS::Events::Rule");
    assert_eq!(rule["EventBusName"], "ref:CompletionBus");
    let pattern = completion_pattern(&stack);
    let id = format!("nightly-batch/{TONIGHT}");
    let event = completion_event(&id);
    assert!(matches(&pattern, &event), "{pattern} vs {event}");
    let mut result = event.clone();
    result["detail-type"] = json!(bedrock_relay::EVENT_DETAIL_TYPE);
    assert!(
        !matches(&pattern, &result),
        "a result event is not e-mailed"
    );
    let mut forged = event.clone();
    forged["source"] = json!("com.example.forged");
    assert!(!matches(&pattern, &forged));

    let targets = rule["Targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0]["Arn"], "ref:CompletionTopic");
    let message = transform(&targets[0]["InputTransformer"], &event);
    for part in [
        id.as_str(),
        "partial",
        "25 items",
        "24 succeeded",
        "1 failed",
        &format!("s3://{BUCKET}/{PREFIX}{id}.jsonl"),
    ] {
        assert!(message.contains(part), "{message:?} mentions {part}");
    }

    let subscription = resource(&stack, "CompletionEmail", "AWS::SNS::Subscription");
    assert_eq!(subscription["TopicArn"], "ref:CompletionTopic");
    assert_eq!(subscription["Protocol"], "email");
    assert_eq!(subscription["Endpoint"], EMAIL);
}

/// Only the completion rule may publish to the topic: one statement, for
/// EventBridge, with that rule's ARN as `aws:SourceArn`.
#[test]
fn topic_policy_admits_only_the_completion_rule() {
    let stack = example(&[]);
    let policy = resource(&stack, "CompletionTopicPolicy", "AWS::SNS::TopicPolicy");
    assert_eq!(policy["Topics"], json!(["ref:CompletionTopic"]));
    let statements = policy["PolicyDocument"]["Statement"]
        .as_array()
        .expect("statements");
    assert_eq!(statements.len(), 1);
    let statement = &statements[0];
    assert_eq!(statement["Effect"], "Allow");
    assert_eq!(
        statement["Principal"],
        json!({"Service": "events.amazonaws.com"})
    );
    assert_eq!(statement["Action"], "sns:Publish");
    assert_eq!(statement["Resource"], "ref:CompletionTopic");
    assert_eq!(
        statement["Condition"],
        json!({"ArnEquals": {"aws:SourceArn": "getatt:CompletionRule.Arn"}})
    );
}

/// Every parameter the example passes the nested relay is one the root
/// template declares, and deployed with them the relay sends its completion
/// events to the example's bus, reads exactly the input object, has its own
/// schedule off, and every output the example reads exists.
#[test]
fn nested_relay_gets_only_parameters_the_root_template_declares() {
    let mut stack = example(&[("ChunkItems", "50")]);
    let bus = "arn:aws:events:us-east-1:222222222222:event-bus/bedrock-relay-nightly-completed";
    stack
        .resources
        .insert("CompletionBus.Arn".into(), bus.into());
    let root = Stack::relay(&[]);
    let declared = root.template["Parameters"]
        .as_mapping()
        .expect("parameters");
    let params = relay_parameters(&stack);
    for (name, _) in &params {
        assert!(
            declared.contains_key(name.as_str()),
            "template.yaml declares no parameter {name}"
        );
    }
    let relay = nested_relay(
        &stack,
        "https://sqs.us-east-1.amazonaws.com/222222222222/work",
    );
    assert_eq!(relay.env("RELAY_EVENT_BUS"), bus);
    assert_eq!(relay.env("RELAY_CHUNK_ITEMS"), "50");
    assert_eq!(relay.env("RELAY_DEFAULT_JOB"), "");
    assert_eq!(
        relay.env("RELAY_ALLOWED_SOURCES"),
        format!("arn:aws:s3:::{INPUTS}/nightly/items.jsonl")
    );
    assert_eq!(
        relay.env("RELAY_DESTINATION"),
        format!("s3://{BUCKET}/{PREFIX}")
    );
    assert!(
        !relay.condition("ScheduleEnabled"),
        "the built-in schedule is off"
    );
    assert!(
        !relay.condition("HasBatchJobs"),
        "on-demand unless configured"
    );
    let put = relay
        .statement("PutCompletionEvents")
        .expect("the relay may put events on the bus");
    assert_eq!(put["Resource"], bus);

    let batch = example(&[
        ("BatchStaging", "s3://relay-staging-111111111111/relay/"),
        (
            "BatchRoleArn",
            "arn:aws:iam::111111111111:role/BedrockBatch",
        ),
    ]);
    assert!(nested_relay(&batch, "q").condition("HasBatchJobs"));

    for output in ["FunctionArn", "FailedEventsQueueArn", "ExecutionRoleArn"] {
        assert!(
            !root.template["Outputs"][output].is_null(),
            "template.yaml has no output {output}"
        );
    }
    let outputs = stack.eval(&stack.template["Outputs"]);
    assert_eq!(
        outputs["ResultsLocation"]["Value"],
        format!("s3://{BUCKET}/{PREFIX}nightly-batch/")
    );
    assert_eq!(outputs["ScheduleName"]["Value"], "ref:NightlySchedule");
    assert_eq!(
        outputs["CompletionTopicArn"]["Value"],
        "ref:CompletionTopic"
    );
}

// --- end to end in the lab --------------------------------------------------

/// The schedule's payload, sent to the built function as Scheduler's Lambda
/// target sends it (the bare JSON as the invocation payload), plans a 25-item
/// batch from the JSON Lines input in three chunks; the lab's event source
/// mapping runs them; the `.jsonl` has every item once, in input order, under
/// the example's results location, with its manifest; the completion event
/// reaches the example's bus and its rule (moto matches the example's pattern,
/// and so does the test's matcher). Tonight's run delivered again calls no
/// model; tomorrow's is a new job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_event_runs_the_nightly_batch_end_to_end_in_the_lab() {
    let lab = Lab::start().await.expect("lab");
    let services = Services::of(&lab).await;
    let config = sdk_config(lab.moto.endpoint(), &lab.admin_b).await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let events = aws_sdk_eventbridge::Client::new(&config);

    // The relay's work queue, the example's bus: everything the relay puts on
    // it to one queue, what the example's rule matches to another.
    let work = services.create_queue("work").await.expect("work queue");
    sqs.set_queue_attributes()
        .queue_url(&work.url)
        .attributes(QueueAttributeName::VisibilityTimeout, "60")
        .send()
        .await
        .expect("visibility");
    let bus_name = "bedrock-relay-nightly-completed";
    let (bus_arn, everything) = services.create_bus_to_queue(bus_name).await.expect("bus");
    let mut stack = example(&[("ChunkItems", "10")]);
    stack
        .resources
        .insert("CompletionBus.Arn".into(), bus_arn.clone());
    stack
        .resources
        .insert("CompletionBus".into(), bus_name.into());
    let emailed = services
        .create_queue("completion-rule")
        .await
        .expect("queue");
    let rule = resource(&stack, "CompletionRule", "AWS::Events::Rule");
    events
        .put_rule()
        .name("completion-rule")
        .event_bus_name(rule["EventBusName"].as_str().expect("bus name"))
        .event_pattern(rule["EventPattern"].to_string())
        .state(RuleState::Enabled)
        .send()
        .await
        .expect("put rule");
    events
        .put_targets()
        .rule("completion-rule")
        .event_bus_name(bus_name)
        .targets(
            Target::builder()
                .id("topic-stand-in")
                .arn(&emailed.arn)
                .build()
                .expect("target"),
        )
        .send()
        .await
        .expect("put targets");

    // The input object, where the example's parameters say.
    lab.create_bucket(INPUTS).await.expect("inputs bucket");
    let items: Vec<Value> = (0..25)
        .map(|i| json!({"id": i, "text": format!("review {i}")}))
        .collect();
    let body: String = items.iter().map(|i| format!("{i}\n")).collect();
    lab.put_object(INPUTS, "nightly/items.jsonl", body, "application/x-ndjson")
        .await
        .expect("items");

    // The function configured as the nested relay would be.
    let relay = nested_relay(&stack, &work.url);
    let mut env = lab.function_env();
    let mut settings: Vec<(String, String)> = [
        "RELAY_DESTINATION",
        "RELAY_ALLOWED_SOURCES",
        "RELAY_WORK_QUEUE",
        "RELAY_WORK_STORE",
        "RELAY_CHUNK_ITEMS",
        "RELAY_WORK_MAX_RECEIVES",
        "RELAY_EVENT_BUS",
        "RELAY_MAX_ITEMS",
        "RELAY_MAX_CONCURRENCY",
        "RELAY_DEFAULT_MODE",
        "RELAY_DEFAULT_JOB",
        "RELAY_BATCH_STAGING",
        "RELAY_BATCH_ROLE_ARN",
    ]
    .iter()
    .map(|name| (name.to_string(), relay.env(name)))
    .collect();
    settings.push(("RELAY_CHUNK_RETRY_SECONDS".into(), "0".into()));
    for (key, value) in settings {
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    }
    let (runtimes, functions) =
        FunctionProcess::spawn_many(Path::new(env!("CARGO_BIN_EXE_bedrock-relay")), 2, &env)
            .await
            .expect("functions");
    let logs = || {
        functions
            .iter()
            .map(|f| f.logs().join("\n"))
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let invoke = |payload: Value| {
        let runtime = &runtimes[0];
        async move {
            runtime
                .invoke(payload.to_string().into_bytes(), FUNCTION_TIMEOUT)
                .await
        }
    };
    let drain = || {
        let mapping = Mapping {
            queue_url: work.url.clone(),
            queue_arn: work.arn.clone(),
            batch_size: 1,
            maximum_concurrency: 2,
            function_timeout: FUNCTION_TIMEOUT,
        };
        let (sqs, runtimes) = (&sqs, &runtimes);
        async move {
            esm::run(
                sqs,
                &mapping,
                runtimes,
                Duration::from_secs(3),
                Duration::from_secs(120),
            )
            .await
            .expect("mapping")
        }
    };

    let id = format!("nightly-batch/{TONIGHT}");
    let planned = invoke(scheduled_payload(&stack, TONIGHT))
        .await
        .unwrap_or_else(|err| panic!("{err}; logs:\n{}", logs()));
    let planned = answer(&planned);
    assert_eq!(planned["status"], "planned", "{planned}");
    assert_eq!(planned["job_id"], id.as_str());
    let planned_at = planned["planned_at"].clone();
    assert_eq!(
        (planned["items"].as_u64(), planned["chunks"].as_u64()),
        (Some(25), Some(3)),
        "{planned}"
    );
    let report = drain().await;
    assert_eq!(report.records, 3, "each chunk received once: {report:?}");

    let lines = lab
        .batch_lines(&id)
        .await
        .expect("s3")
        .unwrap_or_else(|| panic!("no result; logs:\n{}", logs()));
    assert_eq!(lines.len(), 25);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i, "input order");
        assert_eq!(line["status"], "succeeded", "{line}");
        let text = line["output"]["text"].as_str().expect("an answer");
        assert!(text.ends_with(&format!("Review: review {i}")), "{text}");
    }
    let calls = || {
        lab.bedrock
            .calls()
            .iter()
            .filter(|c| c.status == 200)
            .count()
    };
    assert_eq!(calls(), 25, "each item asked once");

    let outputs = stack.eval(&stack.template["Outputs"]);
    let location = outputs["ResultsLocation"]["Value"]
        .as_str()
        .expect("output");
    let manifest_key = format!("{PREFIX}{id}.manifest.json");
    let manifest: Value = serde_json::from_slice(
        &lab.object(BUCKET, &manifest_key)
            .await
            .expect("s3")
            .expect("the manifest exists"),
    )
    .expect("manifest JSON");
    assert_eq!(manifest["job_id"], id.as_str());
    assert_eq!(manifest["status"], "succeeded");
    assert_eq!(manifest["items"], 25);
    let results = manifest["results"].as_str().expect("results");
    assert_eq!(results, format!("s3://{BUCKET}/{PREFIX}{id}.jsonl"));
    assert!(results.starts_with(location), "{results} under {location}");

    let on_bus = services
        .receive_all(&everything.url)
        .await
        .expect("bus queue");
    assert_eq!(on_bus.len(), 1, "one completion event");
    let event = on_bus[0].json().expect("event JSON");
    assert_eq!(event["detail-type"], "Bedrock Relay Batch Completed");
    assert_eq!(event["detail"]["job_id"], id.as_str());
    assert_eq!(event["detail"]["items"], 25);
    let pattern = completion_pattern(&stack);
    assert!(matches(&pattern, &event), "{pattern} vs {event}");
    let by_rule = services
        .receive_all(&emailed.url)
        .await
        .expect("rule queue");
    assert_eq!(by_rule.len(), 1, "the example's rule matched it");
    assert_eq!(
        by_rule[0].json().expect("event")["detail"]["job_id"],
        id.as_str()
    );
    let message = transform(&rule["Targets"][0]["InputTransformer"], &event);
    assert!(
        message.contains(&id) && message.contains("25 succeeded"),
        "{message}"
    );

    // Tonight's run again (a retry): done already, no model called.
    let again = invoke(scheduled_payload(&stack, TONIGHT))
        .await
        .unwrap_or_else(|err| panic!("{err}; logs:\n{}", logs()));
    let again = answer(&again);
    assert_eq!(again["job_id"], id.as_str(), "{again}");
    assert_eq!(
        again["planned_at"], planned_at,
        "the first plan, not a new one"
    );
    assert_eq!(drain().await.records, 0, "no chunk sent again");
    assert_eq!(calls(), 25, "a redelivered night calls no model");
    assert_eq!(
        lab.batch_lines(&id).await.expect("s3").map(|l| l.len()),
        Some(25)
    );

    // Tomorrow's run is a new job.
    let next = invoke(scheduled_payload(&stack, TOMORROW))
        .await
        .unwrap_or_else(|err| panic!("{err}; logs:\n{}", logs()));
    assert_eq!(answer(&next)["status"], "planned", "{next:?}");
    drain().await;
    assert_eq!(calls(), 50);
    let tomorrow = lab
        .batch_lines(&format!("nightly-batch/{TOMORROW}"))
        .await
        .expect("s3")
        .expect("tomorrow's result");
    assert_eq!(tomorrow.len(), 25);
    let by_rule = services
        .receive_all(&emailed.url)
        .await
        .expect("rule queue");
    assert_eq!(by_rule.len(), 1, "tomorrow's completion, once");
    assert_eq!(
        by_rule[0].json().expect("event")["detail"]["job_id"],
        format!("nightly-batch/{TOMORROW}")
    );
}
