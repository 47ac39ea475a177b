//! The run report: one `runs` row per run × target × source, and the human summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::ArrowError;

use crate::config::Mode;
use crate::discover::Skipped;
use crate::error::{TargetFailure, TargetStatus};
use crate::normalize::drift::{DriftEntry, DriftKey};
use crate::normalize::schema;
use crate::table::SourceName;

/// How one target went.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TargetOutcome {
    pub account_id: String,
    pub region: String,
    pub source: SourceName,
    pub mode: Mode,
    pub failure: Option<TargetFailure>,
    pub findings_read: u64,
    pub findings_written: u64,
    pub findings_quarantined: u64,
    pub window_start_ms: Option<i64>,
    pub window_end_ms: Option<i64>,
    pub started_at_ms: i64,
    pub duration_ms: i64,
}

impl TargetOutcome {
    /// A target that failed before reading anything.
    pub fn failed(
        account_id: &str,
        region: &str,
        source: SourceName,
        mode: Mode,
        failure: TargetFailure,
        started_at_ms: i64,
    ) -> Self {
        Self {
            account_id: account_id.to_owned(),
            region: region.to_owned(),
            source,
            mode,
            failure: Some(failure),
            findings_read: 0,
            findings_written: 0,
            findings_quarantined: 0,
            window_start_ms: None,
            window_end_ms: None,
            started_at_ms,
            duration_ms: 0,
        }
    }

    pub fn status(&self) -> TargetStatus {
        self.failure.as_ref().map_or(TargetStatus::Ok, |f| f.status)
    }
}

/// Builds the `runs` RecordBatch, columns in `schemas/runs.json` order.
pub fn runs_batch(run_id: &str, outcomes: &[TargetOutcome]) -> Result<RecordBatch, ArrowError> {
    let schema = schema::runs().arrow_schema();
    let strings = |f: &dyn Fn(&TargetOutcome) -> Option<String>| schema::strings(outcomes, f);
    let longs = |f: &dyn Fn(&TargetOutcome) -> i64| schema::longs(outcomes, |o| Some(f(o)));
    let times = |f: &dyn Fn(&TargetOutcome) -> Option<i64>| schema::times(outcomes, f);
    let mut columns = Vec::new();
    for field in schema.fields() {
        columns.push(match field.name().as_str() {
            "run_id" => strings(&|_| Some(run_id.to_owned())),
            "account_id" => strings(&|o| Some(o.account_id.clone())),
            "region" => strings(&|o| Some(o.region.clone())),
            "source" => strings(&|o| Some(o.source.as_str().to_owned())),
            "mode" => strings(&|o| Some(o.mode.as_str().to_owned())),
            "status" => strings(&|o| Some(o.status().as_str().to_owned())),
            "findings_read" => longs(&|o| o.findings_read as i64),
            "findings_written" => longs(&|o| o.findings_written as i64),
            "findings_quarantined" => longs(&|o| o.findings_quarantined as i64),
            "window_start" => times(&|o| o.window_start_ms),
            "window_end" => times(&|o| o.window_end_ms),
            "started_at" => times(&|o| Some(o.started_at_ms)),
            "duration_ms" => longs(&|o| o.duration_ms),
            "error_class" => strings(&|o| o.failure.as_ref().map(|f| f.class.clone())),
            "error_message" => strings(&|o| o.failure.as_ref().map(|f| f.message.clone())),
            other => {
                return Err(ArrowError::SchemaError(format!(
                    "schemas/runs.json has column {other} that the report does not fill"
                )))
            }
        });
    }
    RecordBatch::try_new(schema, columns)
}

/// Builds the `schema_drift` RecordBatch from the drift entries first seen in this run.
pub fn drift_batch(
    run_id: &str,
    entries: &[(&DriftKey, &DriftEntry)],
) -> Result<RecordBatch, ArrowError> {
    let schema = schema::schema_drift().arrow_schema();
    let strings = |f: &dyn Fn(&DriftKey, &DriftEntry) -> String| -> ArrayRef {
        Arc::new(
            entries
                .iter()
                .map(|(k, e)| Some(f(k, e)))
                .collect::<arrow_array::StringArray>(),
        )
    };
    let mut columns = Vec::new();
    for field in schema.fields() {
        columns.push(match field.name().as_str() {
            "run_id" => strings(&|_, _| run_id.to_owned()),
            "account_id" => strings(&|_, e| e.account_id.clone()),
            "region" => strings(&|_, e| e.region.clone()),
            "finding_type" => strings(&|k, _| k.0.clone()),
            "path" => strings(&|k, _| k.1.clone()),
            "kind" => strings(&|k, _| k.2.as_str().to_owned()),
            "example" => strings(&|_, e| e.example.clone()),
            "first_seen" => Arc::new(
                arrow_array::TimestampMillisecondArray::from(
                    entries
                        .iter()
                        .map(|(_, e)| e.first_seen_ms)
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            "count" => Arc::new(arrow_array::Int64Array::from(
                entries
                    .iter()
                    .map(|(_, e)| e.count as i64)
                    .collect::<Vec<_>>(),
            )),
            other => {
                return Err(ArrowError::SchemaError(format!(
                    "schemas/schema_drift.json has column {other} that the report does not fill"
                )))
            }
        });
    }
    RecordBatch::try_new(schema, columns)
}

/// Totals of a run, for the summary and the exit code.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub files: usize,
    pub bytes: u64,
    pub duplicates_skipped: u64,
    pub lake: String,
    /// New (finding type, path, kind) drift entries, and the finding types they touch.
    pub drift_new: usize,
    pub drift_types: usize,
    /// The process's peak resident memory so far (Linux `VmHWM`), when known.
    pub peak_rss_bytes: Option<u64>,
    /// What alert delivery did (a run with an alerts bus).
    pub alerts: Option<crate::alerts::Delivery>,
}

/// The peak resident memory of this process (`VmHWM` in `/proc/self/status`); `None` where
/// there is no procfs.
pub fn peak_rss_bytes() -> Option<u64> {
    crate::cpu::status_bytes("VmHWM:")
}

/// The summary's list of failed targets, one line each.
fn failed_targets(out: &mut String, outcomes: &[TargetOutcome]) {
    let failed: Vec<&TargetOutcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    if failed.is_empty() {
        return;
    }
    let _ = writeln!(out, "  failed targets:");
    for outcome in failed {
        if let Some(f) = &outcome.failure {
            let _ = writeln!(
                out,
                "    {} {:<14} {:<16} {}: {}",
                outcome.account_id,
                outcome.region,
                f.status.as_str(),
                f.class,
                f.message
            );
        }
    }
}

fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// The summary printed on stdout at the end of a run.
pub fn summary(
    run_id: &str,
    outcomes: &[TargetOutcome],
    skipped: &[Skipped],
    totals: &Totals,
    seconds: f64,
) -> String {
    let mut by_status: BTreeMap<TargetStatus, usize> = BTreeMap::new();
    for outcome in outcomes {
        *by_status.entry(outcome.status()).or_default() += 1;
    }
    let statuses: Vec<String> = by_status
        .iter()
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect();
    let sum = |source: SourceName, f: fn(&TargetOutcome) -> u64| -> u64 {
        outcomes.iter().filter(|o| o.source == source).map(f).sum()
    };
    let read = sum(SourceName::GuardDuty, |o| o.findings_read);
    let written = sum(SourceName::GuardDuty, |o| o.findings_written);
    let quarantined = sum(SourceName::GuardDuty, |o| o.findings_quarantined);
    let mut out = String::new();
    let _ = writeln!(out, "guardlake run {run_id} finished in {seconds:.1} s");
    let _ = writeln!(
        out,
        "  targets:  {} ({} total)",
        statuses.join(", "),
        outcomes.len()
    );
    if !skipped.is_empty() {
        let _ = writeln!(out, "  skipped:  {} account(s)", skipped.len());
        for skip in skipped {
            let _ = writeln!(out, "    {}  {}", skip.account_id, skip.reason);
        }
    }
    let _ = writeln!(
        out,
        "  findings: {read} read, {written} new versions written, {} already published, {quarantined} quarantined",
        totals.duplicates_skipped
    );
    if outcomes.iter().any(|o| o.source == SourceName::CloudTrail) {
        let _ = writeln!(
            out,
            "  cloudtrail: {} events read, {} new written, {} quarantined",
            sum(SourceName::CloudTrail, |o| o.findings_read),
            sum(SourceName::CloudTrail, |o| o.findings_written),
            sum(SourceName::CloudTrail, |o| o.findings_quarantined)
        );
    }
    if totals.drift_new > 0 {
        let _ = writeln!(out, "  schema drift: {} new path/kind pair(s) in {} finding type(s); see the schema_drift table", totals.drift_new, totals.drift_types);
    }
    let _ = writeln!(
        out,
        "  files:    {} ({}) in {}",
        totals.files,
        human_bytes(totals.bytes),
        totals.lake
    );
    if let Some(peak) = totals.peak_rss_bytes {
        let _ = writeln!(out, "  memory:   {} peak resident", human_bytes(peak));
    }
    if let Some(alerts) = &totals.alerts {
        alerts_line(&mut out, alerts);
    }
    failed_targets(&mut out, outcomes);
    out
}

/// The summary's alerts line: what was sent, and the first error when some were not.
fn alerts_line(out: &mut String, alerts: &crate::alerts::Delivery) {
    let _ = write!(
        out,
        "  alerts:   {} sent, {} pending, {} failed",
        alerts.sent, alerts.pending, alerts.failed
    );
    match &alerts.error {
        Some((code, message)) if alerts.pending + alerts.failed > 0 => {
            let _ = writeln!(
                out,
                " ({code}: {message}; see the runs table, source alerts)"
            );
        }
        _ => {
            let _ = writeln!(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: Option<TargetStatus>) -> TargetOutcome {
        TargetOutcome {
            account_id: "111122223333".into(),
            region: "eu-west-1".into(),
            source: SourceName::GuardDuty,
            mode: Mode::Member,
            failure: status.map(|s| TargetFailure::new(s, "AccessDenied", "no")),
            findings_read: 3,
            findings_written: 2,
            findings_quarantined: 1,
            window_start_ms: Some(0),
            window_end_ms: Some(1),
            started_at_ms: 0,
            duration_ms: 5,
        }
    }

    #[test]
    fn runs_batch_matches_the_schema_and_summary_counts() {
        let outcomes = vec![outcome(None), outcome(Some(TargetStatus::AccessDenied))];
        let batch = runs_batch("r", &outcomes).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let text = summary("r", &outcomes, &[], &Totals::default(), 1.0);
        assert!(text.contains("1 ok, 1 access_denied (2 total)"), "{text}");
        assert!(text.contains("6 read, 4 new versions written"), "{text}");
    }
}
