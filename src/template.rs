//! Jinja templates in job fields, rendered against the event that triggered
//! the job, the batch item and the loaded documents.
//!
//! The engine is `minijinja` with a locked-down environment: undefined values
//! are errors (a typo must not send an empty prompt to a paid model), there is
//! no loader (`include`/`import` cannot read files), no function reads the
//! environment or the network, and fuel, recursion and output limits stop a
//! template that tries to run forever or grow without bound.
//!
//! Fuel counts instructions, not bytes, and the output limit only sees what
//! is written: a value built in between (`'x' * 100000000`, a string doubled
//! with `~` a few dozen times) would exhaust memory and kill the process
//! before either limit fires. So the operators that multiply or concatenate
//! (`*`, `+`, `~`) are refused before rendering, and the filters whose output
//! can be far larger than their input (`replace`, `join`, `indent`) refuse a
//! result over the output limit before building it.
//!
//! Only strings that contain template syntax (`{{`, `{%`, `{#`) are rendered;
//! the rest are used as they are, so a plain job pays nothing for templating.

use std::borrow::Cow;
use std::fmt;
use std::io;

use minijinja::value::{Kwargs, StringInput};
use minijinja::{Environment, ErrorKind, State, UndefinedBehavior, Value as Context};
use serde_json::{Map, Value};
use thiserror::Error;

pub use crate::domain::job::is_template;
use crate::domain::job::{ContentBlock, Job, System};

/// Instructions one template may run: generous for any real prompt, a hard
/// stop for a loop that tries to run forever.
const FUEL: u64 = 200_000;
/// Nesting depth of macros, loops and includes.
const RECURSION_LIMIT: usize = 64;
/// Longest `{{ }}` or `{% %}`: the engine's parser and compiler recurse once
/// per chained operator or filter (`{{ x|e|e|e… }}`, `{{ 1-1-1… }}`) and a
/// few thousand of them overflow a 2 MiB thread stack, which aborts the
/// process. No real expression comes near this.
const MAX_CODE_BYTES: usize = 1024;
/// Longest rendered text: Bedrock's request limits are well below this.
const MAX_OUTPUT_BYTES: usize = 4 * 1024 * 1024;

/// A template that does not render.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{field}: {message}")]
pub struct TemplateError {
    /// The job field, e.g. `prompt` or `messages[0].content[1].text`.
    pub field: String,
    /// What is wrong and what to fix.
    pub message: String,
}

/// The locked-down template engine, built once at cold start.
pub struct Renderer {
    env: Environment<'static>,
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renderer").finish_non_exhaustive()
    }
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

/// What templates can see.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// The whole EventBridge envelope, when the job came in one.
    pub event: Option<Value>,
    /// The batch item being run.
    pub item: Option<Value>,
    /// The loaded documents (`uri`, `name`, `format`, `kind`, `size`, `text`).
    pub documents: Option<Vec<Value>>,
}

impl Scope {
    /// A scope with the envelope only.
    pub fn event(event: Option<Value>) -> Self {
        Self {
            event,
            ..Self::default()
        }
    }

    /// This scope with a batch item.
    pub fn with_item(&self, item: &Value) -> Self {
        Self {
            item: Some(item.clone()),
            ..self.clone()
        }
    }

    fn context(&self) -> Context {
        let mut vars = Map::new();
        if let Some(event) = &self.event {
            if let Some(detail) = event.get("detail") {
                vars.insert("detail".into(), detail.clone());
            }
            vars.insert("event".into(), event.clone());
        }
        if let Some(item) = &self.item {
            vars.insert("item".into(), item.clone());
        }
        if let Some(documents) = &self.documents {
            vars.insert("documents".into(), Value::Array(documents.clone()));
        }
        Context::from_serialize(Value::Object(vars))
    }
}

impl Renderer {
    /// The engine with strict undefined values, no loader and bounded work.
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        // `debug()` would print the whole context, event included, into a prompt.
        env.remove_global("debug");
        env.add_filter("safe_id", safe_id);
        env.add_filter("replace", bounded_replace);
        env.add_filter("join", bounded_join);
        env.add_filter("indent", bounded_indent);
        Self { env }
    }

    /// Renders one field; text without template syntax comes back unchanged.
    pub fn render<'t>(
        &self,
        field: &str,
        source: &'t str,
        scope: &Scope,
    ) -> Result<Cow<'t, str>, TemplateError> {
        if !is_template(source) {
            return Ok(Cow::Borrowed(source));
        }
        self.render_with(field, source, &scope.context())
            .map(Cow::Owned)
    }

    fn render_with(
        &self,
        field: &str,
        source: &str,
        context: &Context,
    ) -> Result<String, TemplateError> {
        let fail = |err: minijinja::Error| TemplateError {
            field: field.to_owned(),
            message: describe(&err, source),
        };
        if let Some(message) = refuse_code(source) {
            return Err(TemplateError {
                field: field.to_owned(),
                message,
            });
        }
        let template = self.env.template_from_str(source).map_err(fail)?;
        let mut out = BoundedText::default();
        template
            .render_captured_to(context, &mut out)
            .map_err(|err| match out.overflowed {
                true => TemplateError {
                    field: field.to_owned(),
                    message: format!(
                        "the rendered text is over {MAX_OUTPUT_BYTES} bytes; render less, or put large inputs in `documents`"
                    ),
                },
                false => fail(err),
            })?;
        String::from_utf8(out.bytes).map_err(|_| TemplateError {
            field: field.to_owned(),
            message: "the rendered text is not UTF-8".into(),
        })
    }

    /// Renders the fields that settle where and how a job runs, before any
    /// item or document is known: `id`, `destination`, `group`, `items_from`
    /// and, for a job without items, `documents`.
    pub fn render_head(&self, job: &mut Job, scope: &Scope) -> Result<(), TemplateError> {
        // The context copies the whole event: built only if a field needs it.
        let mut context = None;
        let mut field = |name: &str, slot: &mut Option<String>| -> Result<(), TemplateError> {
            if let Some(text) = slot.as_mut() {
                if is_template(text) {
                    let context = context.get_or_insert_with(|| scope.context());
                    *text = self.render_with(name, text, context)?;
                }
            }
            Ok(())
        };
        field("id", &mut job.id)?;
        field("destination", &mut job.destination)?;
        field("group", &mut job.group)?;
        field("items_from", &mut job.items_from)?;
        if !job.is_batch() {
            self.render_documents(job, scope)?;
        }
        Ok(())
    }

    /// Renders the `documents` URIs (per item in a batch).
    pub fn render_documents(&self, job: &mut Job, scope: &Scope) -> Result<(), TemplateError> {
        let Some(documents) = job.documents.as_mut() else {
            return Ok(());
        };
        if !documents.iter().any(|d| is_template(d)) {
            return Ok(());
        }
        let context = scope.context();
        for (i, uri) in documents.iter_mut().enumerate() {
            if is_template(uri) {
                *uri = self.render_with(&format!("documents[{i}]"), uri, &context)?;
            }
        }
        Ok(())
    }

    /// Renders what is sent to the model: `prompt`, `system`, message texts and
    /// every string in `invoke.body`.
    pub fn render_body(&self, job: &mut Job, scope: &Scope) -> Result<(), TemplateError> {
        let mut context = None;
        let mut render = |field: &dyn Fn() -> String, text: &mut String| {
            if !is_template(text) {
                return Ok(());
            }
            let context = context.get_or_insert_with(|| scope.context());
            *text = self.render_with(&field(), text, context)?;
            Ok::<(), TemplateError>(())
        };
        if let Some(prompt) = job.prompt.as_mut() {
            render(&|| "prompt".into(), prompt)?;
        }
        match job.system.as_mut() {
            Some(System::Text(text)) => render(&|| "system".into(), text)?,
            Some(System::Blocks(blocks)) => {
                for (i, block) in blocks.iter_mut().enumerate() {
                    render(&|| format!("system[{i}].text"), &mut block.text)?;
                }
            }
            None => {}
        }
        for (i, message) in job.messages.iter_mut().flatten().enumerate() {
            for (j, block) in message.content.iter_mut().enumerate() {
                if let ContentBlock::Text(text) = block {
                    render(&|| format!("messages[{i}].content[{j}].text"), text)?;
                }
            }
        }
        if let Some(invoke) = job.invoke.as_mut() {
            render_strings(&mut invoke.body, "invoke.body", &mut |path, text| {
                render(&|| path.to_owned(), text)
            })?;
        }
        Ok(())
    }
}

/// `{{ detail.object.key | safe_id }}`: any text made fit for a job id (and so
/// an object key or message id): characters outside letters, digits and
/// `!_.*'()-/:` become `-`, and empty, `.` and `..` path segments are dropped.
fn safe_id(text: &str) -> String {
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
        .collect::<Vec<_>>()
        .join("/")
}

/// Why `source` is refused before the engine sees it: an expression or
/// statement over [`MAX_CODE_BYTES`], or `*`, `+` or `~` used as an operator
/// (string literals, comments and text outside `{{ }}` / `{% %}` do not
/// count). A `{% raw %}` block's content is checked too: refusing such a
/// template is the safe side of this check.
fn refuse_code(source: &str) -> Option<String> {
    let mut rest = source;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = match after.as_bytes().first() {
            Some(b'{') => "}}",
            Some(b'%') => "%}",
            Some(b'#') => {
                rest = after.find("#}").map_or("", |end| &after[end + 2..]);
                continue;
            }
            _ => {
                rest = after;
                continue;
            }
        };
        let mut quote = None;
        let mut escaped = false;
        // Braces of map literals, so their `}}` does not end the expression.
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after[1..].char_indices() {
            match quote {
                Some(q) => {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == q {
                        quote = None;
                    }
                }
                None if c == '\'' || c == '"' => quote = Some(c),
                None if matches!(c, '*' | '+' | '~') => {
                    return Some(format!(
                        "`{c}` is not available in templates: `*`, `+` and `~` can build text without bound; \
                         write literal text around the expressions instead (`{{{{ a }}}}-{{{{ b }}}}`, not `{{{{ a ~ '-' ~ b }}}}`)"
                    ))
                }
                None if c == '{' => depth += 1,
                None if c == '}' && depth > 0 => depth -= 1,
                None if after[1 + i..].starts_with(close) => {
                    end = 1 + i + close.len();
                    break;
                }
                None => {}
            }
        }
        if end > MAX_CODE_BYTES {
            return Some(format!(
                "an expression or statement is over {MAX_CODE_BYTES} bytes; split it, or compute the value before it reaches the job"
            ));
        }
        rest = &after[end..];
    }
    None
}

/// Refuses a result longer than [`MAX_OUTPUT_BYTES`] before it is built.
fn check_size(what: &str, bytes: usize) -> Result<(), minijinja::Error> {
    if bytes > MAX_OUTPUT_BYTES {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("`{what}` would make over {MAX_OUTPUT_BYTES} bytes of text"),
        ));
    }
    Ok(())
}

/// `replace`, refusing a result over the output limit (`replace('', big)`
/// inserts `big` between every character).
fn bounded_replace(
    state: &State,
    value: StringInput<'_>,
    from: StringInput<'_>,
    to: StringInput<'_>,
) -> Result<Context, minijinja::Error> {
    let text = value.as_str();
    let grows = text
        .matches(from.as_str())
        .count()
        .saturating_mul(to.as_str().len());
    check_size("replace", text.len().saturating_add(grows))?;
    minijinja::filters::replace(state, value, from, to)
}

/// `join`, refusing a result over the output limit (a long joiner between many
/// items); it walks the items once to measure, then joins.
fn bounded_join(
    state: &State,
    value: &Context,
    joiner: Option<StringInput<'_>>,
) -> Result<Context, minijinja::Error> {
    let gap = joiner.as_ref().map_or(0, |j| j.as_str().len());
    let mut total = 0usize;
    if let Ok(items) = value.try_iter() {
        for (i, item) in items.enumerate() {
            let len = item
                .as_str()
                .map_or_else(|| item.to_string().len(), str::len);
            total = total
                .saturating_add(len)
                .saturating_add(if i > 0 { gap } else { 0 });
            check_size("join", total)?;
        }
    }
    minijinja::filters::join(state, value, joiner)
}

/// `indent`, refusing a result over the output limit (a huge width).
fn bounded_indent(
    value: StringInput<'_>,
    width: Option<usize>,
    indent_first_line: Option<bool>,
    indent_blank_lines: Option<bool>,
    kwargs: Kwargs,
) -> Result<Context, minijinja::Error> {
    let text = value.as_str();
    let lines = text.matches('\n').count().saturating_add(1);
    let pad = width.unwrap_or(0).saturating_mul(lines);
    check_size("indent", text.len().saturating_add(pad))?;
    minijinja::filters::indent(value, width, indent_first_line, indent_blank_lines, kwargs)
}

/// Calls `render` on every string in a JSON value, with its path.
fn render_strings(
    value: &mut Value,
    path: &str,
    render: &mut dyn FnMut(&str, &mut String) -> Result<(), TemplateError>,
) -> Result<(), TemplateError> {
    match value {
        Value::String(text) => render(path, text),
        Value::Array(items) => items
            .iter_mut()
            .enumerate()
            .try_for_each(|(i, v)| render_strings(v, &format!("{path}[{i}]"), render)),
        Value::Object(map) => map
            .iter_mut()
            .try_for_each(|(k, v)| render_strings(v, &format!("{path}.{k}"), render)),
        _ => Ok(()),
    }
}

/// Says what went wrong in terms of the template the user wrote.
fn describe(err: &minijinja::Error, source: &str) -> String {
    // The engine points at the failing part (`.objekt.key`); widen it to the
    // whole dotted path the user wrote (`detail.objekt.key`).
    let snippet = err
        .range()
        .map(|range| {
            let head = source.get(..range.start).unwrap_or_default();
            let path_start = head
                .rfind(|c: char| !(c.is_alphanumeric() || "_.[]'\"".contains(c)))
                .map_or(0, |i| i + 1);
            path_start..range.end
        })
        .and_then(|range| source.get(range))
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let detail = err.detail().unwrap_or_default();
    match err.kind() {
        ErrorKind::UndefinedError => match snippet {
            Some(expr) => format!(
                "`{expr}` is undefined; templates see `event`, `detail`, `item` (in a batch) and `documents` (when the job has documents)"
            ),
            None => format!("an undefined value is used ({detail}); templates see `event`, `detail`, `item` and `documents`"),
        },
        ErrorKind::OutOfFuel => "the template runs too long (a loop too large?); simplify it".into(),
        ErrorKind::SyntaxError
            if ["include", "import", "from", "extends"]
                .iter()
                .any(|s| detail == format!("unknown statement {s}")) =>
        {
            format!("{detail}: templates cannot include, import or extend other templates or files")
        }
        // Macros, blocks and the like are not compiled in.
        ErrorKind::SyntaxError if detail.starts_with("unknown statement") => {
            format!("{detail}: not available in templates")
        }
        ErrorKind::TemplateNotFound => {
            "templates cannot include or import other templates or files".into()
        }
        ErrorKind::UnknownFunction | ErrorKind::UnknownFilter | ErrorKind::UnknownTest => {
            format!(
                "{}{}; only minijinja's built-in filters and functions are available",
                err.kind(),
                snippet.map(|s| format!(" in `{s}`")).unwrap_or_default()
            )
        }
        _ => {
            let at = snippet.map(|s| format!(" at `{s}`")).unwrap_or_default();
            let line = err.line().map(|l| format!(" (line {l})")).unwrap_or_default();
            match detail {
                "" => format!("{}{at}{line}", err.kind()),
                detail => format!("{}: {detail}{at}{line}", err.kind()),
            }
        }
    }
}

/// A writer that refuses to grow past [`MAX_OUTPUT_BYTES`].
#[derive(Default)]
struct BoundedText {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl io::Write for BoundedText {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_OUTPUT_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("rendered text too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s3_event() -> Scope {
        Scope::event(Some(json!({
            "id": "e-1",
            "detail-type": "Object Created",
            "source": "aws.s3",
            "time": "2026-11-28T10:00:00Z",
            "detail": {"bucket": {"name": "uploads"}, "object": {"key": "in/a.txt"}}
        })))
    }

    #[test]
    fn renders_event_detail_item_and_documents() {
        let r = Renderer::new();
        let mut scope = s3_event().with_item(&json!({"text": "great", "n": 3}));
        scope.documents = Some(vec![json!({"name": "a", "text": "hello doc"})]);
        let out = r
            .render(
                "prompt",
                "{{ detail.object.key }} from {{ event.source }}: {{ item.text }} x{{ item.n }} / {{ documents[0].text }}",
                &scope,
            )
            .expect("renders");
        assert_eq!(out, "in/a.txt from aws.s3: great x3 / hello doc");
        assert!(matches!(
            r.render("prompt", "plain text", &scope),
            Ok(Cow::Borrowed("plain text"))
        ));
    }

    #[test]
    fn undefined_values_name_the_missing_path() {
        let r = Renderer::new();
        let err = r
            .render(
                "prompt",
                "summarise {{ detail.objekt.key }} now",
                &s3_event(),
            )
            .expect_err("undefined");
        assert_eq!(err.field, "prompt");
        assert!(
            err.message.contains("`detail.objekt.key`"),
            "{}",
            err.message
        );
        let err = r
            .render("id", "x-{{ item }}", &s3_event())
            .expect_err("no item outside a batch");
        assert!(err.message.contains("`item`"), "{}", err.message);
    }

    #[test]
    fn templates_cannot_escape_or_run_forever() {
        let r = Renderer::new();
        let scope = Scope::default();
        let include = r
            .render("prompt", "{% include '/etc/passwd' %}", &scope)
            .expect_err("no loader");
        assert!(
            include.message.contains("cannot include"),
            "{}",
            include.message
        );
        let forever = r
            .render(
                "prompt",
                "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
                &scope,
            )
            .expect_err("fuel");
        assert!(forever.message.contains("too long"), "{}", forever.message);
        let huge = r
            .render("prompt", "{{ 'x' * 50000000 }}", &scope)
            .expect_err("no repetition");
        assert!(huge.message.contains("`*` is not"), "{}", huge.message);
        let wide = r
            .render(
                "prompt",
                "{% for i in range(20) %}{{ range(100000)|join(' ') }}{% endfor %}",
                &scope,
            )
            .expect_err("output bound");
        assert!(wide.message.contains("over"), "{}", wide.message);
        let env = r
            .render("prompt", "{{ env('HOME') }}", &scope)
            .expect_err("no env access");
        assert!(env.message.contains("unknown function"), "{}", env.message);
        let debug = r.render("prompt", "{{ debug() }}", &s3_event());
        assert!(debug.is_err(), "debug() would print the context");
    }

    #[test]
    fn safe_id_makes_any_key_a_valid_job_id() {
        let r = Renderer::new();
        let scope = Scope::default().with_item(&json!("uploads//Q3 report (final)+v2.pdf/../x"));
        let id = r
            .render("id", "summary/{{ item | safe_id }}", &scope)
            .expect("renders");
        assert_eq!(id, "summary/uploads/Q3-report-(final)-v2.pdf/x");
        let job = Job::from_value(json!({"id": id, "model": "m", "prompt": "p"})).expect("job");
        job.resolve(None, "fallback").expect("a valid id");
    }

    #[test]
    fn job_fields_render_in_two_stages() {
        let r = Renderer::new();
        let mut job = Job::from_value(json!({
            "id": "summary-{{ detail.object.key | replace('/', '-') }}",
            "destination": "s3://results/{{ detail.bucket.name }}/",
            "documents": ["s3://{{ detail.bucket.name }}/{{ detail.object.key }}"],
            "system": [{"text": "You read {{ event.source }} objects."}],
            "messages": [{"role": "user", "content": [{"text": "Summarise {{ documents[0].name }}"}]}],
        }))
        .expect("job");
        let mut scope = s3_event();
        r.render_head(&mut job, &scope).expect("head");
        assert_eq!(job.id.as_deref(), Some("summary-in-a.txt"));
        assert_eq!(job.destination.as_deref(), Some("s3://results/uploads/"));
        assert_eq!(job.documents, Some(vec!["s3://uploads/in/a.txt".into()]));
        scope.documents = Some(vec![json!({"name": "a"})]);
        r.render_body(&mut job, &scope).expect("body");
        assert_eq!(
            job.messages.expect("messages")[0].content[0],
            ContentBlock::Text("Summarise a".into())
        );
        let Some(System::Blocks(system)) = job.system else {
            panic!("system blocks")
        };
        assert_eq!(system[0].text, "You read aws.s3 objects.");
    }

    #[test]
    fn invoke_body_strings_render_with_their_path_in_errors() {
        let r = Renderer::new();
        let mut job = Job::from_value(json!({
            "invoke": {"body": {"inputText": "{{ item }}", "dims": 256, "nested": [{"t": "{{ item.missing }}"}]}},
            "items": ["a"]
        }))
        .expect("job");
        let scope = Scope::default().with_item(&json!("hello"));
        let err = r
            .render_body(&mut job.clone(), &scope)
            .expect_err("missing");
        assert_eq!(err.field, "invoke.body.nested[0].t");
        if let Some(invoke) = job.invoke.as_mut() {
            invoke.body["nested"] = json!([]);
        }
        r.render_body(&mut job, &scope).expect("renders");
        let body = job.invoke.expect("invoke").body;
        assert_eq!(body["inputText"], "hello");
        assert_eq!(body["dims"], 256);
    }
}
