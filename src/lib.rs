//! guardlake: collects GuardDuty findings from every account and region of an AWS
//! Organization into a partitioned Parquet lake that Athena and BI tools read.
//!
//! The stages, in the order a run goes through them (see "How it is built" in the README):
//! [`config`] → [`discover`] → [`aws`] (credentials per account) → [`sources`] →
//! [`normalize`] → [`sink`] → [`state`] → [`report`] → [`alerts`]; [`run`] ties them together.

pub mod alerts;
pub mod aws;
pub mod canary;
pub mod cli;
pub mod clock;
pub mod compact;
pub mod config;
pub mod cpu;
pub mod crash;
pub mod discover;
pub mod distributed;
pub mod error;
pub mod lambda;
pub mod logs;
pub mod normalize;
pub mod page;
pub mod pipeline;
pub mod report;
pub mod run;
pub mod sink;
pub mod sources;
pub mod state;
pub mod table;
