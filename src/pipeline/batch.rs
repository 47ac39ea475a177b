//! Collecting a set of GuardDuty chains and the CloudTrail events behind them, into a [`Batch`]:
//! plain data (outcomes, checkpoints, local files and their lake keys, drift) that a publish
//! commits, in this process (`run`) or in another (`commit`, after `shard`s).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::coverage::Cell;
use super::events::{self, Account, Prepared};
use super::findings::{self, Chain, Findings};
use super::{collect_all, Run};
use crate::alerts::{Candidate, LinkedEvent};
use crate::config::CloudTrailMode;
use crate::error::RunError;
use crate::normalize::drift::DriftLog;
use crate::report::TargetOutcome;
use crate::sources::cloudtrail::Correlation;
use crate::state::journal::Checkpoint;
use crate::state::{crash_point, CrashPoint};

/// What collecting some targets produced.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Batch {
    pub outcomes: Vec<TargetOutcome>,
    pub checkpoints: Vec<Checkpoint>,
    /// Local files and the lake keys they are published under.
    pub files: Vec<(PathBuf, String)>,
    pub drift: DriftLog,
    /// Finding versions skipped as already published.
    pub duplicates: u64,
    /// The new finding versions, when their CloudTrail events are collected later (by the
    /// trail batches of a distributed run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub correlations: Vec<Correlation>,
    /// What the GuardDuty source learned of each account × region's coverage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coverage: Vec<Cell>,
    /// New versions that changed something, for the alert rules (alerting runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Candidate>,
    /// CloudTrail events linked to new versions, the best few per version (alerting runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linked: Vec<LinkedEvent>,
    /// New versions written, by severity label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub severities: BTreeMap<String, u64>,
}

/// Where a batch's CloudTrail events are collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Events {
    /// With the findings, in the same process.
    Here,
    /// Later, by other processes: the batch keeps the correlations.
    Later,
}

/// Collects `chains` (GuardDuty), then (`events` Here) CloudTrail for the accounts and regions
/// they covered and the new finding versions they found. `known` is every account of the
/// organization.
pub async fn collect(
    run: &Run<'_>,
    known: HashSet<String>,
    chains: Vec<Chain>,
    events: Events,
) -> Result<Batch, RunError> {
    let covered = findings::covered(&chains);
    let (guardduty, writer) = Findings::new(run, known).await?;
    let concurrency = run.config.concurrency.get();
    let gathered = collect_all(&guardduty, chains, run.store, concurrency, run.mode()).await?;
    crash_point(CrashPoint::AfterCollect);
    let found = guardduty.finish(writer).await?;
    let mut checkpoints = gathered.checkpoints;
    checkpoints.extend(found.checkpoints);
    let mut batch = Batch {
        outcomes: gathered.outcomes,
        checkpoints,
        files: found.files,
        drift: found.drift,
        duplicates: found.duplicates,
        correlations: Vec::new(),
        coverage: found.cells,
        alerts: found.candidates,
        linked: Vec::new(),
        severities: found.severities,
    };
    match (run.config.cloudtrail, events) {
        (CloudTrailMode::Off, _) => {}
        (_, Events::Here) => {
            let targets = events::accounts(covered, found.correlations.clone());
            collect_cloudtrail(run, targets, &found.correlations, &mut batch).await?;
            crash_point(CrashPoint::AfterCloudtrail);
        }
        (_, Events::Later) => batch.correlations = found.correlations,
    }
    Ok(batch)
}

/// The CloudTrail events of `targets` (accounts, their regions and the new finding versions
/// to correlate), into `batch`.
pub async fn collect_cloudtrail(
    run: &Run<'_>,
    targets: Vec<Account>,
    correlations: &[Correlation],
    batch: &mut Batch,
) -> Result<(), RunError> {
    match events::Events::prepare(run, targets, correlations).await? {
        Prepared::Ready(cloudtrail, targets) => {
            tracing::info!(
                targets = targets.len(),
                correlations = correlations.len(),
                "Reading CloudTrail events."
            );
            let concurrency = run.config.concurrency.get();
            let gathered = collect_all(
                cloudtrail.as_ref(),
                targets,
                run.store,
                concurrency,
                run.mode(),
            )
            .await?;
            batch.outcomes.extend(gathered.outcomes);
            batch.checkpoints.extend(gathered.checkpoints);
            let (files, linked) = cloudtrail.finish()?;
            batch.files.extend(files);
            batch.linked.extend(linked);
        }
        Prepared::Failed(outcomes) => batch.outcomes.extend(outcomes),
    }
    Ok(())
}
