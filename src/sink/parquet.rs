//! Parquet encoding: writer properties in one place, and a writer that splits rows by `dt`,
//! sorts each flushed group by (account_id, region, updated_at) so row-group statistics prune,
//! and rolls files near a target size. Memory is bounded by `flush_bytes`, not by the run.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use chrono::NaiveDate;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowRowGroupWriterFactory};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use super::text::TextPages;
use crate::normalize::cloudtrail::{events_batch, EventRow, Text};
use crate::normalize::guardduty::{to_record_batch, FindingVersion, RunStamp};
use crate::normalize::schema;

/// A row of a table that `PartitionWriter` writes: its partition, its sort key, its size.
pub trait LakeRow: Sized {
    fn dt(&self) -> NaiveDate;
    /// Bytes the row holds in memory, roughly; the writer flushes by this.
    fn approx_bytes(&self) -> usize;
    /// Order inside a row group: (account_id, region), then time, then id, so statistics prune.
    fn sort_key(&self) -> SortKey<'_>;
    /// The table's columns, in file order.
    fn schema() -> SchemaRef;
    /// Text columns written straight from the rows ([`TextPages`]), not through Arrow.
    fn text_columns() -> &'static [&'static str] {
        &[]
    }
    /// This row's value of the column `text_columns()[column]` (`stamp` holds the run's).
    fn text<'a>(&'a self, _column: usize, _stamp: &'a RunStamp) -> Option<&'a str> {
        None
    }
    /// The Arrow columns of `rows`: every column of [`Self::schema`] but the text ones.
    fn batch(rows: &[&Self], stamp: &RunStamp) -> Result<RecordBatch, arrow_schema::ArrowError>;
}

/// Where a row goes inside its partition's file: by (account_id, region), then time, then id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SortKey<'a> {
    pub group: (&'a str, &'a str),
    pub time: i64,
    pub id: &'a str,
}

/// The rows in `SortKey` order, as references. The few (account, region) groups are ranked
/// once, so most comparisons are of integers, and no row is moved.
pub fn sorted<R: LakeRow>(rows: &[R]) -> Vec<&R> {
    let keys: Vec<SortKey<'_>> = rows.iter().map(R::sort_key).collect();
    // Number the groups as they come (rows arrive in runs of one group), then rank them.
    let mut numbers: HashMap<(&str, &str), u32> = HashMap::new();
    let mut last: Option<((&str, &str), u32)> = None;
    let numbered: Vec<u32> = keys
        .iter()
        .map(|k| match last {
            Some((group, number)) if group == k.group => number,
            _ => {
                let next = numbers.len() as u32;
                let number = *numbers.entry(k.group).or_insert(next);
                last = Some((k.group, number));
                number
            }
        })
        .collect();
    let mut groups: Vec<((&str, &str), u32)> = numbers.into_iter().collect();
    groups.sort_unstable();
    let mut rank = vec![0u32; groups.len()];
    for (place, (_, number)) in groups.iter().enumerate() {
        rank[*number as usize] = place as u32;
    }
    let mut order: Vec<(u32, i64, u32)> = keys
        .iter()
        .zip(&numbered)
        .enumerate()
        .map(|(i, (k, number))| (rank[*number as usize], k.time, i as u32))
        .collect();
    order.sort_unstable_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then_with(|| keys[a.2 as usize].id.cmp(keys[b.2 as usize].id))
            .then(a.2.cmp(&b.2))
    });
    order
        .into_iter()
        .map(|(_, _, i)| &rows[i as usize])
        .collect()
}

impl LakeRow for FindingVersion {
    fn dt(&self) -> NaiveDate {
        FindingVersion::dt(self)
    }
    fn approx_bytes(&self) -> usize {
        FindingVersion::approx_bytes(self)
    }
    fn sort_key(&self) -> SortKey<'_> {
        SortKey {
            group: (&self.account_id, &self.region),
            time: self.updated_at_ms,
            id: &self.id,
        }
    }
    fn schema() -> SchemaRef {
        schema::findings().arrow_schema()
    }
    /// The finding's JSON: most of the table's bytes.
    fn text_columns() -> &'static [&'static str] {
        &["raw"]
    }
    fn text<'a>(&'a self, _column: usize, _stamp: &'a RunStamp) -> Option<&'a str> {
        Some(&self.raw)
    }
    fn batch(rows: &[&Self], stamp: &RunStamp) -> Result<RecordBatch, arrow_schema::ArrowError> {
        to_record_batch(rows, stamp, Self::text_columns())
    }
}

impl LakeRow for EventRow {
    fn dt(&self) -> NaiveDate {
        EventRow::dt(self)
    }
    fn approx_bytes(&self) -> usize {
        EventRow::approx_bytes(self)
    }
    fn sort_key(&self) -> SortKey<'_> {
        SortKey {
            group: (self.account_id(), self.region()),
            time: self.event_time_ms,
            id: self.event_id(),
        }
    }
    fn schema() -> SchemaRef {
        schema::cloudtrail_events().arrow_schema()
    }
    /// Every `string` column: the [`Text`] ones, `raw` and `run_id`. All but `resources`, the
    /// times and the flags.
    fn text_columns() -> &'static [&'static str] {
        static COLUMNS: OnceLock<Vec<&'static str>> = OnceLock::new();
        COLUMNS.get_or_init(|| {
            let mut columns: Vec<&str> = Text::ALL.iter().map(|t| t.column()).collect();
            columns.extend(["raw", "run_id"]);
            columns
        })
    }
    fn text<'a>(&'a self, column: usize, stamp: &'a RunStamp) -> Option<&'a str> {
        match Text::ALL.get(column) {
            Some(text) => EventRow::text(self, *text),
            None if column == Text::ALL.len() => Some(self.raw()),
            None => Some(&stamp.run_id),
        }
    }
    fn batch(rows: &[&Self], stamp: &RunStamp) -> Result<RecordBatch, arrow_schema::ArrowError> {
        events_batch(rows, stamp, Self::text_columns())
    }
}

/// Rows per row group at most; smaller groups prune better, larger ones compress better.
pub const MAX_ROW_GROUP_ROWS: usize = 64 * 1024;

/// The one set of writer properties: zstd level 1, page-level statistics, `created_by` in the
/// form parquet-mr parses (`guardlake version 0.1.0`); the columns of whole records and
/// request JSON plain, without statistics; the [`TINY_COLUMNS`] uncompressed. Level 1 everywhere:
/// parquet makes a zstd context per page, and level 3's (larger tables to clear) cost 4% of the
/// 10x org-trail run at 2 threads, for a lake 1.5% smaller (measured on that corpus).
pub fn writer_properties() -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(zstd())
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_size(MAX_ROW_GROUP_ROWS)
        .set_created_by(format!("guardlake version {}", env!("CARGO_PKG_VERSION")));
    // Text unique to each row: a dictionary would only be built to be dropped.
    for column in ["id", "arn", "event_id"] {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    // Whole records and request JSON: the bulk of the bytes, read only to see a record whole.
    // Plain pages, no min/max statistics (nobody filters on them).
    for column in [
        "raw",
        "request_parameters",
        "response_elements",
        "additional_event_data",
    ] {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None);
    }
    for column in TINY_COLUMNS {
        builder =
            builder.set_column_compression(ColumnPath::from(column), Compression::UNCOMPRESSED);
    }
    builder.build()
}

/// The codec of every column but the [`TINY_COLUMNS`]: zstd at level 1.
pub fn zstd() -> Compression {
    Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default())
}

/// Columns of one value per run (`run_id`, `collected_at`) or a handful of values (regions,
/// CloudTrail's event versions, types, categories and TLS versions): dictionary-encoded, their
/// pages are a few bytes, which zstd makes larger (its frame overhead) and which cost a zstd
/// context each, since parquet makes one per page. On the 10x org-trail corpus (`guardlake run`,
/// 2 threads: 677 row groups) zstd had these 7 columns at 0.70-0.81 of their uncompressed size.
pub const TINY_COLUMNS: [&str; 7] = [
    "run_id",
    "collected_at",
    "region",
    "event_version",
    "event_type",
    "event_category",
    "tls_version",
];

/// Writes one RecordBatch as a complete Parquet file.
pub fn write_file(path: &Path, batch: &RecordBatch) -> Result<(), parquet::errors::ParquetError> {
    let file = File::create(path)?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(writer_properties()))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(())
}

/// Writes rows into one file per `dt` (small tables: everything is in memory already).
/// Returns (dt, local path, file name) per file.
pub fn write_by_dt<T: Clone>(
    rows: &[T],
    dt: impl Fn(&T) -> NaiveDate,
    batch: impl Fn(&[T]) -> Result<RecordBatch, arrow_schema::ArrowError>,
    dir: &Path,
    stem: &str,
) -> Result<Vec<(NaiveDate, PathBuf, String)>, String> {
    let mut by_dt: BTreeMap<NaiveDate, Vec<T>> = BTreeMap::new();
    for row in rows {
        by_dt.entry(dt(row)).or_default().push(row.clone());
    }
    let mut files = Vec::new();
    for (day, group) in by_dt {
        let name = format!("{stem}.parquet");
        let path = dir.join(format!("{day}-{name}"));
        let batch = batch(&group).map_err(|e| e.to_string())?;
        write_file(&path, &batch).map_err(|e| e.to_string())?;
        files.push((day, path, name));
    }
    Ok(files)
}

/// A finished local file, ready to publish under `<table>/dt=<dt>/<name>`.
#[derive(Debug, Clone)]
pub struct StagedFile {
    pub dt: NaiveDate,
    pub path: PathBuf,
    pub name: String,
    pub rows: usize,
}

struct OpenFile {
    writer: SerializedFileWriter<File>,
    columns: ArrowRowGroupWriterFactory,
    path: PathBuf,
    name: String,
    rows: usize,
}

impl OpenFile {
    /// A new file of `R`'s table, with the Arrow schema in its metadata as `ArrowWriter` puts it.
    fn create<R: LakeRow>(path: PathBuf, name: String) -> Result<Self, ParquetError> {
        let file = File::create(&path)?;
        let (writer, columns) = ArrowWriter::try_new(file, R::schema(), Some(writer_properties()))?
            .into_serialized_writer()?;
        Ok(Self {
            writer,
            columns,
            path,
            name,
            rows: 0,
        })
    }

    /// Writes `rows` as one row group: the text columns from the rows, the rest from `batch`.
    fn write_group<R: LakeRow>(
        &mut self,
        rows: &[&R],
        stamp: &RunStamp,
        batch: &RecordBatch,
        text: &mut Option<TextPages>,
    ) -> Result<(), ParquetError> {
        let schema = R::schema();
        let leaves = self.writer.schema_descr().columns().to_vec();
        let props = self.writer.properties().clone();
        let index = self.writer.flushed_row_groups().len();
        let mut writers = self.columns.create_column_writers(index)?.into_iter();
        // The text columns, each one flat leaf, encoded together from the rows.
        let texts = R::text_columns();
        let mut descrs = Vec::with_capacity(texts.len());
        for name in texts {
            let leaf = leaves.iter().find(|leaf| leaf.path().string() == *name);
            descrs.push(leaf.cloned().ok_or_else(|| {
                ParquetError::General(format!("the file schema has no leaf for {name}"))
            })?);
        }
        let encoder = match text {
            Some(encoder) => encoder,
            None => text.insert(TextPages::new(zstd())?),
        };
        let mut chunks: Vec<_> = encoder
            .chunks(&descrs, &props, rows.len(), |r, c| rows[r].text(c, stamp))?
            .into_iter()
            .map(Some)
            .collect();
        let mut group = self.writer.next_row_group()?;
        for field in schema.fields() {
            let name = field.name().as_str();
            if let Some(column) = texts.iter().position(|c| *c == name) {
                // Its Arrow writer goes unused.
                writers.next();
                if let Some((bytes, close)) = chunks[column].take() {
                    group.append_column(&bytes, close)?;
                }
                continue;
            }
            let array = batch.column_by_name(name).ok_or_else(|| {
                ParquetError::General(format!("the row batch has no column {name}"))
            })?;
            for values in compute_leaves(field, array)? {
                let mut writer = writers.next().ok_or_else(|| {
                    ParquetError::General(format!("no column writer left for {name}"))
                })?;
                writer.write(&values)?;
                writer.close()?.append_to_row_group(&mut group)?;
            }
        }
        group.close()?;
        self.rows += rows.len();
        Ok(())
    }
}

/// The writer of the `findings` table.
pub type FindingsWriter = PartitionWriter<FindingVersion>;

/// Buffers rows per `dt`, encodes them sorted, rolls files by size.
pub struct PartitionWriter<R: LakeRow> {
    dir: PathBuf,
    stamp: RunStamp,
    flush_bytes: u64,
    target_file_bytes: u64,
    buffered: BTreeMap<NaiveDate, Vec<R>>,
    buffered_bytes: u64,
    open: BTreeMap<NaiveDate, OpenFile>,
    finished: Vec<StagedFile>,
    files_started: usize,
    /// File names are `<stem>-NNNN.parquet`: the run id, or the run id and shard.
    stem: String,
    /// Made at the first row group with text columns, then reused.
    text: Option<TextPages>,
}

impl<R: LakeRow> PartitionWriter<R> {
    pub fn new(dir: PathBuf, stamp: RunStamp, flush_bytes: u64, target_file_bytes: u64) -> Self {
        Self {
            dir,
            flush_bytes,
            target_file_bytes,
            buffered: BTreeMap::new(),
            buffered_bytes: 0,
            open: BTreeMap::new(),
            finished: Vec::new(),
            files_started: 0,
            stem: stamp.run_id.clone(),
            stamp,
            text: None,
        }
    }

    /// Names the files `<stem>-NNNN.parquet` (processes of one run writing to one table).
    pub fn named(mut self, stem: &str) -> Self {
        stem.clone_into(&mut self.stem);
        self
    }

    pub fn push(&mut self, row: R) -> Result<(), parquet::errors::ParquetError> {
        self.buffer(row);
        if self.buffered_bytes >= self.flush_bytes {
            self.flush()?;
        }
        Ok(())
    }

    /// Encodes `rows` with whatever is buffered, as one flush, however large they are.
    pub fn push_all(&mut self, rows: Vec<R>) -> Result<(), parquet::errors::ParquetError> {
        for row in rows {
            self.buffer(row);
        }
        self.flush()
    }

    fn buffer(&mut self, row: R) {
        self.buffered_bytes += row.approx_bytes() as u64;
        self.buffered.entry(row.dt()).or_default().push(row);
    }

    /// Sorts and encodes everything buffered into the open file of each `dt`.
    pub fn flush(&mut self) -> Result<(), parquet::errors::ParquetError> {
        let buffered = std::mem::take(&mut self.buffered);
        self.buffered_bytes = 0;
        for (dt, rows) in buffered {
            let rows = sorted(&rows);
            for chunk in rows.chunks(MAX_ROW_GROUP_ROWS) {
                let batch = R::batch(chunk, &self.stamp)?;
                let open = match self.open.entry(dt) {
                    std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                    std::collections::btree_map::Entry::Vacant(entry) => {
                        self.files_started += 1;
                        let name = format!("{}-{:04}.parquet", self.stem, self.files_started);
                        let path = self.dir.join(format!("{dt}-{name}"));
                        entry.insert(OpenFile::create::<R>(path, name)?)
                    }
                };
                open.write_group(chunk, &self.stamp, &batch, &mut self.text)?;
                if open.writer.bytes_written() as u64 >= self.target_file_bytes {
                    if let Some(full) = self.open.remove(&dt) {
                        self.close(dt, full)?;
                    }
                }
            }
        }
        // The rows and their Arrow columns are freed now: hand that memory back.
        crate::cpu::give_back_memory();
        Ok(())
    }

    fn close(
        &mut self,
        dt: NaiveDate,
        file: OpenFile,
    ) -> Result<(), parquet::errors::ParquetError> {
        file.writer.close()?;
        self.finished.push(StagedFile {
            dt,
            path: file.path,
            name: file.name,
            rows: file.rows,
        });
        Ok(())
    }

    /// Flushes and closes every file; returns them in `dt` order.
    pub fn finish(mut self) -> Result<Vec<StagedFile>, parquet::errors::ParquetError> {
        self.flush()?;
        for (dt, file) in std::mem::take(&mut self.open) {
            self.close(dt, file)?;
        }
        self.finished
            .sort_by(|a, b| (a.dt, &a.name).cmp(&(b.dt, &b.name)));
        Ok(self.finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::guardduty::normalize;
    use arrow_array::cast::AsArray;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn rows(n: usize) -> Vec<FindingVersion> {
        let raw = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("schemas/guardduty/examples/network_instance.json"),
        )
        .unwrap();
        let value: serde_json::Value = serde_json::from_str(&raw).unwrap();
        (0..n)
            .map(|i| {
                let mut row = normalize(&value, raw.clone()).unwrap();
                row.id = format!("{i:032x}");
                row.account_id = format!("{:012}", (n - i) % 3);
                row.updated_at_ms += (i as i64 % 2) * 86_400_000;
                row
            })
            .collect()
    }

    /// A findings writer of run `run` into `dir`.
    fn writer(dir: &Path, flush_bytes: u64, target_file_bytes: u64) -> FindingsWriter {
        let stamp = RunStamp {
            run_id: "run".into(),
            collected_at_ms: 1,
        };
        FindingsWriter::new(dir.to_owned(), stamp, flush_bytes, target_file_bytes)
    }

    #[test]
    fn rows_round_trip_split_by_dt_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = writer(dir.path(), 1 << 30, 128 << 20);
        let input = rows(100);
        for row in input.clone() {
            writer.push(row).unwrap();
        }
        let files = writer.finish().unwrap();
        assert_eq!(files.len(), 2, "two dates, one file each");
        assert_eq!(files.iter().map(|f| f.rows).sum::<usize>(), 100);
        let mut ids = Vec::new();
        for file in &files {
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(File::open(&file.path).unwrap()).unwrap();
            let metadata = reader.metadata().clone();
            // `<name> version <x.y.z>`: the form parquet-mr parses (it distrusts string
            // statistics of writers it cannot identify).
            assert_eq!(
                metadata.file_metadata().created_by(),
                Some(format!("guardlake version {}", env!("CARGO_PKG_VERSION")).as_str())
            );
            for batch in reader.build().unwrap() {
                let batch = batch.unwrap();
                let accounts: Vec<String> = batch
                    .column_by_name("account_id")
                    .unwrap()
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap().to_owned())
                    .collect();
                let mut sorted = accounts.clone();
                sorted.sort();
                assert_eq!(accounts, sorted, "rows sorted by account_id");
                ids.extend(
                    batch
                        .column_by_name("id")
                        .unwrap()
                        .as_string::<i32>()
                        .iter()
                        .map(|v| v.unwrap().to_owned()),
                );
            }
        }
        ids.sort();
        let mut expected: Vec<String> = input.iter().map(|r| r.id.clone()).collect();
        expected.sort();
        assert_eq!(ids, expected, "every row once");
    }

    /// Groups that come in runs and groups that interleave are ranked alike: the order is the
    /// plain sort by key.
    #[test]
    fn sorted_orders_by_group_then_time_then_id() {
        let mut input = rows(300);
        for (i, row) in input.iter_mut().enumerate() {
            if i >= 200 {
                row.account_id = "999999999999".into();
            }
            row.region = ["us-east-1", "eu-west-1"][(i / 7) % 2].into();
            row.updated_at_ms -= (i as i64 * 7919) % 1000;
        }
        let got: Vec<SortKey<'_>> = sorted(&input).iter().map(|r| r.sort_key()).collect();
        let mut expected: Vec<SortKey<'_>> = input.iter().map(|r| r.sort_key()).collect();
        expected.sort();
        assert_eq!(got, expected);
    }

    /// Readers take each column chunk's codec from the file: the tiny columns are stored
    /// uncompressed, the rest in zstd, and every value reads back.
    #[test]
    fn tiny_columns_uncompressed_the_rest_zstd() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = writer(dir.path(), 1 << 30, 128 << 20);
        for row in rows(50) {
            writer.push(row).unwrap();
        }
        let (mut seen, mut rows) = (Vec::new(), 0);
        for file in writer.finish().unwrap() {
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(File::open(&file.path).unwrap()).unwrap();
            for column in reader.metadata().row_group(0).columns() {
                let name = column.column_path().string();
                let expected = match TINY_COLUMNS.contains(&name.as_str()) {
                    true => Compression::UNCOMPRESSED,
                    false => zstd(),
                };
                assert_eq!(column.compression(), expected, "{name}");
                seen.push(name);
            }
            for batch in reader.build().unwrap().map(Result::unwrap) {
                for (column, value) in [("region", "eu-west-1"), ("run_id", "run")] {
                    let values = batch.column_by_name(column).unwrap().as_string::<i32>();
                    assert!(values.iter().all(|v| v == Some(value)), "{column}");
                }
                rows += batch.num_rows();
            }
        }
        assert_eq!(rows, 50);
        for column in ["run_id", "collected_at", "region", "raw"] {
            assert!(
                seen.iter().any(|s| s == column),
                "{column} is in the findings table"
            );
        }
    }

    /// `cloudtrail_events` rows from the CloudTrail fixtures, 3,000 of them (a few pages of
    /// each JSON column), with distinct ids and times on one day.
    fn event_rows() -> Vec<EventRow> {
        let records: Vec<serde_json::Value> = crate::normalize::cloudtrail::tests::fixtures()
            .into_iter()
            .map(|(_, value)| value)
            .collect();
        (0..3000)
            .map(|i| {
                let mut record = records[i % records.len()].clone();
                record["eventID"] = format!("event-{i:05}").into();
                record["eventTime"] =
                    format!("2026-11-20T10:{:02}:{:02}Z", i / 60 % 60, i % 60).into();
                crate::normalize::cloudtrail::normalize_text(&record.to_string()).unwrap()
            })
            .collect()
    }

    /// Writes `rows` with a `PartitionWriter` into one file and reads it back whole. The
    /// text columns are encoded straight from the rows and the rest through Arrow;
    /// read back, the file must be exactly the Arrow batch of every column of the sorted rows.
    fn assert_reads_back_as_the_arrow_batch<R: LakeRow>(
        rows: Vec<R>,
        every_column: impl Fn(&[&R], &RunStamp) -> RecordBatch,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let stamp = RunStamp {
            run_id: "run".into(),
            collected_at_ms: 1,
        };
        let expected = every_column(&sorted(&rows), &stamp);
        let count = rows.len() as i64;
        let mut writer = PartitionWriter::new(dir.path().to_owned(), stamp, 1 << 30, 128 << 20);
        for row in rows {
            writer.push(row).unwrap();
        }
        let files = writer.finish().unwrap();
        assert_eq!(files.len(), 1, "one day, one file");
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(File::open(&files[0].path).unwrap()).unwrap();
        let columns = reader.metadata().row_group(0).columns();
        for plain in R::text_columns() {
            let column = columns.iter().find(|c| c.column_path().string() == *plain);
            assert_eq!(column.unwrap().num_values(), count, "{plain}");
        }
        let schema = reader.schema().clone();
        let batches: Vec<RecordBatch> = reader.build().unwrap().map(Result::unwrap).collect();
        let got = arrow_select::concat::concat_batches(&schema, &batches).unwrap();
        assert_eq!(got.schema().fields(), expected.schema().fields());
        for (i, field) in expected.schema().fields().iter().enumerate() {
            assert_eq!(got.column(i), expected.column(i), "column {}", field.name());
        }
    }

    #[test]
    fn events_read_back_as_the_arrow_batch_of_every_column() {
        assert_reads_back_as_the_arrow_batch(event_rows(), |rows, stamp| {
            events_batch(rows, stamp, &[]).unwrap()
        });
    }

    #[test]
    fn findings_read_back_as_the_arrow_batch_of_every_column() {
        let mut rows = rows(2000);
        let day = rows[0].updated_at_ms;
        for row in &mut rows {
            row.updated_at_ms = day;
        }
        assert_reads_back_as_the_arrow_batch(rows, |rows, stamp| {
            to_record_batch(rows, stamp, &[]).unwrap()
        });
    }

    #[test]
    fn small_flush_bytes_roll_files_but_keep_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = writer(dir.path(), 1 << 16, 1);
        for row in rows(200) {
            writer.push(row).unwrap();
        }
        let files = writer.finish().unwrap();
        assert!(
            files.len() > 2,
            "target size 1 byte rolls after every flush"
        );
        assert_eq!(files.iter().map(|f| f.rows).sum::<usize>(), 200);
    }
}
