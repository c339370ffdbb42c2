//! The model's side of an answer: the Converse and InvokeModel bodies derived
//! from the request (an echo of the last user text, tokens counted as
//! whitespace-separated words), with the features of [`super::features`],
//! [`super::schema`] and [`super::cache`] applied; shared by the runtime and
//! batch-inference records.

use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};

use super::cache::{self, CacheUse, PromptCache};
use super::features::{self, GuardrailUse, InvokeOptions};
use super::{lock, schema, ApiError, Knobs};

/// Input and output tokens of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tokens {
    pub(crate) input: i64,
    pub(crate) output: i64,
}

/// A model's answer: the body, its tokens, the service tier it ran on.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// The JSON body.
    pub(crate) body: Value,
    /// Input tokens (cache reads and writes excluded) and output tokens.
    pub(crate) tokens: Tokens,
    /// The service tier used, when the request named one.
    pub(crate) tier: Option<String>,
    /// The processing time to report and wait: the knobs' latency, plus
    /// `flex_extra_latency_ms` on the flex tier.
    pub(crate) latency_ms: u64,
}

/// What an answer may use besides the request.
#[derive(Debug)]
pub(crate) struct Env<'a> {
    /// The knobs as the request found them.
    pub(crate) knobs: &'a Knobs,
    /// The running emulator's state; `None` for batch records.
    pub(crate) live: Option<Live<'a>>,
}

/// A running emulator's state an answer changes.
#[derive(Debug)]
pub(crate) struct Live<'a> {
    /// The knobs whose `structured_mismatches` count down.
    pub(crate) knobs: &'a Mutex<Knobs>,
    /// The prompt cache.
    pub(crate) cache: &'a PromptCache,
    /// The cache's scope: the calling account and the model.
    pub(crate) scope: String,
    /// The request's arrival, for cache expiry.
    pub(crate) now: Instant,
}

impl<'a> Env<'a> {
    /// Only the knobs' checks: no prompt cache, no mismatch countdown (batch records).
    pub(crate) fn offline(knobs: &'a Knobs) -> Self {
        Self { knobs, live: None }
    }

    fn latency_ms(&self, tier: Option<&str>) -> u64 {
        let extra = if tier == Some("flex") {
            self.knobs.flex_extra_latency_ms
        } else {
            0
        };
        self.knobs.latency_ms + extra
    }

    /// Whether a structured answer is to mismatch its schema: the body holds
    /// `mismatch_when_contains`, or one of `structured_mismatches` is left
    /// (and taken, when live).
    fn mismatch(&self, request: &Value) -> bool {
        let contains = self
            .knobs
            .mismatch_when_contains
            .as_deref()
            .is_some_and(|text| request.to_string().contains(text));
        if contains {
            return true;
        }
        match &self.live {
            Some(live) => {
                let mut knobs = lock(live.knobs);
                let left = knobs.structured_mismatches > 0;
                knobs.structured_mismatches = knobs.structured_mismatches.saturating_sub(1);
                left
            }
            None => self.knobs.structured_mismatches > 0,
        }
    }

    fn cache(&self, prompt: &cache::Prompt) -> CacheUse {
        self.live
            .as_ref()
            .map(|live| {
                live.cache.use_points(
                    &live.scope,
                    &prompt.points,
                    self.knobs.cache_min_tokens,
                    live.now,
                )
            })
            .unwrap_or_default()
    }
}

/// The headers Bedrock adds to every InvokeModel answer, whatever the model:
/// its processing time and the token counts.
pub(super) fn invoke_headers(latency_ms: u64, tokens: Tokens) -> Vec<(&'static str, String)> {
    vec![
        ("x-amzn-bedrock-invocation-latency", latency_ms.to_string()),
        ("x-amzn-bedrock-input-token-count", tokens.input.to_string()),
        (
            "x-amzn-bedrock-output-token-count",
            tokens.output.to_string(),
        ),
    ]
}

pub(super) fn words(text: &str) -> i64 {
    text.split_whitespace().count() as i64
}

/// The input tokens of one content block: the words of a text, one per 100
/// base64 characters of media (at least one), none for anything else.
pub(super) fn block_tokens(block: &Value) -> i64 {
    if let Some(text) = block.get("text").and_then(Value::as_str) {
        words(text)
    } else if let Some(media) = block.get("image").or_else(|| block.get("document")) {
        let bytes = media
            .pointer("/source/bytes")
            .and_then(Value::as_str)
            .unwrap_or_default();
        (bytes.len() as i64 / 100).max(1)
    } else {
        0
    }
}

/// The Converse answer: an echo of the last user message (or, with
/// `outputConfig.textFormat`, a document for its schema), after the checks of
/// messages, tier, guardrail, schema and cache points.
pub(crate) fn converse_reply(
    model_id: &str,
    request: &Value,
    env: &Env<'_>,
) -> Result<Answer, ApiError> {
    let invalid = |msg: &str| (400, "ValidationException", msg.to_owned());
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid("A conversation must start with a user message."))?;
    let mut last_user_text = String::new();
    // What a guardrail reads: the user's texts and the system prompt.
    let mut guarded: Vec<&str> = request
        .get("system")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|block| block.get("text").and_then(Value::as_str))
        .collect();
    let mut expected_role = "user";
    for message in messages {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if role != expected_role {
            return Err(invalid(
                "A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.",
            ));
        }
        expected_role = if role == "user" { "assistant" } else { "user" };
        let content = message
            .get("content")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| invalid("The content field in the Message object is empty."))?;
        let mut texts = Vec::new();
        for block in content {
            if let Some(text) = block.get("text").and_then(Value::as_str) {
                texts.push(text.to_owned());
                if role == "user" {
                    guarded.push(text);
                }
            } else if let Some(media) = block.get("image").or_else(|| block.get("document")) {
                let bytes = media
                    .pointer("/source/bytes")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                texts.push(format!("[{} bytes of media]", bytes.len() * 3 / 4));
            } else if block.get("cachePoint").is_none() {
                return Err(invalid("The content block has an unsupported type."));
            }
        }
        if role == "user" {
            last_user_text = texts.join(" ");
        }
    }
    features::check_additional_fields(request)?;
    let tier = features::converse_tier(request)?;
    if let Some(tier) = &tier {
        features::check_tier(model_id, tier, env.knobs)?;
    }
    let guardrail = features::converse_guardrail(request, env.knobs)?;
    let refused = schema::refused_keywords(env.knobs.unsupported_schema_keywords.as_ref());
    let schema = schema::requested_schema(request, &refused)?;
    let prompt = cache::prompt(request)?;

    let intervened = guardrail
        .as_ref()
        .is_some_and(|g| g.intervenes(guarded.iter().copied()));
    let (text, stop_reason, cached) = match (&guardrail, &schema) {
        // A blocked prompt never reaches the model, nor its cache.
        (Some(g), _) if intervened => (
            g.guardrail.blocked_message.clone(),
            "guardrail_intervened",
            CacheUse::default(),
        ),
        (_, Some(schema)) => {
            let seed = seed(&last_user_text);
            let document = if env.mismatch(request) {
                schema::mismatch(schema, &seed)
            } else {
                schema::instance(schema, &seed)
            };
            (document.to_string(), "end_turn", env.cache(&prompt))
        }
        _ => {
            let (max_tokens, stops) = inference_limits(request);
            let full = format!("Echo from {model_id}: {last_user_text}");
            let (text, stop_reason) = shape_output(&full, max_tokens, &stops);
            (text, stop_reason, env.cache(&prompt))
        }
    };
    let tokens = Tokens {
        input: prompt.tokens - cached.read - cached.written,
        output: if intervened { 0 } else { words(&text) },
    };
    let mut usage = json!({
        "inputTokens": tokens.input,
        "outputTokens": tokens.output,
        "totalTokens": tokens.input + tokens.output + cached.read + cached.written,
    });
    if !prompt.points.is_empty() && env.live.is_some() {
        usage["cacheReadInputTokens"] = json!(cached.read);
        usage["cacheWriteInputTokens"] = json!(cached.written);
    }
    let latency_ms = env.latency_ms(tier.as_deref());
    let mut body = json!({
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": stop_reason,
        "usage": usage,
        "metrics": {"latencyMs": latency_ms}
    });
    if let Some(tier) = &tier {
        body["serviceTier"] = json!({"type": tier});
    }
    if let Some(g) = guardrail.as_ref().filter(|g| g.trace) {
        body["trace"] = json!({"guardrail": g.trace(intervened)});
    }
    Ok(Answer {
        body,
        tokens,
        tier,
        latency_ms,
    })
}

/// `inferenceConfig.maxTokens` and `.stopSequences`.
fn inference_limits(request: &Value) -> (Option<i64>, Vec<String>) {
    let config = request.get("inferenceConfig");
    let max_tokens = config
        .and_then(|c| c.get("maxTokens"))
        .and_then(Value::as_i64);
    let stops = config
        .and_then(|c| c.get("stopSequences"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (max_tokens, stops)
}

/// The strings of a structured answer: the first words of the user's text.
fn seed(last_user_text: &str) -> String {
    let seed: Vec<&str> = last_user_text.split_whitespace().take(3).collect();
    if seed.is_empty() {
        "lab".to_owned()
    } else {
        seed.join(" ")
    }
}

/// Cuts the reply at a stop sequence or at `max_tokens` words.
fn shape_output(full: &str, max_tokens: Option<i64>, stops: &[String]) -> (String, &'static str) {
    for stop in stops {
        if let Some(at) = full.find(stop.as_str()) {
            return (full[..at].trim_end().to_owned(), "stop_sequence");
        }
    }
    match max_tokens {
        Some(max) if words(full) > max => {
            let cut: Vec<&str> = full.split_whitespace().take(max.max(0) as usize).collect();
            (cut.join(" "), "max_tokens")
        }
        _ => (full.to_owned(), "end_turn"),
    }
}

/// The model families InvokeModel tells apart by their body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `inputText`: Titan embeddings.
    Embeddings,
    /// `messages`: the Anthropic messages API.
    Anthropic,
    /// Anything else: an `outputText` echo.
    Other,
}

/// The model family's answer to an InvokeModel body, and its token counts
/// (input: the words of every string in the request; output: of the answer),
/// with the tier and guardrail of its headers applied.
pub(crate) fn invoke_reply(
    model_id: &str,
    request: &Value,
    options: &InvokeOptions,
    env: &Env<'_>,
) -> Result<Answer, ApiError> {
    if request.is_null() {
        return Err((
            400,
            "ValidationException",
            "Malformed input request, please reformat your input and try again.".into(),
        ));
    }
    let tier = options.service_tier.clone();
    if let Some(tier) = &tier {
        features::check_tier(model_id, tier, env.knobs)?;
    }
    let guardrail = features::invoke_guardrail(options, env.knobs)?;
    let (mut body, mut tokens, family) = family_reply(model_id, request);
    if let Some(guardrail) = &guardrail {
        guard_invoke(guardrail, request, family, &mut body, &mut tokens);
    }
    Ok(Answer {
        body,
        tokens,
        latency_ms: env.latency_ms(tier.as_deref()),
        tier,
    })
}

/// Applies a guardrail to an InvokeModel answer: the blocked message instead
/// of the model's on intervention, `amazon-bedrock-guardrailAction` always and
/// `amazon-bedrock-trace` when asked.
fn guard_invoke(
    guardrail: &GuardrailUse,
    request: &Value,
    family: Family,
    body: &mut Value,
    tokens: &mut Tokens,
) {
    let mut texts = Vec::new();
    match family {
        Family::Anthropic => {
            collect_strings(request.get("system").unwrap_or(&Value::Null), &mut texts);
            let messages = request.get("messages").and_then(Value::as_array);
            for message in messages.into_iter().flatten() {
                if message.get("role").and_then(Value::as_str) == Some("user") {
                    collect_strings(message.get("content").unwrap_or(&Value::Null), &mut texts);
                }
            }
        }
        Family::Embeddings | Family::Other => collect_strings(request, &mut texts),
    }
    let intervened = guardrail.intervenes(texts.into_iter());
    if intervened {
        let blocked = guardrail.guardrail.blocked_message.as_str();
        tokens.output = 0;
        *body = match family {
            Family::Anthropic => {
                let mut anthropic = body.clone();
                anthropic["content"] = json!([{"type": "text", "text": blocked}]);
                anthropic["stop_reason"] = json!("guardrail_intervened");
                anthropic["usage"] = json!({"input_tokens": tokens.input, "output_tokens": 0});
                anthropic
            }
            Family::Embeddings | Family::Other => json!({"outputText": blocked}),
        };
    }
    if let Some(fields) = body.as_object_mut() {
        let action = if intervened { "INTERVENED" } else { "NONE" };
        fields.insert("amazon-bedrock-guardrailAction".to_owned(), json!(action));
        if guardrail.trace {
            fields.insert(
                "amazon-bedrock-trace".to_owned(),
                json!({"guardrail": guardrail.trace(intervened)}),
            );
        }
    }
}

/// Every string in a JSON value, in order.
fn collect_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|item| collect_strings(item, out)),
        Value::Object(map) => map.values().for_each(|item| collect_strings(item, out)),
        _ => {}
    }
}

fn family_reply(model_id: &str, request: &Value) -> (Value, Tokens, Family) {
    if let Some(text) = request.get("inputText").and_then(Value::as_str) {
        // Titan embeddings: a small deterministic vector from the text.
        let embedding: Vec<f64> = (0..8)
            .map(|i| ((text.len() + i * 31) % 97) as f64 / 97.0)
            .collect();
        let tokens = Tokens {
            input: words(text),
            output: 0,
        };
        return (
            json!({"embedding": embedding, "inputTextTokenCount": words(text)}),
            tokens,
            Family::Embeddings,
        );
    }
    if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        let last = messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(|m| m.get("content"))
            .map(|c| match c {
                Value::String(s) => s.clone(),
                other => other
                    .as_array()
                    .map(|blocks| {
                        blocks
                            .iter()
                            .filter_map(|b| b.get("text").and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default(),
            })
            .unwrap_or_default();
        let text = format!("Echo from {model_id}: {last}");
        let tokens = Tokens {
            input: words(&last),
            output: words(&text),
        };
        return (
            json!({
                "id": "msg_lab", "type": "message", "role": "assistant", "model": model_id,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": tokens.input, "output_tokens": tokens.output}
            }),
            tokens,
            Family::Anthropic,
        );
    }
    // Any other family: an echo, with no usage in the body (as several
    // families send), so only the headers count its tokens.
    let text = format!("Echo from {model_id}: {request}");
    let tokens = Tokens {
        input: string_words(request),
        output: words(&text),
    };
    (json!({"outputText": text}), tokens, Family::Other)
}

/// The words of every string in a JSON value.
pub(super) fn string_words(value: &Value) -> i64 {
    match value {
        Value::String(s) => words(s),
        Value::Array(items) => items.iter().map(string_words).sum(),
        Value::Object(map) => map.values().map(string_words).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_echoes_the_last_user_message_and_counts_words() {
        let reply = converse_reply(
            "amazon.nova-lite-v1:0",
            &json!({"messages": [{"role": "user", "content": [{"text": "hello there world"}]}], "system": [{"text": "be nice"}]}),
            &Env::offline(&Knobs::default()),
        )
        .expect("reply")
        .body;
        assert_eq!(
            reply["output"]["message"]["content"][0]["text"],
            "Echo from amazon.nova-lite-v1:0: hello there world"
        );
        assert_eq!(reply["usage"]["inputTokens"], 5);
        assert_eq!(reply["stopReason"], "end_turn");
    }

    #[test]
    fn max_tokens_and_stop_sequences_cut_the_reply() {
        assert_eq!(
            shape_output("a b c d", Some(2), &[]),
            ("a b".into(), "max_tokens")
        );
        assert_eq!(
            shape_output("a b END c", None, &["END".into()]),
            ("a b".into(), "stop_sequence")
        );
    }

    #[test]
    fn conversations_must_alternate_starting_with_user() {
        let err = converse_reply(
            "a.b",
            &json!({"messages": [{"role": "assistant", "content": [{"text": "x"}]}]}),
            &Env::offline(&Knobs::default()),
        )
        .expect_err("invalid");
        assert_eq!(err.1, "ValidationException");
    }
}
