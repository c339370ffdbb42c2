//! A hello-world `lambda_runtime` function: the benchmark's floor for init
//! time and memory, against which bedrock-relay's cold start is compared.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<Value, Error>(json!({"hello": event.context.request_id}))
    }))
    .await
}
