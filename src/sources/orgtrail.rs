//! The organization trail's S3 objects: `AWSLogs/<org>/<account>/CloudTrail/<region>/YYYY/MM/DD/*.json.gz`,
//! each `{"Records":[...]}`. The path date is the delivery date, so a window is read with a day
//! of slack on each side and filtered on eventTime; duplicates happen, so events are deduplicated
//! on eventID.
//!
//! An object is decompressed as a stream and split into records by a small scanner that holds
//! one record at a time, never the whole decompressed object. A corrupt gzip stream, a truncated
//! object, or a record that is not an object or lacks eventID / eventTime is quarantined with the
//! object key and the reason; the records before it and the rest of the run go on.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;

use chrono::{DateTime, Duration, Utc};

use super::cloudtrail::{
    admit, keep_once, link, AccountResult, AccountState, BadEvent, Correlation, GLOBAL_REGION,
    GLOBAL_SOURCES, RETENTION_MS,
};
use crate::error::{TargetFailure, TargetStatus};
use crate::normalize::cloudtrail::{normalize_text, EventRow, FindingEvent};
use crate::sink::store::Store;

/// Bytes decompressed per read.
const CHUNK: usize = 256 * 1024;

/// Splits a `{"Records":[...]}` document into the raw bytes of each array element, fed in
/// chunks. An element that lies inside one chunk is handed out as a slice of it (no copy); only
/// an element cut by a chunk boundary is assembled in a buffer. String contents are skipped
/// with `memchr`, so the scan touches few bytes one by one.
#[derive(Debug, Default)]
pub struct RecordSplitter {
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

/// What the scanner found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("the object has no Records array")]
    NoRecords,
    #[error("the object ends inside a record (truncated)")]
    Truncated,
}

impl RecordSplitter {
    /// Feeds bytes; calls `emit` with each complete element of the Records array.
    pub fn feed(&mut self, bytes: &[u8], emit: &mut dyn FnMut(&[u8])) {
        // Where the current element starts in `bytes`; `None` while it started in an earlier
        // chunk (its start is in `carried`).
        let mut start: Option<usize> = None;
        let mut i = 0;
        // Hands out the element ending before `end` (exclusive), trimmed.
        let mut finish = |this: &mut Self, start: Option<usize>, end: usize| {
            this.in_element = false;
            match start {
                Some(s) => emit(bytes[s..end].trim_ascii()),
                None => {
                    this.carried.extend_from_slice(&bytes[..end]);
                    emit(this.carried.trim_ascii());
                    this.carried.clear();
                }
            }
        };
        while i < bytes.len() {
            if self.finished {
                return;
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    if let Some(key) = self.key_buffer.as_mut() {
                        key.push(bytes[i]);
                    }
                    i += 1;
                    continue;
                }
                let rest = &bytes[i..];
                match memchr::memchr2(b'"', b'\\', rest) {
                    None => {
                        if let Some(key) = self.key_buffer.as_mut() {
                            key.extend_from_slice(rest);
                        }
                        i = bytes.len();
                    }
                    Some(at) => {
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
                        i += at + 1;
                    }
                }
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
                        finish(self, start, i + 1);
                    } else if self.in_records && self.depth == 1 {
                        if self.in_element {
                            // A scalar element ends at the array's closing bracket.
                            finish(self, start, i);
                        }
                        self.in_records = false;
                        self.finished = true;
                    }
                }
                b',' if element_level => {
                    if self.in_element {
                        finish(self, start, i);
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
            match start {
                Some(s) => self.carried = bytes[s..].to_vec(),
                None => self.carried.extend_from_slice(bytes),
            }
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

/// Decompresses a `.json.gz` object as a stream and hands each record's bytes to `on_record`.
/// Returns the number of records, or why the object stopped early (after the records it had).
pub fn read_object(compressed: &[u8], on_record: &mut dyn FnMut(&[u8])) -> Result<usize, String> {
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
/// decides whether it is usable).
pub fn record_text(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// The object-key prefix of one delivery day.
pub fn day_prefix(org_id: &str, account_id: &str, region: &str, day: chrono::NaiveDate) -> String {
    format!(
        "AWSLogs/{org_id}/{account_id}/CloudTrail/{region}/{}/",
        day.format("%Y/%m/%d")
    )
}

/// Which records of the trail are relevant: the watch-list, error codes of denied calls, and
/// the events of new finding versions (same rules as the lookup mode's correlation).
pub struct Rules {
    pub watchlist: HashSet<String>,
    pub error_codes: HashSet<&'static str>,
    pub by_key: HashMap<String, Vec<Correlation>>,
    pub by_user: HashMap<String, Vec<Correlation>>,
    pub pad_ms: i64,
    /// Keep every record (the benchmark's like-for-like comparison with DuckDB).
    pub keep_all: bool,
}

/// Error codes of denied calls, kept wherever they appear.
pub const DENIED_CODES: [&str; 4] = [
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "Client.UnauthorizedOperation",
];

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
            error_codes: DENIED_CODES.into_iter().collect(),
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
        let denied = row
            .error_code()
            .is_some_and(|c| self.error_codes.contains(c));
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
                    links.push(link(c, row.event_id(), row.region(), why));
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
                    links.push(link(c, row.event_id(), row.region(), "watchlist"));
                }
            }
        }
        (
            self.keep_all || watched || denied || !links.is_empty(),
            links,
        )
    }
}

/// Reads one object's records into `result`: relevant ones inside `window`, once per run and
/// never again once published; bad ones quarantined with the object key.
#[allow(clippy::too_many_arguments)]
pub fn take_object(
    result: &mut AccountResult,
    seen: &mut HashSet<String>,
    published: &HashSet<String>,
    rules: &Rules,
    account_id: &str,
    region: &str,
    key: &str,
    compressed: &[u8],
    window: (i64, i64),
) {
    let mut links = Vec::new();
    let outcome = read_object(compressed, &mut |bytes| {
        let normalized = normalize_text(&record_text(bytes));
        let Some(row) = admit(result, account_id, region, Some(key), normalized) else {
            return;
        };
        if !(window.0..window.1).contains(&row.event_time_ms) {
            return;
        }
        let (keep, found) = rules.judge(&row);
        links.extend(found);
        if keep {
            keep_once(result, seen, published, region, row);
        }
    });
    if let Err(reason) = outcome {
        let stats = result.regions.entry(region.to_owned()).or_default();
        stats.quarantined += 1;
        result.bad.push(BadEvent {
            account_id: account_id.to_owned(),
            region: region.to_owned(),
            event_id: None,
            reason: format!("{key}: {reason}"),
            raw: String::new(),
        });
    }
    result.links.extend(links);
}

/// The org trail of one account: every region's delivery days around the window, objects not
/// read before, relevant records kept.
#[allow(clippy::too_many_arguments)]
pub async fn collect_account(
    source: &Store,
    org_id: &str,
    account_id: &str,
    regions: &[String],
    rules: &Rules,
    mut state: AccountState,
    first_window_start_ms: i64,
    overlap_ms: i64,
    until_ms: i64,
) -> AccountResult {
    let mut result = AccountResult::default();
    let published: HashSet<String> = state.published.iter().map(|(id, _)| id.clone()).collect();
    let mut seen = HashSet::new();
    for region in regions {
        let start = state
            .watermarks
            .get(region)
            .map_or(first_window_start_ms, |w| w - overlap_ms);
        let window = (start, until_ms);
        result.regions.entry(region.clone()).or_default().window = Some(window);
        let day = |ms: i64| {
            DateTime::<Utc>::from_timestamp_millis(ms)
                .map(|t| t.date_naive())
                .unwrap_or_default()
        };
        let (first_day, last_day) = (
            day(start) - Duration::days(1),
            day(until_ms) + Duration::days(1),
        );
        let read_before: HashSet<String> = state
            .objects
            .get(region)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default();
        let mut read_now = Vec::new();
        let mut failure = None;
        let mut current = first_day;
        'days: while current <= last_day {
            let keys = match source
                .list(&day_prefix(org_id, account_id, region, current))
                .await
            {
                Ok(keys) => keys,
                Err(e) => {
                    failure = Some(TargetFailure::new(
                        TargetStatus::Error,
                        "TrailList",
                        e.to_string(),
                    ));
                    break 'days;
                }
            };
            for (key, _) in keys {
                if !key.ends_with(".json.gz") || read_before.contains(&key) {
                    continue;
                }
                match source.get(&key).await {
                    Ok(Some(bytes)) => take_object(
                        &mut result,
                        &mut seen,
                        &published,
                        rules,
                        account_id,
                        region,
                        &key,
                        &bytes,
                        window,
                    ),
                    Ok(None) => continue,
                    Err(e) => {
                        failure = Some(TargetFailure::new(
                            TargetStatus::Error,
                            "TrailRead",
                            e.to_string(),
                        ));
                        break 'days;
                    }
                }
                read_now.push(key);
            }
            current += Duration::days(1);
        }
        let objects = state.objects.entry(region.clone()).or_default();
        objects.extend(read_now);
        // Keys name their delivery day; those before the next window's slack are not read again.
        let keep_after = format!("{}", (first_day).format("%Y/%m/%d"));
        objects.retain(|k| {
            k.split("/CloudTrail/")
                .nth(1)
                .and_then(|rest| rest.split_once('/'))
                .is_none_or(|(_, date)| date[..10.min(date.len())] >= *keep_after)
        });
        objects.sort();
        objects.dedup();
        match failure {
            Some(f) => result.regions.entry(region.clone()).or_default().failure = Some(f),
            None => {
                state.watermarks.insert(region.clone(), until_ms);
            }
        }
    }
    let keep_from = until_ms - RETENTION_MS;
    let mut all: BTreeMap<String, i64> = state.published.iter().cloned().collect();
    all.extend(
        result
            .rows
            .iter()
            .map(|r| (r.event_id().to_owned(), r.event_time_ms)),
    );
    state.published = all.into_iter().filter(|(_, t)| *t >= keep_from).collect();
    result.links.sort();
    result.links.dedup();
    result.state = state;
    result
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
                out.push(String::from_utf8(r.to_vec()).unwrap())
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
                assert!(serde_json::from_slice::<serde_json::Value>(record).is_ok());
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
