//! Schema drift seen for the first time: a `schema_drift` row each, remembered in a
//! checkpoint (`_state/schema_drift.json`) so each (finding type, path, kind) is reported once.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

use tracing::warn;

use super::Run;
use crate::clock::day_of;
use crate::error::RunError;
use crate::normalize::drift::{DriftLog, MAX_DRIFT_ENTRIES, MAX_DRIFT_STATE_ENTRIES};
use crate::report;
use crate::sink::parquet as pq;
use crate::sink::store::Tag;
use crate::state::journal::Checkpoint;
use crate::table::Table;

/// The drift entries already reported.
pub const DRIFT_STATE: &str = "_state/schema_drift.json";

type Seen = BTreeSet<(String, String, String)>;

/// What this run's drift adds to the publish.
#[derive(Debug, Default)]
pub struct DriftReport {
    pub file: Option<(PathBuf, String)>,
    pub checkpoint: Option<Checkpoint>,
    /// New entries, and the finding types they touch.
    pub new: usize,
    pub types: usize,
}

/// The entries of `drift` not reported before: a table file, and the state remembering them.
pub async fn report(run: &Run<'_>, drift: DriftLog) -> Result<DriftReport, RunError> {
    if drift.dropped > 0 {
        warn!(
            dropped = drift.dropped,
            limit = MAX_DRIFT_ENTRIES,
            "More distinct schema drift than a run records; the rest is counted only."
        );
    }
    if drift.entries.is_empty() {
        return Ok(DriftReport::default());
    }
    let (mut seen, tag, corrupt) = load(run).await?;
    let new: Vec<_> = drift
        .entries
        .iter()
        .filter(|((t, p, k), _)| !seen.contains(&(t.clone(), p.clone(), k.as_str().to_owned())))
        .collect();
    if new.is_empty() {
        return Ok(DriftReport::default());
    }
    let types = new
        .iter()
        .map(|((t, _, _), _)| t)
        .collect::<HashSet<_>>()
        .len();
    warn!(
        new = new.len(),
        "Findings differ from the known GuardDuty finding shape; see the schema_drift table."
    );
    let batch =
        report::drift_batch(run.run_id, &new).map_err(|e| RunError::Encode(e.to_string()))?;
    let path = run.work_dir.join("schema_drift.parquet");
    pq::write_file(&path, &batch).map_err(|e| RunError::Encode(e.to_string()))?;
    let key = Table::SchemaDrift.key(day_of(run.run_start_ms), &format!("{}.parquet", run.run_id));
    let room = MAX_DRIFT_STATE_ENTRIES.saturating_sub(seen.len());
    if room < new.len() {
        warn!(limit = MAX_DRIFT_STATE_ENTRIES, "The schema-drift state is full: drift beyond it is reported every run, not remembered.");
    }
    seen.extend(
        new.iter()
            .take(room)
            .map(|((t, p, k), _)| (t.clone(), p.clone(), k.as_str().to_owned())),
    );
    let body = serde_json::to_string(&seen).map_err(|e| RunError::Encode(e.to_string()))?;
    let checkpoint = (!corrupt).then(|| Checkpoint {
        key: DRIFT_STATE.to_owned(),
        body,
        expected: tag,
    });
    Ok(DriftReport {
        file: Some((path, key)),
        checkpoint,
        new: new.len(),
        types,
    })
}

/// The entries reported before, their version tag, and whether the state is corrupt (then
/// this run's drift is reported but not remembered, and the file is left for a person to fix:
/// the data is unaffected, and overwriting it would lose what it held).
async fn load(run: &Run<'_>) -> Result<(Seen, Option<Tag>, bool), RunError> {
    match run.store.get_tagged(DRIFT_STATE).await? {
        Some((bytes, tag)) => match serde_json::from_slice(&bytes) {
            Ok(seen) => Ok((seen, Some(tag), false)),
            Err(e) => {
                warn!(key = %run.store.uri(DRIFT_STATE), error = %e, "The schema-drift state is not valid JSON; drift is reported but not remembered until it is fixed or removed.");
                Ok((Seen::new(), None, true))
            }
        },
        None => Ok((Seen::new(), None, false)),
    }
}
