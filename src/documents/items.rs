//! The JSON Lines file a batch names in `items_from`: read from S3 within a
//! size limit ([`load_items`]) and parsed one item a line. A line that does
//! not parse is that item's error, naming the file and the line; the other
//! items still run.

use serde_json::Value;

use super::{get_object, parse_object, read_body, DocumentError};
use crate::domain::chunks::{ChunkRange, LineCutter};

/// One line of an `items_from` file: the item, or why the line is not one.
pub type ItemLine = Result<Value, DocumentError>;

/// Reads a batch's `items_from` object: JSON Lines, one item a line.
///
/// Blank lines are skipped and CRLF line ends accepted. An empty file gives no
/// items; whether that is an error is the batch's call.
pub async fn load_items(
    s3: &aws_sdk_s3::Client,
    uri: &str,
    max_items: usize,
    max_bytes: usize,
) -> Result<Vec<ItemLine>, DocumentError> {
    let object = parse_object(uri)?;
    let output = get_object(s3, uri, &object).await?;
    let limit = max_bytes as u64;
    let bytes = read_items_body(uri, output, limit).await?;
    parse_items(uri, &bytes, max_items)
}

/// Parses JSON Lines, one result a line; errors name the 1-based line. Only
/// more lines than `max_items` fail the whole file.
fn parse_items(uri: &str, bytes: &[u8], max_items: usize) -> Result<Vec<ItemLine>, DocumentError> {
    // A byte-order mark is not part of the first item.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut items = Vec::new();
    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let Some(item) = parse_line(uri, index + 1, raw) else {
            continue;
        };
        if items.len() == max_items {
            return Err(DocumentError::TooManyItems {
                uri: uri.to_owned(),
                limit: max_items,
            });
        }
        items.push(item);
    }
    Ok(items)
}

/// One line of JSON Lines (`line_number` from 1): `None` when blank.
fn parse_line(uri: &str, line_number: usize, raw: &[u8]) -> Option<ItemLine> {
    let invalid = |message: String| DocumentError::InvalidItems {
        uri: uri.to_owned(),
        line: line_number,
        message,
    };
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let line = match std::str::from_utf8(raw) {
        Ok(line) if line.trim().is_empty() => return None,
        Ok(line) => line,
        Err(err) => {
            return Some(Err(invalid(format!(
                "not UTF-8 text (bad byte at column {})",
                err.valid_up_to() + 1
            ))))
        }
    };
    Some(serde_json::from_str::<Value>(line).map_err(|err| {
        // serde_json says "at line 1 column N": the line is ours, the column is its.
        let text = err.to_string();
        let position = format!(" at line {} column {}", err.line(), err.column());
        let what = text.strip_suffix(&position).unwrap_or(&text);
        invalid(format!("{what} at column {}", err.column()))
    }))
}

/// An items object, cut into chunks while it streams past once: its ETag,
/// the chunks and how many items it holds. Memory stays flat whatever the
/// object's size; more than `max_items` items fail it before it is read to
/// the end.
pub async fn cut_items(
    s3: &aws_sdk_s3::Client,
    uri: &str,
    per_chunk: usize,
    max_items: usize,
) -> Result<(String, Vec<ChunkRange>, usize), DocumentError> {
    let object = parse_object(uri)?;
    let mut output = get_object(s3, uri, &object).await?;
    let etag = output.e_tag.take().unwrap_or_default();
    let mut cutter = LineCutter::new(per_chunk);
    while let Some(bytes) = output
        .body
        .try_next()
        .await
        .map_err(|err| broke_off(uri, err))?
    {
        cutter.feed(&bytes);
        if cutter.items() > max_items {
            return Err(DocumentError::TooManyItems {
                uri: uri.to_owned(),
                limit: max_items,
            });
        }
    }
    let chunks = cutter.finish();
    let total = chunks.last().map_or(0, |c| c.first + c.count);
    if total > max_items {
        return Err(DocumentError::TooManyItems {
            uri: uri.to_owned(),
            limit: max_items,
        });
    }
    Ok((etag, chunks, total))
}

/// The items of one chunk: its byte range of the object, read only if the
/// object is still the one planned (`If-Match` on `etag`), one item a line.
/// `owner`: the bucket's expected owner, for items the relay staged in its
/// own work store.
pub async fn read_chunk(
    s3: &aws_sdk_s3::Client,
    uri: &str,
    etag: &str,
    range: &ChunkRange,
    owner: Option<&str>,
) -> Result<Vec<ItemLine>, DocumentError> {
    let object = parse_object(uri)?;
    if range.end <= range.start {
        return Ok(Vec::new());
    }
    let output = s3
        .get_object()
        .bucket(&object.bucket)
        .key(&object.key)
        .set_expected_bucket_owner(owner.map(str::to_owned))
        .if_match(etag)
        .range(format!("bytes={}-{}", range.start, range.end - 1))
        .send()
        .await;
    let output = match output {
        Ok(output) => output,
        Err(err)
            if err
                .raw_response()
                .is_some_and(|r| r.status().as_u16() == 412) =>
        {
            return Err(DocumentError::ItemsChanged {
                uri: uri.to_owned(),
            })
        }
        Err(err) => return Err(super::classify(uri, &object, err)),
    };
    let limit = range.end - range.start;
    let bytes = read_items_body(uri, output, limit).await?;
    let bytes = match range.start {
        0 => bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes),
        _ => &bytes[..],
    };
    let items: Vec<ItemLine> = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter_map(|(i, raw)| parse_line(uri, range.line + i, raw))
        .collect();
    if items.len() != range.count {
        // The ETag matched, so the bytes are the ones planned: only a cutter
        // and a reader that disagree on what a line is could get here.
        return Err(DocumentError::InvalidItems {
            uri: uri.to_owned(),
            line: range.line,
            message: format!(
                "the chunk from this line holds {} items where {} were planned",
                items.len(),
                range.count
            ),
        });
    }
    Ok(items)
}

/// An items object's body, refused past `limit` bytes.
async fn read_items_body(
    uri: &str,
    output: aws_sdk_s3::operation::get_object::GetObjectOutput,
    limit: u64,
) -> Result<bytes::Bytes, DocumentError> {
    read_body(uri, output.content_length(), output.body, limit, |size| {
        DocumentError::ItemsTooLarge {
            uri: uri.to_owned(),
            size,
            limit,
        }
    })
    .await
}

fn broke_off(uri: &str, err: impl std::fmt::Display) -> DocumentError {
    DocumentError::Unavailable {
        uri: uri.to_owned(),
        message: format!("the body broke off: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::documents::tests::{s3_failing, s3_serving, stored};

    #[test]
    fn items_are_one_json_value_a_line_blank_lines_skipped_crlf_accepted() {
        let text = "\u{feff}{\"id\": 1}\r\n\r\n  \n\"two\"\n[3]\r\n{\"id\": 4}";
        let items: Vec<Value> = parse_items("s3://b/k.jsonl", text.as_bytes(), 10)
            .expect("items")
            .into_iter()
            .map(|item| item.expect("valid"))
            .collect();
        assert_eq!(
            items,
            [json!({"id": 1}), json!("two"), json!([3]), json!({"id": 4})]
        );
        assert!(parse_items("s3://b/k.jsonl", b"", 10)
            .expect("empty")
            .is_empty());
        assert!(parse_items("s3://b/k.jsonl", b"\n\r\n", 10)
            .expect("blank")
            .is_empty());
    }

    /// The first error of a line, which fails only that item.
    fn line_error(bytes: &[u8]) -> DocumentError {
        parse_items("s3://b/k.jsonl", bytes, 10)
            .expect("the file")
            .into_iter()
            .find_map(Result::err)
            .expect("a bad line")
    }

    /// A malformed line is its item's error, naming the file and the line;
    /// the lines around it are items.
    #[test]
    fn item_errors_name_the_uri_and_the_line() {
        let text = "{\"id\": 1}\n\n{\"id\": }\n";
        let items = parse_items("s3://b/k.jsonl", text.as_bytes(), 10).expect("the file");
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        let err = line_error(text.as_bytes());
        assert_eq!(err.code(), "InvalidItems");
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "s3://b/k.jsonl line 3: expected value at column 8"
        );
        let two_values = line_error(b"{} {}\n");
        assert!(
            two_values
                .to_string()
                .starts_with("s3://b/k.jsonl line 1: trailing characters"),
            "{two_values}"
        );
        let binary = line_error(b"1\r\n\"a\xFF\"\n");
        assert_eq!(
            binary.to_string(),
            "s3://b/k.jsonl line 2: not UTF-8 text (bad byte at column 3)"
        );
    }

    #[test]
    fn more_items_than_allowed_tell_the_limit_and_to_split() {
        let text = "1\n2\n\n3\n";
        assert_eq!(
            parse_items("s3://b/k.jsonl", text.as_bytes(), 3)
                .expect("three")
                .len(),
            3
        );
        let err = parse_items("s3://b/k.jsonl", text.as_bytes(), 2).expect_err("three > two");
        assert!(matches!(err, DocumentError::TooManyItems { limit: 2, .. }));
        assert_eq!(err.code(), "InvalidItems");
        let text = err.to_string();
        assert!(text.contains("more than 2 items"), "{text}");
        assert!(text.contains("RELAY_MAX_ITEMS"), "{text}");
        assert!(text.contains("split the file"), "{text}");
    }

    #[tokio::test]
    async fn items_are_read_from_s3() {
        let (rule, s3) = s3_serving(vec![(
            "batches/today.jsonl".into(),
            stored("{\"city\": \"Oslo\"}\n{\"city\": \"Lima\"}\n", None),
        )]);
        let items = load_items(&s3, "s3://docs-bucket/batches/today.jsonl", 100, 1 << 20)
            .await
            .expect("items");
        let items: Vec<Value> = items.into_iter().map(|i| i.expect("valid")).collect();
        assert_eq!(items, [json!({"city": "Oslo"}), json!({"city": "Lima"})]);
        assert_eq!(rule.num_calls(), 1);

        let err = load_items(&s3, "s3://docs-bucket/batches/today.jsonl", 100, 10)
            .await
            .expect_err("over max_bytes");
        assert!(matches!(
            err,
            DocumentError::ItemsTooLarge { limit: 10, .. }
        ));
        assert_eq!(err.code(), "DocumentTooLarge");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("10-byte limit"), "{err}");

        let err = load_items(&s3, "docs-bucket/batches/today.jsonl", 100, 1 << 20)
            .await
            .expect_err("not s3://");
        assert_eq!(err.code(), "InvalidDocumentUri");

        let (_, s3) = s3_failing(404, "NoSuchKey");
        let err = load_items(&s3, "s3://docs-bucket/batches/gone.jsonl", 100, 1 << 20)
            .await
            .expect_err("missing");
        assert_eq!(err.code(), "DocumentNotFound");
        assert!(
            err.to_string().contains("key `batches/gone.jsonl`"),
            "{err}"
        );
    }
}
