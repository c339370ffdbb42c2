//! Structured output (Converse `outputConfig.textFormat`): the checks Bedrock
//! makes of a `json_schema` format (its schema is JSON text holding an
//! object, using only the supported subset of JSON Schema 2020-12), and the
//! answer: a minimal JSON document that validates against the schema, or, on
//! request, one that does not.

use serde_json::{json, Map, Value};

use super::ApiError;

/// The keywords refused when the knobs name none: those of JSON Schema
/// 2020-12 outside the subset Bedrock's structured output supports.
pub const DEFAULT_UNSUPPORTED_SCHEMA_KEYWORDS: [&str; 8] = [
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "patternProperties",
];

/// Beyond this depth objects keep only their required properties and
/// arrays are empty, so recursive schemas (`$ref: "#"`) end.
const SOFT_DEPTH: usize = 12;

/// Beyond this depth nothing more is generated (a `null`).
const HARD_DEPTH: usize = 24;

/// How many array items `minItems` may ask for.
const MAX_ITEMS: u64 = 16;

fn invalid(message: impl Into<String>) -> ApiError {
    (400, "ValidationException", message.into())
}

/// The schema a Converse request asks its answer to match, checked; `None`
/// when it asks for no structured output. `refused`: the unsupported keywords.
pub(crate) fn requested_schema(
    request: &Value,
    refused: &[String],
) -> Result<Option<Value>, ApiError> {
    let Some(format) = request
        .pointer("/outputConfig/textFormat")
        .filter(|f| !f.is_null())
    else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {}
        other => {
            return Err(invalid(format!(
                "The output format type '{}' is not supported. Supported types: json_schema.",
                other.unwrap_or_default()
            )))
        }
    }
    let text = format
        .pointer("/structure/jsonSchema/schema")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid("The json_schema output format requires structure.jsonSchema.schema, a JSON schema as a string.")
        })?;
    let schema: Value = serde_json::from_str(text)
        .map_err(|e| invalid(format!("The provided JSON schema is not valid JSON: {e}.")))?;
    if !schema.is_object() {
        return Err(invalid("The provided JSON schema must be a JSON object."));
    }
    if let Some((keyword, at)) = unsupported_keyword(&schema, refused, "") {
        let at = if at.is_empty() { "/".to_owned() } else { at };
        return Err(invalid(format!(
            "The provided JSON schema is not supported: keyword '{keyword}' at '{at}' is not supported."
        )));
    }
    Ok(Some(schema))
}

/// The refused keywords as the knobs give them, or the default list.
pub(crate) fn refused_keywords(knobs: Option<&Vec<String>>) -> Vec<String> {
    knobs.cloned().unwrap_or_else(|| {
        DEFAULT_UNSUPPORTED_SCHEMA_KEYWORDS
            .iter()
            .map(|k| (*k).to_owned())
            .collect()
    })
}

/// The first refused keyword (or non-local `$ref`) in the schema, with the
/// JSON pointer of the schema object holding it. Only schema positions are
/// walked, so a property *named* `minimum` is no keyword.
fn unsupported_keyword(schema: &Value, refused: &[String], at: &str) -> Option<(String, String)> {
    let Value::Object(map) = schema else {
        return None;
    };
    for (key, value) in map {
        let local_ref = key == "$ref" && value.as_str().is_some_and(|r| r.starts_with('#'));
        if refused.iter().any(|r| r == key) || (key == "$ref" && !local_ref) {
            return Some((key.clone(), at.to_owned()));
        }
    }
    for (key, value) in map {
        let here = format!("{at}/{}", escape(key));
        let found =
            match key.as_str() {
                "properties" | "patternProperties" | "$defs" | "definitions"
                | "dependentSchemas" => value.as_object().and_then(|subs| {
                    subs.iter().find_map(|(name, sub)| {
                        unsupported_keyword(sub, refused, &format!("{here}/{}", escape(name)))
                    })
                }),
                "anyOf" | "oneOf" | "allOf" | "prefixItems" => value.as_array().and_then(|subs| {
                    subs.iter().enumerate().find_map(|(i, sub)| {
                        unsupported_keyword(sub, refused, &format!("{here}/{i}"))
                    })
                }),
                "items"
                | "additionalItems"
                | "additionalProperties"
                | "not"
                | "if"
                | "then"
                | "else"
                | "contains"
                | "propertyNames"
                | "unevaluatedItems"
                | "unevaluatedProperties" => match value {
                    Value::Array(subs) => subs.iter().enumerate().find_map(|(i, sub)| {
                        unsupported_keyword(sub, refused, &format!("{here}/{i}"))
                    }),
                    sub => unsupported_keyword(sub, refused, &here),
                },
                _ => None,
            };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// A JSON pointer segment (RFC 6901).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// A minimal document that validates against `schema`: every property of an
/// object, one item of an array, the first `enum` / `const` / `anyOf` /
/// `oneOf` branch, 1 for numbers, `true`, and `seed` for strings.
pub(crate) fn instance(schema: &Value, seed: &str) -> Value {
    generate(schema, schema, seed, 0)
}

/// A JSON document that does not validate against `schema`: the valid one
/// without its first required property, else `{"unexpected": true}` (or
/// `[{"unexpected": true}]` when an object schema would accept that).
pub(crate) fn mismatch(schema: &Value, seed: &str) -> Value {
    let first_required = schema
        .get("required")
        .and_then(Value::as_array)
        .and_then(|names| names.iter().find_map(Value::as_str));
    if let (Value::Object(mut valid), Some(name)) = (instance(schema, seed), first_required) {
        valid.remove(name);
        return Value::Object(valid);
    }
    let unexpected = json!({"unexpected": true});
    let object_schema = schema.as_object().is_some_and(|m| type_of(m) == "object");
    let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
    if object_schema && !closed {
        json!([unexpected])
    } else {
        unexpected
    }
}

fn generate(schema: &Value, root: &Value, seed: &str, depth: usize) -> Value {
    if depth > HARD_DEPTH {
        return Value::Null;
    }
    // `true` (or any non-object) accepts anything.
    let Value::Object(map) = schema else {
        return json!(seed);
    };
    if let Some(constant) = map.get("const") {
        return constant.clone();
    }
    if let Some(first) = map
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(target) = map
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| resolve(root, r))
    {
        return generate(target, root, seed, depth + 1);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(first) = map
            .get(key)
            .and_then(Value::as_array)
            .and_then(|b| b.first())
        {
            return generate(first, root, seed, depth + 1);
        }
    }
    if let Some(branches) = map.get("allOf").and_then(Value::as_array) {
        // Every branch must hold: merge the objects they generate.
        let mut rest = map.clone();
        rest.remove("allOf");
        let mut merged = if rest.contains_key("type") || rest.contains_key("properties") {
            generate(&Value::Object(rest), root, seed, depth + 1)
        } else {
            Value::Null
        };
        for branch in branches {
            merged = merge(merged, generate(branch, root, seed, depth + 1));
        }
        return merged;
    }
    match type_of(map) {
        "object" => object(map, root, seed, depth),
        "array" => array(map, root, seed, depth),
        "integer" | "number" => json!(1),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!(string_for(map, seed)),
    }
}

fn object(map: &Map<String, Value>, root: &Value, seed: &str, depth: usize) -> Value {
    let required: Vec<&str> = map
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = Map::new();
    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        for (name, sub) in properties {
            if depth < SOFT_DEPTH || required.contains(&name.as_str()) {
                out.insert(name.clone(), generate(sub, root, seed, depth + 1));
            }
        }
    }
    for name in required {
        if !out.contains_key(name) {
            out.insert(name.to_owned(), json!(seed));
        }
    }
    Value::Object(out)
}

fn array(map: &Map<String, Value>, root: &Value, seed: &str, depth: usize) -> Value {
    let min = map
        .get("minItems")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(MAX_ITEMS) as usize;
    let mut items: Vec<Value> = map
        .get("prefixItems")
        .and_then(Value::as_array)
        .map(|prefix| {
            prefix
                .iter()
                .map(|s| generate(s, root, seed, depth + 1))
                .collect()
        })
        .unwrap_or_default();
    let wanted = if depth >= SOFT_DEPTH { min } else { min.max(1) };
    let item = map.get("items");
    if item != Some(&Value::Bool(false)) {
        while items.len() < wanted {
            items.push(match item {
                Some(schema) => generate(schema, root, seed, depth + 1),
                None => json!(seed),
            });
        }
    }
    if let Some(max) = map.get("maxItems").and_then(Value::as_u64) {
        items.truncate(max as usize);
    }
    Value::Array(items)
}

/// The schema's type: the first non-null one named, else inferred from its keywords.
fn type_of(map: &Map<String, Value>) -> &str {
    match map.get("type") {
        Some(Value::String(t)) => t,
        Some(Value::Array(types)) => {
            let names: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            names
                .iter()
                .find(|t| **t != "null")
                .or_else(|| names.first())
                .copied()
                .unwrap_or("string")
        }
        _ if ["properties", "required", "additionalProperties"]
            .iter()
            .any(|k| map.contains_key(*k)) =>
        {
            "object"
        }
        _ if map.contains_key("items") || map.contains_key("prefixItems") => "array",
        _ => "string",
    }
}

/// A string for the schema: a sample of its `format`, else the seed.
fn string_for(map: &Map<String, Value>, seed: &str) -> String {
    match map.get("format").and_then(Value::as_str) {
        Some("date-time") => "2026-01-01T00:00:00Z",
        Some("date") => "2026-01-01",
        Some("time") => "00:00:00Z",
        Some("email") => "lab@example.com",
        Some("uri" | "url") => "https://example.com/lab",
        Some("uuid") => "00000000-0000-4000-8000-000000000000",
        Some("ipv4") => "127.0.0.1",
        Some("ipv6") => "::1",
        Some("hostname") => "example.com",
        _ => seed,
    }
    .to_owned()
}

/// A local reference (`#`, `#/$defs/x`) inside the root schema.
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        Some(root)
    } else {
        root.pointer(pointer)
    }
}

fn merge(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Object(mut a), Value::Object(b)) => {
            for (key, value) in b {
                a.entry(key).or_insert(value);
            }
            Value::Object(a)
        }
        (Value::Null, b) => b,
        (a, _) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(schema: &str) -> Value {
        json!({"outputConfig": {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {"schema": schema, "name": "person"}}}}})
    }

    fn defaults() -> Vec<String> {
        refused_keywords(None)
    }

    /// A refused keyword is named with the pointer of the schema holding it.
    #[test]
    fn an_unsupported_keyword_is_refused_with_its_place() {
        let schema = r#"{"type":"object","properties":{"age":{"type":"integer","minimum":0}}}"#;
        let err = requested_schema(&request_with(schema), &defaults()).expect_err("refused");
        assert_eq!(
            err,
            (
                400,
                "ValidationException",
                "The provided JSON schema is not supported: keyword 'minimum' at '/properties/age' is not supported.".to_owned()
            )
        );
    }

    /// A property named like a keyword is no keyword; a remote $ref is refused, a local one is not.
    #[test]
    fn only_schema_positions_and_remote_refs_are_refused() {
        let named = r##"{"type":"object","properties":{"minimum":{"$ref":"#/$defs/n"}},"$defs":{"n":{"type":"number"}}}"##;
        assert!(requested_schema(&request_with(named), &defaults()).is_ok());
        let remote =
            r#"{"type":"object","properties":{"x":{"$ref":"https://example.com/s.json"}}}"#;
        let err = requested_schema(&request_with(remote), &defaults()).expect_err("remote ref");
        assert!(
            err.2.contains("keyword '$ref' at '/properties/x'"),
            "{}",
            err.2
        );
    }

    /// The format type must be json_schema and the schema JSON text holding an object.
    #[test]
    fn malformed_formats_are_validation_errors() {
        let wrong_type = json!({"outputConfig": {"textFormat": {"type": "xml"}}});
        assert_eq!(
            requested_schema(&wrong_type, &defaults())
                .expect_err("type")
                .1,
            "ValidationException"
        );
        assert!(requested_schema(&request_with("{not json"), &defaults()).is_err());
        assert!(requested_schema(&request_with("[1]"), &defaults()).is_err());
        assert_eq!(requested_schema(&json!({}), &defaults()), Ok(None));
    }

    /// Generated documents validate against schemas using refs, unions, enums, formats and nesting.
    #[test]
    fn generated_instances_validate() {
        let schemas = [
            json!({"type": "object", "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "score": {"type": ["null", "number"]},
                "ok": {"type": "boolean"},
                "kind": {"enum": ["a", "b"]},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "when": {"type": "string", "format": "date-time"},
                "address": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false},
                "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                "node": {"$ref": "#/$defs/node"}
            }, "required": ["name", "age", "node"], "additionalProperties": false,
               "$defs": {"node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}}),
            json!({"type": "array", "items": {"const": 3}}),
            json!({"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                             {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}]}),
        ];
        for schema in schemas {
            let validator = jsonschema::validator_for(&schema).expect("valid schema");
            let document = instance(&schema, "hello there");
            assert!(validator.is_valid(&document), "{document} for {schema}");
            let wrong = mismatch(&schema, "hello there");
            assert!(!validator.is_valid(&wrong), "{wrong} matches {schema}");
        }
    }
}
