//! The batch-job side of the work: what the work store keeps about a batch
//! that runs as Bedrock batch jobs (its [`SubmittedBatch`], and a marker
//! while its jobs are in flight, which the poll lists), and the staging
//! location in the model account ([`Staging`], `RELAY_BATCH_STAGING`),
//! written and read with RoleA's credentials.
//!
//! | key | where | what |
//! |---|---|---|
//! | `<id>/batch-jobs.json` | work store | the [`SubmittedBatch`] |
//! | `_batch-jobs/<id>.in-flight` | work store | the batch has jobs not collected yet |
//! | `input/<id>/part-000000.jsonl` | staging | one job's records |
//! | `output/<id>/part-000000/<bedrock job id>/part-000000.jsonl.out` | staging | Bedrock's answers (any order) |
//! | `output/<id>/part-000000/<bedrock job id>/manifest.json.out` | staging | Bedrock's counts |
//! | `input/_doctor/probe.json` | staging | written by `bedrock-relay doctor` ([`Staging::probe`]) |

use aws_sdk_s3::primitives::ByteStream;

use super::{to_json, WorkStore};
use crate::destination::multipart::ObjectWriter;
use crate::destination::s3::classify;
use crate::destination::{DestinationError, S3Destination, S3Location};
use crate::domain::batch_output::BedrockCounts;
use crate::domain::batch_state::SubmittedBatch;

const IN_FLIGHT_PREFIX: &str = "_batch-jobs/";
const IN_FLIGHT_SUFFIX: &str = ".in-flight";

impl WorkStore {
    /// Keeps what was submitted for `state.job_id` (replacing what was kept).
    pub async fn write_batch_jobs(&self, state: &SubmittedBatch) -> Result<(), DestinationError> {
        let key = self.key(&state.job_id, "batch-jobs.json");
        let body = to_json(&self.s3, &key, state)?;
        self.s3.put_json(&key, body).await.map(|_| ())
    }

    /// What was submitted for `batch`, if it runs as batch jobs.
    pub async fn read_batch_jobs(
        &self,
        batch: &str,
    ) -> Result<Option<SubmittedBatch>, DestinationError> {
        self.read_json(&self.key(batch, "batch-jobs.json")).await
    }

    fn in_flight_key(&self, batch: &str) -> String {
        format!(
            "{}{IN_FLIGHT_PREFIX}{batch}{IN_FLIGHT_SUFFIX}",
            self.s3.location().prefix
        )
    }

    /// Marks `batch` as having batch jobs in flight: the poll checks it.
    pub async fn mark_in_flight(&self, batch: &str) -> Result<(), DestinationError> {
        let body = serde_json::json!({"job_id": batch})
            .to_string()
            .into_bytes();
        self.s3
            .put_json(&self.in_flight_key(batch), body)
            .await
            .map(|_| ())
    }

    /// The batches with batch jobs in flight, by job id.
    pub async fn in_flight(&self) -> Result<Vec<String>, DestinationError> {
        let prefix = format!("{}{IN_FLIGHT_PREFIX}", self.s3.location().prefix);
        let keys = self.s3.list_keys(&prefix).await?;
        Ok(keys
            .iter()
            .filter_map(|key| {
                key.strip_prefix(&prefix)?
                    .strip_suffix(IN_FLIGHT_SUFFIX)
                    .map(str::to_owned)
            })
            .filter(|id| !id.is_empty())
            .collect())
    }

    /// Clears the in-flight mark of `batch`: its jobs are collected.
    pub async fn clear_in_flight(&self, batch: &str) -> Result<(), DestinationError> {
        self.s3.delete(&self.in_flight_key(batch)).await
    }
}

/// The staging location of one model account, through RoleA's S3 client.
#[derive(Debug, Clone)]
pub struct Staging {
    s3: S3Destination,
}

impl Staging {
    /// `location` (`RELAY_BATCH_STAGING`) in `account`, read and written with
    /// `client` (signed as that account's RoleA).
    pub fn new(client: aws_sdk_s3::Client, location: &S3Location, account: &str) -> Self {
        Self {
            s3: S3Destination::new(client, location.clone()).owned_by(Some(account.to_owned())),
        }
    }

    /// The staging bucket's owner: Bedrock checks it (`s3BucketOwner`).
    pub fn owner(&self) -> Option<&str> {
        self.s3.owner()
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.s3.location().prefix)
    }

    /// Where part `part` of `batch`'s records are staged: `(key, s3:// URI)`.
    pub fn input(&self, batch: &str, part: usize) -> (String, String) {
        let key = self.key(&format!("input/{batch}/part-{part:06}.jsonl"));
        let uri = self.s3.location().uri_of(&key);
        (key, uri)
    }

    /// Where Bedrock writes part `part`'s output (`s3://.../`).
    pub fn output_uri(&self, batch: &str, part: usize) -> String {
        self.s3
            .location()
            .uri_of(&self.key(&format!("output/{batch}/part-{part:06}/")))
    }

    /// A writer of the staged records at `key`.
    pub fn writer(&self, key: String) -> ObjectWriter<'_> {
        ObjectWriter::new(&self.s3, key, "application/jsonl")
    }

    /// The output prefix (a key prefix) of a job that wrote to `output_uri`.
    fn job_output(&self, output_uri: &str, bedrock_job_id: &str) -> Option<String> {
        let location = self.s3.location();
        let bucket_prefix = format!("s3://{}/", location.bucket);
        let prefix = output_uri.strip_prefix(&bucket_prefix)?;
        Some(format!("{prefix}{bedrock_job_id}/"))
    }

    /// The `.jsonl.out` files a job wrote, in key order.
    pub async fn output_files(
        &self,
        output_uri: &str,
        bedrock_job_id: &str,
    ) -> Result<Vec<String>, DestinationError> {
        let Some(prefix) = self.job_output(output_uri, bedrock_job_id) else {
            return Ok(Vec::new());
        };
        let keys = self.s3.list_keys(&prefix).await?;
        Ok(keys
            .into_iter()
            .filter(|k| k.ends_with(".out") && !k.ends_with("manifest.json.out"))
            .collect())
    }

    /// Bedrock's counts for a job, once it wrote them.
    pub async fn counts(
        &self,
        output_uri: &str,
        bedrock_job_id: &str,
    ) -> Result<Option<BedrockCounts>, DestinationError> {
        let Some(prefix) = self.job_output(output_uri, bedrock_job_id) else {
            return Ok(None);
        };
        let Some(bytes) = self.s3.read(&format!("{prefix}manifest.json.out")).await? else {
            return Ok(None);
        };
        // Counts are for the manifest only: one Bedrock changed is not worth
        // failing the batch for.
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// The body of the output file `key`, to read as it arrives.
    pub async fn open(&self, key: &str) -> Result<Option<ByteStream>, DestinationError> {
        self.s3.open(key).await
    }

    /// `s3://` of `key`.
    pub fn uri_of(&self, key: &str) -> String {
        self.s3.location().uri_of(key)
    }

    /// The doctor's probe, doing what the relay does here with RoleA: writes
    /// `input/_doctor/probe.json` (as records are staged) and lists one key
    /// under `output/` (as Bedrock's files are found). Both are under the
    /// prefixes deploy/account-a.yaml grants RoleA; it grants no delete, so
    /// the probe object stays until the bucket's lifecycle expires it.
    /// Returns the probe object's URI.
    pub async fn probe(&self) -> Result<String, DestinationError> {
        let key = self.key("input/_doctor/probe.json");
        let body = serde_json::json!({
            "written_by": "bedrock-relay doctor",
            "at": crate::domain::record::now_rfc3339(),
        });
        let uri = self
            .s3
            .put_json(&key, body.to_string().into_bytes())
            .await?;
        let location = self.s3.location();
        let output = self.key("output/");
        self.s3
            .client()
            .list_objects_v2()
            .bucket(&location.bucket)
            .set_expected_bucket_owner(self.owner().map(str::to_owned))
            .prefix(&output)
            .max_keys(1)
            .send()
            .await
            .map_err(|err| classify(location, "s3:ListBucket", location.uri_of(&output), err))?;
        Ok(uri)
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;
    use aws_sdk_s3::operation::put_object::{PutObjectError, PutObjectOutput};
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    fn staging(client: aws_sdk_s3::Client) -> Staging {
        let location = S3Location::parse("s3://staging-a/relay/").expect("uri");
        Staging::new(client, &location, "111111111111")
    }

    /// The doctor's probe writes under `input/_doctor/` and lists one key
    /// under `output/`, each expecting the model account to own the bucket.
    #[tokio::test]
    async fn the_probe_writes_under_input_and_lists_output_as_the_relay_does() {
        let put = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(|req| {
                req.key() == Some("relay/input/_doctor/probe.json")
                    && req.expected_bucket_owner() == Some("111111111111")
            })
            .then_output(|| PutObjectOutput::builder().build());
        let list = mock!(aws_sdk_s3::Client::list_objects_v2)
            .match_requests(|req| {
                req.prefix() == Some("relay/output/")
                    && req.max_keys() == Some(1)
                    && req.expected_bucket_owner() == Some("111111111111")
            })
            .then_output(|| ListObjectsV2Output::builder().build());
        let client = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&put, &list]);
        let uri = staging(client).probe().await.expect("probed");
        assert_eq!(uri, "s3://staging-a/relay/input/_doctor/probe.json");
        assert_eq!((put.num_calls(), list.num_calls()), (1, 1));
    }

    /// A staging bucket that does not exist is reported as missing, and
    /// nothing is listed.
    #[tokio::test]
    async fn the_probe_reports_a_missing_bucket() {
        let put = mock!(aws_sdk_s3::Client::put_object).then_error(|| {
            PutObjectError::generic(ErrorMetadata::builder().code("NoSuchBucket").build())
        });
        let list = mock!(aws_sdk_s3::Client::list_objects_v2)
            .then_output(|| ListObjectsV2Output::builder().build());
        let client = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&put, &list]);
        let err = staging(client).probe().await.expect_err("missing");
        assert!(matches!(err, DestinationError::Missing { .. }), "{err:?}");
        assert_eq!(list.num_calls(), 0);
    }
}
