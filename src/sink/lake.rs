//! Reading the lake back: partitions of a table, their rows, and the finding versions already
//! published (for backfills, which add only what is missing).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMillisecondType;
use arrow_array::RecordBatch;
use chrono::NaiveDate;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::sink::store::{Store, StoreError};

/// Partitions of a table: dt → data files (key, bytes).
pub async fn partitions(
    store: &Store,
    table: &str,
) -> Result<BTreeMap<String, Vec<(String, u64)>>, StoreError> {
    let mut parts: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (key, size) in store.list(&format!("{table}/")).await? {
        let mut pieces = key.split('/');
        let (Some(_), Some(dir), Some(name)) = (pieces.next(), pieces.next(), pieces.next()) else {
            continue;
        };
        if let (Some(dt), true) = (
            dir.strip_prefix("dt="),
            name.ends_with(".parquet") && !name.starts_with(['.', '_']),
        ) {
            parts
                .entry(dt.to_owned())
                .or_default()
                .push((key.clone(), size));
        }
    }
    Ok(parts)
}

/// Reads every row of the given files (downloaded into `work_dir`).
pub async fn read_files(
    store: &Store,
    keys: &[String],
    work_dir: &Path,
) -> Result<Vec<RecordBatch>, String> {
    let mut batches = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let local = work_dir.join(format!("read-{i}.parquet"));
        store
            .download(key, &local)
            .await
            .map_err(|e| e.to_string())?;
        let file = File::open(&local).map_err(|e| e.to_string())?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| e.to_string())?
            .build()
            .map_err(|e| e.to_string())?;
        for batch in reader {
            batches.push(batch.map_err(|e| e.to_string())?);
        }
        let _ = std::fs::remove_file(&local);
    }
    Ok(batches)
}

/// The keys of a table's partitions from `first` to `last` (inclusive).
async fn files_between(
    store: &Store,
    table: &str,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for (dt, files) in partitions(store, table).await.map_err(|e| e.to_string())? {
        let Ok(date) = NaiveDate::parse_from_str(&dt, "%Y-%m-%d") else {
            continue;
        };
        if (first..=last).contains(&date) {
            keys.extend(files.into_iter().map(|(k, _)| k));
        }
    }
    Ok(keys)
}

/// The event ids in `cloudtrail_events` partitions from `first` to `last` (inclusive): what a
/// CloudTrail backfill must not add again.
pub async fn existing_event_ids(
    store: &Store,
    work_dir: &Path,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<HashSet<String>, String> {
    let names = files_between(store, "cloudtrail_events", first, last).await?;
    let mut ids = HashSet::new();
    for batch in read_files(store, &names, work_dir).await? {
        let column = batch
            .column_by_name("event_id")
            .ok_or("cloudtrail_events file without event_id")?
            .as_string::<i32>();
        ids.extend(column.iter().flatten().map(str::to_owned));
    }
    Ok(ids)
}

/// (account_id, region, id, updated_at ms) of every finding version in `findings` partitions
/// from `first` to `last` (inclusive).
pub async fn existing_versions(
    store: &Store,
    work_dir: &Path,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<HashSet<(String, String, String, i64)>, String> {
    let mut keys = HashSet::new();
    let names = files_between(store, "findings", first, last).await?;
    for batch in read_files(store, &names, work_dir).await? {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("findings file without {name}"))
        };
        let (accounts, regions, ids) = (
            column("account_id")?.as_string::<i32>(),
            column("region")?.as_string::<i32>(),
            column("id")?.as_string::<i32>(),
        );
        let updated = column("updated_at")?.as_primitive::<TimestampMillisecondType>();
        for row in 0..batch.num_rows() {
            keys.insert((
                accounts.value(row).to_owned(),
                regions.value(row).to_owned(),
                ids.value(row).to_owned(),
                updated.value(row),
            ));
        }
    }
    Ok(keys)
}
