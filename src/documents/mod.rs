//! Objects a job reads from S3: the `documents` sent to Converse as document
//! or image blocks (and, when they are text, offered to templates), and the
//! JSON Lines file a batch names in `items_from`.
//!
//! Everything here is read with the function's own (account B) S3 client, never
//! with RoleA's credentials. This module owns the `s3://bucket/key` parsing for
//! those objects, the choice of Converse format and block name, the Converse
//! count and size limits, and the mapping of S3 failures to what to fix.
//!
//! Layout: this file reads documents ([`load_documents`], [`Document`]), names
//! their blocks, and holds what both kinds of object share (the URI parsing,
//! GetObject within a size limit, S3 failures as [`DocumentError`]);
//! `formats` tells a document from an image and picks its Converse format;
//! `items` reads and parses an `items_from` file ([`load_items`]).

mod formats;
mod items;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures_util::future::try_join_all;
use serde_json::{json, Value};
use thiserror::Error;

use crate::aws::errors::{Class, SdkFailure};
use crate::aws::uri::S3Object;
use crate::domain::job::{ContentBlock, MediaBlock, MediaSource};
use aws_smithy_runtime_api::http::Response as HttpResponse;

pub use formats::MediaKind;
use formats::{accepted_formats, detect_format, file_name, format_by_extension, Format};
pub use items::{cut_items, load_items, read_chunk};

/// Document blocks Converse takes in one request (Bedrock API reference, `Message.content`).
pub const MAX_DOCUMENTS: usize = 5;
/// Image blocks Converse takes in one request (Bedrock API reference, `Message.content`).
pub const MAX_IMAGES: usize = 20;
/// Largest document block, 4.5 MB (Bedrock API reference, `Message.content`); decimal
/// megabytes, the smaller reading, so nothing passed here is refused by Bedrock for size.
pub const MAX_DOCUMENT_BYTES: u64 = 4_500_000;
/// Largest image block, 3.75 MB (Bedrock API reference, `Message.content`); decimal, as above.
pub const MAX_IMAGE_BYTES: u64 = 3_750_000;
/// Longest document name Bedrock accepts (Bedrock API reference, `DocumentBlock.name`).
const MAX_NAME_LEN: usize = 200;

/// An object that cannot be read or sent, with what to fix.
#[derive(Debug, Error)]
pub enum DocumentError {
    /// The text is not `s3://bucket/key`.
    #[error("`{uri}` is not an S3 object URI: {reason}")]
    InvalidUri {
        /// The text given.
        uri: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The bucket or the key does not exist.
    #[error("`{uri}`: {what} does not exist; check the bucket and key the job names")]
    NotFound {
        /// The object's URI.
        uri: String,
        /// `bucket `name`` or `key `name``.
        what: String,
    },
    /// S3 refused the execution role.
    #[error(
        "reading `{uri}` was denied ({message}); grant the function's execution role \
         s3:GetObject on {object_arn} and check the bucket policy (without s3:ListBucket on \
         the bucket a missing key is also reported as denied; an SSE-KMS object also needs \
         kms:Decrypt on its key)"
    )]
    Denied {
        /// The object's URI.
        uri: String,
        /// The object's ARN, for the policy.
        object_arn: String,
        /// What S3 said.
        message: String,
    },
    /// S3 could not be reached or failed; the same read may succeed later.
    #[error("could not read `{uri}` from S3 ({message}); a retry may succeed")]
    Unavailable {
        /// The object's URI.
        uri: String,
        /// What went wrong.
        message: String,
    },
    /// One object is over Converse's size limit for its block kind.
    #[error(
        "`{uri}` is at least {size} bytes, over the {limit} bytes Converse takes in one \
         {kind} block; {fix}",
        kind = kind.as_str(),
        fix = match kind {
            MediaKind::Document => "shrink it or split it into several objects",
            MediaKind::Image => "downscale or recompress it",
        }
    )]
    TooLarge {
        /// The object's URI.
        uri: String,
        /// Document or image.
        kind: MediaKind,
        /// The size S3 reported, or the bytes read when the body overran.
        size: u64,
        /// The limit for the kind.
        limit: u64,
    },
    /// The job's documents together are over its share of the function's
    /// memory.
    #[error(
        "`{uri}` would take the job's documents over their budget of {budget} bytes (a quarter of the function's memory, AWS_LAMBDA_FUNCTION_MEMORY_SIZE, shared by the batch items that run at once); use fewer or smaller documents, raise the function's MemorySize, or lower RELAY_MAX_CONCURRENCY"
    )]
    OverBudget {
        /// The object that went over.
        uri: String,
        /// The budget, in bytes.
        budget: u64,
    },
    /// The job lists more objects of a kind than one Converse request takes.
    #[error(
        "`documents` lists {count} {what}, more than the {limit} Converse takes in one \
         request; drop some or split the job"
    )]
    TooMany {
        /// `documents`, `images` or `objects`.
        what: &'static str,
        /// How many the job lists.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Neither the key's extension nor the Content-Type is a format Converse takes.
    #[error(
        "`{uri}`: {found} is not a format Converse takes; use one of {accepted} \
         (by the key's extension, or the object's Content-Type when the extension is not one of these)",
        accepted = accepted_formats()
    )]
    Unsupported {
        /// The object's URI.
        uri: String,
        /// The extension and Content-Type seen.
        found: String,
    },
    /// A line of an `items_from` file is not JSON (or not UTF-8).
    #[error("{uri} line {line}: {message}")]
    InvalidItems {
        /// The items file's URI.
        uri: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong on that line.
        message: String,
    },
    /// An `items_from` file has more items than a batch may have.
    #[error(
        "{uri} has more than {limit} items, the most RELAY_MAX_ITEMS allows in one batch; \
         split the file into several batches (or raise RELAY_MAX_ITEMS)"
    )]
    TooManyItems {
        /// The items file's URI.
        uri: String,
        /// The configured limit.
        limit: usize,
    },
    /// The items object changed after its batch was planned.
    #[error(
        "{uri} changed after its batch was planned (its ETag no longer matches), so this \
         chunk's items are not run: a batch never mixes two versions of its items; write \
         changed items to a new object and send a new job for them"
    )]
    ItemsChanged {
        /// The items file's URI.
        uri: String,
    },
    /// An `items_from` file is larger than the configured limit.
    #[error(
        "{uri} is at least {size} bytes, over the {limit}-byte limit for an items file; \
         split it into several batches"
    )]
    ItemsTooLarge {
        /// The items file's URI.
        uri: String,
        /// The size S3 reported, or the bytes read when the body overran.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
}

impl DocumentError {
    /// A stable name for the record and the Lambda error type. An items file
    /// over a limit shares the codes of the failure table (docs/failures.md): too many
    /// items is `InvalidItems`, too many bytes `DocumentTooLarge`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUri { .. } => "InvalidDocumentUri",
            Self::NotFound { .. } => "DocumentNotFound",
            Self::Denied { .. } => "DocumentDenied",
            Self::Unavailable { .. } => "DocumentUnavailable",
            Self::TooLarge { .. } | Self::ItemsTooLarge { .. } | Self::OverBudget { .. } => {
                "DocumentTooLarge"
            }
            Self::TooMany { .. } => "TooManyDocuments",
            Self::Unsupported { .. } => "UnsupportedDocument",
            Self::InvalidItems { .. } | Self::TooManyItems { .. } => "InvalidItems",
            Self::ItemsChanged { .. } => "ItemsChanged",
        }
    }

    /// Whether the same event may succeed when retried. Only a failed read is
    /// worth it: everything else is the job's or the object's own content, and a
    /// denied or missing object needs a human to change a policy or upload it.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// One object read for a job, ready to send to Converse.
#[derive(Clone, PartialEq)]
pub struct Document {
    /// `s3://bucket/key`, as the job gave it.
    pub uri: String,
    /// The block name: from the key's file stem, in the characters Bedrock
    /// accepts, unique within the job.
    pub name: String,
    /// Document or image block.
    pub kind: MediaKind,
    /// The Converse format: `pdf`, `csv`, `doc`, `docx`, `xls`, `xlsx`, `html`,
    /// `txt`, `md`, `png`, `jpeg`, `gif` or `webp`.
    pub format: String,
    /// The object's content.
    pub bytes: Bytes,
    /// The content as text, for the text formats (csv, html, txt, md) when it is
    /// valid UTF-8; the block is sent either way.
    pub text: Option<String>,
}

// By hand: a derived Debug would print megabytes of content into logs.
impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("uri", &self.uri)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("format", &self.format)
            .field("size", &self.bytes.len())
            .field("has_text", &self.text.is_some())
            .finish()
    }
}

impl Document {
    /// The Converse content block for this object (base64 bytes, as in a job's
    /// own `messages`).
    pub fn to_block(&self) -> ContentBlock {
        let source = MediaSource {
            bytes: aws_smithy_types::base64::encode(&self.bytes),
        };
        match self.kind {
            MediaKind::Document => ContentBlock::Document(MediaBlock {
                format: self.format.clone(),
                name: Some(self.name.clone()),
                source,
            }),
            MediaKind::Image => ContentBlock::Image(MediaBlock {
                format: self.format.clone(),
                name: None,
                source,
            }),
        }
    }

    /// What templates see: `{uri, name, format, kind, size, text}`.
    pub fn template_value(&self) -> Value {
        json!({
            "uri": self.uri,
            "name": self.name,
            "format": self.format,
            "kind": self.kind.as_str(),
            "size": self.bytes.len(),
            "text": self.text,
        })
    }
}

/// A block name from the key's file stem in the characters Bedrock accepts:
/// ASCII letters and digits, single spaces, hyphens, parentheses and square
/// brackets. Any other character becomes a hyphen; runs of whitespace become
/// one space and runs of hyphens one hyphen.
fn sanitize_name(key: &str) -> String {
    let file = file_name(key);
    let stem = match file.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => file,
    };
    let mut name = String::with_capacity(stem.len());
    for c in stem.chars() {
        let c = if c.is_whitespace() {
            ' '
        } else if c.is_ascii_alphanumeric() || matches!(c, '-' | '(' | ')' | '[' | ']') {
            c
        } else {
            '-'
        };
        let repeats = matches!(c, ' ' | '-') && name.ends_with(c);
        let leading_space = c == ' ' && name.is_empty();
        if !repeats && !leading_space {
            name.push(c);
        }
    }
    let name = name.trim_end();
    // A name of only hyphens (say, from a key in another script) says nothing.
    if !name.bytes().any(|b| b.is_ascii_alphanumeric()) {
        return "document".to_owned();
    }
    truncate(name, MAX_NAME_LEN).to_owned()
}

/// `name` cut to at most `max` bytes, without a trailing space. Names are ASCII.
fn truncate(name: &str, max: usize) -> &str {
    let cut = name.get(..max.min(name.len())).unwrap_or(name);
    cut.trim_end()
}

/// Hands out names unique within one job, `name (2)`, `name (3)`, … for repeats.
/// Bedrock rejects a request whose documents share a name; compared without
/// case, to be safe.
#[derive(Default)]
struct UniqueNames {
    taken: HashSet<String>,
}

impl UniqueNames {
    fn claim(&mut self, base: &str) -> String {
        let mut candidate = base.to_owned();
        let mut n = 2usize;
        while !self.taken.insert(candidate.to_ascii_lowercase()) {
            let suffix = format!(" ({n})");
            candidate = format!(
                "{}{suffix}",
                truncate(base, MAX_NAME_LEN.saturating_sub(suffix.len()))
            );
            n += 1;
        }
        candidate
    }
}

/// Parses an object URI of `documents` or `items_from` (see [`S3Object::parse`]).
fn parse_object(uri: &str) -> Result<S3Object, DocumentError> {
    S3Object::parse(uri).map_err(|reason| DocumentError::InvalidUri {
        uri: uri.to_owned(),
        reason,
    })
}

/// Fails when a kind's count is over its Converse limit.
fn check_counts(kinds: impl Iterator<Item = MediaKind>) -> Result<(), DocumentError> {
    let (mut documents, mut images) = (0, 0);
    for kind in kinds {
        match kind {
            MediaKind::Document => documents += 1,
            MediaKind::Image => images += 1,
        }
    }
    if documents > MAX_DOCUMENTS {
        return Err(DocumentError::TooMany {
            what: "documents",
            count: documents,
            limit: MAX_DOCUMENTS,
        });
    }
    if images > MAX_IMAGES {
        return Err(DocumentError::TooMany {
            what: "images",
            count: images,
            limit: MAX_IMAGES,
        });
    }
    Ok(())
}

/// Reads the job's `documents` (already rendered) concurrently, in order.
///
/// Count limits are checked before any S3 call as far as the keys' extensions
/// tell the kind, and again once every object's format is known. Size limits
/// are checked on the size S3 reports before the body is read, and again while
/// reading it.
pub async fn load_documents(
    s3: &aws_sdk_s3::Client,
    uris: &[String],
    budget: u64,
) -> Result<Vec<Document>, DocumentError> {
    let objects = uris
        .iter()
        .map(|uri| parse_object(uri))
        .collect::<Result<Vec<_>, _>>()?;
    if uris.len() > MAX_DOCUMENTS + MAX_IMAGES {
        return Err(DocumentError::TooMany {
            what: "objects",
            count: uris.len(),
            limit: MAX_DOCUMENTS + MAX_IMAGES,
        });
    }
    check_counts(
        objects
            .iter()
            .filter_map(|object| format_by_extension(&object.key))
            .map(|format| format.kind),
    )?;

    // Each distinct URI is read once and held once; a repeat shares its bytes.
    let mut distinct: Vec<usize> = Vec::new();
    for (i, uri) in uris.iter().enumerate() {
        if !distinct.iter().any(|&d| uris[d] == *uri) {
            distinct.push(i);
        }
    }
    let left = AtomicU64::new(budget);
    let read = try_join_all(
        distinct
            .iter()
            .map(|&i| fetch_media(s3, &uris[i], &objects[i], &left, budget)),
    )
    .await?;
    let fetched: Vec<(&'static Format, Bytes)> = uris
        .iter()
        .map(|uri| {
            let at = distinct.iter().position(|&d| uris[d] == *uri).unwrap_or(0);
            read[at].clone()
        })
        .collect();
    check_counts(fetched.iter().map(|(format, _)| format.kind))?;

    let mut names = UniqueNames::default();
    Ok(uris
        .iter()
        .zip(&objects)
        .zip(fetched)
        .map(|((uri, object), (format, bytes))| {
            let text = if format.is_text() {
                std::str::from_utf8(&bytes)
                    .ok()
                    .map(|text| text.strip_prefix('\u{feff}').unwrap_or(text).to_owned())
            } else {
                None
            };
            Document {
                uri: uri.clone(),
                name: names.claim(&sanitize_name(&object.key)),
                kind: format.kind,
                format: format.name.to_owned(),
                bytes,
                text,
            }
        })
        .collect())
}

/// GetObject, the format from the key or the Content-Type, and the body within
/// the block kind's size limit.
/// The body is charged against `left`, the job's document budget of
/// `budget` bytes, before it is read: its Content-Length, or the kind's limit
/// when S3 gives none.
async fn fetch_media(
    s3: &aws_sdk_s3::Client,
    uri: &str,
    object: &S3Object,
    left: &AtomicU64,
    budget: u64,
) -> Result<(&'static Format, Bytes), DocumentError> {
    let output = get_object(s3, uri, object).await?;
    let format = detect_format(uri, &object.key, output.content_type())?;
    let kind = format.kind;
    let charge = output
        .content_length()
        .and_then(|len| u64::try_from(len).ok())
        .unwrap_or(kind.max_bytes())
        .min(kind.max_bytes());
    let charged = left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
        l.checked_sub(charge)
    });
    if charged.is_err() {
        return Err(DocumentError::OverBudget {
            uri: uri.to_owned(),
            budget,
        });
    }
    let too_large = |size| DocumentError::TooLarge {
        uri: uri.to_owned(),
        kind,
        size,
        limit: kind.max_bytes(),
    };
    let bytes = read_body(
        uri,
        output.content_length(),
        output.body,
        kind.max_bytes(),
        too_large,
    )
    .await?;
    Ok((format, bytes))
}

async fn get_object(
    s3: &aws_sdk_s3::Client,
    uri: &str,
    object: &S3Object,
) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, DocumentError> {
    s3.get_object()
        .bucket(&object.bucket)
        .key(&object.key)
        .send()
        .await
        .map_err(|err| classify(uri, object, err))
}

/// The body, refused as soon as it is known to be over `limit`: from the
/// Content-Length before reading, else while reading (the length may be absent).
async fn read_body(
    uri: &str,
    content_length: Option<i64>,
    mut body: ByteStream,
    limit: u64,
    too_large: impl Fn(u64) -> DocumentError,
) -> Result<Bytes, DocumentError> {
    let announced = content_length.and_then(|len| u64::try_from(len).ok());
    if let Some(len) = announced.filter(|len| *len > limit) {
        return Err(too_large(len));
    }
    let capacity = announced.unwrap_or(0).min(limit);
    let mut buffer = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|err| DocumentError::Unavailable {
            uri: uri.to_owned(),
            message: format!("the body broke off: {err}"),
        })?
    {
        let read = (buffer.len() + chunk.len()) as u64;
        if read > limit {
            return Err(too_large(read));
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buffer))
}

/// Maps a GetObject failure to what the user should fix.
fn classify<E: ProvideErrorMetadata>(
    uri: &str,
    object: &S3Object,
    err: SdkError<E, HttpResponse>,
) -> DocumentError {
    let failure = SdkFailure::read(&err);
    let uri = uri.to_owned();
    match (failure.code.as_deref(), failure.class()) {
        (Some("NoSuchKey"), _) => DocumentError::NotFound {
            uri,
            what: format!("key `{}`", object.key),
        },
        (Some("NoSuchBucket"), _) => DocumentError::NotFound {
            uri,
            what: format!("bucket `{}`", object.bucket),
        },
        (Some(_), Class::Denied) => DocumentError::Denied {
            uri,
            object_arn: object.arn(),
            message: failure.message().to_owned(),
        },
        _ => DocumentError::Unavailable {
            uri,
            message: failure.summary("S3"),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// A budget no test document comes near.
    const BUDGET: u64 = 1 << 30;
    use std::collections::HashMap;
    use std::sync::Arc;

    use aws_sdk_s3::config::retry::RetryConfig;
    use aws_sdk_s3::operation::get_object::GetObjectOutput;
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    /// An object as S3 would store it: content and, maybe, a Content-Type.
    pub(crate) struct Stored {
        body: Vec<u8>,
        content_type: Option<&'static str>,
    }

    pub(crate) fn stored(body: impl Into<Vec<u8>>, content_type: Option<&'static str>) -> Stored {
        Stored {
            body: body.into(),
            content_type,
        }
    }

    /// A GetObject mock serving `objects` by key, with their real Content-Length.
    pub(crate) fn s3_serving(objects: Vec<(String, Stored)>) -> (Rule, aws_sdk_s3::Client) {
        let objects: Arc<HashMap<String, Stored>> = Arc::new(objects.into_iter().collect());
        let rule = mock!(aws_sdk_s3::Client::get_object).then_compute_output(move |req| {
            let object = req.key().and_then(|key| objects.get(key));
            let body = object.map(|o| o.body.clone()).unwrap_or_default();
            GetObjectOutput::builder()
                .content_length(body.len() as i64)
                .set_content_type(object.and_then(|o| o.content_type.map(str::to_owned)))
                .body(ByteStream::from(body))
                .build()
        });
        let client = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&rule]);
        (rule, client)
    }

    /// A GetObject mock answering every call with `status` and an S3 XML error.
    pub(crate) fn s3_failing(status: u16, code: &'static str) -> (Rule, aws_sdk_s3::Client) {
        let rule = mock!(aws_sdk_s3::Client::get_object).then_http_response(move || {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                 <Error><Code>{code}</Code><Message>from s3</Message><RequestId>r</RequestId></Error>"
            );
            HttpResponse::new(
                StatusCode::try_from(status).expect("status"),
                SdkBody::from(body),
            )
        });
        // One attempt: the test is about classification, not the SDK's retries.
        let client = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&rule], |builder| builder
            .retry_config(RetryConfig::disabled()));
        (rule, client)
    }

    fn uris(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn names_keep_only_the_characters_bedrock_accepts() {
        assert_eq!(
            sanitize_name("in/Q3 report (final).pdf"),
            "Q3 report (final)"
        );
        assert_eq!(sanitize_name("in/q3_report.v2.pdf"), "q3-report-v2");
        assert_eq!(
            sanitize_name("a/tabs\t\tand   spaces .txt"),
            "tabs and spaces"
        );
        assert_eq!(sanitize_name("a/résumé [draft].docx"), "r-sum- [draft]");
        assert_eq!(sanitize_name("a/a - b.pdf"), "a - b");
        assert_eq!(sanitize_name("a/x__--__y.md"), "x-y");
        assert_eq!(sanitize_name("a/日本語.pdf"), "document");
        assert_eq!(sanitize_name("folder/"), "document");
        assert_eq!(sanitize_name("README"), "README");
        let long = format!("in/{}.pdf", "a".repeat(300));
        assert_eq!(sanitize_name(&long).len(), MAX_NAME_LEN);
        for key in [
            "in/Q3 report (final).pdf",
            "a/résumé [draft].docx",
            "x/  lead.md",
        ] {
            let name = sanitize_name(key);
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric()
                        || matches!(c, ' ' | '-' | '(' | ')' | '[' | ']')),
                "{name}"
            );
            assert!(!name.contains("  ") && name.trim() == name, "{name}");
        }
    }

    #[test]
    fn repeated_names_get_numbered_suffixes_within_the_length_limit() {
        let mut names = UniqueNames::default();
        assert_eq!(names.claim("report"), "report");
        assert_eq!(names.claim("Report"), "Report (2)");
        assert_eq!(names.claim("report"), "report (3)");
        assert_eq!(names.claim("report (2)"), "report (2) (2)");
        let long = "b".repeat(MAX_NAME_LEN);
        assert_eq!(names.claim(&long), long);
        let second = names.claim(&long);
        assert_eq!(second.len(), MAX_NAME_LEN);
        assert!(second.ends_with("b (2)"), "{second}");
    }

    #[test]
    fn object_uris_are_parsed_strictly() {
        let uri = parse_object("s3://my-bucket/in/a b+c.pdf").expect("valid");
        assert_eq!(uri.bucket, "my-bucket");
        assert_eq!(uri.key, "in/a b+c.pdf", "the key is taken as written");
        assert_eq!(uri.arn(), "arn:aws:s3:::my-bucket/in/a b+c.pdf");
        for bad in [
            "https://my-bucket/a.pdf",
            "s3://my-bucket",
            "s3://my-bucket/",
            "s3://My_Bucket/a.pdf",
            "s3://-bucket/a.pdf",
            "s3://ab/a.pdf",
        ] {
            let err = parse_object(bad).expect_err(bad);
            assert_eq!(err.code(), "InvalidDocumentUri", "{bad}");
            assert!(err.to_string().contains(bad), "{err}");
        }
        let too_long = format!(
            "s3://my-bucket/{}",
            "k".repeat(crate::aws::uri::MAX_KEY_LEN + 1)
        );
        assert!(parse_object(&too_long).is_err());
    }

    /// A URI listed twice is read once and its bytes held once; the job's
    /// documents together stay within the budget, refused by Content-Length
    /// before a body over it is read.
    #[tokio::test]
    async fn documents_are_read_once_per_uri_and_within_the_budget() {
        let (rule, s3) = s3_serving(vec![
            ("a.pdf".into(), stored(vec![b'%'; 600], None)),
            ("b.pdf".into(), stored(vec![b'%'; 600], None)),
        ]);
        let twice = uris(&["s3://docs-bucket/a.pdf", "s3://docs-bucket/a.pdf"]);
        let docs = load_documents(&s3, &twice, 1000).await.expect("one read");
        assert_eq!(rule.num_calls(), 1, "read once");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].bytes.as_ptr(), docs[1].bytes.as_ptr(), "held once");
        let both = uris(&["s3://docs-bucket/a.pdf", "s3://docs-bucket/b.pdf"]);
        let err = load_documents(&s3, &both, 1000).await.expect_err("over");
        assert_eq!(err.code(), "DocumentTooLarge");
        assert!(err.to_string().contains("budget of 1000 bytes"), "{err}");
    }

    #[tokio::test]
    async fn documents_load_in_order_with_format_name_and_text() {
        let (rule, s3) = s3_serving(vec![
            ("in/report.pdf".into(), stored(b"%PDF-1.7".to_vec(), None)),
            (
                "in/chart.PNG".into(),
                stored(vec![0x89, b'P', b'N', b'G'], None),
            ),
            ("in/notes.md".into(), stored("\u{feff}# Notes\nhi", None)),
            ("other/notes.md".into(), stored("# More", None)),
            ("in/latin1.csv".into(), stored(vec![b'a', b',', 0xE9], None)),
            ("in/export".into(), stored("a,b\n1,2\n", Some("text/csv"))),
        ]);
        let docs = load_documents(
            &s3,
            &uris(&[
                "s3://docs-bucket/in/report.pdf",
                "s3://docs-bucket/in/chart.PNG",
                "s3://docs-bucket/in/notes.md",
                "s3://docs-bucket/other/notes.md",
                "s3://docs-bucket/in/latin1.csv",
                "s3://docs-bucket/in/export",
            ]),
            BUDGET,
        )
        .await
        .expect("documents");
        assert_eq!(rule.num_calls(), 6);
        let summary: Vec<(&str, MediaKind, &str)> = docs
            .iter()
            .map(|d| (d.name.as_str(), d.kind, d.format.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("report", MediaKind::Document, "pdf"),
                ("chart", MediaKind::Image, "png"),
                ("notes", MediaKind::Document, "md"),
                ("notes (2)", MediaKind::Document, "md"),
                ("latin1", MediaKind::Document, "csv"),
                ("export", MediaKind::Document, "csv"),
            ]
        );
        assert_eq!(docs[0].bytes.as_ref(), b"%PDF-1.7");
        assert_eq!(docs[0].text, None, "a pdf is not offered as text");
        assert_eq!(docs[2].text.as_deref(), Some("# Notes\nhi"), "BOM dropped");
        assert_eq!(docs[4].text, None, "not UTF-8");
        assert_eq!(docs[5].text.as_deref(), Some("a,b\n1,2\n"));

        assert_eq!(
            docs[0].to_block(),
            ContentBlock::Document(MediaBlock {
                format: "pdf".into(),
                name: Some("report".into()),
                source: MediaSource {
                    bytes: aws_smithy_types::base64::encode(b"%PDF-1.7"),
                },
            })
        );
        match docs[1].to_block() {
            ContentBlock::Image(media) => {
                assert_eq!((media.format.as_str(), media.name), ("png", None));
                assert_eq!(
                    crate::domain::job::decode_media(&MediaBlock {
                        format: "png".into(),
                        name: None,
                        source: media.source
                    })
                    .expect("base64"),
                    vec![0x89, b'P', b'N', b'G']
                );
            }
            other => panic!("an image block, got {other:?}"),
        }
        assert_eq!(
            docs[5].template_value(),
            json!({"uri": "s3://docs-bucket/in/export", "name": "export", "format": "csv",
                   "kind": "document", "size": 8, "text": "a,b\n1,2\n"})
        );
        assert_eq!(docs[1].template_value()["kind"], "image");
        assert_eq!(docs[4].template_value()["text"], Value::Null);
    }

    #[tokio::test]
    async fn no_documents_means_no_s3_call() {
        let (rule, s3) = s3_serving(vec![]);
        assert!(load_documents(&s3, &[], BUDGET)
            .await
            .expect("none")
            .is_empty());
        assert_eq!(rule.num_calls(), 0);
    }

    #[tokio::test]
    async fn count_limits_are_checked_before_any_s3_call() {
        let (rule, s3) = s3_serving(vec![]);
        let pdfs: Vec<String> = (0..=MAX_DOCUMENTS)
            .map(|i| format!("s3://docs-bucket/{i}.pdf"))
            .collect();
        let err = load_documents(&s3, &pdfs, BUDGET)
            .await
            .expect_err("six documents");
        assert_eq!(err.code(), "TooManyDocuments");
        assert!(!err.is_retryable());
        assert!(
            err.to_string().contains("6 documents, more than the 5"),
            "{err}"
        );

        let images: Vec<String> = (0..=MAX_IMAGES)
            .map(|i| format!("s3://docs-bucket/{i}.jpg"))
            .collect();
        let err = load_documents(&s3, &images, BUDGET)
            .await
            .expect_err("21 images");
        assert!(
            err.to_string().contains("21 images, more than the 20"),
            "{err}"
        );

        let unknown: Vec<String> = (0..=MAX_DOCUMENTS + MAX_IMAGES)
            .map(|i| format!("s3://docs-bucket/blob-{i}"))
            .collect();
        let err = load_documents(&s3, &unknown, BUDGET)
            .await
            .expect_err("26 objects");
        assert!(
            err.to_string().contains("26 objects, more than the 25"),
            "{err}"
        );

        assert_eq!(rule.num_calls(), 0, "nothing was fetched");
    }

    #[tokio::test]
    async fn count_limits_are_checked_again_once_content_types_are_known() {
        let objects = (0..=MAX_DOCUMENTS)
            .map(|i| {
                (
                    format!("scan-{i}"),
                    stored(b"%PDF".to_vec(), Some("application/pdf")),
                )
            })
            .collect();
        let (rule, s3) = s3_serving(objects);
        let list: Vec<String> = (0..=MAX_DOCUMENTS)
            .map(|i| format!("s3://docs-bucket/scan-{i}"))
            .collect();
        let err = load_documents(&s3, &list, BUDGET)
            .await
            .expect_err("six pdfs");
        assert_eq!(err.code(), "TooManyDocuments");
        assert_eq!(rule.num_calls(), MAX_DOCUMENTS + 1);
    }

    #[tokio::test]
    async fn size_limit_is_taken_from_content_length_before_the_body() {
        // S3 announces more than the limit; the tiny body is never the reason.
        let rule = mock!(aws_sdk_s3::Client::get_object).then_output(|| {
            GetObjectOutput::builder()
                .content_length(MAX_DOCUMENT_BYTES as i64 + 1)
                .body(ByteStream::from_static(b"%PDF"))
                .build()
        });
        let s3 = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&rule]);
        let err = load_documents(&s3, &uris(&["s3://docs-bucket/big.pdf"]), BUDGET)
            .await
            .expect_err("too large");
        match &err {
            DocumentError::TooLarge {
                uri,
                kind,
                size,
                limit,
            } => {
                assert_eq!(uri, "s3://docs-bucket/big.pdf");
                assert_eq!(*kind, MediaKind::Document);
                assert_eq!(*size, MAX_DOCUMENT_BYTES + 1);
                assert_eq!(*limit, MAX_DOCUMENT_BYTES);
            }
            other => panic!("TooLarge, got {other:?}"),
        }
        assert_eq!(err.code(), "DocumentTooLarge");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("document block"), "{err}");
    }

    #[tokio::test]
    async fn size_limit_is_enforced_on_the_bytes_when_no_length_is_given() {
        let rule = mock!(aws_sdk_s3::Client::get_object).then_output(|| {
            GetObjectOutput::builder()
                .body(ByteStream::from(vec![0u8; MAX_IMAGE_BYTES as usize + 1]))
                .build()
        });
        let s3 = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&rule]);
        let err = load_documents(&s3, &uris(&["s3://docs-bucket/huge.webp"]), BUDGET)
            .await
            .expect_err("too large");
        assert!(err.to_string().contains("downscale or recompress"), "{err}");
        match err {
            DocumentError::TooLarge {
                kind, size, limit, ..
            } => {
                assert_eq!(kind, MediaKind::Image);
                assert!(size > MAX_IMAGE_BYTES);
                assert_eq!(limit, MAX_IMAGE_BYTES);
            }
            other => panic!("TooLarge, got {other:?}"),
        }
        // Exactly at the limit is fine.
        let at_limit = mock!(aws_sdk_s3::Client::get_object).then_output(|| {
            GetObjectOutput::builder()
                .body(ByteStream::from(vec![0u8; MAX_IMAGE_BYTES as usize]))
                .build()
        });
        let s3 = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&at_limit]);
        let docs = load_documents(&s3, &uris(&["s3://docs-bucket/edge.webp"]), BUDGET)
            .await
            .expect("at the limit");
        assert_eq!(docs[0].bytes.len() as u64, MAX_IMAGE_BYTES);
    }

    #[tokio::test]
    async fn s3_errors_are_classified_by_what_to_fix() {
        for (status, code, expected, retryable) in [
            (404, "NoSuchKey", "DocumentNotFound", false),
            (404, "NoSuchBucket", "DocumentNotFound", false),
            (403, "AccessDenied", "DocumentDenied", false),
            (500, "InternalError", "DocumentUnavailable", true),
            (503, "SlowDown", "DocumentUnavailable", true),
        ] {
            let (rule, s3) = s3_failing(status, code);
            let err = load_documents(&s3, &uris(&["s3://docs-bucket/in/a.pdf"]), BUDGET)
                .await
                .expect_err(code);
            assert_eq!(err.code(), expected, "{code}: {err}");
            assert_eq!(err.is_retryable(), retryable, "{code}");
            assert!(
                err.to_string().contains("s3://docs-bucket/in/a.pdf"),
                "{code}: {err}"
            );
            assert_eq!(rule.num_calls(), 1, "{code}");
        }
        let (_, s3) = s3_failing(404, "NoSuchBucket");
        let err = load_documents(&s3, &uris(&["s3://docs-bucket/in/a.pdf"]), BUDGET)
            .await
            .expect_err("no bucket");
        assert!(err.to_string().contains("bucket `docs-bucket`"), "{err}");

        let (_, s3) = s3_failing(403, "AccessDenied");
        let text = load_documents(&s3, &uris(&["s3://docs-bucket/in/a.pdf"]), BUDGET)
            .await
            .expect_err("denied")
            .to_string();
        assert!(
            text.contains("s3:GetObject on arn:aws:s3:::docs-bucket/in/a.pdf"),
            "{text}"
        );
        assert!(text.contains("bucket policy"), "{text}");
    }
}
