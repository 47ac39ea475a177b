//! Turning source records into typed rows of the lake's tables.
pub mod cloudtrail;
pub mod drift;
pub mod finding_text;
pub mod guardduty;
pub mod schema;
