//! Objects a job reads from S3: the `documents` sent to Converse as document
//! or image blocks (and, when they are text, offered to templates), and the
//! JSON Lines file a batch names in `items_from`.
//!
//! Everything here is read with the function's own (account B) S3 client, never
//! with RoleA's credentials. This module owns the `s3://bucket/key` parsing for
//! those objects, the choice of Converse format and block name, the Converse
//! count and size limits, and the mapping of S3 failures to what to fix.

use std::collections::HashSet;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures_util::future::try_join_all;
use serde_json::{json, Value};
use thiserror::Error;

use crate::job::{ContentBlock, MediaBlock, MediaSource};

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
/// Longest S3 object key, in bytes.
const MAX_KEY_LEN: usize = 1024;

/// Whether an object goes to Converse as a document or an image block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// A document block (pdf, csv, doc, docx, xls, xlsx, html, txt, md).
    Document,
    /// An image block (png, jpeg, gif, webp).
    Image,
}

impl MediaKind {
    /// `document` or `image`, as templates see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Document => "document",
            Self::Image => "image",
        }
    }

    /// The Converse size limit for one block of this kind.
    pub fn max_bytes(self) -> u64 {
        match self {
            Self::Document => MAX_DOCUMENT_BYTES,
            Self::Image => MAX_IMAGE_BYTES,
        }
    }
}

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
         {kind} block; shrink it (or split it into several objects)",
        kind = kind.as_str()
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
    /// A stable name for the record and the Lambda error type.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUri { .. } => "InvalidDocumentUri",
            Self::NotFound { .. } => "DocumentNotFound",
            Self::Denied { .. } => "DocumentDenied",
            Self::Unavailable { .. } => "DocumentUnavailable",
            Self::TooLarge { .. } => "DocumentTooLarge",
            Self::TooMany { .. } => "TooManyDocuments",
            Self::Unsupported { .. } => "UnsupportedDocument",
            Self::InvalidItems { .. } => "InvalidItems",
            Self::TooManyItems { .. } => "TooManyItems",
            Self::ItemsTooLarge { .. } => "ItemsTooLarge",
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

/// A Converse format and how to recognise it.
struct Format {
    /// The Converse name (`DocumentFormat` / `ImageFormat` value).
    name: &'static str,
    kind: MediaKind,
    /// Key extensions, lowercase, without the dot.
    extensions: &'static [&'static str],
    /// Content-Types, lowercase, without parameters.
    content_types: &'static [&'static str],
}

impl Format {
    /// Text formats are offered to templates as text.
    fn is_text(&self) -> bool {
        matches!(self.name, "csv" | "html" | "txt" | "md")
    }
}

/// Every format Converse takes (aws-sdk-bedrockruntime `DocumentFormat` and `ImageFormat`).
const FORMATS: &[Format] = &[
    Format {
        name: "pdf",
        kind: MediaKind::Document,
        extensions: &["pdf"],
        content_types: &["application/pdf"],
    },
    Format {
        name: "csv",
        kind: MediaKind::Document,
        extensions: &["csv"],
        content_types: &["text/csv"],
    },
    Format {
        name: "doc",
        kind: MediaKind::Document,
        extensions: &["doc"],
        content_types: &["application/msword"],
    },
    Format {
        name: "docx",
        kind: MediaKind::Document,
        extensions: &["docx"],
        content_types: &["application/vnd.openxmlformats-officedocument.wordprocessingml.document"],
    },
    Format {
        name: "xls",
        kind: MediaKind::Document,
        extensions: &["xls"],
        content_types: &["application/vnd.ms-excel"],
    },
    Format {
        name: "xlsx",
        kind: MediaKind::Document,
        extensions: &["xlsx"],
        content_types: &["application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"],
    },
    Format {
        name: "html",
        kind: MediaKind::Document,
        extensions: &["html", "htm"],
        content_types: &["text/html"],
    },
    Format {
        name: "txt",
        kind: MediaKind::Document,
        extensions: &["txt", "text", "log"],
        content_types: &["text/plain"],
    },
    Format {
        name: "md",
        kind: MediaKind::Document,
        extensions: &["md", "markdown"],
        content_types: &["text/markdown", "text/x-markdown"],
    },
    Format {
        name: "png",
        kind: MediaKind::Image,
        extensions: &["png"],
        content_types: &["image/png"],
    },
    Format {
        name: "jpeg",
        kind: MediaKind::Image,
        extensions: &["jpeg", "jpg"],
        content_types: &["image/jpeg"],
    },
    Format {
        name: "gif",
        kind: MediaKind::Image,
        extensions: &["gif"],
        content_types: &["image/gif"],
    },
    Format {
        name: "webp",
        kind: MediaKind::Image,
        extensions: &["webp"],
        content_types: &["image/webp"],
    },
];

fn accepted_formats() -> String {
    FORMATS
        .iter()
        .map(|f| f.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The key's last path segment.
fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// The extension of the key's file name, if it has one (`.env` has none).
fn extension(key: &str) -> Option<&str> {
    match file_name(key).rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => Some(ext),
        _ => None,
    }
}

fn format_by_extension(key: &str) -> Option<&'static Format> {
    let ext = extension(key)?.to_ascii_lowercase();
    FORMATS
        .iter()
        .find(|f| f.extensions.contains(&ext.as_str()))
}

fn format_by_content_type(content_type: &str) -> Option<&'static Format> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    FORMATS
        .iter()
        .find(|f| f.content_types.contains(&essence.as_str()))
}

/// The key's extension if it names a format, else the Content-Type.
fn detect_format(
    uri: &str,
    key: &str,
    content_type: Option<&str>,
) -> Result<&'static Format, DocumentError> {
    if let Some(format) = format_by_extension(key) {
        return Ok(format);
    }
    if let Some(format) = content_type.and_then(format_by_content_type) {
        return Ok(format);
    }
    let extension = match extension(key) {
        Some(ext) => format!("extension `.{ext}`"),
        None => "no extension".to_owned(),
    };
    let content_type = match content_type {
        Some(ct) => format!("Content-Type `{ct}`"),
        None => "no Content-Type".to_owned(),
    };
    Err(DocumentError::Unsupported {
        uri: uri.to_owned(),
        found: format!("{extension} and {content_type}"),
    })
}

/// A block name from the key's file stem in the characters Bedrock accepts:
/// ASCII letters and digits, single spaces, hyphens, parentheses and square
/// brackets. Anything else becomes one hyphen per run.
fn sanitize_name(key: &str) -> String {
    let file = file_name(key);
    let stem = match file.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => file,
    };
    let mut name = String::with_capacity(stem.len());
    // What the last pushed character was, so runs collapse to one.
    let mut last_space = false;
    let mut last_replaced = false;
    for c in stem.chars() {
        if c.is_whitespace() {
            if !last_space && !name.is_empty() {
                name.push(' ');
            }
            last_space = true;
            last_replaced = false;
        } else if c.is_ascii_alphanumeric() || matches!(c, '-' | '(' | ')' | '[' | ']') {
            name.push(c);
            last_space = false;
            last_replaced = false;
        } else {
            if !last_replaced {
                name.push('-');
            }
            last_space = false;
            last_replaced = true;
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

/// `s3://bucket/key`, parsed strictly.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ObjectUri {
    bucket: String,
    key: String,
}

impl ObjectUri {
    /// Same bucket rules as the S3 destination; the key is taken as written (no
    /// percent-decoding) and must not be empty.
    fn parse(uri: &str) -> Result<Self, DocumentError> {
        let invalid = |reason: String| DocumentError::InvalidUri {
            uri: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix("s3://")
            .ok_or_else(|| invalid("expected s3://bucket/key".into()))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| invalid("no key; expected s3://bucket/key".into()))?;
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && !bucket.starts_with(['.', '-'])
            && !bucket.ends_with(['.', '-']);
        if !bucket_ok {
            return Err(invalid(format!(
                "`{bucket}` is not an S3 bucket name (3-63 lowercase letters, digits, dots and hyphens)"
            )));
        }
        if key.is_empty() {
            return Err(invalid("the key is empty; expected s3://bucket/key".into()));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(invalid(format!(
                "the key is {} bytes; S3 keys are at most {MAX_KEY_LEN}",
                key.len()
            )));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    fn arn(&self) -> String {
        format!("arn:aws:s3:::{}/{}", self.bucket, self.key)
    }
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
) -> Result<Vec<Document>, DocumentError> {
    let objects = uris
        .iter()
        .map(|uri| ObjectUri::parse(uri))
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

    let fetched = try_join_all(
        uris.iter()
            .zip(&objects)
            .map(|(uri, object)| fetch_media(s3, uri, object)),
    )
    .await?;
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
async fn fetch_media(
    s3: &aws_sdk_s3::Client,
    uri: &str,
    object: &ObjectUri,
) -> Result<(&'static Format, Bytes), DocumentError> {
    let output = get_object(s3, uri, object).await?;
    let format = detect_format(uri, &object.key, output.content_type())?;
    let kind = format.kind;
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
    object: &ObjectUri,
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
fn classify<E: ProvideErrorMetadata, R>(
    uri: &str,
    object: &ObjectUri,
    err: SdkError<E, R>,
) -> DocumentError {
    let message = err.message().unwrap_or("no message").to_owned();
    match err.code() {
        Some("NoSuchKey") => DocumentError::NotFound {
            uri: uri.to_owned(),
            what: format!("key `{}`", object.key),
        },
        Some("NoSuchBucket") => DocumentError::NotFound {
            uri: uri.to_owned(),
            what: format!("bucket `{}`", object.bucket),
        },
        Some("AccessDenied") | Some("AllAccessDisabled") => DocumentError::Denied {
            uri: uri.to_owned(),
            object_arn: object.arn(),
            message,
        },
        Some(code) => DocumentError::Unavailable {
            uri: uri.to_owned(),
            message: format!("{code}: {message}"),
        },
        None => DocumentError::Unavailable {
            uri: uri.to_owned(),
            message: match err {
                SdkError::TimeoutError(_) => "timed out".into(),
                SdkError::DispatchFailure(_) => "could not reach S3".into(),
                _ => "no answer from S3".into(),
            },
        },
    }
}

/// Reads a batch's `items_from` object: JSON Lines, one item a line.
///
/// Blank lines are skipped and CRLF line ends accepted. An empty file gives no
/// items; whether that is an error is the batch's call.
pub async fn load_items(
    s3: &aws_sdk_s3::Client,
    uri: &str,
    max_items: usize,
    max_bytes: usize,
) -> Result<Vec<Value>, DocumentError> {
    let object = ObjectUri::parse(uri)?;
    let output = get_object(s3, uri, &object).await?;
    let limit = max_bytes as u64;
    let bytes = read_body(uri, output.content_length(), output.body, limit, |size| {
        DocumentError::ItemsTooLarge {
            uri: uri.to_owned(),
            size,
            limit,
        }
    })
    .await?;
    parse_items(uri, &bytes, max_items)
}

/// Parses JSON Lines; errors name the 1-based line.
fn parse_items(uri: &str, bytes: &[u8], max_items: usize) -> Result<Vec<Value>, DocumentError> {
    let invalid = |line: usize, message: String| DocumentError::InvalidItems {
        uri: uri.to_owned(),
        line,
        message,
    };
    // A byte-order mark is not part of the first item.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut items = Vec::new();
    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line_number = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|err| {
            invalid(
                line_number,
                format!(
                    "not UTF-8 text (bad byte at column {})",
                    err.valid_up_to() + 1
                ),
            )
        })?;
        if line.trim().is_empty() {
            continue;
        }
        if items.len() == max_items {
            return Err(DocumentError::TooManyItems {
                uri: uri.to_owned(),
                limit: max_items,
            });
        }
        let item = serde_json::from_str::<Value>(line).map_err(|err| {
            // serde_json says "at line 1 column N": the line is ours, the column is its.
            let text = err.to_string();
            let position = format!(" at line {} column {}", err.line(), err.column());
            let what = text.strip_suffix(&position).unwrap_or(&text);
            invalid(line_number, format!("{what} at column {}", err.column()))
        })?;
        items.push(item);
    }
    Ok(items)
}
