//! The `cloudtrail_events` rows of a run as they are read: encoded into Parquet as the
//! writer's buffer fills, each event id once, quarantined records spilled to disk.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::error::RunError;
use crate::normalize::cloudtrail::EventRow;
use crate::sink::parquet::{PartitionWriter, StagedFile};
use crate::sink::spill::Spill;
use crate::sources::cloudtrail::{BadEvent, EventIds};
use crate::sources::orgtrail;

/// Shared by every account of a run; `take` may be called from any of them.
pub struct EventSink {
    inner: Mutex<Inner>,
}

struct Inner {
    writer: PartitionWriter<EventRow>,
    seen: EventIds,
    bad: Spill,
    /// The first encoding or spill error; the run fails with it at `finish`.
    error: Option<String>,
}

impl EventSink {
    pub fn new(writer: PartitionWriter<EventRow>, bad: Spill) -> Self {
        Self {
            inner: Mutex::new(Inner {
                writer,
                seen: EventIds::default(),
                bad,
                error: None,
            }),
        }
    }

    /// The encoded files, and the quarantine file with its line count (if any).
    #[allow(clippy::type_complexity)]
    pub fn finish(self) -> Result<(Vec<StagedFile>, Option<(PathBuf, u64)>), RunError> {
        let mut inner = self.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some(error) = inner.error {
            return Err(RunError::Encode(error));
        }
        let files = inner
            .writer
            .finish()
            .map_err(|e| RunError::Encode(e.to_string()))?;
        let bad = inner.bad.finish().map_err(|e| RunError::Store {
            key: e.key,
            message: e.message,
        })?;
        Ok((files, bad))
    }
}

impl orgtrail::Sink for EventSink {
    fn take(&self, rows: Vec<EventRow>, bad: Vec<BadEvent>) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        if inner.error.is_some() {
            return;
        }
        for row in rows {
            if inner.seen.insert(row.event_id()) {
                if let Err(e) = inner.writer.push(row) {
                    inner.error = Some(e.to_string());
                    return;
                }
            }
        }
        for record in &bad {
            if let Err(e) = inner.bad.push(record) {
                inner.error = Some(format!("writing the quarantine: {e}"));
                return;
            }
        }
    }
}
