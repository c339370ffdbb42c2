//! Making a job ready for its model call, the same way for a single job and
//! for each batch item: its documents read (with account B's credentials),
//! its body rendered with them in scope, the result resolved and the
//! documents attached.

use crate::documents::{self, Document};
use crate::domain::features::{static_prefix, CacheTtl};
use crate::domain::job::{ContentBlock, Job, JobError, ResolvedJob};
use crate::error::RelayError;
use crate::template::Scope;

use super::Services;

/// Where a job's documents come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DocumentSource<'a> {
    /// Read already, once for the whole batch (its `documents` are the same
    /// for every item), and held once.
    Shared(&'a [Document]),
    /// Read for this job, within its share of the document budget: `at_once`
    /// jobs (batch items) may hold theirs at the same time.
    Own { at_once: usize },
}

/// Reads `job`'s (already rendered) documents, renders its body in `scope`
/// with them, and resolves it under `job_id`.
pub(crate) async fn prepare(
    services: &Services,
    mut job: Job,
    mut scope: Scope,
    job_id: &str,
    source: DocumentSource<'_>,
) -> Result<ResolvedJob, RelayError> {
    let own;
    let documents: &[Document] = match (source, job.documents.as_deref()) {
        (DocumentSource::Shared(shared), _) => shared,
        (DocumentSource::Own { .. }, None | Some([])) => &[],
        (DocumentSource::Own { at_once }, Some(uris)) => {
            own = load(services, uris, at_once).await?;
            &own
        }
    };
    if !documents.is_empty() {
        scope.documents = Some(documents.iter().map(Document::template_value).collect());
    }
    // What every item renders the same, taken before rendering: the cacheable prefix.
    let prefix = job
        .prompt
        .as_deref()
        .and_then(static_prefix)
        .map(str::to_owned);
    services.renderer().render_body(&mut job, &scope)?;
    // The mode is the batch's (settled when it was planned); one call has none.
    job.mode = None;
    let mut resolved = job.resolve_with(&services.config().job_defaults(), job_id)?;
    resolved.id = job_id.to_owned();
    let prefix_block = split_prefix(&mut resolved, prefix.as_deref());
    attach_documents(&mut resolved, documents)?;
    if resolved.invoke.is_none() {
        resolved.features.shared_blocks = documents.len() + usize::from(prefix_block);
    }
    Ok(resolved)
}

/// With caching on, splits a rendered prompt into its template's static
/// `prefix` and the rest, as two text blocks, so a cache point can follow the
/// part every item shares. Whether it did.
fn split_prefix(job: &mut ResolvedJob, prefix: Option<&str>) -> bool {
    let (Some(prefix), CacheTtl::FiveMinutes | CacheTtl::OneHour) = (prefix, job.features.cache)
    else {
        return false;
    };
    let Some(first) = job.messages.first_mut() else {
        return false;
    };
    let Some(ContentBlock::Text(text)) = first.content.first() else {
        return false;
    };
    let Some(rest) = text.strip_prefix(prefix).filter(|rest| !rest.is_empty()) else {
        return false;
    };
    let rest = rest.to_owned();
    first.content.splice(
        0..1,
        [
            ContentBlock::Text(prefix.to_owned()),
            ContentBlock::Text(rest),
        ],
    );
    true
}

/// Reads `uris` once they pass `RELAY_ALLOWED_SOURCES`, within the budget of
/// one of `at_once` jobs.
pub(crate) async fn load(
    services: &Services,
    uris: &[String],
    at_once: usize,
) -> Result<Vec<Document>, RelayError> {
    services.config().sources.check_documents(uris)?;
    let budget = services.config().document_budget(at_once);
    Ok(documents::load_documents(services.sinks().s3_client(), uris, budget).await?)
}

/// Puts the loaded documents in front of the first user message's text (the
/// order Bedrock's document guidance recommends). An InvokeModel job's body is
/// the model's own format, so its documents reach it only through templates.
fn attach_documents(job: &mut ResolvedJob, documents: &[Document]) -> Result<(), JobError> {
    if documents.is_empty() {
        return Ok(());
    }
    if job.invoke.is_some() {
        if let Some((i, doc)) = documents.iter().enumerate().find(|(_, d)| d.text.is_none()) {
            return Err(JobError::field(
                format!("documents[{i}]"),
                format!(
                    "`{}` is not text: an `invoke` job uses documents only through templates (`{{{{ documents[{i}].text }}}}`); use `prompt` or `messages` to send it as a block",
                    doc.uri
                ),
            ));
        }
        return Ok(());
    }
    let Some(first) = job.messages.first_mut() else {
        return Ok(());
    };
    first
        .content
        .splice(0..0, documents.iter().map(Document::to_block));
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rendered(prompt: &str, cache: &str) -> ResolvedJob {
        Job::from_value(json!({"prompt": prompt, "cache": cache}))
            .and_then(|job| job.resolve(Some("amazon.nova-lite-v1:0"), "evt-1"))
            .expect("valid")
    }

    /// With caching on, a rendered prompt that starts with its template's
    /// static prefix becomes two blocks; otherwise it stays one.
    #[test]
    fn the_static_prefix_becomes_its_own_block_only_when_cached() {
        let mut job = rendered("Classify this ticket: item 7", "5m");
        assert!(split_prefix(&mut job, Some("Classify this ticket: ")));
        assert_eq!(
            job.messages[0].content,
            vec![
                ContentBlock::Text("Classify this ticket: ".into()),
                ContentBlock::Text("item 7".into())
            ]
        );
        let mut uncached = rendered("Classify this ticket: item 7", "none");
        assert!(!split_prefix(&mut uncached, Some("Classify this ticket: ")));
        assert_eq!(uncached.messages[0].content.len(), 1);
        let mut changed = rendered("Something else", "5m");
        assert!(!split_prefix(&mut changed, Some("Classify this ticket: ")));
        let mut nothing_after = rendered("Classify this ticket: ", "1h");
        assert!(!split_prefix(
            &mut nothing_after,
            Some("Classify this ticket: ")
        ));
    }
}
