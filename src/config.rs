//! Configuration: a TOML file (`--config`), overridden by environment variables and flags.
//! `Config` is what users write; `ValidatedConfig` is what a run uses.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// GuardDuty keeps findings for 90 days: a longer first-run lookback finds nothing more.
pub const MAX_LOOKBACK_DAYS: u32 = 90;

/// The documented default watch-list: trail and detector tampering, new credentials, policy
/// changes, root and console sign-in, public exposure, key deletion.
pub const DEFAULT_WATCHLIST: [&str; 20] = [
    "StopLogging",
    "DeleteTrail",
    "UpdateTrail",
    "PutEventSelectors",
    "DeleteDetector",
    "UpdateDetector",
    "DisassociateFromAdministratorAccount",
    "DeleteMembers",
    "CreateAccessKey",
    "CreateUser",
    "AttachUserPolicy",
    "PutUserPolicy",
    "PutRolePolicy",
    "ConsoleLogin",
    "PutBucketPolicy",
    "PutBucketAcl",
    "DeletePublicAccessBlock",
    "AuthorizeSecurityGroupIngress",
    "ScheduleKeyDeletion",
    "DisableKey",
];

/// How findings are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Assume the role in each member account and read its detector in each region.
    Member,
    /// Read each region once from the GuardDuty delegated administrator's detector.
    DelegatedAdmin,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::DelegatedAdmin => "delegated-admin",
        }
    }
}

/// Whether and how CloudTrail events are collected next to the findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CloudTrailMode {
    /// No CloudTrail events.
    Off,
    /// LookupEvents: the events behind each new finding version, and the watch-list.
    Lookup,
    /// The organization trail's objects in S3 (`--trail-bucket`), for organizations that
    /// outgrow LookupEvents' 2 requests/s.
    OrgTrail,
}

/// Which organization-trail events the lake keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TrailKeep {
    /// The watch-list, denied calls, and the events behind new finding versions.
    Relevant,
    /// Every event of every object read: the lake holds the whole trail.
    All,
}

/// The config file. Every key is optional; flags and environment variables win over it.
#[derive(Debug, Default, Clone, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Config {
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
    #[arg(long, env = "GUARDLAKE_EXTERNAL_ID")]
    pub external_id: Option<String>,
    /// Secrets Manager secret (ARN or name) holding the external id, read once at start: keeps
    /// it out of the environment (the deployed stack uses this).
    #[arg(long, env = "GUARDLAKE_EXTERNAL_ID_SECRET", value_name = "ARN")]
    pub external_id_secret: Option<String>,
    /// Only these accounts of the ones the configuration covers (a Lambda payload's narrowing);
    /// not a file or command-line option.
    #[serde(skip)]
    #[arg(skip)]
    pub only_accounts: Option<Vec<String>>,
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
    #[arg(long, env = "GUARDLAKE_DRY_RUN", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::FalseyValueParser::new())]
    pub dry_run: Option<bool>,
    /// Region for STS, Organizations and account calls [default: the SDK region, else us-east-1].
    #[arg(long, env = "GUARDLAKE_HOME_REGION", value_name = "REGION")]
    pub home_region: Option<String>,
    /// Attempts per AWS call, first included, with exponential backoff [default: 6].
    #[arg(long, env = "GUARDLAKE_MAX_ATTEMPTS", value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Roll Parquet files near this many bytes [default: 134217728].
    #[arg(long, env = "GUARDLAKE_TARGET_FILE_BYTES", value_name = "BYTES")]
    pub target_file_bytes: Option<u64>,
    /// Encode buffered rows once they hold this many bytes, 1 MiB to 1 GiB [default: 16777216].
    #[arg(long, env = "GUARDLAKE_FLUSH_BYTES", value_name = "BYTES")]
    pub flush_bytes: Option<u64>,
    /// Scratch directory for Parquet files before upload [default: the system temp dir].
    #[arg(long, env = "GUARDLAKE_WORK_DIR", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Lease of the lake's run lock, seconds; a crashed run's lock expires after it [default: 900].
    #[arg(long, env = "GUARDLAKE_LOCK_LEASE_SECS", value_name = "SECS")]
    pub lock_lease_secs: Option<u64>,
    /// CloudTrail events: off; lookup (LookupEvents behind findings, plus the watch-list); org-trail (the organization trail's S3 objects) [default: off].
    #[arg(long, env = "GUARDLAKE_CLOUDTRAIL", value_enum)]
    pub cloudtrail: Option<CloudTrailMode>,
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
    /// Org-trail mode: which events the lake keeps: relevant (the watch-list, denied calls and the events behind new finding versions) or all (every event of every object read) [default: relevant].
    #[arg(
        long,
        env = "GUARDLAKE_TRAIL_KEEP",
        value_enum,
        value_name = "relevant|all"
    )]
    pub trail_keep: Option<TrailKeep>,
    /// Org-trail mode: the o-… id in the object keys [default: Organizations DescribeOrganization].
    #[arg(long, env = "GUARDLAKE_TRAIL_ORG_ID", value_name = "ID")]
    pub trail_org_id: Option<String>,
    /// GuardDuty features that must be ENABLED in every covered account and region; one off is a `feature_off:<NAME>` gap in the coverage table (names as GetDetector reports them) [default: CLOUD_TRAIL,DNS_LOGS,FLOW_LOGS,S3_DATA_EVENTS].
    #[arg(
        long,
        env = "GUARDLAKE_REQUIRED_FEATURES",
        value_delimiter = ',',
        value_name = "NAME,NAME"
    )]
    pub required_features: Option<Vec<String>>,
    /// `guardlake canary`: the finding type of the sample each covered account × region is asked for [default: Recon:EC2/PortProbeUnprotectedPort].
    #[arg(long, env = "GUARDLAKE_CANARY_TYPE", value_name = "TYPE")]
    pub canary_type: Option<String>,
    /// Seconds after a canary request its sample must be in the lake; later, it is a `canary_missing` gap in the coverage table, 0 to 604800 [default: 3600].
    #[arg(long, env = "GUARDLAKE_CANARY_WAIT_SECS", value_name = "SECS")]
    pub canary_wait_secs: Option<u64>,
    /// Distributed org-trail runs: trail objects a batch reads at most, by estimate (288 per log prefix and delivery day); an account's backlog above it is split into region and day batches, 288 to 1000000 [default: 2000].
    #[arg(long, env = "GUARDLAKE_TRAIL_SHARD_OBJECTS", value_name = "N")]
    pub trail_shard_objects: Option<u64>,
    /// EventBridge bus (name or ARN) that gets an event per finding version an alert rule matches, new coverage gaps and a digest per run, after each commit; the default rules apply when no `[[alerts]]` are given.
    #[arg(long, env = "GUARDLAKE_ALERTS_BUS", value_name = "NAME|ARN")]
    pub alerts_bus: Option<String>,
    /// Alert rules: `[[alerts]]` tables in the config file, or a JSON list here (keys name, on, min_severity, types, accounts, ous, include_samples, include_archived, spike_per_hour; see README "Alerts") [default: urgent, work and resolved rules when a bus is set].
    #[arg(long, env = "GUARDLAKE_ALERTS", value_name = "JSON", value_parser = crate::alerts::rules::parse_rules)]
    pub alerts: Option<crate::alerts::AlertRules>,
}

/// Where the lake lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

/// Which regions a run covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Regions {
    List(Vec<String>),
    /// Every region each account reports ENABLED or ENABLED_BY_DEFAULT (account:ListRegions).
    Enabled,
}

/// Where the member role is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleSpec {
    Name(String),
    ArnTemplate(String),
}

impl RoleSpec {
    pub fn arn(&self, partition: &str, account_id: &str) -> String {
        match self {
            Self::Name(name) => format!("arn:{partition}:iam::{account_id}:role/{name}"),
            Self::ArnTemplate(template) => template.replace("{account_id}", account_id),
        }
    }
}

/// A config that passed validation: what a run uses.
#[derive(Debug, Clone)]
pub struct ValidatedConfig {
    pub output: Output,
    pub sse_kms_key_id: Option<String>,
    pub regions: Regions,
    pub accounts: Option<Vec<String>>,
    pub exclude_accounts: Vec<String>,
    pub include_ous: Vec<String>,
    pub exclude_ous: Vec<String>,
    pub role: RoleSpec,
    pub external_id: Option<String>,
    pub external_id_secret: Option<String>,
    pub only_accounts: Option<Vec<String>>,
    pub mode: Mode,
    pub admin_account: Option<String>,
    pub lookback_secs: i64,
    pub overlap_secs: i64,
    pub concurrency: NonZeroUsize,
    pub dry_run: bool,
    pub home_region: Option<String>,
    pub max_attempts: u32,
    pub target_file_bytes: u64,
    pub flush_bytes: u64,
    pub work_dir: PathBuf,
    pub lock_lease_secs: u64,
    pub cloudtrail: CloudTrailMode,
    pub watchlist: Vec<String>,
    pub lookup_pad_secs: i64,
    pub trail: Option<TrailSource>,
    pub trail_org_id: Option<String>,
    pub trail_keep: TrailKeep,
    pub trail_shard_objects: u64,
    pub required_features: Vec<String>,
    pub canary_type: String,
    pub canary_wait_secs: i64,
    /// Alerting, when a bus or rules are configured.
    pub alerts: Option<crate::alerts::AlertConfig>,
}

/// Where the organization trail's objects are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrailSource {
    S3 { bucket: String, prefix: String },
    Local(PathBuf),
}

/// A config problem, naming the key (and its flag) and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid `{key}` ({flag}): {problem}; {fix}")]
    Invalid {
        key: &'static str,
        flag: &'static str,
        problem: String,
        fix: String,
    },
}

fn invalid(
    key: &'static str,
    flag: &'static str,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        flag,
        problem: problem.into(),
        fix: fix.into(),
    }
}

impl Config {
    /// Reads a TOML config file; unknown keys are rejected with the list of known ones.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim().to_owned(),
        })
    }

    /// Keys set in `other` replace those here (flags and env over the file). Works on the
    /// keys' serialized form, so a new option needs no line here; list items are trimmed and
    /// empty ones dropped (`--regions "us-east-1, eu-west-1,"`).
    pub fn overridden_by(self, other: Config) -> Config {
        let only_accounts = other.only_accounts.clone().or(self.only_accounts.clone());
        let layer = |config: Config| match serde_json::to_value(config) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        let mut merged = layer(self);
        for (key, value) in layer(other) {
            if !value.is_null() {
                merged.insert(key, value);
            }
        }
        for value in merged.values_mut() {
            if let serde_json::Value::Array(items) = value {
                items.retain_mut(|item| match item {
                    serde_json::Value::String(s) => {
                        *s = s.trim().to_owned();
                        !s.is_empty()
                    }
                    _ => true,
                });
            }
        }
        let mut config: Config = serde_json::from_value(serde_json::Value::Object(merged))
            .expect("a merge of two configs is a config");
        config.only_accounts = only_accounts;
        config
    }

    pub fn validate(self) -> Result<ValidatedConfig, ConfigError> {
        let (output, regions) = self.places()?;
        self.check_accounts()?;
        let role = role(self.role_arn_template.clone(), self.role_name.clone())?;
        self.check_secrets()?;
        let numbers = self.numbers()?;
        let watchlist = self.watchlist()?;
        let required_features = self.required_features()?;
        let canary_type = self.canary()?;
        let (cloudtrail, trail) = self.trail()?;
        let alerts = self.alerts()?;
        let mode = self.mode.unwrap_or(Mode::Member);
        Ok(ValidatedConfig {
            alerts,
            trail,
            trail_org_id: self.trail_org_id,
            trail_keep: self.trail_keep.unwrap_or(TrailKeep::Relevant),
            trail_shard_objects: numbers.trail_shard_objects,
            required_features,
            canary_type,
            canary_wait_secs: numbers.canary_wait_secs as i64,
            cloudtrail,
            watchlist,
            lookup_pad_secs: numbers.lookup_pad_secs as i64,
            lock_lease_secs: numbers.lock_lease_secs,
            output,
            sse_kms_key_id: self.sse_kms_key_id,
            regions,
            accounts: self.accounts.map(dedup),
            exclude_accounts: self.exclude_accounts.unwrap_or_default(),
            include_ous: self.include_ous.unwrap_or_default(),
            exclude_ous: self.exclude_ous.unwrap_or_default(),
            role,
            external_id: self.external_id,
            external_id_secret: self.external_id_secret,
            only_accounts: self.only_accounts.map(dedup),
            mode,
            admin_account: self.admin_account,
            lookback_secs: i64::from(numbers.lookback_days) * 86_400,
            overlap_secs: numbers.overlap_secs as i64,
            concurrency: self
                .concurrency
                .unwrap_or(NonZeroUsize::new(DEFAULT_CONCURRENCY).unwrap_or(NonZeroUsize::MIN)),
            dry_run: self.dry_run.unwrap_or(false),
            home_region: self.home_region,
            max_attempts: numbers.max_attempts,
            target_file_bytes: numbers.target_file_bytes,
            flush_bytes: numbers.flush_bytes,
            work_dir: self.work_dir.unwrap_or_else(std::env::temp_dir),
        })
    }

    /// Where the lake goes, and which regions are covered.
    fn places(&self) -> Result<(Output, Regions), ConfigError> {
        let output = parse_output(self.output.as_deref().unwrap_or(DEFAULT_OUTPUT))?;
        if self.sse_kms_key_id.is_some() && matches!(output, Output::Local(_)) {
            return Err(invalid(
                "sse_kms_key_id",
                "--sse-kms-key-id",
                "SSE-KMS applies to S3 output only",
                "set `output` to s3://bucket/prefix or drop the key",
            ));
        }
        let regions = match self.regions.clone() {
            None => Regions::Enabled,
            Some(list) if list.len() == 1 && list[0] == "enabled" => Regions::Enabled,
            Some(list) if list.is_empty() => {
                return Err(invalid(
                    "regions",
                    "--regions",
                    "the list is empty",
                    "name regions (e.g. us-east-1,eu-west-1) or use `enabled`",
                ))
            }
            Some(list) => {
                for region in &list {
                    if !is_region(region) {
                        return Err(invalid(
                            "regions",
                            "--regions",
                            format!("{region:?} is not a region name"),
                            "use names like us-east-1 or eu-west-1, or `enabled`",
                        ));
                    }
                }
                Regions::List(dedup(list))
            }
        };
        if let Some(region) = &self.home_region {
            if !is_region(region) {
                return Err(invalid(
                    "home_region",
                    "--home-region",
                    format!("{region:?} is not a region name"),
                    "use a name like us-east-1",
                ));
            }
        }
        Ok((output, regions))
    }

    /// Account ids, OU ids, and how the account filters combine.
    fn check_accounts(&self) -> Result<(), ConfigError> {
        for (key, flag, ids) in [
            (
                "accounts",
                "--accounts",
                self.accounts.as_deref().unwrap_or_default(),
            ),
            (
                "exclude_accounts",
                "--exclude-accounts",
                self.exclude_accounts.as_deref().unwrap_or_default(),
            ),
            (
                "admin_account",
                "--admin-account",
                self.admin_account.as_slice(),
            ),
        ] {
            if let Some(bad) = ids.iter().find(|id| !is_account_id(id)) {
                return Err(invalid(
                    key,
                    flag,
                    format!("{bad:?} is not an account id"),
                    "account ids are 12 digits, quoted in TOML so leading zeros stay",
                ));
            }
        }
        for (key, flag, ous) in [
            (
                "include_ous",
                "--include-ous",
                self.include_ous.as_deref().unwrap_or_default(),
            ),
            (
                "exclude_ous",
                "--exclude-ous",
                self.exclude_ous.as_deref().unwrap_or_default(),
            ),
        ] {
            if let Some(bad) = ous
                .iter()
                .find(|ou| !(ou.starts_with("ou-") || ou.starts_with("r-")))
            {
                return Err(invalid(
                    key,
                    flag,
                    format!("{bad:?} is not an OU or root id"),
                    "use ids like ou-ab12-cdef3456 or r-ab12",
                ));
            }
        }
        if self.accounts.is_some() && (self.include_ous.is_some() || self.exclude_ous.is_some()) {
            return Err(invalid(
                "accounts",
                "--accounts",
                "a static account list cannot be combined with OU filters",
                "drop `accounts` to discover accounts, or drop the OU filters",
            ));
        }
        if let Some(only) = &self.only_accounts {
            if let Some(bad) = only.iter().find(|a| !is_account_id(a)) {
                return Err(invalid(
                    "accounts",
                    "payload accounts",
                    format!("{bad:?} is not a 12-digit account id"),
                    "name accounts by their 12-digit ids",
                ));
            }
        }
        if self.mode.unwrap_or(Mode::Member) == Mode::Member && self.admin_account.is_some() {
            return Err(invalid(
                "admin_account",
                "--admin-account",
                "set in member mode",
                "use --mode delegated-admin with it, or drop it",
            ));
        }
        Ok(())
    }

    /// The external id, or the secret that holds it: one of them, well formed.
    fn check_secrets(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.external_id_secret {
            if self.external_id.is_some() {
                return Err(invalid(
                    "external_id_secret",
                    "--external-id-secret",
                    "both an external id and a secret holding it are set",
                    "set only one of them (the secret keeps the id out of the environment)",
                ));
            }
            if !is_secret_id(secret) {
                return Err(invalid(
                    "external_id_secret",
                    "--external-id-secret",
                    format!("{secret:?} is not a Secrets Manager secret ARN or name"),
                    "use arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-XXXXXX or the secret's name",
                ));
            }
        }
        if let Some(external_id) = &self.external_id {
            if !(2..=1224).contains(&external_id.len()) {
                return Err(invalid(
                    "external_id",
                    "--external-id",
                    "length must be 2 to 1224 characters",
                    "use the external id of the member role's trust policy",
                ));
            }
        }
        Ok(())
    }

    /// The numeric options, defaults applied, each inside its range.
    fn numbers(&self) -> Result<Numbers, ConfigError> {
        let lookback_days = self.lookback_days.unwrap_or(DEFAULT_LOOKBACK_DAYS);
        in_range(
            ("lookback_days", "--lookback-days"),
            lookback_days,
            1,
            MAX_LOOKBACK_DAYS,
            "GuardDuty keeps findings for 90 days; use 1 to 90",
        )?;
        let overlap_secs = self.overlap_secs.unwrap_or(DEFAULT_OVERLAP_SECS);
        in_range(
            ("overlap_secs", "--overlap-secs"),
            overlap_secs,
            0,
            86_400,
            "use 0 to 86400 seconds (at most a day)",
        )?;
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        in_range(
            ("max_attempts", "--max-attempts"),
            max_attempts,
            1,
            20,
            "use a value from 1 to 20",
        )?;
        let target_file_bytes = self.target_file_bytes.unwrap_or(DEFAULT_TARGET_FILE_BYTES);
        in_range(
            ("target_file_bytes", "--target-file-bytes"),
            target_file_bytes,
            1 << 20,
            u64::MAX,
            "Athena prefers files of 64-512 MiB; use at least 1048576",
        )?;
        let flush_bytes = self.flush_bytes.unwrap_or(DEFAULT_FLUSH_BYTES);
        in_range(
            ("flush_bytes", "--flush-bytes"),
            flush_bytes,
            MIN_FLUSH_BYTES,
            MAX_FLUSH_BYTES,
            "rows buffered before encoding; the default (16777216) keeps a run over millions of records under 256 MiB",
        )?;
        let lock_lease_secs = self.lock_lease_secs.unwrap_or(DEFAULT_LOCK_LEASE_SECS);
        in_range(
            ("lock_lease_secs", "--lock-lease-secs"),
            lock_lease_secs,
            1,
            86_400,
            "use a lease longer than a run's publish step, e.g. 900",
        )?;
        let lookup_pad_secs = self.lookup_pad_secs.unwrap_or(DEFAULT_LOOKUP_PAD_SECS);
        in_range(
            ("lookup_pad_secs", "--lookup-pad-secs"),
            lookup_pad_secs,
            0,
            86_400,
            "use 0 to 86400 seconds (at most a day)",
        )?;
        let (trail_shard_objects, canary_wait_secs) = self.batch_and_canary_numbers()?;
        Ok(Numbers {
            canary_wait_secs,
            trail_shard_objects,
            lookback_days,
            overlap_secs,
            max_attempts,
            target_file_bytes,
            flush_bytes,
            lock_lease_secs,
            lookup_pad_secs,
        })
    }

    /// `trail_shard_objects` and `canary_wait_secs`, defaults applied, each inside its range.
    fn batch_and_canary_numbers(&self) -> Result<(u64, u64), ConfigError> {
        let trail_shard_objects = self
            .trail_shard_objects
            .unwrap_or(DEFAULT_TRAIL_SHARD_OBJECTS);
        in_range(
            ("trail_shard_objects", "--trail-shard-objects"),
            trail_shard_objects,
            288,
            1_000_000,
            "a batch holds at least one log prefix's day (288 objects); use 288 to 1000000",
        )?;
        let canary_wait_secs = self.canary_wait_secs.unwrap_or(DEFAULT_CANARY_WAIT_SECS);
        in_range(
            ("canary_wait_secs", "--canary-wait-secs"),
            canary_wait_secs,
            0,
            604_800,
            "use 0 to 604800 seconds (a week); samples arrive within minutes",
        )?;
        Ok((trail_shard_objects, canary_wait_secs))
    }

    /// The watch-list (default [`DEFAULT_WATCHLIST`]): CloudTrail event names.
    fn watchlist(&self) -> Result<Vec<String>, ConfigError> {
        let watchlist = self
            .watchlist
            .clone()
            .unwrap_or_else(|| DEFAULT_WATCHLIST.iter().map(|s| (*s).to_owned()).collect());
        if let Some(bad) = watchlist
            .iter()
            .find(|name| name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(invalid(
                "watchlist",
                "--watchlist",
                format!("{bad:?} is not an event name"),
                "use CloudTrail event names such as StopLogging,CreateAccessKey",
            ));
        }
        Ok(watchlist)
    }

    /// The features coverage requires (default [`DEFAULT_REQUIRED_FEATURES`]): names of the
    /// service model's detector features.
    fn required_features(&self) -> Result<Vec<String>, ConfigError> {
        let known = aws_sdk_guardduty::types::DetectorFeatureResult::values();
        let names = self.required_features.clone().unwrap_or_else(|| {
            DEFAULT_REQUIRED_FEATURES
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        });
        if let Some(bad) = names.iter().find(|n| !known.contains(&n.as_str())) {
            return Err(invalid(
                "required_features",
                "--required-features",
                format!("{bad:?} is not a GuardDuty detector feature"),
                format!("use names from {}", known.join(", ")),
            ));
        }
        Ok(dedup(names))
    }

    /// The alert bus and rules (the default rules when only a bus is set); None when neither.
    fn alerts(&self) -> Result<Option<crate::alerts::AlertConfig>, ConfigError> {
        if let Some(bus) = &self.alerts_bus {
            if !is_bus(bus) {
                return Err(invalid(
                    "alerts_bus",
                    "--alerts-bus",
                    format!("{bus:?} is not an EventBridge bus name or ARN"),
                    "use a bus name (1-256 letters, digits, '.', '-', '_', '/') or arn:aws:events:REGION:ACCOUNT:event-bus/NAME",
                ));
            }
        }
        let rules = match (&self.alerts, &self.alerts_bus) {
            (None, None) => return Ok(None),
            (Some(rules), _) => rules.0.clone(),
            (None, Some(_)) => crate::alerts::rules::defaults(),
        };
        let rules = crate::alerts::rules::validate(&rules).map_err(|problem| {
            invalid(
                "alerts",
                "--alerts",
                problem,
                "see README \"Alerts\" for the rule keys and values",
            )
        })?;
        Ok(Some(crate::alerts::AlertConfig {
            bus: self.alerts_bus.clone(),
            rules,
        }))
    }

    /// The canary's finding type: `ThreatPurpose:ResourceTypeAffected/ThreatFamilyName…`.
    fn canary(&self) -> Result<String, ConfigError> {
        let name = self
            .canary_type
            .clone()
            .unwrap_or_else(|| DEFAULT_CANARY_TYPE.to_owned());
        let shaped = name.split_once(':').is_some_and(|(purpose, rest)| {
            !purpose.is_empty() && rest.contains('/') && !rest.starts_with('/')
        });
        if !shaped || name.len() > 128 || name.chars().any(char::is_whitespace) {
            return Err(invalid(
                "canary_type",
                "--canary-type",
                format!("{name:?} is not a GuardDuty finding type"),
                "use a type such as Recon:EC2/PortProbeUnprotectedPort",
            ));
        }
        Ok(name)
    }

    /// The CloudTrail mode and where an organization trail is read from.
    fn trail(&self) -> Result<(CloudTrailMode, Option<TrailSource>), ConfigError> {
        let cloudtrail = self.cloudtrail.unwrap_or(CloudTrailMode::Off);
        let trail = match (self.trail_bucket.clone(), self.trail_dir.clone()) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "trail_dir",
                    "--trail-dir",
                    "both a trail bucket and a trail directory are set",
                    "set only one of them",
                ))
            }
            (Some(bucket), None) => {
                if !is_bucket_name(&bucket) {
                    return Err(invalid(
                        "trail_bucket",
                        "--trail-bucket",
                        format!("{bucket:?} is not an S3 bucket name"),
                        "use the bucket's name alone (3-63 lowercase letters, digits, '-' or '.'); put a key prefix in --trail-prefix",
                    ));
                }
                let prefix = self.trail_prefix.clone().unwrap_or_default();
                let prefix = prefix.trim_matches('/');
                if !is_key_prefix(prefix) {
                    return Err(invalid(
                        "trail_prefix",
                        "--trail-prefix",
                        format!("{prefix:?} is not a usable key prefix"),
                        "use the trail's S3 key prefix: '/'-separated names without '.', '..', empty names or control characters",
                    ));
                }
                Some(TrailSource::S3 {
                    bucket,
                    prefix: prefix.to_owned(),
                })
            }
            (None, Some(dir)) => Some(TrailSource::Local(dir)),
            (None, None) => None,
        };
        if self.trail_keep == Some(TrailKeep::All) && cloudtrail != CloudTrailMode::OrgTrail {
            return Err(invalid(
                "trail_keep",
                "--trail-keep",
                "`all` applies to the organization trail's objects",
                "use --cloudtrail org-trail with it, or drop it",
            ));
        }
        if cloudtrail == CloudTrailMode::OrgTrail && trail.is_none() {
            return Err(invalid("trail_bucket", "--trail-bucket", "org-trail mode needs the trail's bucket", "name the bucket the organization trail delivers to (or a local copy with --trail-dir)"));
        }
        if let Some(org) = &self.trail_org_id {
            if !is_org_id(org) {
                return Err(invalid(
                    "trail_org_id",
                    "--trail-org-id",
                    format!("{org:?} is not an organization id"),
                    "use the o-… id in the trail's object keys",
                ));
            }
        }
        Ok((cloudtrail, trail))
    }
}

/// The member role: a name (default [`DEFAULT_ROLE_NAME`]) or an ARN template, not both.
fn role(template: Option<String>, name: Option<String>) -> Result<RoleSpec, ConfigError> {
    let role = match (template, name) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "role_arn_template",
                "--role-arn-template",
                "both a role name and a role ARN template are set",
                "set only one of them",
            ))
        }
        (Some(template), None) => {
            if !template.contains("{account_id}") || !template.starts_with("arn:") {
                return Err(invalid(
                    "role_arn_template",
                    "--role-arn-template",
                    format!("{template:?} has no {{account_id}} placeholder or is not an ARN"),
                    "use e.g. arn:aws:iam::{account_id}:role/GuardlakeReadOnly",
                ));
            }
            RoleSpec::ArnTemplate(template)
        }
        (None, name) => {
            let name = name.unwrap_or_else(|| DEFAULT_ROLE_NAME.to_owned());
            if !is_role_name(&name) {
                return Err(invalid(
                        "role_name",
                        "--role-name",
                        format!("{name:?} is not a role name"),
                        "use the role's name (1-64 letters, digits or +=,.@_-), or a role ARN template for a role with a path",
                    ));
            }
            RoleSpec::Name(name)
        }
    };
    Ok(role)
}

/// `value` inside `lo..=hi`, or an error naming the key, its flag and the range.
fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    (key, flag): (&'static str, &'static str),
    value: T,
    lo: T,
    hi: T,
    fix: &str,
) -> Result<T, ConfigError> {
    if value < lo || value > hi {
        let problem = if hi < value {
            format!("{value} is over {hi}")
        } else {
            format!("{value} is under {lo}")
        };
        return Err(invalid(key, flag, problem, fix));
    }
    Ok(value)
}

fn dedup(mut items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    items.retain(|item| seen.insert(item.clone()));
    items
}

/// The numeric options of a config, checked.
struct Numbers {
    lookback_days: u32,
    overlap_secs: u64,
    max_attempts: u32,
    target_file_bytes: u64,
    flush_bytes: u64,
    lock_lease_secs: u64,
    lookup_pad_secs: u64,
    trail_shard_objects: u64,
    canary_wait_secs: u64,
}

/// Rows buffered before they are sorted and encoded (`flush_bytes`): 16 MiB keeps a run over
/// millions of records under 256 MiB resident.
pub const DEFAULT_FLUSH_BYTES: u64 = 16 << 20;
pub const DEFAULT_OUTPUT: &str = "./lake";
pub const DEFAULT_ROLE_NAME: &str = "GuardlakeReadOnly";
pub const DEFAULT_LOOKBACK_DAYS: u32 = 30;
pub const DEFAULT_OVERLAP_SECS: u64 = 1800;
pub const DEFAULT_CONCURRENCY: usize = 8;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 6;
pub const DEFAULT_TARGET_FILE_BYTES: u64 = 128 << 20;
pub const DEFAULT_LOCK_LEASE_SECS: u64 = 900;
pub const DEFAULT_LOOKUP_PAD_SECS: u64 = 900;
pub const DEFAULT_TRAIL_SHARD_OBJECTS: u64 = 2000;
pub const DEFAULT_CANARY_TYPE: &str = "Recon:EC2/PortProbeUnprotectedPort";
pub const DEFAULT_CANARY_WAIT_SECS: u64 = 3600;
/// The features every detector must have on by default: the foundational sources GuardDuty
/// always analyzes and S3 Protection, on for every new detector.
pub const DEFAULT_REQUIRED_FEATURES: [&str; 4] =
    ["CLOUD_TRAIL", "DNS_LOGS", "FLOW_LOGS", "S3_DATA_EVENTS"];
pub const MIN_FLUSH_BYTES: u64 = 1 << 20;
pub const MAX_FLUSH_BYTES: u64 = 1 << 30;

/// An S3 bucket name: 3-63 lowercase letters, digits, '-' or '.', starting and ending with a
/// letter or digit.
pub fn is_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !name.contains("..")
}

/// A key prefix (without its surrounding '/'): names that are not empty, `.` or `..`, and no
/// control characters. Empty is the bucket's root.
pub fn is_key_prefix(prefix: &str) -> bool {
    prefix.is_empty()
        || prefix.len() <= 512
            && prefix
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..")
            && !prefix.chars().any(char::is_control)
}

/// A Secrets Manager secret ARN, or a secret name (1-512 of `[A-Za-z0-9/_+=.@-]`).
pub fn is_secret_id(id: &str) -> bool {
    let name_ok = |name: &str| {
        (1..=512).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c))
    };
    match id.strip_prefix("arn:") {
        Some(rest) => {
            let parts: Vec<&str> = rest.splitn(6, ':').collect();
            parts.len() == 6
                && parts[1] == "secretsmanager"
                && parts[4] == "secret"
                && parts[3].len() == 12
                && name_ok(parts[5])
        }
        None => name_ok(id),
    }
}

/// An IAM role name (`[\w+=,.@-]{1,64}`); a role with a path takes a role ARN template.
pub fn is_role_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
}

/// An organization id as AWS shapes it: `o-` and 10-32 lowercase letters or digits.
pub fn is_org_id(id: &str) -> bool {
    id.strip_prefix("o-").is_some_and(|rest| {
        (10..=32).contains(&rest.len())
            && rest
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    })
}

fn parse_output(uri: &str) -> Result<Output, ConfigError> {
    if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if !is_bucket_name(bucket) {
            return Err(invalid("output", "--output", format!("{bucket:?} is not an S3 bucket name"), "use s3://bucket/prefix with a bucket name of 3-63 lowercase letters, digits, '-' or '.'"));
        }
        let prefix = prefix.trim_matches('/');
        if !is_key_prefix(prefix) {
            return Err(invalid(
                "output",
                "--output",
                format!(
                    "{uri:?} has a prefix with '.', '..', an empty name or a control character"
                ),
                "use s3://bucket/prefix with '/'-separated names",
            ));
        }
        return Ok(Output::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        });
    }
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    if path.is_empty() || uri.contains("://") && !uri.starts_with("file://") {
        return Err(invalid(
            "output",
            "--output",
            format!("{uri:?} is not a supported location"),
            "use file://DIR, a directory path, or s3://bucket/prefix",
        ));
    }
    Ok(Output::Local(PathBuf::from(path)))
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `ap-southeast-4`…
pub fn is_region(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts
            .iter()
            .take(parts.len() - 1)
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts
            .last()
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// An EventBridge bus: a name (`[/.\-_A-Za-z0-9]{1,256}`) or an event-bus ARN.
pub fn is_bus(bus: &str) -> bool {
    if let Some(rest) = bus.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        return parts.len() == 5
            && parts[1] == "events"
            && parts[4].strip_prefix("event-bus/").is_some_and(is_bus_name);
    }
    is_bus_name(bus)
}

fn is_bus_name(name: &str) -> bool {
    (1..=256).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '-' | '_'))
}

/// A 12-digit AWS account id.
pub fn is_account_id(id: &str) -> bool {
    id.len() == 12 && id.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_states_the_defaults_a_run_uses() {
        let command = <Config as clap::Args>::augment_args(clap::Command::new("run"));
        let help = |id: &str| {
            command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default()
        };
        for (id, default) in [
            ("output", DEFAULT_OUTPUT.to_owned()),
            ("role_name", DEFAULT_ROLE_NAME.to_owned()),
            ("lookback_days", DEFAULT_LOOKBACK_DAYS.to_string()),
            ("overlap_secs", DEFAULT_OVERLAP_SECS.to_string()),
            ("concurrency", DEFAULT_CONCURRENCY.to_string()),
            ("max_attempts", DEFAULT_MAX_ATTEMPTS.to_string()),
            ("target_file_bytes", DEFAULT_TARGET_FILE_BYTES.to_string()),
            ("flush_bytes", DEFAULT_FLUSH_BYTES.to_string()),
            ("lock_lease_secs", DEFAULT_LOCK_LEASE_SECS.to_string()),
            ("lookup_pad_secs", DEFAULT_LOOKUP_PAD_SECS.to_string()),
            (
                "trail_shard_objects",
                DEFAULT_TRAIL_SHARD_OBJECTS.to_string(),
            ),
            ("canary_type", DEFAULT_CANARY_TYPE.to_owned()),
            ("canary_wait_secs", DEFAULT_CANARY_WAIT_SECS.to_string()),
        ] {
            let text = help(id);
            assert!(
                text.contains(&format!("[default: {default}]")),
                "--{id}: {text}"
            );
        }
        let validated = Config::default().validate().unwrap();
        assert_eq!(
            validated.lookback_secs,
            i64::from(DEFAULT_LOOKBACK_DAYS) * 86_400
        );
        assert_eq!(validated.concurrency.get(), DEFAULT_CONCURRENCY);
        assert_eq!(validated.lock_lease_secs, DEFAULT_LOCK_LEASE_SECS);
    }

    fn error_of(config: Config) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_validate() {
        let config = Config::default().validate().unwrap();
        assert_eq!(config.output, Output::Local(PathBuf::from("./lake")));
        assert_eq!(config.regions, Regions::Enabled);
        assert_eq!(config.role, RoleSpec::Name("GuardlakeReadOnly".into()));
        assert_eq!(config.lookback_secs, 30 * 86_400);
    }

    #[test]
    fn bad_values_name_the_key_and_flag() {
        let lookback = error_of(Config {
            lookback_days: Some(91),
            ..Config::default()
        });
        assert!(
            lookback.contains("lookback_days")
                && lookback.contains("--lookback-days")
                && lookback.contains("91"),
            "{lookback}"
        );
        let region = error_of(Config {
            regions: Some(vec!["us-east-1".into(), "moon-1".into()]),
            ..Config::default()
        });
        assert!(
            region.contains("`regions`") && region.contains("moon-1"),
            "{region}"
        );
        let account = error_of(Config {
            accounts: Some(vec!["12345".into()]),
            ..Config::default()
        });
        assert!(
            account.contains("`accounts`") && account.contains("12 digits"),
            "{account}"
        );
        let template = error_of(Config {
            role_arn_template: Some("arn:aws:iam::1:role/x".into()),
            ..Config::default()
        });
        assert!(template.contains("{account_id}"), "{template}");
        let output = error_of(Config {
            output: Some("gs://bucket".into()),
            ..Config::default()
        });
        assert!(output.contains("`output`"), "{output}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let dir = std::env::temp_dir().join(format!("guardlake-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "regions = [\"us-east-1\"]\nlookback_dayz = 3\n").unwrap();
        let message = Config::from_file(&path).unwrap_err().to_string();
        assert!(message.contains("lookback_dayz"), "{message}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn flags_override_the_file() {
        let file = Config {
            lookback_days: Some(5),
            regions: Some(vec!["eu-west-1".into()]),
            ..Config::default()
        };
        let flags = Config {
            lookback_days: Some(7),
            ..Config::default()
        };
        let merged = file.overridden_by(flags).validate().unwrap();
        assert_eq!(merged.lookback_secs, 7 * 86_400);
        assert_eq!(merged.regions, Regions::List(vec!["eu-west-1".into()]));
    }

    #[test]
    fn outputs_and_roles_parse() {
        assert_eq!(
            parse_output("s3://lake-bucket/guardlake/").unwrap(),
            Output::S3 {
                bucket: "lake-bucket".into(),
                prefix: "guardlake".into()
            }
        );
        assert_eq!(
            parse_output("file:///tmp/x").unwrap(),
            Output::Local(PathBuf::from("/tmp/x"))
        );
        assert_eq!(
            RoleSpec::Name("R".into()).arn("aws", "012345678901"),
            "arn:aws:iam::012345678901:role/R"
        );
        assert!(is_region("us-gov-west-1") && is_region("ap-southeast-4") && !is_region("useast1"));
    }
}
