//! `guardlake run`: discover → targets → collect (bounded concurrency) → publish → state → report.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tracing::{info, info_span, warn, Instrument};

use crate::aws::Aws;
use crate::config::{CloudTrailMode, Mode, Output, TrailSource, ValidatedConfig};
use crate::discover::{self, Skipped};
use crate::error::{RunError, TargetFailure, TargetStatus};
use crate::normalize::cloudtrail::{self, FindingEvent};
use crate::normalize::drift::DriftLog;
use crate::normalize::guardduty::{normalize, RunStamp};
use crate::report::{self, TargetOutcome, Totals};
use crate::sink::events::EventSink;
use crate::sink::parquet::{self as pq, FindingsWriter};
use crate::sink::spill::Spill;
use crate::sink::store::{Store, Tag};
use crate::sources::cloudtrail::{self as trail, Correlation};
use crate::sources::guardduty::{self as gd, RawFinding, Window};
use crate::sources::orgtrail;
use crate::state::journal::{self, Checkpoint, Copy, Journal};
use crate::state::lock::{LockError, RunLock};
use crate::state::{self, crash_point, Watermark};

const SOURCE: &str = "guardduty";
/// The (finding type, path, kind) drift entries already reported, so each is reported once.
const DRIFT_STATE: &str = "_state/schema_drift.json";

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

/// One chain of calls: a detector in an account and region. In member mode it covers its own
/// account; in delegated-admin mode it covers every member in `members`.
#[derive(Debug, Clone)]
struct Chain {
    account_id: String,
    region: String,
    members: Option<Arc<HashSet<String>>>,
    window: Window,
    mark: Watermark,
    /// The checkpoint's version tag when it was read (None: no checkpoint yet).
    mark_tag: Option<Tag>,
}

/// A finding that could not be used, kept whole under `_quarantine/` (its text, unless it was
/// over the size limit).
#[derive(Debug, serde::Serialize)]
struct Quarantined<'a> {
    account_id: &'a str,
    region: &'a str,
    finding_id: Option<&'a str>,
    reason: &'a str,
    raw: &'a str,
    raw_bytes: usize,
}

#[derive(Default)]
struct Counts {
    read: u64,
    written: u64,
    quarantined: u64,
}

struct ChainResult {
    chain: Chain,
    started_at_ms: i64,
    duration_ms: i64,
    failure: Option<TargetFailure>,
    counts: HashMap<String, Counts>,
    new_versions: Vec<(String, i64)>,
    duplicates: u64,
}

/// Shared by every chain of a run.
struct Collector {
    writer: Mutex<Option<FindingsWriter>>,
    /// Quarantined findings, written to the work directory as they come.
    quarantine: Mutex<Spill>,
    /// Every account of the organization (covered or not): a finding of one of them seen
    /// through another account's detector is passed over; any other account id is quarantined.
    known_accounts: HashSet<String>,
    encode_error: Mutex<Option<String>>,
    /// Versions the lake already has (backfills): (account_id, region, id, updated_at ms).
    existing: HashSet<(String, String, String, i64)>,
    drift: Mutex<DriftLog>,
    /// New finding versions whose CloudTrail events are looked up (lookup mode).
    correlations: Mutex<Vec<Correlation>>,
}

/// The UTC day of an epoch-ms time (a `dt` partition).
fn day_of(ms: i64) -> chrono::NaiveDate {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.date_naive())
        .unwrap_or_default()
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn iso(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// A window given on the command line: a backfill re-collects it, adding only versions the
/// lake does not have, and leaves checkpoints alone.
#[derive(Debug, Clone, Copy)]
pub struct Backfill {
    pub since_ms: i64,
    pub until_ms: i64,
}

/// Everything a run needs beyond the validated config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub s3_path_style: bool,
    pub backfill: Option<Backfill>,
    /// Compact closed partitions after publishing.
    pub compact: bool,
    /// Log the summary (JSON) instead of printing it on stdout (Lambda).
    pub quiet: bool,
}

fn store_err(e: crate::sink::store::StoreError) -> RunError {
    RunError::Store {
        key: e.key,
        message: e.message,
    }
}

fn put_err(e: crate::sink::store::PutError) -> RunError {
    match e {
        crate::sink::store::PutError::Store(e) => store_err(e),
        conflict => RunError::Store {
            key: String::new(),
            message: conflict.to_string(),
        },
    }
}

/// The lake's store; `s3` makes the client when the output is a bucket (a local lake needs no
/// AWS at all).
async fn open_store<F>(config: &ValidatedConfig, s3: impl FnOnce() -> F) -> Store
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

/// An invocation's accounts: a subset of those the configuration covers (the organization's,
/// after its filters), never one more; an account it names that is not there is refused.
fn narrow_accounts(accounts: &mut discover::Accounts, only: &[String]) -> Result<(), RunError> {
    let known = |id: &String| {
        accounts.active.contains(id) || accounts.skipped.iter().any(|s| &s.account_id == id)
    };
    let unknown: Vec<&str> = only
        .iter()
        .filter(|id| !known(id))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(RunError::Config(crate::config::ConfigError::Invalid {
            key: "accounts",
            flag: "payload accounts",
            problem: format!(
                "{} not among the accounts the configuration covers",
                unknown.join(", ")
            ),
            fix: "an invocation may only narrow the configured accounts".into(),
        }));
    }
    accounts.active.retain(|id| only.contains(id));
    accounts.skipped.retain(|s| only.contains(&s.account_id));
    Ok(())
}

/// What every stage of one run shares.
struct RunContext<'a> {
    config: &'a ValidatedConfig,
    options: &'a RunOptions,
    aws: &'a Aws,
    store: &'a Arc<Store>,
    lock: Option<&'a RunLock>,
    run_id: &'a str,
    run_start_ms: i64,
    started: Instant,
}

/// What the top of a lake may hold: its tables and guardlake's own `_` folders.
const LAKE_ENTRIES: [&str; 8] = [
    "findings",
    "runs",
    "cloudtrail_events",
    "finding_events",
    "schema_drift",
    "_state",
    "_staging",
    "_quarantine",
];

/// Refuses an output that holds something else: recovery deletes staging no journal names,
/// so a directory or prefix with files of its own must never be taken for a lake. New, empty
/// and existing lakes (`_state` or `runs` at the top) are fine.
async fn check_is_lake(store: &Store) -> Result<(), RunError> {
    let names = store.list_children("").await.map_err(store_err)?;
    let is_lake = names.iter().any(|n| n == "_state" || n == "runs");
    let foreign: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !LAKE_ENTRIES.contains(n))
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
    Err(RunError::Config(crate::config::ConfigError::Invalid {
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
async fn lock_and_recover(
    store: &Arc<Store>,
    run_id: &str,
    config: &ValidatedConfig,
) -> Result<Arc<RunLock>, RunError> {
    check_is_lake(store).await?;
    let lock = RunLock::acquire(store, run_id, Duration::from_secs(config.lock_lease_secs))
        .await
        .map_err(|e| match e {
            LockError::Store(e) => store_err(e),
            other => RunError::Locked(other.to_string()),
        })?;
    crash_point(crate::state::CrashPoint::AfterLock);
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
    crash_point(crate::state::CrashPoint::AfterRecovery);
    Ok(lock)
}

/// Runs `body` under the lake's lock: takes it and finishes what an interrupted run committed,
/// keeps it alive, and releases it whatever `body` returns (a release that fails is logged; the
/// lock then expires with its lease). `run` and `compact` both go through here.
async fn with_lock<T, F, Fut>(
    store: &Arc<Store>,
    run_id: &str,
    config: &ValidatedConfig,
    body: F,
) -> Result<T, RunError>
where
    F: FnOnce(Arc<RunLock>) -> Fut,
    Fut: std::future::Future<Output = Result<T, RunError>>,
{
    let lock = lock_and_recover(store, run_id, config).await?;
    let keep_alive = lock.keep_alive(store.clone());
    let result = body(lock.clone()).await;
    keep_alive.abort();
    crash_point(crate::state::CrashPoint::BeforeLockRelease);
    if let Err(e) = lock.release(store).await {
        warn!(error = %e, "Could not release the run lock; it expires with its lease.");
    }
    result
}

pub async fn run(config: ValidatedConfig, options: RunOptions) -> Result<RunResult, RunError> {
    let started = Instant::now();
    let run_id = uuid::Uuid::now_v7().to_string();
    let run_start_ms = now_ms();
    let span = info_span!("run", run_id = %run_id);
    async move {
        let aws = Aws::load(&config, &run_id, options.s3_path_style).await.map_err(RunError::Discovery)?;
        info!(home_account = %aws.home_account, home_region = %aws.home_region, mode = config.mode.as_str(), "Starting run.");
        let store = Arc::new(open_store(&config, || async { aws.s3() }).await);
        let (config, options, aws, store_ref, id) = (&config, &options, &aws, &store, run_id.as_str());
        // A dry run only reads: no lock, no recovery.
        if config.dry_run {
            let ctx = RunContext { config, options, aws, store: store_ref, lock: None, run_id: id, run_start_ms, started };
            return run_locked(&ctx).await;
        }
        with_lock(&store, id, config, |lock| async move {
            let ctx = RunContext { config, options, aws, store: store_ref, lock: Some(&lock), run_id: id, run_start_ms, started };
            run_locked(&ctx).await
        })
        .await
    }
    .instrument(span)
    .await
}

async fn run_locked(ctx: &RunContext<'_>) -> Result<RunResult, RunError> {
    let RunContext {
        config,
        options,
        aws,
        store,
        run_id,
        run_start_ms,
        ..
    } = *ctx;
    let mut accounts = discover::accounts(aws, config)
        .await
        .map_err(RunError::Discovery)?;
    if let Some(only) = &config.only_accounts {
        narrow_accounts(&mut accounts, only)?;
    }
    info!(
        active = accounts.active.len(),
        skipped = accounts.skipped.len(),
        "Discovered accounts."
    );
    crash_point(crate::state::CrashPoint::AfterDiscovery);

    let (chains, mut outcomes) = plan(
        aws,
        config,
        store,
        &accounts.active,
        run_start_ms,
        options.backfill,
    )
    .await?;
    if config.dry_run {
        print!(
            "{}",
            render_plan(config, &chains, &accounts.skipped, &outcomes)
        );
        return Ok(RunResult {
            outcomes,
            published: false,
        });
    }

    let work_dir = config.work_dir.join(format!("guardlake-{run_id}"));
    std::fs::create_dir_all(&work_dir).map_err(|e| RunError::Store {
        key: work_dir.display().to_string(),
        message: e.to_string(),
    })?;
    let result = collect_and_publish(
        ctx,
        &work_dir,
        chains,
        &mut outcomes,
        &accounts.skipped,
        &accounts.active,
    )
    .await;
    let _ = std::fs::remove_dir_all(&work_dir);
    result?;
    Ok(RunResult {
        outcomes,
        published: true,
    })
}

async fn collect_and_publish(
    ctx: &RunContext<'_>,
    work_dir: &std::path::Path,
    chains: Vec<Chain>,
    outcomes: &mut Vec<TargetOutcome>,
    skipped: &[Skipped],
    known_active: &[String],
) -> Result<(), RunError> {
    let RunContext {
        config,
        options,
        aws,
        store,
        lock,
        run_id,
        run_start_ms,
        started,
    } = *ctx;
    // A backfill skips the versions the lake already has in the window's partitions.
    let existing = match options.backfill {
        Some(window) => crate::sink::lake::existing_versions(
            store,
            work_dir,
            day_of(window.since_ms),
            day_of(window.until_ms),
        )
        .await
        .map_err(RunError::Encode)?,
        None => HashSet::new(),
    };
    let stamp = RunStamp {
        run_id: run_id.to_owned(),
        collected_at_ms: run_start_ms,
    };
    let collector = Arc::new(Collector {
        writer: Mutex::new(Some(FindingsWriter::new(
            work_dir.to_owned(),
            stamp,
            config.flush_bytes,
            config.target_file_bytes,
        ))),
        quarantine: Mutex::new(Spill::new(work_dir.join("quarantine.jsonl"))),
        known_accounts: skipped
            .iter()
            .map(|s| s.account_id.clone())
            .chain(known_active.iter().cloned())
            .collect(),
        encode_error: Mutex::new(None),
        existing,
        drift: Mutex::new(DriftLog::default()),
        correlations: Mutex::new(Vec::new()),
    });

    // Account → regions covered, for CloudTrail (members × regions in delegated-admin mode).
    let mut covered: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for chain in &chains {
        let accounts: Vec<String> = match &chain.members {
            Some(members) => members.iter().cloned().collect(),
            None => vec![chain.account_id.clone()],
        };
        for account in accounts {
            covered
                .entry(account)
                .or_default()
                .push(chain.region.clone());
        }
    }
    let progress = progress_bar(chains.len() as u64);
    let results: Vec<ChainResult> = futures::stream::iter(chains)
        .map(|chain| {
            let collector = collector.clone();
            let progress = progress.clone();
            async move {
                let span = info_span!("target", account_id = %chain.account_id, region = %chain.region, source = SOURCE);
                let result = collect_chain(aws, chain, &collector).instrument(span).await;
                if let Some(bar) = &progress {
                    bar.inc(1);
                }
                result
            }
        })
        .buffer_unordered(config.concurrency.get())
        .collect()
        .await;
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    crash_point(crate::state::CrashPoint::AfterCollect);
    if let Some(message) = collector
        .encode_error
        .lock()
        .ok()
        .and_then(|mut e| e.take())
    {
        return Err(RunError::Encode(message));
    }

    let writer = collector.writer.lock().ok().and_then(|mut w| w.take());
    let encoded = match writer {
        Some(writer) => writer
            .finish()
            .map_err(|e| RunError::Encode(e.to_string()))?,
        None => Vec::new(),
    };
    crash_point(crate::state::CrashPoint::AfterEncode);

    // The report rows, and the checkpoints of the chains that completed.
    let mode = config.mode.as_str();
    let mut journal = Journal {
        run_id: run_id.to_owned(),
        kind: "run".into(),
        ..Journal::default()
    };
    let mut totals = Totals {
        lake: store.uri(""),
        ..Totals::default()
    };
    for result in results {
        totals.duplicates_skipped += result.duplicates;
        // A target that failed partway keeps its window but records what it published, so
        // no later run writes those versions again.
        let overlap_ms = config.overlap_secs * 1000;
        let mark = match &result.failure {
            _ if options.backfill.is_some() => None,
            None => Some(result.chain.mark.advance(
                result.chain.window.end_ms,
                overlap_ms,
                result.new_versions,
            )),
            Some(_) if !result.new_versions.is_empty() => Some(result.chain.mark.hold(
                result.chain.window.start_ms,
                overlap_ms,
                result.new_versions,
            )),
            Some(_) => None,
        };
        if let Some(mark) = mark {
            let body = serde_json::to_string(&mark).map_err(|e| RunError::Encode(e.to_string()))?;
            journal.checkpoints.push(Checkpoint {
                key: state::key(SOURCE, &result.chain.account_id, &result.chain.region),
                body,
                expected: result.chain.mark_tag.clone(),
            });
        }
        let accounts: Vec<String> = match &result.chain.members {
            Some(members) => {
                let mut list: Vec<String> = members.iter().cloned().collect();
                list.sort();
                list
            }
            None => vec![result.chain.account_id.clone()],
        };
        for account_id in accounts {
            let counts = result.counts.get(&account_id);
            outcomes.push(TargetOutcome {
                account_id,
                region: result.chain.region.clone(),
                source: SOURCE,
                mode,
                failure: result.failure.clone(),
                findings_read: counts.map_or(0, |c| c.read),
                findings_written: counts.map_or(0, |c| c.written),
                findings_quarantined: counts.map_or(0, |c| c.quarantined),
                window_start_ms: Some(result.chain.window.start_ms),
                window_end_ms: Some(result.chain.window.end_ms),
                started_at_ms: result.started_at_ms,
                duration_ms: result.duration_ms,
            });
        }
    }
    outcomes.sort_by(|a, b| (&a.account_id, &a.region).cmp(&(&b.account_id, &b.region)));

    // Stage every file outside the table locations.
    let staging = journal::staging_prefix(run_id);
    let run_dt = DateTime::<Utc>::from_timestamp_millis(run_start_ms)
        .map(|t| t.date_naive())
        .unwrap_or_default();
    let mut files: Vec<(std::path::PathBuf, String)> = encoded
        .iter()
        .map(|f| (f.path.clone(), format!("findings/dt={}/{}", f.dt, f.name)))
        .collect();
    if config.cloudtrail != CloudTrailMode::Off {
        let correlations = std::mem::take(
            &mut *collector
                .correlations
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let trail = collect_cloudtrail(ctx, work_dir, covered, correlations).await?;
        outcomes.extend(trail.outcomes);
        outcomes.sort_by(|a, b| {
            (&a.account_id, &a.region, a.source).cmp(&(&b.account_id, &b.region, b.source))
        });
        journal.checkpoints.extend(trail.checkpoints);
        files.extend(trail.files);
        crash_point(crate::state::CrashPoint::AfterCloudtrail);
    }

    let runs = report::runs_batch(run_id, outcomes).map_err(|e| RunError::Encode(e.to_string()))?;
    let runs_path = work_dir.join("runs.parquet");
    pq::write_file(&runs_path, &runs).map_err(|e| RunError::Encode(e.to_string()))?;
    files.push((runs_path, format!("runs/dt={run_dt}/{run_id}.parquet")));
    let spilled = collector
        .quarantine
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .finish()
        .map_err(store_err)?;
    if let Some((path, count)) = spilled {
        let key = format!("_quarantine/findings/dt={run_dt}/{run_id}.jsonl");
        warn!(count, key = %store.uri(&key), "Quarantined findings.");
        files.push((path, key));
    }
    // Schema drift seen for the first time: a table row each, remembered in a checkpoint.
    let drift = std::mem::take(&mut *collector.drift.lock().unwrap_or_else(|p| p.into_inner()));
    if drift.dropped > 0 {
        warn!(
            dropped = drift.dropped,
            limit = crate::normalize::drift::MAX_DRIFT_ENTRIES,
            "More distinct schema drift than a run records; the rest is counted only."
        );
    }
    if !drift.entries.is_empty() {
        let (mut seen, tag): (BTreeSet<(String, String, String)>, Option<Tag>) = match store
            .get_tagged(DRIFT_STATE)
            .await
            .map_err(store_err)?
        {
            Some((bytes, tag)) => match serde_json::from_slice(&bytes) {
                Ok(seen) => (seen, Some(tag)),
                Err(e) => {
                    // Never a silent reset: report this run's drift, leave the file alone.
                    warn!(key = %store.uri(DRIFT_STATE), error = %e, "The schema-drift state is not valid JSON; drift is reported but not remembered until it is fixed or removed.");
                    (BTreeSet::new(), None)
                }
            },
            None => (BTreeSet::new(), None),
        };
        let corrupt = tag.is_none() && store.exists(DRIFT_STATE).await.map_err(store_err)?;
        let new: Vec<_> = drift
            .entries
            .iter()
            .filter(|((t, p, k), _)| !seen.contains(&(t.clone(), p.clone(), k.as_str().to_owned())))
            .collect();
        if !new.is_empty() {
            totals.drift_new = new.len();
            totals.drift_types = new
                .iter()
                .map(|((t, _, _), _)| t)
                .collect::<HashSet<_>>()
                .len();
            warn!(new = new.len(), "Findings differ from the known GuardDuty finding shape; see the schema_drift table.");
            let batch =
                report::drift_batch(run_id, &new).map_err(|e| RunError::Encode(e.to_string()))?;
            let path = work_dir.join("schema_drift.parquet");
            pq::write_file(&path, &batch).map_err(|e| RunError::Encode(e.to_string()))?;
            files.push((path, format!("schema_drift/dt={run_dt}/{run_id}.parquet")));
            let room = crate::normalize::drift::MAX_DRIFT_STATE_ENTRIES.saturating_sub(seen.len());
            if room < new.len() {
                warn!(
                    limit = crate::normalize::drift::MAX_DRIFT_STATE_ENTRIES,
                    "The schema-drift state is full: drift beyond it is reported every run, not remembered."
                );
            }
            seen.extend(
                new.iter()
                    .take(room)
                    .map(|((t, p, k), _)| (t.clone(), p.clone(), k.as_str().to_owned())),
            );
            let body = serde_json::to_string(&seen).map_err(|e| RunError::Encode(e.to_string()))?;
            if !corrupt {
                journal.checkpoints.push(Checkpoint {
                    key: DRIFT_STATE.to_owned(),
                    body,
                    expected: tag,
                });
            }
        }
    }
    for (i, (path, key)) in files.iter().enumerate() {
        let staged = format!("{staging}{key}");
        totals.bytes += store
            .create_from_file(path, &staged)
            .await
            .map_err(put_err)?;
        totals.files += usize::from(!key.starts_with('_'));
        journal.copies.push(Copy {
            from: staged,
            to: key.clone(),
        });
        if i == 0 {
            crash_point(crate::state::CrashPoint::MidStageUpload);
        }
    }
    crash_point(crate::state::CrashPoint::AfterStageUpload);

    // Still ours? Then commit: from the journal on, the run's output is as good as published.
    if let Some(lock) = lock {
        lock.renew(store).await.map_err(|e| match e {
            LockError::Store(e) => store_err(e),
            other => RunError::Locked(other.to_string()),
        })?;
    }
    crash_point(crate::state::CrashPoint::BeforeJournal);
    journal::write(store, &journal)
        .await
        .map_err(|e| RunError::Publish(e.to_string()))?;
    crash_point(crate::state::CrashPoint::Journal(
        crate::state::Phase::Run,
        crate::state::Step::AfterJournal,
    ));
    // Committed: from here a failure leaves the rest to the next run's roll-forward.
    journal::apply(store, &journal, crate::state::Phase::Run)
        .await
        .map_err(|e| RunError::Deferred(e.to_string()))?;

    if options.compact {
        let today = Utc::now().date_naive();
        let merged = crate::compact::compact(
            store,
            run_id,
            work_dir,
            None,
            None,
            config.target_file_bytes,
            today,
        )
        .await
        .map_err(|e| RunError::Publish(e.to_string()))?;
        for m in merged {
            info!(table = %m.table, dt = %m.dt, files_before = m.files_before, files_after = m.files_after, "Compacted.");
        }
    }
    totals.peak_rss_bytes = report::peak_rss_bytes();
    let summary = report::summary(
        run_id,
        outcomes,
        skipped,
        &totals,
        started.elapsed().as_secs_f64(),
    );
    if options.quiet {
        info!(summary = %summary, "Run finished.");
    } else {
        print!("{summary}");
    }
    Ok(())
}

/// The organization's id (DescribeOrganization), for the org trail's keys; an answer without
/// one is a failure too, never an empty id.
async fn organization_id(aws: &Aws) -> Result<String, TargetFailure> {
    let answer = aws
        .organizations()
        .describe_organization()
        .send()
        .await
        .map_err(|e| crate::error::classify("organizations:DescribeOrganization", &e))?;
    match answer.organization().and_then(|o| o.id()) {
        Some(id) if crate::config::is_org_id(id) => Ok(id.to_owned()),
        other => Err(TargetFailure::new(
            TargetStatus::Error,
            "NoOrganizationId",
            format!("organizations:DescribeOrganization answered no usable organization id ({other:?}); set --trail-org-id"),
        )),
    }
}

/// What the CloudTrail phase adds to a run's publish.
struct TrailOutput {
    outcomes: Vec<TargetOutcome>,
    checkpoints: Vec<Checkpoint>,
    files: Vec<(std::path::PathBuf, String)>,
}

/// LookupEvents for every covered account: the watch-list per region, and the events behind
/// each new finding version. Accounts run concurrently; calls per account and region are
/// spaced by the shared rate limiter.
async fn collect_cloudtrail(
    ctx: &RunContext<'_>,
    work_dir: &std::path::Path,
    covered: BTreeMap<String, Vec<String>>,
    correlations: Vec<Correlation>,
) -> Result<TrailOutput, RunError> {
    let RunContext {
        config,
        options,
        aws,
        store,
        run_id,
        run_start_ms,
        ..
    } = *ctx;
    let limiter = trail::limiter();
    let mut by_account: BTreeMap<String, Vec<Correlation>> = BTreeMap::new();
    for correlation in &correlations {
        by_account
            .entry(correlation.account_id.clone())
            .or_default()
            .push(correlation.clone());
    }
    // Org-trail mode: where the objects are, the org id in their keys, and the relevance rules.
    let org_trail = match (&config.cloudtrail, &config.trail) {
        (CloudTrailMode::OrgTrail, Some(source)) => {
            let store = match source {
                TrailSource::S3 { bucket, prefix } => Store::S3 {
                    client: aws.s3(),
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                    sse_kms_key_id: None,
                    part_bytes: crate::sink::store::MULTIPART_PART_BYTES,
                },
                TrailSource::Local(dir) => Store::Local { root: dir.clone() },
            };
            let org_id = match &config.trail_org_id {
                Some(id) => id.clone(),
                None => match organization_id(aws).await {
                    Ok(id) => id,
                    // Without the org id no trail key can be named: every CloudTrail target
                    // fails, classified; the findings are still published.
                    Err(failure) => {
                        warn!(status = failure.status.as_str(), message = %failure.message, "No organization id for the trail's keys; CloudTrail targets fail.");
                        let outcomes = covered
                            .iter()
                            .flat_map(|(account, regions)| {
                                regions.iter().map(move |region| (account, region))
                            })
                            .map(|(account, region)| {
                                TargetOutcome::failed(
                                    account,
                                    region,
                                    "cloudtrail",
                                    config.mode.as_str(),
                                    failure.clone(),
                                    run_start_ms,
                                )
                            })
                            .collect();
                        return Ok(TrailOutput {
                            outcomes,
                            checkpoints: Vec::new(),
                            files: Vec::new(),
                        });
                    }
                },
            };
            Some((
                store,
                org_id,
                orgtrail::Rules::new(
                    &config.watchlist,
                    &correlations,
                    config.lookup_pad_secs * 1000,
                ),
            ))
        }
        _ => None,
    };
    // A backfill adds only the events the lake lacks, and moves no checkpoint.
    let lake_has: HashSet<String> = match options.backfill {
        Some(window) => crate::sink::lake::existing_event_ids(
            store,
            work_dir,
            day_of(window.since_ms),
            day_of(window.until_ms),
        )
        .await
        .map_err(RunError::Encode)?,
        None => HashSet::new(),
    };
    let lake_has = &lake_has;
    let stamp = RunStamp {
        run_id: run_id.to_owned(),
        collected_at_ms: run_start_ms,
    };
    // Its own directory: the findings writer names its files the same way.
    let events_dir = work_dir.join("cloudtrail_events");
    std::fs::create_dir_all(&events_dir).map_err(|e| RunError::Store {
        key: events_dir.display().to_string(),
        message: e.to_string(),
    })?;
    let event_sink = EventSink::new(
        pq::PartitionWriter::new(
            events_dir,
            stamp,
            config.flush_bytes,
            config.target_file_bytes,
        ),
        Spill::new(work_dir.join("quarantine-cloudtrail.jsonl")),
    );
    let sink = &event_sink;
    let state_source = if org_trail.is_some() {
        "orgtrail"
    } else {
        "cloudtrail"
    };
    let accounts: BTreeSet<String> = covered.keys().chain(by_account.keys()).cloned().collect();
    let first_start = run_start_ms - config.lookback_secs * 1000;
    let org_trail = &org_trail;
    let results: Vec<_> = futures::stream::iter(accounts)
        .map(|account| {
            let regions = covered.get(&account).cloned().unwrap_or_default();
            let mine = by_account.get(&account).cloned().unwrap_or_default();
            let limiter = limiter.clone();
            async move {
                let span = info_span!("target", account_id = %account, source = "cloudtrail");
                async {
                    let key = trail::state_key(state_source, &account);
                    let loaded = store.get_tagged(&key).await.map_err(store_err)?;
                    let (state, tag) = match loaded {
                        Some((bytes, tag)) => match serde_json::from_slice(&bytes) {
                            Ok(state) => (state, Some(tag)),
                            // Never a silent reset: that would re-read and re-publish.
                            Err(e) => {
                                let failure = TargetFailure::new(
                                    TargetStatus::Error,
                                    "CorruptState",
                                    format!("{}: not a valid CloudTrail checkpoint ({e}); fix or remove it", store.uri(&key)),
                                );
                                return Ok((account.clone(), regions, Err(failure), None, 0));
                            }
                        },
                        None => (trail::AccountState::default(), None),
                    };
                    let started = Instant::now();
                    let overlap_ms = config.overlap_secs * 1000;
                    let outcome = match org_trail {
                        Some((source, org_id, rules)) => {
                            let reading = match options.backfill {
                                Some(b) => orgtrail::Reading::Backfill { since_ms: b.since_ms, until_ms: b.until_ms },
                                None => orgtrail::Reading::Incremental { first_start_ms: first_start, slack_ms: overlap_ms },
                            };
                            let trail = orgtrail::Trail { source, org_id, rules, sink };
                            Ok(orgtrail::collect_account(&trail, &account, &regions, state, reading, lake_has).await)
                        }
                        None => match aws.account_config(&account).await {
                            Ok(sdk) => {
                                let windows = match options.backfill {
                                    Some(b) => trail::Windows::Backfill { since_ms: b.since_ms, until_ms: b.until_ms },
                                    None => trail::Windows::Incremental { first_start_ms: first_start, overlap_ms, until_ms: run_start_ms },
                                };
                                let lookups = trail::Lookups { watchlist: &config.watchlist, correlations: &mine, pad_ms: config.lookup_pad_secs * 1000, lake_has };
                                Ok(trail::collect_account(&sdk, &limiter, &account, &regions, &lookups, state, windows).await)
                            }
                            Err(failure) => Err(failure),
                        },
                    };
                    Ok::<_, RunError>((
                        account.clone(),
                        regions,
                        outcome,
                        tag,
                        started.elapsed().as_millis() as i64,
                    ))
                }
                .instrument(span)
                .await
            }
        })
        .buffer_unordered(config.concurrency.get())
        .collect()
        .await;

    let mut output = TrailOutput {
        outcomes: Vec::new(),
        checkpoints: Vec::new(),
        files: Vec::new(),
    };
    let mut links = Vec::new();
    let outcome = |account: &str,
                   region: &str,
                   failure: Option<TargetFailure>,
                   stats: Option<&trail::RegionResult>,
                   duration_ms: i64| TargetOutcome {
        account_id: account.to_owned(),
        region: region.to_owned(),
        source: "cloudtrail",
        mode: config.mode.as_str(),
        failure,
        findings_read: stats.map_or(0, |s| s.read),
        findings_written: stats.map_or(0, |s| s.written),
        findings_quarantined: stats.map_or(0, |s| s.quarantined),
        window_start_ms: stats.and_then(|s| s.window).map(|w| w.0),
        window_end_ms: stats.and_then(|s| s.window).map(|w| w.1),
        started_at_ms: run_start_ms,
        duration_ms,
    };
    for result in results {
        let (account, regions, collected, tag, duration_ms) = result?;
        match collected {
            Err(failure) => {
                for region in &regions {
                    output.outcomes.push(outcome(
                        &account,
                        region,
                        Some(failure.clone()),
                        None,
                        duration_ms,
                    ));
                }
            }
            Ok(collected) => {
                for (region, stats) in &collected.regions {
                    output.outcomes.push(outcome(
                        &account,
                        region,
                        stats.failure.clone(),
                        Some(stats),
                        duration_ms,
                    ));
                }
                if options.backfill.is_none() {
                    let body = serde_json::to_string(&collected.state)
                        .map_err(|e| RunError::Encode(e.to_string()))?;
                    output.checkpoints.push(Checkpoint {
                        key: trail::state_key(state_source, &account),
                        body,
                        expected: tag,
                    });
                }
                if org_trail.is_some() {
                    let (read, skipped) = collected.regions.values().fold((0, 0), |(r, s), st| {
                        (r + st.objects_read, s + st.objects_skipped)
                    });
                    info!(account_id = %account, objects_read = read, objects_skipped = skipped, "Read the organization trail.");
                }
                orgtrail::Sink::take(sink, collected.rows, collected.bad);
                links.extend(collected.links);
            }
        }
    }
    links.sort();
    let (files, bad) = event_sink.finish()?;
    let mut kept = 0;
    for file in files {
        kept += file.rows;
        output.files.push((
            file.path,
            format!("cloudtrail_events/dt={}/{}", file.dt, file.name),
        ));
    }
    for (day, path, name) in pq::write_by_dt(
        &links,
        FindingEvent::dt,
        |group| cloudtrail::links_batch(group, run_id),
        work_dir,
        &format!("{run_id}-links"),
    )
    .map_err(RunError::Encode)?
    {
        output
            .files
            .push((path, format!("finding_events/dt={day}/{name}")));
    }
    if let Some((path, count)) = bad {
        let run_dt = DateTime::<Utc>::from_timestamp_millis(run_start_ms)
            .map(|t| t.date_naive())
            .unwrap_or_default();
        warn!(count, "Quarantined malformed CloudTrail records.");
        output.files.push((
            path,
            format!("_quarantine/cloudtrail/dt={run_dt}/{run_id}.jsonl"),
        ));
    }
    info!(
        events = kept,
        links = links.len(),
        "Collected CloudTrail events."
    );
    Ok(output)
}

/// `guardlake compact`: under the run lock, after recovery.
pub async fn compact(
    config: ValidatedConfig,
    options: RunOptions,
    table: Option<String>,
    dt: Option<chrono::NaiveDate>,
) -> Result<Vec<crate::compact::Merged>, RunError> {
    let run_id = uuid::Uuid::now_v7().to_string();
    // Only the lake is touched: no AWS call at all for a local one, S3 alone for a bucket.
    let s3 = || async {
        crate::aws::s3_client(
            &crate::aws::base_config(&config).await,
            options.s3_path_style,
        )
    };
    let store = Arc::new(open_store(&config, s3).await);
    with_lock(&store, &run_id, &config, |_lock| async {
        let work_dir = config.work_dir.join(format!("guardlake-{run_id}"));
        std::fs::create_dir_all(&work_dir).map_err(|e| RunError::Store {
            key: work_dir.display().to_string(),
            message: e.to_string(),
        })?;
        let result = crate::compact::compact(
            &store,
            &run_id,
            &work_dir,
            table.as_deref(),
            dt,
            config.target_file_bytes,
            Utc::now().date_naive(),
        )
        .await;
        let _ = std::fs::remove_dir_all(&work_dir);
        result.map_err(|e| RunError::Publish(e.to_string()))
    })
    .await
}

/// The chains to run (with their windows) and the targets that already failed while planning.
async fn plan(
    aws: &Aws,
    config: &ValidatedConfig,
    store: &Store,
    active: &[String],
    run_start_ms: i64,
    backfill: Option<Backfill>,
) -> Result<(Vec<Chain>, Vec<TargetOutcome>), RunError> {
    let mut chains = Vec::new();
    let mut failed = Vec::new();
    let mode = config.mode.as_str();
    let failure_outcome = |account_id: &str, region: &str, failure: TargetFailure| {
        TargetOutcome::failed(account_id, region, SOURCE, mode, failure, run_start_ms)
    };
    // (detector account, region, members covered in delegated-admin mode)
    type Pair = (String, String, Option<Arc<HashSet<String>>>);
    let mut pairs: Vec<Pair> = Vec::new();
    match config.mode {
        Mode::Member => {
            for account_id in active {
                match discover::regions(aws, config, account_id).await {
                    Ok(regions) => {
                        pairs.extend(regions.into_iter().map(|r| (account_id.clone(), r, None)))
                    }
                    Err(failure) => failed.push(failure_outcome(account_id, "*", failure)),
                }
            }
        }
        Mode::DelegatedAdmin => {
            let admin = config
                .admin_account
                .clone()
                .unwrap_or_else(|| aws.home_account.clone());
            let members: Arc<HashSet<String>> = Arc::new(active.iter().cloned().collect());
            match discover::regions(aws, config, &admin).await {
                Ok(regions) => pairs.extend(
                    regions
                        .into_iter()
                        .map(|r| (admin.clone(), r, Some(members.clone()))),
                ),
                Err(failure) => {
                    for account_id in active {
                        failed.push(failure_outcome(account_id, "*", failure.clone()));
                    }
                }
            }
        }
    }
    for (account_id, region, members) in pairs {
        // One unreadable checkpoint fails its target, not the run.
        let loaded = match state::load(store, SOURCE, &account_id, &region).await {
            Ok(loaded) => loaded,
            Err(e) => {
                let failure = match e.code {
                    Some(_) => crate::error::classify_store("s3:GetObject", &e),
                    None => TargetFailure::new(
                        TargetStatus::Error,
                        "CorruptState",
                        format!("{}: {}; fix or remove it", store.uri(&e.key), e.message),
                    ),
                };
                failed.push(failure_outcome(&account_id, &region, failure));
                continue;
            }
        };
        // A watermark in the future would make the target pull nothing, ever.
        let loaded = loaded.map(|(mut mark, tag)| {
            if mark.watermark_ms > run_start_ms {
                warn!(account_id = %account_id, region = %region, watermark = %iso(mark.watermark_ms), "A checkpoint lies in the future; pulling from now instead.");
                mark.watermark_ms = run_start_ms;
            }
            (mark, tag)
        });
        let window = match (backfill, &loaded) {
            (Some(b), _) => Window {
                start_ms: b.since_ms,
                end_ms: b.until_ms,
            },
            (None, Some((mark, _))) => Window {
                start_ms: mark.watermark_ms - config.overlap_secs * 1000,
                end_ms: run_start_ms,
            },
            (None, None) => Window {
                start_ms: run_start_ms - config.lookback_secs * 1000,
                end_ms: run_start_ms,
            },
        };
        let (mark, mark_tag) = match loaded {
            Some((mark, tag)) => (mark, Some(tag)),
            None => (Watermark::default(), None),
        };
        chains.push(Chain {
            account_id,
            region,
            members,
            window,
            mark,
            mark_tag,
        });
    }
    Ok((chains, failed))
}

fn render_plan(
    config: &ValidatedConfig,
    chains: &[Chain],
    skipped: &[Skipped],
    failed: &[TargetOutcome],
) -> String {
    let mut out = format!(
        "Plan ({} mode, {} chain(s)); nothing will be written.\n",
        config.mode.as_str(),
        chains.len()
    );
    for chain in chains {
        let covers = chain
            .members
            .as_ref()
            .map(|m| format!(" covering {} member account(s)", m.len()))
            .unwrap_or_default();
        let first = if chain.mark.watermark_ms == 0 {
            " (first run: lookback)"
        } else {
            ""
        };
        out += &format!(
            "  {} {:<14} updatedAt [{}, {}){first}{covers}\n",
            chain.account_id,
            chain.region,
            iso(chain.window.start_ms),
            iso(chain.window.end_ms)
        );
    }
    for skip in skipped {
        out += &format!("  skip {}: {}\n", skip.account_id, skip.reason);
    }
    for outcome in failed {
        if let Some(f) = &outcome.failure {
            out += &format!(
                "  fail {} {}: {} ({})\n",
                outcome.account_id,
                outcome.region,
                f.status.as_str(),
                f.message
            );
        }
    }
    out
}

fn progress_bar(len: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} targets {pos}/{len} [{bar:30}] {elapsed}",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

async fn collect_chain(aws: &Aws, chain: Chain, collector: &Collector) -> ChainResult {
    let started = Instant::now();
    let started_at_ms = now_ms();
    let mut counts: HashMap<String, Counts> = HashMap::new();
    let mut new_versions = Vec::new();
    let mut duplicates = 0;
    let published = chain.mark.published_set();
    let mut seen: HashSet<(String, i64)> = HashSet::new();
    let mut passed_over = 0u64;
    let outcome = async {
        let sdk = aws.account_config(&chain.account_id).await?;
        let client = aws.guardduty(&sdk, &chain.region);
        let detector = gd::detector_id(&client).await?;
        gd::collect_findings(&client, &detector, chain.window, |page: Vec<RawFinding>| {
            for finding in page {
                let value = match finding.value {
                    Ok(value) => value,
                    Err(reason) => {
                        let entry = counts.entry(chain.account_id.clone()).or_default();
                        entry.read += 1;
                        entry.quarantined += 1;
                        let bad = Bad { finding_id: finding.requested_id.as_deref(), reason: &reason, raw: &finding.raw, raw_bytes: finding.raw_bytes };
                        quarantine(collector, &chain, bad)?;
                        continue;
                    }
                };
                let id = value.get("id").and_then(|v| v.as_str());
                let account_id = value.get("accountId").and_then(|v| v.as_str()).unwrap_or("");
                // A delegated administrator's detector also lists its members' findings: in
                // member mode those belong to the members' own chains, and in delegated-admin
                // mode only the accounts this run covers count (not excluded or suspended ones).
                let covered = match &chain.members {
                    Some(members) => members.contains(account_id),
                    None => account_id == chain.account_id,
                };
                let mismatch = if !covered && collector.known_accounts.contains(account_id) {
                    passed_over += 1;
                    continue;
                } else if !covered {
                    Some(format!("accountId {account_id:?} is not an account of this target ({}) nor of the organization", chain.account_id))
                } else {
                    match value.get("region").and_then(|v| v.as_str()) {
                        Some(region) if region == chain.region => None,
                        region => Some(format!("region {region:?} is not this target's region ({})", chain.region)),
                    }
                };
                if let Some(reason) = mismatch {
                    let owner = if covered { account_id } else { &chain.account_id };
                    let entry = counts.entry(owner.to_owned()).or_default();
                    entry.read += 1;
                    entry.quarantined += 1;
                    warn!(finding_id = id.unwrap_or("?"), reason = %reason, "Quarantined a finding that does not belong to its target.");
                    let bad = Bad { finding_id: id, reason: &reason, raw: &finding.raw, raw_bytes: finding.raw_bytes };
                    quarantine(collector, &chain, bad)?;
                    continue;
                }
                let account_id = account_id.to_owned();
                let entry = counts.entry(account_id.clone()).or_default();
                entry.read += 1;
                collector.drift.lock().unwrap_or_else(|p| p.into_inner()).record(&value, &account_id, &chain.region, now_ms());
                // The text joins the row only once it is good: a bad one is quarantined as received.
                match normalize(&value, String::new()) {
                    Ok(mut row) => {
                        row.raw = finding.raw;
                        let key = (row.id.clone(), row.updated_at_ms);
                        let in_lake = !collector.existing.is_empty()
                            && collector.existing.contains(&(row.account_id.clone(), row.region.clone(), row.id.clone(), row.updated_at_ms));
                        if in_lake || published.contains(&key) || !seen.insert(key.clone()) {
                            duplicates += 1;
                            continue;
                        }
                        entry.written += 1;
                        new_versions.push(key);
                        if row.access_key_id.is_some() || row.user_name.is_some() {
                            collector.correlations.lock().unwrap_or_else(|p| p.into_inner()).push(Correlation {
                                account_id: row.account_id.clone(),
                                region: row.region.clone(),
                                finding_id: row.id.clone(),
                                updated_at_ms: row.updated_at_ms,
                                access_key_id: row.access_key_id.clone(),
                                user_name: row.user_name.clone(),
                                api: row.api.clone(),
                                first_seen_ms: row.event_first_seen_ms.unwrap_or(row.created_at_ms),
                                last_seen_ms: row.event_last_seen_ms.unwrap_or(row.updated_at_ms),
                            });
                        }
                        let mut writer = collector.writer.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(writer) = writer.as_mut() {
                            if let Err(e) = writer.push(row) {
                                *collector.encode_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                                return Err(TargetFailure::new(TargetStatus::Error, "Encode", e.to_string()));
                            }
                        }
                    }
                    Err(reason) => {
                        entry.quarantined += 1;
                        let reason = reason.to_string();
                        warn!(finding_id = id.unwrap_or("?"), reason = %reason, "Quarantined a malformed finding.");
                        quarantine(collector, &chain, Bad { finding_id: id, reason: &reason, raw: &finding.raw, raw_bytes: finding.raw_bytes })?;
                    }
                }
            }
            crash_point(crate::state::CrashPoint::MidPage);
            Ok(())
        })
        .await
    }
    .await;
    let failure = outcome.err();
    match &failure {
        Some(f) => {
            warn!(status = f.status.as_str(), class = %f.class, message = %f.message, "Target failed.")
        }
        None => info!(rows = new_versions.len(), duplicates, "Target collected."),
    }
    if passed_over > 0 {
        info!(findings = passed_over, "Passed over findings of other organization accounts (this detector administers them; their own targets read them).");
    }
    ChainResult {
        chain,
        started_at_ms,
        duration_ms: started.elapsed().as_millis() as i64,
        failure,
        counts,
        new_versions,
        duplicates,
    }
}

/// What is known of a finding that cannot be used.
struct Bad<'a> {
    finding_id: Option<&'a str>,
    reason: &'a str,
    raw: &'a str,
    raw_bytes: usize,
}

fn quarantine(collector: &Collector, chain: &Chain, bad: Bad<'_>) -> Result<(), TargetFailure> {
    collector
        .quarantine
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(&Quarantined {
            account_id: &chain.account_id,
            region: &chain.region,
            finding_id: bad.finding_id,
            reason: bad.reason,
            raw: bad.raw,
            raw_bytes: bad.raw_bytes,
        })
        .map_err(|e| {
            TargetFailure::new(
                TargetStatus::Error,
                "Quarantine",
                format!("writing the quarantine failed: {e}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invocation_narrows_the_discovered_accounts_and_never_adds_one() {
        let discovered = || discover::Accounts {
            active: vec!["111111111111".into(), "222222222222".into()],
            skipped: vec![Skipped {
                account_id: "333333333333".into(),
                reason: "account state is SUSPENDED".into(),
            }],
        };
        let mut accounts = discovered();
        narrow_accounts(
            &mut accounts,
            &["222222222222".into(), "333333333333".into()],
        )
        .unwrap();
        assert_eq!(accounts.active, ["222222222222"]);
        assert_eq!(accounts.skipped.len(), 1, "a skipped account stays skipped");
        let mut accounts = discovered();
        let err = narrow_accounts(&mut accounts, &["999999999999".into()]).unwrap_err();
        assert!(matches!(err, RunError::Config(_)));
        assert!(err.to_string().contains("999999999999"), "{err}");
    }
}
