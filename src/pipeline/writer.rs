//! One writer per table: collecting tasks send rows through a bounded channel, a page's rows at
//! a time, and the writer buffers, sorts and encodes them on a blocking thread of its own. No
//! task waits on a lock while another's flush encodes, and the async runtime never runs the
//! encoder.

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::error::{RunError, TargetFailure, TargetStatus};
use crate::sink::encoders::Encoders;
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

/// Starts a table's writer on a blocking thread of its own. `writers` are its encoders (at least
/// one; each writes its own files): with one, that thread buffers and encodes; with more, it
/// gathers rows into batches of `batch_bytes` and hands each, sorted and encoded, to whichever
/// encoder is free, on threads of their own. A run with less than one batch of rows writes one
/// file per `dt` either way.
pub fn spawn<R: LakeRow + Send + 'static>(
    mut writers: Vec<PartitionWriter<R>>,
    batch_bytes: u64,
) -> (RowSink<R>, Writer) {
    let (sink, rx) = channel::<R>();
    let handle = match (writers.pop(), writers.is_empty()) {
        (Some(writer), true) => tokio::task::spawn_blocking(move || encode(writer, rx)),
        (Some(last), false) => {
            writers.push(last);
            tokio::task::spawn_blocking(move || gather(writers, batch_bytes, rx))
        }
        (None, _) => tokio::task::spawn_blocking(|| Err("a table needs a writer".to_owned())),
    };
    (sink, Writer { handle })
}

/// One encoder: the rows go into `writer` as they come.
fn encode<R: LakeRow>(
    mut writer: PartitionWriter<R>,
    mut rx: mpsc::Receiver<Batch<R>>,
) -> Result<Vec<StagedFile>, String> {
    while let Some((rows, share)) = rx.blocking_recv() {
        for row in rows {
            writer.push(row).map_err(|e| e.to_string())?;
        }
        // The rows are the writer's now (bounded by its flush size): free their bytes.
        drop(share);
    }
    writer.finish().map_err(|e| e.to_string())
}

/// Several encoders: rows gathered here into batches of `batch_bytes`, each batch encoded whole
/// by one [`Encoders`] thread. A batch waits while every encoder is busy and one batch is queued.
fn gather<R: LakeRow + Send + 'static>(
    writers: Vec<PartitionWriter<R>>,
    batch_bytes: u64,
    mut rx: mpsc::Receiver<Batch<R>>,
) -> Result<Vec<StagedFile>, String> {
    let encoders = Encoders::start(writers);
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some((rows, share)) = rx.blocking_recv() {
        bytes += rows.iter().map(|r| r.approx_bytes() as u64).sum::<u64>();
        batch.extend(rows);
        drop(share);
        if bytes >= batch_bytes {
            bytes = 0;
            // No encoder left to take it (they all failed): stop; senders see the channel gone
            // and `finish` reports why.
            if encoders.send(std::mem::take(&mut batch)).is_err() {
                break;
            }
        }
    }
    drop(rx);
    if !batch.is_empty() {
        // Refused only if every encoder failed, which `finish` reports.
        let _ = encoders.send(batch);
    }
    encoders.finish()
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

    /// Four tasks send 64 pages of 50 findings each through a writer of `encoders` encoders;
    /// returns the files and the ids read back from them.
    async fn send_and_read_back(
        encoders: usize,
        batch_bytes: u64,
    ) -> (Vec<StagedFile>, Vec<String>) {
        use arrow_array::cast::AsArray;
        let dir = tempfile::tempdir().unwrap();
        let stamp = RunStamp {
            run_id: "r".into(),
            collected_at_ms: 0,
        };
        let writers = (0..encoders)
            .map(|k| {
                crate::sink::parquet::FindingsWriter::new(
                    dir.path().to_owned(),
                    stamp.clone(),
                    1 << 20,
                    128 << 20,
                )
                .named(&format!("r-{k}"))
            })
            .collect();
        let (sink, writer) = spawn(writers, batch_bytes);
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
        let mut ids = Vec::new();
        for file in &files {
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&file.path).unwrap(),
            )
            .unwrap();
            for batch in reader.build().unwrap() {
                let batch = batch.unwrap();
                let column = batch.column_by_name("id").unwrap().as_string::<i32>();
                ids.extend(column.iter().map(|v| v.unwrap().to_owned()));
            }
        }
        (files, ids)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_row_once_whatever_the_encoder_count() {
        let mut expected: Vec<String> = (0..4)
            .flat_map(|t| {
                (0..CHANNEL_BATCHES * 2)
                    .flat_map(move |p| (0..50).map(move |i| format!("{t}-{p}-{i}")))
            })
            .collect();
        expected.sort();
        // (encoders, batch size): one encoder; three with many small batches; three with
        // fewer rows than one batch.
        for (encoders, batch_bytes) in [(1, 1 << 20), (3, 256 << 10), (3, 1 << 30)] {
            let (files, mut ids) = send_and_read_back(encoders, batch_bytes).await;
            ids.sort();
            assert_eq!(
                ids, expected,
                "{encoders} encoder(s), batches of {batch_bytes} bytes"
            );
            assert_eq!(files.iter().map(|f| f.rows).sum::<usize>(), expected.len());
            let mut names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), files.len(), "file names are distinct");
            match (encoders, batch_bytes) {
                (3, 1_073_741_824) => assert_eq!(files.len(), 1, "less than a batch: one file"),
                (3, _) => assert!(
                    files
                        .iter()
                        .map(|f| &f.name[..3])
                        .collect::<std::collections::HashSet<_>>()
                        .len()
                        > 1,
                    "many batches are shared among the encoders"
                ),
                _ => {}
            }
        }
    }

    /// Encoders that all fail (here: their work directory is a file, so no Parquet file can be
    /// made) stop the senders with an error and the writer with the encoders' error; nothing
    /// waits forever on a queue no one reads. (The runtime is shut down with a timeout, so a
    /// regression fails here rather than hanging on the blocked writer thread.)
    #[test]
    fn encoders_that_all_fail_stop_senders_and_writer() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = crate::sink::encoders::unwritable_dir(dir.path());
        let stamp = RunStamp {
            run_id: "r".into(),
            collected_at_ms: 0,
        };
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas/guardduty/examples/port_probe_instance.json");
        let text = std::fs::read_to_string(path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let row = crate::normalize::guardduty::normalize(&value, text).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let wait = std::time::Duration::from_secs(60);
        let (refused, finished) = runtime.block_on(async {
            let writers = (0..3)
                .map(|k| {
                    let work = not_a_dir.clone();
                    crate::sink::parquet::FindingsWriter::new(
                        work,
                        stamp.clone(),
                        1 << 20,
                        128 << 20,
                    )
                    .named(&format!("r-{k}"))
                })
                .collect();
            let (sink, writer) = spawn(writers, 64 << 10);
            let sending = async {
                for _ in 0..100_000 {
                    if sink.send(vec![row.clone(); 50]).await.is_err() {
                        return true;
                    }
                }
                false
            };
            let refused = tokio::time::timeout(wait, sending).await;
            drop(sink);
            (refused, tokio::time::timeout(wait, writer.finish()).await)
        });
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        assert_eq!(refused, Ok(true), "a send fails once every encoder stopped");
        let error = finished
            .expect("the writer ends")
            .expect_err("with the encoders' error");
        assert!(matches!(error, RunError::Encode(_)), "{error}");
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
