//! `guardlake compact`: merges the small files of closed partitions into files near a target
//! size, through the same staged publish and journal as a run, so no row is lost or doubled.
//! A partition is closed once its day is over by more than a day (new finding versions land in
//! today's `dt`), or when named with `--dt`.

use std::fs::File;
use std::path::Path;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_ord::sort::{lexsort_to_indices, SortColumn};
use arrow_select::concat::concat_batches;
use arrow_select::take::take;
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use tracing::info;

use crate::sink::lake::{partitions, read_files};
use crate::sink::parquet::writer_properties;
use crate::sink::store::Store;
use crate::state::crash_point;
use crate::state::journal::{self, Copy, Journal, PublishError};

/// Tables compaction knows, with the time column rows are sorted by after account and region.
pub const TABLES: [(&str, &str); 5] = [
    ("findings", "updated_at"),
    ("runs", "started_at"),
    ("schema_drift", "first_seen"),
    ("cloudtrail_events", "event_time"),
    ("finding_events", "finding_updated_at"),
];

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("{0}")]
    Publish(#[from] PublishError),
    #[error("reading or writing Parquet for {table} dt={dt}: {message}")]
    Parquet {
        table: String,
        dt: String,
        message: String,
    },
    #[error("unknown table {0:?}; compaction knows findings, runs, schema_drift, cloudtrail_events and finding_events")]
    UnknownTable(String),
}

/// What compaction did to one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub table: String,
    pub dt: String,
    pub files_before: usize,
    pub files_after: usize,
    pub rows: usize,
}

fn sorted(batches: &[RecordBatch], time_column: &str) -> Result<RecordBatch, String> {
    let schema = batches.first().map(|b| b.schema()).ok_or("no rows")?;
    let all = concat_batches(&schema, batches).map_err(|e| e.to_string())?;
    let keys: Vec<SortColumn> = ["account_id", "region", time_column]
        .iter()
        .filter_map(|name| {
            all.column_by_name(name).map(|values| SortColumn {
                values: values.clone(),
                options: None,
            })
        })
        .collect();
    if keys.is_empty() {
        return Ok(all);
    }
    let indices = lexsort_to_indices(&keys, None).map_err(|e| e.to_string())?;
    let columns: Vec<ArrayRef> = all
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &indices, None))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())
}

/// Writes `batch` into files of about `target_bytes`; returns their paths and row counts.
fn write_rolled(
    batch: &RecordBatch,
    dir: &Path,
    stem: &str,
    target_bytes: u64,
) -> Result<Vec<(std::path::PathBuf, usize)>, String> {
    let mut out = Vec::new();
    let mut offset = 0;
    let chunk = 8192;
    while offset < batch.num_rows() {
        let path = dir.join(format!("{stem}-{:04}.parquet", out.len() + 1));
        let mut writer = ArrowWriter::try_new(
            File::create(&path).map_err(|e| e.to_string())?,
            batch.schema(),
            Some(writer_properties()),
        )
        .map_err(|e| e.to_string())?;
        let start = offset;
        while offset < batch.num_rows() {
            let len = chunk.min(batch.num_rows() - offset);
            writer
                .write(&batch.slice(offset, len))
                .map_err(|e| e.to_string())?;
            offset += len;
            if (writer.bytes_written() + writer.in_progress_size()) as u64 >= target_bytes {
                break;
            }
        }
        writer.close().map_err(|e| e.to_string())?;
        out.push((path, offset - start));
    }
    Ok(out)
}

/// Compacts closed partitions (or the one named) of one table or of every table.
pub async fn compact(
    store: &Store,
    run_id: &str,
    work_dir: &Path,
    table: Option<&str>,
    dt: Option<NaiveDate>,
    target_bytes: u64,
    today: NaiveDate,
) -> Result<Vec<Merged>, CompactError> {
    let tables: Vec<(&str, &str)> = match table {
        None => TABLES.to_vec(),
        Some(name) => vec![*TABLES
            .iter()
            .find(|(t, _)| *t == name)
            .ok_or_else(|| CompactError::UnknownTable(name.to_owned()))?],
    };
    let mut merged = Vec::new();
    for (table, time_column) in tables {
        for (part_dt, files) in partitions(store, table).await.map_err(PublishError::from)? {
            let Ok(date) = NaiveDate::parse_from_str(&part_dt, "%Y-%m-%d") else {
                continue;
            };
            let selected = match dt {
                Some(wanted) => wanted == date,
                None => date < today.pred_opt().unwrap_or(today),
            };
            if !selected || files.len() < 2 {
                continue;
            }
            let parquet_err = |message: String| CompactError::Parquet {
                table: table.to_owned(),
                dt: part_dt.clone(),
                message,
            };
            let keys: Vec<String> = files.iter().map(|(k, _)| k.clone()).collect();
            let batches = read_files(store, &keys, work_dir)
                .await
                .map_err(parquet_err)?;
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let all = sorted(&batches, time_column).map_err(parquet_err)?;
            let stem = format!("compact-{run_id}");
            let written = write_rolled(&all, work_dir, &stem, target_bytes).map_err(parquet_err)?;
            let tag = format!("{table}-{part_dt}");
            let mut journal = Journal {
                run_id: format!("{run_id}-{tag}"),
                kind: "compact".into(),
                deletes: keys.clone(),
                ..Journal::default()
            };
            for (path, _) in &written {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let staged = format!(
                    "{}{table}/dt={part_dt}/{name}",
                    journal::staging_prefix(&journal.run_id)
                );
                store
                    .create_from_file(path, &staged)
                    .await
                    .map_err(|e| parquet_err(e.to_string()))?;
                journal.copies.push(Copy {
                    from: staged,
                    to: format!("{table}/dt={part_dt}/{name}"),
                });
                let _ = std::fs::remove_file(path);
            }
            crash_point(crate::state::CrashPoint::CompactAfterStage);
            journal::commit(store, &journal, crate::state::Phase::Compact).await?;
            info!(table, dt = %part_dt, files_before = files.len(), files_after = written.len(), rows, "Compacted a partition.");
            merged.push(Merged {
                table: table.to_owned(),
                dt: part_dt,
                files_before: files.len(),
                files_after: written.len(),
                rows,
            });
        }
    }
    Ok(merged)
}
