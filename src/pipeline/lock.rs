//! A lake's lifecycle around a run or a compaction: open the store, refuse what is not a lake,
//! take the lock, finish what an interrupted run committed, keep the lock alive, release it.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{Run, RunOptions};
use crate::aws::Aws;
use crate::config::{ConfigError, Output, ValidatedConfig};
use crate::error::RunError;
use crate::sink::store::Store;
use crate::state::journal;
use crate::state::lock::{LockError, RunLock};
use crate::state::{crash_point, CrashPoint};
use crate::table::{Table, QUARANTINE_DIR, STAGING_DIR, STATE_DIR};

use super::workdir::WorkDir;

impl From<LockError> for RunError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Store(e) => e.into(),
            other => RunError::Locked(other.to_string()),
        }
    }
}

/// The lake's store; `s3` makes the client when the output is a bucket (a local lake needs no
/// AWS at all).
pub async fn open_store<F>(config: &ValidatedConfig, s3: impl FnOnce() -> F) -> Store
where
    F: std::future::Future<Output = aws_sdk_s3::Client>,
{
    match &config.output {
        Output::Local(root) => Store::Local { root: root.clone() },
        Output::S3 { bucket, prefix } => Store::S3 {
            client: s3().await,
            bucket: bucket.clone(),
            prefix: prefix.clone(),
            sse_kms_key_id: config.sse_kms_key_id.clone(),
            part_bytes: crate::sink::store::MULTIPART_PART_BYTES,
        },
    }
}

/// What a run, a plan, a shard or a commit opens: AWS, the lake, a scratch directory.
pub struct Opened {
    pub aws: Aws,
    pub store: Arc<Store>,
    pub work_dir: WorkDir,
}

/// Loads AWS (credentials, home account) and opens the lake and a scratch directory named `id`.
pub async fn open(
    config: &ValidatedConfig,
    options: &RunOptions,
    id: &str,
) -> Result<Opened, RunError> {
    let aws = Aws::load(config, id, options.s3_path_style)
        .await
        .map_err(RunError::Discovery)?;
    let store = Arc::new(open_store(config, || async { aws.s3() }).await);
    let work_dir = WorkDir::create(config, id)?;
    Ok(Opened {
        aws,
        store,
        work_dir,
    })
}

impl Opened {
    /// The context of run `run_id` (started at `run_start_ms`) over what is open; its files are
    /// named after `stem`.
    pub fn run<'a>(
        &'a self,
        config: &'a ValidatedConfig,
        options: &'a RunOptions,
        (run_id, run_start_ms): (&'a str, i64),
        stem: &'a str,
    ) -> Run<'a> {
        Run {
            config,
            options,
            aws: &self.aws,
            store: &self.store,
            run_id,
            run_start_ms,
            work_dir: &self.work_dir.path,
            stem,
        }
    }
}

/// Refuses an output that holds something else: recovery deletes staging no journal names,
/// so a directory or prefix with files of its own must never be taken for a lake. New, empty
/// and existing lakes (`_state` or `runs` at the top) are fine.
pub async fn check_is_lake(store: &Store) -> Result<(), RunError> {
    let names = store.list_children("").await?;
    let ours = |n: &str| {
        Table::from_name(n).is_some() || [STATE_DIR, STAGING_DIR, QUARANTINE_DIR].contains(&n)
    };
    let is_lake = names
        .iter()
        .any(|n| n == STATE_DIR || n == Table::Runs.name());
    let foreign: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !ours(n))
        .collect();
    if names.is_empty() || (is_lake && foreign.is_empty()) {
        return Ok(());
    }
    let found = if foreign.is_empty() {
        names.iter().map(String::as_str).collect::<Vec<_>>()
    } else {
        foreign
    };
    let shown: Vec<&str> = found.iter().take(5).copied().collect();
    Err(RunError::Config(ConfigError::Invalid {
        key: "output",
        flag: "--output",
        problem: format!(
            "{} is not empty and is not a guardlake lake (it holds {})",
            store.uri(""),
            shown.join(", ")
        ),
        fix: "point --output at a new or empty directory or prefix, or at an existing lake".into(),
    }))
}

/// Takes the run lock and finishes whatever an interrupted run committed.
pub async fn lock_and_recover(
    store: &Arc<Store>,
    run_id: &str,
    lease_secs: u64,
) -> Result<Arc<RunLock>, RunError> {
    check_is_lake(store).await?;
    let lock = RunLock::acquire(store, run_id, Duration::from_secs(lease_secs)).await?;
    crash_point(CrashPoint::AfterLock);
    let recovery = match journal::recover(store).await {
        Ok(recovery) => recovery,
        Err(e) => {
            // A run that cannot recover must not leave the lake locked for a whole lease.
            if let Err(release) = lock.release(store).await {
                warn!(error = %release, "Could not release the run lock; it expires with its lease.");
            }
            return Err(RunError::Publish(format!(
                "recovering an interrupted run: {e}"
            )));
        }
    };
    if recovery.rolled_forward + recovery.discarded_runs > 0 {
        info!(
            rolled_forward = recovery.rolled_forward,
            discarded_runs = recovery.discarded_runs,
            "Recovered from an interrupted run."
        );
    }
    crash_point(CrashPoint::AfterRecovery);
    Ok(lock)
}

/// Runs `body` under the lake's lock: takes it and finishes what an interrupted run committed,
/// keeps it alive, and releases it whatever `body` returns (a release that fails is logged; the
/// lock then expires with its lease). `run` and `compact` both go through here.
pub async fn with_lock<T, F, Fut>(
    store: &Arc<Store>,
    run_id: &str,
    lease_secs: u64,
    body: F,
) -> Result<T, RunError>
where
    F: FnOnce(Arc<RunLock>) -> Fut,
    Fut: std::future::Future<Output = Result<T, RunError>>,
{
    let lock = lock_and_recover(store, run_id, lease_secs).await?;
    let keep_alive = lock.keep_alive(store.clone());
    let result = body(lock.clone()).await;
    keep_alive.abort();
    crash_point(CrashPoint::BeforeLockRelease);
    if let Err(e) = lock.release(store).await {
        warn!(error = %e, "Could not release the run lock; it expires with its lease.");
    }
    result
}
