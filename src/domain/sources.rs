//! Which S3 objects a job may read as `documents` or `items_from`.
//!
//! The execution role can read more than a job should: the relay's own
//! results, claims and spill objects sit under prefixes it must read back.
//! So reading is allowed by patterns (`RELAY_ALLOWED_SOURCES`), none meaning
//! nothing, and the relay's own prefixes are refused even when a pattern
//! matches, so one event cannot pipe another job's results into its prompt.

use thiserror::Error;
use wildmatch::WildMatch;

/// A source a job may not read.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SourceError {
    /// No `RELAY_ALLOWED_SOURCES` pattern matches.
    #[error("{field}: `{uri}` is not an allowed source (RELAY_ALLOWED_SOURCES: {allowed}); add a pattern that matches it, e.g. s3://my-bucket/inputs/* (the SAM parameter InputObjectArns sets both the pattern and the IAM grant)")]
    NotAllowed {
        /// The job field, e.g. `documents[0]` or `items_from`.
        field: String,
        /// The URI asked for.
        uri: String,
        /// The patterns, or `none`.
        allowed: String,
    },
    /// The URI is under one of the relay's own prefixes.
    #[error("{field}: `{uri}` is under {prefix}, where the relay keeps its own results, claims and spill objects; those are never read as sources")]
    RelayOwned {
        /// The job field.
        field: String,
        /// The URI asked for.
        uri: String,
        /// The relay's prefix it falls under.
        prefix: String,
    },
}

/// The rule for sources, built once from the configuration.
#[derive(Debug, Clone, Default)]
pub struct SourcePolicy {
    allowed: Vec<(String, WildMatch)>,
    /// Prefixes (or prefix patterns) the relay writes under.
    own: Vec<(String, WildMatch)>,
}

impl SourcePolicy {
    /// Sources matching one of `allowed`, minus anything under `own`. Both
    /// are `s3://bucket/key` patterns where `*` and `?` are wildcards; an
    /// allowed pattern may also be an S3 object ARN pattern
    /// (`arn:aws:s3:::bucket/key*`, what the template's IAM grant uses). An
    /// `own` entry is a prefix (`s3://results/relay/` covers every key under
    /// it).
    pub fn new(allowed: &[String], own: &[String]) -> Self {
        Self {
            allowed: allowed
                .iter()
                .map(|p| as_s3_uri(p.trim()))
                .map(|p| {
                    let pattern = WildMatch::new(&p);
                    (p, pattern)
                })
                .collect(),
            own: own
                .iter()
                .map(|p| (p.clone(), WildMatch::new(&format!("{p}*"))))
                .collect(),
        }
    }

    /// Whether `uri` (the job's `field`) may be read.
    pub fn check(&self, field: &str, uri: &str) -> Result<(), SourceError> {
        let uri = uri.trim();
        if let Some((prefix, _)) = self.own.iter().find(|(_, p)| p.matches(uri)) {
            return Err(SourceError::RelayOwned {
                field: field.to_owned(),
                uri: uri.to_owned(),
                prefix: prefix.clone(),
            });
        }
        if self.allowed.iter().any(|(_, p)| p.matches(uri)) {
            return Ok(());
        }
        Err(SourceError::NotAllowed {
            field: field.to_owned(),
            uri: uri.to_owned(),
            allowed: match self.allowed.is_empty() {
                true => "none".into(),
                false => self
                    .allowed
                    .iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        })
    }

    /// [`SourcePolicy::check`] for every `documents` entry, named by index.
    pub fn check_documents(&self, uris: &[String]) -> Result<(), SourceError> {
        uris.iter()
            .enumerate()
            .try_for_each(|(i, uri)| self.check(&format!("documents[{i}]"), uri))
    }
}

/// `arn:aws:s3:::bucket/key` (any partition) as `s3://bucket/key`.
fn as_s3_uri(pattern: &str) -> String {
    match pattern
        .strip_prefix("arn:")
        .and_then(|rest| rest.split_once(":s3:::"))
    {
        Some((partition, object)) if partition.starts_with("aws") => format!("s3://{object}"),
        _ => pattern.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SourcePolicy {
        SourcePolicy::new(
            &["s3://uploads/*".into(), "s3://shared/docs/*.md".into()],
            &["s3://uploads/relay/".into(), "s3://team-*/out/".into()],
        )
    }

    /// A pattern lets a job read what it names and nothing else; none
    /// configured allows nothing.
    #[test]
    fn sources_are_read_only_where_a_pattern_allows() {
        let p = policy();
        assert!(p.check("items_from", "s3://uploads/in/a.jsonl").is_ok());
        assert!(p.check("documents[0]", "s3://shared/docs/guide.md").is_ok());
        let err = p
            .check("documents[1]", "s3://shared/secrets/key.md")
            .expect_err("not matched");
        assert!(
            err.to_string()
                .starts_with("documents[1]: `s3://shared/secrets/key.md` is not an allowed source"),
            "{err}"
        );
        let none = SourcePolicy::new(&[], &[]);
        let err = none
            .check("items_from", "s3://uploads/a")
            .expect_err("none allowed");
        assert!(
            err.to_string().contains("RELAY_ALLOWED_SOURCES: none"),
            "{err}"
        );
    }

    /// The relay's own prefixes are refused even when a pattern matches them.
    #[test]
    fn the_relays_own_prefixes_are_never_sources() {
        let p = policy();
        for uri in [
            "s3://uploads/relay/other-team/report.json",
            "s3://uploads/relay/_claims/x.json",
            "s3://team-a/out/results.jsonl",
        ] {
            assert!(
                matches!(
                    p.check("documents[0]", uri),
                    Err(SourceError::RelayOwned { .. })
                ),
                "{uri}"
            );
        }
        assert!(p
            .check_documents(&["s3://uploads/a".into(), "s3://uploads/relay/b".into()])
            .is_err());
    }

    /// The template's IAM grant list (object ARNs) works as the pattern list.
    #[test]
    fn object_arns_are_patterns_too() {
        let p = SourcePolicy::new(&["arn:aws:s3:::relay-inputs/contracts/*".into()], &[]);
        assert!(p
            .check("documents[0]", "s3://relay-inputs/contracts/C-1.pdf")
            .is_ok());
        assert!(p
            .check("documents[0]", "s3://relay-inputs/other.pdf")
            .is_err());
    }
}
