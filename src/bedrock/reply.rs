//! What Bedrock answered, as a [`ModelReply`]: a Converse output (text,
//! usage with cache reads and writes, the tier used, the guardrail's
//! assessment) and an InvokeModel body of any known model family (text, stop
//! reason and usage where the family puts them, and the guardrail's verdict
//! that Bedrock adds to the body).

use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_bedrockruntime::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_bedrockruntime::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_bedrockruntime::operation::converse::ConverseOutput;
use aws_smithy_runtime_api::box_error::BoxError;
use serde_json::Value;

use crate::domain::record::{ModelReply, Usage, GUARDRAIL_INTERVENED};
use crate::observe::metrics::InvocationHeaders;

/// The answer of a Converse call. `guardrail`: the assessment read from the
/// raw answer by [`GuardrailTraceReader`], when the trace was asked for.
pub(super) fn converse_reply(
    output: ConverseOutput,
    call_latency_ms: u128,
    guardrail: Option<Value>,
) -> ModelReply {
    let text = match &output.output {
        Some(aws_sdk_bedrockruntime::types::ConverseOutput::Message(message)) => message
            .content
            .iter()
            .filter_map(|block| block.as_text().ok().cloned())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    };
    let usage = output.usage.as_ref().map(|u| Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        total_tokens: u.total_tokens,
        cache_read_input_tokens: u.cache_read_input_tokens.unwrap_or(0),
        cache_write_input_tokens: u.cache_write_input_tokens.unwrap_or(0),
    });
    ModelReply {
        usage,
        model_latency_ms: output.metrics.as_ref().map(|m| m.latency_ms),
        call_latency_ms,
        service_tier: output
            .service_tier
            .as_ref()
            .map(|tier| tier.r#type.as_str().to_owned()),
        guardrail,
        ..ModelReply::text(text, output.stop_reason.as_str())
    }
}

/// The answer of an InvokeModel call: the body parsed (kept as text when it
/// is not JSON), usage from Bedrock's headers first (the same for every
/// family), and the guardrail's verdict Bedrock adds to the body
/// (`amazon-bedrock-guardrailAction`, `amazon-bedrock-trace`).
pub(super) fn invoke_reply(
    bytes: &[u8],
    reported: Option<InvocationHeaders>,
    service_tier: Option<String>,
    call_latency_ms: u128,
) -> ModelReply {
    let body = serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()));
    let (text, mut stop_reason, body_usage) = read_invoke_body(&body);
    if body
        .get("amazon-bedrock-guardrailAction")
        .and_then(Value::as_str)
        == Some("INTERVENED")
    {
        stop_reason = GUARDRAIL_INTERVENED.to_owned();
    }
    ModelReply {
        usage: reported.and_then(|r| r.usage()).or(body_usage),
        model_latency_ms: reported.and_then(|r| r.latency_ms),
        call_latency_ms,
        guardrail: body.pointer("/amazon-bedrock-trace/guardrail").cloned(),
        service_tier,
        body: Some(body),
        ..ModelReply::text(text, stop_reason)
    }
}

/// Keeps the `trace.guardrail` of a Converse answer as Bedrock sent it (the
/// SDK's parsed form has no JSON of its own), for a call whose guardrail
/// trace is on.
#[derive(Debug, Clone, Default)]
pub(super) struct GuardrailTraceReader(pub(super) Arc<Mutex<Option<Value>>>);

impl GuardrailTraceReader {
    /// What the last successful answer carried.
    pub(super) fn take(&self) -> Option<Value> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl Intercept for GuardrailTraceReader {
    fn name(&self) -> &'static str {
        "BedrockRelayGuardrailTraceReader"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(response) = context.response() else {
            return Ok(());
        };
        if !response.status().is_success() {
            return Ok(());
        }
        // A non-streaming answer's body is in memory once it is deserialised.
        if let Some(bytes) = response.body().bytes() {
            let trace = serde_json::from_slice::<Value>(bytes)
                .ok()
                .and_then(|body| body.pointer("/trace/guardrail").cloned());
            *self.0.lock().unwrap_or_else(PoisonError::into_inner) = trace;
        }
        Ok(())
    }
}

/// Where an InvokeModel answer with its text in one place keeps what
/// [`read_invoke_body`] reads: JSON pointers to the text, the stop reason and
/// the token counts (`None`: the family does not report it).
struct OneTextShape {
    text: &'static str,
    stop: &'static str,
    input: Option<&'static str>,
    output: Option<&'static str>,
}

/// The families with one text, tried in order after Anthropic's blocks.
const ONE_TEXT_SHAPES: &[OneTextShape] = &[
    // Amazon Nova (messages-v1).
    OneTextShape {
        text: "/output/message/content/0/text",
        stop: "/stopReason",
        input: Some("/usage/inputTokens"),
        output: Some("/usage/outputTokens"),
    },
    // Amazon Titan text.
    OneTextShape {
        text: "/results/0/outputText",
        stop: "/results/0/completionReason",
        input: Some("/inputTextTokenCount"),
        output: Some("/results/0/tokenCount"),
    },
    // Meta Llama.
    OneTextShape {
        text: "/generation",
        stop: "/stop_reason",
        input: Some("/prompt_token_count"),
        output: Some("/generation_token_count"),
    },
    // Mistral.
    OneTextShape {
        text: "/outputs/0/text",
        stop: "/outputs/0/stop_reason",
        input: None,
        output: None,
    },
    // Cohere Command R.
    OneTextShape {
        text: "/text",
        stop: "/finish_reason",
        input: None,
        output: None,
    },
];

/// Reads text, stop reason and token usage out of an InvokeModel answer, for
/// the families whose shapes are known (Anthropic messages, Amazon Nova and
/// Titan, Meta Llama, Mistral, Cohere); anything else keeps only the body.
pub fn read_invoke_body(body: &serde_json::Value) -> (String, String, Option<Usage>) {
    let text_at = |pointer: &str| {
        body.pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let int_at = |pointer: &str| {
        body.pointer(pointer)
            .and_then(serde_json::Value::as_i64)
            .map(|n| n as i32)
    };
    let usage = |input: Option<i32>, output: Option<i32>| match (input, output) {
        (None, None) => None,
        (input, output) => {
            let (input, output) = (input.unwrap_or(0), output.unwrap_or(0));
            Some(Usage::new(input, output, input + output))
        }
    };
    if let Some(blocks) = body.get("content").and_then(serde_json::Value::as_array) {
        // Anthropic messages API.
        let text = blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(serde_json::Value::as_str))
            .collect();
        let stop = text_at("/stop_reason").unwrap_or_default();
        return (
            text,
            stop,
            usage(
                int_at("/usage/input_tokens"),
                int_at("/usage/output_tokens"),
            ),
        );
    }
    for shape in ONE_TEXT_SHAPES {
        if let Some(text) = text_at(shape.text) {
            let stop = text_at(shape.stop).unwrap_or_default();
            let count = |pointer: Option<&str>| pointer.and_then(&int_at);
            return (text, stop, usage(count(shape.input), count(shape.output)));
        }
    }
    // Embeddings and the rest: usage when an input count is reported.
    (
        String::new(),
        String::new(),
        usage(int_at("/inputTextTokenCount"), None),
    )
}
