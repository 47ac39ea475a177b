//! Delivery: every outbox's pending events go to the bus with PutEvents (at most 10 entries
//! and under 256 KB a call). Entries that fail with a retryable code are sent again with
//! backoff; an entry still undelivered stays pending for the next run, up to
//! [`MAX_DELIVERY_RUNS`] runs, then is marked failed. The outbox is rewritten after each call,
//! so a crash repeats at most one call's events (same dedup keys: at least once).

use std::time::Duration;

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde_json::Value;
use tracing::{info, warn};

use super::outbox::{self, Entry, Outbox, Status};
use super::{Delivery, SOURCE};
use crate::error::classify;
use crate::sink::store::Store;

/// PutEvents takes at most 10 entries; their total size must be under 256 KB.
pub const MAX_ENTRIES: usize = 10;
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// A detail is cut down when its entry would be over this (a margin under the limit).
pub const FIT_BYTES: usize = 250 * 1024;
/// Runs an undelivered event is tried in before it is marked failed.
pub const MAX_DELIVERY_RUNS: u32 = 5;
/// Tries of one call's failed entries within a run.
const ENTRY_TRIES: u32 = 5;
/// Outboxes kept once fully delivered (the newest is what `alerts --dry-run` reads).
const KEEP_DONE: usize = 10;

/// The size EventBridge counts for an entry: source, detail type and detail in UTF-8.
pub fn entry_size(detail_type: &str, detail: &str) -> usize {
    SOURCE.len() + detail_type.len() + detail.len()
}

/// The detail as sent: whole when it fits, else without its large parts (description,
/// resource, linked events; the title cut to 1 KiB) and marked `truncated`, with the lake
/// pointer it always carries.
pub fn fitted(entry: &Entry) -> String {
    let text = entry.detail.to_string();
    if entry_size(&entry.detail_type, &text) <= FIT_BYTES {
        return text;
    }
    let mut detail = entry.detail.clone();
    if let Value::Object(map) = &mut detail {
        for large in [
            "description",
            "resource",
            "linked_events",
            "new_high_critical_findings",
            "failed_target_list",
            "gaps",
        ] {
            map.remove(large);
        }
        if let Some(Value::String(title)) = map.get_mut("title") {
            let mut cut = 1024.min(title.len());
            while !title.is_char_boundary(cut) {
                cut -= 1;
            }
            title.truncate(cut);
        }
        map.insert("truncated".into(), Value::Bool(true));
    }
    let text = detail.to_string();
    if entry_size(&entry.detail_type, &text) <= FIT_BYTES {
        return text;
    }
    // Only an outlandish summary field is left: keep the keys routing relies on.
    let keep = [
        "dedup_key",
        "rule",
        "alert",
        "finding_id",
        "account_id",
        "region",
        "severity",
        "severity_label",
        "type",
        "console_url",
        "lake",
        "run_id",
    ];
    if let Value::Object(map) = &mut detail {
        map.retain(|k, _| keep.contains(&k.as_str()) || k == "truncated");
    }
    detail.to_string()
}

/// Delivers every outbox's pending events to `bus`, oldest run first.
pub async fn deliver(store: &Store, client: &aws_sdk_eventbridge::Client, bus: &str) -> Delivery {
    let mut delivery = Delivery::default();
    let keys = match outbox_keys(store).await {
        Ok(keys) => keys,
        Err(e) => {
            delivery.error = Some(("OutboxUnreadable".into(), e.to_string()));
            return delivery;
        }
    };
    let mut done = Vec::new();
    for key in keys {
        let mut outbox = match read(store, &key).await {
            Ok(outbox) => outbox,
            Err(message) => {
                warn!(key = %store.uri(&key), message = %message, "An alert outbox is unreadable; it is left alone.");
                delivery
                    .error
                    .get_or_insert(("OutboxUnreadable".into(), message));
                continue;
            }
        };
        if outbox.pending() == 0 {
            done.push(key);
            continue;
        }
        delivery.due += outbox.pending() as u64;
        send_outbox(store, client, bus, &key, &mut outbox, &mut delivery).await;
        if outbox.pending() == 0 {
            done.push(key);
        }
    }
    drop_old(store, &done).await;
    if delivery.sent + delivery.failed + delivery.pending > 0 {
        info!(
            sent = delivery.sent,
            failed = delivery.failed,
            pending = delivery.pending,
            bus,
            "Alerts delivered."
        );
    }
    delivery
}

/// Every outbox's key, oldest run first (run ids are time-ordered UUIDv7).
pub async fn outbox_keys(store: &Store) -> Result<Vec<String>, crate::sink::store::StoreError> {
    let mut keys: Vec<String> = store
        .list(outbox::DIR)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.ends_with(".json"))
        .collect();
    keys.sort();
    Ok(keys)
}

/// Keeps the last few outboxes with nothing pending (the newest is what `alerts --dry-run`
/// reads); `done` is in run order.
async fn drop_old(store: &Store, done: &[String]) {
    if done.len() <= KEEP_DONE {
        return;
    }
    for key in &done[..done.len() - KEEP_DONE] {
        if let Err(e) = store.delete(key).await {
            warn!(key = %store.uri(key), error = %e, "Could not remove an old alert outbox.");
        }
    }
}

/// With no bus to send to: only the old outboxes go (those with events pending stay, for a bus
/// configured later).
pub async fn forget_old(store: &Store) {
    let Ok(keys) = outbox_keys(store).await else {
        return;
    };
    let mut done = Vec::new();
    for key in keys {
        if read(store, &key).await.is_ok_and(|o| o.pending() == 0) {
            done.push(key);
        }
    }
    drop_old(store, &done).await;
}

/// Reads an outbox (bounded by the store's read limit) and checks it is one.
pub async fn read(store: &Store, key: &str) -> Result<Outbox, String> {
    let bytes = store
        .get(key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{key} is gone"))?;
    let outbox: Outbox =
        serde_json::from_slice(&bytes).map_err(|e| format!("{key}: not an alert outbox ({e})"))?;
    if outbox::key(&outbox.run_id) != key {
        return Err(format!("{key}: names run {:?}", outbox.run_id));
    }
    Ok(outbox)
}

/// Sends one outbox's pending entries in calls of at most 10 and under 256 KB, rewriting it
/// after each call; then what is still pending counts one more attempt.
async fn send_outbox(
    store: &Store,
    client: &aws_sdk_eventbridge::Client,
    bus: &str,
    key: &str,
    outbox: &mut Outbox,
    delivery: &mut Delivery,
) {
    let details: Vec<(usize, String)> = (outbox.entries.iter().enumerate())
        .filter(|(_, e)| matches!(e.status, Status::Pending { .. }))
        .map(|(i, e)| (i, fitted(e)))
        .collect();
    for call in calls(&outbox.entries, details) {
        send_call(client, bus, outbox, &call, delivery).await;
        crate::state::crash_point(crate::state::CrashPoint::MidAlerts);
        save(store, key, outbox).await;
    }
    for entry in &mut outbox.entries {
        if let Status::Pending { attempts } = entry.status {
            let attempts = attempts + 1;
            entry.status = if attempts >= MAX_DELIVERY_RUNS {
                delivery.failed += 1;
                let (code, message) = delivery
                    .error
                    .clone()
                    .unwrap_or_else(|| ("Undelivered".into(), "not delivered".into()));
                Status::Failed { code, message }
            } else {
                delivery.pending += 1;
                Status::Pending { attempts }
            };
        }
    }
    save(store, key, outbox).await;
}

/// Groups entries into calls: at most 10 entries, total size under 256 KB.
fn calls(entries: &[Entry], details: Vec<(usize, String)>) -> Vec<Vec<(usize, String)>> {
    let mut calls: Vec<Vec<(usize, String)>> = Vec::new();
    let mut size = 0;
    for (i, detail) in details {
        let bytes = entry_size(&entries[i].detail_type, &detail);
        let full = calls
            .last()
            .is_none_or(|c| c.len() >= MAX_ENTRIES || size + bytes >= MAX_REQUEST_BYTES);
        if full {
            calls.push(Vec::new());
            size = 0;
        }
        size += bytes;
        if let Some(call) = calls.last_mut() {
            call.push((i, detail));
        }
    }
    calls
}

/// Whether a failed entry's code is worth another try in this run.
fn retryable(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException" | "InternalFailure" | "InternalException" | "ServiceUnavailable"
    )
}

/// One call, its failed entries tried again with backoff while their codes are retryable.
async fn send_call(
    client: &aws_sdk_eventbridge::Client,
    bus: &str,
    outbox: &mut Outbox,
    call: &[(usize, String)],
    delivery: &mut Delivery,
) {
    let mut left: Vec<(usize, String)> = call.to_vec();
    for attempt in 0..ENTRY_TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        let request: Vec<PutEventsRequestEntry> = left
            .iter()
            .map(|(i, detail)| {
                PutEventsRequestEntry::builder()
                    .source(SOURCE)
                    .detail_type(&outbox.entries[*i].detail_type)
                    .detail(detail)
                    .event_bus_name(bus)
                    .build()
            })
            .collect();
        let answer = match client.put_events().set_entries(Some(request)).send().await {
            Ok(answer) => answer,
            Err(e) => {
                // The SDK already retried throttling and 5xx: the call failed for this run.
                let failure = classify("events:PutEvents", &e);
                warn!(class = %failure.class, message = %failure.message, "PutEvents failed; the alerts stay pending.");
                delivery
                    .error
                    .get_or_insert((failure.class, failure.message));
                return;
            }
        };
        let mut again = Vec::new();
        for ((i, detail), result) in left.into_iter().zip(answer.entries()) {
            match (result.event_id(), result.error_code()) {
                (Some(id), None) => {
                    outbox.entries[i].status = Status::Sent {
                        event_id: id.to_owned(),
                    };
                    delivery.sent += 1;
                }
                (_, code) => {
                    let code = code.unwrap_or("Unknown").to_owned();
                    let message = result.error_message().unwrap_or_default().to_owned();
                    delivery
                        .error
                        .get_or_insert((code.clone(), message.clone()));
                    if retryable(&code) {
                        again.push((i, detail));
                    } else {
                        warn!(code = %code, message = %message, dedup_key = %outbox.entries[i].dedup_key, "An alert was refused.");
                        outbox.entries[i].status = Status::Failed { code, message };
                        delivery.failed += 1;
                    }
                }
            }
        }
        if again.is_empty() {
            return;
        }
        left = again;
    }
}

async fn save(store: &Store, key: &str, outbox: &Outbox) {
    let body = match serde_json::to_vec(outbox) {
        Ok(body) => body,
        Err(_) => return,
    };
    if let Err(e) = store.put(key, body).await {
        warn!(key = %store.uri(key), error = %e, "Could not record alert delivery; the events may be sent again (same dedup keys).");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(detail: Value) -> Entry {
        Entry {
            detail_type: super::super::FINDING_ALERT.into(),
            dedup_key: "k".into(),
            detail,
            status: Status::Pending { attempts: 0 },
        }
    }

    #[test]
    fn a_large_detail_is_cut_under_the_limit_and_keeps_its_pointer() {
        let big = "x".repeat(300 * 1024);
        let e = entry(
            json!({"finding_id": "f", "description": big, "title": big, "lake": {"location": "s3://b/findings/"}}),
        );
        let text = fitted(&e);
        assert!(entry_size(&e.detail_type, &text) < MAX_REQUEST_BYTES);
        let detail: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(detail["truncated"], true);
        assert_eq!(detail["lake"]["location"], "s3://b/findings/");
        assert!(detail.get("description").is_none());
        let small = entry(json!({"finding_id": "f", "description": "d"}));
        assert_eq!(fitted(&small), small.detail.to_string());
    }

    #[test]
    fn calls_hold_ten_entries_and_stay_under_256_kb() {
        let entries: Vec<Entry> = (0..25).map(|_| entry(json!({}))).collect();
        let details: Vec<(usize, String)> = (0..25)
            .map(|i| {
                (
                    i,
                    if i < 5 {
                        "y".repeat(100 * 1024)
                    } else {
                        "{}".into()
                    },
                )
            })
            .collect();
        let calls = calls(&entries, details);
        for call in &calls {
            assert!(call.len() <= MAX_ENTRIES);
            let size: usize = call
                .iter()
                .map(|(i, d)| entry_size(&entries[*i].detail_type, d))
                .sum();
            assert!(size < MAX_REQUEST_BYTES, "{size}");
        }
        assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 25);
    }
}
