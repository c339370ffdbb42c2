//! Which Converse block an S3 object becomes: a document or an image
//! ([`MediaKind`]) in one of the formats Converse takes (`pdf`, `csv`, ...,
//! `png`, `webp`), recognised by the key's extension or else the object's
//! Content-Type.

use super::{DocumentError, MAX_DOCUMENT_BYTES, MAX_IMAGE_BYTES};

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

/// A Converse format and how to recognise it.
pub(super) struct Format {
    /// The Converse name (`DocumentFormat` / `ImageFormat` value).
    pub(super) name: &'static str,
    /// Document or image.
    pub(super) kind: MediaKind,
    /// Key extensions, lowercase, without the dot.
    extensions: &'static [&'static str],
    /// Content-Types, lowercase, without parameters.
    content_types: &'static [&'static str],
}

impl Format {
    /// Text formats are offered to templates as text.
    pub(super) fn is_text(&self) -> bool {
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

/// The Converse format names, for messages.
pub(super) fn accepted_formats() -> String {
    FORMATS
        .iter()
        .map(|f| f.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The key's last path segment.
pub(super) fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// The extension of the key's file name, if it has one (`.env` has none).
fn extension(key: &str) -> Option<&str> {
    match file_name(key).rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => Some(ext),
        _ => None,
    }
}

pub(super) fn format_by_extension(key: &str) -> Option<&'static Format> {
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
pub(super) fn detect_format(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_comes_from_the_extension_then_the_content_type() {
        let by = |key: &str, content_type: Option<&str>| {
            detect_format("s3://b/k", key, content_type).map(|f| (f.name, f.kind))
        };
        assert_eq!(
            by("a/Report.PDF", None).ok(),
            Some(("pdf", MediaKind::Document))
        );
        assert_eq!(by("photo.jpg", None).ok(), Some(("jpeg", MediaKind::Image)));
        assert_eq!(
            by("page.htm", None).ok(),
            Some(("html", MediaKind::Document))
        );
        assert_eq!(by("notes.markdown", None).ok().map(|f| f.0), Some("md"));
        assert_eq!(by("server.log", None).ok().map(|f| f.0), Some("txt"));
        // The extension wins over a generic Content-Type.
        assert_eq!(
            by("sheet.xlsx", Some("binary/octet-stream"))
                .ok()
                .map(|f| f.0),
            Some("xlsx")
        );
        // No or an unknown extension: the Content-Type, parameters and case ignored.
        assert_eq!(
            by("exports/latest", Some("Text/CSV; charset=utf-8"))
                .ok()
                .map(|f| f.0),
            Some("csv")
        );
        assert_eq!(
            by("scan.bin", Some("image/webp")).ok(),
            Some(("webp", MediaKind::Image))
        );
        assert_eq!(
            by(".env", Some("text/plain")).ok().map(|f| f.0),
            Some("txt")
        );
    }

    #[test]
    fn an_unknown_format_names_the_uri_what_was_found_and_what_is_accepted() {
        let err = detect_format("s3://b/x/data.zip", "x/data.zip", Some("application/zip"))
            .err()
            .expect("zip is not a Converse format");
        assert_eq!(err.code(), "UnsupportedDocument");
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(text.starts_with("`s3://b/x/data.zip`"), "{text}");
        assert!(
            text.contains("extension `.zip` and Content-Type `application/zip`"),
            "{text}"
        );
        assert!(
            text.contains("pdf, csv, doc, docx, xls, xlsx, html, txt, md, png, jpeg, gif, webp"),
            "{text}"
        );
        let bare = detect_format("s3://b/blob", "blob", None)
            .err()
            .expect("nothing to go on");
        assert!(bare
            .to_string()
            .contains("no extension and no Content-Type"));
    }

    #[test]
    fn formats_are_exactly_the_ones_converse_accepts() {
        use aws_sdk_bedrockruntime::types::{DocumentFormat, ImageFormat};
        let ours = |kind| {
            let mut names: Vec<&str> = FORMATS
                .iter()
                .filter(|f| f.kind == kind)
                .map(|f| f.name)
                .collect();
            names.sort_unstable();
            names
        };
        let sdk = |values: &[&'static str]| {
            let mut names = values.to_vec();
            names.sort_unstable();
            names
        };
        assert_eq!(ours(MediaKind::Document), sdk(DocumentFormat::values()));
        assert_eq!(ours(MediaKind::Image), sdk(ImageFormat::values()));
    }
}
