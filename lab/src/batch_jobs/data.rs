//! A job's data in S3, with the service role's session: reading and
//! checking the input (`.jsonl` records), checking the output place, and
//! writing one `<input name>.jsonl.out` per input file plus
//! `manifest.json.out`.

use aws_credential_types::Credentials;
use serde::Serialize;
use serde_json::Value;

use super::ids::{parse_s3, seed_of, SplitMix};
use super::link::{MotoLink, RoleInfo};
use super::policy::Context;
use super::request::CreateRequest;
use crate::s3_client;

/// What create read for the task: the input (or why it cannot be used) and
/// where the output goes, with the service role's session.
pub(super) struct Work {
    pub(super) files: Result<Vec<InputFile>, String>,
    pub(super) output: OutputPlace,
}

pub(super) struct OutputPlace {
    session: Option<Credentials>,
    bucket: String,
    /// Empty or ending in `/`.
    prefix: String,
}

pub(super) struct InputFile {
    /// The output file's name: the input's path under the input prefix.
    name: String,
    pub(super) records: Vec<Record>,
}

pub(super) struct Record {
    pub(super) record_id: String,
    pub(super) model_input: Value,
}

/// `manifest.json.out`.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Manifest {
    pub(super) total_record_count: u64,
    pub(super) processed_record_count: u64,
    pub(super) success_record_count: u64,
    pub(super) error_record_count: u64,
    pub(super) input_token_count: u64,
    pub(super) output_token_count: u64,
}

impl MotoLink {
    /// Reads the input and checks the output place with the service role's
    /// access; what fails becomes the job's validation failure.
    pub(super) async fn prepare(&self, role: &RoleInfo, request: &CreateRequest, id: &str) -> Work {
        let (out_bucket, out_key) = parse_s3(&request.output_uri).unwrap_or_default();
        let prefix = match out_key.trim_end_matches('/') {
            "" => String::new(),
            key => format!("{key}/"),
        };
        let session = match self.admin(&role.account).await {
            Ok(admin) => {
                self.assume(&admin, &role.arn, &format!("bedrock-batch-{id}"))
                    .await
            }
            Err(e) => Err(e),
        };
        let files = match &session {
            Ok(session) => {
                self.read_input(role, session, request, &out_bucket, &prefix, id)
                    .await
            }
            Err(e) => Err(format!(
                "Amazon Bedrock could not assume the role {}: {e}",
                role.arn
            )),
        };
        Work {
            files,
            output: OutputPlace {
                session: session.ok(),
                bucket: out_bucket,
                prefix,
            },
        }
    }

    async fn read_input(
        &self,
        role: &RoleInfo,
        session: &Credentials,
        request: &CreateRequest,
        out_bucket: &str,
        out_prefix: &str,
        id: &str,
    ) -> Result<Vec<InputFile>, String> {
        let (bucket, key) = parse_s3(&request.input_uri).unwrap_or_default();
        let (same_account, policy) = self
            .bucket(role, &bucket, request.input_owner.as_deref())
            .await?;
        let context = |prefix: &str| {
            Context::from([
                ("aws:principalaccount", role.account.clone()),
                ("aws:principalarn", role.arn.clone()),
                ("s3:prefix", prefix.to_owned()),
            ])
        };
        let s3 = s3_client(&self.endpoint, session);
        let keys = if key.ends_with(".jsonl") {
            vec![key.clone()]
        } else {
            Self::allowed(
                role,
                same_account,
                policy.as_ref(),
                "s3:ListBucket",
                &format!("arn:aws:s3:::{bucket}"),
                &context(&key),
            )?;
            let mut keys = Vec::new();
            let mut token = None;
            loop {
                let page = s3
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(&key)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .map_err(|e| format!("Listing s3://{bucket}/{key} failed: {e:?}"))?;
                keys.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key())
                        .filter(|k| k.ends_with(".jsonl"))
                        .map(str::to_owned),
                );
                token = page.next_continuation_token().map(str::to_owned);
                if token.is_none() {
                    break;
                }
            }
            keys
        };
        if keys.is_empty() {
            return Err(format!(
                "No .jsonl input file was found at {}.",
                request.input_uri
            ));
        }
        let mut files = Vec::new();
        let mut rng = SplitMix(seed_of(id) ^ 0x5151);
        for object in keys {
            Self::allowed(
                role,
                same_account,
                policy.as_ref(),
                "s3:GetObject",
                &format!("arn:aws:s3:::{bucket}/{object}"),
                &context(&key),
            )?;
            let got = s3.get_object().bucket(&bucket).key(&object).send().await;
            let bytes = match got {
                Ok(output) => output
                    .body
                    .collect()
                    .await
                    .map_err(|e| format!("Reading s3://{bucket}/{object} failed: {e}"))?
                    .into_bytes(),
                Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                    return Err(format!(
                        "The input file s3://{bucket}/{object} does not exist."
                    ))
                }
                Err(e) => return Err(format!("Reading s3://{bucket}/{object} failed: {e:?}")),
            };
            let mut records = Vec::new();
            for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let bad = |why: &str| {
                    format!(
                        "Line {} of s3://{bucket}/{object} is not a valid record: {why}",
                        n + 1
                    )
                };
                let value: Value = serde_json::from_slice(line).map_err(|e| bad(&e.to_string()))?;
                let model_input = value
                    .get("modelInput")
                    .filter(|v| v.is_object())
                    .cloned()
                    .ok_or_else(|| bad("no modelInput object"))?;
                let record_id = match value.get("recordId") {
                    Some(Value::String(id)) => id.clone(),
                    None | Some(Value::Null) => (0..11)
                        .map(|_| char::from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[rng.below(36)]))
                        .collect(),
                    Some(_) => return Err(bad("recordId is not a string")),
                };
                records.push(Record {
                    record_id,
                    model_input,
                });
            }
            let name = object
                .strip_prefix(key.as_str())
                .filter(|rest| !rest.is_empty())
                .unwrap_or_else(|| object.rsplit('/').next().unwrap_or_default())
                .trim_start_matches('/')
                .to_owned();
            files.push(InputFile { name, records });
        }

        let (out_same_account, out_policy) = self
            .bucket(role, out_bucket, request.output_owner.as_deref())
            .await?;
        Self::allowed(
            role,
            out_same_account,
            out_policy.as_ref(),
            "s3:PutObject",
            &format!("arn:aws:s3:::{out_bucket}/{out_prefix}{id}/manifest.json.out"),
            &context(out_prefix),
        )?;
        Ok(files)
    }

    /// Writes `<prefix><id>/<name>.out` per input file that has lines, and
    /// the manifest, with the service role's session.
    pub(super) async fn write_output(
        &self,
        place: &OutputPlace,
        id: &str,
        files: &[InputFile],
        lines: &[Vec<String>],
        manifest: &Manifest,
    ) -> Result<(), String> {
        let session = place
            .session
            .as_ref()
            .ok_or("no session of the service role")?;
        let s3 = s3_client(&self.endpoint, session);
        let mut objects: Vec<(String, Vec<u8>)> = Vec::new();
        for (file, lines) in files.iter().zip(lines) {
            if lines.is_empty() {
                continue;
            }
            let mut body = lines.join("\n");
            body.push('\n');
            objects.push((format!("{}.out", file.name), body.into_bytes()));
        }
        let manifest = serde_json::to_vec(manifest).map_err(|e| e.to_string())?;
        objects.push(("manifest.json.out".to_owned(), manifest));
        for (name, body) in objects {
            let key = format!("{}{id}/{name}", place.prefix);
            s3.put_object()
                .bucket(&place.bucket)
                .key(&key)
                .body(body.into())
                .send()
                .await
                .map_err(|e| format!("Writing s3://{}/{key} failed: {e:?}", place.bucket))?;
        }
        Ok(())
    }
}
