//! Hostile input: property tests and edge cases over event parsing, job
//! parsing and template rendering. Whatever arrives, the relay answers with a
//! job or a clear error: never a panic, a stack overflow, or work or memory
//! without bound.
//!
//! The property tests run 256 cases each so CI stays fast (a few seconds per
//! test). To search longer, raise the count:
//!
//! ```text
//! PROPTEST_CASES=20000 cargo test --test hostile_input
//! ```
//!
//! The last test drives the built function in the lab (`scripts/setup` installs
//! its Python tools).

use std::time::{Duration, Instant};

use bedrock_relay::{Input, InputError, Job, Payload, RelayError, Renderer, Scope, MAX_JSON_DEPTH};
use lab::runtime_api::Outcome;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

mod common;
use common::{error_type, Bench, TIMEOUT};

/// The default `RELAY_MAX_EVENT_BYTES`: EventBridge's 256 KiB entry limit.
const EVENTBRIDGE_LIMIT: usize = 256 * 1024;
/// Lambda's asynchronous invocation payload limit (1 MiB since 2025).
const LAMBDA_ASYNC_LIMIT: usize = 1024 * 1024;
/// The most `RELAY_MAX_EVENT_BYTES` may be set to (Lambda's synchronous limit).
const MAX_CONFIGURABLE_EVENT_BYTES: usize = 6 * 1024 * 1024;
/// Any one case of a property test; generous for a debug build on a busy CI host.
const CASE_BOUND: Duration = Duration::from_secs(2);

fn config() -> ProptestConfig {
    // `PROPTEST_CASES` still wins: `ProptestConfig::default()` reads it.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, nested up to a few levels, with the keys a job uses among
/// the random ones so that parsing gets past the first unknown field.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("prompt".to_owned()),
        Just("model".to_owned()),
        Just("id".to_owned()),
        Just("items".to_owned()),
        Just("items_from".to_owned()),
        Just("messages".to_owned()),
        Just("invoke".to_owned()),
        Just("body".to_owned()),
        Just("system".to_owned()),
        Just("inference".to_owned()),
        Just("maxTokens".to_owned()),
        Just("documents".to_owned()),
        Just("destination".to_owned()),
        Just("target".to_owned()),
        Just("metadata".to_owned()),
        Just("role".to_owned()),
        Just("content".to_owned()),
        Just("text".to_owned()),
        Just("detail".to_owned()),
        Just("detail-type".to_owned()),
        Just("source".to_owned()),
        "[a-z_-]{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(json!("Bedrock Relay Job")),
        Just(json!("s3://bucket/key")),
        Just(json!("amazon.nova-lite-v1:0")),
        Just(json!("{{ item }}")),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// `value` wrapped in `depth` arrays or objects.
fn nest(value: Value, depth: usize, in_objects: bool) -> Value {
    (0..depth).fold(value, |inner, _| match in_objects {
        true => json!({ "x": inner }),
        false => json!([inner]),
    })
}

/// The text of a nesting `depth` levels deep, built without recursion.
fn nested_text(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn job_event(detail: &Value) -> Value {
    json!({
        "version": "0", "id": "6c1e0000-0000-4000-8000-000000000001",
        "detail-type": "Bedrock Relay Job", "source": "com.example.hostile",
        "account": "222222222222", "time": "2026-11-28T10:00:00Z",
        "region": "us-east-1", "resources": [], "detail": detail,
    })
}

/// What the handler does with raw bytes before any AWS call: guard, shape,
/// job, and (for a job) resolution. Returns the error text, if any.
fn run_input(bytes: &[u8], limit: usize) -> Result<(), String> {
    let payload = Payload::from_bytes(bytes, limit);
    let input = Input::from_payload(&payload, None).map_err(|e| e.to_string())?;
    input
        .job
        .resolve(Some("amazon.nova-lite-v1:0"), "fallback-id")
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn assert_clear(result: Result<(), String>) {
    if let Err(message) = result {
        assert!(!message.trim().is_empty(), "an error with no message");
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes at all: a job or an error with a message.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        assert_clear(run_input(&bytes, 256));
        assert_clear(run_input(&bytes, EVENTBRIDGE_LIMIT));
    }

    /// Broken JSON: a valid event cut short or with a byte flipped.
    #[test]
    fn mangled_json_never_panics(detail in json_value(), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
        let text = job_event(&detail).to_string().into_bytes();
        assert_clear(run_input(&text[..cut.index(text.len() + 1)], EVENTBRIDGE_LIMIT));
        let mut flipped = text.clone();
        let at = flip.0.index(flipped.len());
        flipped[at] = flip.1;
        assert_clear(run_input(&flipped, EVENTBRIDGE_LIMIT));
    }

    /// Any JSON as a job event's `detail`, as a bare event, and straight into
    /// `Job::from_value` + `Job::resolve`.
    #[test]
    fn arbitrary_json_jobs_never_panic(value in json_value()) {
        assert_clear(run_input(job_event(&value).to_string().as_bytes(), EVENTBRIDGE_LIMIT));
        assert_clear(run_input(value.to_string().as_bytes(), EVENTBRIDGE_LIMIT));
        if let Ok(job) = Job::from_value(value) {
            assert_clear(job.resolve(None, "").map(|_| ()).map_err(|e| e.to_string()));
        }
    }

    /// Nesting around the limit, in arrays and in objects, inside a job.
    #[test]
    fn deep_nesting_is_refused_by_the_guard(depth in 0usize..200, in_objects in any::<bool>()) {
        let detail = json!({"prompt": "p", "metadata": {"deep": nest(json!(1), depth, in_objects)}});
        let text = job_event(&detail).to_string();
        let payload = Payload::from_bytes(text.as_bytes(), EVENTBRIDGE_LIMIT);
        let result = Input::from_payload(&payload, None);
        // The envelope, `detail` and `metadata` are three levels around it.
        if depth + 3 > MAX_JSON_DEPTH {
            let is_too_deep = matches!(result, Err(InputError::TooDeep { .. }));
            prop_assert!(is_too_deep, "depth {depth}: {result:?}");
        } else {
            prop_assert!(result.is_ok(), "depth {depth}: {result:?}");
        }
    }

    /// Any template text over a scope with event, item and documents: an
    /// answer or an error with a message, within the bound.
    #[test]
    fn arbitrary_templates_render_or_fail_in_bounded_time(
        pieces in prop::collection::vec(template_piece(), 0..24),
        item in json_value(),
    ) {
        let source: String = pieces.concat();
        let mut scope = Scope::event(Some(job_event(&json!({"prompt": "p", "n": 3}))))
            .with_item(&item);
        scope.documents = Some(vec![json!({"name": "a", "text": "doc text"})]);
        let started = Instant::now();
        let result = Renderer::new().render("prompt", &source, &scope);
        prop_assert!(started.elapsed() < CASE_BOUND, "{:?} for {source:?}", started.elapsed());
        if let Err(err) = result {
            prop_assert!(!err.message.trim().is_empty(), "empty message for {source:?}");
        }
    }

    /// The engine's whole offer (every filter, test and function it ships,
    /// allowed or not) with huge, negative and zero numeric arguments, nested
    /// and chained, in loops and `set`s, over a 1 MB document: each case is
    /// text or an error with a message, within the bound, and never a panic
    /// or an allocation failure (either would end this test process).
    #[test]
    fn the_engines_whole_offer_with_hostile_arguments_renders_or_fails_cleanly(
        source in offer_template(),
        item in json_value(),
    ) {
        let mut scope = Scope::event(Some(job_event(&json!({"prompt": "p"})))).with_item(&item);
        scope.documents = Some(vec![json!({"name": "big", "text": "ab\n".repeat(350_000)})]);
        let started = Instant::now();
        let result = Renderer::new().render("prompt", &source, &scope);
        prop_assert!(started.elapsed() < CASE_BOUND, "{:?} for {source}", started.elapsed());
        if let Err(err) = result {
            prop_assert!(!err.message.trim().is_empty(), "empty message for {source}");
        }
    }

    /// Loops nested to any depth with any bounds: rendered, or stopped by fuel
    /// or the output limit with a clear message, within the bound.
    #[test]
    fn nested_loops_stop_within_the_bound(bounds in prop::collection::vec(0u32..200_000, 1..6)) {
        let mut source = String::new();
        for (i, n) in bounds.iter().enumerate() {
            source.push_str(&format!("{{% for v{i} in range({n}) %}}"));
        }
        source.push_str("{{ loop.index }}");
        source.push_str(&"{% endfor %}".repeat(bounds.len()));
        let started = Instant::now();
        let result = Renderer::new().render("prompt", &source, &Scope::default());
        prop_assert!(started.elapsed() < CASE_BOUND, "{:?} for {source}", started.elapsed());
        if let Err(err) = result {
            let m = &err.message;
            prop_assert!(
                m.contains("runs too long") || m.contains("over") || m.contains("too many elements"),
                "{m}"
            );
        }
    }
}

/// Every filter the template engine ships (minijinja 2.24 with the
/// `builtins` feature) and the relay's own: the whole offer, allowed or not.
const ENGINE_FILTERS: &[&str] = &[
    "safe",
    "escape",
    "e",
    "lower",
    "upper",
    "title",
    "capitalize",
    "replace",
    "length",
    "count",
    "dictsort",
    "items",
    "reverse",
    "trim",
    "join",
    "split",
    "lines",
    "default",
    "d",
    "round",
    "abs",
    "int",
    "float",
    "attr",
    "first",
    "last",
    "min",
    "max",
    "sort",
    "list",
    "string",
    "bool",
    "batch",
    "slice",
    "sum",
    "indent",
    "select",
    "reject",
    "selectattr",
    "rejectattr",
    "map",
    "groupby",
    "unique",
    "chain",
    "zip",
    "pprint",
    "format",
    "tojson",
    "urlencode",
    "safe_id",
];

/// Every test the engine ships.
const ENGINE_TESTS: &[&str] = &[
    "undefined",
    "defined",
    "none",
    "safe",
    "escaped",
    "boolean",
    "odd",
    "even",
    "divisibleby",
    "number",
    "integer",
    "int",
    "float",
    "string",
    "sequence",
    "iterable",
    "mapping",
    "startingwith",
    "endingwith",
    "lower",
    "upper",
    "sameas",
    "eq",
    "equalto",
    "ne",
    "lt",
    "lessthan",
    "le",
    "gt",
    "greaterthan",
    "ge",
    "in",
    "true",
    "false",
    "filter",
    "test",
];

/// Numeric and other arguments chosen to overflow, underflow, divide by zero
/// or ask for far too much.
fn hostile_argument() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("1".to_owned()),
        Just("2".to_owned()),
        Just("100000".to_owned()),
        Just("4294967296".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("170141183460469231731687303715884105727".to_owned()),
        Just("1e308".to_owned()),
        Just("-1e308".to_owned()),
        Just("''".to_owned()),
        Just("'x'".to_owned()),
        Just("'%999999999s'".to_owned()),
        Just("true".to_owned()),
        Just("none".to_owned()),
        Just("item".to_owned()),
        Just("documents[0].text".to_owned()),
        Just("range(100000)".to_owned()),
        Just("'upper'".to_owned()),
        Just("'odd'".to_owned()),
        Just("attribute='x'".to_owned()),
        Just("width=9223372036854775807".to_owned()),
    ]
}

/// A value to pipe into the filters: the item, a large document, ranges with
/// hostile bounds, literals.
fn piped_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("item".to_owned()),
        Just("documents[0].text".to_owned()),
        Just("documents".to_owned()),
        Just("event".to_owned()),
        Just("'ab\\n'".to_owned()),
        Just("[1, 2, 3]".to_owned()),
        Just("{'a': [1, 2]}".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("1e308".to_owned()),
        (hostile_argument(), hostile_argument(), hostile_argument())
            .prop_map(|(a, b, c)| format!("range({a}, {b}, {c})")),
    ]
}

/// One call of a filter with zero to three hostile arguments.
fn filter_call() -> impl Strategy<Value = String> {
    (
        prop::sample::select(ENGINE_FILTERS),
        prop::collection::vec(hostile_argument(), 0..4),
    )
        .prop_map(|(name, args)| match args.is_empty() {
            true => name.to_owned(),
            false => format!("{name}({})", args.join(", ")),
        })
}

/// A template over the engine's whole offer: filter chains, tests, calls,
/// and the same inside loops and `set`s.
fn offer_template() -> impl Strategy<Value = String> {
    let chain = || {
        (piped_value(), prop::collection::vec(filter_call(), 1..5))
            .prop_map(|(value, filters)| format!("{value}|{}", filters.join("|")))
    };
    let expression = || {
        let test = (
            piped_value(),
            prop::sample::select(ENGINE_TESTS),
            prop::collection::vec(hostile_argument(), 0..2),
        )
            .prop_map(|(value, name, args)| match args.is_empty() {
                true => format!("{value} is {name}"),
                false => format!("{value} is {name}({})", args.join(", ")),
            });
        prop_oneof![
            chain(),
            test,
            (hostile_argument(), hostile_argument()).prop_map(|(a, b)| format!("range({a}, {b})")),
            Just("dict(a=item, b=item)".to_owned()),
            Just("namespace(x=item)".to_owned()),
            Just("debug()".to_owned()),
            Just("[item, item]".to_owned()),
            Just("item[1:99999999999]".to_owned()),
        ]
    };
    prop_oneof![
        expression().prop_map(|e| format!("{{{{ {e} }}}}")),
        (expression(), expression()).prop_map(|(a, b)| {
            format!("{{% for x in range(1000) %}}{{% set y = {a} %}}{{{{ y }}}}{{{{ {b} }}}}{{% endfor %}}")
        }),
        (chain(), 1..40usize).prop_map(|(e, n)| {
            let sets: String = (0..n)
                .map(|i| format!("{{% set v{i} = {} %}}", e.replace("item", &format!("v{}", i.max(1) - 1))))
                .collect();
            format!("{{% set v0 = item %}}{sets}{{{{ v{} }}}}", n - 1)
        }),
    ]
}

/// Bits of template syntax, hostile and plain, to be strung together.
fn template_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("{{ ".to_owned()),
        Just(" }}".to_owned()),
        Just("{% ".to_owned()),
        Just(" %}".to_owned()),
        Just("{# ".to_owned()),
        Just(" #}".to_owned()),
        Just("{{ item }}".to_owned()),
        Just("{{ detail.n }}".to_owned()),
        Just("{{ event.source|upper }}".to_owned()),
        Just("{{ documents[0].text }}".to_owned()),
        Just("{% for a in range(1000) %}".to_owned()),
        Just("{% for b in range(100000) %}".to_owned()),
        Just("{% endfor %}".to_owned()),
        Just("{% if item %}".to_owned()),
        Just("{% endif %}".to_owned()),
        Just("{% macro m(n) %}{{ m(n) }}{% endmacro %}".to_owned()),
        Just("{{ m(1) }}".to_owned()),
        Just("{% set s = range(100000)|join(',') %}".to_owned()),
        Just("{{ s|replace('', s) }}".to_owned()),
        Just("{{ range(100000)|join(s) }}".to_owned()),
        Just("{{ s|indent(100000) }}".to_owned()),
        Just("{{ 'x' * 100000000 }}".to_owned()),
        Just("{{ s ~ s }}".to_owned()),
        Just("{% include 'x' %}".to_owned()),
        Just("{% extends 'x' %}".to_owned()),
        Just("{% import 'x' as y %}".to_owned()),
        Just("{{ env }}".to_owned()),
        Just("{{ debug() }}".to_owned()),
        Just("{{ nope.attr.deeper }}".to_owned()),
        Just("{{ item.missing }}".to_owned()),
        Just("{% raw %}".to_owned()),
        Just("{% endraw %}".to_owned()),
        Just("{{ {'a': {'b': 1}} }}".to_owned()),
        Just("'\"".to_owned()),
        "[ -~]{0,12}",
    ]
}

/// An event one byte over the limit: `EventTooLarge`, saying what to do.
#[test]
fn events_over_the_size_limits_are_too_large_with_a_fix() {
    for limit in [EVENTBRIDGE_LIMIT, LAMBDA_ASYNC_LIMIT] {
        let padding = "x".repeat(limit);
        let body = json!({"prompt": padding}).to_string();
        let err = Input::from_payload(&Payload::from_bytes(body.as_bytes(), limit), None)
            .expect_err("over the limit");
        assert!(
            matches!(err, InputError::TooLarge { bytes, limit: l } if bytes == body.len() && l == limit),
            "{err:?}"
        );
        let relay_error = RelayError::from(err);
        assert_eq!(relay_error.code(), "EventTooLarge");
        assert!(!relay_error.is_retryable());
        let message = relay_error.to_string();
        assert!(
            message.contains(&format!("over the {limit}-byte limit")),
            "{message}"
        );
        assert!(message.contains("put large inputs in S3"), "{message}");
    }
    // Exactly at the limit is fine.
    let body = json!({"prompt": "x"}).to_string();
    assert!(run_input(body.as_bytes(), body.len()).is_ok());
}

/// JSON nested 10 000 levels deep, as an event, inside a job and as
/// `RELAY_DEFAULT_JOB` text: a clear error, no stack overflow.
#[test]
fn json_nested_ten_thousand_levels_deep_is_a_clear_error() {
    let deep = nested_text(10_000);
    for body in [
        deep.clone(),
        format!(r#"{{"prompt":"p","metadata":{{"x":{deep}}}}}"#),
        job_event(&json!({"prompt": "p"})).to_string().replace(
            r#""prompt":"p""#,
            &format!(r#""prompt":"p","metadata":{{"x":{deep}}}"#),
        ),
    ] {
        let started = Instant::now();
        let err = Input::from_payload(
            &Payload::from_bytes(body.as_bytes(), EVENTBRIDGE_LIMIT),
            None,
        )
        .expect_err("too deep");
        assert!(started.elapsed() < CASE_BOUND);
        assert!(
            matches!(
                err,
                InputError::TooDeep {
                    limit: MAX_JSON_DEPTH
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("more than 100 levels deep"), "{message}");
        assert!(message.contains("flatten it"), "{message}");
        assert_eq!(RelayError::from(err).code(), "InvalidEvent");
    }
    // `RELAY_DEFAULT_JOB` and `items_from` lines are parsed with serde_json's own limit.
    let err = Job::from_json(&format!(r#"{{"prompt":"p","metadata":{{"x":{deep}}}}}"#))
        .expect_err("too deep");
    assert!(
        err.to_string().contains("recursion limit exceeded"),
        "{err}"
    );
}

/// 200 000 items parse (the event is within the largest configurable limit)
/// and resolve quickly; the relay then refuses them over `RELAY_MAX_ITEMS`
/// (see the lab test below).
#[test]
fn a_batch_of_200_000_items_parses_without_blowing_up() {
    let items: Vec<Value> = (0..200_000).map(Value::from).collect();
    let body = json!({"prompt": "{{ item }}", "items": items}).to_string();
    assert!(body.len() > EVENTBRIDGE_LIMIT && body.len() < MAX_CONFIGURABLE_EVENT_BYTES);
    let err = run_input(body.as_bytes(), EVENTBRIDGE_LIMIT).expect_err("over 256 KiB");
    assert!(err.contains("put large inputs in S3"), "{err}");
    let started = Instant::now();
    let input = Input::from_payload(
        &Payload::from_bytes(body.as_bytes(), MAX_CONFIGURABLE_EVENT_BYTES),
        None,
    )
    .expect("parses");
    input
        .job
        .resolve(Some("amazon.nova-lite-v1:0"), "batch")
        .expect("resolves: the item limit is the relay's, at run time");
    assert!(started.elapsed() < CASE_BOUND, "{:?}", started.elapsed());
}

/// Templates that try to read what they must not, or to run or grow without
/// bound: each a clear error, quickly.
#[test]
fn templates_reading_forbidden_things_or_running_away_get_clear_errors() {
    let r = Renderer::new();
    let scope = Scope::event(Some(job_event(&json!({"prompt": "p"}))));
    let cases: [(&str, &str); 14] = [
        ("{{ env }}", "`env` is undefined"),
        ("{{ env('HOME') }}", "unknown function"),
        ("{% include '/etc/passwd' %}", "cannot include"),
        (
            "{% import '/etc/passwd' as p %}",
            "cannot include, import or extend",
        ),
        (
            "{% extends '/etc/passwd' %}",
            "cannot include, import or extend",
        ),
        ("{{ debug() }}", "unknown function"),
        ("{{ range(10**9) }}", "`*` is not available"),
        ("{{ range(1000000000) }}", "range has too many elements"),
        ("{{ 'x' * 100000000 }}", "`*` is not available"),
        (
            "{% set s = 'ab' %}{% for i in range(40) %}{% set s = s ~ s %}{% endfor %}",
            "`~` is not available",
        ),
        (
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
            "runs too long",
        ),
        // Macros are not compiled in, so they cannot recurse.
        (
            "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
            "unknown statement macro: not available",
        ),
        (
            "{{ detail.prompt.nope.deeper }}",
            "is undefined; templates see",
        ),
        (
            "{% set s = range(100000)|join(',') %}{{ s|replace('', s) }}",
            "would make over 4194304 bytes",
        ),
    ];
    for (source, expected) in cases {
        let started = Instant::now();
        let err = r
            .render("prompt", source, &scope)
            .expect_err(&format!("{source} must fail"));
        assert!(
            started.elapsed() < CASE_BOUND,
            "{source}: {:?}",
            started.elapsed()
        );
        assert!(err.message.contains(expected), "{source}: {}", err.message);
        assert_eq!(err.field, "prompt");
    }
}

/// Long chains of operators or filters, which the engine's parser and
/// compiler recurse through: refused by length before they can overflow the
/// stack; chains just under the limit render.
#[test]
fn long_operator_and_filter_chains_are_refused_before_they_overflow_the_stack() {
    let r = Renderer::new();
    let scope = Scope::default();
    for chain in ["|e", "-1", ".a", "|list", " and 1"] {
        let source = format!("{{{{ 1{} }}}}", chain.repeat(3000));
        let err = r
            .render("prompt", &source, &scope)
            .expect_err("over the length limit");
        assert!(err.message.contains("over 1024 bytes"), "{}", err.message);
        // Just under the limit: an answer or an ordinary error, no overflow.
        let source = format!("{{{{ 1{} }}}}", chain.repeat(1000 / chain.len()));
        let _ = r.render("prompt", &source, &scope);
    }
    // Nested blocks are bounded by the engine's own recursion limit.
    let nested = format!(
        "{}x{}",
        "{% if true %}".repeat(3000),
        "{% endif %}".repeat(3000)
    );
    let err = r.render("prompt", &nested, &scope).expect_err("too deep");
    assert!(err.message.contains("recursion"), "{}", err.message);
}

/// The built function, through the Runtime API: 200 000 items (in an event
/// within the largest configurable size), JSON 10 000 levels deep and a
/// runaway template each end in a non-retryable error with a record, and the
/// model is never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_refuses_hostile_events_without_calling_the_model() {
    let bench = Bench::start(&[
        (
            "RELAY_MAX_EVENT_BYTES",
            &MAX_CONFIGURABLE_EVENT_BYTES.to_string(),
        ),
        ("RELAY_MAX_ITEMS", "10000"),
    ])
    .await;
    let logs = || bench.function.logs().join("\n");
    let event = |id: &str, detail: Value| {
        let mut event = job_event(&detail);
        event["id"] = json!(id);
        event.to_string().into_bytes()
    };
    let model = "amazon.nova-lite-v1:0";

    let id = "6c1e0000-0000-4000-8000-0000000200000";
    let items: Vec<Value> = (0..200_000).map(Value::from).collect();
    let outcome = bench
        .invoke_bytes(
            event(
                id,
                json!({"model": model, "prompt": "{{ item }}", "items": items}),
            ),
            TIMEOUT,
        )
        .await;
    assert_eq!(
        error_type(&outcome),
        "NonRetryable.InvalidJob",
        "{}",
        logs()
    );
    let Outcome::Error { error_message, .. } = &outcome else {
        unreachable!("an error, checked above")
    };
    assert!(
        error_message.contains("200000 items, over the limit of 10000 (RELAY_MAX_ITEMS)"),
        "{error_message}"
    );
    let record = bench.record(id).await;
    assert_eq!(record["status"], "failed");

    let deep = job_event(&json!({"model": model, "prompt": "p"}))
        .to_string()
        .replace(
            r#""prompt":"p""#,
            &format!(r#""prompt":"p","metadata":{{"x":{}}}"#, nested_text(10_000)),
        );
    let outcome = bench.invoke_bytes(deep.into_bytes(), TIMEOUT).await;
    assert_eq!(
        error_type(&outcome),
        "NonRetryable.InvalidEvent",
        "{}",
        logs()
    );
    let Outcome::Error { error_message, .. } = &outcome else {
        unreachable!("an error, checked above")
    };
    assert!(
        error_message.contains("more than 100 levels deep"),
        "{error_message}"
    );

    let id = "6c1e0000-0000-4000-8000-00000000a11c";
    let outcome = bench
        .invoke_bytes(
            event(id, json!({"model": model, "prompt": "{% set s = 'ab' %}{% for i in range(40) %}{% set s = s ~ s %}{% endfor %}{{ s }}"})),
            TIMEOUT,
        )
        .await;
    assert_eq!(
        error_type(&outcome),
        "NonRetryable.InvalidTemplate",
        "{}",
        logs()
    );
    assert_eq!(bench.record(id).await["error"]["type"], "InvalidTemplate");

    assert_eq!(
        bench.lab.bedrock.stats().requests,
        0,
        "the model was called"
    );
}

/// The built function, through the Runtime API: templates drawn from the
/// engine's whole offer with hostile arguments, in `prompt` and in `id`, over
/// batches of hostile items. Every event gets an answer (a result or an
/// `InvalidTemplate`-style error), the process is alive at the end, and no
/// event leaves a claim behind that stops a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_templates_through_the_function_never_abort_it() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut bench = Bench::start(&[]).await;
    let mut runner = TestRunner::deterministic();
    let cases = 24;
    let mut answered = 0;
    for n in 0..cases {
        let template = offer_template()
            .new_tree(&mut runner)
            .map(|tree| tree.current())
            .unwrap_or_default();
        let items = prop::collection::vec(json_value(), 1..4)
            .new_tree(&mut runner)
            .map(|tree| tree.current())
            .unwrap_or_default();
        let mut detail = json!({"model": "amazon.nova-lite-v1:0", "items": items});
        if n % 2 == 0 {
            detail["prompt"] = json!(template);
            detail["id"] = json!(format!("hostile-{n}"));
        } else {
            detail["prompt"] = json!("p {{ item }}");
            detail["id"] = json!(format!("hostile-{n}-{template}"));
        }
        let mut event = job_event(&detail);
        event["id"] = json!(format!("6c1e0000-0000-4000-8000-{n:012}"));
        let outcome = bench
            .invoke_bytes(event.to_string().into_bytes(), TIMEOUT)
            .await;
        assert!(
            matches!(outcome, Outcome::Response { .. } | Outcome::Error { .. }),
            "case {n} ({template}): {outcome:?}"
        );
        answered += 1;
    }
    assert_eq!(answered, cases);
    assert_eq!(
        bench.function.wait_exit(Duration::from_millis(100)).await,
        None,
        "the process is alive after every case:\n{}",
        bench.function.logs().join("\n")
    );
}
