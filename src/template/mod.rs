//! Jinja templates in job fields, rendered against the event that triggered
//! the job, the batch item and the loaded documents.
//!
//! The engine is `minijinja`, started empty and given only what
//! [`builtins`] allows: undefined values are errors (a typo must not send an
//! empty prompt to a paid model), there is no loader (`include`/`import`
//! cannot read files), no function reads the environment or the network.
//! A template is bounded four ways, so that whatever it does the outcome is
//! its text or an `InvalidTemplate` error, and the process lives:
//! - its length per expression ([`MAX_CODE_BYTES`]), before it is parsed: the
//!   parser recurses once per chained operator;
//! - its syntax ([`policy`]): nothing that copies or multiplies a value
//!   outside a filter;
//! - its calls ([`builtins`]): an allowlist of filters, tests and functions,
//!   each charged for its input against one work budget per render;
//! - its run: fuel (instructions), recursion depth and the size of the
//!   rendered text ([`MAX_OUTPUT_BYTES`]).
//!
//! Only strings that contain template syntax (`{{`, `{%`, `{#`) are rendered;
//! the rest are used as they are, so a plain job pays nothing for templating.

mod builtins;
mod policy;

use std::borrow::Cow;
use std::fmt;
use std::io;

use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value as Context};
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
        let mut env = Environment::empty();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        builtins::install(&mut env);
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
        if let Some(message) = refuse_code(source).or_else(|| policy::refusal(source)) {
            return Err(TemplateError {
                field: field.to_owned(),
                message,
            });
        }
        builtins::start_render();
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

/// Why `source` is refused before it is parsed: an expression or statement
/// over [`MAX_CODE_BYTES`] (string literals, comments and text outside
/// `{{ }}` / `{% %}` do not count). A `{% raw %}` block's content is checked
/// too: refusing such a template is the safe side of this check.
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
                "{}{}; templates may use only the filters, tests and functions listed in docs/templates.md",
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

    /// The reported aborts (a printf width in `format`, the count given to
    /// `batch` or `slice`, a list doubled with `chain` and then materialised)
    /// and the panics found by the property test (`divisibleby(0)`, a
    /// `range` whose length overflows): each is an error naming what to fix.
    #[test]
    fn templates_that_aborted_the_process_are_errors() {
        let r = Renderer::new();
        let scope = Scope::default().with_item(&json!(["a", "b"]));
        for (source, expected) in [
            ("{{ '%999999999999s'|format('x') }}", "unknown filter `format`"),
            ("{{ item|batch(99999999999) }}", "unknown filter `batch`"),
            ("{{ item|slice(99999999999) }}", "unknown filter `slice`"),
            (
                "{% set ns = namespace(x=item) %}{% for i in range(64) %}{% set ns.x = ns.x|chain(ns.x) %}{% endfor %}{{ ns.x|list|length }}",
                "unknown function `namespace`",
            ),
            ("{{ item|chain(item)|list }}", "unknown filter `chain`"),
            ("{{ [item, item] }}", "lists in templates may hold only constants"),
            ("{{ item[0:99] }}", "slices"),
            ("{% set x %}{{ item }}{% endset %}", "endset"),
            ("{% filter upper %}x{% endfilter %}", "`{% filter %}`"),
            ("{{ 7 is divisibleby(0) }}", ""),
            (
                "{{ range(-9223372036854775808, 9223372036854775807, -9223372036854775808)|list }}",
                "",
            ),
            ("{{ range(0, 9223372036854775807, 1) }}", "too many elements"),
            ("{{ item|first|indent(9223372036854775807) }}", "over"),
            // The same width as a keyword argument (found by the hostile-input proptest).
            ("{{ item|first|indent(width=9223372036854775807) }}", "over"),
        ] {
            match r.render("prompt", source, &scope) {
                Ok(text) => assert!(expected.is_empty(), "{source} rendered {text:?}"),
                Err(err) => assert!(err.message.contains(expected), "{source}: {}", err.message),
            }
        }
        assert_eq!(
            r.render("prompt", "{{ 7 is divisibleby(0) }}", &scope)
                .ok()
                .as_deref(),
            Some("False")
        );
    }

    /// Filters are charged for their input: a long document walked value by
    /// value a few times goes over the work budget instead of running on.
    #[test]
    fn filters_are_charged_against_one_budget_per_render() {
        let r = Renderer::new();
        let scope = Scope {
            documents: Some(vec![json!({"text": "ab".repeat(400_000)})]),
            ..Scope::default()
        };
        let once = "{{ documents[0].text|min }}";
        assert_eq!(r.render("prompt", once, &scope).ok().as_deref(), Some("a"));
        let many = "{% for i in range(10) %}{{ documents[0].text|min }}{% endfor %}";
        let err = r.render("prompt", many, &scope).expect_err("over budget");
        assert!(err.message.contains("work limit"), "{}", err.message);
        // The budget is per render: the next one starts full.
        assert!(r.render("prompt", once, &scope).is_ok());
    }

    /// `join` on text joins its characters, as the engine's own does, and
    /// a long document joined many times stays within the budget and the
    /// text limit (the case a hostile-input run found taking 2.75 s).
    #[test]
    fn join_on_text_joins_its_characters() {
        let r = Renderer::new();
        let scope = Scope {
            documents: Some(vec![json!({"text": "ab\n".repeat(350_000)})]),
            ..Scope::default()
        };
        let small = Scope::default().with_item(&json!("añb"));
        assert_eq!(
            r.render("prompt", "{{ item|join('-') }}|{{ item|join }}", &small)
                .ok()
                .as_deref(),
            Some("a-ñ-b|añb")
        );
        let many: String = (0..11)
            .map(|i| format!("{{% set v{i} = documents[0].text|join %}}"))
            .chain(std::iter::once("{{ v10|length }}".to_owned()))
            .collect();
        assert_eq!(
            r.render("prompt", &many, &scope).ok().as_deref(),
            Some("1050000")
        );
        let err = r
            .render("prompt", "{{ documents[0].text|join('----') }}", &scope)
            .expect_err("over the text limit");
        assert!(
            err.message.contains("`join` would make over"),
            "{}",
            err.message
        );
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
