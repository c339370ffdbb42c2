//! S3 URIs and ARNs, parsed and checked once for every module that takes
//! them: destination prefixes (`s3://bucket/prefix/`), objects
//! (`s3://bucket/key`, for `documents` and `items_from`) and service ARNs.

/// The longest S3 object key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Checks an S3 bucket name: 3-63 lowercase letters, digits, dots and hyphens,
/// starting and ending with a letter or digit.
pub fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !bucket.starts_with(['.', '-'])
        && !bucket.ends_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{bucket}` is not an S3 bucket name (3-63 lowercase letters, digits, dots and hyphens)"
        ))
    }
}

/// `s3://bucket/prefix/`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The key prefix: empty, or ending in `/`.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket[/prefix[/]]`; a prefix without a trailing `/` gets one.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let rest = uri
            .strip_prefix("s3://")
            .ok_or_else(|| format!("`{uri}` is not an s3:// URI; expected s3://bucket/prefix/"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket)?;
        let mut prefix = prefix.to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix,
        })
    }

    /// The object key for a job.
    pub fn key_for(&self, job_id: &str) -> String {
        format!("{}{job_id}.json", self.prefix)
    }

    /// `s3://bucket/key`.
    pub fn uri_for(&self, job_id: &str) -> String {
        self.uri_of(&self.key_for(job_id))
    }

    /// The JSON Lines object of a finished batch.
    pub fn batch_key_for(&self, job_id: &str) -> String {
        format!("{}{job_id}.jsonl", self.prefix)
    }

    /// The object that says which invocation is running a job.
    pub fn claim_key_for(&self, job_id: &str) -> String {
        format!("{}_claims/{job_id}.json", self.prefix)
    }

    /// The JSON Lines object a batch cut short keeps its progress in.
    pub fn progress_key_for(&self, job_id: &str) -> String {
        format!("{}{job_id}.progress.jsonl", self.prefix)
    }

    /// `s3://bucket/<key>`.
    pub fn uri_of(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// One S3 object, `s3://bucket/key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Object {
    /// The bucket.
    pub bucket: String,
    /// The key, as written (no percent-decoding).
    pub key: String,
}

impl S3Object {
    /// Parses `s3://bucket/key`: the bucket as for [`S3Location`], a key that
    /// is not empty and at most [`MAX_KEY_LEN`] bytes.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let rest = uri
            .strip_prefix("s3://")
            .ok_or_else(|| "expected s3://bucket/key".to_owned())?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| "no key; expected s3://bucket/key".to_owned())?;
        check_bucket(bucket)?;
        if key.is_empty() {
            return Err("the key is empty; expected s3://bucket/key".into());
        }
        if key.len() > MAX_KEY_LEN {
            return Err(format!(
                "the key is {} bytes; S3 keys are at most {MAX_KEY_LEN}",
                key.len()
            ));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    /// The object's ARN, for a grant to name.
    pub fn arn(&self) -> String {
        format!("arn:aws:s3:::{}/{}", self.bucket, self.key)
    }
}

/// The model id a foundation model's ARN names
/// (`arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0` →
/// `amazon.nova-lite-v1:0`); anything else as it is: a bare model id, an
/// inference profile, a provisioned model (those have quotas of their own).
pub fn foundation_model_id(model: &str) -> &str {
    match model.split_once(":foundation-model/") {
        Some((prefix, id)) if prefix.starts_with("arn:") && prefix.contains(":bedrock:") => id,
        _ => model,
    }
}

/// The parts of an ARN, checked for the service it should name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArnParts<'a> {
    /// `aws`, `aws-cn`, `aws-us-gov`, ...
    pub partition: &'a str,
    /// The region.
    pub region: &'a str,
    /// The 12-digit account id.
    pub account: &'a str,
    /// Everything after the account (`name`, `table/name`, `event-bus/name`).
    pub resource: &'a str,
}

/// `aws`, `aws-cn`, `aws-us-gov`, `aws-iso-b`, ...: `aws` and lowercase words.
fn is_partition(text: &str) -> bool {
    let mut words = text.split('-');
    words.next() == Some("aws")
        && words.all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
}

/// `us-east-1`, `ap-southeast-4`, `us-gov-west-1`, `eusc-de-east-1`: lowercase
/// words and a number of one or two digits, nothing else, since a URL is
/// built from it.
fn is_region(text: &str) -> bool {
    let Some((words, number)) = text.rsplit_once('-') else {
        return false;
    };
    (1..=2).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_digit())
        && words.split('-').count() >= 2
        && words
            .split('-')
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
}

/// Splits `arn:<partition>:<service>:<region>:<account>:<resource>`; `form` is
/// the expected shape, quoted in errors. Partition and region are checked by
/// their patterns, since URLs and endpoints are built from them.
pub fn split_arn<'a>(text: &'a str, service: &str, form: &str) -> Result<ArnParts<'a>, String> {
    let parts: Vec<&str> = text.splitn(6, ':').collect();
    let [arn, partition, found_service, region, account, resource] = parts[..] else {
        return Err(format!("`{text}` is not an ARN; expected {form}"));
    };
    if arn != "arn" || !is_partition(partition) {
        return Err(format!(
            "`{text}` is not an ARN of an AWS partition; expected {form}"
        ));
    }
    if found_service != service {
        return Err(format!(
            "`{text}` is an ARN of `{found_service}`, not `{service}`; expected {form}"
        ));
    }
    if region.is_empty() {
        return Err(format!("`{text}` has no region; expected {form}"));
    }
    if !is_region(region) {
        return Err(format!(
            "`{region}` in `{text}` is not a region (like us-east-1); expected {form}"
        ));
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{account}` in `{text}` is not a 12-digit account id; expected {form}"
        ));
    }
    if resource.is_empty() {
        return Err(format!("`{text}` names no resource; expected {form}"));
    }
    Ok(ArnParts {
        partition,
        region,
        account,
        resource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A foundation model's ARN names the same model, and quota, as its id;
    /// other models and other ARNs are left as they are.
    #[test]
    fn a_foundation_model_arn_is_its_model_id() {
        assert_eq!(
            foundation_model_id(
                "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0"
            ),
            "amazon.nova-lite-v1:0"
        );
        for kept in [
            "amazon.nova-lite-v1:0",
            "us.amazon.nova-lite-v1:0",
            "arn:aws:bedrock:us-east-1:111111111111:inference-profile/us.amazon.nova-lite-v1:0",
            "arn:aws:bedrock:us-east-1:111111111111:provisioned-model/abc123",
        ] {
            assert_eq!(foundation_model_id(kept), kept);
        }
    }

    /// A URL is built only from parts that match their patterns: a region or
    /// partition carrying a path, a host or a query is refused.
    #[test]
    fn arn_region_and_partition_are_checked_by_pattern() {
        let form = "arn:aws:sqs:REGION:ACCOUNT:NAME";
        for good in [
            "arn:aws:sqs:us-east-1:222222222222:q",
            "arn:aws-us-gov:sqs:us-gov-west-1:222222222222:q",
            "arn:aws-cn:sqs:cn-north-1:222222222222:q",
        ] {
            assert!(split_arn(good, "sqs", form).is_ok(), "{good}");
        }
        for bad in [
            "arn:aws:sqs:evil.example.com/x#:222222222222:q",
            "arn:aws:sqs:us-east-1/..:222222222222:q",
            "arn:aws:sqs:us-east:222222222222:q",
            "arn:aws:sqs:US-EAST-1:222222222222:q",
            "arn:aws.evil:sqs:us-east-1:222222222222:q",
            "arn::sqs:us-east-1:222222222222:q",
            "arn:aws:sqs:us-east-1:2222:q",
        ] {
            assert!(split_arn(bad, "sqs", form).is_err(), "{bad}");
        }
    }
}
