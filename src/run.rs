//! `guardlake run`, the whole story: take the lake's lock (finishing what an interrupted run
//! committed) → discover accounts and regions → collect GuardDuty → collect CloudTrail for what
//! was covered and found → report drift → commit everything through one journal → summarize.
//! Each step is a module of [`crate::pipeline`]; this file only puts them in order.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, info_span, Instrument};

use crate::clock::now_ms;
use crate::config::ValidatedConfig;
use crate::discover::{self, Accounts};
use crate::error::RunError;
use crate::pipeline::findings;
use crate::pipeline::lock::{open, with_lock};
use crate::pipeline::publish::Publish;
use crate::pipeline::{alerting, batch, coverage, drift, Run};
use crate::report::{self, TargetOutcome, Totals};
use crate::state::lock::RunLock;
use crate::state::{crash_point, CrashPoint};

pub use crate::pipeline::{Backfill, RunOptions};

/// What a run ended with; `main` turns it into an exit code.
#[derive(Debug)]
pub struct RunResult {
    pub outcomes: Vec<TargetOutcome>,
    pub published: bool,
}

impl RunResult {
    pub fn all_ok(&self) -> bool {
        self.outcomes.iter().all(|o| o.failure.is_none())
    }
}

pub async fn run(config: ValidatedConfig, options: RunOptions) -> Result<RunResult, RunError> {
    let started = Instant::now();
    let run_id = uuid::Uuid::now_v7().to_string();
    let run_start_ms = now_ms();
    let span = info_span!("run", run_id = %run_id);
    async {
        let opened = open(&config, &options, &run_id).await?;
        let (aws, store) = (&opened.aws, &opened.store);
        let mode = config.mode.as_str();
        info!(home_account = %aws.home_account, home_region = %aws.home_region, mode, "Starting run.");
        let run = opened.run(&config, &options, (&run_id, run_start_ms), &run_id);
        // A dry run only reads: no lock, no recovery.
        if config.dry_run {
            return dry_run(&run).await;
        }
        let run = &run;
        let lease = config.lock_lease_secs;
        let body = |lock: Arc<RunLock>| async move { collect_and_publish(run, &lock, started).await };
        with_lock(store, &run_id, lease, body).await
    }
    .instrument(span)
    .await
}

/// The accounts this run covers: the organization's (after the configured filters), narrowed
/// by an invocation's payload.
pub async fn accounts(run: &Run<'_>) -> Result<Accounts, RunError> {
    let mut accounts = discover::accounts(run.aws, run.config)
        .await
        .map_err(RunError::Discovery)?;
    if let Some(only) = &run.config.only_accounts {
        discover::narrow(&mut accounts, only)?;
    }
    info!(
        active = accounts.active.len(),
        skipped = accounts.skipped.len(),
        "Discovered accounts."
    );
    crash_point(CrashPoint::AfterDiscovery);
    Ok(accounts)
}

async fn dry_run(run: &Run<'_>) -> Result<RunResult, RunError> {
    let accounts = accounts(run).await?;
    let (chains, failed) = findings::targets(run, &accounts.active).await;
    let (plan, outcomes) = findings::render_plan(run, &chains, &accounts.skipped, failed).await;
    print!("{plan}");
    Ok(RunResult {
        outcomes,
        published: false,
    })
}

async fn collect_and_publish(
    run: &Run<'_>,
    lock: &RunLock,
    started: Instant,
) -> Result<RunResult, RunError> {
    let accounts = accounts(run).await?;
    let (chains, failed) = findings::targets(run, &accounts.active).await;
    let mut batch =
        batch::collect(run, known_accounts(&accounts), chains, batch::Events::Here).await?;
    let mut publish = Publish::new(run.run_id);
    publish
        .outcomes(failed)
        .outcomes(std::mem::take(&mut batch.outcomes))
        .checkpoints(std::mem::take(&mut batch.checkpoints))
        .files(std::mem::take(&mut batch.files));
    let coverage = coverage::file(
        run,
        std::mem::take(&mut batch.coverage),
        publish.gathered_outcomes(),
        &accounts.facts,
    )?;
    publish.files(coverage.file);
    let outcomes = publish.gathered_outcomes().to_vec();
    let staged =
        alerting::stage(run, &mut batch, &accounts.facts, coverage.gaps, &outcomes).await?;
    publish.checkpoints(staged);
    let drift = drift::report(run, std::mem::take(&mut batch.drift)).await?;
    publish.files(drift.file).checkpoints(drift.checkpoint);

    let (outcomes, committed) = publish
        .commit(run.store, Some(lock), run.work_dir, run.run_start_ms)
        .await?;
    let alerts = alerting::deliver(run, lock).await;
    if run.options.compact {
        crate::compact::after_run(
            run.store,
            run.run_id,
            run.work_dir,
            run.config.target_file_bytes,
        )
        .await?;
    }
    let totals = Totals {
        files: committed.files,
        bytes: committed.bytes,
        duplicates_skipped: batch.duplicates,
        lake: run.store.uri(""),
        drift_new: drift.new,
        drift_types: drift.types,
        peak_rss_bytes: report::peak_rss_bytes(),
        alerts,
    };
    summarize(run, &outcomes, &accounts.skipped, &totals, started);
    Ok(RunResult {
        outcomes,
        published: true,
    })
}

/// Every account of the organization, covered or not: whose findings may be passed over.
pub fn known_accounts(accounts: &Accounts) -> HashSet<String> {
    accounts
        .active
        .iter()
        .cloned()
        .chain(accounts.skipped.iter().map(|s| s.account_id.clone()))
        .collect()
}

pub fn summarize(
    run: &Run<'_>,
    outcomes: &[TargetOutcome],
    skipped: &[discover::Skipped],
    totals: &Totals,
    started: Instant,
) {
    let summary = report::summary(
        run.run_id,
        outcomes,
        skipped,
        totals,
        started.elapsed().as_secs_f64(),
    );
    if run.options.quiet {
        info!(summary = %summary, "Run finished.");
    } else {
        print!("{summary}");
    }
}
