//! What a template may call: the allowlist of filters, tests and functions,
//! and the work budget every call is charged against.
//!
//! The engine starts empty ([`Environment::empty`]) and gets only the rows of
//! [`FILTERS`], [`TESTS`] and [`FUNCTIONS`]. Each row is there because its
//! cost is bounded by its input: every call first charges its arguments,
//! multiplied by the row's worst growth (how much larger than its input its
//! result can be in memory), against one budget per render
//! ([`WORK_BUDGET_BYTES`]). So neither one call nor many can build more than
//! the budget, whatever their numeric arguments, and the time spent in calls
//! is bounded with it. What is left out is left out because a number in the
//! template, not the input, sets its cost (`format`'s printf widths, `batch`
//! and `slice`'s counts), or because it multiplies a value (`chain`, `zip`),
//! or it prints the whole context (`debug`), or a prompt has no use for it
//! (`escape`, `pprint`, `dict`, `namespace`).
//!
//! The numeric arguments that remain (`range`, `indent`, `round`,
//! `divisibleby`, `split`'s count) are checked here with arithmetic that
//! cannot overflow: the release build aborts on a panic, and a panic in a
//! template would take the process with it.

use std::cell::Cell;

use minijinja::value::{Rest, StringInput, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, Value};

/// Bytes of work one render may do in filter and test calls: the sum over
/// calls of their arguments' size times the call's growth.
pub(super) const WORK_BUDGET_BYTES: usize = 32 * 1024 * 1024;
/// Longest text one filter may build (the rendered text's own limit).
pub(super) const MAX_TEXT_BYTES: usize = 4 * 1024 * 1024;
/// What one value in a list or map costs beside its text: the engine's
/// value and its place in the container.
const VALUE_BYTES: usize = 32;
/// The most items `range` makes (the engine's own limit).
const MAX_RANGE: i128 = 100_000;

/// A filter or test a template may use, and how large its result can be
/// against its arguments (in [`weight`] units).
pub(super) struct Builtin {
    pub(super) name: &'static str,
    make: fn() -> Value,
    growth: usize,
}

macro_rules! builtin {
    ($name:literal, $f:expr, $growth:expr) => {
        Builtin {
            name: $name,
            make: || Value::from_function($f),
            growth: $growth,
        }
    };
}

use minijinja::filters as f;
use minijinja::tests as t;

/// Growth is the worst of memory and time against the input's [`weight`].
/// Text in, text out, one to one: 2 for the copy, 4 where Unicode case
/// mapping can make three bytes of one. A filter that walks its input value
/// by value (text by character) makes or compares a value per byte at worst:
/// [`VALUE_BYTES`].
pub(super) const FILTERS: &[Builtin] = &[
    builtin!("lower", f::lower, 4),
    builtin!("upper", f::upper, 4),
    builtin!("title", f::title, 4),
    builtin!("capitalize", f::capitalize, 4),
    builtin!("trim", f::trim, 2),
    builtin!("replace", bounded_replace, 2),
    builtin!("join", bounded_join, 2),
    builtin!("indent", bounded_indent, 2),
    builtin!("safe_id", safe_id, 2),
    builtin!("split", f::split, VALUE_BYTES),
    builtin!("lines", f::lines, VALUE_BYTES),
    builtin!("string", f::string, 2),
    builtin!("safe", f::safe, 2),
    builtin!("length", f::length, 1),
    builtin!("count", f::length, 1),
    builtin!("default", f::default, 1),
    builtin!("d", f::default, 1),
    builtin!("first", f::first, VALUE_BYTES),
    builtin!("last", f::last, VALUE_BYTES),
    builtin!("min", f::min, VALUE_BYTES),
    builtin!("max", f::max, VALUE_BYTES),
    builtin!("sum", f::sum, VALUE_BYTES),
    builtin!("int", f::int, 1),
    builtin!("float", f::float, 1),
    builtin!("round", f::round, 1),
    builtin!("abs", f::abs, 1),
    builtin!("bool", f::bool, 1),
    builtin!("attr", f::attr, 1),
    builtin!("items", f::items, 3),
    builtin!("dictsort", f::dictsort, 3),
    builtin!("list", f::list, VALUE_BYTES),
    builtin!("sort", f::sort, VALUE_BYTES),
    builtin!("unique", f::unique, VALUE_BYTES),
    builtin!("reverse", f::reverse, VALUE_BYTES),
    builtin!("map", f::map, VALUE_BYTES),
    builtin!("select", f::select, VALUE_BYTES),
    builtin!("reject", f::reject, VALUE_BYTES),
    builtin!("selectattr", f::selectattr, VALUE_BYTES),
    builtin!("rejectattr", f::rejectattr, VALUE_BYTES),
    builtin!("groupby", f::groupby, VALUE_BYTES),
];

/// Tests answer yes or no; they cost at most a walk over their arguments.
pub(super) const TESTS: &[Builtin] = &[
    builtin!("defined", t::is_defined, 1),
    builtin!("undefined", t::is_undefined, 1),
    builtin!("none", t::is_none, 1),
    builtin!("boolean", t::is_boolean, 1),
    builtin!("true", t::is_true, 1),
    builtin!("false", t::is_false, 1),
    builtin!("odd", t::is_odd, 1),
    builtin!("even", t::is_even, 1),
    builtin!("divisibleby", is_divisibleby, 1),
    builtin!("number", t::is_number, 1),
    builtin!("integer", t::is_integer, 1),
    builtin!("int", t::is_integer, 1),
    builtin!("float", t::is_float, 1),
    builtin!("string", t::is_string, 1),
    builtin!("sequence", t::is_sequence, 1),
    builtin!("iterable", t::is_iterable, 1),
    builtin!("mapping", t::is_mapping, 1),
    builtin!("startingwith", t::is_startingwith, 1),
    builtin!("endingwith", t::is_endingwith, 1),
    builtin!("lower", t::is_lower, 1),
    builtin!("upper", t::is_upper, 1),
    builtin!("eq", t::is_eq, 1),
    builtin!("equalto", t::is_eq, 1),
    builtin!("==", t::is_eq, 1),
    builtin!("ne", t::is_ne, 1),
    builtin!("!=", t::is_ne, 1),
    builtin!("lt", t::is_lt, 1),
    builtin!("lessthan", t::is_lt, 1),
    builtin!("<", t::is_lt, 1),
    builtin!("le", t::is_le, 1),
    builtin!("<=", t::is_le, 1),
    builtin!("gt", t::is_gt, 1),
    builtin!("greaterthan", t::is_gt, 1),
    builtin!(">", t::is_gt, 1),
    builtin!("ge", t::is_ge, 1),
    builtin!(">=", t::is_ge, 1),
    builtin!("in", t::is_in, 1),
];

/// Functions a template may call: `range` only (and, on a loop, the loop's
/// own `cycle` and `changed`, see the policy).
pub(super) const FUNCTIONS: &[&str] = &["range"];

/// Methods a template may call on `loop` inside a `for`.
pub(super) const LOOP_METHODS: &[&str] = &["cycle", "changed"];

thread_local! {
    /// Work left in the render running on this thread (renders are
    /// synchronous, so one thread runs one at a time).
    static WORK_LEFT: Cell<usize> = const { Cell::new(WORK_BUDGET_BYTES) };
}

/// Gives the render about to start on this thread a full budget.
pub(super) fn start_render() {
    WORK_LEFT.with(|left| left.set(WORK_BUDGET_BYTES));
}

/// The environment with the allowlist and nothing else.
pub(super) fn install(env: &mut Environment<'static>) {
    for row in FILTERS {
        env.add_filter(row.name, charged(row));
    }
    for row in TESTS {
        env.add_test(row.name, charged(row));
    }
    env.add_function("range", range);
}

/// `row`'s function behind the budget: its arguments, times its growth, are
/// charged before it runs.
fn charged(row: &'static Builtin) -> impl Fn(&State, Rest<Value>) -> Result<Value, Error> {
    let inner = (row.make)();
    move |state: &State, args: Rest<Value>| {
        let left = WORK_LEFT.with(Cell::get);
        let limit = left / row.growth.max(1);
        let mut cost = 0usize;
        for arg in args.iter() {
            cost = cost.saturating_add(weight(arg, limit.saturating_sub(cost)));
        }
        let cost = cost.saturating_mul(row.growth);
        if cost > left {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "`{}` on this input would go over the template's work limit ({WORK_BUDGET_BYTES} bytes); apply it to less, or put large inputs in `documents` and refer to them whole",
                    row.name
                ),
            ));
        }
        WORK_LEFT.with(|l| l.set(left - cost));
        inner.call(state, &args)
    }
}

/// The size of `value` in memory, roughly: its text plus [`VALUE_BYTES`] per
/// value. The walk stops once it is over `limit`, so measuring a huge value
/// costs no more than the limit.
pub(super) fn weight(value: &Value, limit: usize) -> usize {
    // Each value is counted when it is found, the first one here.
    let mut total = VALUE_BYTES;
    let mut pending = vec![value.clone()];
    while let Some(value) = pending.pop() {
        if total > limit {
            return total;
        }
        if let Some(text) = value.as_str() {
            total = total.saturating_add(text.len());
            continue;
        }
        if let Some(bytes) = value.as_bytes() {
            total = total.saturating_add(bytes.len());
            continue;
        }
        let is_map = value.kind() == ValueKind::Map;
        if !matches!(
            value.kind(),
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable
        ) {
            continue;
        }
        let Ok(items) = value.try_iter() else {
            continue;
        };
        for item in items {
            total = total.saturating_add(VALUE_BYTES);
            if total > limit {
                return total;
            }
            if is_map {
                if let Ok(entry) = value.get_item(&item) {
                    total = total.saturating_add(VALUE_BYTES);
                    pending.push(entry);
                }
            }
            pending.push(item);
        }
    }
    total
}

/// Refuses a text result longer than [`MAX_TEXT_BYTES`] before it is built.
fn check_size(what: &str, bytes: usize) -> Result<(), Error> {
    if bytes > MAX_TEXT_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("`{what}` would make over {MAX_TEXT_BYTES} bytes of text"),
        ));
    }
    Ok(())
}

/// `range`, with its length worked out in `i128` so no bound can overflow.
fn range(lower: i64, upper: Option<i64>, step: Option<i64>) -> Result<Value, Error> {
    let (start, end) = match upper {
        Some(upper) => (i128::from(lower), i128::from(upper)),
        None => (0, i128::from(lower)),
    };
    let step = i128::from(step.unwrap_or(1));
    let len = match step {
        0 => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "cannot create range with step of 0",
            ))
        }
        s if s > 0 && end > start => (end - start + s - 1) / s,
        s if s < 0 && start > end => (start - end - s - 1) / -s,
        _ => 0,
    };
    if len > MAX_RANGE {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "range has too many elements",
        ));
    }
    Ok(Value::from_iter((0..len).map(move |i| start + i * step)))
}

/// `divisibleby`, where a divisor of 0 (or `-1` under the smallest integer)
/// is `false` rather than a panic.
fn is_divisibleby(value: &Value, divisor: &Value) -> bool {
    match (
        i128::try_from(value.clone()),
        i128::try_from(divisor.clone()),
    ) {
        (Ok(a), Ok(b)) => a.checked_rem(b) == Some(0),
        _ => match (f64::try_from(value.clone()), f64::try_from(divisor.clone())) {
            (Ok(a), Ok(b)) if b != 0.0 => a % b == 0.0,
            _ => false,
        },
    }
}

/// `replace`, refusing a result over the text limit (`replace('', big)`
/// inserts `big` between every character).
fn bounded_replace(
    state: &State,
    value: StringInput<'_>,
    from: StringInput<'_>,
    to: StringInput<'_>,
) -> Result<Value, Error> {
    let text = value.as_str();
    let grows = text
        .matches(from.as_str())
        .count()
        .saturating_mul(to.as_str().len());
    check_size("replace", text.len().saturating_add(grows))?;
    f::replace(state, value, from, to)
}

/// `join`, refusing a result over the text limit (a long joiner between many
/// items); it walks the items once to measure, then joins.
fn bounded_join(
    state: &State,
    value: &Value,
    joiner: Option<StringInput<'_>>,
) -> Result<Value, Error> {
    let gap = joiner.as_ref().map_or(0, |j| j.as_str().len());
    // A string is joined by character. The engine would make a value of
    // each character, twice with the measuring walk below: two million for
    // a 1 MB document, seconds for a few such calls. Joined here on the text
    // instead, with the same result (templates render without escaping).
    if let Some(text) = value.as_str() {
        let joiner = joiner.as_ref().map_or("", |j| j.as_str());
        let chars = text.chars().count();
        let size = text
            .len()
            .saturating_add(gap.saturating_mul(chars.saturating_sub(1)));
        check_size("join", size)?;
        let mut joined = String::with_capacity(size);
        for (i, c) in text.chars().enumerate() {
            if i > 0 {
                joined.push_str(joiner);
            }
            joined.push(c);
        }
        return Ok(Value::from(joined));
    }
    let mut total = 0usize;
    if let Ok(items) = value.try_iter() {
        for (i, item) in items.enumerate() {
            let len = item
                .as_str()
                .map_or_else(|| weight(&item, MAX_TEXT_BYTES), str::len);
            total = total
                .saturating_add(len)
                .saturating_add(if i > 0 { gap } else { 0 });
            check_size("join", total)?;
        }
    }
    f::join(state, value, joiner)
}

/// `indent`, refusing a result over the text limit (a huge width).
fn bounded_indent(
    value: StringInput<'_>,
    width: Option<usize>,
    indent_first_line: Option<bool>,
    indent_blank_lines: Option<bool>,
    kwargs: minijinja::value::Kwargs,
) -> Result<Value, Error> {
    // The width may come as `width=`: measured the way `indent` reads it
    // (default 4), or a keyword would slip a huge width past the check.
    let width = match width {
        Some(width) => width,
        None => kwargs.get::<Option<usize>>("width")?.unwrap_or(4),
    };
    let text = value.as_str();
    let lines = text.matches('\n').count().saturating_add(1);
    let pad = width.saturating_mul(lines);
    check_size("indent", text.len().saturating_add(pad))?;
    f::indent(
        value,
        Some(width),
        indent_first_line,
        indent_blank_lines,
        kwargs,
    )
}

/// `{{ detail.object.key | safe_id }}`: any text made fit for a job id (and so
/// an object key or message id): characters outside letters, digits and
/// `!_.*'()-/:` become `-`, a `_` starting a segment becomes `-` (such
/// segments are the relay's own, and job ids may not have them), and empty,
/// `.` and `..` path segments are dropped.
pub(super) fn safe_id(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "!_.*'()-/:".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    cleaned
        .split('/')
        .filter(|segment| !segment.is_empty() && *segment != "." && *segment != "..")
        .map(|segment| match segment.strip_prefix('_') {
            Some(rest) => format!("-{rest}"),
            None => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/templates.md lists exactly what templates may use: every filter
    /// and test of the allowlist is named there, and what is refused is named
    /// under "Not offered".
    #[test]
    fn the_documented_allowlist_is_the_allowlist() {
        let doc = include_str!("../../docs/templates.md");
        let (allowed, refused) = doc.split_once("## Not offered").unwrap_or((doc, ""));
        let row = |kind: &str| {
            allowed
                .lines()
                .find(|l| l.starts_with(&format!("| {kind} |")))
                .unwrap_or_default()
                .to_owned()
        };
        let listed = |line: &str| -> Vec<String> {
            line.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let filters = listed(&row("filters"));
        let tests = listed(&row("tests"));
        let names = |rows: &[Builtin]| rows.iter().map(|r| r.name.to_owned()).collect::<Vec<_>>();
        assert_eq!(filters, names(FILTERS));
        assert_eq!(tests, names(TESTS));
        for name in [
            "format",
            "batch",
            "slice",
            "chain",
            "zip",
            "debug()",
            "namespace()",
        ] {
            assert!(
                refused.contains(&format!("`{name}`")),
                "{name} is documented as refused"
            );
        }
    }

    #[test]
    fn safe_id_leaves_no_segment_for_the_relay() {
        assert_eq!(safe_id("_claims/x/_spill/../y"), "-claims/x/-spill/y");
        assert_eq!(safe_id("a b/c"), "a-b/c");
    }
}
