//! The bottom layer every AWS adapter uses: the HTTPS trust store, S3 URI
//! and ARN parsing, SDK-error classification and the one retry helper.
//! (Clients are built from one base config: `credentials::load_base_config`,
//! then `Destinations` and `Bedrock` derive theirs from it.)

pub(crate) mod errors;
pub(crate) mod retry;
pub(crate) mod tls;
pub(crate) mod uri;
