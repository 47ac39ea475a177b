//! The organization trail's S3 objects: `AWSLogs/<org>/<account>/CloudTrail/<region>/YYYY/MM/DD/*.json.gz`,
//! each `{"Records":[...]}`. The unit of completeness is the object, never an event-time window:
//! delivery is not guaranteed to be prompt, so an object can arrive hours late holding events
//! from before the previous run. Each log object is read exactly once (a [`Cursor`] per account,
//! region and log type) and every relevant event in it is kept, whatever its eventTime;
//! duplicates happen, so events are deduplicated on eventID.
//!
//! An object is decompressed as a stream and split into records by a small scanner that holds
//! one record at a time, never the whole decompressed object. A corrupt gzip stream, a truncated
//! object, or a record that is not an object or lacks eventID / eventTime is quarantined with the
//! object key and the reason; the records before it and the rest of the run go on.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Read;
use std::sync::Arc;

use chrono::{Duration, NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};

use super::cloudtrail::{
    admit, is_denied, keep_once, link, AccountResult, AccountState, BadEvent, Correlation, Cursor,
    EventIds, GLOBAL_REGION, GLOBAL_SOURCES,
};
use crate::clock::day_of;
use crate::error::{classify_store, TargetFailure, TargetStatus};
use crate::normalize::cloudtrail::{normalize_text, BadRecord, EventRow, FindingEvent};
use crate::sink::store::Store;

/// Bytes decompressed per read.
const CHUNK: usize = 256 * 1024;
/// The largest record kept, in bytes of JSON (CloudTrail's own records are at most a few
/// hundred KiB). A larger one is quarantined by size without being held in memory, so one
/// hostile record cannot take the process down.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// Splits a `{"Records":[...]}` document into the raw bytes of each array element, fed in
/// chunks. An element that lies inside one chunk is handed out as a slice of it (no copy); only
/// an element cut by a chunk boundary is assembled in a buffer. String contents are skipped
/// with `memchr`, so the scan touches few bytes one by one.
#[derive(Debug)]
pub struct RecordSplitter {
    /// Records longer than this are reported by size instead of handed out.
    max_record: usize,
    /// Bytes of the current element while it is too long to keep (its bytes are dropped).
    oversized: Option<u64>,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The last string closed at depth 1 (an object key), to recognise `"Records"`.
    last_key: Vec<u8>,
    key_buffer: Option<Vec<u8>>,
    in_records: bool,
    finished: bool,
    /// The start of an element cut by the previous chunk's end.
    carried: Vec<u8>,
    in_element: bool,
}

/// One element of the Records array: its bytes, or `Err(length)` for one over the limit.
pub type Record<'a> = Result<&'a [u8], u64>;

/// What the scanner found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("the object has no Records array")]
    NoRecords,
    #[error("the object ends inside a record (truncated)")]
    Truncated,
}

impl Default for RecordSplitter {
    fn default() -> Self {
        Self::new(MAX_RECORD_BYTES)
    }
}

impl RecordSplitter {
    pub fn new(max_record: usize) -> Self {
        Self {
            max_record,
            oversized: None,
            depth: 0,
            in_string: false,
            escaped: false,
            last_key: Vec::new(),
            key_buffer: None,
            in_records: false,
            finished: false,
            carried: Vec::new(),
            in_element: false,
        }
    }

    /// Feeds bytes; calls `emit` with each complete element of the Records array, or with
    /// `Err(bytes)` for an element longer than the limit (its bytes are never held).
    pub fn feed(&mut self, bytes: &[u8], emit: &mut dyn FnMut(Record<'_>)) {
        // Where the current element starts in `bytes`; `None` while it started in an earlier
        // chunk (its start is in `carried`).
        let mut start: Option<usize> = None;
        let mut i = 0;
        while i < bytes.len() {
            if self.finished {
                return;
            }
            if self.in_string {
                i += self.string(&bytes[i..]);
                continue;
            }
            let b = bytes[i];
            let element_level = self.in_records && self.depth == 2;
            match b {
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 && !self.in_records {
                        self.key_buffer = Some(Vec::new());
                    }
                    if element_level && !self.in_element {
                        // A string element (not an object): captured to be refused by the caller.
                        self.in_element = true;
                        start = Some(i);
                    }
                }
                b'{' | b'[' => {
                    if element_level && !self.in_element {
                        self.in_element = true;
                        start = Some(i);
                    }
                    self.depth += 1;
                    if b == b'[' && self.depth == 2 && self.last_key == b"Records" {
                        self.in_records = true;
                    }
                }
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.in_records && self.in_element && self.depth == 2 {
                        self.element(bytes, start, i + 1, emit);
                    } else if self.in_records && self.depth == 1 {
                        if self.in_element {
                            // A scalar element ends at the array's closing bracket.
                            self.element(bytes, start, i, emit);
                        }
                        self.in_records = false;
                        self.finished = true;
                    }
                }
                b',' if element_level => {
                    if self.in_element {
                        self.element(bytes, start, i, emit);
                    }
                }
                b' ' | b'\n' | b'\r' | b'\t' | b':' | b',' => {}
                _ => {
                    if element_level && !self.in_element {
                        // A scalar element (not an object): captured to be refused by the caller.
                        self.in_element = true;
                        start = Some(i);
                    }
                }
            }
            i += 1;
        }
        if self.in_element {
            self.carry(&bytes[start.unwrap_or(0)..], start.is_some());
        }
    }

    /// Inside a string at the start of `rest`: consumes it up to and including its closing
    /// quote (or all of `rest`), keeping the text of a key being read. Returns the bytes used.
    fn string(&mut self, rest: &[u8]) -> usize {
        if self.escaped {
            self.escaped = false;
            if let Some(key) = self.key_buffer.as_mut() {
                key.push(rest[0]);
            }
            return 1;
        }
        let Some(at) = memchr::memchr2(b'"', b'\\', rest) else {
            if let Some(key) = self.key_buffer.as_mut() {
                key.extend_from_slice(rest);
            }
            return rest.len();
        };
        if let Some(key) = self.key_buffer.as_mut() {
            key.extend_from_slice(&rest[..at]);
        }
        if rest[at] == b'\\' {
            self.escaped = true;
            if let Some(key) = self.key_buffer.as_mut() {
                key.push(b'\\');
            }
        } else {
            self.in_string = false;
            if let Some(key) = self.key_buffer.take() {
                self.last_key = key;
            }
        }
        at + 1
    }

    /// Hands out the element ending before `end` (exclusive) of `bytes`, trimmed; `start` is
    /// where it began in `bytes` (None: in an earlier chunk, its start is in `carried`).
    fn element(
        &mut self,
        bytes: &[u8],
        start: Option<usize>,
        end: usize,
        emit: &mut dyn FnMut(Record<'_>),
    ) {
        self.in_element = false;
        let length = end - start.unwrap_or(0);
        if let Some(before) = self.oversized.take() {
            emit(Err(before + length as u64));
            return;
        }
        match start {
            Some(_) if length > self.max_record => emit(Err(length as u64)),
            Some(s) => emit(Ok(bytes[s..end].trim_ascii())),
            None if self.carried.len() + length > self.max_record => {
                emit(Err((self.carried.len() + length) as u64));
                self.carried.clear();
            }
            None => {
                self.carried.extend_from_slice(&bytes[..end]);
                emit(Ok(self.carried.trim_ascii()));
                self.carried.clear();
            }
        }
    }

    /// Keeps the part of an element that continues in the next chunk (`fresh`: it began in this
    /// one); one over the limit is counted, never held.
    fn carry(&mut self, rest: &[u8], fresh: bool) {
        if let Some(skipped) = self.oversized.as_mut() {
            *skipped += rest.len() as u64;
        } else if self.carried.len() + rest.len() > self.max_record {
            self.oversized = Some((self.carried.len() + rest.len()) as u64);
            self.carried = Vec::new();
        } else if fresh {
            self.carried = rest.to_vec();
        } else {
            self.carried.extend_from_slice(rest);
        }
    }

    /// Whether the document ended cleanly after its Records array.
    pub fn finish(&self) -> Result<(), SplitError> {
        if self.finished {
            Ok(())
        } else if self.in_records || self.in_element || self.depth > 0 {
            Err(SplitError::Truncated)
        } else {
            Err(SplitError::NoRecords)
        }
    }
}

/// Decompresses a `.json.gz` object as a stream and hands each record's bytes to `on_record`
/// (`Err(bytes)` for a record over [`MAX_RECORD_BYTES`]). Returns the number of records, or why
/// the object stopped early (after the records it had).
pub fn read_object(
    compressed: &[u8],
    on_record: &mut dyn FnMut(Record<'_>),
) -> Result<usize, String> {
    let mut decoder = flate2::read::GzDecoder::new(compressed);
    let mut splitter = RecordSplitter::default();
    let mut buffer = vec![0u8; CHUNK];
    let mut count = 0;
    loop {
        let read = match decoder.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(format!("corrupt gzip after {count} records: {e}")),
        };
        splitter.feed(&buffer[..read], &mut |record| {
            count += 1;
            on_record(record);
        });
    }
    splitter
        .finish()
        .map_err(|e| format!("{e} after {count} records"))?;
    Ok(count)
}

/// A record's text: its bytes as UTF-8, or with invalid sequences replaced (the JSON parse then
/// decides whether it is usable). Valid text, the rule, is checked by `from_utf8`'s word-at-a-time
/// pass; `from_utf8_lossy` walks it in chunks and cost 3.6% of a one-thread run.
pub fn record_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// The log types read from the trail: management and data events, and CloudTrail Insights
/// events (rare, and every one relevant). `CloudTrail-Digest/` and other objects are not read.
pub const LOG_KINDS: [&str; 2] = ["CloudTrail", "CloudTrail-Insight"];
const INSIGHT: &str = "CloudTrail-Insight";

/// The prefix of one log type of one account and region:
/// `AWSLogs/<org>/<account>/<kind>/<region>/`, under which keys are `YYYY/MM/DD/<name>`.
pub fn log_prefix(org_id: &str, account_id: &str, kind: &str, region: &str) -> String {
    format!("AWSLogs/{org_id}/{account_id}/{kind}/{region}/")
}

impl Cursor {
    /// After reading `seen` (sorted keys that were listed after `start_after`): the listing
    /// start moves to `slack_ms` before the delivery time of the last key seen (never back),
    /// and `recent` keeps exactly the keys read that the next listing returns again.
    fn advance(&mut self, prefix: &str, seen: &[String], slack_ms: i64) {
        if let Some(start) = seen.last().and_then(|k| back_off(prefix, k, slack_ms)) {
            if start > self.start_after {
                self.start_after = start;
            }
        }
        let after = self.start_after.as_str();
        let mut recent: Vec<String> = std::mem::take(&mut self.recent)
            .into_iter()
            .chain(seen.iter().cloned())
            .filter(|k| k.as_str() > after)
            .collect();
        recent.sort();
        recent.dedup();
        self.recent = recent;
    }
}

/// A listing start `slack_ms` before a key's delivery time: the name's `YYYYMMDDTHHmmZ` when it
/// has one (CloudTrail's names), else the start of its delivery-day folder.
fn back_off(prefix: &str, key: &str, slack_ms: i64) -> Option<String> {
    let day = cursor_day(prefix, key)?;
    let name = key[prefix.len()..].get(11..)?;
    let parts: Vec<&str> = name.split('_').collect();
    let stamp = parts
        .iter()
        .position(|p| p.len() == 14 && NaiveDateTime::parse_from_str(p, "%Y%m%dT%H%MZ").is_ok());
    Some(match stamp {
        Some(at) => {
            let delivered = NaiveDateTime::parse_from_str(parts[at], "%Y%m%dT%H%MZ").ok()?;
            let start = delivered - Duration::milliseconds(slack_ms);
            format!(
                "{prefix}{}/{}_{}",
                start.format("%Y/%m/%d"),
                parts[..at].join("_"),
                start.format("%Y%m%dT%H%MZ")
            )
        }
        None => folder(prefix, day),
    })
}

/// Whether a key under a log prefix is a log object: `YYYY/MM/DD/<name>.json.gz`.
fn is_log_object(prefix: &str, key: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|rest| {
        rest.get(..10)
            .is_some_and(|day| NaiveDate::parse_from_str(day, "%Y/%m/%d").is_ok())
            && rest.get(10..11) == Some("/")
            && rest.ends_with(".json.gz")
            && !rest[11..].contains('/')
            && crate::sink::store::is_safe_key(key)
    })
}

/// How a run reads the trail.
#[derive(Debug, Clone, Copy)]
pub enum Reading {
    /// Every object delivered since the cursor (on a first run, since `first_start_ms`), with
    /// every relevant event in it whatever its eventTime. `slack_ms` is how far before the
    /// last key read the next listing starts (objects can become visible out of order).
    Incremental { first_start_ms: i64, slack_ms: i64 },
    /// A backfill: the objects of the window's delivery days and the day after, events with
    /// eventTime in `[since_ms, until_ms)`; cursors are left alone.
    Backfill { since_ms: i64, until_ms: i64 },
}

/// The delivery days of one region that one reading covers (a distributed run splits a long
/// backlog into day batches): from the cursor, or from the start of day `from` when later; to
/// the end of day `to`, or (None) everything delivered since. The cursor a part returns starts
/// from the one it was given, so the parts of a region merge into the cursor one reading of
/// all of them would leave ([`merge_parts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Days {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
}

/// Objects CloudTrail delivers per log prefix and day at its usual 5-minute cadence: what a
/// plan assumes when it bounds a batch in objects without listing the trail.
pub const DELIVERIES_PER_DAY: u64 = 288;

/// The folder of one delivery day under a log prefix.
fn folder(prefix: &str, day: NaiveDate) -> String {
    format!("{prefix}{}/", day.format("%Y/%m/%d"))
}

/// When a listing start points (its name's delivery minute, else its day folder's start):
/// where a cursor stands, in epoch ms.
pub fn start_ms(prefix: &str, start_after: &str) -> Option<i64> {
    let day = cursor_day(prefix, start_after)?;
    let stamp = start_after[prefix.len()..]
        .get(11..)
        .unwrap_or_default()
        .split('_')
        .find_map(|p| NaiveDateTime::parse_from_str(p, "%Y%m%dT%H%MZ").ok());
    let at = stamp.unwrap_or_else(|| day.and_hms_opt(0, 0, 0).unwrap_or_default());
    Some(at.and_utc().timestamp_millis())
}

/// Where a first reading of a log prefix starts (no cursor yet).
pub fn first_cursor(prefix: &str, first_start_ms: i64, slack_ms: i64) -> Cursor {
    Cursor {
        start_after: folder(prefix, day_of(first_start_ms - slack_ms)),
        recent: Vec::new(),
    }
}

/// The cursors one reading of every part would leave: per region, the parts read (in any
/// order) advance from the same cursor, so the merged start is the furthest one and the keys
/// to skip are those after it. Regions without a part keep `old`'s cursors.
pub fn merge_parts(old: &AccountState, parts: &[(&str, &AccountState)]) -> AccountState {
    let mut merged = AccountState {
        cursors: old.cursors.clone(),
        watermarks: old.watermarks.clone(),
        ..AccountState::default()
    };
    let regions: HashSet<&str> = parts.iter().map(|(r, _)| *r).collect();
    merged
        .cursors
        .retain(|name, _| !regions.contains(cursor_region(name)));
    let mut names: BTreeMap<String, Vec<&Cursor>> = BTreeMap::new();
    for (region, state) in parts {
        for (name, cursor) in &state.cursors {
            if cursor_region(name) == *region {
                names.entry(name.clone()).or_default().push(cursor);
            }
        }
    }
    for (name, cursors) in names {
        let start = cursors
            .iter()
            .map(|c| c.start_after.as_str())
            .max()
            .unwrap_or_default()
            .to_owned();
        let mut recent: Vec<String> = cursors
            .iter()
            .flat_map(|c| c.recent.iter())
            .filter(|k| k.as_str() > start.as_str())
            .cloned()
            .collect();
        recent.sort();
        recent.dedup();
        merged.cursors.insert(
            name,
            Cursor {
                start_after: start,
                recent,
            },
        );
    }
    merged
}

/// The region of a cursor's name (`CloudTrail/eu-west-1`).
fn cursor_region(name: &str) -> &str {
    name.split_once('/').map_or(name, |(_, region)| region)
}

/// The keys after `cursor` in the delivery days of `days`, sorted: an open end is one listing
/// from the later of the cursor and the first day; a closed one lists each day's folder.
async fn list_part(
    source: &Store,
    prefix: &str,
    cursor: &Cursor,
    days: Days,
) -> Result<Vec<(String, u64)>, crate::sink::store::StoreError> {
    let from = days.from.map(|day| folder(prefix, day));
    let start = match &from {
        Some(from) if *from > cursor.start_after => from.as_str(),
        _ => cursor.start_after.as_str(),
    };
    let Some(to) = days.to else {
        return source.list_after(prefix, Some(start)).await;
    };
    let Some(mut day) = days
        .from
        .or_else(|| cursor_day(prefix, &cursor.start_after))
    else {
        return Ok(Vec::new());
    };
    let mut keys = Vec::new();
    while day <= to {
        let listed = source.list(&folder(prefix, day)).await?;
        keys.extend(listed.into_iter().filter(|(k, _)| k.as_str() > start));
        day += Duration::days(1);
    }
    Ok(keys)
}

/// The delivery day a listing start points into.
fn cursor_day(prefix: &str, start_after: &str) -> Option<NaiveDate> {
    let rest = start_after.strip_prefix(prefix)?;
    NaiveDate::parse_from_str(rest.get(..10)?, "%Y/%m/%d").ok()
}

/// Which records of the trail are relevant: the watch-list, error codes of denied calls, and
/// the events of new finding versions (same rules as the lookup mode's correlation).
pub struct Rules {
    pub watchlist: HashSet<String>,
    pub by_key: HashMap<String, Vec<Correlation>>,
    pub by_user: HashMap<String, Vec<Correlation>>,
    pub pad_ms: i64,
    /// Keep every record (`--trail-keep all`), links still made.
    pub keep_all: bool,
}

impl Rules {
    pub fn new(watchlist: &[String], correlations: &[Correlation], pad_ms: i64) -> Self {
        let mut by_key: HashMap<String, Vec<Correlation>> = HashMap::new();
        let mut by_user: HashMap<String, Vec<Correlation>> = HashMap::new();
        for c in correlations {
            match (&c.access_key_id, &c.user_name) {
                (Some(key), _) => by_key.entry(key.clone()).or_default().push(c.clone()),
                (None, Some(user)) => by_user.entry(user.clone()).or_default().push(c.clone()),
                _ => {}
            }
        }
        Self {
            watchlist: watchlist.iter().cloned().collect(),
            by_key,
            by_user,
            pad_ms,
            keep_all: false,
        }
    }

    fn window(&self, c: &Correlation) -> (i64, i64) {
        (c.first_seen_ms - self.pad_ms, c.last_seen_ms + self.pad_ms)
    }

    /// Whether to keep the event, and the finding versions it explains.
    pub fn judge(&self, row: &EventRow) -> (bool, Vec<FindingEvent>) {
        let watched = row.event_name().is_some_and(|n| self.watchlist.contains(n));
        let denied = is_denied(row);
        let global = row
            .event_source()
            .is_some_and(|s| GLOBAL_SOURCES.contains(&s));
        let mut links = Vec::new();
        let mut explain = |candidates: Option<&Vec<Correlation>>, reason: &'static str| {
            for c in candidates.into_iter().flatten() {
                let (start, end) = self.window(c);
                let region_ok =
                    row.region() == c.region || (global && row.region() == GLOBAL_REGION);
                if c.account_id == row.account_id()
                    && region_ok
                    && (start..=end).contains(&row.event_time_ms)
                {
                    let why = if row
                        .event_name()
                        .is_some_and(|n| c.api.as_deref() == Some(n))
                    {
                        "api"
                    } else {
                        reason
                    };
                    links.push(link(
                        c,
                        (row.event_id(), row.region()),
                        why,
                        (row.event_name(), Some(row.event_time_ms)),
                    ));
                }
            }
        };
        if let Some(key) = row.access_key_id() {
            explain(self.by_key.get(key), "access_key");
        }
        if let Some(user) = row.user_name() {
            explain(self.by_user.get(user), "principal");
        }
        if watched {
            for c in self.by_key.values().chain(self.by_user.values()).flatten() {
                let (start, end) = self.window(c);
                if c.account_id == row.account_id()
                    && c.region == row.region()
                    && (start..=end).contains(&row.event_time_ms)
                {
                    links.push(link(
                        c,
                        (row.event_id(), row.region()),
                        "watchlist",
                        (row.event_name(), Some(row.event_time_ms)),
                    ));
                }
            }
        }
        (
            self.keep_all || watched || denied || !links.is_empty(),
            links,
        )
    }
}

/// Records handed to the sink at a time while an object is read: an object of a million
/// records never sits in memory as rows.
const SINK_BATCH: usize = 4096;

/// What [`Taking`] keeps of an object's records.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    /// Only events with eventTime in `[start, end)` (backfills); `None`: every event.
    pub window: Option<(i64, i64)>,
    /// Every event, relevant or not (Insights events).
    pub all: bool,
}

/// Where one object's records go: the account's counts, its event ids, what is relevant.
pub struct Taking<'a> {
    pub result: &'a mut AccountResult,
    /// The run's event ids (every account's): a record another account's trail also holds is
    /// a duplicate, as one read twice here is.
    pub seen: &'a EventIds,
    pub published: &'a HashSet<String>,
    pub rules: &'a Rules,
    pub account_id: &'a str,
    pub region: &'a str,
    pub key: &'a str,
    pub keep: Keep,
    pub sink: &'a dyn Sink,
}

/// One record, parsed: a row, or why it is quarantined (with its text).
pub type Parsed = Result<EventRow, (BadRecord, String)>;

/// The parse of a record's bytes (`Err(length)`: over [`MAX_RECORD_BYTES`]).
fn parse(record: Record<'_>) -> Parsed {
    match record {
        Ok(bytes) => normalize_text(&record_text(bytes)),
        Err(length) => Err((BadRecord::TooLarge(length), String::new())),
    }
}

impl Taking<'_> {
    /// One record: counted, and kept once per run (never again once published) when relevant.
    fn record(&mut self, parsed: Parsed, links: &mut Vec<FindingEvent>) {
        let Some(row) = admit(
            self.result,
            self.account_id,
            self.region,
            Some(self.key),
            parsed,
        ) else {
            return;
        };
        if self
            .keep
            .window
            .is_some_and(|(start, end)| !(start..end).contains(&row.event_time_ms))
        {
            return;
        }
        let (relevant, found) = self.rules.judge(&row);
        links.extend(found);
        if relevant || self.keep.all {
            keep_once(self.result, self.seen, self.published, self.region, row);
        }
        if self.result.rows.len() + self.result.bad.len() >= SINK_BATCH {
            self.sink.take(
                std::mem::take(&mut self.result.rows),
                std::mem::take(&mut self.result.bad),
            );
        }
    }

    /// After the last record: a broken object is quarantined by key, the rest goes to the sink.
    fn finish(self, outcome: Result<usize, String>, links: Vec<FindingEvent>) {
        if let Err(reason) = outcome {
            let stats = self
                .result
                .regions
                .entry(self.region.to_owned())
                .or_default();
            stats.quarantined += 1;
            self.result.bad.push(BadEvent {
                account_id: self.account_id.to_owned(),
                region: self.region.to_owned(),
                event_id: None,
                reason: format!("{}: {reason}", self.key),
                raw: String::new(),
            });
        }
        self.result.links.extend(links);
        self.sink.take(
            std::mem::take(&mut self.result.rows),
            std::mem::take(&mut self.result.bad),
        );
    }

    /// Reads one object's records as a stream (never the whole object in memory).
    pub fn object(mut self, compressed: &[u8]) {
        let mut links = Vec::new();
        let outcome = read_object(compressed, &mut |record| {
            self.record(parse(record), &mut links)
        });
        self.finish(outcome, links);
    }
}

/// One object's reading, owning what it needs so that it can run on any thread: its rows and
/// quarantined records go straight to the sink as they are parsed (4,096 at a time, never the
/// whole object), and what comes back is the counts and links, for the account to add up in
/// key order.
pub struct ObjectJob {
    pub rules: Arc<Rules>,
    pub sink: Arc<dyn Sink>,
    pub published: Arc<HashSet<String>>,
    pub account_id: String,
    pub region: String,
    pub key: String,
    pub keep: Keep,
}

impl ObjectJob {
    /// Reads the object (gzip, split, parse, keep) and returns its counts and links.
    pub fn run(self, compressed: &[u8]) -> AccountResult {
        let mut result = AccountResult::default();
        Taking {
            result: &mut result,
            seen: self.sink.ids(),
            published: &self.published,
            rules: &self.rules,
            account_id: &self.account_id,
            region: &self.region,
            key: &self.key,
            keep: self.keep,
            sink: &*self.sink,
        }
        .object(compressed);
        result
    }
}

/// Where kept events and quarantined records go, object by object, so that an account with
/// millions of events is never held in memory.
pub trait Sink: Send + Sync {
    /// Rows already kept once ([`Sink::ids`] said each was new), and quarantined records.
    fn take(&self, rows: Vec<EventRow>, bad: Vec<BadEvent>);
    /// The event ids of the run so far, shared by every account.
    fn ids(&self) -> &EventIds;
}

/// Where one account's objects are, what is relevant in them, and where it goes.
pub struct Trail<'a> {
    pub source: &'a Store,
    pub org_id: &'a str,
    pub rules: Arc<Rules>,
    pub sink: Arc<dyn Sink>,
}

/// An object of a reading, in key order: not a log object, gone since the listing, fetched (to
/// be read in place when its turn comes, with one thread), or being read on another thread.
enum Pending {
    NotALog,
    Gone,
    Fetched(Vec<u8>),
    Reading(futures::future::BoxFuture<'static, AccountResult>),
}

/// One account's reading: what it produced, and the event ids to skip (a backfill's: the lake's).
struct Reader<'a> {
    trail: &'a Trail<'a>,
    account_id: &'a str,
    /// Per region, the delivery days to read (a region not named: all since its cursor).
    days: &'a BTreeMap<String, Days>,
    result: AccountResult,
    published: Arc<HashSet<String>>,
}

impl Reader<'_> {
    /// Incremental reading of one region: each log kind from its cursor (the cursors are
    /// moved in `state`). Returns the failure that stopped it, and whether a CloudTrail log
    /// object was ever found there (false only when nothing failed and none ever was).
    async fn read_cursors(
        &mut self,
        state: &mut AccountState,
        region: &str,
        kinds: &[&str],
        (first_start_ms, slack_ms): (i64, i64),
    ) -> (Option<TargetFailure>, bool) {
        let mut found = true;
        for kind in kinds {
            let name = format!("{kind}/{region}");
            let had = state.cursors.remove(&name);
            let (cursor, failed) = self
                .read_since_cursor(kind, region, had, first_start_ms, slack_ms)
                .await;
            match cursor {
                Some(cursor) => {
                    state.cursors.insert(name, cursor);
                }
                None if *kind != INSIGHT && failed.is_none() => found = false,
                None => {}
            }
            if failed.is_some() {
                return (failed, found);
            }
        }
        (None, found)
    }

    /// Fails the regions where no CloudTrail log object was ever found, saying what is there.
    async fn not_found(&mut self, regions: Vec<String>) {
        let there = self.what_is_there().await;
        for region in regions {
            let prefix = log_prefix(self.trail.org_id, self.account_id, "CloudTrail", &region);
            self.result.regions.entry(region).or_default().failure = Some(TargetFailure::new(
                TargetStatus::TrailNotFound,
                "TrailNotFound",
                format!(
                    "no CloudTrail log object was ever found under {}; {there}. Check --trail-org-id, --trail-prefix and that the organization trail logs this account and region",
                    self.trail.source.uri(&prefix)
                ),
            ));
        }
    }

    /// Reads the log objects among `keys` (sorted) not in `skip`; returns the keys handled (read
    /// or skipped as non-log, in key order), and the classified failure that stopped it, if one
    /// did. Up to [`crate::cpu::threads`] objects are fetched and read at once on other threads
    /// while this task adds up the earlier ones' counts, in key order.
    async fn read_keys(
        &mut self,
        region: &str,
        prefix: &str,
        keys: Vec<(String, u64)>,
        skip: &HashSet<&str>,
        keep: Keep,
    ) -> (Vec<String>, Option<TargetFailure>) {
        let mut handled = Vec::new();
        let mut ahead: VecDeque<(String, Pending)> = VecDeque::new();
        let mut keys = keys
            .into_iter()
            .filter(|(key, _)| !skip.contains(key.as_str()));
        let mut failure = None;
        // One thread: each object is streamed in place, as it comes.
        let (depth, elsewhere) = match crate::cpu::threads() {
            1 => (1, false),
            threads => (threads, true),
        };
        loop {
            while failure.is_none() && ahead.len() < depth {
                let Some((key, _)) = keys.next() else { break };
                if !is_log_object(prefix, &key) {
                    ahead.push_back((key, Pending::NotALog));
                    continue;
                }
                match self.trail.source.get(&key).await {
                    Ok(Some(bytes)) if elsewhere => {
                        let job = self.job(region, &key, keep);
                        let reading = crate::cpu::submit(move || job.run(&bytes));
                        ahead.push_back((key, Pending::Reading(Box::pin(reading))));
                    }
                    Ok(Some(bytes)) => ahead.push_back((key, Pending::Fetched(bytes))),
                    Ok(None) => ahead.push_back((key, Pending::Gone)),
                    Err(e) => failure = Some(classify_store("s3:GetObject", &e)),
                }
            }
            let Some((key, pending)) = ahead.pop_front() else {
                break;
            };
            self.take(region, &key, keep, pending).await;
            handled.push(key);
        }
        (handled, failure)
    }

    /// The reading of one object of this account.
    fn job(&self, region: &str, key: &str, keep: Keep) -> ObjectJob {
        ObjectJob {
            rules: self.trail.rules.clone(),
            sink: self.trail.sink.clone(),
            published: self.published.clone(),
            account_id: self.account_id.to_owned(),
            region: region.to_owned(),
            key: key.to_owned(),
            keep,
        }
    }

    /// One object of [`Reader::read_keys`], in key order: its counts and links added to the
    /// account's.
    async fn take(&mut self, region: &str, key: &str, keep: Keep, pending: Pending) {
        let read = match pending {
            Pending::NotALog => {
                self.result.region(region).objects_skipped += 1;
                return;
            }
            Pending::Gone => return,
            // Reading may encode a full buffer of rows: off the runtime's other tasks.
            Pending::Fetched(bytes) => {
                let job = self.job(region, key, keep);
                crate::cpu::in_place(|| job.run(&bytes))
            }
            Pending::Reading(reading) => reading.await,
        };
        self.result.region(region).objects_read += 1;
        self.result.absorb(read);
    }

    /// Incremental: the objects listed after the cursor of `kind` in `region`. A region whose
    /// trail prefix never held an object has no cursor, and `None` comes back when still none.
    async fn read_since_cursor(
        &mut self,
        kind: &str,
        region: &str,
        cursor: Option<Cursor>,
        first_start_ms: i64,
        slack_ms: i64,
    ) -> (Option<Cursor>, Option<TargetFailure>) {
        let prefix = log_prefix(self.trail.org_id, self.account_id, kind, region);
        let existed = cursor.is_some();
        let mut cursor = cursor.unwrap_or_else(|| first_cursor(&prefix, first_start_ms, slack_ms));
        let days = self.days.get(region).copied().unwrap_or_default();
        let listed = match list_part(self.trail.source, &prefix, &cursor, days).await {
            Ok(keys) => keys,
            // A region that never had a cursor gets none from a failed listing either, so it
            // is still reported as not found once the listing works and finds nothing.
            Err(e) => {
                let failure = classify_store("s3:ListObjectsV2", &e);
                return (existed.then_some(cursor), Some(failure));
            }
        };
        let found = existed || !listed.is_empty();
        let keep = Keep {
            window: None,
            all: kind == INSIGHT,
        };
        let skip: HashSet<&str> = cursor.recent.iter().map(String::as_str).collect();
        let (handled, failure) = self.read_keys(region, &prefix, listed, &skip, keep).await;
        cursor.advance(&prefix, &handled, slack_ms);
        (found.then_some(cursor), failure)
    }

    /// Backfill: every object of the window's delivery days (and the day after).
    async fn read_window(
        &mut self,
        region: &str,
        kinds: &[&str],
        (since_ms, until_ms): (i64, i64),
    ) -> Option<TargetFailure> {
        let (first, last) = (day_of(since_ms), day_of(until_ms) + Duration::days(1));
        for kind in kinds {
            let prefix = log_prefix(self.trail.org_id, self.account_id, kind, region);
            let keep = Keep {
                window: Some((since_ms, until_ms)),
                all: *kind == INSIGHT,
            };
            let mut day = first;
            while day <= last {
                let folder = folder(&prefix, day);
                let keys = match self.trail.source.list(&folder).await {
                    Ok(keys) => keys,
                    Err(e) => return Some(classify_store("s3:ListObjectsV2", &e)),
                };
                if let (_, Some(failure)) = self
                    .read_keys(region, &prefix, keys, &HashSet::new(), keep)
                    .await
                {
                    return Some(failure);
                }
                day += Duration::days(1);
            }
        }
        None
    }

    /// What the trail holds near where this account's logs were expected, for the message
    /// of a `trail_not_found` target.
    async fn what_is_there(&self) -> String {
        let source = self.trail.source;
        let candidates = [
            format!(
                "AWSLogs/{}/{}/CloudTrail/",
                self.trail.org_id, self.account_id
            ),
            format!("AWSLogs/{}/", self.trail.org_id),
            "AWSLogs/".to_owned(),
            String::new(),
        ];
        for prefix in &candidates {
            match source.list_children(prefix).await {
                Ok(names) if !names.is_empty() => {
                    let shown: Vec<&str> = names.iter().take(10).map(String::as_str).collect();
                    let more = names.len().saturating_sub(shown.len());
                    let more = if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    };
                    return format!("{} holds: {}{more}", source.uri(prefix), shown.join(", "));
                }
                Ok(_) => {}
                Err(e) => return format!("listing {} failed: {}", source.uri(prefix), e.message),
            }
        }
        format!("{} is empty", source.uri(""))
    }
}

/// The org trail of one account: per covered region, the log objects not read before (or, in
/// a backfill, those of the window's days), relevant records kept once.
pub async fn collect_account(
    trail: &Trail<'_>,
    account_id: &str,
    regions: &[String],
    state: AccountState,
    (reading, days): (Reading, &BTreeMap<String, Days>),
    lake_has: Arc<HashSet<String>>,
) -> AccountResult {
    let mut reader = Reader {
        trail,
        account_id,
        days,
        result: AccountResult::default(),
        // Objects, not event ids, are what a cursor remembers: only a backfill skips ids.
        published: lake_has,
    };
    // Ids published by versions that kept them: the cursor makes them unneeded, and they grew
    // with every event.
    let mut state = normalized(state, trail.org_id, account_id);
    // Insights are on for few trails and regions: one listing per account says which.
    let insight_regions: HashSet<String> = trail
        .source
        .list_children(&format!("AWSLogs/{}/{account_id}/{INSIGHT}/", trail.org_id))
        .await
        .map(|names| names.into_iter().collect())
        .unwrap_or_default();
    let mut not_found = Vec::new();
    for region in regions {
        reader.result.region(region);
        let kinds: Vec<&str> = LOG_KINDS
            .into_iter()
            .filter(|k| *k != INSIGHT || insight_regions.contains(region))
            .collect();
        let failure = match reading {
            Reading::Backfill { since_ms, until_ms } => {
                reader.result.region(region).window = Some((since_ms, until_ms));
                reader
                    .read_window(region, &kinds, (since_ms, until_ms))
                    .await
            }
            Reading::Incremental {
                first_start_ms,
                slack_ms,
            } => {
                let since = (first_start_ms, slack_ms);
                let (failure, found) = reader.read_cursors(&mut state, region, &kinds, since).await;
                if !found {
                    not_found.push(region.clone());
                }
                failure
            }
        };
        reader.result.region(region).failure = failure;
    }
    if !not_found.is_empty() {
        reader.not_found(not_found).await;
    }
    let mut result = reader.result;
    result.links.sort();
    result.links.dedup();
    result.state = state;
    result
}

/// An account's state as a reading starts from it (and leaves regions it does not read):
/// legacy object lists become cursors, published ids are dropped.
pub fn normalized(mut state: AccountState, org_id: &str, account_id: &str) -> AccountState {
    migrate_legacy_objects(&mut state, org_id, account_id);
    state.published.clear();
    state
}

/// State written before object cursors kept, per region, the keys read in the last window's
/// delivery days: they become the cursor's `recent` keys, listed from the earliest day.
fn migrate_legacy_objects(state: &mut AccountState, org_id: &str, account_id: &str) {
    for (region, mut keys) in std::mem::take(&mut state.objects) {
        let name = format!("CloudTrail/{region}");
        if keys.is_empty() || state.cursors.contains_key(&name) {
            continue;
        }
        keys.sort();
        let prefix = log_prefix(org_id, account_id, "CloudTrail", &region);
        let first_day = keys[0]
            .strip_prefix(&prefix)
            .and_then(|rest| rest.get(..10))
            .map(|day| format!("{prefix}{day}/"))
            .unwrap_or_else(|| prefix.clone());
        keys.retain(|k| k.as_str() > first_day.as_str());
        state.cursors.insert(
            name,
            Cursor {
                start_after: first_day,
                recent: keys,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn split(text: &str, chunk: usize) -> (Vec<String>, Result<(), SplitError>) {
        let mut splitter = RecordSplitter::default();
        let mut out = Vec::new();
        for piece in text.as_bytes().chunks(chunk) {
            splitter.feed(piece, &mut |r| {
                out.push(String::from_utf8(r.unwrap().to_vec()).unwrap())
            });
        }
        (out, splitter.finish())
    }

    #[test]
    fn records_are_split_whatever_the_chunk_size() {
        let doc = r#"{"Other":{"Records":[9]},"Records":[{"eventID":"a","x":"}],\"{"},{"eventID":"b","y":[1,{"z":"]"}]} , 7 ,"s"]}"#;
        for chunk in [1, 2, 3, 7, 64] {
            let (records, end) = split(doc, chunk);
            assert_eq!(
                records,
                vec![
                    r#"{"eventID":"a","x":"}],\"{"}"#,
                    r#"{"eventID":"b","y":[1,{"z":"]"}]}"#,
                    "7",
                    r#""s""#
                ],
                "chunk {chunk}"
            );
            assert_eq!(end, Ok(()));
        }
    }

    proptest::proptest! {
        /// Whatever the records hold (quotes, backslashes, brackets, unicode in strings) and
        /// wherever the chunks are cut, each element comes out whole, in order.
        #[test]
        fn any_records_any_chunks(
            texts in proptest::collection::vec("[a-z\"\\\\{}\\[\\],:é ]{0,12}", 0..20),
            chunk in 1usize..200,
        ) {
            let records: Vec<serde_json::Value> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| match i % 3 {
                    0 => serde_json::json!({"eventID": t, "nested": {"list": [t, 1, null]}}),
                    1 => serde_json::json!({"eventID": format!("{i}"), t.clone(): [t]}),
                    _ => serde_json::json!(t),
                })
                .collect();
            let doc = serde_json::json!({"Before": {"Records": [1]}, "Records": records}).to_string();
            let (out, end) = split(&doc, chunk);
            proptest::prop_assert_eq!(end, Ok(()));
            let parsed: Vec<serde_json::Value> =
                out.iter().map(|r| serde_json::from_str(r).unwrap()).collect();
            proptest::prop_assert_eq!(parsed, records);
        }
    }

    const PREFIX: &str = "AWSLogs/o-1/111111111111/CloudTrail/eu-west-1/";

    fn key(day: &str, minute: &str, salt: &str) -> String {
        format!(
            "{PREFIX}{day}/111111111111_CloudTrail_eu-west-1_{}T{minute}Z_{salt}.json.gz",
            day.replace('/', "")
        )
    }

    #[test]
    fn the_listing_starts_the_slack_before_the_last_delivery_and_never_goes_back() {
        let last = key("2026/11/28", "0010", "b");
        // 30 minutes before 00:10 is the previous day's folder.
        assert_eq!(
            back_off(PREFIX, &last, 30 * 60_000).unwrap(),
            format!("{PREFIX}2026/11/27/111111111111_CloudTrail_eu-west-1_20261127T2340Z")
        );
        // A name without a delivery minute: the start of its day folder.
        assert_eq!(
            back_off(PREFIX, &format!("{PREFIX}2026/11/28/odd.json.gz"), 60_000).unwrap(),
            format!("{PREFIX}2026/11/28/")
        );
        assert_eq!(back_off(PREFIX, "elsewhere/x.json.gz", 0), None);

        let mut cursor = Cursor {
            start_after: format!("{PREFIX}2026/11/20/"),
            recent: Vec::new(),
        };
        let seen = vec![
            key("2026/11/27", "2300", "a"),
            key("2026/11/27", "2350", "a"),
            last.clone(),
        ];
        cursor.advance(PREFIX, &seen, 30 * 60_000);
        // Exactly the keys the next listing returns again are remembered.
        assert_eq!(cursor.recent, seen[1..].to_vec());
        // An earlier last key (a retry that read less) does not move the start back.
        let before = cursor.start_after.clone();
        cursor.advance(PREFIX, &[key("2026/11/27", "2300", "a")], 30 * 60_000);
        assert_eq!(cursor.start_after, before);
        assert_eq!(cursor.recent, seen[1..].to_vec());
    }

    #[test]
    fn only_day_folder_json_gz_objects_are_log_objects() {
        assert!(is_log_object(PREFIX, &key("2026/11/28", "0010", "b")));
        assert!(!is_log_object(
            PREFIX,
            &format!("{PREFIX}2026/11/28/x.json")
        ));
        assert!(!is_log_object(
            PREFIX,
            &format!("{PREFIX}ConfigWritabilityCheckFile")
        ));
        assert!(!is_log_object(
            PREFIX,
            &format!("{PREFIX}2026/11/28/a/b.json.gz")
        ));
        assert!(!is_log_object(
            PREFIX,
            &format!("{PREFIX}2026/13/28/b.json.gz")
        ));
    }

    #[test]
    fn state_of_earlier_versions_becomes_a_cursor() {
        let mut state = AccountState::default();
        let keys = vec![
            key("2026/11/27", "2300", "a"),
            key("2026/11/28", "0010", "b"),
        ];
        state.objects.insert("eu-west-1".into(), keys.clone());
        migrate_legacy_objects(&mut state, "o-1", "111111111111");
        assert!(state.objects.is_empty());
        let cursor = &state.cursors["CloudTrail/eu-west-1"];
        assert_eq!(cursor.start_after, format!("{PREFIX}2026/11/27/"));
        assert_eq!(cursor.recent, keys);
    }

    #[test]
    fn a_record_over_the_limit_is_reported_by_size_and_never_held() {
        let big = format!(r#"{{"eventID":"big","pad":"{}"}}"#, "x".repeat(5000));
        let doc = format!(r#"{{"Records":[{{"eventID":"a"}},{big},{{"eventID":"b"}}]}}"#);
        for chunk in [7, 100, 10_000] {
            let mut splitter = RecordSplitter::new(1000);
            let mut out = Vec::new();
            for piece in doc.as_bytes().chunks(chunk) {
                splitter.feed(piece, &mut |r| {
                    out.push(r.map(|b| String::from_utf8(b.to_vec()).unwrap()))
                });
                assert!(
                    splitter.carried.capacity() <= 2 * (1000 + chunk),
                    "chunk {chunk}"
                );
            }
            assert_eq!(splitter.finish(), Ok(()));
            assert_eq!(
                out,
                vec![
                    Ok(r#"{"eventID":"a"}"#.to_owned()),
                    Err(big.len() as u64),
                    Ok(r#"{"eventID":"b"}"#.to_owned())
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn truncated_and_missing_records_are_reported() {
        let (records, end) = split(r#"{"Records":[{"eventID":"a"},{"eventID":"b","#, 5);
        assert_eq!(records, vec![r#"{"eventID":"a"}"#]);
        assert_eq!(end, Err(SplitError::Truncated));
        assert_eq!(split(r#"{"records":[]}"#, 4).1, Err(SplitError::NoRecords));
        assert_eq!(split(r#"{"Records":[]}"#, 4), (vec![], Ok(())));
    }

    #[test]
    fn gzip_objects_stream_and_corruption_keeps_what_came_before() {
        let doc = format!(
            "{{\"Records\":[{}]}}",
            (0..2000)
                .map(|i| format!("{{\"eventID\":\"{i}\",\"pad\":\"{}\"}}", "x".repeat(100)))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(doc.as_bytes()).unwrap();
        let gz = encoder.finish().unwrap();
        let mut seen = 0;
        assert_eq!(
            read_object(&gz, &mut |record| {
                assert!(serde_json::from_slice::<serde_json::Value>(record.unwrap()).is_ok());
                seen += 1
            })
            .unwrap(),
            2000
        );
        assert_eq!(seen, 2000);
        let truncated = &gz[..gz.len() / 2];
        let mut partial = 0;
        let err = read_object(truncated, &mut |_| partial += 1).unwrap_err();
        assert!(partial > 0 && partial < 2000, "{partial}");
        assert!(
            err.contains("corrupt gzip") || err.contains("truncated"),
            "{err}"
        );
        let mut garbage = gz.clone();
        garbage[20..40].fill(0xff);
        assert!(read_object(&garbage, &mut |_| {}).is_err());
        assert!(read_object(b"not gzip at all", &mut |_| {})
            .unwrap_err()
            .contains("corrupt gzip"));
    }
}
