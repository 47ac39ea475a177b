//! A run split across processes (AWS Step Functions Distributed Map, or any scheduler):
//! `plan` takes the lake's lock and writes one small shard file per unit of work; `shard`
//! collects one shard and stages its files with a done marker, never publishing; `commit`
//! takes exactly one finished attempt per shard and publishes everything through one journal,
//! the same exactly-once protocol as a single-process run. The run id is the fencing token: a
//! shard or commit whose run no longer holds the lock does nothing.
//!
//! When CloudTrail has its own phase ([`trail::separate`]), `plan-trail` runs after the
//! findings shards and writes CloudTrail batches that are collected the same way ([`trail`]).
//!
//! Layout: `_state/plans/<run_id>/plan.json` and `shards/NNNNN.json`; a shard's attempt stages
//! under `_staging/<run_id>/shards/NNNNN/<attempt>/`, its `done.json` written last.

pub mod trail;

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
    /// Whether CloudTrail is collected in its own phase, after the findings shards.
    pub trail_phase: bool,
    /// What the organization says of each account (the coverage table's context).
    #[serde(default)]
    pub facts: BTreeMap<String, crate::discover::AccountFacts>,
}

/// One chain of a shard file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSpec {
    pub account_id: String,
    pub region: String,
    /// Delegated-admin mode: the member accounts the chain covers.
    pub members: Option<Vec<String>>,
    /// Where the chain's updatedAt window starts, as planned (for people and logs: the shard
    /// reads the checkpoint again under the same lock); absent when it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<String>,
}

/// One unit of work: in member mode one account with its regions (one AssumeRole per account),
/// in delegated-admin mode one region; or a batch of the CloudTrail phase.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardFile {
    pub shard: u32,
    pub chains: Vec<ChainSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trail: Option<trail::TrailBatch>,
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
    /// The findings windows (`plan` only; each chain's is in its shard file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<Windows>,
}

/// The span of a plan's updatedAt windows: every window ends at the run's start.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Windows {
    pub end: String,
    pub earliest_start: Option<String>,
    pub latest_start: Option<String>,
    /// Chains without a checkpoint, which read the lookback.
    pub first_runs: usize,
    /// Chains whose checkpoint could not be read (their shard fails them, classified).
    pub unreadable: usize,
}

pub(crate) fn plan_key(run_id: &str) -> String {
    format!("_state/plans/{run_id}/plan.json")
}

fn shards_prefix(run_id: &str) -> String {
    format!("_state/plans/{run_id}/shards/")
}

pub(crate) fn shard_key(run_id: &str, shard: u32) -> String {
    format!("{}{shard:05}.json", shards_prefix(run_id))
}

fn attempts_prefix(run_id: &str) -> String {
    format!("_staging/{run_id}/shards/")
}

fn attempt_prefix(run_id: &str, shard: u32, attempt: &str) -> String {
    format!("{}{shard:05}/{attempt}/", attempts_prefix(run_id))
}

/// The chains of a run, grouped into shards: one account each in member mode, one region each
/// in delegated-admin mode.
pub fn group(chains: Vec<Chain>, mode: Mode) -> Vec<Vec<Chain>> {
    let mut groups: BTreeMap<String, Vec<Chain>> = BTreeMap::new();
    for chain in chains {
        let key = match mode {
            Mode::Member => chain.account_id.clone(),
            Mode::DelegatedAdmin => chain.region.clone(),
        };
        groups.entry(key).or_default().push(chain);
    }
    groups.into_values().collect()
}

fn spec(chain: &Chain, window_start_ms: Option<i64>) -> ChainSpec {
    ChainSpec {
        window_start: window_start_ms.map(crate::clock::iso),
        account_id: chain.account_id.clone(),
        region: chain.region.clone(),
        members: chain.members.as_ref().map(|m| {
            let mut list: Vec<String> = m.iter().cloned().collect();
            list.sort();
            list
        }),
    }
}

pub(crate) fn chain(spec: ChainSpec) -> Chain {
    Chain {
        account_id: spec.account_id,
        region: spec.region,
        members: spec.members.map(|m| Arc::new(m.into_iter().collect())),
    }
}

/// Reads a JSON object of the lake (bounded; a missing one is `what`'s absence).
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
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

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, RunError> {
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
    let starts = window_starts(run, &chains).await;
    let windows = Windows {
        end: crate::clock::iso(run.run_start_ms),
        earliest_start: starts
            .values()
            .flatten()
            .map(|w| w.0)
            .min()
            .map(crate::clock::iso),
        latest_start: starts
            .values()
            .flatten()
            .map(|w| w.0)
            .max()
            .map(crate::clock::iso),
        first_runs: starts.values().flatten().filter(|w| w.1).count(),
        unreadable: starts.values().filter(|w| w.is_none()).count(),
    };
    let groups = group(chains, run.mode());
    for (n, chains) in groups.iter().enumerate() {
        let specs = chains.iter().map(|c| {
            let start = starts
                .get(&(c.account_id.clone(), c.region.clone()))
                .copied()
                .flatten();
            spec(c, start.map(|w| w.0))
        });
        let file = ShardFile {
            shard: n as u32,
            chains: specs.collect(),
            trail: None,
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
        trail_phase: trail::separate(run.mode(), run.config.cloudtrail),
        facts: accounts.facts,
    };
    run.store
        .put(&plan_key(run.run_id), to_json(&plan)?)
        .await?;
    info!(
        shards = plan.shards,
        targets,
        first_runs = windows.first_runs,
        "Planned a distributed run."
    );
    let mut summary = summary(
        run.store,
        run.run_id,
        &shards_prefix(run.run_id),
        plan.shards,
        targets,
    );
    summary.windows = Some(windows);
    Ok(summary)
}

/// Each chain's window start and whether it is a first run (None: its checkpoint could not be
/// read), read at the run's concurrency.
async fn window_starts(
    run: &Run<'_>,
    chains: &[Chain],
) -> BTreeMap<(String, String), Option<(i64, bool)>> {
    use futures::StreamExt;
    futures::stream::iter(chains)
        .map(|chain| async move {
            let planned = findings::planned_window(run, chain).await.ok();
            let key = (chain.account_id.clone(), chain.region.clone());
            (key, planned.map(|(w, first)| (w.start_ms, first)))
        })
        .buffer_unordered(run.config.concurrency.get() * 4)
        .collect()
        .await
}

/// Where a step's shard files are, as a Distributed Map's ItemReader lists them.
fn summary(
    store: &Store,
    run_id: &str,
    shards_prefix: &str,
    shards: u32,
    targets: usize,
) -> PlanSummary {
    let (bucket, prefix) = match store {
        Store::S3 { bucket, prefix, .. } => (bucket.clone(), join(prefix, shards_prefix)),
        Store::Local { .. } => (String::new(), store.uri(shards_prefix)),
    };
    PlanSummary {
        run_id: run_id.to_owned(),
        shards,
        targets,
        bucket,
        prefix,
        windows: None,
    }
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
    let key = match shard < plan.shards {
        true => shard_key(run_id, shard),
        false => trail::batch_key(run_id, shard),
    };
    let file: ShardFile = read_json(&open.store, &key, "shard file").await?;
    let stem = format!("{run_id}-s{shard:05}");
    let mut batch = match file.trail {
        None => {
            let run = open.run(&config, &options, (run_id, plan.run_start_ms), &stem);
            let known: HashSet<String> = plan.known_accounts.into_iter().collect();
            let chains = file.chains.into_iter().map(chain).collect();
            let events = match plan.trail_phase {
                true => batch::Events::Later,
                false => batch::Events::Here,
            };
            batch::collect(&run, known, chains, events).await?
        }
        Some(work) => {
            let trail = trail::find(&open.store, run_id).await?.ok_or_else(|| {
                RunError::Publish(format!(
                    "run {run_id} has no trail plan; `guardlake plan-trail` writes it"
                ))
            })?;
            // Every batch names the trail's keys with the organization id the plan resolved.
            let mut config = config.clone();
            config.trail_org_id = trail.org_id.clone().or(config.trail_org_id);
            let run = open.run(&config, &options, (run_id, plan.run_start_ms), &stem);
            trail::collect(&run, &trail, work).await?
        }
    };
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
pub(crate) fn fenced(e: LockError, run_id: &str) -> RunError {
    match e {
        LockError::Store(e) => e.into(),
        _ => lock_lost(run_id),
    }
}

fn lock_lost(run_id: &str) -> RunError {
    RunError::Locked(format!("the lake's lock no longer names run {run_id} (it ended, or another run took it over); nothing done"))
}

/// The first finished attempt of each shard, by attempt id (ids sort by time).
pub(crate) async fn finished(
    store: &Store,
    run_id: &str,
) -> Result<BTreeMap<u32, String>, RunError> {
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

/// Every findings shard's finished attempt into `publish` (a shard that never finished: its
/// targets fail as ShardFailed); returns what the coverage, drift and alerts are made of.
async fn gather_shards(
    config: &ValidatedConfig,
    open: &Opened,
    plan: &Plan,
    finished: &BTreeMap<u32, String>,
    publish: &mut Publish,
) -> Result<crate::pipeline::batch::Batch, RunError> {
    let mut gathered = crate::pipeline::batch::Batch::default();
    for shard in 0..plan.shards {
        match finished.get(&shard) {
            Some(key) => {
                let done: Done = read_json(&open.store, key, "done marker").await?;
                publish
                    .staged(done.staged, done.bytes)
                    .outcomes(done.batch.outcomes)
                    .checkpoints(done.batch.checkpoints)
                    .linked(done.batch.linked);
                gathered.drift.merge(done.batch.drift);
                gathered.duplicates += done.batch.duplicates;
                gathered.coverage.extend(done.batch.coverage);
                gathered.alerts.extend(done.batch.alerts);
                for (label, n) in done.batch.severities {
                    *gathered.severities.entry(label).or_default() += n;
                }
            }
            None => {
                warn!(
                    shard,
                    "A shard never finished; its targets fail as ShardFailed."
                );
                let file: ShardFile =
                    read_json(&open.store, &shard_key(&plan.run_id, shard), "shard file").await?;
                // CloudTrail of its cells is the trail phase's, when it has one.
                let cloudtrail = config.cloudtrail != CloudTrailMode::Off && !plan.trail_phase;
                publish.outcomes(shard_failed(file, plan, cloudtrail));
            }
        }
    }
    Ok(gathered)
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
    let mut finished = finished(&open.store, run_id).await?;
    let trail = match plan.trail_phase {
        true => trail::find(&open.store, run_id).await?,
        false => None,
    };
    if let Some(trail) = &trail {
        // The attempts whose correlations the CloudTrail phase used win over any other.
        finished.extend(trail.used.clone());
    }
    let mut publish = Publish::new(run_id);
    publish.outcomes(plan.failed.clone());
    let mut gathered = gather_shards(config, open, &plan, &finished, &mut publish).await?;
    if plan.trail_phase {
        trail::publish(&open.store, &plan, trail, &finished, &mut publish).await?;
    }
    let run = open.run(config, options, (run_id, plan.run_start_ms), run_id);
    let cells = std::mem::take(&mut gathered.coverage);
    let coverage =
        crate::pipeline::coverage::file(&run, cells, publish.gathered_outcomes(), &plan.facts)?;
    publish.files(coverage.file);
    gathered.linked = publish.take_linked();
    let outcomes = publish.gathered_outcomes().to_vec();
    let staged = crate::pipeline::alerting::stage(
        &run,
        &mut gathered,
        &plan.facts,
        coverage.gaps,
        &outcomes,
    )
    .await?;
    publish.checkpoints(staged);
    let drift = drift::report(&run, std::mem::take(&mut gathered.drift)).await?;
    publish.files(drift.file).checkpoints(drift.checkpoint);
    let (outcomes, committed) = publish
        .commit(&open.store, Some(lock), run.work_dir, run.run_start_ms)
        .await?;
    let delivery = crate::pipeline::alerting::deliver(&run, lock).await;
    let totals = Totals {
        alerts: delivery,
        files: committed.files,
        bytes: committed.bytes,
        duplicates_skipped: gathered.duplicates,
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
