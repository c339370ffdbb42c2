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

    let emitted = bedrock_relay::metrics::emf_document(
        bedrock_relay::metrics::DEFAULT_NAMESPACE,
        &bedrock_relay::metrics::JobMetrics {
            target: "t".into(),
            model: "m".into(),
            error_type: Some("E".into()),
            usage: Some(bedrock_relay::bedrock::Usage::default()),
            model_latency_ms: Some(1),
            attempts: 1,
            throttled: 0,
            is_item: false,
        },
        0,
    );
    let names: Vec<&str> = emitted["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .filter_map(|m| m["Name"].as_str())
        .collect();
    for expression in &expressions {
        assert!(
            expression.contains("{BedrockRelay,target,model"),
            "{expression}"
        );
        let name = expression
            .split("MetricName=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a metric name");
        assert!(
            names.contains(&name),
            "dashboard charts `{name}`, which the function does not emit"
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
