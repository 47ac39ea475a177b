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

use std::sync::Arc;

use crate::config::ValidatedConfig;
use crate::error::RunError;
use crate::pipeline::lock::{open_store, with_lock};
use crate::pipeline::workdir::WorkDir;
use crate::pipeline::RunOptions;
use crate::sink::lake::{partitions, read_files};
use crate::sink::parquet::writer_properties;
use crate::sink::store::Store;
use crate::state::crash_point;
use crate::state::journal::{self, Copy, Journal, PublishError};
use crate::table::Table;

/// The time column a table's rows are sorted by, after account and region.
const fn time_column(table: Table) -> &'static str {
    match table {
        Table::Findings => "updated_at",
        Table::Runs => "started_at",
        Table::SchemaDrift => "first_seen",
        Table::CloudtrailEvents => "event_time",
        Table::FindingEvents => "finding_updated_at",
        Table::Coverage => "collected_at",
    }
}

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
    #[error("unknown table {0:?}; compaction knows findings, runs, coverage, schema_drift, cloudtrail_events and finding_events")]
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

/// `guardlake compact`: under the lake's lock, after recovery. Only the lake is touched: no
/// AWS call at all for a local one, S3 alone for a bucket.
pub async fn run(
    config: ValidatedConfig,
    options: RunOptions,
    table: Option<String>,
    dt: Option<NaiveDate>,
) -> Result<Vec<Merged>, RunError> {
    let run_id = uuid::Uuid::now_v7().to_string();
    let s3 = || async {
        crate::aws::s3_client(
            &crate::aws::base_config(&config).await,
            options.s3_path_style,
        )
    };
    let store = Arc::new(open_store(&config, s3).await);
    with_lock(&store, &run_id, config.lock_lease_secs, |_lock| async {
        let work_dir = WorkDir::create(&config, &run_id)?;
        let today = chrono::Utc::now().date_naive();
        let merged = merge(
            &store,
            &run_id,
            &work_dir.path,
            table.as_deref(),
            dt,
            config.target_file_bytes,
            today,
        )
        .await;
        merged.map_err(|e| RunError::Publish(e.to_string()))
    })
    .await
}

/// `run --compact`: closed partitions of every table, once a run has published.
pub async fn after_run(
    store: &Store,
    run_id: &str,
    work_dir: &Path,
    target_bytes: u64,
) -> Result<(), RunError> {
    let today = chrono::Utc::now().date_naive();
    let merged = merge(store, run_id, work_dir, None, None, target_bytes, today)
        .await
        .map_err(|e| RunError::Publish(e.to_string()))?;
    for m in merged {
        info!(table = %m.table, dt = %m.dt, files_before = m.files_before, files_after = m.files_after, "Compacted.");
    }
    Ok(())
}

/// Stages the merged files of one partition and names their copies in the journal.
async fn stage(
    store: &Store,
    journal: &mut Journal,
    table: Table,
    dt: &str,
    written: &[(std::path::PathBuf, usize)],
) -> Result<(), String> {
    let staging = journal::staging_prefix(&journal.run_id);
    for (path, _) in written {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let key = table.key(dt, &name);
        let staged = format!("{staging}{key}");
        store
            .create_from_file(path, &staged)
            .await
            .map_err(|e| e.to_string())?;
        journal.copies.push(Copy {
            from: staged,
            to: key,
        });
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Compacts closed partitions (or the one named) of one table or of every table.
pub async fn merge(
    store: &Store,
    run_id: &str,
    work_dir: &Path,
    table: Option<&str>,
    dt: Option<NaiveDate>,
    target_bytes: u64,
    today: NaiveDate,
) -> Result<Vec<Merged>, CompactError> {
    let tables: Vec<Table> =
        match table {
            None => Table::ALL.to_vec(),
            Some(name) => vec![Table::from_name(name)
                .ok_or_else(|| CompactError::UnknownTable(name.to_owned()))?],
        };
    let mut merged = Vec::new();
    for table in tables {
        let (kind, time_column) = (table, time_column(table));
        let table = table.name();
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
            stage(store, &mut journal, kind, &part_dt, &written)
                .await
                .map_err(parquet_err)?;
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
