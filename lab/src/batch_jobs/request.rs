//! CreateModelInvocationJob's request as Bedrock validates it: names, ARNs,
//! `s3://` URIs, `s3InputFormat`, `timeoutDurationInHours`,
//! `modelInvocationType` and tags, refused with Bedrock's
//! `ValidationException` messages.

use serde_json::{json, Value};

use super::ids::{arn_account, parse_s3};
use super::{constraint, missing, validation, ApiError};
use crate::emulator;

/// CreateModelInvocationJob's request, validated.
#[derive(Debug, Clone)]
pub(super) struct CreateRequest {
    pub(super) job_name: String,
    pub(super) role_arn: String,
    pub(super) model_id: String,
    pub(super) client_request_token: Option<String>,
    pub(super) input_uri: String,
    pub(super) input_owner: Option<String>,
    pub(super) output_uri: String,
    pub(super) output_owner: Option<String>,
    pub(super) timeout_hours: i32,
    pub(super) invocation_type: String,
    pub(super) input_config: Value,
    pub(super) output_config: Value,
}

impl CreateRequest {
    pub(super) fn parse(body: &Value) -> Result<Self, ApiError> {
        if !body.is_object() {
            return Err(validation("The request body is not a JSON object."));
        }
        let text = |pointer: &str| body.pointer(pointer).and_then(Value::as_str);
        let required = |pointer: &str, field: &str| text(pointer).ok_or_else(|| missing(field));

        let job_name = required("/jobName", "jobName")?;
        let name_ok = (1..=63).contains(&job_name.len())
            && job_name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && job_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !name_ok {
            return Err(constraint(
                "jobName",
                job_name,
                r"Member must satisfy regular expression pattern: [a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}",
            ));
        }
        let role_arn = required("/roleArn", "roleArn")?;
        let role_ok = arn_account(role_arn).is_some()
            && role_arn.starts_with("arn:aws")
            && role_arn.split(':').nth(2) == Some("iam")
            && role_arn
                .split(':')
                .nth(5)
                .is_some_and(|r| r.starts_with("role/") && r.len() > 5);
        if !role_ok {
            return Err(constraint(
                "roleArn",
                role_arn,
                r"Member must satisfy regular expression pattern: arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+",
            ));
        }
        let model_id = required("/modelId", "modelId")?;
        emulator::check_model_id(model_id)?;
        let client_request_token = match text("/clientRequestToken") {
            None => None,
            Some(token) => {
                let ok = (1..=256).contains(&token.len())
                    && token.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                if !ok {
                    return Err(constraint(
                        "clientRequestToken",
                        token,
                        "Member must satisfy regular expression pattern: [a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}",
                    ));
                }
                Some(token.to_owned())
            }
        };
        let input_uri = required(
            "/inputDataConfig/s3InputDataConfig/s3Uri",
            "inputDataConfig.s3InputDataConfig.s3Uri",
        )?;
        parse_s3(input_uri).ok_or_else(|| {
            constraint(
                "inputDataConfig.s3InputDataConfig.s3Uri",
                input_uri,
                "Member must be an s3:// URI",
            )
        })?;
        let format = text("/inputDataConfig/s3InputDataConfig/s3InputFormat").unwrap_or("JSONL");
        if format != "JSONL" {
            return Err(constraint(
                "inputDataConfig.s3InputDataConfig.s3InputFormat",
                format,
                "Member must satisfy enum value set: [JSONL]",
            ));
        }
        let output_uri = required(
            "/outputDataConfig/s3OutputDataConfig/s3Uri",
            "outputDataConfig.s3OutputDataConfig.s3Uri",
        )?;
        parse_s3(output_uri).ok_or_else(|| {
            constraint(
                "outputDataConfig.s3OutputDataConfig.s3Uri",
                output_uri,
                "Member must be an s3:// URI",
            )
        })?;
        let timeout_hours = match body.get("timeoutDurationInHours") {
            None | Some(Value::Null) => 168,
            Some(value) => match value.as_i64() {
                Some(h) if (24..=168).contains(&h) => h as i32,
                _ => {
                    return Err(constraint(
                        "timeoutDurationInHours",
                        &value.to_string(),
                        "Member must have value between 24 and 168",
                    ))
                }
            },
        };
        let invocation_type = text("/modelInvocationType").unwrap_or("InvokeModel");
        if !["InvokeModel", "Converse"].contains(&invocation_type) {
            return Err(constraint(
                "modelInvocationType",
                invocation_type,
                "Member must satisfy enum value set: [InvokeModel, Converse]",
            ));
        }
        if let Some(tags) = body.get("tags") {
            let ok = tags.as_array().is_some_and(|tags| {
                tags.len() <= 200
                    && tags.iter().all(|t| {
                        t.get("key").and_then(Value::as_str).is_some()
                            && t.get("value").and_then(Value::as_str).is_some()
                    })
            });
            if !ok {
                return Err(validation(
                    "1 validation error detected: Value at 'tags' failed to satisfy constraint: Member must be at most 200 {key, value} pairs",
                ));
            }
        }
        let mut input_config = body["inputDataConfig"].clone();
        input_config["s3InputDataConfig"]["s3InputFormat"] = json!(format);
        Ok(Self {
            job_name: job_name.to_owned(),
            role_arn: role_arn.to_owned(),
            model_id: model_id.to_owned(),
            client_request_token,
            input_uri: input_uri.to_owned(),
            input_owner: text("/inputDataConfig/s3InputDataConfig/s3BucketOwner")
                .map(str::to_owned),
            output_uri: output_uri.to_owned(),
            output_owner: text("/outputDataConfig/s3OutputDataConfig/s3BucketOwner")
                .map(str::to_owned),
            timeout_hours,
            invocation_type: invocation_type.to_owned(),
            input_config,
            output_config: body["outputDataConfig"].clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_requests_are_validated_like_bedrock() {
        let body = json!({
            "jobName": "relay-1", "roleArn": "arn:aws:iam::111111111111:role/Batch",
            "modelId": "amazon.nova-lite-v1:0",
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://in-bucket/a.jsonl"}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://out-bucket/out/"}},
        });
        let parsed = CreateRequest::parse(&body).expect("valid");
        assert_eq!(parsed.timeout_hours, 168);
        assert_eq!(parsed.invocation_type, "InvokeModel");
        assert_eq!(
            parsed.input_config["s3InputDataConfig"]["s3InputFormat"],
            "JSONL"
        );
        let with = |field: &str, value: Value| {
            let mut b = body.clone();
            b[field] = value;
            CreateRequest::parse(&b).map(|_| ()).map_err(|e| e.2)
        };
        assert!(with("jobName", json!("bad name")).is_err());
        assert!(with("timeoutDurationInHours", json!(12)).is_err());
        assert!(with("timeoutDurationInHours", json!(24)).is_ok());
        assert!(with("modelInvocationType", json!("Chat")).is_err());
        assert!(with("roleArn", json!("arn:aws:iam::1:user/x")).is_err());
        let mut no_role = body.clone();
        no_role.as_object_mut().map(|o| o.remove("roleArn"));
        let error = CreateRequest::parse(&no_role).expect_err("missing").2;
        assert!(error.contains("roleArn"), "{error}");
    }
}
