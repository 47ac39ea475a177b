//! CloudTrail LookupEvents: the events behind new finding versions (correlated lookups) and a
//! watch-list of security-relevant management events, per account and region.
//!
//! Facts (CloudTrail API reference): management events of the last 90 days only; one region per
//! call; MaxResults ≤ 50; exactly one LookupAttribute per call (EventId, EventName, ReadOnly,
//! Username, ResourceType, ResourceName, EventSource, AccessKeyId); **2 requests/s per account
//! per region**, ThrottlingException above it. Global-service events (IAM, STS, sign-in) are
//! recorded in us-east-1. Every call waits on a per-(account, region) rate limiter (governor)
//! that keeps below the limit; the SDK's retry backs off if a call is throttled anyway.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_cloudtrail::primitives::DateTime as SdkTime;
use aws_sdk_cloudtrail::types::{LookupAttribute, LookupAttributeKey};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::error::{classify, TargetFailure};
use crate::normalize::cloudtrail::{normalize_text, BadRecord, EventRow, FindingEvent};

/// LookupEvents' page limit.
pub const PAGE_SIZE: i32 = 50;
/// CloudTrail keeps management events this long; older events cannot be looked up.
pub const RETENTION_MS: i64 = 90 * 86_400_000;
/// One call per 550 ms per account and region: under the documented 2 requests/s with room
/// for network jitter between the client's clock and the service's.
pub const CALL_PERIOD: Duration = Duration::from_millis(550);

/// Error codes of denied calls. A record is kept as denied when its errorCode is one of these,
/// or ends in `AccessDenied` / `AccessDeniedException` (`VpceAccessDenied`,
/// `KMS.AccessDeniedException`, …), or when it is a failed console sign-in (`ConsoleLogin`
/// with `responseElements.ConsoleLogin = "Failure"`, which has no errorCode).
/// The org-trail mode applies it to every record; LookupEvents cannot search by error code,
/// so the lookup mode keeps the denials its watch-list and correlated lookups return.
pub const DENIED_CODES: [&str; 6] = [
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "Client.UnauthorizedOperation",
    "VpceAccessDenied",
    "UnauthorizedAccess",
];

/// Whether a record is a denied call (see [`DENIED_CODES`]).
pub fn is_denied(row: &EventRow) -> bool {
    if let Some(code) = row.error_code() {
        return DENIED_CODES.contains(&code)
            || code.ends_with("AccessDenied")
            || code.ends_with("AccessDeniedException");
    }
    row.event_name() == Some("ConsoleLogin")
        && row.response_elements().is_some_and(|text| {
            #[derive(Deserialize)]
            struct Login<'a> {
                #[serde(rename = "ConsoleLogin", borrow)]
                outcome: Option<std::borrow::Cow<'a, str>>,
            }
            serde_json::from_str::<Login>(text)
                .is_ok_and(|login| login.outcome.as_deref() == Some("Failure"))
        })
}

/// Event sources recorded in us-east-1 whatever region the caller used.
pub const GLOBAL_SOURCES: [&str; 3] = [
    "iam.amazonaws.com",
    "sts.amazonaws.com",
    "signin.amazonaws.com",
];
pub const GLOBAL_REGION: &str = "us-east-1";

pub type Limiter = governor::DefaultKeyedRateLimiter<(String, String)>;

/// The rate limiter shared by every LookupEvents call of a run.
pub fn limiter() -> Arc<Limiter> {
    let quota = Quota::with_period(CALL_PERIOD)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::MIN);
    Arc::new(RateLimiter::keyed(quota))
}

/// A new finding version whose events are looked up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Correlation {
    pub account_id: String,
    pub region: String,
    pub finding_id: String,
    pub updated_at_ms: i64,
    pub access_key_id: Option<String>,
    pub user_name: Option<String>,
    pub api: Option<String>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

/// Per account: the lookup watermark of each region, the org-trail cursors, and the events
/// already published.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountState {
    /// Lookup mode: per region, the end (epoch ms) of the last watch-list window read.
    #[serde(default)]
    pub watermarks: BTreeMap<String, i64>,
    /// (event id, event time ms) published within CloudTrail's 90-day retention.
    pub published: Vec<(String, i64)>,
    /// Org-trail mode: per `<log type>/<region>` (`CloudTrail/eu-west-1`), where the next
    /// listing starts and the keys read after it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cursors: BTreeMap<String, Cursor>,
    /// Org-trail state of earlier versions (keys read per region); read once into `cursors`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub objects: BTreeMap<String, Vec<String>>,
}

/// The state object of an account; `source` is `cloudtrail` (lookup) or `orgtrail`.
pub fn state_key(source: &str, account_id: &str) -> String {
    format!("_state/{source}/{account_id}.json")
}

/// Where the next listing of one log prefix starts (S3 `StartAfter`), and the keys already read
/// that sort after it, so that none is read twice. Keys are named by delivery time
/// (`YYYY/MM/DD/<account>_CloudTrail_<region>_<YYYYMMDDTHHmmZ>_<random>.json.gz`), so an
/// object delivered late is a new key after those read: listing from shortly before the last
/// key read finds it, and costs what was delivered since, not the days covered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub start_after: String,
    pub recent: Vec<String>,
}

/// A record that could not be used, kept whole with the reason.
#[derive(Debug, Clone, Serialize)]
pub struct BadEvent {
    pub account_id: String,
    pub region: String,
    pub event_id: Option<String>,
    pub reason: String,
    pub raw: String,
}

/// What one account's CloudTrail work produced.
#[derive(Debug, Default)]
pub struct AccountResult {
    pub rows: Vec<EventRow>,
    pub links: Vec<FindingEvent>,
    pub bad: Vec<BadEvent>,
    /// Per region: events read, written, or why it failed.
    pub regions: BTreeMap<String, RegionResult>,
    pub state: AccountState,
}

impl AccountResult {
    /// A region's counts, made on first use (no allocation per record once it exists).
    pub fn region(&mut self, region: &str) -> &mut RegionResult {
        if !self.regions.contains_key(region) {
            self.regions
                .insert(region.to_owned(), RegionResult::default());
        }
        self.regions.get_mut(region).expect("inserted above")
    }

    /// Adds the records counted, the rows and quarantined records, and the links of `part` (an
    /// object read on another thread) to this result.
    pub fn absorb(&mut self, part: AccountResult) {
        for (region, counted) in part.regions {
            let stats = self.region(&region);
            stats.read += counted.read;
            stats.written += counted.written;
            stats.quarantined += counted.quarantined;
        }
        self.rows.extend(part.rows);
        self.bad.extend(part.bad);
        self.links.extend(part.links);
    }
}

#[derive(Debug, Default, Clone)]
pub struct RegionResult {
    pub read: u64,
    pub written: u64,
    pub quarantined: u64,
    /// Org-trail mode: log objects read, and other objects under the log prefix passed over.
    pub objects_read: u64,
    pub objects_skipped: u64,
    pub failure: Option<TargetFailure>,
    pub window: Option<(i64, i64)>,
}

fn to_sdk(ms: i64) -> SdkTime {
    SdkTime::from_millis(ms)
}

/// One LookupEvents query, all pages, each call after the limiter allows it.
async fn lookup(
    client: &aws_sdk_cloudtrail::Client,
    limiter: &Limiter,
    key: &(String, String),
    attribute: LookupAttributeKey,
    value: &str,
    window: (i64, i64),
) -> Result<Vec<Result<EventRow, (BadRecord, String)>>, TargetFailure> {
    let attribute = LookupAttribute::builder()
        .attribute_key(attribute)
        .attribute_value(value)
        .build()
        .map_err(|e| {
            TargetFailure::new(
                crate::error::TargetStatus::Error,
                "BadLookup",
                e.to_string(),
            )
        })?;
    let mut pages = client
        .lookup_events()
        .lookup_attributes(attribute)
        .start_time(to_sdk(window.0))
        .end_time(to_sdk(window.1))
        .max_results(PAGE_SIZE)
        .into_paginator()
        .send();
    let mut events = Vec::new();
    loop {
        limiter.until_key_ready(key).await;
        let Some(page) = pages
            .try_next()
            .await
            .map_err(|e| classify("cloudtrail:LookupEvents", &e))?
        else {
            break;
        };
        for event in page.events() {
            events.push(normalize_text(
                event.cloud_trail_event().unwrap_or_default(),
            ));
        }
    }
    Ok(events)
}

/// Which windows a lookup run reads.
#[derive(Debug, Clone, Copy)]
pub enum Windows {
    /// The watch-list of each region from its watermark less `overlap_ms` (first run: from
    /// `first_start_ms`) to `until_ms`; watermarks advance. An event that shows up in
    /// LookupEvents after its eventTime is caught while it is inside the overlap.
    Incremental {
        first_start_ms: i64,
        overlap_ms: i64,
        until_ms: i64,
    },
    /// A backfill: `[since_ms, until_ms)` in every region; watermarks are left alone.
    Backfill { since_ms: i64, until_ms: i64 },
}

impl Windows {
    fn until_ms(self) -> i64 {
        match self {
            Self::Incremental { until_ms, .. } | Self::Backfill { until_ms, .. } => until_ms,
        }
    }
}

/// What a lookup run looks for, and what it must not add again.
pub struct Lookups<'a> {
    pub watchlist: &'a [String],
    pub correlations: &'a [Correlation],
    /// Time added before a finding's first and after its last sighting, in ms.
    pub pad_ms: i64,
    /// Event ids the lake already has (backfills).
    pub lake_has: &'a HashSet<String>,
}

/// One account's lookups: what it has taken so far, and what it must not add again.
struct AccountLookups<'a> {
    config: &'a aws_config::SdkConfig,
    limiter: &'a Limiter,
    account_id: &'a str,
    /// Event ids published before (the checkpoint's, and in a backfill the lake's).
    published: HashSet<String>,
    seen: EventIds,
    result: AccountResult,
}

/// A usable record taken: its event id, time and name.
type Taken = (String, i64, Option<String>);
/// A watch-list event taken: (region, event id, time, name).
type WatchHit = (String, String, i64, Option<String>);

impl AccountLookups<'_> {
    fn client(&self, region: &str) -> aws_sdk_cloudtrail::Client {
        aws_sdk_cloudtrail::Client::from_conf(
            aws_sdk_cloudtrail::config::Builder::from(self.config)
                .region(aws_config::Region::new(region.to_owned()))
                .build(),
        )
    }

    /// Takes a looked-up record: quarantined when bad, kept once per run and never again once
    /// published.
    fn take(
        &mut self,
        region: &str,
        normalized: Result<EventRow, (BadRecord, String)>,
    ) -> Option<Taken> {
        let row = admit(&mut self.result, self.account_id, region, None, normalized)?;
        let taken = (
            row.event_id().to_owned(),
            row.event_time_ms,
            row.event_name().map(str::to_owned),
        );
        keep_once(&mut self.result, &self.seen, &self.published, region, row);
        Some(taken)
    }

    /// The watch-list in one region: the (event id, time) of each event taken, and the failure
    /// that stopped it, if one did.
    async fn watch(
        &mut self,
        region: &str,
        watchlist: &[String],
        window: (i64, i64),
    ) -> (Vec<(String, i64, Option<String>)>, Option<TargetFailure>) {
        let client = self.client(region);
        let key = (self.account_id.to_owned(), region.to_owned());
        let mut hits = Vec::new();
        for name in watchlist {
            match lookup(
                &client,
                self.limiter,
                &key,
                LookupAttributeKey::EventName,
                name,
                window,
            )
            .await
            {
                Ok(events) => hits.extend(events.into_iter().filter_map(|n| self.take(region, n))),
                Err(failure) => return (hits, Some(failure)),
            }
        }
        (hits, None)
    }

    /// The watch-list in every region, each since its watermark (advanced in `state` where it
    /// completed, in an incremental reading). Returns the (region, event id, time, name) taken.
    async fn watch_regions(
        &mut self,
        regions: &[String],
        watchlist: &[String],
        windows: Windows,
        state: &mut AccountState,
    ) -> Vec<WatchHit> {
        let until_ms = windows.until_ms();
        let mut watch_hits: Vec<WatchHit> = Vec::new();
        for region in regions {
            let start = match windows {
                Windows::Incremental {
                    first_start_ms,
                    overlap_ms,
                    ..
                } => state
                    .watermarks
                    .get(region)
                    .map_or(first_start_ms, |w| w - overlap_ms),
                Windows::Backfill { since_ms, .. } => since_ms,
            }
            .max(until_ms - RETENTION_MS);
            let window = (start, until_ms);
            self.result
                .regions
                .entry(region.clone())
                .or_default()
                .window = Some(window);
            let (hits, failed) = self.watch(region, watchlist, window).await;
            watch_hits.extend(
                hits.into_iter()
                    .map(|(id, time, name)| (region.clone(), id, time, name)),
            );
            match failed {
                Some(failure) => {
                    self.result
                        .regions
                        .entry(region.clone())
                        .or_default()
                        .failure = Some(failure)
                }
                None if matches!(windows, Windows::Incremental { .. }) => {
                    state.watermarks.insert(region.clone(), until_ms);
                }
                None => {}
            }
        }

        watch_hits
    }

    /// The events behind one finding version, in its region and in us-east-1 for global
    /// services, each linked with why; a failed lookup fails its region.
    async fn correlate(
        &mut self,
        finding: &Correlation,
        window: (i64, i64),
        links: &mut BTreeSet<FindingEvent>,
    ) {
        let (attribute, value, reason) = match (&finding.access_key_id, &finding.user_name) {
            (Some(key), _) => (LookupAttributeKey::AccessKeyId, key.clone(), "access_key"),
            (None, Some(user)) => (LookupAttributeKey::Username, user.clone(), "principal"),
            (None, None) => return,
        };
        let mut regions = vec![finding.region.clone()];
        if finding.region != GLOBAL_REGION {
            regions.push(GLOBAL_REGION.to_owned());
        }
        for region in regions {
            let global_only = region != finding.region;
            let key = (self.account_id.to_owned(), region.clone());
            let events = match lookup(
                &self.client(&region),
                self.limiter,
                &key,
                attribute.clone(),
                &value,
                window,
            )
            .await
            {
                Ok(events) => events,
                Err(failure) => {
                    self.result
                        .regions
                        .entry(region.clone())
                        .or_default()
                        .failure
                        .get_or_insert(failure);
                    continue;
                }
            };
            for normalized in events {
                let global = normalized
                    .as_ref()
                    .ok()
                    .and_then(|row| row.event_source())
                    .is_some_and(|source| GLOBAL_SOURCES.contains(&source));
                if global_only && !global {
                    continue;
                }
                if let Some((id, time, name)) = self.take(&region, normalized) {
                    let why = if name.is_some() && name == finding.api {
                        "api"
                    } else {
                        reason
                    };
                    links.insert(link(
                        finding,
                        (&id, &region),
                        why,
                        (name.as_deref(), Some(time)),
                    ));
                }
            }
        }
    }
}

/// Work of one account: the watch-list in each region since its watermark, and the lookups
/// behind each of the account's new finding versions.
pub async fn collect_account(
    config: &aws_config::SdkConfig,
    limiter: &Limiter,
    account_id: &str,
    regions: &[String],
    lookups: &Lookups<'_>,
    mut state: AccountState,
    windows: Windows,
) -> AccountResult {
    let until_ms = windows.until_ms();
    let published = state
        .published
        .iter()
        .map(|(id, _)| id.clone())
        .chain(lookups.lake_has.iter().cloned())
        .collect();
    let mut run = AccountLookups {
        config,
        limiter,
        account_id,
        published,
        seen: EventIds::default(),
        result: AccountResult::default(),
    };

    let watch_hits = run
        .watch_regions(regions, lookups.watchlist, windows, &mut state)
        .await;
    let mut links = BTreeSet::new();
    for finding in lookups.correlations {
        let window = (
            (finding.first_seen_ms - lookups.pad_ms).max(until_ms - RETENTION_MS),
            (finding.last_seen_ms + lookups.pad_ms).min(until_ms),
        );
        if window.0 >= window.1 || (finding.access_key_id.is_none() && finding.user_name.is_none())
        {
            continue;
        }
        run.correlate(finding, window, &mut links).await;
        // Watch-list events of the finding's account and region inside its window.
        for (region, id, time, name) in &watch_hits {
            if *region == finding.region && (window.0..=window.1).contains(time) {
                links.insert(link(
                    finding,
                    (id, region),
                    "watchlist",
                    (name.as_deref(), Some(*time)),
                ));
            }
        }
    }
    let mut result = run.result;
    result.links = links.into_iter().collect();
    remember_published(&mut state, &result.rows, until_ms);
    result.state = state;
    result
}

/// Remembers the events published (this run's and before), within CloudTrail's retention.
fn remember_published(state: &mut AccountState, rows: &[EventRow], until_ms: i64) {
    let keep_from = until_ms - RETENTION_MS;
    let mut published: BTreeMap<String, i64> = state.published.iter().cloned().collect();
    published.extend(
        rows.iter()
            .map(|r| (r.event_id().to_owned(), r.event_time_ms)),
    );
    state.published = published
        .into_iter()
        .filter(|(_, t)| *t >= keep_from)
        .collect();
}

/// Counts a record read in `region`; a record that is not JSON, not an object, or lacks
/// eventID / eventTime (`normalize_text`'s error) is quarantined whole with the reason
/// (prefixed by `origin`, e.g. the object key it came from) and `None` is returned.
pub fn admit(
    result: &mut AccountResult,
    account_id: &str,
    region: &str,
    origin: Option<&str>,
    normalized: Result<EventRow, (BadRecord, String)>,
) -> Option<EventRow> {
    let stats = result.region(region);
    stats.read += 1;
    let (reason, raw) = match normalized {
        Ok(row) => return Some(row),
        Err(bad) => bad,
    };
    stats.quarantined += 1;
    #[derive(serde::Deserialize)]
    struct Id {
        #[serde(rename = "eventID")]
        event_id: Option<String>,
    }
    let event_id = serde_json::from_str::<Id>(&raw)
        .ok()
        .and_then(|id| id.event_id);
    result.bad.push(BadEvent {
        account_id: account_id.to_owned(),
        region: region.to_owned(),
        event_id,
        reason: match origin {
            Some(origin) => format!("{origin}: {reason}"),
            None => reason.to_string(),
        },
        raw,
    });
    None
}

/// Event ids held as 96-bit keyed hashes (two SipHash keys drawn for each set): 12 bytes an
/// id whatever its length, so a run over millions of events stays small. Two different ids
/// are taken for one only on a 96-bit collision of keys nobody outside the process knows
/// (for two million ids, a chance of about 1 in 10^16). The hashes are spread over
/// [`ID_SHARDS`] tables by their top bits, so the set grows one small table at a time: a single
/// table of two million ids would hold its old and its new buckets at once while it grows.
/// Each table has its own lock: the accounts of a run, read at once, share one set.
#[derive(Debug)]
pub struct EventIds {
    keys: (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
    shards: Vec<Mutex<IdTable>>,
}

type IdTable = HashSet<Fingerprint, std::hash::BuildHasherDefault<Prehashed>>;

/// Tables of an [`EventIds`].
const ID_SHARDS: usize = 256;

impl Default for EventIds {
    fn default() -> Self {
        Self {
            keys: Default::default(),
            shards: (0..ID_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl EventIds {
    /// True when `id` was not in the set.
    pub fn insert(&self, id: &str) -> bool {
        use std::hash::BuildHasher;
        let (high, low) = (self.keys.0.hash_one(id), self.keys.1.hash_one(id));
        let shard = (high >> 56) as usize % ID_SHARDS;
        let key = Fingerprint([low as u32, (low >> 32) as u32, high as u32]);
        self.shards[shard]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key)
    }
}

/// An id's 96 bits: 64 of one keyed hash, 32 of the other (its top 8 bits chose the table).
/// Words of 4 bytes, so a table's slot is 12 bytes, not 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u32; 3]);

impl std::hash::Hash for Fingerprint {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(self.0[0]) | (u64::from(self.0[1]) << 32));
    }
}

/// The hasher of an [`EventIds`] table: its keys are already keyed hashes, so a key's first
/// 64 bits are its hash (no second SipHash per id).
#[derive(Debug, Default)]
pub struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
    /// Other input (not used by the set): folded in, FNV-1a style.
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Keeps a record once per run and never again once published, counting it as written.
pub fn keep_once(
    result: &mut AccountResult,
    seen: &EventIds,
    published: &HashSet<String>,
    region: &str,
    row: EventRow,
) {
    if !published.contains(row.event_id()) && seen.insert(row.event_id()) {
        result.region(region).written += 1;
        result.rows.push(row);
    }
}

pub fn link(
    finding: &Correlation,
    (event_id, region): (&str, &str),
    reason: &'static str,
    (event_name, event_time_ms): (Option<&str>, Option<i64>),
) -> FindingEvent {
    FindingEvent {
        event_name: event_name.map(str::to_owned),
        event_time_ms,
        finding_account_id: finding.account_id.clone(),
        finding_region: finding.region.clone(),
        finding_id: finding.finding_id.clone(),
        finding_updated_at_ms: finding.updated_at_ms,
        event_id: event_id.to_owned(),
        event_region: region.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_take_each_id_once_across_every_table() {
        let ids = EventIds::default();
        let sizes = |ids: &EventIds| -> Vec<usize> {
            ids.shards.iter().map(|t| t.lock().unwrap().len()).collect()
        };
        let held = |ids: &EventIds| sizes(ids).iter().sum::<usize>();
        assert_eq!(held(&ids), 0);
        let all: Vec<String> = (0..50_000).map(|i| format!("{i:08x}-event")).collect();
        assert!(all.iter().all(|id| ids.insert(id)));
        assert_eq!(held(&ids), all.len());
        assert!(all.iter().all(|id| !ids.insert(id)));
        assert_eq!(held(&ids), all.len());
        // The ids spread over the tables: none is empty, none holds a tenth of them.
        let sizes = sizes(&ids);
        assert!(
            sizes.iter().all(|&n| n > 0 && n < all.len() / 10),
            "{sizes:?}"
        );
    }

    #[test]
    fn denials_are_recognised_by_every_documented_code_and_failed_sign_ins() {
        let row = |extra: &str| {
            normalize_text(&format!(
                r#"{{"eventID":"e","eventTime":"2026-11-01T00:00:00Z","eventName":"X","awsRegion":"us-east-1","recipientAccountId":"111111111111"{extra}}}"#
            ))
            .unwrap()
        };
        for code in [
            "AccessDenied",
            "AccessDeniedException",
            "UnauthorizedOperation",
            "Client.UnauthorizedOperation",
            "VpceAccessDenied",
            "UnauthorizedAccess",
            "KMS.AccessDeniedException",
            "S3AccessDenied",
        ] {
            assert!(
                is_denied(&row(&format!(r#","errorCode":"{code}""#))),
                "{code}"
            );
        }
        for code in ["ThrottlingException", "NoSuchBucket", "AccessDeniedish"] {
            assert!(
                !is_denied(&row(&format!(r#","errorCode":"{code}""#))),
                "{code}"
            );
        }
        let login = |outcome: &str| {
            normalize_text(&format!(
                r#"{{"eventID":"e","eventTime":"2026-11-01T00:00:00Z","eventName":"ConsoleLogin","awsRegion":"us-east-1","recipientAccountId":"111111111111","responseElements":{{"ConsoleLogin":"{outcome}"}}}}"#
            ))
            .unwrap()
        };
        assert!(is_denied(&login("Failure")));
        assert!(!is_denied(&login("Success")));
        assert!(!is_denied(&row("")));
    }

    #[tokio::test]
    async fn the_limiter_spaces_calls_per_account_and_region() {
        let limiter = limiter();
        let a = ("1".to_owned(), "us-east-1".to_owned());
        let b = ("1".to_owned(), "eu-west-1".to_owned());
        let started = std::time::Instant::now();
        for _ in 0..3 {
            limiter.until_key_ready(&a).await;
        }
        let spaced = started.elapsed();
        assert!(
            spaced >= CALL_PERIOD * 2,
            "three calls in one key take two periods: {spaced:?}"
        );
        let other = std::time::Instant::now();
        limiter.until_key_ready(&b).await;
        assert!(
            other.elapsed() < Duration::from_millis(50),
            "another region has its own budget"
        );
    }
}
