//! The CloudTrail source: a target is an account with the regions its findings were read in.
//! Lookup mode calls LookupEvents (the watch-list per region, and the events behind each new
//! finding version), spaced by one rate limiter; org-trail mode reads the organization
//! trail's objects. Both share the events writer, the links and the quarantine.

use crate::alerts::LinkedEvent;
use crate::config::TrailKeep;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::{info, info_span, warn};

use super::{Collected, Run, Source};
use crate::clock::day_of;
use crate::config::{CloudTrailMode, TrailSource};
use crate::error::{RunError, TargetFailure, TargetStatus};
use crate::normalize::cloudtrail::{self, FindingEvent};
use crate::normalize::guardduty::RunStamp;
use crate::report::TargetOutcome;
use crate::sink::events::EventSink;
use crate::sink::parquet::{self as pq, PartitionWriter};
use crate::sink::spill::Spill;
use crate::sink::store::Store;
use crate::sources::cloudtrail::{
    self as trail, AccountResult, AccountState, Correlation, Limiter,
};
use crate::sources::orgtrail;
use crate::table::{SourceName, Table};

/// One account: the regions covered, and its new finding versions to correlate.
#[derive(Debug, Clone)]
pub struct Account {
    pub account_id: String,
    pub regions: Vec<String>,
    pub correlations: Vec<Correlation>,
    /// Org-trail: per region, the delivery days to read (a distributed run's day batch); a
    /// region not named is read from its cursor on.
    pub days: BTreeMap<String, orgtrail::Days>,
}

/// How the events are read.
enum Reader {
    Lookup(Arc<Limiter>),
    OrgTrail(Box<OrgTrail>),
}

/// Where the organization trail's objects are, the org id in their keys, and what is relevant.
struct OrgTrail {
    trail: Store,
    org_id: String,
    rules: Arc<orgtrail::Rules>,
}

/// The run's CloudTrail rows: one writer per thread, each writing its own files.
fn sink(run: &Run<'_>, dir: std::path::PathBuf, stamp: RunStamp) -> EventSink {
    let config = run.config;
    let writers = crate::cpu::threads();
    let writer = |k: usize| {
        PartitionWriter::new(
            dir.clone(),
            stamp.clone(),
            config.flush_bytes,
            config.target_file_bytes,
        )
        .named(&crate::sink::encoders::stem(run.stem, k, writers))
    };
    EventSink::new(
        writers,
        config.flush_bytes,
        writer,
        Spill::new(run.work_dir.join("quarantine-cloudtrail.jsonl")),
    )
}

/// Local files and the lake keys they are published under.
pub type Files = Vec<(PathBuf, String)>;

/// The CloudTrail source of one run.
pub struct Events<'a> {
    run: &'a Run<'a>,
    reader: Reader,
    /// Event ids the lake already has (backfills add only the others).
    lake_has: Arc<HashSet<String>>,
    /// Shared with the threads that read org-trail objects.
    sink: Arc<EventSink>,
    links: Mutex<Vec<FindingEvent>>,
}

/// The source and its targets, or (no organization id for the trail's keys) every target failed.
pub enum Prepared<'a> {
    Ready(Box<Events<'a>>, Vec<Account>),
    Failed(Vec<TargetOutcome>),
}

/// The targets: every covered account, and every account a finding to correlate names.
pub fn accounts(
    covered: BTreeMap<String, Vec<String>>,
    correlations: Vec<Correlation>,
) -> Vec<Account> {
    let mut by_account: BTreeMap<String, Vec<Correlation>> = BTreeMap::new();
    for correlation in correlations {
        by_account
            .entry(correlation.account_id.clone())
            .or_default()
            .push(correlation);
    }
    let ids: BTreeSet<String> = covered.keys().chain(by_account.keys()).cloned().collect();
    ids.into_iter()
        .map(|account_id| Account {
            regions: covered.get(&account_id).cloned().unwrap_or_default(),
            correlations: by_account.remove(&account_id).unwrap_or_default(),
            days: BTreeMap::new(),
            account_id,
        })
        .collect()
}

impl<'a> Events<'a> {
    /// The source for `targets`; in org-trail mode, `correlations` (every new finding version
    /// of the run) decide which records are relevant, whatever account's trail holds them.
    pub async fn prepare(
        run: &'a Run<'a>,
        targets: Vec<Account>,
        correlations: &[Correlation],
    ) -> Result<Prepared<'a>, RunError> {
        let config = run.config;
        let reader = match (&config.cloudtrail, &config.trail) {
            (CloudTrailMode::OrgTrail, Some(source)) => {
                let org_id = match &config.trail_org_id {
                    Some(id) => id.clone(),
                    None => match organization_id(run.aws).await {
                        Ok(id) => id,
                        Err(failure) => {
                            return Ok(Prepared::Failed(no_org_id(run, &targets, failure)))
                        }
                    },
                };
                let mut rules = orgtrail::Rules::new(
                    &config.watchlist,
                    correlations,
                    config.lookup_pad_secs * 1000,
                );
                rules.keep_all = config.trail_keep == TrailKeep::All;
                Reader::OrgTrail(Box::new(OrgTrail {
                    trail: trail_store(run, source),
                    org_id,
                    rules: Arc::new(rules),
                }))
            }
            _ => Reader::Lookup(trail::limiter()),
        };
        // A backfill adds only the events the lake lacks, and moves no checkpoint.
        let lake_has = match run.options.backfill {
            Some(window) => crate::sink::lake::existing_event_ids(
                run.store,
                run.work_dir,
                day_of(window.since_ms),
                day_of(window.until_ms),
            )
            .await
            .map_err(RunError::Encode)?,
            None => HashSet::new(),
        };
        let stamp = RunStamp {
            run_id: run.run_id.to_owned(),
            collected_at_ms: run.run_start_ms,
        };
        // Its own directory: the findings writer names its files the same way.
        let dir = run.work_dir.join(Table::CloudtrailEvents.name());
        std::fs::create_dir_all(&dir).map_err(|e| RunError::Store {
            key: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let sink = sink(run, dir, stamp);
        let events = Events {
            run,
            reader,
            lake_has: Arc::new(lake_has),
            sink: Arc::new(sink),
            links: Mutex::new(Vec::new()),
        };
        Ok(Prepared::Ready(Box::new(events), targets))
    }

    /// The files to publish (events, links, and the quarantined records), and the best few
    /// links of each finding version for its alert (alerting runs).
    pub fn finish(self) -> Result<(Files, Vec<LinkedEvent>), RunError> {
        let run = self.run;
        let mut links = self.links.into_inner().unwrap_or_else(|p| p.into_inner());
        links.sort();
        // Every object's reading has ended: the last reference to the sink is this one.
        let sink = Arc::try_unwrap(self.sink).map_err(|_| {
            RunError::Encode("the CloudTrail events are still being read".to_owned())
        })?;
        let (written, bad) = sink.finish()?;
        let kept: usize = written.iter().map(|f| f.rows).sum();
        let mut files: Vec<(PathBuf, String)> = written
            .into_iter()
            .map(|f| (f.path, Table::CloudtrailEvents.key(f.dt, &f.name)))
            .collect();
        let by_day = pq::write_by_dt(
            &links,
            FindingEvent::dt,
            |group| cloudtrail::links_batch(group, run.run_id),
            run.work_dir,
            &format!("{}-links", run.stem),
        )
        .map_err(RunError::Encode)?;
        files.extend(
            by_day
                .into_iter()
                .map(|(day, path, name)| (path, Table::FindingEvents.key(day, &name))),
        );
        if let Some((path, count)) = bad {
            warn!(count, "Quarantined malformed CloudTrail records.");
            files.push((
                path,
                crate::table::quarantine_key("cloudtrail", day_of(run.run_start_ms), run.stem),
            ));
        }
        info!(
            events = kept,
            links = links.len(),
            "Collected CloudTrail events."
        );
        let linked = match run.config.alerts.is_some() {
            true => crate::alerts::top_links(links.iter().map(LinkedEvent::from).collect()),
            false => Vec::new(),
        };
        Ok((files, linked))
    }

    fn state_folder(&self) -> &'static str {
        match self.reader {
            Reader::OrgTrail(_) => "orgtrail",
            Reader::Lookup(_) => "cloudtrail",
        }
    }

    /// Reads one account, in the mode of the run.
    async fn read(
        &self,
        account: &Account,
        state: AccountState,
    ) -> Result<AccountResult, TargetFailure> {
        let config = self.run.config;
        let overlap_ms = config.overlap_secs * 1000;
        let first_start_ms = self.run.run_start_ms - config.lookback_secs * 1000;
        let backfill = self.run.options.backfill;
        match &self.reader {
            Reader::OrgTrail(org) => {
                let OrgTrail {
                    trail,
                    org_id,
                    rules,
                } = org.as_ref();
                let reading = match backfill {
                    Some(b) => orgtrail::Reading::Backfill {
                        since_ms: b.since_ms,
                        until_ms: b.until_ms,
                    },
                    None => orgtrail::Reading::Incremental {
                        first_start_ms,
                        slack_ms: overlap_ms,
                    },
                };
                let trail = orgtrail::Trail {
                    source: trail,
                    org_id,
                    rules: rules.clone(),
                    sink: self.sink.clone(),
                };
                Ok(orgtrail::collect_account(
                    &trail,
                    &account.account_id,
                    &account.regions,
                    state,
                    (reading, &account.days),
                    self.lake_has.clone(),
                )
                .await)
            }
            Reader::Lookup(limiter) => {
                let sdk = self.run.aws.account_config(&account.account_id).await?;
                let windows = match backfill {
                    Some(b) => trail::Windows::Backfill {
                        since_ms: b.since_ms,
                        until_ms: b.until_ms,
                    },
                    None => trail::Windows::Incremental {
                        first_start_ms,
                        overlap_ms,
                        until_ms: self.run.run_start_ms,
                    },
                };
                let lookups = trail::Lookups {
                    watchlist: &config.watchlist,
                    correlations: &account.correlations,
                    pad_ms: config.lookup_pad_secs * 1000,
                    lake_has: &self.lake_has,
                };
                Ok(trail::collect_account(
                    &sdk,
                    limiter,
                    &account.account_id,
                    &account.regions,
                    &lookups,
                    state,
                    windows,
                )
                .await)
            }
        }
    }
}

/// The `runs` row of one account × region.
fn outcome(
    run: &Run<'_>,
    account: &str,
    region: &str,
    stats: Option<&trail::RegionResult>,
    failure: Option<TargetFailure>,
    started: (i64, std::time::Instant),
) -> TargetOutcome {
    TargetOutcome {
        account_id: account.to_owned(),
        region: region.to_owned(),
        source: SourceName::CloudTrail,
        mode: run.mode(),
        failure,
        findings_read: stats.map_or(0, |s| s.read),
        findings_written: stats.map_or(0, |s| s.written),
        findings_quarantined: stats.map_or(0, |s| s.quarantined),
        window_start_ms: stats.and_then(|s| s.window).map(|w| w.0),
        window_end_ms: stats.and_then(|s| s.window).map(|w| w.1),
        started_at_ms: started.0,
        duration_ms: started.1.elapsed().as_millis() as i64,
    }
}

impl Source for Events<'_> {
    type Target = Account;
    type State = AccountState;

    fn name(&self) -> SourceName {
        SourceName::CloudTrail
    }

    fn state_key(&self, account: &Account) -> String {
        trail::state_key(self.state_folder(), &account.account_id)
    }

    fn cells(&self, account: &Account) -> Vec<(String, String)> {
        account
            .regions
            .iter()
            .map(|r| (account.account_id.clone(), r.clone()))
            .collect()
    }

    fn span(&self, account: &Account) -> tracing::Span {
        info_span!("target", account_id = %account.account_id, source = SourceName::CloudTrail.as_str())
    }

    async fn collect(&self, account: &Account, state: AccountState) -> Collected<AccountState> {
        let started = (crate::clock::now_ms(), std::time::Instant::now());
        let result = match self.read(account, state).await {
            Ok(result) => result,
            Err(failure) => {
                let outcomes = account
                    .regions
                    .iter()
                    .map(|r| {
                        outcome(
                            self.run,
                            &account.account_id,
                            r,
                            None,
                            Some(failure.clone()),
                            started,
                        )
                    })
                    .collect();
                return Collected {
                    outcomes,
                    state: None,
                };
            }
        };
        let outcomes = result
            .regions
            .iter()
            .map(|(region, stats)| {
                outcome(
                    self.run,
                    &account.account_id,
                    region,
                    Some(stats),
                    stats.failure.clone(),
                    started,
                )
            })
            .collect();
        if let Reader::OrgTrail(_) = self.reader {
            let (read, skipped) = result.regions.values().fold((0, 0), |(r, s), st| {
                (r + st.objects_read, s + st.objects_skipped)
            });
            info!(account_id = %account.account_id, objects_read = read, objects_skipped = skipped, "Read the organization trail.");
        }
        // Org-trail rows were kept against the run's ids as they were read; a lookup's rows
        // were kept once per account, and repeats of another account's are dropped here.
        let rows = match self.reader {
            Reader::OrgTrail(_) => result.rows,
            Reader::Lookup(_) => {
                let ids = orgtrail::Sink::ids(&*self.sink);
                result
                    .rows
                    .into_iter()
                    .filter(|row| ids.insert(row.event_id()))
                    .collect()
            }
        };
        // Filling a buffer encodes it here: off the runtime's other tasks.
        crate::cpu::in_place(|| orgtrail::Sink::take(&*self.sink, rows, result.bad));
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(result.links);
        let state = self.run.options.backfill.is_none().then_some(result.state);
        Collected { outcomes, state }
    }
}

/// Where the organization trail's objects are read from.
fn trail_store(run: &Run<'_>, source: &TrailSource) -> Store {
    match source {
        TrailSource::S3 { bucket, prefix } => Store::S3 {
            client: run.aws.s3(),
            bucket: bucket.clone(),
            prefix: prefix.clone(),
            sse_kms_key_id: None,
            part_bytes: crate::sink::store::MULTIPART_PART_BYTES,
        },
        TrailSource::Local(dir) => Store::Local { root: dir.clone() },
    }
}

/// Without the org id no trail key can be named: every CloudTrail target fails, classified;
/// the findings are still published.
pub fn no_org_id(run: &Run<'_>, targets: &[Account], failure: TargetFailure) -> Vec<TargetOutcome> {
    warn!(status = failure.status.as_str(), message = %failure.message, "No organization id for the trail's keys; CloudTrail targets fail.");
    targets
        .iter()
        .flat_map(|t| t.regions.iter().map(move |region| (&t.account_id, region)))
        .map(|(account, region)| {
            TargetOutcome::failed(
                account,
                region,
                SourceName::CloudTrail,
                run.mode(),
                failure.clone(),
                run.run_start_ms,
            )
        })
        .collect()
}

/// The organization's id (DescribeOrganization), for the org trail's keys; an answer without
/// one is a failure too, never an empty id.
pub async fn organization_id(aws: &crate::aws::Aws) -> Result<String, TargetFailure> {
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
