//! `guardlake run`: discover → targets → collect (bounded concurrency) → publish → state → report.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tracing::{info, info_span, warn, Instrument};

use crate::aws::Aws;
use crate::config::{Mode, Output, ValidatedConfig};
use crate::discover::{self, Skipped};
use crate::error::{RunError, TargetFailure, TargetStatus};
use crate::normalize::guardduty::{normalize, RunStamp};
use crate::report::{self, TargetOutcome, Totals};
use crate::sink::parquet::{self as pq, FindingsWriter};
use crate::sink::store::Store;
use crate::sources::guardduty::{self as gd, RawFinding, Window};
use crate::state::{self, Watermark};

const SOURCE: &str = "guardduty";

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
}

/// A finding that could not be normalized, kept whole under `_quarantine/`.
#[derive(Debug, serde::Serialize)]
struct Quarantined {
    account_id: String,
    region: String,
    finding_id: Option<String>,
    reason: String,
    raw: String,
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
    quarantine: Mutex<Vec<Quarantined>>,
    encode_error: Mutex<Option<String>>,
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn iso(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

pub async fn run(config: ValidatedConfig, s3_path_style: bool) -> Result<RunResult, RunError> {
    let started = Instant::now();
    let run_id = uuid::Uuid::now_v7().to_string();
    let run_start_ms = now_ms();
    let span = info_span!("run", run_id = %run_id);
    async move {
        let aws = Aws::load(&config, &run_id, s3_path_style).await.map_err(RunError::Discovery)?;
        info!(home_account = %aws.home_account, home_region = %aws.home_region, mode = config.mode.as_str(), "Starting run.");
        let store = match &config.output {
            Output::Local(root) => Store::Local { root: root.clone() },
            Output::S3 { bucket, prefix } => Store::S3 { client: aws.s3(), bucket: bucket.clone(), prefix: prefix.clone(), sse_kms_key_id: config.sse_kms_key_id.clone() },
        };
        let accounts = discover::accounts(&aws, &config).await.map_err(RunError::Discovery)?;
        info!(active = accounts.active.len(), skipped = accounts.skipped.len(), "Discovered accounts.");

        let (chains, mut outcomes) = plan(&aws, &config, &store, &accounts.active, run_start_ms).await?;
        if config.dry_run {
            print!("{}", render_plan(&config, &chains, &accounts.skipped, &outcomes));
            return Ok(RunResult { outcomes, published: false });
        }

        let work_dir = config.work_dir.join(format!("guardlake-{run_id}"));
        std::fs::create_dir_all(&work_dir).map_err(|e| RunError::Store { key: work_dir.display().to_string(), message: e.to_string() })?;
        let stamp = RunStamp { run_id: run_id.clone(), collected_at_ms: run_start_ms };
        let collector = Arc::new(Collector {
            writer: Mutex::new(Some(FindingsWriter::new(work_dir.clone(), stamp, config.flush_bytes, config.target_file_bytes))),
            quarantine: Mutex::new(Vec::new()),
            encode_error: Mutex::new(None),
        });

        let progress = progress_bar(chains.len() as u64);
        let results: Vec<ChainResult> = futures::stream::iter(chains)
            .map(|chain| {
                let aws = &aws;
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
        if let Some(message) = collector.encode_error.lock().ok().and_then(|mut e| e.take()) {
            return Err(RunError::Encode(message));
        }

        // Publish: data files, then the report, then quarantine, then the checkpoints.
        let writer = collector.writer.lock().ok().and_then(|mut w| w.take());
        let staged = match writer {
            Some(writer) => writer.finish().map_err(|e| RunError::Encode(e.to_string()))?,
            None => Vec::new(),
        };
        let mut totals = Totals { lake: store.uri(""), ..Totals::default() };
        for file in &staged {
            let key = format!("findings/dt={}/{}", file.dt, file.name);
            totals.bytes += store.create_from_file(&file.path, &key).await.map_err(|e| RunError::Store { key: e.key, message: e.message })?;
            totals.files += 1;
        }

        let mode = config.mode.as_str();
        let mut states = Vec::new();
        for result in results {
            totals.duplicates_skipped += result.duplicates;
            if result.failure.is_none() {
                let mark = result.chain.mark.advance(result.chain.window.end_ms, config.overlap_secs * 1000, result.new_versions);
                states.push((result.chain.account_id.clone(), result.chain.region.clone(), mark));
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

        let run_dt = DateTime::<Utc>::from_timestamp_millis(run_start_ms).map(|t| t.date_naive()).unwrap_or_default();
        let runs = report::runs_batch(&run_id, &outcomes).map_err(|e| RunError::Encode(e.to_string()))?;
        let runs_path = work_dir.join("runs.parquet");
        pq::write_file(&runs_path, &runs).map_err(|e| RunError::Encode(e.to_string()))?;
        let runs_key = format!("runs/dt={run_dt}/{run_id}.parquet");
        totals.bytes += store.create_from_file(&runs_path, &runs_key).await.map_err(|e| RunError::Store { key: e.key, message: e.message })?;
        totals.files += 1;

        let quarantined = std::mem::take(&mut *collector.quarantine.lock().unwrap_or_else(|p| p.into_inner()));
        if !quarantined.is_empty() {
            let lines: String = quarantined.iter().filter_map(|q| serde_json::to_string(q).ok()).map(|l| l + "\n").collect();
            let path = work_dir.join("quarantine.jsonl");
            std::fs::write(&path, lines).map_err(|e| RunError::Store { key: path.display().to_string(), message: e.to_string() })?;
            let key = format!("_quarantine/findings/dt={run_dt}/{run_id}.jsonl");
            store.create_from_file(&path, &key).await.map_err(|e| RunError::Store { key: e.key, message: e.message })?;
            warn!(count = quarantined.len(), key = %store.uri(&key), "Quarantined malformed findings.");
        }

        for (account_id, region, mark) in &states {
            state::save(&store, SOURCE, account_id, region, mark).await.map_err(|e| RunError::Store { key: e.key, message: e.message })?;
        }
        let _ = std::fs::remove_dir_all(&work_dir);

        print!("{}", report::summary(&run_id, &outcomes, &accounts.skipped, &totals, started.elapsed().as_secs_f64()));
        Ok(RunResult { outcomes, published: true })
    }
    .instrument(span)
    .await
}

/// The chains to run (with their windows) and the targets that already failed while planning.
async fn plan(
    aws: &Aws,
    config: &ValidatedConfig,
    store: &Store,
    active: &[String],
    run_start_ms: i64,
) -> Result<(Vec<Chain>, Vec<TargetOutcome>), RunError> {
    let mut chains = Vec::new();
    let mut failed = Vec::new();
    let mode = config.mode.as_str();
    let failure_outcome = |account_id: &str, region: &str, failure: TargetFailure| TargetOutcome {
        account_id: account_id.to_owned(),
        region: region.to_owned(),
        source: SOURCE,
        mode,
        failure: Some(failure),
        findings_read: 0,
        findings_written: 0,
        findings_quarantined: 0,
        window_start_ms: None,
        window_end_ms: None,
        started_at_ms: run_start_ms,
        duration_ms: 0,
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
        let mark = state::load(store, SOURCE, &account_id, &region)
            .await
            .map_err(|e| RunError::Store {
                key: e.key,
                message: e.message,
            })?;
        let start_ms = match &mark {
            Some(mark) => mark.watermark_ms - config.overlap_secs * 1000,
            None => run_start_ms - config.lookback_secs * 1000,
        };
        chains.push(Chain {
            account_id,
            region,
            members,
            window: Window {
                start_ms,
                end_ms: run_start_ms,
            },
            mark: mark.unwrap_or_default(),
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
    let outcome = async {
        let sdk = aws.account_config(&chain.account_id).await?;
        let client = aws.guardduty(&sdk, &chain.region);
        let detector = gd::detector_id(&client).await?;
        gd::collect_findings(&client, &detector, chain.window, |page: Vec<RawFinding>| {
            for finding in page {
                let value = match finding.value {
                    Ok(value) => value,
                    Err(reason) => {
                        counts.entry(chain.account_id.clone()).or_default().quarantined += 1;
                        quarantine(collector, &chain, None, format!("not JSON: {reason}"), finding.raw);
                        continue;
                    }
                };
                let account_id = value.get("accountId").and_then(|v| v.as_str()).unwrap_or(&chain.account_id).to_owned();
                // A delegated administrator's detector also lists its members' findings: in
                // member mode those belong to the members' own chains, and in delegated-admin
                // mode only the accounts this run covers count (not excluded or suspended ones).
                let covered = match &chain.members {
                    Some(members) => members.contains(&account_id),
                    None => account_id == chain.account_id,
                };
                if !covered {
                    continue;
                }
                let entry = counts.entry(account_id.clone()).or_default();
                entry.read += 1;
                match normalize(&value, finding.raw) {
                    Ok(row) => {
                        let key = (row.id.clone(), row.updated_at_ms);
                        if published.contains(&key) || !seen.insert(key.clone()) {
                            duplicates += 1;
                            continue;
                        }
                        entry.written += 1;
                        new_versions.push(key);
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
                        let id = value.get("id").and_then(|v| v.as_str()).map(str::to_owned);
                        warn!(finding_id = id.as_deref().unwrap_or("?"), reason = %reason, "Quarantined a malformed finding.");
                        quarantine(collector, &chain, id, reason.to_string(), value.to_string());
                    }
                }
            }
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

fn quarantine(
    collector: &Collector,
    chain: &Chain,
    finding_id: Option<String>,
    reason: String,
    raw: String,
) {
    collector
        .quarantine
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Quarantined {
            account_id: chain.account_id.clone(),
            region: chain.region.clone(),
            finding_id,
            reason,
            raw,
        });
}
