//! The fan-out settings: where batches larger than a chunk go
//! (`RELAY_WORK_QUEUE`, `RELAY_WORK_STORE`) and how their chunks run.

use super::{parse_number, ConfigError};
use crate::destination::S3Location;

/// How batches larger than a chunk fan out.
#[derive(Debug, Clone)]
pub struct FanOut {
    /// The standard SQS queue chunk messages go to, which the function's own
    /// SQS event source reads (`RELAY_WORK_QUEUE`).
    pub queue: crate::destination::Queue,
    /// Where plans, chunk results and summaries live (`RELAY_WORK_STORE`).
    pub store: S3Location,
    /// Items per chunk (`RELAY_CHUNK_ITEMS`).
    pub chunk_items: usize,
    /// Seconds before a chunk held up by retryable errors (throttling, an
    /// outage) is received again (`RELAY_CHUNK_RETRY_SECONDS`).
    pub retry_after_secs: i32,
    /// The work queue's `maxReceiveCount` (`RELAY_WORK_MAX_RECEIVES`): on
    /// this receive a chunk that does not finish writes its error record,
    /// since SQS dead-letters it next.
    pub max_receives: u64,
}

/// The fan-out settings: both `RELAY_WORK_QUEUE` and `RELAY_WORK_STORE`, or
/// neither.
pub(super) fn fan_out(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<FanOut>, ConfigError> {
    let queue = get("RELAY_WORK_QUEUE");
    let store = get("RELAY_WORK_STORE");
    let (queue, store) = match (queue, store) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(ConfigError::Missing {
                var: "RELAY_WORK_STORE",
                hint: "RELAY_WORK_QUEUE is set, so fanned-out batches need a store for their plans and chunk results: set it to an s3://bucket/prefix/ the function may read, write and list (the template uses s3://<DestinationBucket>/<DestinationPrefix>_batches/)",
            })
        }
        (None, Some(_)) => {
            return Err(ConfigError::Missing {
                var: "RELAY_WORK_QUEUE",
                hint: "RELAY_WORK_STORE is set but batches fan out only through a work queue: set it to the URL of a standard SQS queue that is this function's SQS event source, or unset RELAY_WORK_STORE",
            })
        }
        (Some(queue), Some(store)) => (queue, store),
    };
    let queue =
        crate::destination::Queue::parse(queue.trim()).map_err(|reason| ConfigError::Invalid {
            var: "RELAY_WORK_QUEUE",
            reason,
        })?;
    if queue.fifo {
        return Err(ConfigError::Invalid {
            var: "RELAY_WORK_QUEUE",
            reason: format!("`{}` is a FIFO queue; the work queue is a standard queue, so many instances can take chunks at once", queue.url),
        });
    }
    let store = S3Location::parse(store.trim()).map_err(|reason| ConfigError::Invalid {
        var: "RELAY_WORK_STORE",
        reason,
    })?;
    let chunk_items = parse_number(
        get("RELAY_CHUNK_ITEMS"),
        "RELAY_CHUNK_ITEMS",
        1..=10_000,
        500,
    )?;
    // SQS's most for a message's visibility: 12 hours.
    let retry_after_secs = parse_number(
        get("RELAY_CHUNK_RETRY_SECONDS"),
        "RELAY_CHUNK_RETRY_SECONDS",
        0..=43_200,
        30,
    )?;
    let max_receives = parse_number(
        get("RELAY_WORK_MAX_RECEIVES"),
        "RELAY_WORK_MAX_RECEIVES",
        1..=1000,
        5,
    )?;
    Ok(Some(FanOut {
        queue,
        store,
        chunk_items: chunk_items as usize,
        retry_after_secs,
        max_receives,
    }))
}

/// The work store may sit in the results prefix only under a segment that
/// starts with `_` (`s3://bucket/prefix/_batches/`): job ids never start a
/// segment with `_`, so no job's record can land on the store's objects.
pub(super) fn check_store_apart(
    store: &S3Location,
    results: &S3Location,
) -> Result<(), ConfigError> {
    if store.bucket != results.bucket {
        return Ok(());
    }
    let overlaps = match store.prefix.strip_prefix(&results.prefix) {
        Some(rest) => !rest.starts_with('_'),
        None => results.prefix.starts_with(&store.prefix),
    };
    if overlaps {
        return Err(ConfigError::Invalid {
            var: "RELAY_WORK_STORE",
            reason: format!(
                "`s3://{}/{}` overlaps RELAY_DESTINATION `s3://{}/{}`, so a job id could name the store's own objects; put the store under a segment starting with `_`, e.g. s3://{}/{}_batches/",
                store.bucket, store.prefix, results.bucket, results.prefix, results.bucket, results.prefix
            ),
        });
    }
    Ok(())
}
