//! A test function for the SQS event-source-mapping emulator: it answers an
//! SQS event with a partial batch response, failing each record whose body
//! contains `fail`, and logs `handled <messageId> <body>` for every record.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        let records = event.payload["Records"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut failures = Vec::new();
        for record in &records {
            let id = record["messageId"].as_str().unwrap_or_default();
            let body = record["body"].as_str().unwrap_or_default();
            println!("handled {id} {body}");
            if body.contains("fail") {
                failures.push(json!({"itemIdentifier": id}));
            }
        }
        Ok::<Value, Error>(json!({"batchItemFailures": failures}))
    }))
    .await
}
