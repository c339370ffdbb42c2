//! Which template syntax the relay accepts, checked on the parsed template
//! before it runs.
//!
//! Allowed: text, `{{ … }}`, `{% if %}` / `{% elif %}` / `{% else %}`,
//! `{% for %}` (not `recursive`), `{% set name = … %}` and `{% raw %}`; in
//! expressions, variables, literals, attribute and item access (`a.b`,
//! `a['b']`, `a[0]`), `not`, `and`, `or`, `-`, `/`, `//`, `%`, comparisons,
//! `in`, `… if … else …`, the filters and tests of [`super::builtins`],
//! `range(…)`, and `loop.cycle(…)` / `loop.changed(…)`.
//!
//! Refused, each because it can build a value without bound or around the
//! budget in [`super::builtins`]: `*`, `**`, `+` and `~` (they repeat and
//! concatenate), slices (a copy per use, outside any filter), list and map
//! literals holding anything but constants (`[x, x]` nests a value inside
//! itself twice, and a few dozen of those are too large to compare or print),
//! `{% set %}…{% endset %}`, `{% filter %}`, `{% with %}`, `{% autoescape %}`
//! and `{% do %}`. Macros, `include`, `import` and `extends` are not compiled
//! into the engine at all.

use minijinja::machinery::ast::{self, CallArg, Expr, Stmt};
use minijinja::machinery::{parse, WhitespaceConfig};
use minijinja::syntax::SyntaxConfig;

use super::builtins::{FILTERS, FUNCTIONS, LOOP_METHODS, TESTS};

/// Why `source` is refused, or `None` when every part of it is allowed. A
/// template that does not parse passes here: the engine reports it.
pub(super) fn refusal(source: &str) -> Option<String> {
    let ast = parse(
        source,
        "template",
        SyntaxConfig,
        WhitespaceConfig::default(),
    )
    .ok()?;
    stmt(&ast).err()
}

type Checked = Result<(), String>;

fn stmts(body: &[Stmt<'_>]) -> Checked {
    body.iter().try_for_each(stmt)
}

fn stmt(node: &Stmt<'_>) -> Checked {
    match node {
        Stmt::Template(t) => stmts(&t.children),
        Stmt::EmitExpr(e) => expr(&e.expr),
        Stmt::EmitRaw(_) => Ok(()),
        Stmt::IfCond(c) => {
            expr(&c.expr)?;
            stmts(&c.true_body)?;
            stmts(&c.false_body)
        }
        Stmt::ForLoop(l) => {
            if l.recursive {
                return refuse("`recursive` loops are not available in templates");
            }
            expr(&l.iter)?;
            if let Some(filter) = &l.filter_expr {
                expr(filter)?;
            }
            stmts(&l.body)?;
            stmts(&l.else_body)
        }
        Stmt::Set(s) => expr(&s.expr),
        Stmt::SetBlock(_) => refuse(
            "`{% set %}…{% endset %}` is not available in templates; use `{% set name = … %}`",
        ),
        Stmt::FilterBlock(_) => refuse(
            "`{% filter %}` blocks are not available in templates; apply the filter to a value",
        ),
        Stmt::WithBlock(_) => refuse("`{% with %}` is not available in templates"),
        Stmt::AutoEscape(_) => refuse("`{% autoescape %}` is not available in templates"),
        Stmt::Do(_) => refuse("`{% do %}` is not available in templates"),
    }
}

fn expr(node: &Expr<'_>) -> Checked {
    match node {
        Expr::Var(_) | Expr::Const(_) => Ok(()),
        Expr::Slice(_) => refuse(
            "slices (`x[a:b]`) are not available in templates; pass the part you need in the event",
        ),
        Expr::UnaryOp(u) => expr(&u.expr),
        Expr::BinOp(b) => {
            if let Some(op) = repeating_operator(b.op) {
                return Err(format!(
                    "`{op}` is not available in templates: `*`, `+` and `~` can build text without bound; \
                     write literal text around the expressions instead (`{{{{ a }}}}-{{{{ b }}}}`, not `{{{{ a ~ '-' ~ b }}}}`)"
                ));
            }
            expr(&b.left)?;
            expr(&b.right)
        }
        Expr::Compare(c) => {
            expr(&c.expr)?;
            c.ops.iter().try_for_each(|op| expr(&op.expr))
        }
        Expr::IfExpr(i) => {
            expr(&i.test_expr)?;
            expr(&i.true_expr)?;
            i.false_expr.as_ref().map_or(Ok(()), expr)
        }
        Expr::Filter(f) => {
            if !FILTERS.iter().any(|row| row.name == f.name) {
                return Err(format!(
                    "unknown filter `{}`; templates may use only: {}",
                    f.name,
                    names(FILTERS.iter().map(|row| row.name))
                ));
            }
            f.expr.as_ref().map_or(Ok(()), expr)?;
            args(&f.args)
        }
        Expr::Test(t) => {
            if !TESTS.iter().any(|row| row.name == t.name) {
                return Err(format!(
                    "unknown test `{}`; templates may use only: {}",
                    t.name,
                    names(TESTS.iter().map(|row| row.name))
                ));
            }
            expr(&t.expr)?;
            args(&t.args)
        }
        Expr::GetAttr(a) => expr(&a.expr),
        Expr::GetItem(i) => {
            expr(&i.expr)?;
            expr(&i.subscript_expr)
        }
        Expr::Call(c) => {
            callee(&c.expr)?;
            args(&c.args)
        }
        Expr::List(l) => match l.as_const() {
            Some(_) => Ok(()),
            None => refuse(
                "lists in templates may hold only constants (`['a', 'b']`); refer to the values themselves",
            ),
        },
        Expr::Map(m) => match m.as_const() {
            Some(_) => Ok(()),
            None => refuse(
                "maps in templates may hold only constants (`{'a': 1}`); refer to the values themselves",
            ),
        },
    }
}

/// `range(…)`, or `loop.cycle(…)` / `loop.changed(…)`.
fn callee(node: &Expr<'_>) -> Checked {
    match node {
        Expr::Var(v) if FUNCTIONS.contains(&v.id) => Ok(()),
        Expr::GetAttr(a)
            if LOOP_METHODS.contains(&a.name) && matches!(&a.expr, Expr::Var(v) if v.id == "loop") =>
        {
            Ok(())
        }
        Expr::Var(v) => Err(format!(
            "unknown function `{}`; templates may call only {}",
            v.id,
            names(FUNCTIONS.iter().copied())
        )),
        _ => refuse(
            "unknown function; templates may call only `range(…)` and, in a loop, `loop.cycle(…)` and `loop.changed(…)`",
        ),
    }
}

fn args(list: &[CallArg<'_>]) -> Checked {
    list.iter().try_for_each(|arg| match arg {
        CallArg::Pos(e) | CallArg::Kwarg(_, e) => expr(e),
        CallArg::PosSplat(_) | CallArg::KwargSplat(_) => {
            refuse("`*args` and `**kwargs` are not available in templates")
        }
    })
}

fn repeating_operator(op: ast::BinOpKind) -> Option<&'static str> {
    match op {
        ast::BinOpKind::Mul => Some("*"),
        ast::BinOpKind::Pow => Some("*"),
        ast::BinOpKind::Add => Some("+"),
        ast::BinOpKind::Concat => Some("~"),
        _ => None,
    }
}

fn refuse(message: &str) -> Checked {
    Err(message.to_owned())
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
