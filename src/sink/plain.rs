//! The big text columns (a finding's or record's whole JSON, a record's request and response
//! JSON) encoded straight from the rows' text: plain pages compressed by one zstd context per
//! writer, without an Arrow array in between. Through Arrow, each of these bytes was copied twice
//! (into the array, then into the page) and parquet made a streaming zstd context per page; here
//! a value is copied once, into its page, and the page is compressed in one call. The column
//! chunk is spliced into the row group (`SerializedRowGroupWriter::append_column`) with the
//! metadata parquet itself writes for such a column: PLAIN data pages (v1), RLE definition
//! levels, no dictionary, no statistics, and an offset index.

use bytes::Bytes;
use parquet::basic::{Compression, Encoding, PageType};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ColumnChunkMetaData, OffsetIndexBuilder, PageEncodingStats};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

/// Encodes plain text column chunks; one per [`PartitionWriter`](super::parquet::PartitionWriter),
/// so its zstd context and page buffers are reused for every page it writes.
pub struct PlainPages {
    compression: Compression,
    compressor: zstd::bulk::Compressor<'static>,
    /// The page being built: room for its definition levels, then its values.
    page: Vec<u8>,
    /// One bit per value of the page: present (1) or null (0).
    present: Vec<u8>,
    compressed: Vec<u8>,
}

/// A page's limits, as parquet's own column writer keeps them.
struct Limits {
    bytes: usize,
    rows: usize,
}

/// What a chunk's pages add up to, for its metadata.
#[derive(Default)]
struct Totals {
    rows: u64,
    pages: i32,
    compressed: i64,
    uncompressed: i64,
}

impl PlainPages {
    /// `compression` must be zstd: it is what the chunk's metadata says its pages are in.
    pub fn new(compression: Compression) -> Result<Self, ParquetError> {
        let Compression::ZSTD(level) = compression else {
            return Err(ParquetError::General(format!(
                "plain text columns are written in zstd, not {compression}"
            )));
        };
        Ok(Self {
            compression,
            compressor: zstd::bulk::Compressor::new(level.compression_level())?,
            page: Vec::new(),
            present: Vec::new(),
            compressed: Vec::new(),
        })
    }

    /// One column chunk holding `values` in order (one per row, `None` a null), as the bytes and
    /// the close result `append_column` takes. Pages end at the data page size or row count
    /// limit of `props`, as parquet's column writer ends them; a value larger than a page has a
    /// page of its own.
    pub fn chunk<'a>(
        &mut self,
        descr: ColumnDescPtr,
        props: &WriterProperties,
        values: impl Iterator<Item = Option<&'a str>>,
    ) -> Result<(Bytes, ColumnCloseResult), ParquetError> {
        let optional = descr.max_def_level() > 0;
        if descr.max_rep_level() > 0 || descr.max_def_level() > 1 {
            return Err(ParquetError::General(format!(
                "{} is not a flat text column",
                descr.path().string()
            )));
        }
        let limits = Limits {
            bytes: props.data_page_size_limit(),
            rows: props.data_page_row_count_limit().max(1),
        };
        // Room for the levels of a full page: their 4-byte length, a varint run header, the bits.
        let room = if optional {
            4 + 5 + limits.rows.div_ceil(8)
        } else {
            0
        };
        let mut sink = TrackedWrite::new(Vec::new());
        let mut pages = SerializedPageWriter::new(&mut sink);
        let mut offsets = OffsetIndexBuilder::new();
        let mut totals = Totals::default();
        let mut page_rows = 0;
        self.start_page(room);
        let mut values = values.peekable();
        while let Some(value) = values.next() {
            self.push(&descr, page_rows, value)?;
            page_rows += 1;
            let full = self.page.len() - room >= limits.bytes || page_rows >= limits.rows;
            if full || values.peek().is_none() {
                let spec = pages.write_page(self.finish_page(room, page_rows, optional)?)?;
                offsets.append_offset_and_size(spec.offset as i64, spec.compressed_size as i32);
                offsets.append_row_count(page_rows as i64);
                totals.rows += page_rows as u64;
                totals.pages += 1;
                totals.compressed += spec.compressed_size as i64;
                totals.uncompressed += spec.uncompressed_size as i64;
                page_rows = 0;
                self.start_page(room);
            }
        }
        let bytes = Bytes::from(sink.into_inner()?);
        let metadata = ColumnChunkMetaData::builder(descr)
            .set_compression(self.compression)
            .set_encodings(vec![Encoding::PLAIN, Encoding::RLE])
            .set_page_encoding_stats(match totals.pages {
                0 => Vec::new(),
                count => vec![PageEncodingStats {
                    page_type: PageType::DATA_PAGE,
                    encoding: Encoding::PLAIN,
                    count,
                }],
            })
            .set_total_compressed_size(totals.compressed)
            .set_total_uncompressed_size(totals.uncompressed)
            .set_num_values(totals.rows as i64)
            .set_data_page_offset(0)
            .build()?;
        let close = ColumnCloseResult {
            bytes_written: bytes.len() as u64,
            rows_written: totals.rows,
            metadata,
            bloom_filter: None,
            column_index: None,
            offset_index: Some(offsets.build()),
        };
        Ok((bytes, close))
    }

    /// Adds the value of the page's row `row`: its definition level (optional columns) and,
    /// unless null, its length and bytes.
    fn push(
        &mut self,
        descr: &ColumnDescPtr,
        row: usize,
        value: Option<&str>,
    ) -> Result<(), ParquetError> {
        let column = || descr.path().string();
        if descr.max_def_level() > 0 {
            if row.is_multiple_of(8) {
                self.present.push(0);
            }
            if let (Some(_), Some(bits)) = (value, self.present.last_mut()) {
                *bits |= 1 << (row % 8);
            }
        }
        let Some(text) = value else {
            return match descr.max_def_level() {
                0 => Err(ParquetError::General(format!(
                    "{} is required but a row has no value",
                    column()
                ))),
                _ => Ok(()),
            };
        };
        let len = u32::try_from(text.len())
            .map_err(|_| ParquetError::General(format!("a {} value is over 4 GiB", column())))?;
        self.page.extend_from_slice(&len.to_le_bytes());
        self.page.extend_from_slice(text.as_bytes());
        Ok(())
    }

    fn start_page(&mut self, room: usize) {
        self.page.clear();
        self.page.resize(room, 0);
        self.present.clear();
    }

    /// The page of `rows` values: its levels written into the room left before the values,
    /// then the whole page compressed in one call.
    fn finish_page(
        &mut self,
        room: usize,
        rows: usize,
        optional: bool,
    ) -> Result<CompressedPage, ParquetError> {
        let start = if optional {
            // One bit-packed run of ceil(rows / 8) groups of 8 levels (bit width 1); the
            // padding bits of the last group are beyond `num_values` and are not read.
            let mut levels = Vec::with_capacity(5 + self.present.len());
            let mut header = ((self.present.len() as u64) << 1) | 1;
            while header >= 0x80 {
                levels.push((header as u8) | 0x80);
                header >>= 7;
            }
            levels.push(header as u8);
            levels.extend_from_slice(&self.present);
            let start = room - 4 - levels.len();
            self.page[start..start + 4].copy_from_slice(&(levels.len() as u32).to_le_bytes());
            self.page[start + 4..room].copy_from_slice(&levels);
            start
        } else {
            0
        };
        let body = &self.page[start..];
        self.compressed.clear();
        self.compressed
            .reserve(zstd::zstd_safe::compress_bound(body.len()));
        self.compressor
            .compress_to_buffer(body, &mut self.compressed)?;
        let page = Page::DataPage {
            buf: Bytes::copy_from_slice(&self.compressed),
            num_values: rows as u32,
            encoding: Encoding::PLAIN,
            def_level_encoding: Encoding::RLE,
            rep_level_encoding: Encoding::RLE,
            statistics: None,
        };
        Ok(CompressedPage::new(page, body.len()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::cast::AsArray;
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    use super::*;

    /// zstd at parquet's default level (the writer's level does not matter here).
    fn zstd() -> Compression {
        Compression::ZSTD(Default::default())
    }

    /// Row `i` of the optional column: nulls, empty strings, short text and values larger
    /// than a whole page.
    fn optional_value(i: usize) -> Option<String> {
        match i % 5 {
            0 => None,
            1 => Some(String::new()),
            2 => Some("é".repeat(150) + &i.to_string()),
            _ => Some(format!("{{\"row\":{i}}}")),
        }
    }

    /// Rows `rows` as row groups of 50 (`a` optional, `b` required), every chunk written by one
    /// `PlainPages` with pages of at most 64 bytes or 7 rows.
    fn write_file(rows: &[usize]) -> Bytes {
        let schema = parse_message_type(
            "message m { optional binary a (STRING); required binary b (STRING); }",
        )
        .unwrap();
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(zstd())
                .set_data_page_size_limit(64)
                .set_data_page_row_count_limit(7)
                .build(),
        );
        let mut writer =
            SerializedFileWriter::new(Vec::new(), Arc::new(schema), props.clone()).unwrap();
        let leaves = writer.schema_descr().columns().to_vec();
        let mut pages = PlainPages::new(zstd()).unwrap();
        for group in rows.chunks(50) {
            let a: Vec<Option<String>> = group.iter().map(|&i| optional_value(i)).collect();
            let b: Vec<String> = group.iter().map(|i| format!("b{i}")).collect();
            let mut row_group = writer.next_row_group().unwrap();
            let values = a.iter().map(|v| v.as_deref());
            let (bytes, close) = pages.chunk(leaves[0].clone(), &props, values).unwrap();
            row_group.append_column(&bytes, close).unwrap();
            let values = b.iter().map(|v| Some(v.as_str()));
            let (bytes, close) = pages.chunk(leaves[1].clone(), &props, values).unwrap();
            row_group.append_column(&bytes, close).unwrap();
            row_group.close().unwrap();
        }
        Bytes::from(writer.into_inner().unwrap())
    }

    /// Two row groups written by `PlainPages`, read back by parquet's Arrow reader with the
    /// page index: values, nulls and empty strings exact; pages where the limits end them.
    #[test]
    fn chunks_read_back_with_nulls_across_pages_and_row_groups() {
        let rows: Vec<usize> = (0..100).collect();
        let file = write_file(&rows);
        let options = ArrowReaderOptions::new().with_page_index(true);
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options).unwrap();
        let metadata = reader.metadata().clone();
        assert_eq!(metadata.num_row_groups(), 2);
        for group in metadata.row_groups() {
            for column in group.columns() {
                assert_eq!(column.compression(), zstd());
                assert!(
                    column.statistics().is_none(),
                    "no statistics, as parquet writes"
                );
                assert_eq!(column.num_values(), 50);
            }
        }
        // Optional column: pages end at 7 rows or past 64 bytes of values; every page's first
        // row follows the last page's rows.
        let offsets = metadata.offset_index().unwrap();
        let a_pages = &offsets[0][0].page_locations;
        assert!(
            a_pages.len() >= 8,
            "50 rows at most 7 a page: {} pages",
            a_pages.len()
        );
        assert_eq!(a_pages[0].first_row_index, 0);
        assert!(a_pages.windows(2).all(|w| {
            w[0].first_row_index < w[1].first_row_index
                && w[1].first_row_index - w[0].first_row_index <= 7
                && w[0].offset + w[0].compressed_page_size as i64 == w[1].offset
        }));

        let (mut a, mut b) = (Vec::new(), Vec::new());
        for batch in reader.build().unwrap().map(Result::unwrap) {
            a.extend(
                batch
                    .column(0)
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.map(str::to_owned)),
            );
            b.extend(
                batch
                    .column(1)
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap().to_owned()),
            );
        }
        assert_eq!(
            a,
            rows.iter().map(|&i| optional_value(i)).collect::<Vec<_>>()
        );
        assert_eq!(b, rows.iter().map(|i| format!("b{i}")).collect::<Vec<_>>());
    }

    #[test]
    fn a_required_column_with_a_null_is_an_error_and_other_codecs_are_refused() {
        let schema = parse_message_type("message m { required binary b (STRING); }").unwrap();
        let props = Arc::new(WriterProperties::builder().build());
        let writer = SerializedFileWriter::new(Vec::new(), Arc::new(schema), props.clone());
        let leaf = writer.unwrap().schema_descr().column(0);
        let mut pages = PlainPages::new(zstd()).unwrap();
        let error = pages
            .chunk(leaf, &props, [Some("x"), None].into_iter())
            .unwrap_err();
        assert!(error.to_string().contains("b is required"), "{error}");
        let refused = PlainPages::new(Compression::SNAPPY).err().unwrap();
        assert!(
            refused.to_string().contains("zstd, not SNAPPY"),
            "{refused}"
        );
    }
}
