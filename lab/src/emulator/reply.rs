//! The model's side of an answer: the Converse and InvokeModel bodies derived
//! from the request (an echo of the last user text, tokens counted as
//! whitespace-separated words), shared by the runtime and batch-inference records.

use serde_json::{json, Value};

/// Input and output tokens of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tokens {
    pub(crate) input: i64,
    pub(crate) output: i64,
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

fn words(text: &str) -> i64 {
    text.split_whitespace().count() as i64
}

pub(crate) fn converse_reply(
    model_id: &str,
    request: &Value,
    latency_ms: u64,
) -> Result<Value, (u16, &'static str, String)> {
    let invalid = |msg: &str| (400, "ValidationException", msg.to_owned());
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid("A conversation must start with a user message."))?;
    let mut input_tokens = 0;
    let mut last_user_text = String::new();
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
                input_tokens += words(text);
                texts.push(text.to_owned());
            } else if let Some(media) = block.get("image").or_else(|| block.get("document")) {
                let bytes = media
                    .pointer("/source/bytes")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                input_tokens += (bytes.len() as i64 / 100).max(1);
                texts.push(format!("[{} bytes of media]", bytes.len() * 3 / 4));
            } else {
                return Err(invalid("The content block has an unsupported type."));
            }
        }
        if role == "user" {
            last_user_text = texts.join(" ");
        }
    }
    if let Some(system) = request.get("system").and_then(Value::as_array) {
        for block in system {
            input_tokens += words(
                block
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            );
        }
    }
    let config = request.get("inferenceConfig");
    let max_tokens = config
        .and_then(|c| c.get("maxTokens"))
        .and_then(Value::as_i64);
    let stops: Vec<String> = config
        .and_then(|c| c.get("stopSequences"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();

    let full = format!("Echo from {model_id}: {last_user_text}");
    let (text, stop_reason) = shape_output(&full, max_tokens, &stops);
    let output_tokens = words(&text);
    Ok(json!({
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": stop_reason,
        "usage": {"inputTokens": input_tokens, "outputTokens": output_tokens, "totalTokens": input_tokens + output_tokens},
        "metrics": {"latencyMs": latency_ms}
    }))
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

/// The model family's answer to an InvokeModel body, and its token counts
/// (input: the words of every string in the request; output: of the answer).
pub(crate) fn invoke_reply(
    model_id: &str,
    request: &Value,
) -> Result<(Value, Tokens), (u16, &'static str, String)> {
    if request.is_null() {
        return Err((
            400,
            "ValidationException",
            "Malformed input request, please reformat your input and try again.".into(),
        ));
    }
    if let Some(text) = request.get("inputText").and_then(Value::as_str) {
        // Titan embeddings: a small deterministic vector from the text.
        let embedding: Vec<f64> = (0..8)
            .map(|i| ((text.len() + i * 31) % 97) as f64 / 97.0)
            .collect();
        let tokens = Tokens {
            input: words(text),
            output: 0,
        };
        return Ok((
            json!({"embedding": embedding, "inputTextTokenCount": words(text)}),
            tokens,
        ));
    }
    if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        // Anthropic messages API.
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
        return Ok((
            json!({
                "id": "msg_lab", "type": "message", "role": "assistant", "model": model_id,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": tokens.input, "output_tokens": tokens.output}
            }),
            tokens,
        ));
    }
    // Any other family: an echo, with no usage in the body (as several
    // families send), so only the headers count its tokens.
    let text = format!("Echo from {model_id}: {request}");
    let tokens = Tokens {
        input: string_words(request),
        output: words(&text),
    };
    Ok((json!({"outputText": text}), tokens))
}

/// The words of every string in a JSON value.
fn string_words(value: &Value) -> i64 {
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
            0,
        )
        .expect("reply");
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
            0,
        )
        .expect_err("invalid");
        assert_eq!(err.1, "ValidationException");
    }
}
