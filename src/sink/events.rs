//! The `cloudtrail_events` rows of a run as they are read: each event id once (the run's ids,
//! held here, are what readers check a row against before handing it over), encoded into
//! Parquet as buffers fill, quarantined records spilled to disk.
//!
//! There is one writer per thread (`--threads`), each with its own files. Rows gather in one
//! buffer; the reader whose rows fill it takes the buffer and a free writer, and sorts, builds
//! and compresses it on its own thread, outside the lock, while the other readers go on
//! filling the next buffer. So the busy threads are the readers alone, one per CPU thread: on
//! the 10x org-trail corpus at 2 threads, separate encoder threads fed through a queue had cost
//! 13% more CPU than one thread, most of it the kernel switching four busy threads on two
//! cores. Memory stays bounded: a buffer is `flush_bytes` ÷ threads, and at most one per
//! writer is being encoded while one fills.

use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::error::RunError;
use crate::normalize::cloudtrail::EventRow;
use crate::sink::parquet::{PartitionWriter, StagedFile};
use crate::sink::spill::Spill;
use crate::sources::cloudtrail::{BadEvent, EventIds};
use crate::sources::orgtrail;

/// Shared by every account of a run; `take` may be called from any of them.
pub struct EventSink {
    inner: Mutex<Inner>,
    /// Signalled when a writer is free again.
    freed: Condvar,
    /// Every event id of the run: callers keep a row only when it is new here.
    seen: EventIds,
}

struct Inner {
    /// The writers no reader is encoding with now.
    idle: Vec<PartitionWriter<EventRow>>,
    /// Rows not yet taken to be encoded, and their approximate size.
    waiting: Vec<EventRow>,
    waiting_bytes: u64,
    /// The size at which a reader takes `waiting` to encode: `flush_bytes` shared by writers.
    batch_bytes: u64,
    bad: Spill,
    /// The first encoding or spill error; the run fails with it at `finish`.
    error: Option<String>,
}

impl EventSink {
    /// `writer(k)` makes writer k of `writers` (its files named apart from the others').
    pub fn new(
        writers: usize,
        flush_bytes: u64,
        writer: impl Fn(usize) -> PartitionWriter<EventRow>,
        bad: Spill,
    ) -> Self {
        let writers = writers.max(1);
        Self {
            inner: Mutex::new(Inner {
                idle: (0..writers).map(writer).collect(),
                waiting: Vec::new(),
                waiting_bytes: 0,
                batch_bytes: (flush_bytes / writers as u64).max(1),
                bad,
                error: None,
            }),
            freed: Condvar::new(),
            seen: EventIds::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Encodes `rows` with a free writer on this thread (waiting while every writer is busy,
    /// which only a caller beyond one per writer does), then frees the writer again.
    fn encode(&self, rows: Vec<EventRow>) {
        let mut writer = {
            let mut inner = self.lock();
            loop {
                if let Some(writer) = inner.idle.pop() {
                    break writer;
                }
                inner = self.freed.wait(inner).unwrap_or_else(|p| p.into_inner());
            }
        };
        let encoded = writer.push_all(rows).map_err(|e| e.to_string());
        let mut inner = self.lock();
        inner.idle.push(writer);
        if let Err(e) = encoded {
            inner.error.get_or_insert(e);
        }
        drop(inner);
        self.freed.notify_one();
    }

    /// The encoded files, and the quarantine file with its line count (if any). Called once
    /// every reader is done, so every writer is free; the rows still waiting go to the first.
    #[allow(clippy::type_complexity)]
    pub fn finish(self) -> Result<(Vec<StagedFile>, Option<(PathBuf, u64)>), RunError> {
        let mut inner = self.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut error = inner.error.take();
        let mut writers = std::mem::take(&mut inner.idle);
        let rows = std::mem::take(&mut inner.waiting);
        if let Some(writer) = writers.first_mut().filter(|_| !rows.is_empty()) {
            if let Err(e) = writer.push_all(rows) {
                error.get_or_insert(e.to_string());
            }
        }
        let mut files = Vec::new();
        for writer in writers {
            match writer.finish() {
                Ok(done) => files.extend(done),
                Err(e) => {
                    error.get_or_insert(e.to_string());
                }
            }
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

    /// Keeps `rows` and `bad`; when the rows fill a buffer, encodes it on this thread.
    fn take(&self, rows: Vec<EventRow>, bad: Vec<BadEvent>) {
        let full = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            if inner.error.is_some() {
                return;
            }
            inner.waiting_bytes += rows.iter().map(|r| r.approx_bytes() as u64).sum::<u64>();
            inner.waiting.extend(rows);
            for record in &bad {
                if let Err(e) = inner.bad.push(record) {
                    inner.error = Some(format!("writing the quarantine: {e}"));
                    return;
                }
            }
            (inner.waiting_bytes >= inner.batch_bytes).then(|| {
                inner.waiting_bytes = 0;
                std::mem::take(&mut inner.waiting)
            })
        };
        if let Some(rows) = full {
            self.encode(rows);
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
    /// Four readers share one or three writers (so some wait for a free one): every event is
    /// written once, and each writer's files are its own.
    fn every_event_once_whatever_the_writer_count() {
        for writers in [1, 3] {
            let dir = tempfile::tempdir().unwrap();
            let stamp = RunStamp {
                run_id: "r".into(),
                collected_at_ms: 0,
            };
            let writer = |k: usize| {
                PartitionWriter::new(dir.path().to_owned(), stamp.clone(), 4096, 1 << 30)
                    .named(&format!("r-{k}"))
            };
            let sink = EventSink::new(writers, 4096, writer, Spill::new(dir.path().join("bad")));
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
                "{writers} writer(s)"
            );
            let mut names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
            names.dedup();
            assert_eq!(names.len(), files.len(), "file names are distinct");
        }
    }

    /// Writers that cannot write (their work directory is a file) fail the run with their own
    /// error, and no `take` waits forever on them.
    #[test]
    fn writers_that_fail_fail_the_run_with_their_error() {
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
        let error = sink.finish().expect_err("the writers failed");
        let RunError::Encode(message) = error else {
            panic!("{error}")
        };
        assert!(message.contains("Not a directory"), "{message}");
    }
}
