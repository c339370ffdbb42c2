//! The function's log lines: Lambda's advanced logging controls
//! (`AWS_LAMBDA_LOG_LEVEL`, `AWS_LAMBDA_LOG_FORMAT`, else `RUST_LOG`), as the
//! runtime's default subscriber reads them, with one rule on top: unless
//! `RELAY_LOG_CONTENT=true`, no other crate's TRACE lines are written. At
//! TRACE the runtime logs each raw event and the HTTP stack logs bodies, and
//! events carry prompts and documents; the level is an operator's debugging
//! switch, and must not turn into a content switch. The runtime also logs
//! every handler error it returns (its panic layer writes the `Diagnostic`,
//! whose message quotes the job); that line is dropped too: the relay logs
//! each failure itself, content-free, and the release build aborts on a
//! panic, so the layer never has a panic to report.

use lambda_runtime::tracing::subscriber::filter::{filter_fn, EnvFilter, LevelFilter};
use lambda_runtime::tracing::subscriber::fmt::MakeWriter;
use lambda_runtime::tracing::subscriber::layer::SubscriberExt;
use lambda_runtime::tracing::subscriber::util::SubscriberInitExt;
use lambda_runtime::tracing::subscriber::{fmt, Layer};
use tracing::{Level, Metadata};

/// Where the runtime logs the error each invocation returns.
const RUNTIME_ERROR_TARGET: &str = "lambda_runtime::layers::panic";

/// Whether a line may be written when content logging is off: anything from
/// this crate (which never logs content unless asked), and other crates'
/// lines above TRACE, but for the runtime's copy of the returned error.
pub fn content_free(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    target.starts_with("bedrock_relay")
        || (*meta.level() < Level::TRACE && !target.starts_with(RUNTIME_ERROR_TARGET))
}

/// Starts logging to `writer`; `content` is `RELAY_LOG_CONTENT`.
pub fn init<W>(writer: W, content: bool)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|l| l.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let levels = EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env_lossy();
    let gate = filter_fn(move |meta| content || content_free(meta));
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let layer = fmt::layer()
        .with_target(false)
        .without_time()
        .with_writer(writer);
    let layer = match json {
        true => layer.json().with_filter(levels).with_filter(gate).boxed(),
        false => layer.with_filter(levels).with_filter(gate).boxed(),
    };
    let _ = lambda_runtime::tracing::subscriber::registry()
        .with(layer)
        .try_init();
}
