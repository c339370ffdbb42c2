//! The entry point: start tracing, then either serve Lambda events (started
//! by the Lambda service, no arguments) or run the operator command line
//! (`invoke`, `doctor`, `trail`, `schema`). Everything else lives in the library.

use bedrock_relay::{cli, init_logs, Config, Relay};

// One event at a time per execution environment: a single-threaded runtime saves
// the worker threads' wake-ups and memory (blocking work, like DNS, still has its pool).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !cli::under_lambda(&args) {
        // Logs go to stderr so the command's own output (and `--json`) stays clean.
        init_logs(std::io::stderr, Config::log_content_from_env());
        std::process::exit(cli::run(&args).await);
    }
    init_logs(std::io::stdout, Config::log_content_from_env());
    let config = Config::from_env().inspect_err(|err| {
        tracing::error!("invalid configuration, the function cannot start: {err}");
    })?;
    Relay::from_config(config).await.serve().await
}
