//! Errors of each stage and the one place that classifies AWS errors.

use aws_sdk_sts::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;

pub use crate::sink::store::http_code;

/// How a target (account × region × source) ended. Written to the `runs` table as text.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
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
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{status:?} ({class}): {message}")]
pub struct TargetFailure {
    pub status: TargetStatus,
    /// The service's error code (e.g. `AccessDenied`), or a short name of what failed.
    pub class: String,
    pub message: String,
}

/// The longest `runs.error_message`, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

impl TargetFailure {
    /// A failure whose message is one line of at most [`MAX_MESSAGE_BYTES`] (longer ones are
    /// cut at a character boundary and end with `…`).
    pub fn new(status: TargetStatus, class: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            class: one_line(&class.into(), 128),
            message: one_line(&message.into(), MAX_MESSAGE_BYTES),
        }
    }
}

/// `text` on one line (control characters and runs of whitespace become one space), at most
/// `max` bytes.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for word in text.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.len() > max {
            break;
        }
    }
    if out.len() > max {
        let mut end = max - '…'.len_utf8();
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
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

/// Classifies an SDK error (after the SDK's own retries) into a target failure. Messages are
/// the chain of causes by `Display` (never a `Debug` dump); an answer without an error code is
/// named by its HTTP status.
pub fn classify<E>(operation: &str, err: &SdkError<E, HttpResponse>) -> TargetFailure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            let status = service.raw().status().as_u16();
            match inner.code() {
                Some(code) => TargetFailure::new(
                    status_for_code(code),
                    code,
                    format!("{operation}: {}", inner.message().unwrap_or_default()),
                ),
                None => TargetFailure::new(
                    if status == 429 || status == 503 {
                        TargetStatus::Throttled
                    } else {
                        TargetStatus::Error
                    },
                    http_code(status),
                    format!(
                        "{operation}: HTTP {status} without an error code{}",
                        inner
                            .message()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    ),
                ),
            }
        }
        SdkError::TimeoutError(_) => TargetFailure::new(
            TargetStatus::Error,
            "Timeout",
            format!("{operation}: timed out"),
        ),
        // Connection resets, refused connections, DNS: named, with the chain of causes.
        SdkError::DispatchFailure(failure) => TargetFailure::new(
            TargetStatus::Error,
            if failure.is_timeout() {
                "Timeout"
            } else if failure.is_user() {
                "DispatchFailure"
            } else {
                "ConnectionError"
            },
            format!("{operation}: {}", causes(err)),
        ),
        SdkError::ResponseError(_) => TargetFailure::new(
            TargetStatus::Error,
            "ResponseError",
            format!("{operation}: {}", causes(err)),
        ),
        other => TargetFailure::new(
            TargetStatus::Error,
            "SdkError",
            format!("{operation}: {}", causes(other)),
        ),
    }
}

/// An error and its sources, each by its `Display`, joined by `: ` (a source whose text the
/// previous one already holds is left out): no `Debug` dumps.
pub fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(current) = next {
        let text = current.to_string();
        if !text.is_empty() && !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = current.source();
    }
    parts.join(": ")
}

/// Classifies a failed object-store call (S3 or the local directory) like an API error: the S3
/// error code decides (`AccessDenied` → access_denied, `SlowDown` → throttled); an S3 503
/// without a code is S3 asking to slow down, so throttled too.
pub fn classify_store(operation: &str, err: &crate::sink::store::StoreError) -> TargetFailure {
    let message = format!("{operation}: {}", err.message);
    match err.code.as_deref() {
        Some(code) if code == "ServiceUnavailable" || code == http_code(503) => {
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
    #[error("writing the lake failed{}: {message}", at(.key))]
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

impl From<crate::sink::store::StoreError> for RunError {
    fn from(e: crate::sink::store::StoreError) -> Self {
        Self::Store {
            key: e.key,
            message: e.message,
        }
    }
}

impl From<crate::sink::store::PutError> for RunError {
    fn from(e: crate::sink::store::PutError) -> Self {
        match e {
            crate::sink::store::PutError::Store(e) => e.into(),
            conflict => Self::Store {
                key: String::new(),
                message: conflict.to_string(),
            },
        }
    }
}

impl RunError {
    /// A stable name of what failed: the Lambda `errorType`, documented in the README.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Config(_) => "ConfigError",
            Self::Discovery(_) => "DiscoveryFailed",
            Self::Store { .. } => "LakeWriteFailed",
            Self::Encode(_) => "EncodeFailed",
            Self::Locked(_) => "LakeLocked",
            Self::Publish(_) => "PublishFailed",
            Self::Deferred(_) => "PublishDeferred",
        }
    }
}

/// ` at <key>`, or nothing when the failure is not about one key.
fn at(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" at {key}")
    }
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
    fn messages_are_one_bounded_line() {
        let failure = TargetFailure::new(
            TargetStatus::Error,
            "X",
            format!("first\nsecond\t\0third {}", "é".repeat(2000)),
        );
        assert!(failure.message.starts_with("first second third éé"));
        assert!(
            failure.message.len() <= MAX_MESSAGE_BYTES,
            "{}",
            failure.message.len()
        );
        assert!(failure.message.ends_with('…'));
        assert!(!failure.message.contains(['\n', '\t', '\0']));
        assert_eq!(one_line("short", 10), "short");
    }

    #[test]
    fn a_store_error_without_a_key_names_none() {
        let err = RunError::Store {
            key: String::new(),
            message: "boom".into(),
        };
        assert_eq!(err.to_string(), "writing the lake failed: boom");
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
