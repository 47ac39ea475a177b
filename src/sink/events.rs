//! The `cloudtrail_events` rows of a run as they are read: each event id once (the run's ids,
//! held here, are what readers check a row against before handing it over), encoded into
//! Parquet as buffers fill, quarantined records spilled to disk.
//!
//! With one encoder the caller encodes a full buffer itself. With more (`--threads` above 1),
//! full buffers go to that many encoder threads, each with its own writer and files, so the
//! accounts' tasks keep reading while earlier rows are sorted, built into Arrow and compressed;
//! a bounded queue holds them back when the encoders fall behind, which bounds memory.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::error::RunError;
use crate::normalize::cloudtrail::EventRow;
use crate::sink::encoders::Encoders;
use crate::sink::parquet::{PartitionWriter, StagedFile};
use crate::sink::spill::Spill;
use crate::sources::cloudtrail::{BadEvent, EventIds};
use crate::sources::orgtrail;

/// Shared by every account of a run; `take` may be called from any of them.
pub struct EventSink {
    inner: Mutex<Inner>,
    /// Every event id of the run: callers keep a row only when it is new here.
    seen: EventIds,
    /// The encoder threads (none: the caller encodes).
    pool: Option<Encoders<EventRow>>,
}

struct Inner {
    /// The caller's writer (one encoder), or the rows waiting for the pool.
    writer: Option<PartitionWriter<EventRow>>,
    waiting: Vec<EventRow>,
    waiting_bytes: u64,
    /// Rows handed to the pool at once: the flush size shared among the encoders.
    batch_bytes: u64,
    bad: Spill,
    /// The first encoding or spill error; the run fails with it at `finish`.
    error: Option<String>,
}

impl EventSink {
    /// `writer(k)` makes encoder k's writer (its files named apart from the others').
    pub fn new(
        encoders: usize,
        flush_bytes: u64,
        writer: impl Fn(usize) -> PartitionWriter<EventRow>,
        bad: Spill,
    ) -> Self {
        let encoders = encoders.max(1);
        let (own, pool) = match encoders {
            1 => (Some(writer(0)), None),
            _ => (
                None,
                Some(Encoders::start((0..encoders).map(writer).collect())),
            ),
        };
        Self {
            inner: Mutex::new(Inner {
                writer: own,
                waiting: Vec::new(),
                waiting_bytes: 0,
                batch_bytes: (flush_bytes / encoders as u64).max(1),
                bad,
                error: None,
            }),
            seen: EventIds::default(),
            pool,
        }
    }

    /// Hands a full batch to the encoders, waiting while they are all busy.
    fn hand_off(&self, rows: Vec<EventRow>) -> Result<(), String> {
        match &self.pool {
            Some(pool) => pool
                .send(rows)
                .map_err(|_| "the CloudTrail encoders stopped".to_owned()),
            None => Ok(()),
        }
    }

    /// The encoded files, and the quarantine file with its line count (if any).
    #[allow(clippy::type_complexity)]
    pub fn finish(self) -> Result<(Vec<StagedFile>, Option<(PathBuf, u64)>), RunError> {
        let mut inner = self.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut files = Vec::new();
        let mut error = inner.error.take();
        if let Some(pool) = self.pool {
            let rows = std::mem::take(&mut inner.waiting);
            if !rows.is_empty() {
                // Refused only if every encoder failed, which `finish` reports.
                let _ = pool.send(rows);
            }
            match pool.finish() {
                Ok(done) => files.extend(done),
                // The encoders' own error, rather than "stopped" seen by a sender.
                Err(e) => error = Some(e),
            }
        }
        if let Some(writer) = inner.writer.take() {
            files.extend(
                writer
                    .finish()
                    .map_err(|e| RunError::Encode(e.to_string()))?,
            );
        }
        if let Some(error) = error {
            return Err(RunError::Encode(error));
        }
        files.sort_by(|a, b| (a.dt, &a.name).cmp(&(b.dt, &b.name)));
        let bad = inner.bad.finish().map_err(|e| RunError::Store {
            key: e.key,
            message: e.message,
        })?;
        Ok((files, bad))
    }
}

impl orgtrail::Sink for EventSink {
    fn ids(&self) -> &EventIds {
        &self.seen
    }

    fn take(&self, rows: Vec<EventRow>, bad: Vec<BadEvent>) {
        let full = {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let inner = &mut *guard;
            if inner.error.is_some() {
                return;
            }
            for row in rows {
                let pushed = match &mut inner.writer {
                    Some(writer) => writer.push(row).map_err(|e| e.to_string()),
                    None => {
                        inner.waiting_bytes += row.approx_bytes() as u64;
                        inner.waiting.push(row);
                        Ok(())
                    }
                };
                if let Err(e) = pushed {
                    inner.error = Some(e);
                    return;
                }
            }
            for record in &bad {
                if let Err(e) = inner.bad.push(record) {
                    inner.error = Some(format!("writing the quarantine: {e}"));
                    return;
                }
            }
            if inner.waiting_bytes >= inner.batch_bytes {
                inner.waiting_bytes = 0;
                Some(std::mem::take(&mut inner.waiting))
            } else {
                None
            }
        };
        // Outside the lock: the other accounts keep taking while this one waits for an encoder.
        if let Some(rows) = full {
            if let Err(e) = self.hand_off(rows) {
                let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                inner.error.get_or_insert(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::cloudtrail::normalize_text;
    use crate::normalize::guardduty::RunStamp;
    use crate::sources::orgtrail::Sink;

    fn row(i: usize) -> EventRow {
        let text = format!(
            r#"{{"eventID":"e{i}","eventTime":"2026-11-{:02}T10:00:00Z","eventName":"ListUsers","eventSource":"iam.amazonaws.com","awsRegion":"us-east-1","recipientAccountId":"111122223333","userIdentity":{{"type":"Root"}}}}"#,
            1 + i % 3
        );
        normalize_text(&text).unwrap()
    }

    #[test]
    fn every_event_once_whatever_the_encoder_count() {
        for encoders in [1, 3] {
            let dir = tempfile::tempdir().unwrap();
            let stamp = RunStamp {
                run_id: "r".into(),
                collected_at_ms: 0,
            };
            let writer = |k: usize| {
                PartitionWriter::new(dir.path().to_owned(), stamp.clone(), 4096, 1 << 30)
                    .named(&format!("r-{k}"))
            };
            let sink = EventSink::new(encoders, 4096, writer, Spill::new(dir.path().join("bad")));
            std::thread::scope(|scope| {
                for part in 0..4 {
                    let sink = &sink;
                    // Each part overlaps the next: ids 0..1500 shifted by 250 per part.
                    scope.spawn(move || {
                        for chunk in (part * 250..part * 250 + 750)
                            .collect::<Vec<_>>()
                            .chunks(100)
                        {
                            // As the readers do: a row is kept when the run's ids say new.
                            let rows = chunk
                                .iter()
                                .map(|i| row(*i))
                                .filter(|r| sink.ids().insert(r.event_id()))
                                .collect();
                            sink.take(rows, Vec::new());
                        }
                    });
                }
            });
            let (files, bad) = sink.finish().unwrap();
            assert!(bad.is_none());
            assert_eq!(
                files.iter().map(|f| f.rows).sum::<usize>(),
                1500,
                "{encoders} encoder(s)"
            );
            let mut names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
            names.dedup();
            assert_eq!(names.len(), files.len(), "file names are distinct");
        }
    }

    /// Encoders that cannot write (their work directory is a file) fail the run with their own
    /// error, not with the "stopped" a sender saw, and no `take` waits forever on them.
    #[test]
    fn encoders_that_fail_fail_the_run_with_their_error() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = crate::sink::encoders::unwritable_dir(dir.path());
        let stamp = RunStamp {
            run_id: "r".into(),
            collected_at_ms: 0,
        };
        let writer = |k: usize| {
            PartitionWriter::new(not_a_dir.clone(), stamp.clone(), 4096, 1 << 30)
                .named(&format!("r-{k}"))
        };
        let sink = EventSink::new(2, 4096, writer, Spill::new(dir.path().join("bad")));
        for chunk in (0..3000).collect::<Vec<_>>().chunks(100) {
            sink.take(chunk.iter().map(|i| row(*i)).collect(), Vec::new());
        }
        let error = sink.finish().expect_err("the encoders failed");
        let RunError::Encode(message) = error else {
            panic!("{error}")
        };
        assert!(!message.contains("stopped"), "{message}");
    }
}
