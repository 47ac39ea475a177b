//! One writer per table: collecting tasks send rows through a bounded channel, a page's rows at
//! a time, and the writer buffers, sorts and encodes them on a blocking thread of its own. No
//! task waits on a lock while another's flush encodes, and the async runtime never runs the
//! encoder.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{RunError, TargetFailure, TargetStatus};
use crate::sink::parquet::{LakeRow, PartitionWriter, StagedFile};

/// Batches in flight between the collecting tasks and a writer (a GetFindings page is at most
/// 50 findings); a full channel makes senders wait. A batch, not a row, per message: the
/// findings bench at 2 threads spent its time waking the writer for each row.
pub const CHANNEL_BATCHES: usize = 32;

/// Where a collecting task sends a table's rows.
pub struct RowSink<R> {
    tx: mpsc::Sender<Vec<R>>,
}

impl<R> Clone for RowSink<R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<R: Send + 'static> RowSink<R> {
    /// Hands `rows` to the writer, waiting while its channel is full. A writer that stopped
    /// (encoding failed) fails the sending target; the run reports the writer's own error.
    pub async fn send(&self, rows: Vec<R>) -> Result<(), TargetFailure> {
        if rows.is_empty() {
            return Ok(());
        }
        self.tx.send(rows).await.map_err(|_| {
            TargetFailure::new(
                TargetStatus::Error,
                "Encode",
                "the table's writer stopped (the run fails with its error)",
            )
        })
    }
}

/// The writer's task; [`Writer::finish`] waits for the files once every sink is dropped.
pub struct Writer {
    handle: JoinHandle<Result<Vec<StagedFile>, String>>,
}

/// Starts a writer on its own blocking thread.
pub fn spawn<R: LakeRow + Send + 'static>(mut writer: PartitionWriter<R>) -> (RowSink<R>, Writer) {
    let (tx, mut rx) = mpsc::channel::<Vec<R>>(CHANNEL_BATCHES);
    let handle = tokio::task::spawn_blocking(move || {
        while let Some(rows) = rx.blocking_recv() {
            for row in rows {
                writer.push(row).map_err(|e| e.to_string())?;
            }
        }
        writer.finish().map_err(|e| e.to_string())
    });
    (RowSink { tx }, Writer { handle })
}

impl Writer {
    /// The encoded files. Every [`RowSink`] of this writer must be dropped first.
    pub async fn finish(self) -> Result<Vec<StagedFile>, RunError> {
        match self.handle.await {
            Ok(result) => result.map_err(RunError::Encode),
            Err(e) => Err(RunError::Encode(format!("the writer task ended: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::guardduty::RunStamp;

    #[tokio::test]
    async fn rows_from_many_senders_all_reach_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = RunStamp {
            run_id: "r".into(),
            collected_at_ms: 0,
        };
        let (sink, writer) = spawn(crate::sink::parquet::FindingsWriter::new(
            dir.path().to_owned(),
            stamp,
            1 << 20,
            128 << 20,
        ));
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas/guardduty/examples/port_probe_instance.json");
        let text = std::fs::read_to_string(path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let raw = crate::normalize::guardduty::normalize(&value, text).unwrap();
        let tasks: Vec<_> = (0..4)
            .map(|t| {
                let sink = sink.clone();
                let raw = raw.clone();
                tokio::spawn(async move {
                    for page in 0..(CHANNEL_BATCHES * 2) {
                        let rows = (0..50)
                            .map(|i| {
                                let mut row = raw.clone();
                                row.id = format!("{t}-{page}-{i}");
                                row
                            })
                            .collect();
                        sink.send(rows).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        drop(sink);
        let files = writer.finish().await.unwrap();
        let rows: usize = files.iter().map(|f| f.rows).sum();
        assert_eq!(rows, 4 * CHANNEL_BATCHES * 2 * 50);
    }
}
