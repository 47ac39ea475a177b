//! The GuardDuty source: a target (a chain) is a detector in an account and region. Each
//! finding read is written, skipped as a version the lake has, or quarantined with its text;
//! new versions carry the keys that CloudTrail correlation looks up, and unknown shapes are
//! recorded as schema drift.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::{info, info_span, warn};

use super::canary::{self, CanaryState};
use super::coverage::{Cell, Membership};
use super::writer::{self, RowSink, Writer};
use super::{Collected, Run, Source};
use crate::alerts::history::{self, History, Tracker};
use crate::alerts::rules::label;
use crate::alerts::Candidate;
use crate::clock::{day_of, iso, now_ms};
use crate::config::Mode;
use crate::cpu;
use crate::error::{TargetFailure, TargetStatus};
use crate::normalize::drift::DriftLog;
use crate::normalize::finding_text::Unreadable;
use crate::normalize::guardduty::{FindingVersion, RunStamp};
use crate::report::TargetOutcome;
use crate::sink::parquet::FindingsWriter;
use crate::sink::spill::Spill;
use crate::sink::store::Tag;
use crate::sources::cloudtrail::Correlation;
use crate::sources::guardduty::{self as gd, ReadFinding, Window};
use crate::state::journal::Checkpoint;
use crate::state::{self, crash_point, CrashPoint, Watermark};
use crate::table::{SourceName, Table};

/// One chain of calls: a detector in an account and region. In member mode it covers its own
/// account; in delegated-admin mode it covers every member in `members`.
#[derive(Debug, Clone)]
pub struct Chain {
    pub account_id: String,
    pub region: String,
    pub members: Option<Arc<HashSet<String>>>,
}

impl Chain {
    /// The accounts whose findings this chain reads, sorted.
    pub fn accounts(&self) -> Vec<String> {
        let mut list: Vec<String> = match &self.members {
            Some(members) => members.iter().cloned().collect(),
            None => vec![self.account_id.clone()],
        };
        list.sort();
        list
    }
}

/// The chains of a run, and the targets that failed while planning them (region discovery).
pub async fn targets(run: &Run<'_>, active: &[String]) -> (Vec<Chain>, Vec<TargetOutcome>) {
    let (aws, config) = (run.aws, run.config);
    let failed = |account_id: &str, failure: TargetFailure| {
        TargetOutcome::failed(
            account_id,
            "*",
            SourceName::GuardDuty,
            run.mode(),
            failure,
            run.run_start_ms,
        )
    };
    let mut chains = Vec::new();
    let mut failures = Vec::new();
    match config.mode {
        Mode::Member => {
            for account_id in active {
                match crate::discover::regions(aws, config, account_id).await {
                    Ok(regions) => chains.extend(regions.into_iter().map(|region| Chain {
                        account_id: account_id.clone(),
                        region,
                        members: None,
                    })),
                    Err(failure) => failures.push(failed(account_id, failure)),
                }
            }
        }
        Mode::DelegatedAdmin => {
            let admin = config
                .admin_account
                .clone()
                .unwrap_or_else(|| aws.home_account.clone());
            let members: Arc<HashSet<String>> = Arc::new(active.iter().cloned().collect());
            match crate::discover::regions(aws, config, &admin).await {
                Ok(regions) => chains.extend(regions.into_iter().map(|region| Chain {
                    account_id: admin.clone(),
                    region,
                    members: Some(members.clone()),
                })),
                Err(failure) => failures.extend(active.iter().map(|a| failed(a, failure.clone()))),
            }
        }
    }
    (chains, failures)
}

/// Account → the regions its findings were read in (members × regions in delegated-admin mode).
pub fn covered(chains: &[Chain]) -> BTreeMap<String, Vec<String>> {
    let mut covered: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for chain in chains {
        for account in chain.accounts() {
            covered
                .entry(account)
                .or_default()
                .push(chain.region.clone());
        }
    }
    covered
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

/// The GuardDuty source of one run, shared by its chains.
pub struct Findings<'a> {
    run: &'a Run<'a>,
    rows: RowSink<FindingVersion>,
    /// Quarantined findings, written to the work directory as they come.
    quarantine: Mutex<Spill>,
    /// Every account of the organization (covered or not): a finding of one of them seen
    /// through another account's detector is passed over; any other account id is quarantined.
    known_accounts: HashSet<String>,
    /// Versions the lake already has (backfills): (account_id, region, id, updated_at ms).
    existing: HashSet<(String, String, String, i64)>,
    drift: Mutex<DriftLog>,
    /// New finding versions whose CloudTrail events are looked up.
    correlations: Mutex<Vec<Correlation>>,
    duplicates: AtomicU64,
    /// Every chain's coverage cells.
    cells: Mutex<Vec<Cell>>,
    /// The canary state files of the lake (keys), and the ones this run moves.
    canaries: HashSet<String>,
    /// Canary and alert-history checkpoints of the chains.
    checkpoints: Mutex<Vec<Checkpoint>>,
    /// Whether new versions are compared with the alert history (alerts configured, not a
    /// backfill).
    alerting: bool,
    candidates: Mutex<Vec<Candidate>>,
    severities: Mutex<BTreeMap<String, u64>>,
}

/// What the GuardDuty source hands to the publish once every chain is collected.
pub struct FindingsOutput {
    /// Local files and the lake keys they are published under.
    pub files: Vec<(PathBuf, String)>,
    pub correlations: Vec<Correlation>,
    pub drift: DriftLog,
    pub duplicates: u64,
    pub cells: Vec<Cell>,
    /// Canary states with new arrivals, and alert histories.
    pub checkpoints: Vec<Checkpoint>,
    /// New versions that changed something (alerting runs).
    pub candidates: Vec<Candidate>,
    /// New versions written, by severity label.
    pub severities: BTreeMap<String, u64>,
}

/// Counts of one account within a chain.
#[derive(Default)]
struct Counts {
    read: u64,
    written: u64,
    quarantined: u64,
}

/// What one chain has seen so far.
struct Tally {
    counts: HashMap<String, Counts>,
    /// What the chain learned of each account's coverage, and the newest updatedAt read.
    cells: BTreeMap<String, Cell>,
    newest: HashMap<String, i64>,
    /// The chain's own account × region canaries, their tag, and whether one arrived.
    canary: Option<(CanaryState, Option<Tag>, bool)>,
    published: HashSet<(String, i64)>,
    seen: HashSet<(String, i64)>,
    new_versions: Vec<(String, i64)>,
    duplicates: u64,
    passed_over: u64,
    /// The chain's alert history and candidates (alerting runs).
    alerts: Option<Tracker>,
    severities: BTreeMap<&'static str, u64>,
    /// The current page's new versions, sent to the writer together once the page is taken.
    outgoing: Vec<FindingVersion>,
}

/// What is known of a finding that cannot be used.
struct Bad<'a> {
    finding_id: Option<&'a str>,
    reason: &'a str,
    raw: &'a str,
    raw_bytes: usize,
}

impl<'a> Findings<'a> {
    /// The source and its findings writer (one task, fed through a bounded channel).
    pub async fn new(
        run: &'a Run<'a>,
        known_accounts: HashSet<String>,
    ) -> Result<(Findings<'a>, Writer), crate::error::RunError> {
        // One listing says which targets have canaries to check.
        let canaries = match run.store.list(canary::DIR).await {
            Ok(keys) => keys.into_iter().map(|(key, _)| key).collect(),
            Err(e) => {
                warn!(error = %e, "Could not list the canaries; none is checked this run.");
                HashSet::new()
            }
        };
        // A backfill skips the versions the lake already has in the window's partitions.
        let existing = match run.options.backfill {
            Some(window) => crate::sink::lake::existing_versions(
                run.store,
                run.work_dir,
                day_of(window.since_ms),
                day_of(window.until_ms),
            )
            .await
            .map_err(crate::error::RunError::Encode)?,
            None => HashSet::new(),
        };
        let stamp = RunStamp {
            run_id: run.run_id.to_owned(),
            collected_at_ms: run.run_start_ms,
        };
        // One encoder per thread, each with its own files; rows go to them in batches of an
        // equal share of `flush_bytes`, so about as much is buffered as with one.
        let threads = crate::cpu::threads();
        let writers = (0..threads)
            .map(|k| {
                FindingsWriter::new(
                    run.work_dir.to_owned(),
                    stamp.clone(),
                    run.config.flush_bytes,
                    run.config.target_file_bytes,
                )
                .named(&crate::sink::encoders::stem(run.stem, k, threads))
            })
            .collect();
        let batch_bytes = (run.config.flush_bytes / threads as u64).max(1);
        let (rows, writer) = writer::spawn(writers, batch_bytes);
        let source = Findings {
            run,
            rows,
            quarantine: Mutex::new(Spill::new(run.work_dir.join("quarantine.jsonl"))),
            known_accounts,
            existing,
            drift: Mutex::new(DriftLog::default()),
            correlations: Mutex::new(Vec::new()),
            duplicates: AtomicU64::new(0),
            cells: Mutex::new(Vec::new()),
            canaries,
            checkpoints: Mutex::new(Vec::new()),
            alerting: run.config.alerts.is_some() && run.options.backfill.is_none(),
            candidates: Mutex::new(Vec::new()),
            severities: Mutex::new(BTreeMap::new()),
        };
        Ok((source, writer))
    }

    /// Closes the writer and the quarantine: the files to publish, and what CloudTrail and the
    /// drift report need.
    pub async fn finish(self, writer: Writer) -> Result<FindingsOutput, crate::error::RunError> {
        let Findings {
            rows,
            quarantine,
            drift,
            correlations,
            duplicates,
            run,
            cells,
            checkpoints,
            candidates,
            severities,
            ..
        } = self;
        drop(rows);
        let encoded = writer.finish().await?;
        crash_point(CrashPoint::AfterEncode);
        let mut files: Vec<(PathBuf, String)> = encoded
            .into_iter()
            .map(|f| (f.path, Table::Findings.key(f.dt, &f.name)))
            .collect();
        let spilled = quarantine
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .finish()
            .map_err(crate::error::RunError::from)?;
        if let Some((path, count)) = spilled {
            let key = crate::table::quarantine_key("findings", day_of(run.run_start_ms), run.stem);
            warn!(count, key = %run.store.uri(&key), "Quarantined findings.");
            files.push((path, key));
        }
        Ok(FindingsOutput {
            files,
            correlations: correlations.into_inner().unwrap_or_else(|p| p.into_inner()),
            drift: drift.into_inner().unwrap_or_else(|p| p.into_inner()),
            duplicates: duplicates.into_inner(),
            cells: cells.into_inner().unwrap_or_else(|p| p.into_inner()),
            checkpoints: checkpoints.into_inner().unwrap_or_else(|p| p.into_inner()),
            candidates: candidates.into_inner().unwrap_or_else(|p| p.into_inner()),
            severities: severities.into_inner().unwrap_or_else(|p| p.into_inner()),
        })
    }

    /// The checkpoint after a chain: advanced past its window when it completed; held at its
    /// start, remembering what it published, when it failed partway; none in a backfill.
    fn next_mark(
        &self,
        mark: Watermark,
        window: Window,
        failure: bool,
        new: Vec<(String, i64)>,
    ) -> Option<Watermark> {
        let overlap_ms = self.run.config.overlap_secs * 1000;
        match () {
            _ if self.run.options.backfill.is_some() => None,
            _ if !failure => Some(mark.advance(window.end_ms, overlap_ms, new)),
            _ if !new.is_empty() => Some(mark.hold(window.start_ms, overlap_ms, new)),
            _ => None,
        }
    }

    /// Reads a chain's window, handing each finding to [`Findings::take`].
    async fn read(
        &self,
        chain: &Chain,
        window: Window,
        tally: &mut Tally,
    ) -> Result<(), TargetFailure> {
        let aws = self.run.aws;
        let sdk = aws.account_config(&chain.account_id).await?;
        let client = aws.guardduty(&sdk, &chain.region);
        let detector = gd::detector(&client).await?;
        self.learn(&client, chain, &detector, tally).await;
        detector.readable()?;
        let mut pages = gd::Pages::new(&client, &detector.id, window);
        while let Some(page) = pages.next().await? {
            let taken = cpu::run(move || gd::read_page(page))
                .await
                .into_iter()
                .try_for_each(|read| self.take(chain, read, tally));
            // What was taken before a failure is sent all the same: it counts as written.
            self.rows.send(std::mem::take(&mut tally.outgoing)).await?;
            taken?;
            crash_point(CrashPoint::MidPage);
        }
        Ok(())
    }

    /// The canaries of a chain's own account × region, when the lake has any.
    async fn canary(&self, chain: &Chain) -> Option<(CanaryState, Option<Tag>, bool)> {
        let key = canary::key(&chain.account_id, &chain.region);
        if !self.canaries.contains(&key) {
            return None;
        }
        match super::load_state::<CanaryState>(self.run.store, &key).await {
            Ok((state, tag)) => Some((state, tag, false)),
            Err(failure) => {
                warn!(key = %key, message = %failure.message, "Canary state unreadable; its canaries are not checked this run.");
                None
            }
        }
    }

    /// A new version that answers a pending canary of the chain's own account × region.
    fn note_canary(&self, chain: &Chain, row: &FindingVersion, tally: &mut Tally) {
        if let Some((state, _, arrived)) = &mut tally.canary {
            if row.account_id == chain.account_id && state.arrive(row, self.run.run_start_ms) {
                info!(finding_id = %row.id, "A canary arrived.");
                *arrived = true;
            }
        }
    }

    /// The canary's status into the chain's own cell; its arrivals are committed when the chain
    /// completed.
    fn settle_canary(&self, chain: &Chain, completed: bool, tally: &mut Tally) {
        let Some((state, tag, arrived)) = tally.canary.take() else {
            return;
        };
        let wait_ms = self.run.config.canary_wait_secs * 1000;
        if let Some(cell) = tally.cells.get_mut(&chain.account_id) {
            cell.canary = state.status(self.run.run_start_ms, wait_ms);
        }
        if completed && arrived {
            if let Ok(body) = serde_json::to_string(&state) {
                self.checkpoints
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Checkpoint {
                        key: canary::key(&chain.account_id, &chain.region),
                        body,
                        expected: tag,
                    });
            }
        }
    }

    /// The chain's alert history, when alerting. A finding it does not know is new when
    /// created inside this window (history kept) or since the last run (history started now);
    /// a target's first run alerts nothing as new. An unreadable history turns the chain's
    /// alerts off (and is never overwritten) until it is fixed or removed.
    async fn tracker(&self, chain: &Chain, mark: &Watermark, window: Window) -> Option<Tracker> {
        if !self.alerting {
            return None;
        }
        let key = history::key(&chain.account_id, &chain.region);
        let loaded = super::load_state::<History>(self.run.store, &key)
            .await
            .and_then(|(history, tag)| match history.check() {
                Ok(()) => Ok((history, tag)),
                Err(problem) => Err(TargetFailure::new(
                    TargetStatus::Error,
                    "CorruptState",
                    format!("{}: {problem}", self.run.store.uri(&key)),
                )),
            });
        match loaded {
            Ok((history, tag)) => {
                let first_run = mark.watermark_ms == 0 && mark.published.is_empty();
                let new_from_ms = match (tag.is_some(), first_run) {
                    (true, _) => Some(window.start_ms),
                    (false, false) => Some(mark.watermark_ms),
                    (false, true) => None,
                };
                Some(Tracker::new(history, tag, new_from_ms))
            }
            Err(failure) => {
                warn!(key = %key, message = %failure.message, "Alert history unreadable; this target's alerts are off until it is fixed or removed.");
                None
            }
        }
    }

    /// The chain's alert history (committed with its data) and candidates, and its counts.
    fn settle_alerts(&self, chain: &Chain, tally: &mut Tally) {
        let mut severities = self.severities.lock().unwrap_or_else(|p| p.into_inner());
        for (label, n) in std::mem::take(&mut tally.severities) {
            *severities.entry(label.to_owned()).or_default() += n;
        }
        let Some(tracker) = tally.alerts.take() else {
            return;
        };
        let key = history::key(&chain.account_id, &chain.region);
        let (checkpoint, candidates) = tracker.finish(key, self.run.run_start_ms);
        self.checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(checkpoint);
        self.candidates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(candidates);
    }

    /// What a chain's detector says of coverage: its own (member mode), or in delegated-admin
    /// mode each covered member's relationship, features and agent health. A coverage call that
    /// fails leaves the cells unverified; the findings are read all the same.
    async fn learn(
        &self,
        client: &aws_sdk_guardduty::Client,
        chain: &Chain,
        detector: &gd::Detector,
        tally: &mut Tally,
    ) {
        let mut own = Cell::new(&chain.account_id, &chain.region);
        own.detector_id = Some(detector.id.clone());
        own.detector_status = detector.status.clone();
        own.frequency = detector.frequency.clone();
        own.features = Some(detector.features.clone());
        if gd::runtime_on(&detector.features) && !detector.is_disabled() {
            runtime(client, &detector.id, None, &mut own).await;
        }
        let Some(members) = &chain.members else {
            tally.cells.insert(chain.account_id.clone(), own);
            return;
        };
        own.membership = Some(Membership::Admin);
        let listed = gd::members(client, &detector.id).await;
        let accounts: Vec<String> = chain
            .accounts()
            .into_iter()
            .filter(|a| *a != chain.account_id && members.contains(a))
            .collect();
        let known: Vec<String> = match &listed {
            Ok(listed) => accounts
                .iter()
                .filter(|a| listed.contains_key(*a))
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        };
        let features = gd::member_features(client, &detector.id, &known).await;
        for account in accounts {
            let mut cell = Cell::new(&account, &chain.region);
            match &listed {
                Ok(listed) => {
                    let member = listed.get(&account);
                    cell.membership = Some(Membership::Member(member.map(|m| m.0.clone())));
                    cell.detector_id = member.and_then(|m| m.1.clone());
                }
                Err(f) => cell.unverified = Some(f.class.clone()),
            }
            match &features {
                Ok(found) => cell.features = found.get(&account).cloned(),
                Err(f) => cell.unverified = Some(f.class.clone()),
            }
            if cell.features.as_deref().is_some_and(gd::runtime_on) {
                runtime(client, &detector.id, Some(&account), &mut cell).await;
            }
            tally.cells.insert(account, cell);
        }
        if members.contains(&chain.account_id) {
            tally.cells.insert(chain.account_id.clone(), own);
        }
    }

    /// One finding: quarantined, passed over, skipped as a duplicate, or kept for the writer.
    fn take(
        &self,
        chain: &Chain,
        read: ReadFinding,
        tally: &mut Tally,
    ) -> Result<(), TargetFailure> {
        let ReadFinding {
            finding,
            row,
            who,
            drift,
        } = read;
        if let Err(Unreadable::NotJson(reason) | Unreadable::Unusable(reason)) = &row {
            return self.reject(chain, &chain.account_id, None, reason, &finding, tally);
        }
        let id = who.id.as_deref();
        let owner = match self.owner(chain, who.region.as_deref(), &who.account_id) {
            Ownership::Ours => who.account_id.as_str(),
            Ownership::OtherTarget => {
                tally.passed_over += 1;
                return Ok(());
            }
            Ownership::Wrong { owner, reason } => {
                let owner = if owner {
                    who.account_id.as_str()
                } else {
                    chain.account_id.as_str()
                };
                warn!(finding_id = id.unwrap_or("?"), reason = %reason, "Quarantined a finding that does not belong to its target.");
                return self.reject(chain, owner, id, &reason, &finding, tally);
            }
        };
        self.drift
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record_found(drift, &who.finding_type, owner, &chain.region, now_ms());
        // The text joins the row only once it is good: a bad one is quarantined as received.
        let row = match row {
            Ok(row) => row,
            Err(reason) => {
                let reason = reason.to_string();
                warn!(finding_id = id.unwrap_or("?"), reason = %reason, "Quarantined a malformed finding.");
                return self.reject(chain, owner, id, &reason, &finding, tally);
            }
        };
        // Read, whether new or a version already published.
        tally.counts.entry(owner.to_owned()).or_default().read += 1;
        let newest = tally
            .newest
            .entry(owner.to_owned())
            .or_insert(row.updated_at_ms);
        *newest = (*newest).max(row.updated_at_ms);
        let key = (row.id.clone(), row.updated_at_ms);
        let in_lake = !self.existing.is_empty()
            && self.existing.contains(&(
                row.account_id.clone(),
                row.region.clone(),
                row.id.clone(),
                row.updated_at_ms,
            ));
        if in_lake || tally.published.contains(&key) || !tally.seen.insert(key.clone()) {
            tally.duplicates += 1;
            return Ok(());
        }
        tally.counts.entry(owner.to_owned()).or_default().written += 1;
        tally.new_versions.push(key);
        self.keep(
            chain,
            FindingVersion {
                raw: finding.raw,
                ..row
            },
            tally,
        );
        Ok(())
    }

    /// A new version: counted by severity, seen by the alerts and the canary, correlated, and
    /// kept for the writer with the page's others.
    fn keep(&self, chain: &Chain, row: FindingVersion, tally: &mut Tally) {
        *tally.severities.entry(label(row.severity)).or_default() += 1;
        if let Some(tracker) = &mut tally.alerts {
            tracker.observe(&row);
        }
        self.note_canary(chain, &row, tally);
        if let Some(correlation) = correlation(&row) {
            self.correlations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(correlation);
        }
        tally.outgoing.push(row);
    }

    /// Whether a finding belongs to this chain. A delegated administrator's detector also
    /// lists its members' findings: in member mode those belong to the members' own chains,
    /// and in delegated-admin mode only the accounts this run covers count.
    fn owner(&self, chain: &Chain, region: Option<&str>, account_id: &str) -> Ownership {
        let covered = match &chain.members {
            Some(members) => members.contains(account_id),
            None => account_id == chain.account_id,
        };
        if !covered && self.known_accounts.contains(account_id) {
            return Ownership::OtherTarget;
        }
        if !covered {
            let reason = format!("accountId {account_id:?} is not an account of this target ({}) nor of the organization", chain.account_id);
            return Ownership::Wrong {
                owner: false,
                reason,
            };
        }
        match region {
            Some(region) if region == chain.region => Ownership::Ours,
            region => Ownership::Wrong {
                owner: true,
                reason: format!(
                    "region {region:?} is not this target's region ({})",
                    chain.region
                ),
            },
        }
    }

    /// Counts a finding read and quarantined under `owner`, and keeps it.
    fn reject(
        &self,
        chain: &Chain,
        owner: &str,
        finding_id: Option<&str>,
        reason: &str,
        finding: &gd::RawFinding,
        tally: &mut Tally,
    ) -> Result<(), TargetFailure> {
        let entry = tally.counts.entry(owner.to_owned()).or_default();
        entry.read += 1;
        entry.quarantined += 1;
        let bad = Bad {
            finding_id: finding_id.or(finding.requested_id.as_deref()),
            reason,
            raw: &finding.raw,
            raw_bytes: finding.raw_bytes,
        };
        self.quarantine(chain, bad)
    }

    fn quarantine(&self, chain: &Chain, bad: Bad<'_>) -> Result<(), TargetFailure> {
        self.quarantine
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

    /// A chain's `runs` rows: one per account it covers.
    fn outcomes(
        &self,
        chain: &Chain,
        window: Window,
        failure: Option<TargetFailure>,
        tally: &Tally,
        started: (i64, Instant),
    ) -> Vec<TargetOutcome> {
        chain
            .accounts()
            .into_iter()
            .map(|account_id| {
                let counts = tally.counts.get(&account_id);
                TargetOutcome {
                    region: chain.region.clone(),
                    source: SourceName::GuardDuty,
                    mode: self.run.mode(),
                    failure: failure.clone(),
                    findings_read: counts.map_or(0, |c| c.read),
                    findings_written: counts.map_or(0, |c| c.written),
                    findings_quarantined: counts.map_or(0, |c| c.quarantined),
                    window_start_ms: Some(window.start_ms),
                    window_end_ms: Some(window.end_ms),
                    started_at_ms: started.0,
                    duration_ms: started.1.elapsed().as_millis() as i64,
                    account_id,
                }
            })
            .collect()
    }
}

enum Ownership {
    Ours,
    /// Another covered account's finding, seen through an administrator's detector.
    OtherTarget,
    /// Quarantined; `owner` says whether it counts under the finding's account (else the chain's).
    Wrong {
        owner: bool,
        reason: String,
    },
}

/// Runtime Monitoring agent health into `cell` (a failed call leaves it unverified).
async fn runtime(
    client: &aws_sdk_guardduty::Client,
    detector_id: &str,
    account: Option<&str>,
    cell: &mut Cell,
) {
    match gd::runtime(client, detector_id, account).await {
        Ok(runtime) => cell.runtime = Some(runtime),
        Err(failure) => {
            warn!(account_id = %cell.account_id, class = %failure.class, message = %failure.message, "Could not read Runtime Monitoring coverage.");
            cell.unverified = Some(failure.class);
        }
    }
}

/// The CloudTrail lookup keys of a new version, if it names a principal.
fn correlation(row: &FindingVersion) -> Option<Correlation> {
    if row.access_key_id.is_none() && row.user_name.is_none() {
        return None;
    }
    Some(Correlation {
        account_id: row.account_id.clone(),
        region: row.region.clone(),
        finding_id: row.id.clone(),
        updated_at_ms: row.updated_at_ms,
        access_key_id: row.access_key_id.clone(),
        user_name: row.user_name.clone(),
        api: row.api.clone(),
        first_seen_ms: row.event_first_seen_ms.unwrap_or(row.created_at_ms),
        last_seen_ms: row.event_last_seen_ms.unwrap_or(row.updated_at_ms),
    })
}

/// A checkpoint in the future would make its target pull nothing, ever: pull from now.
fn clamp(mut mark: Watermark, chain: &Chain, now_ms: i64) -> Watermark {
    if mark.watermark_ms > now_ms {
        warn!(account_id = %chain.account_id, region = %chain.region, watermark = %iso(mark.watermark_ms), "A checkpoint lies in the future; pulling from now instead.");
        mark.watermark_ms = now_ms;
    }
    mark
}

impl Source for Findings<'_> {
    type Target = Chain;
    type State = Watermark;

    fn name(&self) -> SourceName {
        SourceName::GuardDuty
    }

    fn state_key(&self, chain: &Chain) -> String {
        state::key(
            SourceName::GuardDuty.as_str(),
            &chain.account_id,
            &chain.region,
        )
    }

    fn cells(&self, chain: &Chain) -> Vec<(String, String)> {
        chain
            .accounts()
            .into_iter()
            .map(|a| (a, chain.region.clone()))
            .collect()
    }

    fn span(&self, chain: &Chain) -> tracing::Span {
        info_span!("target", account_id = %chain.account_id, region = %chain.region, source = SourceName::GuardDuty.as_str())
    }

    async fn collect(&self, chain: &Chain, mark: Watermark) -> Collected<Watermark> {
        let started = (now_ms(), Instant::now());
        let mark = clamp(mark, chain, self.run.run_start_ms);
        let window = window(self.run, &mark);
        let mut tally = Tally {
            counts: HashMap::new(),
            cells: BTreeMap::new(),
            newest: HashMap::new(),
            canary: self.canary(chain).await,
            published: mark.published_set(),
            seen: HashSet::new(),
            new_versions: Vec::new(),
            duplicates: 0,
            passed_over: 0,
            alerts: self.tracker(chain, &mark, window).await,
            severities: BTreeMap::new(),
            outgoing: Vec::new(),
        };
        let failure = self.read(chain, window, &mut tally).await.err();
        match &failure {
            Some(f) => {
                warn!(status = f.status.as_str(), class = %f.class, message = %f.message, "Target failed.")
            }
            None => info!(
                rows = tally.new_versions.len(),
                duplicates = tally.duplicates,
                "Target collected."
            ),
        }
        if tally.passed_over > 0 {
            info!(findings = tally.passed_over, "Passed over findings of other organization accounts (this detector administers them; their own targets read them).");
        }
        self.duplicates
            .fetch_add(tally.duplicates, Ordering::Relaxed);
        let outcomes = self.outcomes(chain, window, failure.clone(), &tally, started);
        self.settle_canary(chain, failure.is_none(), &mut tally);
        self.settle_alerts(chain, &mut tally);
        let cells = chain.accounts().into_iter().map(|account| {
            let mut cell = tally
                .cells
                .remove(&account)
                .unwrap_or_else(|| Cell::new(&account, &chain.region));
            cell.newest_ms = tally.newest.get(&account).copied();
            cell
        });
        self.cells
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(cells);
        let state = self.next_mark(
            mark,
            window,
            failure.is_some(),
            std::mem::take(&mut tally.new_versions),
        );
        Collected { outcomes, state }
    }
}

/// The window a chain reads: a backfill's, else from the checkpoint less the overlap (a first
/// run: the lookback), up to the run's start.
pub fn window(run: &Run<'_>, mark: &Watermark) -> Window {
    let config = run.config;
    let end_ms = run.run_start_ms;
    match run.options.backfill {
        Some(b) => Window {
            start_ms: b.since_ms,
            end_ms: b.until_ms,
        },
        None if mark.watermark_ms > 0 => Window {
            start_ms: mark.watermark_ms - config.overlap_secs * 1000,
            end_ms,
        },
        None => Window {
            start_ms: end_ms - config.lookback_secs * 1000,
            end_ms,
        },
    }
}

/// The window a chain's next collection reads, from its checkpoint, and whether it is a first
/// run (no checkpoint: the lookback).
pub async fn planned_window(run: &Run<'_>, chain: &Chain) -> Result<(Window, bool), TargetFailure> {
    let key = state::key(
        SourceName::GuardDuty.as_str(),
        &chain.account_id,
        &chain.region,
    );
    let (mark, _) = super::load_state::<Watermark>(run.store, &key).await?;
    let mark = clamp(mark, chain, run.run_start_ms);
    Ok((window(run, &mark), mark.watermark_ms == 0))
}

/// A dry run's plan: each chain with the window it would read (its checkpoint is read, nothing
/// is written), the skipped accounts, and the targets that fail already; those failures are
/// returned too, for the exit code.
pub async fn render_plan(
    run: &Run<'_>,
    chains: &[Chain],
    skipped: &[crate::discover::Skipped],
    mut failed: Vec<TargetOutcome>,
) -> (String, Vec<TargetOutcome>) {
    let mut out = format!(
        "Plan ({} mode, {} chain(s)); nothing will be written.\n",
        run.mode().as_str(),
        chains.len()
    );
    for chain in chains {
        let (w, first) = match planned_window(run, chain).await {
            Ok(planned) => planned,
            Err(failure) => {
                failed.extend(chain.accounts().iter().map(|a| {
                    TargetOutcome::failed(
                        a,
                        &chain.region,
                        SourceName::GuardDuty,
                        run.mode(),
                        failure.clone(),
                        run.run_start_ms,
                    )
                }));
                continue;
            }
        };
        let covers = chain
            .members
            .as_ref()
            .map(|m| format!(" covering {} member account(s)", m.len()))
            .unwrap_or_default();
        let first = if first { " (first run: lookback)" } else { "" };
        out += &format!(
            "  {} {:<14} updatedAt [{}, {}){first}{covers}\n",
            chain.account_id,
            chain.region,
            iso(w.start_ms),
            iso(w.end_ms)
        );
    }
    for skip in skipped {
        out += &format!("  skip {}: {}\n", skip.account_id, skip.reason);
    }
    for outcome in &failed {
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
    (out, failed)
}
