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

    const NOVA_PRO: &str = "amazon.nova-pro-v1:0";

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": [{"text": text}]})
    }

    fn structured(schema: &Value, text: &str) -> Value {
        json!({
            "messages": [user(text)],
            "outputConfig": {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {
                "schema": schema.to_string(), "name": "person"
            }}}}
        })
    }

    fn person_schema() -> Value {
        json!({"type": "object", "properties": {
            "name": {"type": "string"}, "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["x", "y"]}}
        }, "required": ["name", "age"], "additionalProperties": false})
    }

    /// The running emulator's state for one test: its knobs and prompt cache.
    struct Lab {
        knobs: Mutex<Knobs>,
        cache: PromptCache,
    }

    impl Lab {
        fn new(knobs: Knobs) -> Self {
            Self {
                knobs: Mutex::new(knobs),
                cache: PromptCache::default(),
            }
        }

        /// A Converse answer as the running emulator gives it, for account `a`.
        fn converse(&self, model_id: &str, request: &Value) -> Result<Answer, ApiError> {
            let knobs = lock(&self.knobs).clone();
            let env = Env {
                knobs: &knobs,
                live: Some(Live {
                    knobs: &self.knobs,
                    cache: &self.cache,
                    scope: format!("a/{model_id}"),
                    now: Instant::now(),
                }),
            };
            converse_reply(model_id, request, &env)
        }
    }

    fn text_of(answer: &Answer) -> &str {
        answer.body["output"]["message"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
    }

    /// A structured request is answered with compact JSON that validates against its schema.
    #[test]
    fn a_structured_answer_validates_against_its_schema() {
        let schema = person_schema();
        let answer = converse_reply(
            NOVA_PRO,
            &structured(&schema, "tell me about Ada Lovelace"),
            &Env::offline(&Knobs::default()),
        )
        .expect("answer");
        let document: Value = serde_json::from_str(text_of(&answer)).expect("JSON text");
        let validator = jsonschema::validator_for(&schema).expect("schema");
        assert!(validator.is_valid(&document), "{document}");
        assert_eq!(document["name"], "tell me about");
        assert_eq!(answer.body["stopReason"], "end_turn");
    }

    /// structured_mismatches counts down across requests; mismatch_when_contains always applies.
    #[test]
    fn mismatch_knobs_give_documents_that_do_not_validate() {
        let schema = person_schema();
        let validator = jsonschema::validator_for(&schema).expect("schema");
        let lab = Lab::new(Knobs {
            structured_mismatches: 2,
            mismatch_when_contains: Some("BROKEN".into()),
            ..Knobs::default()
        });
        let valid = |text: &str| {
            let answer = lab
                .converse(NOVA_PRO, &structured(&schema, text))
                .expect("answer");
            assert_eq!(answer.body["stopReason"], "end_turn");
            let document: Value = serde_json::from_str(text_of(&answer)).expect("still JSON");
            validator.is_valid(&document)
        };
        assert!(!valid("one"));
        assert!(!valid("two"));
        assert!(valid("three"), "the two queued mismatches are used up");
        assert!(!valid("a BROKEN one"));
        assert_eq!(lock(&lab.knobs).structured_mismatches, 0);
        // Unstructured requests do not use up the countdown.
        lock(&lab.knobs).structured_mismatches = 1;
        lab.converse(NOVA_PRO, &json!({"messages": [user("plain")]}))
            .expect("answer");
        assert_eq!(lock(&lab.knobs).structured_mismatches, 1);
    }

    /// An unsupported schema keyword is refused before anything is answered.
    #[test]
    fn an_unsupported_schema_keyword_is_refused() {
        let schema =
            json!({"type": "object", "properties": {"age": {"type": "integer", "maximum": 120}}});
        let err = converse_reply(
            NOVA_PRO,
            &structured(&schema, "x"),
            &Env::offline(&Knobs::default()),
        )
        .expect_err("refused");
        assert_eq!(
            err.2,
            "The provided JSON schema is not supported: keyword 'maximum' at '/properties/age' is not supported."
        );
    }

    fn cached_request(question: &str) -> Value {
        json!({
            "system": [{"text": "you are a careful reader"}, {"cachePoint": {"type": "default", "ttl": "1h"}}],
            "messages": [{"role": "user", "content": [
                {"text": "a long shared document of eight words"},
                {"cachePoint": {"type": "default"}},
                {"text": question}
            ]}]
        })
    }

    fn usage(answer: &Answer, name: &str) -> i64 {
        answer.body["usage"][name].as_i64().unwrap_or(-1)
    }

    /// The first call writes the prefix, a second with another question reads it.
    #[test]
    fn a_second_call_with_the_same_prefix_reads_the_cache() {
        let lab = Lab::new(Knobs::default());
        let first = lab
            .converse(NOVA_PRO, &cached_request("what is it?"))
            .expect("answer");
        // System 5 words, document 7, question 3.
        assert_eq!(usage(&first, "cacheReadInputTokens"), 0);
        assert_eq!(usage(&first, "cacheWriteInputTokens"), 12);
        assert_eq!(usage(&first, "inputTokens"), 3);
        let second = lab
            .converse(NOVA_PRO, &cached_request("who wrote it, and when?"))
            .expect("answer");
        assert_eq!(usage(&second, "cacheReadInputTokens"), 12);
        assert_eq!(usage(&second, "cacheWriteInputTokens"), 0);
        assert_eq!(usage(&second, "inputTokens"), 5);
        assert_eq!(
            usage(&second, "totalTokens"),
            5 + 12 + usage(&second, "outputTokens")
        );
        let other_model = lab
            .converse("amazon.nova-lite-v1:0", &cached_request("what?"))
            .expect("answer");
        assert_eq!(
            usage(&other_model, "cacheReadInputTokens"),
            0,
            "the cache is per model"
        );
        lab.cache.clear();
        let after_clear = lab
            .converse(NOVA_PRO, &cached_request("what?"))
            .expect("answer");
        assert_eq!(usage(&after_clear, "cacheWriteInputTokens"), 12);
    }

    /// Only the system prefix is shared: it is read, the longer one written.
    #[test]
    fn a_partly_cached_prompt_reads_the_shorter_prefix_and_writes_the_rest() {
        let lab = Lab::new(Knobs::default());
        let system_only = json!({
            "system": [{"text": "you are a careful reader"}, {"cachePoint": {"type": "default"}}],
            "messages": [user("hi")]
        });
        lab.converse(NOVA_PRO, &system_only).expect("answer");
        let answer = lab
            .converse(NOVA_PRO, &cached_request("q"))
            .expect("answer");
        assert_eq!(usage(&answer, "cacheReadInputTokens"), 5);
        assert_eq!(usage(&answer, "cacheWriteInputTokens"), 7);
    }

    /// Usage has no cache fields without cache points; short prefixes are ignored under cache_min_tokens.
    #[test]
    fn cache_fields_appear_only_with_cache_points_and_short_prefixes_are_ignored() {
        let lab = Lab::new(Knobs {
            cache_min_tokens: 6,
            ..Knobs::default()
        });
        let plain = lab
            .converse(NOVA_PRO, &json!({"messages": [user("hi")]}))
            .expect("answer");
        assert!(plain.body["usage"].get("cacheReadInputTokens").is_none());
        let answer = lab
            .converse(NOVA_PRO, &cached_request("q"))
            .expect("answer");
        assert_eq!(
            usage(&answer, "cacheWriteInputTokens"),
            12,
            "the 5-token system prefix is ignored"
        );
        let offline = converse_reply(
            NOVA_PRO,
            &cached_request("q"),
            &Env::offline(&Knobs::default()),
        )
        .expect("answer");
        assert!(
            offline.body["usage"].get("cacheWriteInputTokens").is_none(),
            "batch records count no cache"
        );
    }

    /// Cache points whose TTL grows along the prompt are refused.
    #[test]
    fn cache_points_with_increasing_ttls_are_refused() {
        let mut request = cached_request("q");
        request["system"][1]["cachePoint"]["ttl"] = json!("5m");
        request["messages"][0]["content"][1]["cachePoint"]["ttl"] = json!("1h");
        let err = converse_reply(NOVA_PRO, &request, &Env::offline(&Knobs::default()))
            .expect_err("refused");
        assert_eq!(err.1, "ValidationException");
    }

    fn guarded_knobs() -> Knobs {
        Knobs {
            guardrails: vec![features::LabGuardrail::new("gr1")],
            ..Knobs::default()
        }
    }

    /// A prompt holding the trigger is blocked: Bedrock's stop reason, the blocked message, no output tokens, the trace.
    #[test]
    fn a_guardrail_intervenes_on_its_trigger_word() {
        let knobs = guarded_knobs();
        let request = json!({
            "messages": [user("tell me something forbidden please")],
            "guardrailConfig": {"guardrailIdentifier": "arn:aws:bedrock:us-east-1:111122223333:guardrail/gr1", "guardrailVersion": "DRAFT", "trace": "enabled"}
        });
        let answer = converse_reply(NOVA_PRO, &request, &Env::offline(&knobs)).expect("answer");
        assert_eq!(answer.body["stopReason"], "guardrail_intervened");
        assert_eq!(text_of(&answer), "Sorry, I can't help with that.");
        assert_eq!(usage(&answer, "inputTokens"), 5);
        assert_eq!(usage(&answer, "outputTokens"), 0);
        assert_eq!(
            answer.body["trace"],
            json!({"guardrail": {
                "inputAssessment": {"gr1": {"wordPolicy": {"customWords": [{"match": "FORBIDDEN", "action": "BLOCKED", "detected": true}]}}},
                "actionReason": "Guardrail blocked."
            }})
        );
        let mut passing = request.clone();
        passing["messages"][0] = user("a fine question");
        passing["guardrailConfig"]["trace"] = json!("disabled");
        let answer = converse_reply(NOVA_PRO, &passing, &Env::offline(&knobs)).expect("answer");
        assert_eq!(answer.body["stopReason"], "end_turn");
        assert!(answer.body.get("trace").is_none());
        let mut unknown = request;
        unknown["guardrailConfig"]["guardrailVersion"] = json!("9");
        let err = converse_reply(NOVA_PRO, &unknown, &Env::offline(&knobs)).expect_err("unknown");
        assert_eq!(
            err,
            (
                400,
                "ValidationException",
                features::UNKNOWN_GUARDRAIL.to_owned()
            )
        );
    }

    /// InvokeModel with guardrail headers: the Anthropic body blocked and marked, with the trace.
    #[test]
    fn invoke_model_guardrails_mark_the_body() {
        let knobs = guarded_knobs();
        let options = InvokeOptions {
            guardrail_identifier: Some("gr1".into()),
            guardrail_version: Some("1".into()),
            trace: Some("ENABLED".into()),
            service_tier: None,
        };
        let blocked = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Forbidden stuff"}]}]});
        let answer = invoke_reply(
            "anthropic.claude-3-haiku-20240307-v1:0",
            &blocked,
            &options,
            &Env::offline(&knobs),
        )
        .expect("answer");
        assert_eq!(answer.body["amazon-bedrock-guardrailAction"], "INTERVENED");
        assert_eq!(answer.body["stop_reason"], "guardrail_intervened");
        assert_eq!(
            answer.body["content"][0]["text"],
            "Sorry, I can't help with that."
        );
        assert_eq!(answer.tokens.output, 0);
        assert_eq!(
            answer.body["amazon-bedrock-trace"]["guardrail"]["inputAssessment"]["gr1"]
                ["wordPolicy"]["customWords"][0]["detected"],
            true
        );
        let fine = json!({"inputText": "all good"});
        let answer = invoke_reply(
            "amazon.titan-embed-text-v2:0",
            &fine,
            &options,
            &Env::offline(&knobs),
        )
        .expect("answer");
        assert_eq!(answer.body["amazon-bedrock-guardrailAction"], "NONE");
        assert!(answer.body.get("embedding").is_some());
    }

    /// A tier the model offers is reported (with flex's extra latency); one it does not is refused.
    #[test]
    fn service_tiers_are_reported_or_refused() {
        let knobs = Knobs {
            latency_ms: 10,
            flex_extra_latency_ms: 500,
            ..Knobs::default()
        };
        let mut request = json!({"messages": [user("hi")], "serviceTier": {"type": "flex"}});
        let answer = converse_reply(NOVA_PRO, &request, &Env::offline(&knobs)).expect("answer");
        assert_eq!(answer.body["serviceTier"], json!({"type": "flex"}));
        assert_eq!(answer.body["metrics"]["latencyMs"], 510);
        assert_eq!(answer.latency_ms, 510);
        let err = converse_reply("amazon.nova-lite-v1:0", &request, &Env::offline(&knobs))
            .expect_err("refused");
        assert_eq!(
            err,
            (
                400,
                "ValidationException",
                "The service tier 'flex' is not supported for model 'amazon.nova-lite-v1:0'."
                    .to_owned()
            )
        );
        request.as_object_mut().map(|r| r.remove("serviceTier"));
        let answer = converse_reply(NOVA_PRO, &request, &Env::offline(&knobs)).expect("answer");
        assert!(
            answer.body.get("serviceTier").is_none(),
            "reported only when asked"
        );
        assert_eq!(answer.latency_ms, 10);
    }

    /// additionalModelRequestFields that is no object is refused.
    #[test]
    fn additional_model_request_fields_must_be_an_object() {
        let request = json!({"messages": [user("hi")], "additionalModelRequestFields": "top_k=5"});
        let err = converse_reply(NOVA_PRO, &request, &Env::offline(&Knobs::default()))
            .expect_err("refused");
        assert_eq!(err.1, "ValidationException");
    }
}
