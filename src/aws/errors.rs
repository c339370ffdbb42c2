//! What an AWS SDK failure says, read once for every adapter: the service's
//! error code and message, the HTTP status, whether the request reached the
//! service at all, and the chain of causes the SDK wraps around it.

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// An error and its sources, outermost first: the SDK wraps what went wrong in
/// layers of its own, and what to tell the user is often inside.
pub fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

/// The messages of an error's chain joined with `: `.
pub fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    chain(err)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// How far a failed call got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The service answered with an error.
    Answered,
    /// The call ran out of time (the operation timeout: the time left).
    TimedOut,
    /// The request never reached the service (DNS, TCP, TLS).
    Unreachable,
    /// Anything else the SDK reports without a service answer.
    NoAnswer,
}

/// What kind of failure a service error code (or a bare status) is, the same
/// table for every adapter; each adapter turns a class into its own error
/// with the fix that applies to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The caller's identity may not do this: a grant or trust policy to fix.
    Denied,
    /// The resource does not exist.
    Missing,
    /// A quota or rate limit; trying later helps.
    Throttled,
    /// The service failed or was not ready; trying again helps.
    Transient,
    /// The request itself was refused; sending it again fails the same way.
    Rejected,
    /// No code this table knows.
    Other,
}

/// One SDK failure, read once: what every adapter's classification starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdkFailure {
    /// The service's error code, if it answered with one.
    pub code: Option<String>,
    /// The service's message, if any.
    pub message: Option<String>,
    /// The HTTP status of the answer, if there was one.
    pub status: Option<u16>,
    /// How far the call got.
    pub reach: Reach,
}

impl SdkFailure {
    /// Reads a failed call.
    pub fn read<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Self {
        let reach = match err {
            SdkError::ServiceError(_) | SdkError::ResponseError(_) => Reach::Answered,
            SdkError::TimeoutError(_) => Reach::TimedOut,
            SdkError::DispatchFailure(_) => Reach::Unreachable,
            _ => Reach::NoAnswer,
        };
        Self {
            code: err.code().map(str::to_owned),
            message: err.message().map(str::to_owned),
            status: err.raw_response().map(|r| r.status().as_u16()),
            reach,
        }
    }

    /// The class of the failure: by its code, else a bare 403 is a denial
    /// all the same (an endpoint policy, a proxy, or moto's XML answer to a
    /// JSON-protocol call) and a bare 5xx is transient.
    pub fn class(&self) -> Class {
        match self.code.as_deref() {
            Some(code) => class_of(code),
            None => match self.status {
                Some(403) => Class::Denied,
                Some(500..=599) => Class::Transient,
                _ => Class::Other,
            },
        }
    }

    /// The service's message, or `no message`.
    pub fn message(&self) -> &str {
        self.message.as_deref().unwrap_or("no message")
    }

    /// What went wrong when the service gave no error code: `timed out`,
    /// `could not reach <service>` or `no answer from <service>`.
    pub fn unanswered(&self, service: &str) -> String {
        match self.reach {
            Reach::TimedOut => "timed out".into(),
            Reach::Unreachable => format!("could not reach {service}"),
            Reach::Answered | Reach::NoAnswer => format!("no answer from {service}"),
        }
    }

    /// `code: message` when the service answered with a code, else
    /// [`SdkFailure::unanswered`].
    pub fn summary(&self, service: &str) -> String {
        match &self.code {
            Some(code) => format!("{code}: {}", self.message()),
            None => self.unanswered(service),
        }
    }
}

/// The one table of AWS error codes the relay meets, by class.
pub fn class_of(code: &str) -> Class {
    match code {
        "AccessDenied"
        | "AccessDeniedException"
        | "AuthorizationError"
        | "AllAccessDisabled"
        | "UnrecognizedClientException" => Class::Denied,
        "NoSuchBucket"
        | "NoSuchKey"
        | "NotFound"
        | "NotFoundException"
        | "ResourceNotFoundException"
        | "AWS.SimpleQueueService.NonExistentQueue"
        | "QueueDoesNotExist" => Class::Missing,
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "ServiceQuotaExceededException"
        | "SlowDown"
        | "ProvisionedThroughputExceededException" => Class::Throttled,
        "InternalServerException"
        | "InternalError"
        | "ServiceUnavailableException"
        | "ServiceUnavailable"
        | "ModelNotReadyException"
        | "ModelTimeoutException" => Class::Transient,
        "ValidationException"
        | "ValidationError"
        | "ModelErrorException"
        | "MalformedPolicyDocument"
        | "PackedPolicyTooLarge"
        | "RegionDisabledException" => Class::Rejected,
        _ => Class::Other,
    }
}

#[cfg(test)]
mod tests {
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    fn service_error(code: Option<&str>, status: u16) -> SdkError<ErrorMetadata, HttpResponse> {
        let mut meta = ErrorMetadata::builder().message("said the service");
        if let Some(code) = code {
            meta = meta.code(code);
        }
        SdkError::service_error(
            meta.build(),
            HttpResponse::new(
                StatusCode::try_from(status).expect("status"),
                SdkBody::empty(),
            ),
        )
    }

    #[test]
    fn codes_are_classed_by_one_table_and_bare_statuses_by_their_class() {
        let cases = [
            (Some("AccessDeniedException"), 400, Class::Denied),
            (Some("NoSuchBucket"), 404, Class::Missing),
            (Some("ThrottlingException"), 429, Class::Throttled),
            (Some("ServiceUnavailableException"), 503, Class::Transient),
            (Some("ValidationException"), 400, Class::Rejected),
            (Some("SomethingNew"), 400, Class::Other),
            (None, 403, Class::Denied),
            (None, 502, Class::Transient),
            (None, 404, Class::Other),
        ];
        for (code, status, class) in cases {
            let failure = SdkFailure::read(&service_error(code, status));
            assert_eq!(failure.class(), class, "{code:?} {status}");
            assert_eq!(failure.status, Some(status));
            assert_eq!(failure.reach, Reach::Answered);
        }
    }

    #[test]
    fn a_summary_is_the_code_and_message_or_how_far_the_call_got() {
        let answered = SdkFailure::read(&service_error(Some("SlowDown"), 503));
        assert_eq!(answered.summary("S3"), "SlowDown: said the service");
        let timed_out = SdkFailure {
            code: None,
            message: None,
            status: None,
            reach: Reach::TimedOut,
        };
        assert_eq!(timed_out.summary("S3"), "timed out");
        assert_eq!(timed_out.message(), "no message");
        let unreachable = SdkFailure {
            reach: Reach::Unreachable,
            ..timed_out.clone()
        };
        assert_eq!(unreachable.summary("SQS"), "could not reach SQS");
        let silent = SdkFailure {
            reach: Reach::NoAnswer,
            ..timed_out
        };
        assert_eq!(silent.summary("SNS"), "no answer from SNS");
    }
}
