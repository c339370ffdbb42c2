//! SigV4 on the lab's side: checking who signed a request the function sent
//! (the Bedrock emulator), and signing the lab's own admin calls to moto.
//!
//! Checking re-signs the received request with the secret moto issued for its
//! access key and compares signatures, using `aws-sigv4` (the SDK's signer)
//! over exactly the headers the client listed as signed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id.
    pub access_key_id: String,
    /// `YYYYMMDD` of the credential scope.
    pub date: String,
    /// The region of the credential scope.
    pub region: String,
    /// The signing name of the credential scope (`bedrock` for Bedrock Runtime).
    pub service: String,
    /// Lower-case header names, in order.
    pub signed_headers: Vec<String>,
    /// Hex signature.
    pub signature: String,
}

impl Authorization {
    /// Parses the header value; `None` when it is not SigV4.
    pub fn parse(value: &str) -> Option<Self> {
        let rest = value.strip_prefix("AWS4-HMAC-SHA256")?.trim();
        let mut credential = None;
        let mut signed = None;
        let mut signature = None;
        for part in rest.split(',') {
            let (key, val) = part.trim().split_once('=')?;
            match key {
                "Credential" => credential = Some(val),
                "SignedHeaders" => signed = Some(val),
                "Signature" => signature = Some(val),
                _ => {}
            }
        }
        let scope: Vec<&str> = credential?.split('/').collect();
        if scope.len() != 5 || scope[4] != "aws4_request" {
            return None;
        }
        Some(Self {
            access_key_id: scope[0].to_owned(),
            date: scope[1].to_owned(),
            region: scope[2].to_owned(),
            service: scope[3].to_owned(),
            signed_headers: signed?.split(';').map(str::to_owned).collect(),
            signature: signature?.to_owned(),
        })
    }
}

/// Parses `x-amz-date` (`YYYYMMDDTHHMMSSZ`).
pub fn parse_amz_date(value: &str) -> Option<SystemTime> {
    let b = value.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| value.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// The signature `secret` gives this request; compare with the one sent.
pub fn expected_signature(
    auth: &Authorization,
    secret_access_key: &str,
    session_token: Option<&str>,
    method: &str,
    uri: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<String, String> {
    let amz_date = headers
        .iter()
        .find(|(name, _)| name == "x-amz-date")
        .map(|(_, v)| v.as_str())
        .ok_or("no x-amz-date header")?;
    let time = parse_amz_date(amz_date).ok_or("x-amz-date is not YYYYMMDDTHHMMSSZ")?;
    let identity = Credentials::new(
        &auth.access_key_id,
        secret_access_key,
        session_token.map(str::to_owned),
        None,
        "lab",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&auth.region)
        .name(&auth.service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signed: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(name, _)| auth.signed_headers.iter().any(|s| s == name))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let request = SignableRequest::new(method, uri, signed.into_iter(), SignableBody::Bytes(body))
        .map_err(|e| e.to_string())?;
    let output = sign(request, &params).map_err(|e| e.to_string())?;
    Ok(output.signature().to_owned())
}

/// Signs a request the lab sends to moto; returns the headers to add.
pub fn sign_headers(
    credentials: &Credentials,
    region: &str,
    service: &str,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<(String, String)>, String> {
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let request = SignableRequest::new(
        method,
        uri,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_authorization_header() {
        let auth = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=ASIAX/20261128/us-east-1/bedrock/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature=abc123",
        )
        .expect("sigv4");
        assert_eq!(auth.access_key_id, "ASIAX");
        assert_eq!(auth.service, "bedrock");
        assert_eq!(
            auth.signed_headers,
            vec!["content-type", "host", "x-amz-date"]
        );
        assert_eq!(auth.signature, "abc123");
        assert!(Authorization::parse("Bearer token").is_none());
    }

    #[test]
    fn parses_amz_date() {
        let t = parse_amz_date("20261128T024300Z").expect("date");
        let secs = t.duration_since(UNIX_EPOCH).expect("after epoch").as_secs();
        assert_eq!(secs, 1_795_833_780);
        assert!(parse_amz_date("2026-11-28").is_none());
    }

    #[test]
    fn a_request_signed_here_verifies_and_a_changed_one_does_not() {
        let creds = Credentials::new("ASIAX", "secret", Some("token".into()), None, "t");
        let base = [
            ("host", "127.0.0.1:1"),
            ("content-type", "application/json"),
        ];
        let body = br#"{"a":1}"#;
        let added = sign_headers(
            &creds,
            "us-east-1",
            "bedrock",
            "POST",
            "http://127.0.0.1:1/model/m%3A0/converse",
            &base,
            body,
        )
        .expect("signed");
        let mut headers: Vec<(String, String)> = base
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        headers.extend(added.iter().filter(|(n, _)| n != "authorization").cloned());
        let auth_value = &added
            .iter()
            .find(|(n, _)| n == "authorization")
            .expect("auth")
            .1;
        let auth = Authorization::parse(auth_value).expect("parse");
        let uri = "/model/m%3A0/converse";
        let good = expected_signature(&auth, "secret", Some("token"), "POST", uri, &headers, body)
            .expect("sig");
        assert_eq!(good, auth.signature);
        let bad = expected_signature(&auth, "other", Some("token"), "POST", uri, &headers, body)
            .expect("sig");
        assert_ne!(bad, auth.signature);
        let tampered =
            expected_signature(&auth, "secret", Some("token"), "POST", uri, &headers, b"{}")
                .expect("sig");
        assert_ne!(tampered, auth.signature);
    }
}
