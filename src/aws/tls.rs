//! Which certificate authorities the function's HTTPS client trusts.
//!
//! Every AWS endpoint the relay calls (STS, Bedrock Runtime, S3, SQS, SNS,
//! EventBridge, DynamoDB) presents a certificate from Amazon Trust Services.
//! By default the client trusts only those five roots, compiled in
//! (`certs/amazon-trust-services.pem`), instead of loading and parsing the
//! system store (about 140 roots, a few milliseconds of every cold start) and
//! trusting every CA in it. `RELAY_TLS_ROOTS=system` restores the system
//! store, for endpoints behind another CA (a TLS-inspecting proxy, a private
//! endpoint with its own certificate).

use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

/// The Amazon Trust Services roots: Amazon Root CA 1-4 and Starfield Services
/// Root Certificate Authority - G2, which cross-signs them for older clients.
pub const AMAZON_TRUST_SERVICES_PEM: &[u8] =
    include_bytes!("../../certs/amazon-trust-services.pem");

/// The trust store choice (`RELAY_TLS_ROOTS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsRoots {
    /// Only the Amazon Trust Services roots (`amazon`, the default).
    #[default]
    Amazon,
    /// The operating system's store (`system`), as the SDK's default client.
    System,
}

impl TlsRoots {
    /// Parses `RELAY_TLS_ROOTS`.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "amazon" => Some(Self::Amazon),
            "system" => Some(Self::System),
            _ => None,
        }
    }

    /// The HTTPS client for these roots; `None` means the SDK's default client.
    pub fn http_client(self) -> Option<SharedHttpClient> {
        match self {
            Self::System => None,
            Self::Amazon => {
                let trust_store =
                    TrustStore::empty().with_pem_certificate(AMAZON_TRUST_SERVICES_PEM);
                // Building a context from a store only fails for a bad store;
                // then the SDK's default client (the OS store) serves, said once.
                let context = match TlsContext::builder().with_trust_store(trust_store).build() {
                    Ok(context) => context,
                    Err(err) => {
                        tracing::warn!("the Amazon Trust Services roots did not load ({err}); using the system trust store");
                        return None;
                    }
                };
                Some(
                    aws_smithy_http_client::Builder::new()
                        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
                        .tls_context(context)
                        .build_https(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_roots_are_the_five_amazon_trust_services_roots() {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::CertificateDer;
        use sha2::{Digest, Sha256};

        // SHA-256 of Amazon Root CA 1-4 and Starfield Services Root G2, as
        // published at https://www.amazontrust.com/repository/.
        let published = [
            "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e",
            "1ba5b2aa8c65401a82960118f80bec4f62304d83cec4713a19c39c011ea46db4",
            "18ce6cfe7bf14e60b2e347b8dfe868cb31d02ebb3ada271569f50343b46db3a4",
            "e35d28419ed02025cfa69038cd623962458da5c695fbdea3c22b0bfb25897092",
            "568d6905a2c88708a4b3025190edcfedb1974a606a13c6e5290fcb2ae63edab5",
        ];
        let found: Vec<String> = CertificateDer::pem_slice_iter(AMAZON_TRUST_SERVICES_PEM)
            .map(|cert| {
                let cert = cert.expect("a PEM certificate");
                Sha256::digest(cert.as_ref())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect();
        assert_eq!(found, published);
    }

    /// Building an SDK client validates its HTTP client, which builds the TLS
    /// connector and its root store: a store that does not parse would fail
    /// (panic) here, at every cold start, not at the first call.
    #[test]
    fn an_sdk_client_builds_on_the_amazon_roots() {
        let conf = aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new("us-east-1"))
            .http_client(TlsRoots::Amazon.http_client().expect("a client"))
            .build();
        let _client = aws_sdk_sts::Client::from_conf(conf);
    }

    #[test]
    fn roots_are_chosen_by_name() {
        assert_eq!(TlsRoots::parse("amazon"), Some(TlsRoots::Amazon));
        assert_eq!(TlsRoots::parse(" System "), Some(TlsRoots::System));
        assert_eq!(TlsRoots::parse("all"), None);
        assert!(TlsRoots::System.http_client().is_none());
        assert!(TlsRoots::Amazon.http_client().is_some());
    }
}
