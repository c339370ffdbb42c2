//! `template.yaml` checks that need no lab: the dashboard reads the metrics
//! the function emits.

use std::path::Path;

use serde_json::Value;

fn template() -> serde_yaml::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("template.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).expect("template.yaml")).expect("yaml")
}

/// The dashboard body is valid JSON once substituted, and every metric it
/// searches for is one the function writes, in its namespace and dimensions.
#[test]
fn dashboard_charts_the_metrics_the_function_emits() {
    let template = template();
    let serde_yaml::Value::Tagged(body) =
        &template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]
    else {
        panic!("DashboardBody is a !Sub");
    };
    let text = body
        .value
        .as_str()
        .expect("string")
        .replace("${AWS::Region}", "us-east-1");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let expressions: Vec<String> = dashboard["widgets"]
        .as_array()
        .expect("widgets")
        .iter()
        .flat_map(|w| {
            w["properties"]["metrics"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|m| m[0]["expression"].as_str().map(str::to_owned))
        .collect();
    assert!(!expressions.is_empty());

    // What the function writes: a failed job, a batch item, a cold start.
    let job = |is_item: bool| bedrock_relay::JobMetrics {
        target: "t".into(),
        model: "m".into(),
        error_type: Some("E".into()),
        usage: Some(bedrock_relay::Usage::default()),
        model_latency_ms: Some(1),
        guardrail_intervened: true,
        attempts: 1,
        throttled: 0,
        is_item,
        job_id: "j".into(),
        request_id: "r".into(),
    };
    let namespace = bedrock_relay::DEFAULT_METRICS_NAMESPACE;
    let documents = [
        bedrock_relay::emf_document(namespace, &job(false), 0),
        bedrock_relay::emf_document(namespace, &job(true), 0),
        bedrock_relay::cold_start_document(namespace, "f", "r", 0),
    ];
    // Every (metric, dimension set) pair written, as SEARCH's `{ns,dims}` schema.
    let mut emitted: Vec<(String, String)> = Vec::new();
    for document in &documents {
        let declared = &document["_aws"]["CloudWatchMetrics"][0];
        for metric in declared["Metrics"].as_array().expect("metrics") {
            for dimensions in declared["Dimensions"].as_array().expect("dimensions") {
                let dims: Vec<&str> = dimensions
                    .as_array()
                    .expect("a dimension set")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                emitted.push((
                    metric["Name"].as_str().expect("name").to_owned(),
                    format!(
                        "{{{},{}}}",
                        declared["Namespace"].as_str().expect("ns"),
                        dims.join(",")
                    ),
                ));
            }
        }
    }
    for expression in &expressions {
        let schema = expression
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(inside, _)| format!("{{{inside}}}"))
            .expect("a {namespace,dimensions} schema");
        let name = expression
            .split("MetricName=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a metric name");
        assert!(
            emitted.contains(&(name.to_owned(), schema.clone())),
            "dashboard charts `{name}` in `{schema}`, which the function does not write"
        );
    }
    // Tokens, errors and cold starts are all on it.
    for name in [
        "InputTokens",
        "OutputTokens",
        "Errors",
        "Items",
        "ColdStart",
    ] {
        assert!(
            expressions
                .iter()
                .any(|e| e.contains(&format!("MetricName=\"{name}\""))),
            "the dashboard charts {name}"
        );
    }
}

/// Active tracing is on for every function.
#[test]
fn xray_tracing_is_active() {
    assert_eq!(
        template()["Globals"]["Function"]["Tracing"].as_str(),
        Some("Active")
    );
}

// ---------------------------------------------------------------------------
// The execution role, environment and example, evaluated as CloudFormation would
// for a given set of parameter values.
// ---------------------------------------------------------------------------

#[path = "common/stack.rs"]
mod stack;

use serde_json::json;
use stack::{glob, matches, Stack, NO_VALUE, ROLE_A};

const QUEUE: &str = "arn:aws:sqs:us-east-1:222222222222:relay-results.fifo";
const TOPIC: &str = "arn:aws:sns:us-east-1:222222222222:relay-results";
const BUS: &str = "arn:aws:events:us-east-1:222222222222:event-bus/relay-results";
const TABLE: &str = "arn:aws:dynamodb:us-east-1:222222222222:table/relay-results";

/// A statement's actions or resources as a list.
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().expect("string").to_owned())
            .collect(),
        other => panic!("not a string or list: {other}"),
    }
}

/// Every (action, resource) pair the role is granted for actions of `service`.
fn grants(stack: &Stack, service: &str) -> Vec<(String, String)> {
    let prefix = format!("{service}:");
    let mut pairs = Vec::new();
    for statement in stack.statements() {
        assert_eq!(statement["Effect"], "Allow");
        for action in strings(&statement["Action"]) {
            if action.starts_with(&prefix) {
                for resource in strings(&statement["Resource"]) {
                    pairs.push((action.clone(), resource));
                }
            }
        }
    }
    pairs.sort();
    pairs
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(a, r)| ((*a).to_owned(), (*r).to_owned()))
        .collect();
    v.sort();
    v
}

/// The SQS grants every stack has: Lambda's on-failure destination, and the work
/// queue the function sends chunks to and its event source mapping consumes.
const OWN_QUEUE_GRANTS: [(&str, &str); 6] = [
    ("sqs:SendMessage", "getatt:FailedEventsQueue.Arn"),
    ("sqs:SendMessage", "getatt:WorkQueue.Arn"),
    ("sqs:ReceiveMessage", "getatt:WorkQueue.Arn"),
    ("sqs:DeleteMessage", "getatt:WorkQueue.Arn"),
    ("sqs:GetQueueAttributes", "getatt:WorkQueue.Arn"),
    ("sqs:ChangeMessageVisibility", "getatt:WorkQueue.Arn"),
];

const DYNAMODB_ACTIONS: [&str; 4] = [
    "dynamodb:BatchWriteItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
];

/// With only the required parameters, the default destination is the S3 prefix:
/// write, read back and abort multipart uploads under it, list it with an
/// `s3:prefix` condition (so a missing record is a 404, not a 403), use the
/// stack's own queues, and nothing for other destination kinds.
#[test]
fn s3_default_destination_grants_only_its_prefix() {
    let stack = Stack::relay(&[]);
    assert!(stack.condition("DestinationIsS3"));
    assert_eq!(
        stack.sids(),
        [
            "AssumeTargetRole",
            "WriteRecords",
            "ListRecords",
            "Logs",
            "Tracing",
            "OnFailureDestination",
            "SendToWorkQueue",
            "ConsumeWorkQueue"
        ]
    );
    assert_eq!(
        grants(&stack, "s3"),
        pairs(&[
            (
                "s3:AbortMultipartUpload",
                "arn:aws:s3:::relay-results/results/*"
            ),
            ("s3:GetObject", "arn:aws:s3:::relay-results/results/*"),
            ("s3:ListBucket", "arn:aws:s3:::relay-results"),
            ("s3:PutObject", "arn:aws:s3:::relay-results/results/*"),
        ])
    );
    let list = stack.statement("ListRecords").expect("ListRecords");
    assert_eq!(
        list["Condition"],
        json!({"StringLike": {"s3:prefix": "results/*"}})
    );
    assert_eq!(
        grants(&stack, "sqs"),
        pairs(&OWN_QUEUE_GRANTS),
        "only the failure queue and the work queue"
    );
    for service in ["sns", "events", "dynamodb", "kms"] {
        assert!(grants(&stack, service).is_empty(), "{service}");
    }
    assert_eq!(
        stack.env("RELAY_DESTINATION"),
        "s3://relay-results/results/"
    );
    assert_eq!(
        stack.env("RELAY_SPILL_S3"),
        "s3://relay-results/results/_spill/"
    );
    assert_eq!(stack.env("RELAY_ALLOWED_DESTINATIONS").replace(',', ""), "");
    assert_eq!(stack.env("RELAY_IDEMPOTENCY_TABLE"), "");
    assert_eq!(
        stack.env("RELAY_BUCKET_OWNER"),
        "222222222222",
        "the results bucket is expected in this account"
    );
    assert_eq!(
        Stack::relay(&[("DestinationBucketOwner", "333333333333")]).env("RELAY_BUCKET_OWNER"),
        "333333333333"
    );
    assert!(stack.template["Resources"]["ExecutionRole"]["Properties"]
        .as_mapping()
        .is_some_and(|p| !p.contains_key("ManagedPolicyArns")
            || stack.eval(
                &stack.template["Resources"]["ExecutionRole"]["Properties"]["ManagedPolicyArns"]
            ) == NO_VALUE));
}

/// Each kind of default destination (`DestinationArn`) becomes
/// `RELAY_DESTINATION` and gets exactly its one action set on exactly that ARN;
/// no other kind's statement, and no S3 listing, appears.
#[test]
fn each_destination_kind_gets_exactly_its_statement() {
    let cases: [(&str, &str, &str, &[&str]); 4] = [
        (QUEUE, "sqs", "SendToDestinationQueue", &["sqs:SendMessage"]),
        (TOPIC, "sns", "PublishToDestinationTopic", &["sns:Publish"]),
        (
            BUS,
            "events",
            "PutEventsOnDestinationBus",
            &["events:PutEvents"],
        ),
        (
            TABLE,
            "dynamodb",
            "WriteDestinationTable",
            &DYNAMODB_ACTIONS,
        ),
    ];
    for (arn, service, sid, actions) in cases {
        let stack = Stack::relay(&[("DestinationArn", arn)]);
        assert_eq!(stack.env("RELAY_DESTINATION"), arn);
        assert!(!stack.condition("DestinationIsS3"));
        let sids = stack.sids();
        assert!(sids.contains(&sid.to_owned()), "{sid} in {sids:?}");
        assert!(!sids.contains(&"ListRecords".to_owned()), "{sids:?}");
        let statement = stack.statement(sid).expect("statement");
        assert_eq!(statement["Resource"], arn, "{sid}");

        let mut expected: Vec<(&str, &str)> = actions.iter().map(|a| (*a, arn)).collect();
        if service == "sqs" {
            expected.extend(OWN_QUEUE_GRANTS);
        }
        assert_eq!(grants(&stack, service), pairs(&expected), "{service}");
        for other in ["sqs", "sns", "events", "dynamodb"] {
            if other != service && other != "sqs" {
                assert!(grants(&stack, other).is_empty(), "{sid}: no {other} grant");
            }
        }
        if service != "sqs" {
            assert_eq!(grants(&stack, "sqs"), pairs(&OWN_QUEUE_GRANTS));
        }
        // Spilled results still land under the prefix the role may write.
        assert_eq!(
            stack.env("RELAY_SPILL_S3"),
            "s3://relay-results/results/_spill/"
        );
    }
}

/// Destinations a job may choose get their own statement on exactly the listed
/// ARNs, and appear in `RELAY_ALLOWED_DESTINATIONS` with the free patterns.
#[test]
fn allowed_destinations_get_their_statements_and_patterns() {
    let queue2 = "arn:aws:sqs:us-east-1:222222222222:relay-other";
    let stack = Stack::relay(&[
        ("AllowedQueueArns", &format!("{QUEUE},{queue2}")),
        ("AllowedTopicArns", TOPIC),
        ("AllowedEventBusArns", BUS),
        ("AllowedTableArns", TABLE),
        ("AllowedDestinationPatterns", "s3://relay-results/teams/*"),
    ]);
    let mut queues = vec![("sqs:SendMessage", QUEUE), ("sqs:SendMessage", queue2)];
    queues.extend(OWN_QUEUE_GRANTS);
    assert_eq!(grants(&stack, "sqs"), pairs(&queues));
    assert_eq!(grants(&stack, "sns"), pairs(&[("sns:Publish", TOPIC)]));
    assert_eq!(
        grants(&stack, "events"),
        pairs(&[("events:PutEvents", BUS)])
    );
    let tables: Vec<(&str, &str)> = DYNAMODB_ACTIONS.iter().map(|a| (*a, TABLE)).collect();
    assert_eq!(grants(&stack, "dynamodb"), pairs(&tables));

    let allowed = stack.env("RELAY_ALLOWED_DESTINATIONS");
    let mut patterns: Vec<&str> = allowed.split(',').filter(|p| !p.is_empty()).collect();
    patterns.sort();
    let mut want = vec![
        QUEUE,
        queue2,
        TOPIC,
        BUS,
        TABLE,
        "s3://relay-results/teams/*",
    ];
    want.sort();
    assert_eq!(patterns, want);
    // The default destination stays S3.
    assert_eq!(
        stack.env("RELAY_DESTINATION"),
        "s3://relay-results/results/"
    );
}

/// With every optional parameter set, no statement but X-Ray's (which has no
/// resource-level permissions) grants `*`, and no destination or input statement
/// names a resource the parameters did not.
#[test]
fn no_statement_but_tracing_has_a_wildcard_resource() {
    let stack = Stack::relay(&[
        ("DestinationArn", QUEUE),
        ("AllowedTopicArns", TOPIC),
        ("AllowedEventBusArns", BUS),
        ("AllowedTableArns", TABLE),
        (
            "DestinationKmsKeyArns",
            "arn:aws:kms:us-east-1:222222222222:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        ),
        ("InputObjectArns", "arn:aws:s3:::relay-inputs/*"),
        ("IdempotencyTable", "create"),
        ("CompletionEventBus", "relay-done"),
        (
            "AdditionalTargetRoleArns",
            "arn:aws:iam::333333333333:role/BedrockRelayTarget",
        ),
    ]);
    let statements = stack.statements();
    assert!(statements.len() >= 12, "{statements:?}");
    for statement in &statements {
        let resources = strings(&statement["Resource"]);
        assert!(!resources.is_empty());
        if statement["Sid"] == "Tracing" {
            continue;
        }
        for resource in resources {
            assert!(
                resource != "*" && !resource.ends_with(":*") && !resource.contains("::*"),
                "{}: {resource}",
                statement["Sid"]
            );
        }
        for action in strings(&statement["Action"]) {
            assert!(!action.contains('*'), "{action}");
        }
    }
}

/// The KMS statement exists only with keys, covers exactly them, and only
/// through SQS and SNS in this region.
#[test]
fn kms_keys_are_usable_only_through_sqs_and_sns() {
    assert!(Stack::relay(&[("DestinationArn", QUEUE)])
        .statement("EncryptForDestinations")
        .is_none());
    let key = "arn:aws:kms:us-east-1:222222222222:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let stack = Stack::relay(&[("DestinationArn", QUEUE), ("DestinationKmsKeyArns", key)]);
    assert_eq!(
        grants(&stack, "kms"),
        pairs(&[("kms:Decrypt", key), ("kms:GenerateDataKey", key)])
    );
    assert_eq!(
        stack.statement("EncryptForDestinations").expect("kms")["Condition"],
        json!({"StringEquals": {"kms:ViaService": [
            "sqs.us-east-1.amazonaws.com",
            "sns.us-east-1.amazonaws.com"
        ]}})
    );
}

/// `documents` and `items_from` objects are readable exactly as listed, and
/// nothing is readable without the parameter: the one list is both the IAM
/// grant and the function's own allowlist (`RELAY_ALLOWED_SOURCES`).
#[test]
fn input_objects_are_readable_only_as_named() {
    let none = Stack::relay(&[]);
    assert!(none.statement("ReadInputs").is_none());
    assert_eq!(none.env("RELAY_ALLOWED_SOURCES"), "");
    let stack = Stack::relay(&[(
        "InputObjectArns",
        "arn:aws:s3:::relay-inputs/batches/*,arn:aws:s3:::uploads/incoming/*",
    )]);
    let read = stack.statement("ReadInputs").expect("ReadInputs");
    assert_eq!(read["Action"], "s3:GetObject");
    assert_eq!(
        read["Resource"],
        json!([
            "arn:aws:s3:::relay-inputs/batches/*",
            "arn:aws:s3:::uploads/incoming/*"
        ])
    );
    assert_eq!(
        stack.env("RELAY_ALLOWED_SOURCES"),
        "arn:aws:s3:::relay-inputs/batches/*,arn:aws:s3:::uploads/incoming/*"
    );
}

/// The ledger the stack creates is keyed `job_id` (S) + `item` (N), on demand,
/// with TTL on `expires_at`; the function is told its name and may use exactly
/// it. An existing table is used by ARN; none means no statement.
#[test]
fn idempotency_table_has_job_id_and_item_keys_and_its_own_grant() {
    let stack = Stack::relay(&[("IdempotencyTable", "create")]);
    let table = &stack.template["Resources"]["IdempotencyLedger"];
    assert_eq!(table["Type"].as_str(), Some("AWS::DynamoDB::Table"));
    assert_eq!(table["Condition"].as_str(), Some("CreateIdempotencyTable"));
    let props = stack.eval(&table["Properties"]);
    assert_eq!(props["BillingMode"], "PAY_PER_REQUEST");
    assert_eq!(
        props["KeySchema"],
        json!([
            {"AttributeName": "job_id", "KeyType": "HASH"},
            {"AttributeName": "item", "KeyType": "RANGE"}
        ])
    );
    let mut attributes = props["AttributeDefinitions"]
        .as_array()
        .expect("defs")
        .clone();
    attributes.sort_by_key(|a| a["AttributeName"].to_string());
    assert_eq!(
        attributes,
        [
            json!({"AttributeName": "item", "AttributeType": "N"}),
            json!({"AttributeName": "job_id", "AttributeType": "S"})
        ]
    );
    assert_eq!(
        props["TimeToLiveSpecification"],
        json!({"AttributeName": "expires_at", "Enabled": true})
    );
    assert_eq!(
        stack.env("RELAY_IDEMPOTENCY_TABLE"),
        "ref:IdempotencyLedger"
    );
    let created: Vec<(&str, &str)> = DYNAMODB_ACTIONS
        .iter()
        .map(|a| (*a, "getatt:IdempotencyLedger.Arn"))
        .collect();
    assert_eq!(grants(&stack, "dynamodb"), pairs(&created));

    let existing = "arn:aws:dynamodb:us-east-1:222222222222:table/relay-ledger";
    let stack = Stack::relay(&[("IdempotencyTable", existing)]);
    assert!(!stack.condition("CreateIdempotencyTable"));
    assert_eq!(stack.env("RELAY_IDEMPOTENCY_TABLE"), existing);
    let used: Vec<(&str, &str)> = DYNAMODB_ACTIONS.iter().map(|a| (*a, existing)).collect();
    assert_eq!(grants(&stack, "dynamodb"), pairs(&used));

    let stack = Stack::relay(&[]);
    assert!(stack.statement("IdempotencyLedger").is_none());
    assert!(!stack.condition("CreateIdempotencyTable"));
}

/// A stated quota (RequestsPerMinute, or `requests_per_minute` in an
/// AdditionalTargets entry) creates the rate table, keyed by `pk` with a
/// TTL, and lets the role do one thing to it: UpdateItem. With none stated
/// there is no table and no grant.
#[test]
fn a_stated_quota_gets_a_rate_table_the_role_may_only_update() {
    let stated = Stack::relay(&[("RequestsPerMinute", "6000")]);
    assert!(stated.condition("HasStatedQuota"));
    assert_eq!(stated.env("RELAY_REQUESTS_PER_MINUTE"), "6000");
    assert_eq!(stated.env("RELAY_RATE_TABLE"), "getatt:RateTable.Arn");
    let table = &stated.template["Resources"]["RateTable"];
    assert_eq!(table["Condition"].as_str(), Some("HasStatedQuota"));
    let props = stated.eval(&table["Properties"]);
    assert_eq!(props["BillingMode"], "PAY_PER_REQUEST");
    assert_eq!(
        props["KeySchema"],
        json!([{"AttributeName": "pk", "KeyType": "HASH"}])
    );
    assert_eq!(
        props["TimeToLiveSpecification"],
        json!({"AttributeName": "expires_at", "Enabled": true})
    );
    assert_eq!(
        grants(&stated, "dynamodb"),
        pairs(&[("dynamodb:UpdateItem", "getatt:RateTable.Arn")])
    );

    let per_target = Stack::relay(&[(
        "AdditionalTargets",
        r#"{"b": {"role_arn": "arn:aws:iam::333333333333:role/RoleA", "requests_per_minute": 500}}"#,
    )]);
    assert!(per_target.condition("HasStatedQuota"));
    assert_eq!(per_target.env("RELAY_RATE_TABLE"), "getatt:RateTable.Arn");

    let unstated = Stack::relay(&[(
        "AdditionalTargets",
        r#"{"b": {"role_arn": "arn:aws:iam::333333333333:role/RoleA"}}"#,
    )]);
    assert!(!unstated.condition("HasStatedQuota"));
    assert_eq!(unstated.env("RELAY_RATE_TABLE"), "");
    assert!(unstated.statement("ShareSendSchedule").is_none());
    assert!(grants(&unstated, "dynamodb").is_empty());
}

/// The batch limits and the schedule switch reach the function.
#[test]
fn limits_and_schedule_are_wired() {
    let stack = Stack::relay(&[("MaxConcurrency", "8"), ("MaxItems", "500")]);
    assert_eq!(stack.env("RELAY_MAX_CONCURRENCY"), "8");
    assert_eq!(stack.env("RELAY_MAX_ITEMS"), "500");
    let defaults = Stack::relay(&[]);
    assert_eq!(defaults.env("RELAY_MAX_CONCURRENCY"), "4");
    assert_eq!(defaults.env("RELAY_MAX_ITEMS"), "100000");

    let nightly = |stack: &Stack| {
        stack.eval(
            &stack.template["Resources"]["RelayFunction"]["Properties"]["Events"]["Nightly"]
                ["Properties"],
        )
    };
    let with_job = Stack::relay(&[("DefaultJob", r#"{"prompt": "digest"}"#)]);
    assert_eq!(nightly(&with_job)["State"], "ENABLED");
    let no_schedule = Stack::relay(&[
        ("DefaultJob", r#"{"prompt": "digest"}"#),
        ("ScheduleExpression", ""),
    ]);
    let props = nightly(&no_schedule);
    assert_eq!(props["State"], "DISABLED");
    assert_ne!(
        props["Schedule"], "",
        "a disabled rule still needs an expression"
    );
    assert_eq!(nightly(&Stack::relay(&[]))["State"], "DISABLED");
}

// --- fan-out over the work queue ------------------------------------------

/// The relay's work queue and its dead-letter queue, as deployed.
fn queue(stack: &Stack, name: &str) -> Value {
    let queue = &stack.template["Resources"][name];
    assert_eq!(queue["Type"].as_str(), Some("AWS::SQS::Queue"), "{name}");
    stack.eval(&queue["Properties"])
}

/// The `WorkChunks` event, as deployed.
fn chunk_event(stack: &Stack) -> Value {
    stack.eval(&stack.template["Resources"]["RelayFunction"]["Properties"]["Events"]["WorkChunks"])
}

/// Whether `statement` grants `action` on `resource` (its resources may be `*` globs).
fn covers(statement: &Value, action: &str, resource: &str) -> bool {
    strings(&statement["Action"]).iter().any(|a| a == action)
        && strings(&statement["Resource"])
            .iter()
            .any(|pattern| glob(pattern, resource))
}

/// A chunk still running is never received again: the work queue's visibility
/// timeout is at least six times the function timeout (Lambda's guidance for an
/// SQS event source), within SQS's 12-hour cap. A chunk that fails five receives
/// moves to the dead-letter queue, which keeps it longer than the work queue
/// would (a moved message keeps its enqueue time); both are encrypted.
#[test]
fn work_queue_outlasts_the_function_and_dead_letters_after_five_receives() {
    let stack = Stack::relay(&[]);
    let function = &stack.template["Resources"]["RelayFunction"]["Properties"];
    let timeout = match function["Timeout"].as_u64() {
        Some(own) => own,
        None => stack.template["Globals"]["Function"]["Timeout"]
            .as_u64()
            .expect("a literal function timeout"),
    };
    let work = queue(&stack, "WorkQueue");
    let visibility = work["VisibilityTimeout"]
        .as_u64()
        .expect("a literal visibility timeout");
    assert!(
        visibility >= 6 * timeout,
        "VisibilityTimeout {visibility} < 6 x function timeout {timeout}"
    );
    assert!(visibility <= 43_200, "SQS caps visibility at 12 hours");
    assert_eq!(
        work["RedrivePolicy"],
        json!({"deadLetterTargetArn": "getatt:WorkDeadLetterQueue.Arn", "maxReceiveCount": 5})
    );
    assert_eq!(
        stack.env("RELAY_WORK_MAX_RECEIVES"),
        "5",
        "the function knows the receive SQS dead-letters after"
    );

    let dead = queue(&stack, "WorkDeadLetterQueue");
    let kept = |q: &Value| q["MessageRetentionPeriod"].as_u64().expect("retention");
    assert_eq!(kept(&work), 4 * 86_400);
    assert_eq!(kept(&dead), 14 * 86_400);
    assert!(kept(&dead) > kept(&work));
    for q in [&work, &dead] {
        assert_eq!(q["SqsManagedSseEnabled"], true);
        assert!(q.get("FifoQueue").is_none(), "a standard queue");
    }
    assert!(dead.get("RedrivePolicy").is_none());
}

/// The function consumes the work queue with partial batch responses, taking
/// `ChunkBatchSize` messages at a time and running at most
/// `MaxChunkConcurrency` invocations; the parameters stay within what the
/// mapping accepts (a standard queue without a batching window: 1 to 10; a
/// maximum concurrency of 2 to 1000).
#[test]
fn chunk_events_report_item_failures_within_the_configured_batch_and_concurrency() {
    let stack = Stack::relay(&[("ChunkBatchSize", "4"), ("MaxChunkConcurrency", "20")]);
    let event = chunk_event(&stack);
    assert_eq!(event["Type"], "SQS");
    let props = &event["Properties"];
    assert_eq!(props["Queue"], "getatt:WorkQueue.Arn");
    assert_eq!(props["BatchSize"], "4");
    assert_eq!(
        props["FunctionResponseTypes"],
        json!(["ReportBatchItemFailures"])
    );
    assert_eq!(props["ScalingConfig"], json!({"MaximumConcurrency": "20"}));
    assert!(props.get("MaximumBatchingWindowInSeconds").is_none());

    let defaults = chunk_event(&Stack::relay(&[]));
    assert_eq!(defaults["Properties"]["BatchSize"], "1");
    assert_eq!(
        defaults["Properties"]["ScalingConfig"]["MaximumConcurrency"],
        "8"
    );

    let parameters = &stack.template["Parameters"];
    for (name, min, max) in [
        ("ChunkBatchSize", 1, 10),
        ("MaxChunkConcurrency", 2, 1000),
        ("ChunkItems", 1, 10_000),
        ("MaxItems", 1, 1_000_000),
    ] {
        let spec = &parameters[name];
        assert_eq!(spec["Type"].as_str(), Some("Number"), "{name}");
        assert_eq!(spec["MinValue"].as_u64(), Some(min), "{name}");
        assert_eq!(spec["MaxValue"].as_u64(), Some(max), "{name}");
    }
}

/// Chunks in the work dead-letter queue raise an alarm that notifies the
/// alarm topic exactly as the failure queue's does, and no one without one.
#[test]
fn dead_lettered_chunks_are_alarmed_like_failed_events() {
    let topic = "arn:aws:sns:us-east-1:222222222222:relay-alarms";
    for stack in [Stack::relay(&[]), Stack::relay(&[("AlarmTopicArn", topic)])] {
        let alarm = |name: &str| stack.eval(&stack.template["Resources"][name]["Properties"]);
        let dead = alarm("WorkDeadLetterAlarm");
        assert_eq!(
            dead["Dimensions"],
            json!([{"Name": "QueueName", "Value": "getatt:WorkDeadLetterQueue.QueueName"}])
        );
        assert_eq!(dead["MetricName"], "ApproximateNumberOfMessagesVisible");
        assert_eq!(dead["ComparisonOperator"], "GreaterThanOrEqualToThreshold");
        assert_eq!(dead["Threshold"], 1, "one message is enough");
        let failed = alarm("FailedEventsAlarm");
        for actions in ["AlarmActions", "OKActions"] {
            assert_eq!(dead.get(actions), failed.get(actions), "{actions}");
        }
    }
    let notified = Stack::relay(&[("AlarmTopicArn", topic)]);
    assert_eq!(
        notified.eval(
            &notified.template["Resources"]["WorkDeadLetterAlarm"]["Properties"]["AlarmActions"]
        ),
        json!([topic])
    );
}

/// The role may send messages to the work queue and none of the stack's other
/// queues but the failure queue; only the work queue may be consumed (the
/// event source mapping's calls), and its dead-letter queue is never touched.
#[test]
fn only_the_work_queue_takes_and_gives_chunk_messages() {
    let stack = Stack::relay(&[]);
    let send = stack.statement("SendToWorkQueue").expect("SendToWorkQueue");
    assert_eq!(send["Action"], "sqs:SendMessage");
    assert_eq!(send["Resource"], "getatt:WorkQueue.Arn");
    let consume = stack
        .statement("ConsumeWorkQueue")
        .expect("ConsumeWorkQueue");
    assert_eq!(consume["Resource"], "getatt:WorkQueue.Arn");
    let mut actions = strings(&consume["Action"]);
    actions.sort();
    assert_eq!(
        actions,
        [
            "sqs:ChangeMessageVisibility",
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
            "sqs:ReceiveMessage"
        ]
    );
    for (action, resource) in grants(&stack, "sqs") {
        assert!(
            resource == "getatt:WorkQueue.Arn"
                || (action == "sqs:SendMessage" && resource == "getatt:FailedEventsQueue.Arn"),
            "{action} on {resource}"
        );
    }
}

/// The function is told its work queue (by URL), its work store (under the
/// destination prefix, beside the spill), the chunk size and the completion
/// bus (empty: none); the stack outputs both queues' URLs.
#[test]
fn fan_out_settings_reach_the_function() {
    let defaults = Stack::relay(&[]);
    assert_eq!(defaults.env("RELAY_WORK_QUEUE"), "ref:WorkQueue");
    assert_eq!(
        defaults.env("RELAY_WORK_STORE"),
        "s3://relay-results/results/_batches/"
    );
    assert_eq!(defaults.env("RELAY_CHUNK_ITEMS"), "500");
    assert_eq!(defaults.env("RELAY_EVENT_BUS"), "");
    let chunk = |stack: &Stack| {
        stack
            .env("RELAY_CHUNK_ITEMS")
            .parse::<u64>()
            .expect("a number")
    };
    let max = |stack: &Stack| {
        stack
            .env("RELAY_MAX_ITEMS")
            .parse::<u64>()
            .expect("a number")
    };
    assert!(chunk(&defaults) < max(&defaults), "the defaults fan out");

    let set = Stack::relay(&[("ChunkItems", "250"), ("CompletionEventBus", "relay-done")]);
    assert_eq!(set.env("RELAY_CHUNK_ITEMS"), "250");
    assert_eq!(
        set.env("RELAY_EVENT_BUS"),
        "arn:aws:events:us-east-1:222222222222:event-bus/relay-done",
        "the function is given the bus's ARN"
    );

    for (output, value) in [
        ("WorkQueueUrl", "ref:WorkQueue"),
        ("WorkDeadLetterQueueUrl", "ref:WorkDeadLetterQueue"),
    ] {
        assert_eq!(
            defaults.eval(&defaults.template["Outputs"][output]["Value"]),
            value,
            "{output}"
        );
    }
}

/// Whatever the default destination, the role may write, read back, abort a
/// multipart upload of and list the work store's objects (plans, chunk parts,
/// summaries), and abort a multipart upload of an S3 record.
#[test]
fn work_store_is_usable_for_every_destination_kind() {
    let object = "arn:aws:s3:::relay-results/results/_batches/batch-1/part-0003.jsonl";
    for destination in ["", QUEUE, TOPIC, BUS, TABLE] {
        let stack = Stack::relay(&[("DestinationArn", destination)]);
        let statements = stack.statements();
        for action in ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"] {
            assert!(
                statements.iter().any(|s| covers(s, action, object)),
                "{destination:?}: {action} on {object}"
            );
        }
        let listable = statements.iter().any(|s| {
            covers(s, "s3:ListBucket", "arn:aws:s3:::relay-results")
                && s["Condition"]["StringLike"]["s3:prefix"]
                    .as_str()
                    .is_some_and(|prefix| glob(prefix, "results/_batches/batch-1/"))
        });
        assert!(listable, "{destination:?}: list the work store");
        // Listing reaches no further than the records' prefix.
        for statement in statements.iter().filter(|s| s["Action"] == "s3:ListBucket") {
            let prefix = statement["Condition"]["StringLike"]["s3:prefix"]
                .as_str()
                .expect("a prefix condition");
            assert!(prefix.starts_with("results/"), "{prefix}");
        }
    }
    let s3 = Stack::relay(&[]);
    assert!(s3.statements().iter().any(|s| covers(
        s,
        "s3:AbortMultipartUpload",
        "arn:aws:s3:::relay-results/results/job-1.jsonl"
    )));
}

/// `events:PutEvents` for completion events exists only with
/// `CompletionEventBus`, on exactly that bus: a name is this account's and
/// region's bus, an ARN is used as given. The parameter accepts only those.
#[test]
fn completion_events_go_only_to_the_named_bus() {
    let none = Stack::relay(&[]);
    assert!(!none.condition("HasCompletionBus"));
    assert!(none.statement("PutCompletionEvents").is_none());
    assert!(grants(&none, "events").is_empty());

    let other_account = "arn:aws:events:us-west-2:333333333333:event-bus/relay-done";
    for (bus, arn) in [
        (
            "relay-done",
            "arn:aws:events:us-east-1:222222222222:event-bus/relay-done",
        ),
        (
            "default",
            "arn:aws:events:us-east-1:222222222222:event-bus/default",
        ),
        (other_account, other_account),
    ] {
        let stack = Stack::relay(&[("CompletionEventBus", bus)]);
        assert_eq!(stack.env("RELAY_EVENT_BUS"), arn);
        let put = stack
            .statement("PutCompletionEvents")
            .expect("PutCompletionEvents");
        assert_eq!(put["Action"], "events:PutEvents");
        assert_eq!(put["Resource"], arn, "{bus}");
        assert_eq!(
            grants(&stack, "events"),
            pairs(&[("events:PutEvents", arn)])
        );
    }

    // CloudFormation matches AllowedPattern against the whole value.
    let pattern = none.template["Parameters"]["CompletionEventBus"]["AllowedPattern"]
        .as_str()
        .expect("a pattern");
    let validator = jsonschema::validator_for(&json!({"pattern": format!("^(?:{pattern})$")}))
        .expect("the pattern compiles");
    for ok in [
        "",
        "relay-done",
        "aws.partner/example.com/1/bus",
        other_account,
    ] {
        assert!(validator.is_valid(&json!(ok)), "{ok:?} is accepted");
    }
    for bad in [
        "relay done",
        "*",
        "arn:aws:sqs:us-east-1:222222222222:relay-done",
        "arn:aws:events:us-east-1:222222222222:rule/relay-done",
    ] {
        assert!(!validator.is_valid(&json!(bad)), "{bad:?} is refused");
    }
}

// --- examples/s3-upload-summary -------------------------------------------

const EXAMPLE: &str = "examples/s3-upload-summary/template.yaml";

fn example(overrides: &[(&str, &str)]) -> Stack {
    let mut all = vec![
        ("UploadsBucketName", "example-uploads"),
        ("TargetRoleArn", ROLE_A),
        ("DestinationBucket", "relay-results"),
    ];
    all.extend_from_slice(overrides);
    let mut stack = Stack::deploy(EXAMPLE, &all);
    // An AWS::S3::Bucket's Ref is its name.
    let bucket = stack.params["UploadsBucketName"]
        .as_str()
        .expect("name")
        .to_owned();
    stack.resources.insert("UploadsBucket".into(), bucket);
    stack
}

fn s3_object_created() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("events/s3-object-created.json");
    serde_json::from_slice(&std::fs::read(path).expect("event")).expect("json")
}

fn upload_rule_pattern(stack: &Stack) -> Value {
    let rule = &stack.template["Resources"]["UploadCreatedRule"];
    assert_eq!(rule["Type"].as_str(), Some("AWS::Events::Rule"));
    stack.eval(&rule["Properties"]["EventPattern"])
}

/// The example's rule, evaluated with the bucket the sample event names, matches
/// `events/s3-object-created.json`, and stops matching when the bucket, the
/// event type, the key prefix or the suffix filter differ.
#[test]
fn example_rule_matches_the_s3_object_created_event() {
    let event = s3_object_created();
    let pattern = upload_rule_pattern(&example(&[]));
    assert!(matches(&pattern, &event), "{pattern} vs {event}");

    let mut other_bucket = event.clone();
    other_bucket["detail"]["bucket"]["name"] = json!("someone-elses-bucket");
    assert!(!matches(&pattern, &other_bucket));
    let mut deleted = event.clone();
    deleted["detail-type"] = json!("Object Deleted");
    assert!(!matches(&pattern, &deleted));
    let mut outside = event.clone();
    outside["detail"]["object"]["key"] = json!("archive/contract-0042.txt");
    assert!(!matches(&pattern, &outside));
    let mut from_elsewhere = event.clone();
    from_elsewhere["source"] = json!("com.example.uploads");
    assert!(!matches(&pattern, &from_elsewhere));

    let pdf_only = upload_rule_pattern(&example(&[("KeySuffix", ".pdf")]));
    assert!(!matches(&pdf_only, &event), "the sample is a .txt");
    let every_key = upload_rule_pattern(&example(&[("KeyPrefix", "")]));
    assert!(matches(&every_key, &outside));
}

/// The bucket sends its events to EventBridge, the rule invokes the nested
/// relay (which lets EventBridge do so), and the relay may read exactly the
/// objects the rule sends it.
#[test]
fn example_wires_bucket_rule_and_relay_together() {
    let stack = example(&[]);
    let resources = &stack.template["Resources"];
    assert_eq!(
        stack.eval(&resources["UploadsBucket"]["Properties"]["NotificationConfiguration"]),
        json!({"EventBridgeConfiguration": {"EventBridgeEnabled": true}})
    );
    let target = stack.eval(&resources["UploadCreatedRule"]["Properties"]["Targets"][0]);
    assert_eq!(target["Arn"], "getatt:Relay.Outputs.FunctionArn");
    assert_eq!(
        target["DeadLetterConfig"]["Arn"],
        "getatt:Relay.Outputs.FailedEventsQueueArn"
    );
    let permission = stack.eval(&resources["UploadCreatedPermission"]["Properties"]);
    assert_eq!(
        permission["FunctionName"],
        "getatt:Relay.Outputs.FunctionArn"
    );
    assert_eq!(permission["Principal"], "events.amazonaws.com");
    assert_eq!(permission["SourceArn"], "getatt:UploadCreatedRule.Arn");

    let relay = &resources["Relay"];
    assert_eq!(relay["Type"].as_str(), Some("AWS::Serverless::Application"));
    assert_eq!(
        relay["Properties"]["Location"].as_str(),
        Some("../../template.yaml")
    );
    let params = stack.eval(&relay["Properties"]["Parameters"]);
    let event = s3_object_created();
    let object = format!(
        "arn:aws:s3:::{}/{}",
        event["detail"]["bucket"]["name"].as_str().unwrap(),
        event["detail"]["object"]["key"].as_str().unwrap()
    );
    let inputs = params["InputObjectArns"].as_str().expect("one ARN");
    assert!(glob(inputs, &object), "{inputs} covers {object}");
    assert!(!glob(inputs, "arn:aws:s3:::example-uploads/archive/x.txt"));
    assert_eq!(
        params["ScheduleExpression"], "",
        "no nightly run of the summary job"
    );

    // Every output the example reads exists in the relay template.
    let relay_template = Stack::relay(&[]);
    for output in ["FunctionArn", "FailedEventsQueueArn", "ExecutionRoleArn"] {
        assert!(
            !relay_template.template["Outputs"][output].is_null(),
            "template.yaml has no output {output}"
        );
    }
}

/// The example passes the relay only parameters it declares, all of them strings,
/// including every required one; the nested relay, deployed with them, reads the
/// default job, and that job is a valid document job.
#[test]
fn example_passes_the_relay_valid_parameters_and_default_job() {
    let stack = example(&[]);
    let params = stack.eval(&stack.template["Resources"]["Relay"]["Properties"]["Parameters"]);
    let params = params.as_object().expect("parameters");
    let overrides: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                v.as_str()
                    .unwrap_or_else(|| panic!("{k}: nested stack parameters are strings")),
            )
        })
        .collect();
    // Panics on an undeclared or a missing required parameter.
    let relay = Stack::deploy("template.yaml", &overrides);
    assert_eq!(
        relay.env("RELAY_DESTINATION"),
        "s3://relay-results/summaries/"
    );
    let job = relay.env("RELAY_DEFAULT_JOB");
    let parsed: Value = serde_json::from_str(&job).expect("DefaultJob is JSON");
    assert_eq!(
        parsed["documents"],
        json!(["s3://{{ detail.bucket.name }}/{{ detail.object.key }}"])
    );
    assert!(parsed["id"]
        .as_str()
        .is_some_and(|id| id.contains("detail.object.etag")));
    bedrock_relay::Job::from_json(&job).expect("a valid job");
}

/// Delivery settings: every event source but the work queue retries and
/// dead-letters to the failure queue, Lambda's async retries end there too, and
/// alarms watch that queue, the work dead-letter queue, the function's errors
/// and dropped events.
#[test]
fn failed_events_are_kept_and_alarmed() {
    let template = template();
    let function = &template["Resources"]["RelayFunction"]["Properties"];
    let invoke = &function["EventInvokeConfig"];
    assert!(
        format!("{:?}", invoke["MaximumRetryAttempts"]).contains("MaximumRetryAttempts"),
        "Lambda's retries come from the MaximumRetryAttempts parameter"
    );
    assert_eq!(invoke["MaximumEventAgeInSeconds"].as_u64(), Some(21600));
    assert_eq!(
        invoke["DestinationConfig"]["OnFailure"]["Type"].as_str(),
        Some("SQS")
    );
    let events = function["Events"].as_mapping().expect("events");
    assert!(!events.is_empty());
    for (name, event) in events {
        if event["Type"].as_str() == Some("SQS") {
            // Retried by the queue and dead-lettered by its redrive policy
            // (work_queue_outlasts_the_function_and_dead_letters_after_five_receives).
            continue;
        }
        let props = &event["Properties"];
        assert!(
            props["RetryPolicy"]["MaximumRetryAttempts"]
                .as_u64()
                .is_some(),
            "{name:?} has a retry policy"
        );
        assert!(
            props["RetryPolicy"]["MaximumEventAgeInSeconds"]
                .as_u64()
                .is_some(),
            "{name:?} has a maximum event age"
        );
        let dlq = format!("{:?}", props["DeadLetterConfig"]["Arn"]);
        assert!(
            dlq.contains("FailedEventsQueue"),
            "{name:?} dead-letters to the failure queue: {dlq}"
        );
    }
    let resources = &template["Resources"];
    for (alarm, namespace, metric, watched) in [
        (
            "FailedEventsAlarm",
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            "FailedEventsQueue",
        ),
        (
            "WorkDeadLetterAlarm",
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            "WorkDeadLetterQueue",
        ),
        (
            "FunctionErrorsAlarm",
            "AWS/Lambda",
            "Errors",
            "RelayFunction",
        ),
        (
            "DroppedEventsAlarm",
            "AWS/Lambda",
            "AsyncEventsDropped",
            "RelayFunction",
        ),
    ] {
        let props = &resources[alarm]["Properties"];
        assert_eq!(
            resources[alarm]["Type"].as_str(),
            Some("AWS::CloudWatch::Alarm"),
            "{alarm}"
        );
        assert_eq!(props["Namespace"].as_str(), Some(namespace), "{alarm}");
        assert_eq!(props["MetricName"].as_str(), Some(metric), "{alarm}");
        assert_eq!(props["Threshold"].as_u64(), Some(1), "{alarm}");
        let dimension = format!("{:?}", props["Dimensions"][0]["Value"]);
        assert!(
            dimension.contains(watched),
            "{alarm} watches {watched}: {dimension}"
        );
    }
}

/// The job rule takes any `source` unless `JobSources` narrows it.
#[test]
fn job_rule_narrows_the_source_only_when_asked() {
    let pattern = |stack: &Stack| {
        stack.eval(
            &stack.template["Resources"]["RelayFunction"]["Properties"]["Events"]["JobEvents"]
                ["Properties"]["Pattern"],
        )
    };
    let any = Stack::relay(&[]);
    assert!(pattern(&any).get("source").is_none(), "any source");
    let narrowed = Stack::relay(&[("JobSources", "com.example.reports,com.example.billing")]);
    assert_eq!(
        pattern(&narrowed)["source"],
        json!(["com.example.reports", "com.example.billing"])
    );
    assert_eq!(
        pattern(&narrowed)["detail-type"],
        json!(["Bedrock Relay Job"])
    );
}

/// RoleA's trust names the one execution role, the relay's SourceIdentity
/// and (unless explicitly waived) an ExternalId; without one the stack's
/// rule refuses to deploy.
#[test]
fn role_a_trust_requires_source_identity_and_an_external_id() {
    let deploy = |extra: &[(&str, &str)]| {
        let mut all = vec![
            (
                "TrustedExecutionRoleArn",
                "arn:aws:iam::222222222222:role/bedrock-relay-exec",
            ),
            ("FoundationModelIds", "amazon.nova-lite-v1:0"),
        ];
        all.extend_from_slice(extra);
        Stack::deploy("deploy/account-a.yaml", &all)
    };
    let trust = |stack: &Stack| {
        stack.eval(
            &stack.template["Resources"]["TargetRole"]["Properties"]["AssumeRolePolicyDocument"]
                ["Statement"][0]["Condition"],
        )
    };
    let required = |stack: &Stack| {
        let rule = &stack.template["Rules"]["ExternalIdRequired"];
        stack.eval(&rule["RuleCondition"]) != json!(true)
            || stack.eval(&rule["Assertions"][0]["Assert"]) == json!(true)
    };
    let with_id = deploy(&[("ExternalId", "relay-7f3a")]);
    assert!(required(&with_id), "an ExternalId satisfies the rule");
    let condition = trust(&with_id);
    assert_eq!(condition["StringEquals"]["sts:ExternalId"], "relay-7f3a");
    assert_eq!(
        condition["StringEquals"]["sts:SourceIdentity"],
        "bedrock-relay"
    );
    assert_eq!(
        condition["ArnEquals"]["aws:PrincipalArn"],
        "arn:aws:iam::222222222222:role/bedrock-relay-exec"
    );

    assert!(!required(&deploy(&[])), "no ExternalId: the stack refuses");
    let waived = deploy(&[("AllowNoExternalId", "true")]);
    assert!(required(&waived));
    let condition = trust(&waived);
    assert_eq!(
        condition["StringEquals"]["sts:SourceIdentity"],
        "bedrock-relay"
    );
    assert!(condition["StringEquals"].get("sts:ExternalId").is_none());
}

fn function_event(stack: &Stack, name: &str) -> Value {
    stack.eval(
        &stack.template["Resources"]["RelayFunction"]["Properties"]["Events"][name]["Properties"],
    )
}

/// Without a staging location nothing of batch jobs is on: the function gets
/// no staging or role, the check schedule and the event rule are disabled, and
/// there is no batch-job bus.
#[test]
fn batch_jobs_are_off_until_a_staging_location_is_given() {
    let stack = Stack::relay(&[]);
    assert!(!stack.condition("HasBatchJobs"));
    assert_eq!(stack.env("RELAY_BATCH_STAGING"), "");
    assert_eq!(stack.env("RELAY_BATCH_ROLE_ARN"), "");
    assert_eq!(stack.env("RELAY_DEFAULT_MODE"), "auto");
    assert_eq!(function_event(&stack, "BatchJobCheck")["State"], "DISABLED");
    assert_eq!(
        function_event(&stack, "BatchJobEvents")["State"],
        "DISABLED"
    );
}

/// With batch jobs on, the function gets the staging location, the batch
/// role and the limits; the check schedule sends what the function takes as a
/// check (`{"relay": "check-batch-jobs"}`) every five minutes; Bedrock's state
/// changes arrive on the relay's own bus, which only the model account (the
/// account of TargetRoleArn) may put events on.
#[test]
fn batch_job_events_come_only_from_the_model_accounts_forwarding() {
    let stack = Stack::relay(&[
        ("BatchStaging", "s3://bedrock-relay-staging-111/relay/"),
        (
            "BatchRoleArn",
            "arn:aws:iam::111111111111:role/BedrockBatchService",
        ),
        ("BatchJobMaxRecords", "20000"),
    ]);
    assert!(stack.condition("HasBatchJobs"));
    assert_eq!(
        stack.env("RELAY_BATCH_STAGING"),
        "s3://bedrock-relay-staging-111/relay/"
    );
    assert_eq!(
        stack.env("RELAY_BATCH_ROLE_ARN"),
        "arn:aws:iam::111111111111:role/BedrockBatchService"
    );
    assert_eq!(stack.env("RELAY_BATCH_JOB_MAX_RECORDS"), "20000");
    assert_eq!(stack.env("RELAY_BATCH_JOB_MIN_RECORDS"), "100");

    let check = function_event(&stack, "BatchJobCheck");
    assert_eq!(check["State"], "ENABLED");
    assert_eq!(check["Schedule"], "rate(5 minutes)");
    let input: Value = serde_json::from_str(check["Input"].as_str().expect("input")).expect("JSON");
    assert_eq!(input, json!({"relay": "check-batch-jobs"}));

    let events = function_event(&stack, "BatchJobEvents");
    assert_eq!(events["State"], "ENABLED");
    assert_eq!(events["EventBusName"], "ref:BatchJobEventBus");
    assert_eq!(events["Pattern"]["source"], json!(["aws.bedrock"]));
    assert_eq!(
        events["Pattern"]["detail-type"],
        json!(["Batch Inference Job State Change"])
    );
    let policy = stack.eval(&stack.template["Resources"]["BatchJobEventBusPolicy"]["Properties"]);
    assert_eq!(
        policy["Statement"]["Principal"]["AWS"],
        "arn:aws:iam::111111111111:root"
    );
    assert_eq!(policy["Statement"]["Action"], "events:PutEvents");
    assert_eq!(
        policy["Statement"]["Resource"],
        "getatt:BatchJobEventBus.Arn"
    );
}

fn account_a(extra: &[(&str, &str)]) -> Stack {
    let mut all = vec![
        (
            "TrustedExecutionRoleArn",
            "arn:aws:iam::222222222222:role/bedrock-relay-exec",
        ),
        ("FoundationModelIds", "amazon.nova-lite-v1:0"),
        ("ExternalId", "relay-7f3a"),
    ];
    all.extend_from_slice(extra);
    Stack::deploy("deploy/account-a.yaml", &all)
}

/// With EnableBatchJobs, account A gets a batch service role only Bedrock may
/// assume, for jobs of this account; RoleA may pass exactly that role, to
/// Bedrock only, create and read jobs, stage records under input/ and read
/// Bedrock's output under output/; the staging bucket is private, encrypted,
/// TLS-only and expires what it holds. Without it, none of this exists.
#[test]
fn batch_jobs_in_account_a_are_least_privilege_and_off_by_default() {
    let off = account_a(&[]);
    assert!(!off.condition("BatchJobs"));
    for resource in [
        "StagingBucket",
        "BatchServiceRole",
        "TargetRoleBatchJobs",
        "BatchEventsForwarding",
    ] {
        assert_eq!(
            off.template["Resources"][resource]["Condition"]
                .as_str()
                .map(|c| off.condition(c)),
            Some(false),
            "{resource} exists only with batch jobs"
        );
    }

    let on = account_a(&[("EnableBatchJobs", "true")]);
    assert!(on.condition("BatchJobs"));
    assert!(
        !on.condition("ForwardsBatchEvents"),
        "no bus given: no forwarding"
    );
    let role = on.eval(&on.template["Resources"]["BatchServiceRole"]["Properties"]);
    let trust = &role["AssumeRolePolicyDocument"]["Statement"][0];
    assert_eq!(trust["Principal"]["Service"], "bedrock.amazonaws.com");
    assert_eq!(
        trust["Condition"]["StringEquals"]["aws:SourceAccount"],
        "222222222222"
    );
    assert_eq!(
        trust["Condition"]["ArnLike"]["aws:SourceArn"],
        "arn:aws:bedrock:*:222222222222:model-invocation-job/*"
    );
    let data = &role["Policies"][0]["PolicyDocument"]["Statement"];
    assert_eq!(
        data[0]["Resource"],
        "getatt:StagingBucket.Arn/relay/input/*"
    );
    assert_eq!(data[1]["Action"], "s3:PutObject");
    assert_eq!(
        data[1]["Resource"],
        "getatt:StagingBucket.Arn/relay/output/*"
    );

    let statements = on.eval(
        &on.template["Resources"]["TargetRoleBatchJobs"]["Properties"]["PolicyDocument"]
            ["Statement"],
    );
    let by_sid = |sid: &str| {
        statements
            .as_array()
            .expect("statements")
            .iter()
            .find(|s| s["Sid"] == sid)
            .cloned()
            .unwrap_or_else(|| panic!("no statement {sid}"))
    };
    let pass = by_sid("PassTheBatchServiceRole");
    assert_eq!(pass["Action"], "iam:PassRole");
    assert_eq!(pass["Resource"], "getatt:BatchServiceRole.Arn");
    assert_eq!(
        pass["Condition"]["StringEquals"]["iam:PassedToService"],
        "bedrock.amazonaws.com"
    );
    assert_eq!(
        by_sid("StageRecords")["Resource"],
        "getatt:StagingBucket.Arn/relay/input/*"
    );
    assert_eq!(
        by_sid("ReadOutput")["Resource"],
        "getatt:StagingBucket.Arn/relay/output/*"
    );
    assert!(strings(&by_sid("CreateAndReadBatchJobs")["Action"])
        .contains(&"bedrock:CreateModelInvocationJob".to_owned()));

    let bucket = on.eval(&on.template["Resources"]["StagingBucket"]["Properties"]);
    let block = &bucket["PublicAccessBlockConfiguration"];
    for flag in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(block[flag], true, "{flag}");
    }
    assert_eq!(
        bucket["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"],
        "14"
    );
    let tls = on.eval(
        &on.template["Resources"]["StagingBucketPolicy"]["Properties"]["PolicyDocument"]
            ["Statement"][0],
    );
    assert_eq!(tls["Effect"], "Deny");
    assert_eq!(tls["Condition"]["Bool"]["aws:SecureTransport"], "false");

    let bus = "arn:aws:events:us-east-1:222222222222:event-bus/bedrock-relay-batch-jobs";
    let forwarding = account_a(&[("EnableBatchJobs", "true"), ("RelayEventBusArn", bus)]);
    assert!(forwarding.condition("ForwardsBatchEvents"));
    let rule =
        forwarding.eval(&forwarding.template["Resources"]["BatchEventsForwarding"]["Properties"]);
    assert_eq!(rule["Targets"][0]["Arn"], bus);
    assert_eq!(
        rule["EventPattern"]["detail"]["batchJobName"],
        json!([{"prefix": "relay-"}]),
        "only the relay's jobs are forwarded"
    );
}

/// With EnableBatchJobs, RoleA may list the account's batch jobs, which is
/// how `bedrock-relay doctor` checks the batch-job API without creating a
/// job; listing has no resource-level permission, so that one statement
/// takes `*`, and it grants nothing else.
#[test]
fn role_a_may_list_batch_jobs_for_the_doctor() {
    let on = account_a(&[("EnableBatchJobs", "true")]);
    let statements = on.eval(
        &on.template["Resources"]["TargetRoleBatchJobs"]["Properties"]["PolicyDocument"]
            ["Statement"],
    );
    let list = statements
        .as_array()
        .expect("statements")
        .iter()
        .find(|s| s["Sid"] == "ListBatchJobsForTheDoctor")
        .cloned()
        .expect("the doctor's statement");
    assert_eq!(list["Effect"], "Allow");
    assert_eq!(
        strings(&list["Action"]),
        ["bedrock:ListModelInvocationJobs"]
    );
    assert_eq!(strings(&list["Resource"]), ["*"]);
    for statement in statements.as_array().expect("statements") {
        if statement["Sid"] != "ListBatchJobsForTheDoctor" {
            assert!(
                !strings(&statement["Resource"]).iter().any(|r| r == "*"),
                "{statement}"
            );
        }
    }
}

/// RoleA may apply exactly the guardrails account A names (none by default),
/// and the relay's model-feature settings reach the function.
#[test]
fn guardrails_are_applied_only_as_named_and_feature_settings_reach_the_function() {
    let statements = |stack: &Stack| {
        stack.eval(
            &stack.template["Resources"]["TargetRole"]["Properties"]["Policies"][0]
                ["PolicyDocument"]["Statement"],
        )
    };
    let applies = |stack: &Stack| {
        statements(stack)
            .as_array()
            .expect("statements")
            .iter()
            .filter(|s| {
                strings(&s["Action"])
                    .iter()
                    .any(|a| a == "bedrock:ApplyGuardrail")
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        applies(&account_a(&[])).is_empty(),
        "no guardrail named: none applied"
    );
    let named = account_a(&[("GuardrailIds", "gr1abc,gr2def")]);
    let granted = applies(&named);
    assert_eq!(granted.len(), 1);
    assert_eq!(
        strings(&granted[0]["Resource"]),
        vec![
            "arn:aws:bedrock:*:*:guardrail/gr1abc".to_owned(),
            "arn:aws:bedrock:*:*:guardrail/gr2def".to_owned()
        ]
    );

    let defaults = Stack::relay(&[]);
    assert_eq!(defaults.env("RELAY_DEFAULT_CACHE"), "none");
    assert_eq!(defaults.env("RELAY_GUARDRAILS"), "");
    let guardrails = r#"{"pii": {"identifier": "gr1abc", "version": "1"}}"#;
    let set = Stack::relay(&[
        ("Guardrails", guardrails),
        ("DefaultGuardrail", "pii"),
        ("DefaultCache", "5m"),
        ("DefaultServiceTier", "flex"),
    ]);
    assert_eq!(set.env("RELAY_GUARDRAILS"), guardrails);
    assert_eq!(set.env("RELAY_DEFAULT_GUARDRAIL"), "pii");
    assert_eq!(set.env("RELAY_DEFAULT_CACHE"), "5m");
    assert_eq!(set.env("RELAY_DEFAULT_SERVICE_TIER"), "flex");
}
