//! One writer per table: collecting tasks send rows through a bounded channel, a page's rows at
//! a time, and the writer buffers, sorts and encodes them on a blocking thread of its own. No
//! task waits on a lock while another's flush encodes, and the async runtime never runs the
//! encoder.

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::error::{RunError, TargetFailure, TargetStatus};
use crate::sink::parquet::{LakeRow, PartitionWriter, StagedFile};

/// Batches in flight between the collecting tasks and a writer (a GetFindings page is at most
/// 50 findings); a full channel makes senders wait. A batch, not a row, per message: the
/// findings bench at 2 threads spent its time waking the writer for each row.
pub const CHANNEL_BATCHES: usize = 32;

/// Bytes of rows in flight to a writer (by [`LakeRow::approx_bytes`]): a sender waits while
/// the batches sent and not yet in the writer's buffer hold this much. Typical pages (50
/// findings of a few KiB) never reach it; pages of findings near the 16 MiB body limit would
/// otherwise queue [`CHANNEL_BATCHES`] × 16 MiB. A batch larger than the whole budget waits for
/// an empty channel and then goes alone.
pub const CHANNEL_BYTES: usize = 16 << 20;

/// The byte budget counts in KiB (a semaphore's permits are `u32`).
const CHANNEL_KIB: u32 = (CHANNEL_BYTES >> 10) as u32;

/// A batch of rows and its share of the byte budget, given back once the writer holds them.
type Batch<R> = (Vec<R>, OwnedSemaphorePermit);

/// Where a collecting task sends a table's rows.
pub struct RowSink<R> {
    tx: mpsc::Sender<Batch<R>>,
    budget: Arc<Semaphore>,
}

impl<R> Clone for RowSink<R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            budget: self.budget.clone(),
        }
    }
}

impl<R: LakeRow + Send + 'static> RowSink<R> {
    /// Hands `rows` to the writer, waiting while its channel is full (in batches or in bytes).
    /// A writer that stopped (encoding failed) fails the sending target; the run reports the
    /// writer's own error.
    pub async fn send(&self, rows: Vec<R>) -> Result<(), TargetFailure> {
        if rows.is_empty() {
            return Ok(());
        }
        let stopped = || {
            TargetFailure::new(
                TargetStatus::Error,
                "Encode",
                "the table's writer stopped (the run fails with its error)",
            )
        };
        let bytes: usize = rows.iter().map(LakeRow::approx_bytes).sum();
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, CHANNEL_KIB);
        let share = self
            .budget
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| stopped())?;
        self.tx.send((rows, share)).await.map_err(|_| stopped())
    }
}

/// A sink and the receiving end its writer drains.
fn channel<R>() -> (RowSink<R>, mpsc::Receiver<Batch<R>>) {
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let budget = Arc::new(Semaphore::new(CHANNEL_KIB as usize));
    (RowSink { tx, budget }, rx)
}

/// The writer's task; [`Writer::finish`] waits for the files once every sink is dropped.
pub struct Writer {
    handle: JoinHandle<Result<Vec<StagedFile>, String>>,
}

/// Starts a writer on its own blocking thread.
pub fn spawn<R: LakeRow + Send + 'static>(mut writer: PartitionWriter<R>) -> (RowSink<R>, Writer) {
    let (sink, mut rx) = channel::<R>();
    let handle = tokio::task::spawn_blocking(move || {
        while let Some((rows, share)) = rx.blocking_recv() {
            for row in rows {
                writer.push(row).map_err(|e| e.to_string())?;
            }
            // The rows are the writer's now (bounded by its flush size): free their bytes.
            drop(share);
        }
        writer.finish().map_err(|e| e.to_string())
    });
    (sink, Writer { handle })
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

    /// Rows waiting for the writer are bounded in bytes, not only in batches: with the budget
    /// taken by batches the writer has not received, the next sender waits until one is.
    #[tokio::test]
    async fn a_sender_waits_while_the_byte_budget_is_in_flight() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas/guardduty/examples/port_probe_instance.json");
        let text = std::fs::read_to_string(path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut big = crate::normalize::guardduty::normalize(&value, text).unwrap();
        big.raw = "x".repeat(CHANNEL_BYTES / 4);
        let (sink, mut rx) = channel();
        // Three batches of a quarter each: far below CHANNEL_BATCHES, within the bytes.
        for _ in 0..3 {
            sink.send(vec![big.clone()]).await.unwrap();
        }
        let wait = std::time::Duration::from_millis(200);
        let fourth = sink.send(vec![big.clone()]);
        tokio::pin!(fourth);
        assert!(
            tokio::time::timeout(wait, &mut fourth).await.is_err(),
            "a fourth quarter exceeds the budget (512 bytes a row over): the sender waits"
        );
        // The writer takes one batch and holds its rows: its bytes are free again.
        let (_rows, share) = rx.recv().await.unwrap();
        drop(share);
        tokio::time::timeout(wait, &mut fourth)
            .await
            .expect("the sender goes on once the writer took a batch")
            .unwrap();
        // A batch larger than the whole budget still goes, alone, once the channel is empty.
        while rx.try_recv().is_ok() {}
        big.raw = "x".repeat(CHANNEL_BYTES * 2);
        tokio::time::timeout(wait, sink.send(vec![big]))
            .await
            .expect("an oversized batch is not stuck forever")
            .unwrap();
    }
}
