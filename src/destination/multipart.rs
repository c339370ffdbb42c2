//! One large S3 object written from many pieces in order, without holding it:
//! pieces are gathered into parts of [`PART_BYTES`] and sent as a multipart
//! upload; an object that never fills a part is one PutObject. A failed
//! upload is aborted, so no invisible parts are left to pay for.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::s3::{classify, S3Destination};
use super::DestinationError;

/// The size of each part but the last (S3's minimum is 5 MiB).
pub const PART_BYTES: usize = 8 * 1024 * 1024;

/// An object being written at `key`, piece by piece.
#[derive(Debug)]
pub struct ObjectWriter<'a> {
    s3: &'a S3Destination,
    key: String,
    content_type: &'static str,
    buffer: Vec<u8>,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
}

impl<'a> ObjectWriter<'a> {
    /// A writer of `key` under `s3`'s bucket.
    pub fn new(s3: &'a S3Destination, key: String, content_type: &'static str) -> Self {
        Self {
            s3,
            key,
            content_type,
            buffer: Vec::new(),
            upload_id: None,
            parts: Vec::new(),
        }
    }

    /// Appends `piece`; sends a part once a part's worth is gathered.
    pub async fn append(&mut self, piece: &[u8]) -> Result<(), DestinationError> {
        self.buffer.extend_from_slice(piece);
        while self.buffer.len() >= PART_BYTES {
            let rest = self.buffer.split_off(PART_BYTES);
            let part = std::mem::replace(&mut self.buffer, rest);
            if let Err(err) = self.send_part(part).await {
                self.abort().await;
                return Err(err);
            }
        }
        Ok(())
    }

    /// Writes what is left and completes the object; returns its URI.
    pub async fn finish(mut self) -> Result<String, DestinationError> {
        let uri = self.s3.location().uri_of(&self.key);
        if self.upload_id.is_none() {
            let body = std::mem::take(&mut self.buffer);
            self.s3
                .client()
                .put_object()
                .bucket(&self.s3.location().bucket)
                .set_expected_bucket_owner(self.s3.owner().map(str::to_owned))
                .key(&self.key)
                .content_type(self.content_type)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|err| classify(self.s3.location(), "s3:PutObject", uri.clone(), err))?;
            return Ok(uri);
        }
        let last = std::mem::take(&mut self.buffer);
        let completed = async {
            if !last.is_empty() {
                self.send_part(last).await?;
            }
            self.s3
                .client()
                .complete_multipart_upload()
                .bucket(&self.s3.location().bucket)
                .set_expected_bucket_owner(self.s3.owner().map(str::to_owned))
                .key(&self.key)
                .set_upload_id(self.upload_id.clone())
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(self.parts.clone()))
                        .build(),
                )
                .send()
                .await
                .map_err(|err| classify(self.s3.location(), "s3:PutObject", uri.clone(), err))
        }
        .await;
        match completed {
            Ok(_) => Ok(uri),
            Err(err) => {
                self.abort().await;
                Err(err)
            }
        }
    }

    async fn send_part(&mut self, body: Vec<u8>) -> Result<(), DestinationError> {
        let uri = self.s3.location().uri_of(&self.key);
        let fail = |err| classify(self.s3.location(), "s3:PutObject", uri.clone(), err);
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let created = self
                    .s3
                    .client()
                    .create_multipart_upload()
                    .bucket(&self.s3.location().bucket)
                    .set_expected_bucket_owner(self.s3.owner().map(str::to_owned))
                    .key(&self.key)
                    .content_type(self.content_type)
                    .send()
                    .await
                    .map_err(|err| {
                        classify(self.s3.location(), "s3:PutObject", uri.clone(), err)
                    })?;
                let id = created.upload_id.unwrap_or_default();
                self.upload_id = Some(id.clone());
                id
            }
        };
        let number = i32::try_from(self.parts.len() + 1).unwrap_or(i32::MAX);
        let sent = self
            .s3
            .client()
            .upload_part()
            .bucket(&self.s3.location().bucket)
            .set_expected_bucket_owner(self.s3.owner().map(str::to_owned))
            .key(&self.key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(fail)?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(sent.e_tag)
                .build(),
        );
        Ok(())
    }

    /// Best effort: an upload left behind is also removed by a bucket's
    /// `AbortIncompleteMultipartUpload` lifecycle rule.
    async fn abort(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let aborted = self
            .s3
            .client()
            .abort_multipart_upload()
            .bucket(&self.s3.location().bucket)
            .set_expected_bucket_owner(self.s3.owner().map(str::to_owned))
            .key(&self.key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(err) = aborted {
            tracing::warn!(key = %self.key, "a failed multipart upload was not aborted: {err}");
        }
    }
}
