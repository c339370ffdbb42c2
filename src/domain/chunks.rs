//! A fanned-out batch as data: how its items are cut into chunks
//! ([`LineCutter`]), what a chunk message says ([`ChunkMessage`]) and the plan
//! the planning invocation writes for the chunk invocations to follow
//! ([`BatchPlan`]). No I/O here: see [`crate::work`] for where these live.
//!
//! Every batch that fans out is a JSON Lines object: `items_from` as given, or
//! inline `items` staged as one. A chunk is a line-aligned byte range of that
//! object holding `RELAY_CHUNK_ITEMS` items (blank lines do not count), so a
//! chunk invocation reads its own range and nothing else.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `kind` of every chunk message this relay writes.
pub const CHUNK_MESSAGE_KIND: &str = "bedrock-relay/chunk";
/// The version of the chunk message and plan formats.
pub const PLAN_VERSION: u32 = 1;

/// What one work-queue message says: run chunk `chunk` of batch `batch`.
/// Nothing else is trusted from the message: the plan in the relay's own
/// work store says what the chunk is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkMessage {
    /// Always [`CHUNK_MESSAGE_KIND`].
    pub kind: String,
    /// Always [`PLAN_VERSION`].
    pub version: u32,
    /// The batch's job id.
    pub batch: String,
    /// The chunk's number, from 0.
    pub chunk: usize,
}

impl ChunkMessage {
    /// The message for chunk `chunk` of `batch`.
    pub fn new(batch: &str, chunk: usize) -> Self {
        Self {
            kind: CHUNK_MESSAGE_KIND.to_owned(),
            version: PLAN_VERSION,
            batch: batch.to_owned(),
            chunk,
        }
    }

    /// Reads a message body; `Err` says why it is not a chunk message.
    pub fn parse(body: &str) -> Result<Self, String> {
        let message: Self = serde_json::from_str(body)
            .map_err(|err| format!("the body is not a chunk message ({err})"))?;
        if message.kind != CHUNK_MESSAGE_KIND || message.version != PLAN_VERSION {
            return Err(format!(
                "kind `{}` version {} is not `{CHUNK_MESSAGE_KIND}` version {PLAN_VERSION}",
                message.kind, message.version
            ));
        }
        crate::domain::job::check_job_id(&message.batch)
            .map_err(|reason| format!("batch: {reason}"))?;
        Ok(message)
    }
}

/// One chunk: a line-aligned byte range of the batch's items object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRange {
    /// The index of its first item in the batch.
    pub first: usize,
    /// How many items it holds.
    pub count: usize,
    /// Its first byte in the object.
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
    /// The 1-based line number of its first byte, for error messages.
    pub line: usize,
}

impl ChunkRange {
    /// The indexes of its items.
    pub fn indexes(&self) -> std::ops::Range<usize> {
        self.first..self.first + self.count
    }
}

/// Cuts a JSON Lines object into chunks of `per_chunk` items while it
/// streams past: feed it the bytes in order, then [`finish`](Self::finish).
/// It holds no bytes, only positions, so an object of any size costs the
/// same memory.
#[derive(Debug)]
pub struct LineCutter {
    per_chunk: usize,
    chunks: Vec<ChunkRange>,
    /// Bytes seen so far.
    offset: u64,
    /// Lines completed so far.
    lines: usize,
    /// Items (non-blank lines) so far.
    items: usize,
    /// Whether the line being read has a non-blank byte.
    line_has_item: bool,
    /// Where the current chunk starts: byte, line, first item.
    open: (u64, usize, usize),
}

impl LineCutter {
    /// A cutter for chunks of `per_chunk` items (at least one).
    pub fn new(per_chunk: usize) -> Self {
        Self {
            per_chunk: per_chunk.max(1),
            chunks: Vec::new(),
            offset: 0,
            lines: 0,
            items: 0,
            line_has_item: false,
            open: (0, 1, 0),
        }
    }

    /// Items seen so far (a last line without a newline counts once
    /// [`finish`](Self::finish)ed).
    pub fn items(&self) -> usize {
        self.items
    }

    /// The next bytes of the object.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let (segment, newline) = match rest.iter().position(|b| *b == b'\n') {
                Some(at) => (&rest[..at], true),
                None => (rest, false),
            };
            // A byte-order mark opens the object; it is not an item.
            let content = match self.offset == 0 {
                true => segment.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(segment),
                false => segment,
            };
            if content.iter().any(|b| !b.is_ascii_whitespace()) {
                self.line_has_item = true;
            }
            let consumed = segment.len() + usize::from(newline);
            self.offset += consumed as u64;
            rest = &rest[consumed..];
            if newline {
                self.end_line();
            }
        }
    }

    fn end_line(&mut self) {
        self.lines += 1;
        if std::mem::take(&mut self.line_has_item) {
            self.items += 1;
            let (start, line, first) = self.open;
            if self.items - first == self.per_chunk {
                self.chunks.push(ChunkRange {
                    first,
                    count: self.per_chunk,
                    start,
                    end: self.offset,
                    line,
                });
                self.open = (self.offset, self.lines + 1, self.items);
            }
        }
    }

    /// The chunks, the last holding what is left.
    pub fn finish(mut self) -> Vec<ChunkRange> {
        if self.line_has_item {
            self.end_line();
        }
        let (start, line, first) = self.open;
        if self.items > first {
            self.chunks.push(ChunkRange {
                first,
                count: self.items - first,
                start,
                end: self.offset,
                line,
            });
        }
        self.chunks
    }
}

/// The object a fanned-out batch's items are read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemsObject {
    /// `s3://bucket/key`.
    pub uri: String,
    /// Its ETag when planned: every chunk reads with `If-Match`, so an object
    /// changed after planning is refused, never mixed into the batch.
    pub etag: String,
    /// Items in it.
    pub total: usize,
    /// Whether the relay staged it from inline `items` (in its work store).
    pub staged: bool,
}

/// What the planning invocation settled, for every chunk invocation to run
/// the same job: written once to the work store, never changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchPlan {
    /// [`PLAN_VERSION`].
    pub version: u32,
    /// The batch's job id (scoped).
    pub job_id: String,
    /// The job with its head rendered and its id and model settled, without
    /// its items.
    pub job: Value,
    /// The envelope the job came in, for templates (`event`).
    pub event: Option<Value>,
    /// The event's shape, for the records.
    pub shape: Value,
    /// The destination, as text.
    pub destination: String,
    /// The FIFO message group.
    pub group: String,
    /// Where the items are.
    pub items: ItemsObject,
    /// The chunks, in order.
    pub chunks: Vec<ChunkRange>,
    /// RFC 3339, when planned.
    pub planned_at: String,
    /// The invocation that planned it.
    pub planned_by: String,
    /// How the batch runs (`on-demand` or `batch-job`) and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ModeRecord>,
}

/// The run mode of a planned batch, for the planner's answer and the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeRecord {
    /// `on-demand` or `batch-job`.
    pub mode: String,
    /// Which condition decided.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(text: &[u8], per_chunk: usize, piece: usize) -> Vec<ChunkRange> {
        let mut cutter = LineCutter::new(per_chunk);
        for bytes in text.chunks(piece) {
            cutter.feed(bytes);
        }
        cutter.finish()
    }

    /// Chunks hold `per_chunk` items each (blank lines do not count), start
    /// and end on line boundaries, cover every byte once, and know their first
    /// line, however the object's bytes arrive.
    #[test]
    fn chunks_are_line_aligned_ranges_of_whole_items() {
        let text = b"\xEF\xBB\xBF{\"a\":0}\n{\"a\":1}\r\n\n  \n{\"a\":2}\n{\"a\":3}\n{\"a\":4}";
        for piece in [1, 2, 3, 7, text.len()] {
            let chunks = cut(text, 2, piece);
            assert_eq!(chunks.len(), 3, "piece {piece}");
            assert_eq!(
                chunks
                    .iter()
                    .map(|c| (c.first, c.count))
                    .collect::<Vec<_>>(),
                [(0, 2), (2, 2), (4, 1)]
            );
            assert_eq!(chunks[0].start, 0);
            assert_eq!(chunks[2].end, text.len() as u64);
            for pair in chunks.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "contiguous");
                assert_eq!(
                    text[pair[0].end as usize - 1],
                    b'\n',
                    "ends after a newline"
                );
            }
            assert_eq!(chunks.iter().map(|c| c.line).collect::<Vec<_>>(), [1, 3, 7]);
        }
    }

    /// An object without items has no chunks; exactly `per_chunk` items make
    /// one chunk, not an empty second one.
    #[test]
    fn edges_make_no_empty_chunks() {
        assert!(cut(b"", 3, 4).is_empty());
        assert!(cut(b"\n \n", 3, 4).is_empty());
        let chunks = cut(b"1\n2\n3\n", 3, 4);
        assert_eq!(chunks.len(), 1);
        assert_eq!((chunks[0].count, chunks[0].end), (3, 6));
    }

    /// Only a message in the relay's own format, naming a valid batch id, is
    /// a chunk message.
    #[test]
    fn only_the_relays_own_messages_are_chunk_messages() {
        let good = serde_json::to_string(&ChunkMessage::new("nightly/2026-12-01", 3)).unwrap();
        assert_eq!(ChunkMessage::parse(&good).unwrap().chunk, 3);
        for bad in [
            "not json",
            r#"{"prompt": "hi"}"#,
            r#"{"kind":"other","version":1,"batch":"b","chunk":0}"#,
            r#"{"kind":"bedrock-relay/chunk","version":2,"batch":"b","chunk":0}"#,
            r#"{"kind":"bedrock-relay/chunk","version":1,"batch":"../x","chunk":0}"#,
            r#"{"kind":"bedrock-relay/chunk","version":1,"batch":"b","chunk":0,"run":"this"}"#,
        ] {
            assert!(ChunkMessage::parse(bad).is_err(), "{bad}");
        }
    }
}
