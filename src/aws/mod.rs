//! The bottom layer every AWS adapter uses: the HTTPS trust store, client
//! building, S3 URI and ARN parsing, SDK-error classification and the one
//! retry helper.

pub mod errors;
pub mod retry;
pub mod tls;
