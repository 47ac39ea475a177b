//! The command line. Environment variables are read here, once, through clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

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
    /// Threads for the async runtime and for CPU work (decompressing, parsing and encoding): org-trail objects are decoded on this many threads at once [default: every core].
    #[arg(long, env = "GUARDLAKE_THREADS", global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=512))]
    pub threads: Option<u16>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Discover accounts and regions, pull new finding versions, publish Parquet, report.
    Run(Box<RunArgs>),
    /// Merge the small files of closed partitions into files near --target-file-bytes.
    Compact(Box<CompactArgs>),
    /// Distributed run, step 1: take the lake's lock, discover, write one shard file per unit
    /// of work; prints the plan (run id, shard count, where the shard files are) as JSON.
    Plan(Box<RunArgs>),
    /// Distributed run, step 2: collect one shard of a planned run and stage it; publishes
    /// nothing (retries and duplicate runs only leave attempts that commit ignores).
    Shard(Box<ShardArgs>),
    /// Distributed run, after the findings shards when CloudTrail has its own phase (org-trail
    /// mode, or delegated-admin mode with lookup): gather every new finding version and write
    /// the CloudTrail batches (collected with `shard`, numbered after the findings shards);
    /// prints where they are as JSON.
    PlanTrail(Box<CommitArgs>),
    /// Distributed run, last step: publish one finished attempt of every shard through one
    /// journal (shards that never finished fail as ShardFailed), then release the lock.
    Commit(Box<CommitArgs>),
    /// Ask GuardDuty for one sample finding of --canary-type in every covered account × region
    /// (needs guardduty:CreateSampleFindings: the member stack's EnableCanary); later runs mark
    /// each arrived, or a `canary_missing` gap after --canary-wait-secs.
    Canary(Box<RunArgs>),
    /// Render the coverage table as one self-contained HTML page: an account × region grid, a
    /// feature × account matrix, counts.
    Coverage(Box<CoverageArgs>),
    /// Send what the alert outboxes still owe to --alerts-bus; with --dry-run, print instead
    /// the events the last run would emit under the rules configured now (JSON lines), to
    /// tune rules without paging anyone.
    Alerts(Box<RunArgs>),
    /// Print the lake's tables as Athena DDL, Markdown column docs, or JSON Schema.
    Schema(SchemaArgs),
}

/// Flags of `guardlake schema`.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Only this table (findings, runs, coverage, schema_drift, cloudtrail_events, finding_events) [default: every table].
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

/// A run id as `plan` printed it (a UUID: it names keys of the lake).
fn parse_run_id(value: &str) -> Result<String, String> {
    uuid::Uuid::parse_str(value)
        .map(|id| id.to_string())
        .map_err(|_| format!("{value:?} is not a run id (a UUID, as `guardlake plan` prints it)"))
}

/// Flags of `guardlake shard`.
#[derive(Debug, Args)]
pub struct ShardArgs {
    /// The run id `guardlake plan` printed.
    #[arg(long, value_parser = parse_run_id, value_name = "UUID")]
    pub run_id: String,
    /// The shard's number (its file's name, NNNNN).
    #[arg(long, value_name = "N")]
    pub shard: u32,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Flags of `guardlake commit`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The run id `guardlake plan` printed.
    #[arg(long, value_parser = parse_run_id, value_name = "UUID")]
    pub run_id: String,
    #[command(flatten)]
    pub run: RunArgs,
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
    /// Only this table (findings, runs, coverage, schema_drift, cloudtrail_events, finding_events) [default: every table].
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

/// Flags of `guardlake coverage`.
#[derive(Debug, Args)]
pub struct CoverageArgs {
    /// TOML config file (the same as `run`'s; only lake keys are used).
    #[arg(long, env = "GUARDLAKE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Lake location: file://DIR, a directory, or s3://bucket/prefix [default: ./lake].
    #[arg(long, env = "GUARDLAKE_OUTPUT", value_name = "URI")]
    pub output: Option<String>,
    /// Write the page to this file.
    #[arg(long, value_name = "FILE")]
    pub html: PathBuf,
    /// Read the coverage rows of the last N days, 1-400; each account × region shows its latest.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=400), value_name = "N")]
    pub days: u32,
    /// Region for STS [default: the SDK region, else us-east-1].
    #[arg(long, env = "GUARDLAKE_HOME_REGION", value_name = "REGION")]
    pub home_region: Option<String>,
    /// Scratch directory [default: the system temp dir].
    #[arg(long, env = "GUARDLAKE_WORK_DIR", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    #[command(flatten)]
    pub s3: S3Args,
}

impl CoverageArgs {
    pub fn as_config(&self) -> Config {
        Config {
            output: self.output.clone(),
            home_region: self.home_region.clone(),
            work_dir: self.work_dir.clone(),
            ..Config::default()
        }
    }
}

/// Flags of `guardlake run`. Each one is also a config-file key (same name, snake_case) and an
/// environment variable; flags win over the environment, which wins over the file.
#[derive(Debug, Args, Default)]
#[command(after_help = EXIT_CODES)]
pub struct RunArgs {
    /// TOML config file; its keys are the flag names in snake_case.
    #[arg(long, env = "GUARDLAKE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Every option that is also a config-file key and an environment variable.
    #[command(flatten)]
    pub options: Config,
    /// Backfill: re-collect from this time (RFC 3339 or YYYY-MM-DD), adding only versions the
    /// lake lacks; checkpoints are left as they are. Needs --until.
    #[arg(long, value_parser = parse_time, requires = "until", value_name = "TIME")]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// End (exclusive) of a backfill window.
    #[arg(long, value_parser = parse_time, requires = "since", value_name = "TIME")]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// After publishing, compact closed partitions (as `guardlake compact`).
    #[arg(long, env = "GUARDLAKE_COMPACT")]
    pub compact: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;
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
        let options = Config::default().overridden_by(args.options.clone());
        assert_eq!(
            options.regions,
            Some(vec!["us-east-1".to_owned(), "eu-west-1".to_owned()])
        );
        assert_eq!(options.mode, Some(Mode::DelegatedAdmin));
        assert_eq!(options.dry_run, Some(true));
        let Command::Run(args) = Cli::try_parse_from(["guardlake", "run"]).unwrap().command else {
            panic!("parsed as run")
        };
        assert_eq!(
            args.options.dry_run, None,
            "an absent flag leaves the file's value"
        );
    }
}
