//! A table's encoder threads when `--threads` is above 1: batches of rows go to whichever
//! encoder is free, and each encoder sorts and encodes a batch whole into its own files. The
//! queue holds one batch, so a sender waits while every encoder is busy, which bounds memory.
//! Once every encoder has stopped (they all failed), a send fails instead of waiting forever.
//! The findings writer and the CloudTrail sink both hand their batches here.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::sink::parquet::{LakeRow, PartitionWriter, StagedFile};

/// Running encoders and the queue they take batches from.
pub struct Encoders<R> {
    queue: SyncSender<Vec<R>>,
    threads: Vec<JoinHandle<Result<Vec<StagedFile>, String>>>,
}

/// The file stem of encoder `k` of `encoders`: the run's own stem when it is the only one,
/// `<stem>-<k>` when there are several (each writes its own files).
pub fn stem(run_stem: &str, k: usize, encoders: usize) -> String {
    match encoders {
        1 => run_stem.to_owned(),
        _ => format!("{run_stem}-{k}"),
    }
}

/// A send found no encoder left to take the batch; [`Encoders::finish`] reports why.
#[derive(Debug)]
pub struct Stopped;

impl<R: LakeRow + Send + 'static> Encoders<R> {
    /// One thread per writer (each writer's files named apart from the others').
    pub fn start(writers: Vec<PartitionWriter<R>>) -> Self {
        let (queue, batches) = sync_channel::<Vec<R>>(1);
        // The encoders own the receiving end together: it is dropped when the last one stops.
        let batches = Arc::new(Mutex::new(batches));
        let threads = writers
            .into_iter()
            .map(|mut writer| {
                let batches = batches.clone();
                std::thread::spawn(move || {
                    loop {
                        let next = match batches.lock() {
                            Ok(batches) => batches.recv(),
                            Err(_) => break,
                        };
                        let Ok(rows) = next else { break };
                        for row in rows {
                            writer.push(row).map_err(|e| e.to_string())?;
                        }
                        writer.flush().map_err(|e| e.to_string())?;
                    }
                    writer.finish().map_err(|e| e.to_string())
                })
            })
            .collect();
        Self { queue, threads }
    }

    /// Hands `rows` to the next free encoder, waiting while all are busy and one batch waits.
    pub fn send(&self, rows: Vec<R>) -> Result<(), Stopped> {
        self.queue.send(rows).map_err(|_| Stopped)
    }

    /// Closes the queue and waits for every encoder: all their files (by `dt`, then name), or
    /// the first encoder's error. An encoder's panic is resumed here.
    pub fn finish(self) -> Result<Vec<StagedFile>, String> {
        drop(self.queue);
        let mut files = Vec::new();
        let mut error = None;
        for thread in self.threads {
            match thread.join() {
                Ok(Ok(done)) => files.extend(done),
                Ok(Err(e)) => {
                    error.get_or_insert(e);
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        match error {
            Some(e) => Err(e),
            None => {
                files.sort_by(|a, b| (a.dt, &a.name).cmp(&(b.dt, &b.name)));
                Ok(files)
            }
        }
    }
}

/// A work directory no encoder can write to (it is a file), for tests of encoders that fail.
#[cfg(test)]
pub(crate) fn unwritable_dir(tmp: &std::path::Path) -> std::path::PathBuf {
    let path = tmp.join("file");
    std::fs::write(&path, b"").unwrap();
    path
}
