//! Errors of each stage and the one place that classifies AWS errors.

use aws_sdk_sts::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::result::SdkError;

/// How a target (account × region × source) ended. Written to the `runs` table as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetStatus {
    Ok,
    AccessDenied,
    RegionDisabled,
    NotEnabled,
    Throttled,
    /// Org-trail mode: no trail object was ever found where the target's logs should be.
    TrailNotFound,
    Error,
}

impl TargetStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::AccessDenied => "access_denied",
            Self::RegionDisabled => "region_disabled",
            Self::NotEnabled => "not_enabled",
            Self::Throttled => "throttled",
            Self::TrailNotFound => "trail_not_found",
            Self::Error => "error",
        }
    }
}

/// A classified failure of one target: never the end of the run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status:?} ({class}): {message}")]
pub struct TargetFailure {
    pub status: TargetStatus,
    /// The service's error code (e.g. `AccessDenied`), or a short name of what failed.
    pub class: String,
    pub message: String,
}

impl TargetFailure {
    pub fn new(status: TargetStatus, class: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            class: class.into(),
            message: message.into(),
        }
    }
}

/// Maps an AWS error code to the status a target gets.
pub fn status_for_code(code: &str) -> TargetStatus {
    match code {
        "AccessDenied"
        | "AccessDeniedException"
        | "UnauthorizedOperation"
        | "AuthorizationError"
        | "AWSOrganizationsNotInUseException" => TargetStatus::AccessDenied,
        // What AWS answers for an opt-in region the account has not enabled, or where STS is off.
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "OptInRequired"
        | "AuthFailure"
        | "RegionDisabledException"
        | "InvalidAccessKeyId" => TargetStatus::RegionDisabled,
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "SlowDown" => TargetStatus::Throttled,
        _ => TargetStatus::Error,
    }
}

/// Classifies an SDK error (after the SDK's own retries) into a target failure.
pub fn classify<E, R>(operation: &str, err: &SdkError<E, R>) -> TargetFailure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            let code = inner.code().unwrap_or("Unknown");
            let message = inner.message().unwrap_or_default();
            TargetFailure::new(
                status_for_code(code),
                code,
                format!("{operation}: {message}"),
            )
        }
        SdkError::TimeoutError(_) => TargetFailure::new(
            TargetStatus::Error,
            "Timeout",
            format!("{operation}: timed out"),
        ),
        SdkError::DispatchFailure(failure) => TargetFailure::new(
            TargetStatus::Error,
            "DispatchFailure",
            format!("{operation}: {:?}", failure.as_connector_error()),
        ),
        other => TargetFailure::new(
            TargetStatus::Error,
            "SdkError",
            format!(
                "{operation}: {}",
                aws_smithy_types::error::display::DisplayErrorContext(other)
            ),
        ),
    }
}

/// Classifies a failed object-store call (S3 or the local directory) like an API error: the S3
/// error code decides (`AccessDenied` → access_denied, `SlowDown` → throttled); an S3 503
/// without a code is S3 asking to slow down, so throttled too.
pub fn classify_store(operation: &str, err: &crate::sink::store::StoreError) -> TargetFailure {
    let message = format!("{operation}: {}", err.message);
    match err.code.as_deref() {
        Some("HTTP 503") | Some("ServiceUnavailable") => {
            TargetFailure::new(TargetStatus::Throttled, "SlowDown", message)
        }
        Some(code) => TargetFailure::new(status_for_code(code), code, message),
        None => TargetFailure::new(TargetStatus::Error, operation, message),
    }
}

/// Errors that stop a whole run before anything is published.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("discovery failed: {0}")]
    Discovery(TargetFailure),
    #[error("writing the lake failed at {key}: {message}")]
    Store { key: String, message: String },
    #[error("encoding Parquet failed: {0}")]
    Encode(String),
    #[error("{0}")]
    Locked(String),
    #[error("publishing failed: {0}")]
    Publish(String),
    /// The journal was committed (the data is published) but a later step failed.
    #[error("published; finishing deferred to the next run: {0}")]
    Deferred(String),
}

/// What the process exits with. Documented in the README and `--help`.
pub mod exit_code {
    /// Every target ok, everything published.
    pub const OK: i32 = 0;
    /// The command line or the config file is invalid (clap uses 2 for usage errors too).
    pub const CONFIG: i32 = 2;
    /// Published, but some targets failed (see the `runs` table and the summary).
    pub const PARTIAL: i32 = 3;
    /// The run failed and nothing was published.
    pub const FAILED: i32 = 4;
    /// Another run holds the lake's lock (or took it over): this one did nothing.
    pub const LOCKED: i32 = 5;
    /// Published (the journal was committed), but copying, advancing checkpoints or cleaning
    /// up failed: the next run rolls the journal forward and finishes it.
    pub const DEFERRED: i32 = 6;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_the_documented_statuses() {
        assert_eq!(status_for_code("AccessDenied"), TargetStatus::AccessDenied);
        assert_eq!(
            status_for_code("AccessDeniedException"),
            TargetStatus::AccessDenied
        );
        assert_eq!(
            status_for_code("UnrecognizedClientException"),
            TargetStatus::RegionDisabled
        );
        assert_eq!(
            status_for_code("ThrottlingException"),
            TargetStatus::Throttled
        );
        assert_eq!(status_for_code("InternalServerError"), TargetStatus::Error);
        assert_eq!(TargetStatus::RegionDisabled.as_str(), "region_disabled");
    }

    #[test]
    fn store_errors_are_classified_by_their_s3_code() {
        let err = |code: Option<&str>| crate::sink::store::StoreError {
            key: "AWSLogs/".into(),
            message: "failed".into(),
            code: code.map(str::to_owned),
        };
        let status = |code| classify_store("s3:ListObjectsV2", &err(code)).status;
        assert_eq!(status(Some("AccessDenied")), TargetStatus::AccessDenied);
        assert_eq!(status(Some("SlowDown")), TargetStatus::Throttled);
        assert_eq!(status(Some("HTTP 503")), TargetStatus::Throttled);
        assert_eq!(status(Some("InternalError")), TargetStatus::Error);
        assert_eq!(status(None), TargetStatus::Error);
        assert_eq!(
            classify_store("s3:GetObject", &err(Some("AccessDenied"))).class,
            "AccessDenied"
        );
    }
}
