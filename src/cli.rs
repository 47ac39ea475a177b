//! The command line. Environment variables are read here, once, through clap.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Mode};

const EXIT_CODES: &str = "Exit codes: 0 every target ok; 2 invalid command line or config; \
3 published, but some targets failed (see the runs table); 4 run failed, nothing published; \
5 another run holds the lake's lock, nothing done; 6 published, but finishing the publish \
failed (the next run completes it).";

#[derive(Debug, Parser)]
#[command(name = "guardlake", version, about = "Collects GuardDuty findings from every account and region of an AWS Organization into a partitioned Parquet lake.", after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Test-only: kill the process with SIGKILL at this named point (crash tests).
    #[arg(long, env = "GUARDLAKE_CRASH_AT", hide = true, global = true)]
    pub crash_at: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Discover accounts and regions, pull new finding versions, publish Parquet, report.
    Run(Box<RunArgs>),
    /// Merge the small files of closed partitions into files near --target-file-bytes.
    Compact(Box<CompactArgs>),
    /// Print the lake's tables as Athena DDL, Markdown column docs, or JSON Schema.
    Schema(SchemaArgs),
}

/// Flags of `guardlake schema`.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Only this table (findings, runs, schema_drift) [default: every table].
    #[arg(long)]
    pub table: Option<String>,
    /// What to print.
    #[arg(long, value_enum, default_value = "ddl")]
    pub format: crate::normalize::schema::Format,
    /// The lake root the DDL's LOCATION points at.
    #[arg(long, default_value = "s3://LAKE_BUCKET/guardlake", value_name = "URI")]
    pub location: String,
    /// The Glue database the DDL creates tables in.
    #[arg(long, default_value = "guardlake")]
    pub database: String,
}

/// How guardlake reaches S3 (shared by every command).
#[derive(Debug, Args, Default, Clone)]
pub struct S3Args {
    /// Use path-style S3 addressing; on by itself when AWS_ENDPOINT_URL(_S3) is set.
    #[arg(long, env = "GUARDLAKE_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    #[arg(long, env = "AWS_ENDPOINT_URL", hide = true)]
    pub aws_endpoint_url: Option<String>,
    #[arg(long, env = "AWS_ENDPOINT_URL_S3", hide = true)]
    pub aws_endpoint_url_s3: Option<String>,
}

impl S3Args {
    /// Path-style S3 when asked, or when an endpoint override points at a non-AWS server.
    pub fn path_style(&self) -> bool {
        self.s3_path_style || self.aws_endpoint_url.is_some() || self.aws_endpoint_url_s3.is_some()
    }
}

/// A time on the command line or in a Lambda payload: RFC 3339 (`2026-11-01T00:00:00Z`) or a
/// UTC date (`2026-11-01`).
pub fn parse_time(value: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            format!("{value:?} is neither RFC 3339 (2026-11-01T00:00:00Z) nor a date (2026-11-01)")
        })
}

/// Flags of `guardlake compact`.
#[derive(Debug, Args, Default)]
pub struct CompactArgs {
    /// TOML config file (the same as `run`'s; only lake keys are used).
    #[arg(long, env = "GUARDLAKE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Lake location: file://DIR, a directory, or s3://bucket/prefix [default: ./lake].
    #[arg(long, env = "GUARDLAKE_OUTPUT", value_name = "URI")]
    pub output: Option<String>,
    /// Only this table (findings, runs, schema_drift, cloudtrail_events, finding_events) [default: every table].
    #[arg(long)]
    pub table: Option<String>,
    /// Only this partition (YYYY-MM-DD), closed or not [default: every closed partition].
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub dt: Option<chrono::NaiveDate>,
    /// Merged files roll near this many bytes [default: 134217728].
    #[arg(long, env = "GUARDLAKE_TARGET_FILE_BYTES", value_name = "BYTES")]
    pub target_file_bytes: Option<u64>,
    /// KMS key id/ARN for SSE-KMS on S3 objects (S3 output only).
    #[arg(long, env = "GUARDLAKE_SSE_KMS_KEY_ID", value_name = "KEY")]
    pub sse_kms_key_id: Option<String>,
    /// Region for STS [default: the SDK region, else us-east-1].
    #[arg(long, env = "GUARDLAKE_HOME_REGION", value_name = "REGION")]
    pub home_region: Option<String>,
    /// Scratch directory [default: the system temp dir].
    #[arg(long, env = "GUARDLAKE_WORK_DIR", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Lease of the lake's run lock, seconds [default: 900].
    #[arg(long, env = "GUARDLAKE_LOCK_LEASE_SECS", value_name = "SECS")]
    pub lock_lease_secs: Option<u64>,
    #[command(flatten)]
    pub s3: S3Args,
}

impl CompactArgs {
    pub fn as_config(&self) -> Config {
        Config {
            output: self.output.clone(),
            sse_kms_key_id: self.sse_kms_key_id.clone(),
            target_file_bytes: self.target_file_bytes,
            home_region: self.home_region.clone(),
            work_dir: self.work_dir.clone(),
            lock_lease_secs: self.lock_lease_secs,
            ..Config::default()
        }
    }
}

/// A comma-separated flag value, trimmed, empty items dropped.
fn list(values: &Option<Vec<String>>) -> Option<Vec<String>> {
    values.as_ref().map(|v| {
        v.iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// Flags of `guardlake run`. Each one is also a config-file key (same name, snake_case) and an
/// environment variable; flags win over the environment, which wins over the file.
#[derive(Debug, Args, Default)]
#[command(after_help = EXIT_CODES)]
pub struct RunArgs {
    /// TOML config file; its keys are the flag names in snake_case.
    #[arg(long, env = "GUARDLAKE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Lake location: file://DIR, a directory, or s3://bucket/prefix [default: ./lake].
    #[arg(long, env = "GUARDLAKE_OUTPUT", value_name = "URI")]
    pub output: Option<String>,
    /// KMS key id/ARN for SSE-KMS on S3 objects (S3 output only).
    #[arg(long, env = "GUARDLAKE_SSE_KMS_KEY_ID", value_name = "KEY")]
    pub sse_kms_key_id: Option<String>,
    /// Regions, comma-separated, or `enabled` for each account's enabled regions [default: enabled].
    #[arg(
        long,
        env = "GUARDLAKE_REGIONS",
        value_delimiter = ',',
        value_name = "r1,r2|enabled"
    )]
    pub regions: Option<Vec<String>>,
    /// Static account list instead of Organizations discovery.
    #[arg(
        long,
        env = "GUARDLAKE_ACCOUNTS",
        value_delimiter = ',',
        value_name = "ID,ID"
    )]
    pub accounts: Option<Vec<String>>,
    /// Accounts never to cover.
    #[arg(
        long,
        env = "GUARDLAKE_EXCLUDE_ACCOUNTS",
        value_delimiter = ',',
        value_name = "ID,ID"
    )]
    pub exclude_accounts: Option<Vec<String>>,
    /// Only accounts under these OUs or roots (nested OUs followed).
    #[arg(
        long,
        env = "GUARDLAKE_INCLUDE_OUS",
        value_delimiter = ',',
        value_name = "OU,OU"
    )]
    pub include_ous: Option<Vec<String>>,
    /// Skip accounts under these OUs (nested OUs followed).
    #[arg(
        long,
        env = "GUARDLAKE_EXCLUDE_OUS",
        value_delimiter = ',',
        value_name = "OU,OU"
    )]
    pub exclude_ous: Option<Vec<String>>,
    /// Read-only role name in each member account [default: GuardlakeReadOnly].
    #[arg(long, env = "GUARDLAKE_ROLE_NAME")]
    pub role_name: Option<String>,
    /// Role ARN template instead of --role-name, with {account_id}.
    #[arg(long, env = "GUARDLAKE_ROLE_ARN_TEMPLATE", value_name = "ARN")]
    pub role_arn_template: Option<String>,
    /// External id required by the member role's trust policy.
    #[arg(
        long,
        env = "GUARDLAKE_EXTERNAL_ID",
        conflicts_with = "external_id_secret"
    )]
    pub external_id: Option<String>,
    /// Secrets Manager secret (ARN or name) holding the external id, read once at start: keeps
    /// it out of the environment (the deployed stack uses this).
    #[arg(long, env = "GUARDLAKE_EXTERNAL_ID_SECRET", value_name = "ARN")]
    pub external_id_secret: Option<String>,
    /// member: a role per account; delegated-admin: one chain per region in the admin account [default: member].
    #[arg(long, env = "GUARDLAKE_MODE", value_enum)]
    pub mode: Option<Mode>,
    /// GuardDuty delegated administrator account (delegated-admin mode) [default: the caller's account].
    #[arg(long, env = "GUARDLAKE_ADMIN_ACCOUNT", value_name = "ID")]
    pub admin_account: Option<String>,
    /// Days of history a target's first run pulls, 1-90 [default: 30].
    #[arg(long, env = "GUARDLAKE_LOOKBACK_DAYS", value_name = "N")]
    pub lookback_days: Option<u32>,
    /// Seconds before the last watermark re-read on each run [default: 1800].
    #[arg(long, env = "GUARDLAKE_OVERLAP_SECS", value_name = "SECS")]
    pub overlap_secs: Option<u64>,
    /// Targets collected at once [default: 8].
    #[arg(long, env = "GUARDLAKE_CONCURRENCY", value_name = "N")]
    pub concurrency: Option<NonZeroUsize>,
    /// Print the plan (targets, windows, skipped accounts and why) and stop.
    #[arg(long, env = "GUARDLAKE_DRY_RUN")]
    pub dry_run: bool,
    /// Region for STS, Organizations and account calls [default: the SDK region, else us-east-1].
    #[arg(long, env = "GUARDLAKE_HOME_REGION", value_name = "REGION")]
    pub home_region: Option<String>,
    /// Attempts per AWS call, first included, with exponential backoff [default: 6].
    #[arg(long, env = "GUARDLAKE_MAX_ATTEMPTS", value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Roll Parquet files near this many bytes [default: 134217728].
    #[arg(long, env = "GUARDLAKE_TARGET_FILE_BYTES", value_name = "BYTES")]
    pub target_file_bytes: Option<u64>,
    /// Encode buffered rows once they hold this many bytes, 1 MiB to 1 GiB [default: 33554432].
    #[arg(long, env = "GUARDLAKE_FLUSH_BYTES", value_name = "BYTES")]
    pub flush_bytes: Option<u64>,
    /// Scratch directory for Parquet files before upload [default: the system temp dir].
    #[arg(long, env = "GUARDLAKE_WORK_DIR", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Lease of the lake's run lock, seconds; a crashed run's lock expires after it [default: 900].
    #[arg(long, env = "GUARDLAKE_LOCK_LEASE_SECS", value_name = "SECS")]
    pub lock_lease_secs: Option<u64>,
    /// Backfill: re-collect from this time (RFC 3339 or YYYY-MM-DD), adding only versions the
    /// lake lacks; checkpoints are left as they are. Needs --until.
    #[arg(long, value_parser = parse_time, requires = "until", value_name = "TIME")]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// End (exclusive) of a backfill window.
    #[arg(long, value_parser = parse_time, requires = "since", value_name = "TIME")]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// CloudTrail events: off; lookup (LookupEvents behind findings, plus the watch-list); org-trail (the organization trail's S3 objects) [default: off].
    #[arg(long, env = "GUARDLAKE_CLOUDTRAIL", value_enum)]
    pub cloudtrail: Option<crate::config::CloudTrailMode>,
    /// Event names pulled from every account and region in lookup mode [default: 20 names, see README].
    #[arg(
        long,
        env = "GUARDLAKE_WATCHLIST",
        value_delimiter = ',',
        value_name = "NAME,NAME"
    )]
    pub watchlist: Option<Vec<String>>,
    /// Seconds of padding around a finding's first/last seen times for its lookups [default: 900].
    #[arg(long, env = "GUARDLAKE_LOOKUP_PAD_SECS", value_name = "SECS")]
    pub lookup_pad_secs: Option<u64>,
    /// Org-trail mode: the bucket the organization trail delivers to.
    #[arg(long, env = "GUARDLAKE_TRAIL_BUCKET", value_name = "BUCKET")]
    pub trail_bucket: Option<String>,
    /// Org-trail mode: the trail's key prefix before AWSLogs/.
    #[arg(long, env = "GUARDLAKE_TRAIL_PREFIX", value_name = "PREFIX")]
    pub trail_prefix: Option<String>,
    /// Org-trail mode: read a local copy of the trail (a directory holding AWSLogs/) instead of S3.
    #[arg(long, env = "GUARDLAKE_TRAIL_DIR", value_name = "DIR")]
    pub trail_dir: Option<PathBuf>,
    /// Org-trail mode: the o-… id in the object keys [default: Organizations DescribeOrganization].
    #[arg(long, env = "GUARDLAKE_TRAIL_ORG_ID", value_name = "ID")]
    pub trail_org_id: Option<String>,
    /// After publishing, compact closed partitions (as `guardlake compact`).
    #[arg(long, env = "GUARDLAKE_COMPACT")]
    pub compact: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

impl RunArgs {
    /// The flags and environment as a config layer over the file.
    pub fn as_config(&self) -> Config {
        Config {
            output: self.output.clone(),
            sse_kms_key_id: self.sse_kms_key_id.clone(),
            regions: list(&self.regions),
            accounts: list(&self.accounts),
            exclude_accounts: list(&self.exclude_accounts),
            include_ous: list(&self.include_ous),
            exclude_ous: list(&self.exclude_ous),
            role_name: self.role_name.clone(),
            role_arn_template: self.role_arn_template.clone(),
            external_id: self.external_id.clone(),
            external_id_secret: self.external_id_secret.clone(),
            only_accounts: None,
            mode: self.mode,
            admin_account: self.admin_account.clone(),
            lookback_days: self.lookback_days,
            overlap_secs: self.overlap_secs,
            concurrency: self.concurrency,
            dry_run: self.dry_run.then_some(true),
            home_region: self.home_region.clone(),
            max_attempts: self.max_attempts,
            target_file_bytes: self.target_file_bytes,
            flush_bytes: self.flush_bytes,
            work_dir: self.work_dir.clone(),
            lock_lease_secs: self.lock_lease_secs,
            cloudtrail: self.cloudtrail,
            watchlist: list(&self.watchlist),
            lookup_pad_secs: self.lookup_pad_secs,
            trail_bucket: self.trail_bucket.clone(),
            trail_prefix: self.trail_prefix.clone(),
            trail_dir: self.trail_dir.clone(),
            trail_org_id: self.trail_org_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed_and_lists_flags() {
        Cli::command().debug_assert();
        let parsed = Cli::try_parse_from([
            "guardlake",
            "run",
            "--regions",
            "us-east-1, eu-west-1",
            "--mode",
            "delegated-admin",
            "--dry-run",
        ])
        .unwrap();
        let Command::Run(args) = parsed.command else {
            panic!("parsed as run")
        };
        assert_eq!(
            args.as_config().regions,
            Some(vec!["us-east-1".to_owned(), "eu-west-1".to_owned()])
        );
        assert_eq!(args.mode, Some(Mode::DelegatedAdmin));
        assert_eq!(args.as_config().dry_run, Some(true));
    }
}
