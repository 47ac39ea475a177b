//! Readers of the AWS APIs that produce the lake's records.
pub mod cloudtrail;
pub mod guardduty;
pub mod orgtrail;
