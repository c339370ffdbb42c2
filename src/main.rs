//! The Lambda entry point: start tracing, read the configuration, build the
//! clients once, serve events. Everything else lives in the library.

use bedrock_relay::{Config, Relay};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = Config::from_env().inspect_err(|err| {
        tracing::error!("invalid configuration, the function cannot start: {err}");
    })?;
    Relay::from_config(config).await.serve().await
}
