//! A run split across processes (AWS Step Functions Distributed Map, or any scheduler):
//! `plan` takes the lake's lock and writes one small shard file per unit of work; `shard`
//! collects one shard and stages its files with a done marker, never publishing; `commit`
//! takes exactly one finished attempt per shard and publishes everything through one journal,
//! the same exactly-once protocol as a single-process run. The run id is the fencing token: a
//! shard or commit whose run no longer holds the lock does nothing.
//!
//! Layout: `_state/plans/<run_id>/plan.json` and `shards/NNNNN.json`; a shard's attempt stages
//! under `_staging/<run_id>/shards/NNNNN/<attempt>/`, its `done.json` written last.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::config::{CloudTrailMode, Mode, ValidatedConfig};
use crate::discover::Skipped;
use crate::error::{RunError, TargetFailure, TargetStatus};
use crate::pipeline::batch::{self, Batch};
use crate::pipeline::findings::{self, Chain};
use crate::pipeline::lock::{lock_and_recover, open, Opened};
use crate::pipeline::publish::Publish;
use crate::pipeline::{drift, Run, RunOptions};
use crate::report::{self, TargetOutcome, Totals};
use crate::sink::store::Store;
use crate::state::lock::{LockError, RunLock};
use crate::table::SourceName;

/// The plan of a distributed run: what every shard and the commit share.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub run_id: String,
    /// The end of every window (the run's start), the same in every shard.
    pub run_start_ms: i64,
    pub mode: Mode,
    pub shards: u32,
    /// Every account of the organization (a finding of one seen through another's detector
    /// is passed over, not quarantined).
    pub known_accounts: Vec<String>,
    pub skipped: Vec<Skipped>,
    /// Targets that failed while planning (region discovery).
    pub failed: Vec<TargetOutcome>,
}

/// One chain of a shard file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSpec {
    pub account_id: String,
    pub region: String,
    /// Delegated-admin mode: the member accounts the chain covers.
    pub members: Option<Vec<String>>,
}

/// One unit of work: in member mode one account with its regions (one AssumeRole per account),
/// in delegated-admin mode one region.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardFile {
    pub shard: u32,
    pub chains: Vec<ChainSpec>,
}

/// A finished attempt of a shard, written last: its staged files, outcomes, proposed
/// checkpoints and drift.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Done {
    pub shard: u32,
    pub attempt: String,
    /// (staged key, lake key) of every file.
    pub staged: Vec<(String, String)>,
    pub bytes: u64,
    pub batch: Batch,
}

impl Done {
    /// What a shard step reports: its attempt, files, and how many of its targets failed.
    pub fn summary(&self, run_id: &str) -> serde_json::Value {
        let failed = self
            .batch
            .outcomes
            .iter()
            .filter(|o| o.failure.is_some())
            .count();
        serde_json::json!({
            "run_id": run_id,
            "shard": self.shard,
            "attempt": self.attempt,
            "files": self.staged.len(),
            "targets": self.batch.outcomes.len(),
            "targets_failed": failed,
        })
    }
}

/// What `plan` prints (and returns to Step Functions): where the shard files are.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct PlanSummary {
    pub run_id: String,
    pub shards: u32,
    pub targets: usize,
    /// The bucket and key prefix of the shard files (a Distributed Map's ItemReader lists
    /// them); for a local lake, the bucket is empty and the prefix is a path.
    pub bucket: String,
    pub prefix: String,
}

fn plan_key(run_id: &str) -> String {
    format!("_state/plans/{run_id}/plan.json")
}

fn shards_prefix(run_id: &str) -> String {
    format!("_state/plans/{run_id}/shards/")
}

fn shard_key(run_id: &str, shard: u32) -> String {
    format!("{}{shard:05}.json", shards_prefix(run_id))
}

fn attempts_prefix(run_id: &str) -> String {
    format!("_staging/{run_id}/shards/")
}

fn attempt_prefix(run_id: &str, shard: u32, attempt: &str) -> String {
    format!("{}{shard:05}/{attempt}/", attempts_prefix(run_id))
}

/// The chains of a run, grouped into shards: one account each in member mode, one region each
/// in delegated-admin mode. CloudTrail state is per account, so delegated-admin mode with
/// CloudTrail on keeps one shard (every region's chains read the same accounts).
pub fn group(chains: Vec<Chain>, mode: Mode, cloudtrail: CloudTrailMode) -> Vec<Vec<Chain>> {
    let mut groups: BTreeMap<String, Vec<Chain>> = BTreeMap::new();
    for chain in chains {
        let key = match (mode, cloudtrail) {
            (Mode::Member, _) => chain.account_id.clone(),
            (Mode::DelegatedAdmin, CloudTrailMode::Off) => chain.region.clone(),
            (Mode::DelegatedAdmin, _) => String::new(),
        };
        groups.entry(key).or_default().push(chain);
    }
    groups.into_values().collect()
}

fn spec(chain: &Chain) -> ChainSpec {
    ChainSpec {
        account_id: chain.account_id.clone(),
        region: chain.region.clone(),
        members: chain.members.as_ref().map(|m| {
            let mut list: Vec<String> = m.iter().cloned().collect();
            list.sort();
            list
        }),
    }
}

fn chain(spec: ChainSpec) -> Chain {
    Chain {
        account_id: spec.account_id,
        region: spec.region,
        members: spec.members.map(|m| Arc::new(m.into_iter().collect())),
    }
}

/// Reads a JSON object of the lake (bounded; a missing one is `what`'s absence).
async fn read_json<T: serde::de::DeserializeOwned>(
    store: &Store,
    key: &str,
    what: &str,
) -> Result<T, RunError> {
    // `get` refuses objects over MAX_GET_BYTES.
    let bytes = store
        .get(key)
        .await?
        .ok_or_else(|| RunError::Publish(format!("{what} {} does not exist", store.uri(key))))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| RunError::Publish(format!("{what} {} is not valid: {e}", store.uri(key))))
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, RunError> {
    serde_json::to_vec(value).map_err(|e| RunError::Encode(e.to_string()))
}

/// `guardlake plan`: takes the lock (held until `commit` releases it, or its lease ends),
/// recovers, discovers, and writes the shard files and then the plan.
pub async fn plan(config: ValidatedConfig, options: RunOptions) -> Result<PlanSummary, RunError> {
    let run_id = uuid::Uuid::now_v7().to_string();
    let run_start_ms = now_ms();
    let open = open(&config, &options, &run_id).await?;
    let lock = lock_and_recover(&open.store, &run_id, config.lock_lease_secs).await?;
    let run = open.run(&config, &options, (&run_id, run_start_ms), &run_id);
    let written = write_plan(&run).await;
    if written.is_err() {
        if let Err(e) = lock.release(&open.store).await {
            warn!(error = %e, "Could not release the run lock; it expires with its lease.");
        }
    }
    written
}

async fn write_plan(run: &Run<'_>) -> Result<PlanSummary, RunError> {
    let accounts = crate::run::accounts(run).await?;
    let (chains, failed) = findings::targets(run, &accounts.active).await;
    let targets = chains.len();
    let groups = group(chains, run.mode(), run.config.cloudtrail);
    for (n, chains) in groups.iter().enumerate() {
        let file = ShardFile {
            shard: n as u32,
            chains: chains.iter().map(spec).collect(),
        };
        run.store
            .put(&shard_key(run.run_id, n as u32), to_json(&file)?)
            .await?;
    }
    let plan = Plan {
        run_id: run.run_id.to_owned(),
        run_start_ms: run.run_start_ms,
        mode: run.mode(),
        shards: groups.len() as u32,
        known_accounts: crate::run::known_accounts(&accounts).into_iter().collect(),
        skipped: accounts.skipped,
        failed,
    };
    run.store
        .put(&plan_key(run.run_id), to_json(&plan)?)
        .await?;
    let (bucket, prefix) = match run.store.as_ref() {
        Store::S3 { bucket, prefix, .. } => {
            (bucket.clone(), join(prefix, &shards_prefix(run.run_id)))
        }
        Store::Local { .. } => (String::new(), run.store.uri(&shards_prefix(run.run_id))),
    };
    info!(shards = plan.shards, targets, "Planned a distributed run.");
    Ok(PlanSummary {
        run_id: plan.run_id,
        shards: plan.shards,
        targets,
        bucket,
        prefix,
    })
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{}/{key}", prefix.trim_end_matches('/'))
    }
}

/// `guardlake shard`: collects one shard of run `run_id` and stages an attempt; publishes
/// nothing. Refused when the lock no longer names the run.
pub async fn shard(
    config: ValidatedConfig,
    options: RunOptions,
    run_id: &str,
    shard: u32,
) -> Result<Done, RunError> {
    let attempt = uuid::Uuid::now_v7().to_string();
    let open = open(&config, &options, &attempt).await?;
    RunLock::holder(&open.store, run_id)
        .await
        .map_err(|e| fenced(e, run_id))?;
    let plan: Plan = read_json(&open.store, &plan_key(run_id), "plan").await?;
    let file: ShardFile = read_json(&open.store, &shard_key(run_id, shard), "shard file").await?;
    let stem = format!("{run_id}-s{shard:05}");
    let run = open.run(&config, &options, (run_id, plan.run_start_ms), &stem);
    let known: HashSet<String> = plan.known_accounts.into_iter().collect();
    let mut batch =
        batch::collect(&run, known, file.chains.into_iter().map(chain).collect()).await?;
    let prefix = attempt_prefix(run_id, shard, &attempt);
    let mut done = Done {
        shard,
        attempt,
        staged: Vec::new(),
        bytes: 0,
        batch: Batch::default(),
    };
    for (path, key) in std::mem::take(&mut batch.files) {
        let staged = format!("{prefix}{key}");
        done.bytes += open.store.create_from_file(&path, &staged).await?;
        done.staged.push((staged, key));
    }
    done.batch = batch;
    open.store
        .put_if(&format!("{prefix}done.json"), to_json(&done)?, None)
        .await?;
    info!(shard, attempt = %done.attempt, files = done.staged.len(), "Shard staged.");
    Ok(done)
}

/// Deletes a committed run's plan (best effort: a plan left behind is only clutter).
async fn remove_plan(store: &Store, run_id: &str) {
    let Ok(keys) = store.list(&format!("_state/plans/{run_id}/")).await else {
        return;
    };
    for (key, _) in keys {
        if let Err(e) = store.delete(&key).await {
            warn!(error = %e, "Could not delete a committed run's plan file.");
        }
    }
}

/// A lock that no longer names the run stops the step; a store error reading it is that error.
fn fenced(e: LockError, run_id: &str) -> RunError {
    match e {
        LockError::Store(e) => e.into(),
        _ => lock_lost(run_id),
    }
}

fn lock_lost(run_id: &str) -> RunError {
    RunError::Locked(format!("the lake's lock no longer names run {run_id} (it ended, or another run took it over); nothing done"))
}

/// The first finished attempt of each shard, by attempt id (ids sort by time).
async fn finished(store: &Store, run_id: &str) -> Result<BTreeMap<u32, String>, RunError> {
    let mut found: BTreeMap<u32, String> = BTreeMap::new();
    for (key, _) in store.list(&attempts_prefix(run_id)).await? {
        let rest = key
            .strip_prefix(&attempts_prefix(run_id))
            .unwrap_or_default();
        let mut parts = rest.split('/');
        let (Some(shard), Some(_attempt), Some("done.json"), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(shard) = shard.parse::<u32>() else {
            continue;
        };
        let first = found.entry(shard).or_insert_with(|| key.clone());
        if key < *first {
            *first = key;
        }
    }
    Ok(found)
}

/// `runs` rows of a shard that never finished: its targets fail as `ShardFailed`, their
/// checkpoints stay, so the next run collects them.
fn shard_failed(file: ShardFile, plan: &Plan, cloudtrail: bool) -> Vec<TargetOutcome> {
    let failure = TargetFailure::new(
        TargetStatus::Error,
        "ShardFailed",
        format!(
            "shard {:05} of run {} never finished; its targets are collected by the next run",
            file.shard, plan.run_id
        ),
    );
    let chains: Vec<Chain> = file.chains.into_iter().map(chain).collect();
    let mut sources = vec![SourceName::GuardDuty];
    if cloudtrail {
        sources.push(SourceName::CloudTrail);
    }
    let mut outcomes = Vec::new();
    for (account, regions) in findings::covered(&chains) {
        for region in regions {
            for source in &sources {
                outcomes.push(TargetOutcome::failed(
                    &account,
                    &region,
                    *source,
                    plan.mode,
                    failure.clone(),
                    plan.run_start_ms,
                ));
            }
        }
    }
    outcomes
}

/// `guardlake commit`: publishes one finished attempt of every shard, and `ShardFailed` for
/// the shards that have none, then releases the lock.
pub async fn commit(
    config: ValidatedConfig,
    options: RunOptions,
    run_id: &str,
) -> Result<crate::run::RunResult, RunError> {
    let started = Instant::now();
    let open = open(&config, &options, run_id).await?;
    let lease = Duration::from_secs(config.lock_lease_secs);
    let lock = RunLock::resume(&open.store, run_id, lease)
        .await
        .map_err(|e| fenced(e, run_id))?;
    let keep_alive = lock.keep_alive(open.store.clone());
    let result = publish_shards(&config, &options, &open, &lock, run_id, started).await;
    keep_alive.abort();
    if result.is_ok() || matches!(result, Err(RunError::Deferred(_))) {
        remove_plan(&open.store, run_id).await;
    }
    if let Err(e) = lock.release(&open.store).await {
        warn!(error = %e, "Could not release the run lock; it expires with its lease.");
    }
    result
}

async fn publish_shards(
    config: &ValidatedConfig,
    options: &RunOptions,
    open: &Opened,
    lock: &RunLock,
    run_id: &str,
    started: Instant,
) -> Result<crate::run::RunResult, RunError> {
    let plan: Plan = read_json(&open.store, &plan_key(run_id), "plan").await?;
    let finished = finished(&open.store, run_id).await?;
    let mut publish = Publish::new(run_id);
    publish.outcomes(plan.failed.clone());
    let mut drift_log = crate::normalize::drift::DriftLog::default();
    let mut duplicates = 0;
    for shard in 0..plan.shards {
        match finished.get(&shard) {
            Some(key) => {
                let done: Done = read_json(&open.store, key, "done marker").await?;
                publish
                    .staged(done.staged, done.bytes)
                    .outcomes(done.batch.outcomes)
                    .checkpoints(done.batch.checkpoints);
                drift_log.merge(done.batch.drift);
                duplicates += done.batch.duplicates;
            }
            None => {
                warn!(
                    shard,
                    "A shard never finished; its targets fail as ShardFailed."
                );
                let file: ShardFile =
                    read_json(&open.store, &shard_key(run_id, shard), "shard file").await?;
                publish.outcomes(shard_failed(
                    file,
                    &plan,
                    config.cloudtrail != CloudTrailMode::Off,
                ));
            }
        }
    }
    let run = open.run(config, options, (run_id, plan.run_start_ms), run_id);
    let drift = drift::report(&run, drift_log).await?;
    publish.files(drift.file).checkpoints(drift.checkpoint);
    let (outcomes, committed) = publish
        .commit(&open.store, Some(lock), run.work_dir, run.run_start_ms)
        .await?;
    let totals = Totals {
        files: committed.files,
        bytes: committed.bytes,
        duplicates_skipped: duplicates,
        lake: open.store.uri(""),
        drift_new: drift.new,
        drift_types: drift.types,
        peak_rss_bytes: report::peak_rss_bytes(),
    };
    crate::run::summarize(&run, &outcomes, &plan.skipped, &totals, started);
    Ok(crate::run::RunResult {
        outcomes,
        published: true,
    })
}
