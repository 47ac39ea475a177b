//! Times as the lake keeps them: epoch milliseconds, UTC days, RFC 3339 in messages.

use chrono::{DateTime, NaiveDate, Utc};

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The UTC day of an epoch-ms time (a `dt` partition).
pub fn day_of(ms: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.date_naive())
        .unwrap_or_default()
}

/// `2026-11-29T01:49:18Z`.
pub fn iso(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}
