//! The CloudTrail phase of a distributed run. Which trail records are relevant depends on every
//! new finding version of the run (an access key a finding names can act in another account's
//! trail), so CloudTrail is read after all findings shards: `plan-trail` gathers their
//! correlations and writes one batch file per unit of trail work, the batches are collected
//! like shards, and `commit` publishes them with the findings.
//!
//! A batch is one account: all its regions when its backlog fits `trail_shard_objects` (the
//! usual incremental run), else one region each, a long backlog split into delivery-day parts.
//! The parts of a region publish in day order up to the first that failed or never finished,
//! and their cursors merge into the one a single reading would leave, so the next run starts
//! exactly where the published parts end.
//!
//! Layout: `_state/plans/<run_id>/trail.json` (written last) and `trail/NNNNN.json`, numbered
//! after the findings shards so that `shard --shard N` and the staging layout serve both.

use std::collections::BTreeMap;

use chrono::Duration;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{chain, fenced, finished, read_json, to_json, Done, Plan, PlanSummary, ShardFile};
use crate::clock::day_of;
use crate::config::{CloudTrailMode, Mode, ValidatedConfig};
use crate::error::{RunError, TargetFailure, TargetStatus};
use crate::pipeline::batch::{self, Batch};
use crate::pipeline::events::{self, Account};
use crate::pipeline::findings::{self, Chain};
use crate::pipeline::lock::open;
use crate::pipeline::publish::Publish;
use crate::pipeline::{load_state, Run, RunOptions};
use crate::report::TargetOutcome;
use crate::sink::store::Store;
use crate::sources::cloudtrail::{self as ct, AccountState, Correlation};
use crate::sources::orgtrail::{self, Days, DELIVERIES_PER_DAY};
use crate::state::journal::Checkpoint;
use crate::state::lock::RunLock;
use crate::table::SourceName;

/// One batch of trail work: an account and the delivery days of some of its regions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrailBatch {
    pub account_id: String,
    /// Region → the delivery days read (lookup mode: always from the watermark on).
    pub regions: BTreeMap<String, Days>,
    /// Whether the account's regions are spread over several batches (one region each), whose
    /// parts the commit merges.
    pub split: bool,
}

/// The CloudTrail phase's plan, written after its batch files.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrailPlan {
    /// The number of the first batch (the findings shards come before it).
    pub first: u32,
    pub shards: u32,
    /// Account × region cells the batches cover.
    pub targets: usize,
    /// The organization id in the trail's keys (org-trail mode).
    pub org_id: Option<String>,
    /// Every new finding version the findings shards found.
    pub correlations: Vec<Correlation>,
    /// Targets that failed while planning (no organization id for the trail's keys).
    pub failed: Vec<TargetOutcome>,
    /// The finished attempt (done marker key) of each findings shard whose correlations it
    /// used: the commit publishes those attempts, so findings and their CloudTrail agree.
    #[serde(default)]
    pub used: BTreeMap<u32, String>,
}

fn trail_plan_key(run_id: &str) -> String {
    format!("_state/plans/{run_id}/trail.json")
}

pub fn batches_prefix(run_id: &str) -> String {
    format!("_state/plans/{run_id}/trail/")
}

pub fn batch_key(run_id: &str, shard: u32) -> String {
    format!("{}{shard:05}.json", batches_prefix(run_id))
}

/// The run's trail plan, once `plan-trail` wrote it (bounded read; a plan that does not parse
/// is an error naming it).
pub async fn find(store: &Store, run_id: &str) -> Result<Option<TrailPlan>, RunError> {
    let Some(bytes) = store.get(&trail_plan_key(run_id)).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        RunError::Publish(format!(
            "trail plan {} is not valid: {e}",
            store.uri(&trail_plan_key(run_id))
        ))
    })
}

/// Whether a run's CloudTrail is collected in its own phase: always, except in member mode
/// with LookupEvents, where an account's shard looks its own events up (one AssumeRole, and
/// the LookupEvents rate limiter inside the shard).
pub fn separate(mode: Mode, cloudtrail: CloudTrailMode) -> bool {
    match cloudtrail {
        CloudTrailMode::Off => false,
        CloudTrailMode::Lookup => mode == Mode::DelegatedAdmin,
        CloudTrailMode::OrgTrail => true,
    }
}

/// Every chain a run planned, finished or not: CloudTrail covers the regions GuardDuty was
/// asked for, as in a single-process run.
async fn planned_chains(store: &Store, plan: &Plan) -> Result<Vec<Chain>, RunError> {
    let mut chains = Vec::new();
    for n in 0..plan.shards {
        let file: ShardFile =
            read_json(store, &super::shard_key(&plan.run_id, n), "shard file").await?;
        chains.extend(file.chains.into_iter().map(chain));
    }
    Ok(chains)
}

/// `guardlake plan-trail`: after the findings shards, writes the CloudTrail batches. A retry
/// after it finished returns the same plan.
pub async fn plan_trail(
    config: ValidatedConfig,
    options: RunOptions,
    run_id: &str,
) -> Result<PlanSummary, RunError> {
    let open = open(&config, &options, &format!("{run_id}-trail")).await?;
    RunLock::holder(&open.store, run_id)
        .await
        .map_err(|e| fenced(e, run_id))?;
    let plan: Plan = read_json(&open.store, &super::plan_key(run_id), "plan").await?;
    let summary = |trail: &TrailPlan| {
        super::summary(
            &open.store,
            run_id,
            &batches_prefix(run_id),
            trail.shards,
            trail.targets,
        )
    };
    if let Some(trail) = find(&open.store, run_id).await? {
        return Ok(summary(&trail));
    }
    let run = open.run(&config, &options, (run_id, plan.run_start_ms), run_id);
    let chains = planned_chains(&open.store, &plan).await?;
    let mut correlations = Vec::new();
    let mut used = BTreeMap::new();
    for (shard, key) in finished(&open.store, run_id).await?.range(..plan.shards) {
        let done: Done = read_json(&open.store, key, "done marker").await?;
        correlations.extend(done.batch.correlations);
        used.insert(*shard, key.clone());
    }
    correlations
        .sort_by(|a, b| (&a.finding_id, a.updated_at_ms).cmp(&(&b.finding_id, b.updated_at_ms)));
    let targets = events::accounts(findings::covered(&chains), correlations.clone());
    let (org_id, batches, failed) = if !plan.trail_phase {
        (None, Vec::new(), Vec::new())
    } else if config.cloudtrail == CloudTrailMode::OrgTrail {
        org_trail_batches(&run, targets).await
    } else {
        (None, targets.iter().map(whole).collect(), Vec::new())
    };
    for (n, batch) in batches.iter().enumerate() {
        let file = ShardFile {
            shard: plan.shards + n as u32,
            chains: Vec::new(),
            trail: Some(batch.clone()),
        };
        open.store
            .put(&batch_key(run_id, file.shard), to_json(&file)?)
            .await?;
    }
    let trail = TrailPlan {
        first: plan.shards,
        shards: batches.len() as u32,
        targets: batches.iter().map(|b| b.regions.len()).sum(),
        org_id,
        correlations,
        failed,
        used,
    };
    open.store
        .put(&trail_plan_key(run_id), to_json(&trail)?)
        .await?;
    info!(
        batches = trail.shards,
        correlations = trail.correlations.len(),
        "Planned the CloudTrail batches."
    );
    Ok(summary(&trail))
}

/// One batch for all of an account's regions, each read from its checkpoint on.
fn whole(account: &Account) -> TrailBatch {
    TrailBatch {
        account_id: account.account_id.clone(),
        regions: account
            .regions
            .iter()
            .map(|r| (r.clone(), Days::default()))
            .collect(),
        split: false,
    }
}

/// Org-trail batches, bounded by estimate in objects; without an organization id for the
/// trail's keys, every CloudTrail target fails instead.
async fn org_trail_batches(
    run: &Run<'_>,
    targets: Vec<Account>,
) -> (Option<String>, Vec<TrailBatch>, Vec<TargetOutcome>) {
    let org_id = match &run.config.trail_org_id {
        Some(id) => id.clone(),
        None => match events::organization_id(run.aws).await {
            Ok(id) => id,
            Err(failure) => {
                let failed = events::no_org_id(run, &targets, failure);
                return (None, Vec::new(), failed);
            }
        },
    };
    let config = run.config;
    let first_start_ms = run.run_start_ms - config.lookback_secs * 1000;
    let slack_ms = config.overlap_secs * 1000;
    let mut batches = Vec::new();
    for account in targets {
        let key = ct::state_key("orgtrail", &account.account_id);
        // Unreadable state fails the target in its batch, classified there.
        let Ok((state, _)) = load_state::<AccountState>(run.store, &key).await else {
            batches.push(whole(&account));
            continue;
        };
        let starts = account
            .regions
            .iter()
            .map(|region| {
                let prefix =
                    orgtrail::log_prefix(&org_id, &account.account_id, "CloudTrail", region);
                let start = state
                    .cursors
                    .get(&format!("CloudTrail/{region}"))
                    .and_then(|c| orgtrail::start_ms(&prefix, &c.start_after))
                    .unwrap_or(first_start_ms - slack_ms);
                (region.clone(), start)
            })
            .collect();
        batches.extend(split(
            &account.account_id,
            &starts,
            run.run_start_ms,
            config.trail_shard_objects,
        ));
    }
    (Some(org_id), batches, Vec::new())
}

/// An account's batches: one when the objects delivered since its cursors (estimated at the
/// usual cadence) fit `bound`; else one per region, a region over `bound` in parts of whole
/// delivery days (the first from its cursor, the last open-ended).
pub fn split(
    account_id: &str,
    starts: &BTreeMap<String, i64>,
    run_start_ms: i64,
    bound: u64,
) -> Vec<TrailBatch> {
    let estimate = |start: i64| ((run_start_ms - start).max(0) as u64) / 300_000 + 1;
    let batch = |regions: BTreeMap<String, Days>, split| TrailBatch {
        account_id: account_id.to_owned(),
        regions,
        split,
    };
    let total: u64 = starts.values().map(|s| estimate(*s)).sum();
    if total <= bound {
        let regions = starts
            .keys()
            .map(|r| (r.clone(), Days::default()))
            .collect();
        return vec![batch(regions, false)];
    }
    let per_part = (bound / DELIVERIES_PER_DAY).max(1) as i64;
    let last = day_of(run_start_ms);
    let mut batches = Vec::new();
    for (region, start) in starts {
        let first = day_of(*start);
        let mut day = first;
        loop {
            let end = day + Duration::days(per_part - 1);
            let from = (day != first).then_some(day);
            let to = (end < last).then_some(end);
            batches.push(batch(
                BTreeMap::from([(region.clone(), Days { from, to })]),
                true,
            ));
            if to.is_none() {
                break;
            }
            day = end + Duration::days(1);
        }
    }
    batches
}

/// Collects one CloudTrail batch of a run (`run` names the trail's keys with the plan's
/// organization id).
pub async fn collect(
    run: &Run<'_>,
    trail: &TrailPlan,
    batch: TrailBatch,
) -> Result<Batch, RunError> {
    let account = Account {
        correlations: trail
            .correlations
            .iter()
            .filter(|c| c.account_id == batch.account_id)
            .cloned()
            .collect(),
        regions: batch.regions.keys().cloned().collect(),
        days: batch.regions,
        account_id: batch.account_id,
    };
    let mut collected = Batch::default();
    batch::collect_cloudtrail(run, vec![account], &trail.correlations, &mut collected).await?;
    Ok(collected)
}

/// One part of a split account: a region's days, and the attempt that finished it.
struct Part {
    region: String,
    days: Days,
    done: Option<Done>,
}

/// Adds the CloudTrail phase to a commit: every finished whole batch; the parts of split
/// accounts in day order up to the first failed or unfinished one; `ShardFailed` for what
/// never finished (or, with no trail plan, for every covered cell).
pub async fn publish(
    store: &Store,
    plan: &Plan,
    trail: Option<TrailPlan>,
    finished: &BTreeMap<u32, String>,
    publish: &mut Publish,
) -> Result<(), RunError> {
    let Some(trail) = trail else {
        return never_planned(store, plan, publish).await;
    };
    publish.outcomes(trail.failed);
    let mut split: BTreeMap<String, Vec<Part>> = BTreeMap::new();
    for n in trail.first..trail.first + trail.shards {
        let file: ShardFile =
            read_json(store, &batch_key(&plan.run_id, n), "trail batch file").await?;
        let batch = file.trail.ok_or_else(|| {
            RunError::Publish(format!(
                "trail batch file {n:05} of run {} names no batch",
                plan.run_id
            ))
        })?;
        let done = match finished.get(&n) {
            Some(key) => Some(read_json::<Done>(store, key, "done marker").await?),
            None => None,
        };
        let why = format!(
            "CloudTrail batch {n:05} of run {} never finished",
            plan.run_id
        );
        match (batch.split, done) {
            (false, Some(done)) => {
                publish
                    .staged(done.staged, done.bytes)
                    .outcomes(done.batch.outcomes)
                    .checkpoints(done.batch.checkpoints)
                    .linked(done.batch.linked);
            }
            (false, None) => {
                for region in batch.regions.keys() {
                    publish.outcomes(vec![shard_failed(plan, &batch.account_id, region, &why)]);
                }
            }
            (true, mut done) => {
                // A split batch holds one region.
                for (region, days) in batch.regions {
                    let part = Part {
                        region,
                        days,
                        done: done.take(),
                    };
                    split
                        .entry(batch.account_id.clone())
                        .or_default()
                        .push(part);
                }
            }
        }
    }
    for (account, parts) in split {
        merge_account(
            store,
            plan,
            trail.org_id.as_deref().unwrap_or_default(),
            &account,
            parts,
            publish,
        )
        .await?;
    }
    Ok(())
}

/// No trail plan (`plan-trail` failed for good): every covered cell's CloudTrail fails, its
/// checkpoint held.
async fn never_planned(store: &Store, plan: &Plan, publish: &mut Publish) -> Result<(), RunError> {
    warn!("The CloudTrail phase was never planned; its targets fail as ShardFailed.");
    let chains = planned_chains(store, plan).await?;
    let why = format!(
        "the CloudTrail phase of run {} was never planned",
        plan.run_id
    );
    for (account, regions) in findings::covered(&chains) {
        for region in regions {
            publish.outcomes(vec![shard_failed(plan, &account, &region, &why)]);
        }
    }
    Ok(())
}

fn shard_failed(plan: &Plan, account: &str, region: &str, why: &str) -> TargetOutcome {
    let failure = TargetFailure::new(
        TargetStatus::Error,
        "ShardFailed",
        format!("{why}; its targets are collected by the next run"),
    );
    TargetOutcome::failed(
        account,
        region,
        SourceName::CloudTrail,
        plan.mode,
        failure,
        plan.run_start_ms,
    )
}

/// The checkpoints of the parts a commit keeps, per region, and the tag they were read at.
#[derive(Default)]
struct Kept {
    states: Vec<(String, AccountState)>,
    expected: Option<Option<crate::sink::store::Tag>>,
}

/// One region's parts, in day order: each finished one is staged for publishing until one
/// failed (kept: a single reading stops there too) or never finished (left out, with every
/// later part); returns the region's `runs` row.
fn merge_region(
    plan: &Plan,
    account: &str,
    region: &str,
    mut parts: Vec<Part>,
    publish: &mut Publish,
    kept: &mut Kept,
) -> Result<TargetOutcome, RunError> {
    // Days from the cursor (None) come first.
    parts.sort_by_key(|p| p.days.from);
    let mut merged: Option<TargetOutcome> = None;
    let mut stopped = None;
    let mut found = false;
    for part in parts {
        let Some(done) = part.done else {
            let why = format!(
                "a CloudTrail day batch of {account} {region} in run {} never finished",
                plan.run_id
            );
            stopped = shard_failed(plan, account, region, &why).failure;
            break;
        };
        publish
            .staged(done.staged, done.bytes)
            .linked(done.batch.linked);
        for checkpoint in done.batch.checkpoints {
            let state: AccountState = serde_json::from_str(&checkpoint.body).map_err(|e| {
                RunError::Publish(format!("a CloudTrail batch's checkpoint is not valid: {e}"))
            })?;
            kept.expected = Some(checkpoint.expected);
            kept.states.push((region.to_owned(), state));
        }
        let mut failure = None;
        for outcome in done.batch.outcomes {
            failure = failure.or(outcome.failure.clone());
            merged = Some(match merged {
                None => outcome,
                Some(sum) => add(sum, outcome),
            });
        }
        match failure {
            // Not found in these days; another part may find it.
            Some(f) if f.status == TargetStatus::TrailNotFound => {}
            Some(f) => {
                stopped = Some(f);
                break;
            }
            None => found = true,
        }
    }
    let mut outcome = merged.unwrap_or_else(|| shard_failed(plan, account, region, ""));
    outcome.failure = match stopped {
        Some(failure) => Some(failure),
        None if found => None,
        None => outcome.failure,
    };
    Ok(outcome)
}

/// The parts of one split account: per region, in day order, published up to the first that
/// failed (included, as a single reading stops there) or never finished (excluded); their
/// `runs` rows summed into one per region, their cursors merged into one checkpoint.
async fn merge_account(
    store: &Store,
    plan: &Plan,
    org_id: &str,
    account: &str,
    parts: Vec<Part>,
    publish: &mut Publish,
) -> Result<(), RunError> {
    let mut by_region: BTreeMap<String, Vec<Part>> = BTreeMap::new();
    for part in parts {
        by_region.entry(part.region.clone()).or_default().push(part);
    }
    let mut kept = Kept::default();
    for (region, parts) in by_region {
        let outcome = merge_region(plan, account, &region, parts, publish, &mut kept)?;
        publish.outcomes(vec![outcome]);
    }
    let Kept { states, expected } = kept;
    let Some(expected) = expected else {
        return Ok(());
    };
    let key = ct::state_key("orgtrail", account);
    let old = match store.get(&key).await? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            RunError::Publish(format!("{}: not a valid checkpoint ({e})", store.uri(&key)))
        })?,
        None => AccountState::default(),
    };
    let old = orgtrail::normalized(old, org_id, account);
    let parts: Vec<(&str, &AccountState)> = states.iter().map(|(r, s)| (r.as_str(), s)).collect();
    let merged = orgtrail::merge_parts(&old, &parts);
    publish.checkpoints(vec![Checkpoint {
        key,
        body: serde_json::to_string(&merged).map_err(|e| RunError::Encode(e.to_string()))?,
        expected,
    }]);
    Ok(())
}

/// Two parts' `runs` rows of one region as one.
fn add(mut sum: TargetOutcome, part: TargetOutcome) -> TargetOutcome {
    sum.findings_read += part.findings_read;
    sum.findings_written += part.findings_written;
    sum.findings_quarantined += part.findings_quarantined;
    sum.window_start_ms = match (sum.window_start_ms, part.window_start_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    sum.window_end_ms = sum.window_end_ms.max(part.window_end_ms);
    sum.started_at_ms = sum.started_at_ms.min(part.started_at_ms);
    sum.duration_ms += part.duration_ms;
    sum.failure = sum.failure.or(part.failure);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn at(day: &str, hour: i64) -> i64 {
        let date = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
        date.and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis()
            + hour * 3_600_000
    }

    fn days(batch: &TrailBatch) -> Vec<(String, Option<String>, Option<String>)> {
        batch
            .regions
            .iter()
            .map(|(r, d)| {
                (
                    r.clone(),
                    d.from.map(|x| x.to_string()),
                    d.to.map(|x| x.to_string()),
                )
            })
            .collect()
    }

    #[test]
    fn a_small_backlog_is_one_batch_and_a_long_one_whole_days_per_region() {
        let now = at("2026-11-20", 12);
        let recent = BTreeMap::from([
            ("eu-west-1".to_owned(), now - 3_600_000),
            ("us-east-1".to_owned(), now - 7_200_000),
        ]);
        let one = split("111122223333", &recent, now, 2000);
        assert_eq!(one.len(), 1);
        assert!(!one[0].split);
        assert_eq!(one[0].regions.len(), 2);

        // 10 days behind in one region, 1 hour in the other: 2000 objects = 6 days a part.
        let behind = BTreeMap::from([
            ("eu-west-1".to_owned(), now - 10 * DAY),
            ("us-east-1".to_owned(), now - 3_600_000),
        ]);
        let parts: Vec<_> = split("111122223333", &behind, now, 2000)
            .iter()
            .map(days)
            .collect();
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            parts,
            [
                vec![("eu-west-1".to_owned(), None, some("2026-11-15"))],
                vec![("eu-west-1".to_owned(), some("2026-11-16"), None)],
                vec![("us-east-1".to_owned(), None, None)],
            ]
        );
        // The smallest bound: a day a part, every day of the backlog exactly once.
        let daily = split("111122223333", &behind, now, 288);
        assert_eq!(daily.len(), 11 + 1);
        assert!(daily.iter().all(|b| b.split && b.regions.len() == 1));
    }
}
