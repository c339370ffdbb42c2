//! S3 destinations: one JSON object per job (`<prefix><job id>.json`), one
//! JSON Lines object per batch, read back to skip work already done.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

use aws_smithy_runtime_api::http::Response as HttpResponse;

use super::DestinationError;
use crate::aws::errors::{Class, SdkFailure};
pub use crate::aws::uri::S3Location;
use crate::domain::record::Record;

/// The precondition of a conditional write.
#[derive(Debug, Clone, Copy)]
pub enum WriteCondition<'a> {
    /// Only if no object is at the key (`If-None-Match: *`).
    Absent,
    /// Only if the object still has this ETag (`If-Match`).
    Unchanged(&'a str),
}

/// Writes records to S3 with account B's credentials.
#[derive(Debug, Clone)]
pub struct S3Destination {
    client: aws_sdk_s3::Client,
    location: S3Location,
    /// The bucket's owner, when known (`RELAY_BUCKET_OWNER`): every call
    /// passes it as `ExpectedBucketOwner`, so a bucket deleted and recreated
    /// under the same name by another account is never written to or read.
    owner: Option<String>,
}

impl S3Destination {
    /// `client` carries the execution role's credentials.
    pub fn new(client: aws_sdk_s3::Client, location: S3Location) -> Self {
        Self {
            client,
            location,
            owner: None,
        }
    }

    /// The same, with every call expecting the bucket to belong to `owner`.
    pub fn owned_by(mut self, owner: Option<String>) -> Self {
        self.owner = owner;
        self
    }

    /// Writes `record` at the key of its job id; returns the object's URI. A
    /// success replaces whatever is there, so a retried event that succeeds
    /// leaves its success record, not the error before it. Anything else is
    /// written only where no success is stored (conditional writes): a
    /// failure, from a later attempt or forged by a sender, never overwrites a
    /// success.
    pub async fn write(&self, record: &Record) -> Result<String, DestinationError> {
        let key = self.location.key_for(&record.job_id);
        let uri = self.location.uri_for(&record.job_id);
        let body =
            serde_json::to_vec_pretty(record).map_err(|err| DestinationError::Unavailable {
                destination: uri.clone(),
                message: format!("the record does not serialise: {err}"),
            })?;
        if crate::domain::record::is_final_status(Some(record.status.as_str())) {
            self.put_json(&key, body).await?;
            return Ok(uri);
        }
        // Each round loses only to a concurrent write; two rounds are plenty.
        for _ in 0..3 {
            if self
                .put_if(&key, body.clone(), WriteCondition::Absent)
                .await?
                .is_some()
            {
                return Ok(uri);
            }
            let Some((stored, etag)) = self.read_tagged(&key).await? else {
                continue;
            };
            let stored_status = serde_json::from_slice::<serde_json::Value>(&stored)
                .ok()
                .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_owned));
            if crate::domain::record::is_final_status(stored_status.as_deref()) {
                tracing::info!(job_id = %record.job_id, "a success is already recorded; the failure is not written over it");
                return Ok(uri);
            }
            let condition = WriteCondition::Unchanged(&etag);
            if self.put_if(&key, body.clone(), condition).await?.is_some() {
                return Ok(uri);
            }
        }
        Err(DestinationError::Unavailable {
            destination: uri,
            message: "the record kept changing under three conditional writes".into(),
        })
    }

    /// The location written to.
    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// Writes JSON Lines (one value per line) at `key`; returns the object's URI.
    pub async fn write_lines<T: serde::Serialize>(
        &self,
        key: &str,
        lines: &[T],
    ) -> Result<String, DestinationError> {
        let uri = self.location.uri_of(key);
        let mut body = Vec::with_capacity(lines.len() * 512);
        for line in lines {
            serde_json::to_writer(&mut body, line).map_err(|err| {
                DestinationError::Unavailable {
                    destination: uri.clone(),
                    message: format!("a line does not serialise: {err}"),
                }
            })?;
            body.push(b'\n');
        }
        self.client
            .put_object()
            .bucket(&self.location.bucket)
            .set_expected_bucket_owner(self.owner.clone())
            .key(key)
            .content_type("application/x-ndjson")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|err| classify(&self.location, "s3:PutObject", uri.clone(), err))?;
        Ok(uri)
    }

    /// Reads the object at `key`; `None` when there is none.
    pub async fn read(&self, key: &str) -> Result<Option<Vec<u8>>, DestinationError> {
        Ok(self.read_tagged(key).await?.map(|(body, _)| body))
    }

    /// Writes `body` at `key` only if `condition` holds (S3 conditional writes);
    /// returns the new ETag, or `None` when the condition failed.
    pub async fn put_if(
        &self,
        key: &str,
        body: Vec<u8>,
        condition: WriteCondition<'_>,
    ) -> Result<Option<String>, DestinationError> {
        let uri = self.location.uri_of(key);
        let request = self
            .client
            .put_object()
            .bucket(&self.location.bucket)
            .set_expected_bucket_owner(self.owner.clone())
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        let request = match condition {
            WriteCondition::Absent => request.if_none_match("*"),
            WriteCondition::Unchanged(etag) => request.if_match(etag),
        };
        match request.send().await {
            Ok(output) => Ok(Some(output.e_tag.unwrap_or_default())),
            // 412: the condition failed; 409: a concurrent conditional write won.
            Err(err)
                if matches!(
                    err.code(),
                    Some("PreconditionFailed") | Some("ConditionalRequestConflict")
                ) || err
                    .raw_response()
                    .is_some_and(|r| matches!(r.status().as_u16(), 409 | 412)) =>
            {
                Ok(None)
            }
            Err(err) => Err(classify(&self.location, "s3:PutObject", uri, err)),
        }
    }

    /// The body of the object at `key`, to read as it arrives (for objects too
    /// large to hold); `None` when there is none.
    pub async fn open(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::primitives::ByteStream>, DestinationError> {
        match self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .set_expected_bucket_owner(self.owner.clone())
            .key(key)
            .send()
            .await
        {
            Ok(output) => Ok(Some(output.body)),
            Err(err) if err.code() == Some("NoSuchKey") => Ok(None),
            Err(err) => Err(classify(
                &self.location,
                "s3:GetObject",
                self.location.uri_of(key),
                err,
            )),
        }
    }

    /// Deletes the object at `key` (deleting one that is gone succeeds).
    pub async fn delete(&self, key: &str) -> Result<(), DestinationError> {
        self.client
            .delete_object()
            .bucket(&self.location.bucket)
            .set_expected_bucket_owner(self.owner.clone())
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| {
                classify(
                    &self.location,
                    "s3:DeleteObject",
                    self.location.uri_of(key),
                    err,
                )
            })
    }

    /// Reads the object at `key` with its ETag; `None` when there is none.
    pub async fn read_tagged(
        &self,
        key: &str,
    ) -> Result<Option<(Vec<u8>, String)>, DestinationError> {
        let uri = self.location.uri_of(key);
        let output = match self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .set_expected_bucket_owner(self.owner.clone())
            .key(key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(err) if err.code() == Some("NoSuchKey") => return Ok(None),
            Err(err) => return Err(classify(&self.location, "s3:GetObject", uri, err)),
        };
        let etag = output.e_tag.clone().unwrap_or_default();
        let body = output
            .body
            .collect()
            .await
            .map_err(|err| DestinationError::Unavailable {
                destination: uri,
                message: format!("reading the object failed: {err}"),
            })?;
        Ok(Some((body.into_bytes().to_vec(), etag)))
    }

    /// Writes a small probe object under the prefix (`_doctor/probe.json`), as the
    /// doctor's check that records can be written.
    pub async fn probe(&self) -> Result<String, DestinationError> {
        let key = format!("{}_doctor/probe.json", self.location.prefix);
        let body = serde_json::json!({"written_by": "bedrock-relay doctor", "at": crate::domain::record::now_rfc3339()});
        self.put_json(&key, body.to_string().into_bytes()).await
    }

    /// Writes the JSON `body` at `key`, unconditionally; returns its URI.
    pub async fn put_json(&self, key: &str, body: Vec<u8>) -> Result<String, DestinationError> {
        let uri = self.location.uri_of(key);
        self.client
            .put_object()
            .bucket(&self.location.bucket)
            .set_expected_bucket_owner(self.owner.clone())
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|err| self.classify(uri.clone(), err))?;
        Ok(uri)
    }

    /// The keys under `prefix` (a full key prefix), in key order.
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, DestinationError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.location.bucket)
            .set_expected_bucket_owner(self.owner.clone())
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|err| {
                classify(
                    &self.location,
                    "s3:ListBucket",
                    self.location.uri_of(prefix),
                    err,
                )
            })?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        Ok(keys)
    }

    /// The S3 client, for the multipart writer.
    pub(crate) fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The expected owner, for the multipart writer.
    pub(crate) fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    fn classify<E: ProvideErrorMetadata>(
        &self,
        uri: String,
        err: SdkError<E, HttpResponse>,
    ) -> DestinationError {
        classify(&self.location, "s3:PutObject", uri, err)
    }
}

/// The values of JSON Lines written by [`S3Destination::write_lines`], in
/// order; a line that is not JSON (a torn or foreign object) is skipped.
pub fn parse_lines(bytes: &[u8]) -> impl Iterator<Item = serde_json::Value> + '_ {
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
}

/// Maps an S3 error to what the user should fix; `action` is the denied permission.
pub(crate) fn classify<E: ProvideErrorMetadata>(
    location: &S3Location,
    action: &'static str,
    uri: String,
    err: SdkError<E, HttpResponse>,
) -> DestinationError {
    let failure = SdkFailure::read(&err);
    match (failure.code.as_deref(), failure.class()) {
        (Some(_), Class::Denied) => DestinationError::Denied {
            action,
            destination: uri,
            message: failure.message().to_owned(),
            fix: match action {
                // Without ListBucket, S3 answers AccessDenied for a key that does not exist.
                "s3:GetObject" => format!(
                    "grant the execution role s3:GetObject on arn:aws:s3:::{bucket}/{prefix}* and s3:ListBucket on arn:aws:s3:::{bucket} (bedrock-relay reads results back to skip work already done)",
                    bucket = location.bucket,
                    prefix = location.prefix
                ),
                _ => format!(
                    "grant the execution role {action} on arn:aws:s3:::{}/{}*",
                    location.bucket, location.prefix
                ),
            },
        },
        (Some("NoSuchBucket"), _) => DestinationError::Missing {
            destination: uri,
            what: format!("bucket `{}`", location.bucket),
        },
        _ => DestinationError::Unavailable {
            destination: uri,
            message: failure.summary("S3"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::operation::put_object::PutObjectOutput;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use aws_smithy_types::error::ErrorMetadata;

    /// With a known owner, every write and read of the relay's own bucket
    /// says so (`ExpectedBucketOwner`), records and claims alike.
    #[tokio::test]
    async fn every_call_to_a_known_bucket_expects_its_owner() {
        let put = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(|req| req.expected_bucket_owner() == Some("222222222222"))
            .then_output(|| PutObjectOutput::builder().build());
        let get = mock!(aws_sdk_s3::Client::get_object)
            .match_requests(|req| req.expected_bucket_owner() == Some("222222222222"))
            .then_error(|| {
                GetObjectError::generic(ErrorMetadata::builder().code("NoSuchKey").build())
            });
        let client = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&put, &get]);
        let s3 = S3Destination::new(
            client,
            S3Location::parse("s3://results/relay/").expect("uri"),
        )
        .owned_by(Some("222222222222".into()));
        let mut record = Record::started("req");
        record.status = crate::domain::record::Status::Succeeded;
        s3.write(&record).await.expect("written");
        s3.put_if(
            "relay/_claims/x.json",
            b"{}".to_vec(),
            WriteCondition::Absent,
        )
        .await
        .expect("claimed");
        assert_eq!(s3.read("relay/x.json").await.expect("read"), None);
        assert_eq!((put.num_calls(), get.num_calls()), (2, 1));
    }

    #[test]
    fn destination_uri_parses_bucket_and_prefix() {
        let loc = S3Location::parse("s3://my-bucket/relay/out").expect("valid");
        assert_eq!(loc.bucket, "my-bucket");
        assert_eq!(loc.prefix, "relay/out/");
        assert_eq!(loc.key_for("job-1"), "relay/out/job-1.json");
        assert_eq!(loc.uri_for("job-1"), "s3://my-bucket/relay/out/job-1.json");
        assert_eq!(
            S3Location::parse("s3://my-bucket")
                .expect("no prefix")
                .key_for("j"),
            "j.json"
        );
        assert!(S3Location::parse("s3://My_Bucket/x").is_err());
        assert!(S3Location::parse("my-bucket/x").is_err());
    }
}
