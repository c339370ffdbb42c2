//! The plane's way into moto: signed IAM / STS queries, administrator and
//! service-role sessions, a role's trust and identity policies (decoded from
//! IAM's XML), a bucket's existence, owner and policy, and whether a service
//! role may act on a bucket.

use std::collections::HashMap;

use aws_credential_types::Credentials;
use aws_sdk_s3::error::ProvideErrorMetadata;
use serde_json::Value;

use super::ids::role_name;
use super::policy::{evaluate, Context, Principal, Verdict};
use crate::moto::{xml_value, REGION};
use crate::s3_client;
use crate::sigv4::sign_headers;

/// The plane's way into moto.
#[derive(Debug)]
pub(super) struct MotoLink {
    pub(super) endpoint: String,
    http: reqwest::Client,
    admins: tokio::sync::Mutex<HashMap<String, Credentials>>,
}

/// A service role as create found it.
pub(super) struct RoleInfo {
    pub(super) arn: String,
    pub(super) account: String,
    pub(super) trust: Option<Value>,
    pub(super) policies: Vec<Value>,
}

/// A failed query: the status and body moto answered.
struct QueryError {
    status: u16,
    body: String,
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.body)
    }
}

impl MotoLink {
    pub(super) fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            admins: tokio::sync::Mutex::default(),
        }
    }

    /// A signed query-protocol call (IAM, STS); the XML answer.
    async fn query(
        &self,
        credentials: &Credentials,
        service: &str,
        params: &[(&str, &str)],
    ) -> Result<String, QueryError> {
        let failed = |e: String| QueryError { status: 0, body: e };
        let body = serde_urlencoded::to_string(params).map_err(|e| failed(e.to_string()))?;
        let url = format!("{}/", self.endpoint);
        let host = self.endpoint.trim_start_matches("http://").to_owned();
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let headers = [("host", host.as_str()), ("content-type", content_type)];
        let signed = sign_headers(
            credentials,
            REGION,
            service,
            "POST",
            &url,
            &headers,
            body.as_bytes(),
        )
        .map_err(failed)?;
        let mut request = self
            .http
            .post(&url)
            .header("content-type", content_type)
            .body(body);
        for (name, value) in signed {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| failed(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| failed(e.to_string()))?;
        if !(200..300).contains(&status) {
            return Err(QueryError { status, body: text });
        }
        Ok(text)
    }

    /// An administrator session in `account` (cached).
    pub(super) async fn admin(&self, account: &str) -> Result<Credentials, String> {
        let mut admins = self.admins.lock().await;
        if let Some(found) = admins.get(account) {
            return Ok(found.clone());
        }
        let bootstrap = Credentials::new(
            "AKIALABBOOTSTRAP0000",
            "lab-bootstrap-secret",
            None,
            None,
            "lab",
        );
        let role = format!("arn:aws:iam::{account}:role/LabAdmin");
        let credentials = self
            .assume(&bootstrap, &role, "lab-admin")
            .await
            .map_err(|e| format!("admin session in {account}: {e}"))?;
        admins.insert(account.to_owned(), credentials.clone());
        Ok(credentials)
    }

    pub(super) async fn assume(
        &self,
        credentials: &Credentials,
        role_arn: &str,
        session: &str,
    ) -> Result<Credentials, String> {
        let xml = self
            .query(
                credentials,
                "sts",
                &[
                    ("Action", "AssumeRole"),
                    ("Version", "2011-06-15"),
                    ("RoleArn", role_arn),
                    ("RoleSessionName", session),
                ],
            )
            .await
            .map_err(|e| format!("AssumeRole {role_arn}: {e}"))?;
        let field = |tag: &str| {
            xml_value(&xml, tag).ok_or_else(|| format!("AssumeRole {role_arn}: no {tag}"))
        };
        Ok(Credentials::new(
            field("AccessKeyId")?,
            field("SecretAccessKey")?,
            Some(field("SessionToken")?),
            None,
            "lab",
        ))
    }

    async fn iam(&self, account: &str, params: &[(&str, &str)]) -> Result<String, QueryError> {
        let admin = self
            .admin(account)
            .await
            .map_err(|e| QueryError { status: 0, body: e })?;
        let mut all = vec![("Version", "2010-05-08")];
        all.extend_from_slice(params);
        self.query(&admin, "iam", &all).await
    }

    /// The role with its trust and identity policies; `None` if it does not exist.
    pub(super) async fn role(
        &self,
        account: &str,
        role_arn: &str,
    ) -> Result<Option<RoleInfo>, String> {
        let name = role_name(role_arn);
        let xml = match self
            .iam(account, &[("Action", "GetRole"), ("RoleName", name)])
            .await
        {
            Ok(xml) => xml,
            Err(e) if e.status == 404 || e.body.contains("NoSuchEntity") => return Ok(None),
            Err(e) => return Err(format!("GetRole {name}: {e}")),
        };
        if xml_value(&xml, "Arn").as_deref() != Some(role_arn) {
            return Ok(None);
        }
        let trust = xml_value(&xml, "AssumeRolePolicyDocument").and_then(|d| decode_policy(&d));
        Ok(Some(RoleInfo {
            arn: role_arn.to_owned(),
            account: account.to_owned(),
            trust,
            policies: self.role_policies(account, role_arn).await?,
        }))
    }

    /// A role's identity policies: inline and attached.
    pub(super) async fn role_policies(
        &self,
        account: &str,
        role_arn: &str,
    ) -> Result<Vec<Value>, String> {
        let name = role_name(role_arn);
        let err = |what: &str, e: QueryError| format!("{what} {name}: {e}");
        let mut policies = Vec::new();
        let inline = self
            .iam(
                account,
                &[("Action", "ListRolePolicies"), ("RoleName", name)],
            )
            .await
            .map_err(|e| err("ListRolePolicies", e))?;
        for policy in xml_values(&inline, "member") {
            let xml = self
                .iam(
                    account,
                    &[
                        ("Action", "GetRolePolicy"),
                        ("RoleName", name),
                        ("PolicyName", &policy),
                    ],
                )
                .await
                .map_err(|e| err("GetRolePolicy", e))?;
            policies.extend(xml_value(&xml, "PolicyDocument").and_then(|d| decode_policy(&d)));
        }
        let attached = self
            .iam(
                account,
                &[("Action", "ListAttachedRolePolicies"), ("RoleName", name)],
            )
            .await
            .map_err(|e| err("ListAttachedRolePolicies", e))?;
        for arn in xml_values(&attached, "PolicyArn") {
            let xml = self
                .iam(account, &[("Action", "GetPolicy"), ("PolicyArn", &arn)])
                .await
                .map_err(|e| err("GetPolicy", e))?;
            let version = xml_value(&xml, "DefaultVersionId").unwrap_or_else(|| "v1".to_owned());
            let xml = self
                .iam(
                    account,
                    &[
                        ("Action", "GetPolicyVersion"),
                        ("PolicyArn", &arn),
                        ("VersionId", &version),
                    ],
                )
                .await
                .map_err(|e| err("GetPolicyVersion", e))?;
            policies.extend(xml_value(&xml, "Document").and_then(|d| decode_policy(&d)));
        }
        Ok(policies)
    }

    async fn s3_as_admin(&self, account: &str) -> Result<aws_sdk_s3::Client, String> {
        Ok(s3_client(&self.endpoint, &self.admin(account).await?))
    }

    /// Whether `account` owns `bucket`.
    async fn owns(&self, account: &str, bucket: &str) -> Result<bool, String> {
        let listing = self
            .s3_as_admin(account)
            .await?
            .list_buckets()
            .send()
            .await
            .map_err(|e| format!("ListBuckets in {account}: {e:?}"))?;
        Ok(listing.buckets().iter().any(|b| b.name() == Some(bucket)))
    }

    /// Checks a bucket exists (and is `expected_owner`'s); whether it is
    /// the role's own account's, and its policy.
    pub(super) async fn bucket(
        &self,
        role: &RoleInfo,
        bucket: &str,
        expected_owner: Option<&str>,
    ) -> Result<(bool, Option<Value>), String> {
        let s3 = self.s3_as_admin(&role.account).await?;
        if let Err(e) = s3.head_bucket().bucket(bucket).send().await {
            if e.as_service_error().is_some_and(|e| e.is_not_found()) {
                return Err(format!("The S3 bucket {bucket} does not exist."));
            }
            return Err(format!("The S3 bucket {bucket} cannot be read: {e:?}"));
        }
        let same_account = self.owns(&role.account, bucket).await?;
        if let Some(owner) = expected_owner {
            if !self.owns(owner, bucket).await? {
                return Err(format!(
                    "Access denied: the S3 bucket {bucket} is not owned by account {owner} (s3BucketOwner)."
                ));
            }
        }
        let policy = match s3.get_bucket_policy().bucket(bucket).send().await {
            Ok(output) => output.policy().and_then(|p| serde_json::from_str(p).ok()),
            Err(e)
                if e.as_service_error()
                    .and_then(|e| e.code())
                    .is_some_and(|c| c == "NoSuchBucketPolicy") =>
            {
                None
            }
            Err(e) => return Err(format!("GetBucketPolicy {bucket}: {e:?}")),
        };
        Ok((same_account, policy))
    }

    /// Whether the role may do `action` on `resource` in a bucket: both its
    /// identity policies and the bucket policy across accounts, either within
    /// one, no explicit Deny in any.
    pub(super) fn allowed(
        role: &RoleInfo,
        same_account: bool,
        bucket_policy: Option<&Value>,
        action: &str,
        resource: &str,
        context: &Context,
    ) -> Result<(), String> {
        let identity = role.policies.iter().fold(Verdict::default(), |v, p| {
            v.or(evaluate(p, action, resource, None, context))
        });
        let who = Principal::role(&role.arn, &role.account);
        let bucket = bucket_policy
            .map(|p| evaluate(p, action, resource, Some(&who), context))
            .unwrap_or_default();
        let allowed = !identity.deny
            && !bucket.deny
            && if same_account {
                identity.allow || bucket.allow
            } else {
                identity.allow && bucket.allow
            };
        if allowed {
            return Ok(());
        }
        let why = if identity.deny || bucket.deny {
            "an explicit Deny applies".to_owned()
        } else if !identity.allow {
            "no identity policy of the role allows it".to_owned()
        } else {
            "the bucket is in another account and its bucket policy does not allow it".to_owned()
        };
        Err(format!(
            "The service role {} is not allowed {action} on {resource}: {why}.",
            role.arn
        ))
    }
}

/// A policy document as IAM's XML answers hold it: XML-escaped, URL-encoded.
fn decode_policy(raw: &str) -> Option<Value> {
    let unescaped = raw
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&unescaped)
        .ok()
        .or_else(|| serde_json::from_str(&percent_decode(&unescaped)).ok())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every `<tag>` value of an XML answer.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(after[..end].to_owned());
        rest = &after[end + close.len()..];
    }
    found
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::batch_jobs::ids::parse_s3;

    #[test]
    fn identity_and_bucket_policies_decide_across_accounts() {
        let role = RoleInfo {
            arn: "arn:aws:iam::111111111111:role/Batch".into(),
            account: "111111111111".into(),
            trust: None,
            policies: vec![json!({"Statement": [{"Effect": "Allow",
                "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::b/*"}]})],
        };
        let context = Context::new();
        let object = "arn:aws:s3:::b/in.jsonl";
        assert!(MotoLink::allowed(&role, true, None, "s3:GetObject", object, &context).is_ok());
        let refused = MotoLink::allowed(&role, false, None, "s3:GetObject", object, &context)
            .expect_err("another account's bucket needs its policy");
        assert!(refused.contains("bucket policy"), "{refused}");
        let shared = json!({"Statement": {"Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::111111111111:role/Batch"},
            "Action": "s3:*", "Resource": "arn:aws:s3:::b/*"}});
        assert!(MotoLink::allowed(
            &role,
            false,
            Some(&shared),
            "s3:GetObject",
            object,
            &context
        )
        .is_ok());
        let denied = json!({"Statement": [{"Effect": "Deny", "Principal": "*",
            "Action": "s3:GetObject", "Resource": "*"}]});
        assert!(
            MotoLink::allowed(&role, true, Some(&denied), "s3:GetObject", object, &context)
                .is_err()
        );
        assert!(MotoLink::allowed(&role, true, None, "s3:PutObject", object, &context).is_err());
    }

    #[test]
    fn iam_documents_are_decoded() {
        assert_eq!(decode_policy("%7B%22a%22%3A%201%7D"), Some(json!({"a": 1})));
        assert_eq!(decode_policy("{&quot;a&quot;: 1}"), Some(json!({"a": 1})));
        assert_eq!(
            xml_values("<m><member>a</member><member>b</member></m>", "member"),
            ["a", "b"]
        );
        assert_eq!(
            parse_s3("s3://bucket/a/b"),
            Some(("bucket".into(), "a/b".into()))
        );
        assert_eq!(
            parse_s3("s3://bucket"),
            Some(("bucket".into(), String::new()))
        );
        assert_eq!(parse_s3("https://x"), None);
    }
}
