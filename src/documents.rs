//! STUB replaced by the documents branch: objects a job reads from S3.

use serde_json::Value;
use thiserror::Error;

use crate::job::ContentBlock;

/// A document or an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// A document block.
    Document,
    /// An image block.
    Image,
}

/// A loaded object.
#[derive(Debug, Clone)]
pub struct Document {
    /// `s3://bucket/key`.
    pub uri: String,
    /// Block name.
    pub name: String,
    /// Kind.
    pub kind: MediaKind,
    /// Format.
    pub format: String,
    /// Bytes.
    pub bytes: Vec<u8>,
    /// UTF-8 text, for text formats.
    pub text: Option<String>,
}

/// Stub error.
#[derive(Debug, Error)]
#[error("documents are not implemented yet: {0}")]
pub struct DocumentError(String);

impl DocumentError {
    /// Code.
    pub fn code(&self) -> &'static str {
        "DocumentUnavailable"
    }
    /// Retryable.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

impl Document {
    /// Block.
    pub fn to_block(&self) -> ContentBlock {
        ContentBlock::Text(self.text.clone().unwrap_or_default())
    }
    /// Template value.
    pub fn template_value(&self) -> Value {
        serde_json::json!({"uri": self.uri, "name": self.name, "text": self.text})
    }
}

/// Loads documents.
pub async fn load_documents(
    _s3: &aws_sdk_s3::Client,
    uris: &[String],
) -> Result<Vec<Document>, DocumentError> {
    Err(DocumentError(uris.join(",")))
}

/// Loads JSONL items.
pub async fn load_items(
    _s3: &aws_sdk_s3::Client,
    uri: &str,
    _max_items: usize,
    _max_bytes: usize,
) -> Result<Vec<Value>, DocumentError> {
    Err(DocumentError(uri.into()))
}
