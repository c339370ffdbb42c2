//! Docs that cannot drift from the code: every `RELAY_*` variable the
//! configuration reads is a row of `docs/configuration.md` and every row is
//! read; every parameter of `template.yaml` and `deploy/account-a.yaml` is a
//! row of its table there, and every row is a parameter; every job example in
//! the docs validates against `schema/job.schema.json`; every error code the
//! code can return is a row of the failure table in `docs/failures.md`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: impl AsRef<Path>) -> String {
    let path = root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file under `dir`, with its text cut at its test module.
fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut stack = vec![root().join(dir)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                // The code before the test module (a `#[cfg(test)]` on an
                // import above it is not the module).
                let end = ["#[cfg(test)]\nmod ", "#[cfg(test)]\npub(crate) mod "]
                    .iter()
                    .filter_map(|marker| text.find(marker))
                    .min()
                    .unwrap_or(text.len());
                let code = text[..end].to_owned();
                files.push((path, code));
            }
        }
    }
    files.sort();
    files
}

/// The `RELAY_*` names quoted as string literals in `text`.
fn relay_literals(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("\"RELAY_") {
        let name: String = text[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if text[i + 1 + name.len()..].starts_with('"') {
            names.insert(name);
        }
    }
    names
}

/// The first cell of each row of the first Markdown table after `heading`,
/// up to the next heading of the same or a higher level.
fn first_cells(markdown: &str, heading: &str) -> Vec<String> {
    let start = markdown
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}`"));
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut cells = Vec::new();
    for line in markdown[start + heading.len()..].lines() {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
            break;
        }
        if let Some(row) = line.strip_prefix("| ") {
            if let Some(cell) = row.split(" | ").next() {
                cells.push(cell.to_owned());
            }
        }
    }
    cells
}

/// The backticked names in `cells`.
fn ticked(cells: &[String]) -> BTreeSet<String> {
    cells
        .iter()
        .flat_map(|cell| {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The configuration reads exactly the variables `docs/configuration.md`
/// lists: none is undocumented, none documented is dead.
#[test]
fn every_relay_variable_read_is_documented_and_every_documented_one_is_read() {
    let read_by_code: BTreeSet<String> = sources("src/config")
        .iter()
        .flat_map(|(_, text)| relay_literals(text))
        .chain(
            // Read before the configuration: logging's switch, the X-Ray toggle.
            sources("src")
                .iter()
                .filter(|(_, text)| text.contains("env::var(\"RELAY_"))
                .flat_map(|(_, text)| relay_literals(text)),
        )
        .collect();
    let documented: BTreeSet<String> = ticked(&first_cells(
        &read("docs/configuration.md"),
        "## Function environment",
    ))
    .into_iter()
    .filter(|name| name.starts_with("RELAY_"))
    .collect();
    let undocumented: Vec<_> = read_by_code.difference(&documented).collect();
    let unread: Vec<_> = documented.difference(&read_by_code).collect();
    assert!(
        undocumented.is_empty(),
        "read but not in docs/configuration.md: {undocumented:?}"
    );
    assert!(unread.is_empty(), "documented but never read: {unread:?}");
}

/// The parameter names of a CloudFormation template (the `Parameters:` block).
fn parameters(template: &str) -> BTreeSet<String> {
    let text = read(template);
    let mut names = BTreeSet::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("Parameters:") {
            inside = true;
            continue;
        }
        if inside {
            if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
                break;
            }
            if let Some(name) = line.strip_prefix("  ") {
                if let Some(name) = name.strip_suffix(':') {
                    if !name.starts_with(' ') && !name.starts_with('#') {
                        names.insert(name.to_owned());
                    }
                }
            }
        }
    }
    assert!(!names.is_empty(), "{template} has parameters");
    names
}

/// Each stack's parameters are exactly the rows of its table.
#[test]
fn every_sam_parameter_is_documented_and_every_documented_one_exists() {
    let docs = read("docs/configuration.md");
    for (template, heading) in [
        ("template.yaml", "### Account B: `template.yaml`"),
        (
            "deploy/account-a.yaml",
            "### Account A: `deploy/account-a.yaml`",
        ),
    ] {
        let declared = parameters(template);
        let documented = ticked(&first_cells(&docs, heading));
        let missing: Vec<_> = declared.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&declared).collect();
        assert!(
            missing.is_empty(),
            "{template}: undocumented parameters {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "{template}: documented but not declared {extra:?}"
        );
    }
}

/// The ```json blocks of a Markdown text.
fn json_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut rest = markdown;
    while let Some(start) = rest.find("```json\n") {
        let body = &rest[start + "```json\n".len()..];
        let Some(end) = body.find("```") else { break };
        blocks.push(body[..end].to_owned());
        rest = &body[end..];
    }
    blocks
}

/// Every JSON block in the docs parses, and every one that is a job (or a
/// `Bedrock Relay Job` event) validates against the published schema.
#[test]
fn every_job_example_in_the_docs_validates_against_the_schema() {
    let schema: Value = serde_json::from_str(&read("schema/job.schema.json")).expect("schema");
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.push(root().join("README.md"));
    pages.sort();
    let mut jobs = 0;
    for page in pages {
        let text = std::fs::read_to_string(&page).expect("page");
        for (i, block) in json_blocks(&text).iter().enumerate() {
            let value: Value = serde_json::from_str(block).unwrap_or_else(|e| {
                panic!("{} block {i} is not JSON ({e}):\n{block}", page.display())
            });
            let job = match value.get("detail-type").and_then(Value::as_str) {
                Some("Bedrock Relay Job") => value.get("detail").cloned(),
                Some(_) => None,
                None => ["prompt", "messages", "invoke"]
                    .iter()
                    .any(|k| value.get(k).is_some())
                    .then_some(value),
            };
            let Some(job) = job else { continue };
            let errors: Vec<String> = validator
                .iter_errors(&job)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{} block {i} is not a valid job: {errors:?}",
                page.display()
            );
            jobs += 1;
        }
    }
    assert!(jobs >= 4, "only {jobs} job examples found in the docs");
}

/// The codes a `fn code(&self)` returns and the item error kinds the run
/// modes write.
fn error_codes() -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    let quoted = |text: &str, codes: &mut BTreeSet<String>| {
        for piece in text.split('"').skip(1).step_by(2) {
            if piece.len() > 3
                && piece.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && piece.chars().all(|c| c.is_ascii_alphanumeric())
            {
                codes.insert(piece.to_owned());
            }
        }
    };
    for (path, text) in sources("src") {
        let mut rest = text.as_str();
        while let Some(at) = rest.find("fn code(&self) -> &'static str {") {
            let body = &rest[at..];
            let mut depth = 0;
            let mut end = body.len();
            for (i, c) in body.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            quoted(&body[..end], &mut codes);
            rest = &body[end..];
        }
        for (at, _) in text.match_indices("kind: \"") {
            let piece = &text[at + "kind: ".len()..];
            if let Some(line) = piece.lines().next() {
                if line.contains(".into()") {
                    quoted(line, &mut codes);
                }
            }
        }
        assert!(path.exists());
    }
    codes
}

/// Each error code the code can return has its row in the failure table.
#[test]
fn every_error_code_is_a_row_of_the_failure_table() {
    let codes = error_codes();
    assert!(
        codes.contains("BedrockThrottled") && codes.contains("OutputInvalid"),
        "{codes:?}"
    );
    let rows = ticked(&first_cells(
        &read("docs/failures.md"),
        "# Failures and redrive",
    ));
    let missing: Vec<_> = codes.difference(&rows).collect();
    assert!(
        missing.is_empty(),
        "codes without a row in docs/failures.md: {missing:?}"
    );
}

/// A heading's anchor as GitHub makes it: lowercase, punctuation dropped,
/// spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every relative link in the README and the docs points at a file that
/// exists, and at a heading of it when it names one.
#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut pages: Vec<PathBuf> = vec![root().join("README.md"), root().join("events/README.md")];
    for dir in ["docs", "examples"] {
        let mut stack = vec![root().join(dir)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "md") {
                    pages.push(path);
                }
            }
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("page");
        for (at, _) in text.match_indices("](") {
            let link: String = text[at + 2..]
                .chars()
                .take_while(|c| *c != ')' && !c.is_whitespace())
                .collect();
            if link.starts_with("http") || link.starts_with("mailto:") {
                continue;
            }
            let (path, heading) = link.split_once('#').unwrap_or((link.as_str(), ""));
            let target = match path {
                "" => page.clone(),
                path => page.parent().expect("parent").join(path),
            };
            if !target.exists() {
                broken.push(format!("{}: {link} (no such file)", page.display()));
                continue;
            }
            if !heading.is_empty() && target.extension().is_some_and(|e| e == "md") {
                let body = std::fs::read_to_string(&target).expect("target");
                let found = body
                    .lines()
                    .filter(|l| l.starts_with('#'))
                    .any(|l| anchor(l.trim_start_matches('#')) == heading);
                if !found {
                    broken.push(format!("{}: {link} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
