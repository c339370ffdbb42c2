//! The ledger's S3 side: results read back from the destination prefix
//! (`<id>.json`, a batch's `<id>.jsonl` / `<id>.progress.jsonl`) and claims as
//! conditional writes of `<prefix>_claims/<id>.json` (`If-None-Match` for a
//! new claim, `If-Match` to take over an expired one or release it).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{is_settled, is_succeeded};
use crate::destination::s3::{parse_lines, WriteCondition};
use crate::destination::{DestinationError, S3Destination};

/// A single job's earlier success record, if there is one.
pub(super) async fn succeeded_job(
    s3: &S3Destination,
    job_id: &str,
) -> Result<Option<Value>, DestinationError> {
    let Some(bytes) = s3.read(&s3.location().key_for(job_id)).await? else {
        return Ok(None);
    };
    // A record that does not parse is treated as absent: the job runs again
    // and replaces it.
    Ok(serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(is_succeeded))
}

/// A batch's settled items (see [`super::Ledger::settled_items`]), by index.
pub(super) async fn settled_items(
    s3: &S3Destination,
    job_id: &str,
) -> Result<BTreeMap<usize, Value>, DestinationError> {
    let location = s3.location();
    // The final object holds every item once the batch has finished;
    // before that, the progress object holds what is done.
    let mut lines = s3.read(&location.batch_key_for(job_id)).await?;
    if lines.is_none() {
        lines = s3.read(&location.progress_key_for(job_id)).await?;
    }
    Ok(lines.map(|bytes| settled_lines(&bytes)).unwrap_or_default())
}

/// What claiming a job in S3 found.
pub(super) enum Claimed {
    /// This invocation holds the claim object with this ETag; `took_over`
    /// when an earlier claim had expired or was released.
    Held { etag: String, took_over: bool },
    /// Another invocation holds it, until this time (epoch ms) if known.
    Elsewhere { until_ms: Option<u64> },
}

/// Claims `job_id` for `request_id` until `until_ms`.
pub(super) async fn claim(
    s3: &S3Destination,
    job_id: &str,
    request_id: &str,
    until_ms: u64,
    now_ms: u64,
) -> Result<Claimed, DestinationError> {
    let key = s3.location().claim_key_for(job_id);
    let body = json!({"request_id": request_id, "until_ms": until_ms})
        .to_string()
        .into_bytes();
    if let Some(etag) = s3
        .put_if(&key, body.clone(), WriteCondition::Absent)
        .await?
    {
        return Ok(Claimed::Held {
            etag,
            took_over: false,
        });
    }
    let Some((current, etag)) = s3.read_tagged(&key).await? else {
        // Released and removed in between: one more try.
        return Ok(match s3.put_if(&key, body, WriteCondition::Absent).await? {
            Some(etag) => Claimed::Held {
                etag,
                took_over: true,
            },
            None => Claimed::Elsewhere { until_ms: None },
        });
    };
    let other_until = serde_json::from_slice::<Value>(&current)
        .ok()
        .and_then(|c| c.get("until_ms").and_then(Value::as_u64))
        .unwrap_or(0);
    if other_until > now_ms {
        return Ok(Claimed::Elsewhere {
            until_ms: Some(other_until),
        });
    }
    // The other claim has expired (or was released): take it over,
    // unless someone else just did.
    Ok(
        match s3
            .put_if(&key, body, WriteCondition::Unchanged(&etag))
            .await?
        {
            Some(etag) => Claimed::Held {
                etag,
                took_over: true,
            },
            None => Claimed::Elsewhere { until_ms: None },
        },
    )
}

/// Ends `request_id`'s claim on `job_id` early (only if the claim object is
/// still the one it wrote), so a retry need not wait for it to expire.
pub(super) async fn release(
    s3: &S3Destination,
    job_id: &str,
    request_id: &str,
    etag: &str,
) -> Result<(), DestinationError> {
    s3.put_if(
        &s3.location().claim_key_for(job_id),
        json!({"request_id": request_id, "until_ms": 0, "released": true})
            .to_string()
            .into_bytes(),
        WriteCondition::Unchanged(etag),
    )
    .await
    .map(|_| ())
}

/// The settled lines of a batch's JSON Lines, by their `index`.
fn settled_lines(bytes: &[u8]) -> BTreeMap<usize, Value> {
    parse_lines(bytes)
        .filter(is_settled)
        .filter_map(|line| {
            let index = usize::try_from(line.get("index")?.as_u64()?).ok()?;
            Some((index, line))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Succeeded lines and lines failed for good are done; retryable
    /// failures, pending items and lines that do not parse are run again.
    #[test]
    fn only_settled_lines_count_as_done() {
        let jsonl = br#"{"index":0,"status":"succeeded","output":{"text":"a"}}
{"index":1,"status":"failed","error":{"type":"BedrockThrottled","retryable":true}}
{"index":2,"status":"pending"}
not json
{"index":3,"status":"succeeded"}
{"index":4,"status":"failed","error":{"type":"BedrockRejected","retryable":false}}
{"index":5,"status":"failed"}
"#;
        let done = settled_lines(jsonl);
        assert_eq!(done.keys().copied().collect::<Vec<_>>(), vec![0, 3, 4]);
        assert_eq!(done[&0]["output"]["text"], "a");
    }
}
