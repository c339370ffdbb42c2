//! Prompt caching (Converse cache points): the prompt in cache order (tools,
//! system, messages) with its token count, the checks Bedrock makes of the
//! `cachePoint` blocks, and the cache itself, per calling account and model,
//! that turns each request's cache points into read and written tokens.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::reply::{block_tokens, string_words};
use super::{lock, ApiError};

/// At most this many cache points per request, as Bedrock allows.
pub(crate) const MAX_CACHE_POINTS: usize = 4;

const FIVE_MINUTES: Duration = Duration::from_secs(5 * 60);
const ONE_HOUR: Duration = Duration::from_secs(60 * 60);

/// One cache point of a request: the prefix before it (hashed) and its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachePoint {
    /// The hash of the canonical JSON of everything before the point.
    pub(crate) key: u64,
    /// The input tokens of that prefix.
    pub(crate) tokens: i64,
    /// How long a written prefix stays: `5m` (the default) or `1h`.
    pub(crate) ttl: Duration,
}

/// A Converse prompt in cache order: its input tokens and cache points.
#[derive(Debug, Clone, Default)]
pub(crate) struct Prompt {
    /// The input tokens of tools, system and messages.
    pub(crate) tokens: i64,
    /// The cache points, in order.
    pub(crate) points: Vec<CachePoint>,
}

/// What a request's cache points did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheUse {
    /// Tokens of the longest cached prefix found.
    pub(crate) read: i64,
    /// Tokens written beyond it.
    pub(crate) written: i64,
}

fn invalid(message: impl Into<String>) -> ApiError {
    (400, "ValidationException", message.into())
}

/// The prompt of a Converse request, its cache points checked: at most four,
/// type `default`, TTL `5m` or `1h` never increasing along tools → system →
/// messages, and never first in the system prompt or in a message.
pub(crate) fn prompt(request: &Value) -> Result<Prompt, ApiError> {
    let mut builder = Builder::default();
    let tools = request
        .pointer("/toolConfig/tools")
        .and_then(Value::as_array);
    for tool in tools.into_iter().flatten() {
        match tool.get("cachePoint") {
            Some(point) => builder.point(point)?,
            None => builder.piece(&serde_json::json!({"tool": tool}), string_words(tool)),
        }
    }
    let system = request.get("system").and_then(Value::as_array);
    for (i, block) in system.into_iter().flatten().enumerate() {
        match block.get("cachePoint") {
            Some(_) if i == 0 => {
                return Err(invalid(
                    "A cache point cannot be the first block of the system prompt: it marks the end of a prefix.",
                ))
            }
            Some(point) => builder.point(point)?,
            None => builder.piece(&serde_json::json!({"system": block}), block_tokens(block)),
        }
    }
    let messages = request.get("messages").and_then(Value::as_array);
    for (m, message) in messages.into_iter().flatten().enumerate() {
        let role = message.get("role").cloned().unwrap_or(Value::Null);
        let content = message.get("content").and_then(Value::as_array);
        for (i, block) in content.into_iter().flatten().enumerate() {
            match block.get("cachePoint") {
                Some(_) if i == 0 => {
                    return Err(invalid(
                        "A cache point cannot be the first content block of a message: it marks the end of a prefix.",
                    ))
                }
                Some(point) => builder.point(point)?,
                None => builder.piece(
                    &serde_json::json!({"message": m, "role": role, "block": block}),
                    block_tokens(block),
                ),
            }
        }
    }
    Ok(builder.prompt)
}

/// Walks the prompt in order, hashing it as it goes.
#[derive(Default)]
struct Builder {
    hasher: DefaultHasher,
    prompt: Prompt,
}

impl Builder {
    fn piece(&mut self, item: &Value, tokens: i64) {
        let mut text = String::new();
        canonical(item, &mut text);
        text.hash(&mut self.hasher);
        self.prompt.tokens += tokens;
    }

    fn point(&mut self, point: &Value) -> Result<(), ApiError> {
        if self.prompt.points.len() == MAX_CACHE_POINTS {
            return Err(invalid(format!(
                "The request has more than {MAX_CACHE_POINTS} cache points; at most {MAX_CACHE_POINTS} are allowed."
            )));
        }
        match point.get("type").and_then(Value::as_str) {
            Some("default") => {}
            other => {
                return Err(invalid(format!(
                    "The cache point type '{}' is not supported. Supported type: default.",
                    other.unwrap_or_default()
                )))
            }
        }
        let ttl = match point.get("ttl") {
            None | Some(Value::Null) => FIVE_MINUTES,
            Some(Value::String(t)) if t == "5m" => FIVE_MINUTES,
            Some(Value::String(t)) if t == "1h" => ONE_HOUR,
            Some(other) => {
                return Err(invalid(format!(
                    "The cache point TTL {other} is not supported. Supported values: 5m, 1h."
                )))
            }
        };
        if let Some(previous) = self.prompt.points.last() {
            if ttl > previous.ttl {
                return Err(invalid(format!(
                    "A cache point with a TTL of {} cannot follow one with a TTL of {}: TTLs must not increase along tools, system and messages.",
                    ttl_name(ttl),
                    ttl_name(previous.ttl)
                )));
            }
        }
        self.prompt.points.push(CachePoint {
            key: self.hasher.finish(),
            tokens: self.prompt.tokens,
            ttl,
        });
        Ok(())
    }
}

fn ttl_name(ttl: Duration) -> &'static str {
    if ttl == ONE_HOUR {
        "1h"
    } else {
        "5m"
    }
}

/// JSON with object keys sorted, so equal prefixes hash alike however the
/// client ordered its keys.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(item) = map.get(key) {
                    canonical(item, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The cached prefixes, per scope (calling account and model), with their expiry.
#[derive(Debug, Default)]
pub(crate) struct PromptCache {
    entries: Mutex<HashMap<(String, u64), Instant>>,
}

impl PromptCache {
    /// Forgets every prefix.
    pub(crate) fn clear(&self) {
        lock(&self.entries).clear();
    }

    /// Reads the longest cached prefix among `points` (refreshing it) and
    /// writes those beyond it. Points under `min_tokens` (or of an empty
    /// prefix) are ignored, as Bedrock ignores too-short prefixes.
    pub(crate) fn use_points(
        &self,
        scope: &str,
        points: &[CachePoint],
        min_tokens: u64,
        now: Instant,
    ) -> CacheUse {
        let eligible: Vec<&CachePoint> = points
            .iter()
            .filter(|p| p.tokens > 0 && p.tokens as u64 >= min_tokens)
            .collect();
        let Some(longest) = eligible.last() else {
            return CacheUse::default();
        };
        let key = |point: &CachePoint| (scope.to_owned(), point.key);
        let mut entries = lock(&self.entries);
        entries.retain(|_, expiry| *expiry > now);
        let hit = eligible.iter().rposition(|p| entries.contains_key(&key(p)));
        let mut used = CacheUse::default();
        if let Some(i) = hit {
            let point = eligible[i];
            used.read = point.tokens;
            let expiry = entries.entry(key(point)).or_insert(now);
            *expiry = (*expiry).max(now + point.ttl);
        }
        let first_new = hit.map_or(0, |i| i + 1);
        if first_new < eligible.len() {
            used.written = longest.tokens - used.read;
            for point in &eligible[first_new..] {
                entries.insert(key(point), now + point.ttl);
            }
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(system_ttl: Option<&str>, message_ttl: Option<&str>) -> Value {
        let point = |ttl: Option<&str>| match ttl {
            Some(ttl) => json!({"cachePoint": {"type": "default", "ttl": ttl}}),
            None => json!({"cachePoint": {"type": "default"}}),
        };
        json!({
            "system": [{"text": "you are a lab"}, point(system_ttl)],
            "messages": [{"role": "user", "content": [{"text": "a long document"}, point(message_ttl), {"text": "question"}]}]
        })
    }

    /// Cache points get the tokens of their prefix; TTLs may stay or fall.
    #[test]
    fn points_carry_their_prefix_tokens() {
        let prompt = prompt(&request(Some("1h"), None)).expect("valid");
        assert_eq!(prompt.tokens, 8);
        let tokens: Vec<i64> = prompt.points.iter().map(|p| p.tokens).collect();
        assert_eq!(tokens, [4, 7]);
        assert_eq!(prompt.points[0].ttl, ONE_HOUR);
    }

    /// A 5m point followed by a 1h point is refused.
    #[test]
    fn increasing_ttls_are_refused() {
        let err = prompt(&request(None, Some("1h"))).expect_err("increasing");
        assert_eq!(err.1, "ValidationException");
        assert!(
            err.2
                .contains("TTL of 1h cannot follow one with a TTL of 5m"),
            "{}",
            err.2
        );
    }

    /// More than four cache points, a first-block point, a bad type or TTL are refused.
    #[test]
    fn malformed_cache_points_are_refused() {
        let point = json!({"cachePoint": {"type": "default"}});
        let mut content = Vec::new();
        for word in ["a", "b", "c", "d", "e"] {
            content.push(json!({"text": word}));
            content.push(point.clone());
        }
        let five = json!({"messages": [{"role": "user", "content": content}]});
        assert!(prompt(&five).expect_err("five").2.contains("at most 4"));
        let first = json!({"messages": [{"role": "user", "content": [point, {"text": "x"}]}]});
        assert!(prompt(&first).is_err());
        let system_first = json!({"system": [{"cachePoint": {"type": "default"}}]});
        assert!(prompt(&system_first).is_err());
        let bad_type = json!({"system": [{"text": "x"}, {"cachePoint": {"type": "ephemeral"}}]});
        assert!(prompt(&bad_type).is_err());
        let bad_ttl =
            json!({"system": [{"text": "x"}, {"cachePoint": {"type": "default", "ttl": "2h"}}]});
        assert!(prompt(&bad_ttl).is_err());
    }

    /// Key order does not change a prefix; its content does.
    #[test]
    fn prefixes_hash_canonically() {
        let a = json!({"system": [{"text": "x y"}, {"cachePoint": {"type": "default"}}], "messages": []});
        let b = json!({"messages": [], "system": [{"text": "x y"}, {"cachePoint": {"type": "default", "ttl": "5m"}}]});
        let c = json!({"system": [{"text": "x z"}, {"cachePoint": {"type": "default"}}]});
        let key = |r: &Value| prompt(r).expect("valid").points[0].key;
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
    }

    /// A written prefix is read until it expires; a short prefix under the minimum is ignored.
    #[test]
    fn the_cache_reads_writes_and_expires() {
        let cache = PromptCache::default();
        let points = prompt(&request(None, None)).expect("valid").points;
        let now = Instant::now();
        assert_eq!(
            cache.use_points("a/m", &points, 0, now),
            CacheUse {
                read: 0,
                written: 7
            }
        );
        assert_eq!(
            cache.use_points("a/m", &points, 0, now),
            CacheUse {
                read: 7,
                written: 0
            }
        );
        assert_eq!(
            cache.use_points("b/m", &points, 0, now),
            CacheUse {
                read: 0,
                written: 7
            },
            "another account has its own cache"
        );
        let later = now + Duration::from_secs(301);
        assert_eq!(
            cache.use_points("a/m", &points, 0, later),
            CacheUse {
                read: 0,
                written: 7
            }
        );
        assert_eq!(
            cache.use_points("c/m", &points, 5, now),
            CacheUse {
                read: 0,
                written: 7
            }
        );
        assert_eq!(
            cache.use_points("d/m", &points, 8, now),
            CacheUse::default()
        );
    }
}
