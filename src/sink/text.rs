//! The text columns of a lake table encoded straight from the rows' text, without an Arrow
//! array in between: through Arrow each of these bytes was copied twice (into the array, then into
//! the page), and each row group set up a column writer, a dictionary interner and a streaming
//! zstd context per page for every column. Here a value is hashed (or compared with the row
//! before it, since rows arrive sorted) and copied once, each page is compressed in one call by
//! one zstd context per writer, and the buffers are reused from chunk to chunk. A column is
//! written as parquet's own column writer would write it under the same [`WriterProperties`]: a
//! dictionary page and RLE_DICTIONARY data pages (falling back to PLAIN pages when the
//! dictionary outgrows its limit), or PLAIN pages where the dictionary is off; v1 data pages with
//! RLE definition levels; chunk statistics and a column index (min/max truncated as parquet
//! truncates them) where statistics are on; an offset index always. The chunk is spliced into
//! the row group with `SerializedRowGroupWriter::append_column`.
//!
//! Measured against the Arrow path for the 22 short string columns of `cloudtrail_events`
//! (`guardlake run`, release, 9 interleaved pairs): 4-6% less wall and user time on the 10x
//! org-trail corpus at 2 threads; within the machine's spread at 1x, and at 10x on one thread.

use std::collections::HashMap;

use bytes::Bytes;
use parquet::basic::{BoundaryOrder, Compression, Encoding, PageType, Type};
use parquet::column::page::{CompressedPage, Page, PageWriteSpec, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::data_type::ByteArray;
use parquet::errors::ParquetError;
use parquet::file::metadata::{
    ColumnChunkMetaData, ColumnIndexBuilder, OffsetIndexBuilder, PageEncodingStats,
};
use parquet::file::page_index::offset_index::OffsetIndexMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::{Statistics, ValueStatistics};
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

/// Encodes text column chunks; one per [`PartitionWriter`](super::parquet::PartitionWriter), so
/// its zstd context and page buffers are reused for every page it writes.
pub struct TextPages {
    codec: Codec,
    /// Page buffers of earlier chunks, for the next ones.
    spare: Vec<Buffers>,
}

/// The one zstd context, and the buffer it compresses into.
struct Codec {
    compressor: zstd::bulk::Compressor<'static>,
    compressed: Vec<u8>,
}

/// One column's page being built.
#[derive(Default)]
struct Buffers {
    /// Room for the page's definition levels, then its values.
    page: Vec<u8>,
    /// One bit per value of the page: present (1) or null (0).
    present: Vec<u8>,
    /// The page's dictionary indices, one per non-null value.
    indices: Vec<u32>,
}

/// Rows a column takes before the next column does: the rows' text, read by every column in
/// turn, stays in the CPU's cache (a row group's rows are MiBs; a pass of each column over all
/// of them missed the cache at every row, and gained nothing over Arrow's row-wise fill).
const BLOCK_ROWS: usize = 256;

/// How one column is written, from the writer properties.
struct Plan {
    optional: bool,
    dictionary: bool,
    /// Chunk statistics; `index` adds page min/max in a column index.
    statistics: bool,
    index: bool,
    compressed: bool,
    page_bytes: usize,
    page_rows: usize,
    dictionary_bytes: usize,
    /// Room before a page's values for its definition levels.
    room: usize,
    truncate_statistics: Option<usize>,
    truncate_index: Option<usize>,
}

/// A column chunk's dictionary: its values in index order, and their index.
#[derive(Default)]
struct Dictionary<'a> {
    values: Vec<&'a str>,
    index: HashMap<&'a str, u32, foldhash::fast::RandomState>,
    /// The plain-encoded size of `values`.
    bytes: usize,
    /// The page in which each value was last seen (page statistics look at a value once a page).
    seen: Vec<u32>,
    /// The value of the row before, and its index: sorted rows repeat their neighbour's value.
    last: Option<(&'a str, u32)>,
}

impl<'a> Dictionary<'a> {
    fn index_of(&mut self, value: &'a str) -> u32 {
        if let Some((last, index)) = self.last {
            if last == value {
                return index;
            }
        }
        let next = self.values.len() as u32;
        let index = *self.index.entry(value).or_insert(next);
        if index == next {
            self.values.push(value);
            self.seen.push(u32::MAX);
            self.bytes += 4 + value.len();
        }
        self.last = Some((value, index));
        index
    }
}

/// One data page's statistics while it is built.
#[derive(Default)]
struct PageStats<'a> {
    min: Option<&'a str>,
    max: Option<&'a str>,
    nulls: u64,
}

impl<'a> PageStats<'a> {
    fn add(&mut self, value: &'a str) {
        if self.min.is_none_or(|min| value < min) {
            self.min = Some(value);
        }
        if self.max.is_none_or(|max| value > max) {
            self.max = Some(value);
        }
    }
}

/// A chunk's data pages, compressed, held until its dictionary page (which goes first) is known.
#[derive(Default)]
struct Chunk<'a> {
    pages: Vec<CompressedPage>,
    page_rows: Vec<u64>,
    page_stats: Vec<PageStats<'a>>,
}

impl TextPages {
    /// `compression` is the writer's zstd codec: its level is the one context's level.
    pub fn new(compression: Compression) -> Result<Self, ParquetError> {
        let Compression::ZSTD(level) = compression else {
            return Err(ParquetError::General(format!(
                "text columns are written in zstd, not {compression}"
            )));
        };
        Ok(Self {
            codec: Codec {
                compressor: zstd::bulk::Compressor::new(level.compression_level())?,
                compressed: Vec::new(),
            },
            spare: Vec::new(),
        })
    }

    /// The chunks of columns `descrs` over `rows` rows, column `c` of row `r` being
    /// `value(r, c)` (`None` a null), in `descrs` order, as the bytes and close results
    /// `append_column` takes. Dictionary, statistics, page limits and codec are each column's in
    /// `props`; the codec must be zstd or none. A value larger than a page has a page of its own.
    /// Every column reads a block of rows before the next block is read, so each row's text is
    /// read from the cache.
    pub fn chunks<'a>(
        &mut self,
        descrs: &[ColumnDescPtr],
        props: &WriterProperties,
        rows: usize,
        value: impl Fn(usize, usize) -> Option<&'a str>,
    ) -> Result<Vec<(Bytes, ColumnCloseResult)>, ParquetError> {
        let mut columns = Vec::with_capacity(descrs.len());
        for descr in descrs {
            let buffers = self.spare.pop().unwrap_or_default();
            columns.push(ColumnChunk::new(descr.clone(), props, buffers)?);
        }
        for start in (0..rows).step_by(BLOCK_ROWS) {
            let end = rows.min(start + BLOCK_ROWS);
            warm(start..end, columns.len(), &value);
            for (c, column) in columns.iter_mut().enumerate() {
                for row in start..end {
                    column.push(value(row, c), &mut self.codec)?;
                }
            }
        }
        let mut chunks = Vec::with_capacity(columns.len());
        for column in columns {
            let (chunk, buffers) = column.finish(&mut self.codec)?;
            self.spare.push(buffers);
            chunks.push(chunk);
        }
        Ok(chunks)
    }
}

/// Reads where every value of a block starts before any column encodes it. A row's text was
/// last touched when it was parsed, megabytes ago, so each value is a cache miss; here they
/// are independent loads in a short loop, which the CPU overlaps, where in the columns' loops
/// each miss waited behind the hashing and statistics of the row before.
fn warm<'a>(
    rows: std::ops::Range<usize>,
    columns: usize,
    value: impl Fn(usize, usize) -> Option<&'a str>,
) {
    for row in rows {
        for c in 0..columns {
            std::hint::black_box(value(row, c).and_then(|v| v.as_bytes().first().copied()));
        }
    }
}

/// One column chunk while its rows come.
struct ColumnChunk<'a> {
    descr: ColumnDescPtr,
    plan: Plan,
    buffers: Buffers,
    dictionary: Dictionary<'a>,
    /// Dictionary-encoded pages until the dictionary is full, then plain ones.
    encode_dictionary: bool,
    chunk: Chunk<'a>,
    page: PageStats<'a>,
    /// Rows in the page being built.
    rows: usize,
}

impl<'a> ColumnChunk<'a> {
    fn new(
        descr: ColumnDescPtr,
        props: &WriterProperties,
        mut buffers: Buffers,
    ) -> Result<Self, ParquetError> {
        let plan = plan(&descr, props)?;
        buffers.start_page(plan.room);
        Ok(Self {
            encode_dictionary: plan.dictionary,
            descr,
            plan,
            buffers,
            dictionary: Dictionary::default(),
            chunk: Chunk::default(),
            page: PageStats::default(),
            rows: 0,
        })
    }

    /// Adds the next row's value, and ends the page if it is full.
    fn push(&mut self, value: Option<&'a str>, codec: &mut Codec) -> Result<(), ParquetError> {
        let plan = &self.plan;
        let buffers = &mut self.buffers;
        match (value, plan.optional) {
            (_, true) => buffers.level(self.rows, value.is_some()),
            (None, false) => {
                return Err(ParquetError::General(format!(
                    "{} is required but a row has no value",
                    self.descr.path().string()
                )))
            }
            (Some(_), false) => {}
        }
        if value.is_some_and(|text| u32::try_from(text.len()).is_err()) {
            let column = self.descr.path().string();
            return Err(ParquetError::General(format!(
                "a {column} value is over 4 GiB"
            )));
        }
        self.rows += 1;
        match value {
            None => self.page.nulls += 1,
            Some(text) if self.encode_dictionary => {
                let index = self.dictionary.index_of(text);
                let number = self.chunk.page_stats.len() as u32;
                if plan.statistics && self.dictionary.seen[index as usize] != number {
                    self.dictionary.seen[index as usize] = number;
                    self.page.add(text);
                }
                buffers.indices.push(index);
            }
            Some(text) => {
                if plan.statistics {
                    self.page.add(text);
                }
                append_plain(&mut buffers.page, text);
            }
        }
        let over = self.encode_dictionary && self.dictionary.bytes > plan.dictionary_bytes;
        let bytes = match self.encode_dictionary {
            true => buffers.indices.len() * bit_width(self.dictionary.values.len()) as usize / 8,
            false => buffers.page.len() - plan.room,
        };
        if over || bytes >= plan.page_bytes || self.rows >= plan.page_rows {
            self.end_page(codec)?;
            // A full dictionary: the rest of the chunk is plain, as parquet falls back.
            self.encode_dictionary &= !over;
        }
        Ok(())
    }

    fn end_page(&mut self, codec: &mut Codec) -> Result<(), ParquetError> {
        let width = self
            .encode_dictionary
            .then(|| bit_width(self.dictionary.values.len()));
        let page = self
            .buffers
            .finish_page(&self.plan, self.rows, width, codec)?;
        self.chunk.pages.push(page);
        self.chunk.page_rows.push(self.rows as u64);
        self.chunk.page_stats.push(std::mem::take(&mut self.page));
        self.rows = 0;
        self.buffers.start_page(self.plan.room);
        Ok(())
    }

    /// The chunk's bytes and close result, and its buffers for the next chunk.
    #[allow(clippy::type_complexity)]
    fn finish(
        mut self,
        codec: &mut Codec,
    ) -> Result<((Bytes, ColumnCloseResult), Buffers), ParquetError> {
        if self.rows > 0 {
            self.end_page(codec)?;
        }
        let dictionary = self.plan.dictionary.then_some(self.dictionary.values);
        let chunk = close(
            self.descr,
            &self.plan,
            self.chunk,
            dictionary,
            &mut self.buffers,
            codec,
        )?;
        Ok((chunk, self.buffers))
    }
}

impl Buffers {
    /// Adds row `row` of the page's definition level (optional columns only).
    fn level(&mut self, row: usize, present: bool) {
        if row.is_multiple_of(8) {
            self.present.push(0);
        }
        if let (true, Some(bits)) = (present, self.present.last_mut()) {
            *bits |= 1 << (row % 8);
        }
    }

    fn start_page(&mut self, room: usize) {
        self.page.clear();
        self.page.resize(room, 0);
        self.present.clear();
        self.indices.clear();
    }

    /// The page of `rows` rows: its levels written into the room left before the values, the
    /// dictionary indices (at `width` bits) after them if it is dictionary-encoded, then the
    /// whole page compressed in one call.
    fn finish_page(
        &mut self,
        plan: &Plan,
        rows: usize,
        width: Option<u8>,
        codec: &mut Codec,
    ) -> Result<CompressedPage, ParquetError> {
        let start = if plan.optional {
            // One bit-packed run of ceil(rows / 8) groups of 8 levels (bit width 1); the
            // padding bits of the last group are beyond `num_values` and are not read.
            let mut levels = [0u8; 5];
            let header = varint(&mut levels, ((self.present.len() as u64) << 1) | 1);
            let length = header + self.present.len();
            let start = plan.room - 4 - length;
            self.page[start..start + 4].copy_from_slice(&(length as u32).to_le_bytes());
            self.page[start + 4..start + 4 + header].copy_from_slice(&levels[..header]);
            self.page[start + 4 + header..plan.room].copy_from_slice(&self.present);
            start
        } else {
            0
        };
        let encoding = match width {
            Some(width) => {
                self.page.push(width);
                rle_hybrid(&mut self.page, &self.indices, width);
                Encoding::RLE_DICTIONARY
            }
            None => Encoding::PLAIN,
        };
        let page = Page::DataPage {
            buf: codec.compress(plan.compressed, &self.page[start..])?,
            num_values: rows as u32,
            encoding,
            def_level_encoding: Encoding::RLE,
            rep_level_encoding: Encoding::RLE,
            statistics: None,
        };
        Ok(CompressedPage::new(page, self.page.len() - start))
    }

    /// The dictionary page of `values`: PLAIN-encoded, compressed in one call.
    fn dictionary_page(
        &mut self,
        compressed: bool,
        values: &[&str],
        codec: &mut Codec,
    ) -> Result<CompressedPage, ParquetError> {
        self.start_page(0);
        for value in values {
            append_plain(&mut self.page, value);
        }
        let page = Page::DictionaryPage {
            buf: codec.compress(compressed, &self.page)?,
            num_values: values.len() as u32,
            encoding: Encoding::PLAIN,
            is_sorted: false,
        };
        Ok(CompressedPage::new(page, self.page.len()))
    }
}

impl Codec {
    /// `body` compressed in one call (or copied, for an uncompressed column).
    fn compress(&mut self, compressed: bool, body: &[u8]) -> Result<Bytes, ParquetError> {
        if !compressed {
            return Ok(Bytes::copy_from_slice(body));
        }
        self.compressed.clear();
        self.compressed
            .reserve(zstd::zstd_safe::compress_bound(body.len()));
        self.compressor
            .compress_to_buffer(body, &mut self.compressed)?;
        Ok(Bytes::copy_from_slice(&self.compressed))
    }
}

/// Writes the dictionary page (if any) and the data pages, and builds the chunk's metadata,
/// statistics, column index and offset index.
fn close<'a>(
    descr: ColumnDescPtr,
    plan: &Plan,
    chunk: Chunk<'a>,
    dictionary: Option<Vec<&'a str>>,
    buffers: &mut Buffers,
    codec: &mut Codec,
) -> Result<(Bytes, ColumnCloseResult), ParquetError> {
    let mut sink = TrackedWrite::new(Vec::new());
    let mut pages = SerializedPageWriter::new(&mut sink);
    // The dictionary page first, then the data pages in order.
    let mut specs: Vec<PageWriteSpec> = Vec::with_capacity(chunk.pages.len() + 1);
    let mut encoding_stats = Vec::new();
    let mut encodings = vec![Encoding::PLAIN, Encoding::RLE];
    let dictionary_page = match &dictionary {
        Some(values) => {
            let page = buffers.dictionary_page(plan.compressed, values, codec)?;
            specs.push(pages.write_page(page)?);
            encoding_stats.push(PageEncodingStats {
                page_type: PageType::DICTIONARY_PAGE,
                encoding: Encoding::PLAIN,
                count: 1,
            });
            encodings.push(Encoding::RLE_DICTIONARY);
            true
        }
        None => false,
    };
    let mut counts = [(Encoding::RLE_DICTIONARY, 0), (Encoding::PLAIN, 0)];
    for page in chunk.pages {
        let count = counts.iter_mut().find(|(e, _)| *e == page.encoding());
        if let Some((_, count)) = count {
            *count += 1;
        }
        specs.push(pages.write_page(page)?);
    }
    encoding_stats.extend(
        counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(encoding, count)| PageEncodingStats {
                page_type: PageType::DATA_PAGE,
                encoding,
                count,
            }),
    );
    let data_specs = &specs[usize::from(dictionary_page)..];
    let rows: u64 = chunk.page_rows.iter().sum();
    let mut builder = ColumnChunkMetaData::builder(descr)
        .set_compression(match plan.compressed {
            true => Compression::ZSTD(Default::default()),
            false => Compression::UNCOMPRESSED,
        })
        .set_encodings(encodings)
        .set_page_encoding_stats(encoding_stats)
        .set_total_compressed_size(specs.iter().map(|s| s.compressed_size as i64).sum())
        .set_total_uncompressed_size(specs.iter().map(|s| s.uncompressed_size as i64).sum())
        .set_num_values(rows as i64)
        .set_data_page_offset(data_specs.first().map_or(0, |s| s.offset as i64))
        .set_dictionary_page_offset(dictionary_page.then_some(0));
    if plan.statistics {
        builder = builder.set_statistics(statistics(plan, &chunk.page_stats));
    }
    let column_index = match plan.index {
        true => Some(column_index(plan, &chunk.page_rows, &chunk.page_stats)?),
        false => None,
    };
    let bytes = Bytes::from(sink.into_inner()?);
    let close = ColumnCloseResult {
        bytes_written: bytes.len() as u64,
        rows_written: rows,
        metadata: builder.build()?,
        bloom_filter: None,
        column_index,
        offset_index: Some(offset_index(data_specs, &chunk.page_rows)),
    };
    Ok((bytes, close))
}

/// Where each data page is, and its first row.
fn offset_index(specs: &[PageWriteSpec], rows: &[u64]) -> OffsetIndexMetaData {
    let mut offsets = OffsetIndexBuilder::new();
    for (spec, rows) in specs.iter().zip(rows) {
        offsets.append_offset_and_size(spec.offset as i64, spec.compressed_size as i32);
        offsets.append_row_count(*rows as i64);
    }
    offsets.build()
}

/// How `descr` is written under `props`: flat text only, zstd or no codec.
fn plan(descr: &ColumnDescPtr, props: &WriterProperties) -> Result<Plan, ParquetError> {
    let path = descr.path();
    if descr.max_rep_level() > 0
        || descr.max_def_level() > 1
        || descr.physical_type() != Type::BYTE_ARRAY
    {
        return Err(ParquetError::General(format!(
            "{} is not a flat text column",
            path.string()
        )));
    }
    let compressed = match props.compression(path) {
        Compression::ZSTD(_) => true,
        Compression::UNCOMPRESSED => false,
        other => {
            return Err(ParquetError::General(format!(
                "text columns are written in zstd or uncompressed, not {other} ({})",
                path.string()
            )))
        }
    };
    let optional = descr.max_def_level() > 0;
    let page_rows = props.data_page_row_count_limit().max(1);
    let statistics = props.statistics_enabled(path);
    Ok(Plan {
        optional,
        dictionary: props.dictionary_enabled(path),
        statistics: statistics != EnabledStatistics::None,
        index: statistics == EnabledStatistics::Page,
        compressed,
        page_bytes: props.data_page_size_limit(),
        page_rows,
        dictionary_bytes: props.dictionary_page_size_limit(),
        // Room for the levels of a full page: their 4-byte length, a varint run header, the bits.
        room: if optional {
            4 + 5 + page_rows.div_ceil(8)
        } else {
            0
        },
        truncate_statistics: props.statistics_truncate_length(),
        truncate_index: props.column_index_truncate_length(),
    })
}

/// The chunk's statistics: min and max over its pages (truncated as parquet truncates them)
/// and its null count.
fn statistics(plan: &Plan, pages: &[PageStats<'_>]) -> Statistics {
    let min = pages.iter().filter_map(|p| p.min).min();
    let max = pages.iter().filter_map(|p| p.max).max();
    let nulls = pages.iter().map(|p| p.nulls).sum();
    let (min, min_exact) = lower_bound(min, plan.truncate_statistics);
    let (max, max_exact) = upper_bound(max, plan.truncate_statistics);
    let bytes = |v: Option<Vec<u8>>| v.map(ByteArray::from);
    Statistics::ByteArray(
        ValueStatistics::new(bytes(min), bytes(max), None, Some(nulls), false)
            .with_min_is_exact(min_exact)
            .with_max_is_exact(max_exact),
    )
}

/// The column index: each page's min and max (truncated), its null count, whether it is all
/// null, and whether the pages' bounds ascend or descend.
fn column_index(
    plan: &Plan,
    rows: &[u64],
    pages: &[PageStats<'_>],
) -> Result<parquet::file::page_index::column_index::ColumnIndexMetaData, ParquetError> {
    let mut index = ColumnIndexBuilder::new(Type::BYTE_ARRAY);
    let (mut ascending, mut descending) = (true, true);
    let mut last: Option<(&str, &str)> = None;
    for (page, rows) in pages.iter().zip(rows) {
        match (page.min, page.max) {
            (Some(min), Some(max)) if page.nulls < *rows => {
                if let Some((last_min, last_max)) = last {
                    ascending &= !(last_min > min || last_max > max);
                    descending &= !(min > last_min || max > last_max);
                }
                last = Some((min, max));
                let min = lower_bound(Some(min), plan.truncate_index)
                    .0
                    .unwrap_or_default();
                let max = upper_bound(Some(max), plan.truncate_index)
                    .0
                    .unwrap_or_default();
                index.append(false, min, max, page.nulls as i64);
            }
            _ => index.append(true, Vec::new(), Vec::new(), page.nulls as i64),
        }
    }
    index.set_boundary_order(match (ascending, descending) {
        (true, _) => BoundaryOrder::ASCENDING,
        (false, true) => BoundaryOrder::DESCENDING,
        (false, false) => BoundaryOrder::UNORDERED,
    });
    index.build()
}

/// `value`, or its longest prefix of at most `length` bytes that ends on a character: a lower
/// bound of it. The flag says whether it is `value` itself.
fn lower_bound(value: Option<&str>, length: Option<usize>) -> (Option<Vec<u8>>, bool) {
    let Some(value) = value else {
        return (None, true);
    };
    match length.filter(|l| value.len() > *l) {
        Some(length) => match (1..=length).rfind(|i| value.is_char_boundary(*i)) {
            Some(end) => (Some(value.as_bytes()[..end].to_vec()), false),
            None => (Some(value.as_bytes().to_vec()), true),
        },
        None => (Some(value.as_bytes().to_vec()), true),
    }
}

/// `value`, or a string of at most `length` bytes above it: a prefix with its last character
/// that can be incremented (without growing its UTF-8 width) incremented. The flag says
/// whether it is `value` itself.
fn upper_bound(value: Option<&str>, length: Option<usize>) -> (Option<Vec<u8>>, bool) {
    let Some(value) = value else {
        return (None, true);
    };
    let exact = (Some(value.as_bytes().to_vec()), true);
    let Some(length) = length.filter(|l| value.len() > *l) else {
        return exact;
    };
    let Some(end) = (length.saturating_sub(3)..=length).rfind(|i| value.is_char_boundary(*i))
    else {
        return exact;
    };
    let prefix = &value[..end];
    for (at, c) in prefix.char_indices().rev() {
        let next = char::from_u32(c as u32 + 1).filter(|n| n.len_utf8() == c.len_utf8());
        if let Some(next) = next {
            let mut bound = prefix.as_bytes()[..at + c.len_utf8()].to_vec();
            next.encode_utf8(&mut bound[at..]);
            return (Some(bound), false);
        }
    }
    exact
}

/// `value` PLAIN-encoded (its 4-byte length, then its bytes) onto `out`. Its length fits in
/// 4 bytes: [`ColumnChunk::push`] refuses a longer value.
fn append_plain(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value.as_bytes());
}

/// Bits for the indices of a dictionary of `entries` values (0 for one value, as parquet).
fn bit_width(entries: usize) -> u8 {
    (usize::BITS - entries.saturating_sub(1).leading_zeros()) as u8
}

/// `value` as a ULEB128 varint into `out`; returns its length.
fn varint(out: &mut [u8; 5], mut value: u64) -> usize {
    let mut length = 0;
    while value >= 0x80 && length < 4 {
        out[length] = (value as u8) | 0x80;
        value >>= 7;
        length += 1;
    }
    out[length] = value as u8;
    length + 1
}

/// Appends `values` in parquet's RLE / bit-packing hybrid at `width` bits: a run of 8 or more
/// equal values as an RLE run, the rest as bit-packed groups of 8 (at most 63 groups a run,
/// as parquet-mr writes them; the last group padded with zeros).
fn rle_hybrid(out: &mut Vec<u8>, values: &[u32], width: u8) {
    let value_bytes = usize::from(width).div_ceil(8);
    let run_at = |i: usize| values[i..].iter().take_while(|v| **v == values[i]).count();
    let mut header = [0u8; 5];
    let mut i = 0;
    while i < values.len() {
        let run = run_at(i);
        if run >= 8 || i + run == values.len() {
            let length = varint(&mut header, (run as u64) << 1);
            out.extend_from_slice(&header[..length]);
            out.extend_from_slice(&values[i].to_le_bytes()[..value_bytes]);
            i += run;
            continue;
        }
        // Groups of 8 until a run of 8 starts at a group's start.
        let mut end = i;
        let mut groups = 0;
        while end < values.len() && groups < 63 && (end == i || run_at(end) < 8) {
            end += 8;
            groups += 1;
        }
        let length = varint(&mut header, ((groups as u64) << 1) | 1);
        out.extend_from_slice(&header[..length]);
        let (mut bits, mut filled) = (0u64, 0u32);
        for k in i..end {
            bits |= u64::from(values.get(k).copied().unwrap_or(0)) << filled;
            filled += u32::from(width);
            while filled >= 8 {
                out.push(bits as u8);
                bits >>= 8;
                filled -= 8;
            }
        }
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::cast::AsArray;
    use arrow_array::{ArrayRef, RecordBatch, StringArray};
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::arrow::ArrowWriter;
    use parquet::file::metadata::ParquetMetaData;
    use parquet::file::page_index::column_index::ColumnIndexMetaData;
    use parquet::file::properties::WriterPropertiesBuilder;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use parquet::schema::types::ColumnPath;

    use super::*;

    /// zstd at parquet's default level (the writer's level does not matter here).
    fn zstd() -> Compression {
        Compression::ZSTD(Default::default())
    }

    /// Row `i` of the optional column: nulls, empty strings, short text, values larger than a
    /// whole page (and than the 64 bytes statistics keep), and runs of one value.
    fn optional_value(i: usize) -> Option<String> {
        match i % 5 {
            0 => None,
            1 => Some(String::new()),
            2 => Some("é".repeat(150) + &i.to_string()),
            _ if i % 40 < 20 => Some("run".to_owned()),
            _ => Some(format!("{{\"row\":{i}}}")),
        }
    }

    fn required_value(i: usize) -> String {
        format!("b{}", i % 13)
    }

    /// Small pages (at most 64 bytes or 7 rows) under each way a column is written.
    fn props(set: impl Fn(WriterPropertiesBuilder) -> WriterPropertiesBuilder) -> WriterProperties {
        let builder = WriterProperties::builder()
            .set_compression(zstd())
            .set_data_page_size_limit(64)
            .set_data_page_row_count_limit(7);
        set(builder).build()
    }

    /// The three ways: dictionary with page statistics (parquet's default); plain without
    /// statistics (the JSON columns); a dictionary that fills after a few values and falls
    /// back to plain pages, uncompressed, with chunk statistics only.
    fn variants() -> Vec<(&'static str, WriterProperties)> {
        vec![
            ("dictionary", props(|b| b)),
            (
                "plain",
                props(|b| {
                    b.set_dictionary_enabled(false)
                        .set_statistics_enabled(EnabledStatistics::None)
                }),
            ),
            (
                "fallback",
                props(|b| {
                    b.set_dictionary_page_size_limit(40)
                        .set_statistics_enabled(EnabledStatistics::Chunk)
                        .set_column_compression(ColumnPath::from("b"), Compression::UNCOMPRESSED)
                }),
            ),
        ]
    }

    /// Rows `rows` as row groups of 50 (`a` optional, `b` required), every chunk written by one
    /// `TextPages`.
    fn write_file(rows: &[usize], props: WriterProperties) -> Bytes {
        let schema = parse_message_type(
            "message m { optional binary a (STRING); required binary b (STRING); }",
        )
        .unwrap();
        let props = Arc::new(props);
        let mut writer =
            SerializedFileWriter::new(Vec::new(), Arc::new(schema), props.clone()).unwrap();
        let leaves = writer.schema_descr().columns().to_vec();
        let mut pages = TextPages::new(zstd()).unwrap();
        for group in rows.chunks(50) {
            let a: Vec<Option<String>> = group.iter().map(|&i| optional_value(i)).collect();
            let b: Vec<String> = group.iter().map(|&i| required_value(i)).collect();
            let mut row_group = writer.next_row_group().unwrap();
            let value = |r: usize, c: usize| match c {
                0 => a[r].as_deref(),
                _ => Some(b[r].as_str()),
            };
            for (bytes, close) in pages.chunks(&leaves, &props, group.len(), value).unwrap() {
                row_group.append_column(&bytes, close).unwrap();
            }
            row_group.close().unwrap();
        }
        Bytes::from(writer.into_inner().unwrap())
    }

    /// The same rows written by parquet's own `ArrowWriter` under the same properties.
    fn arrow_file(rows: &[usize], props: WriterProperties) -> Bytes {
        let a: StringArray = rows.iter().map(|&i| optional_value(i)).collect();
        let b: StringArray = rows.iter().map(|&i| Some(required_value(i))).collect();
        let batch = RecordBatch::try_from_iter_with_nullable([
            ("a", Arc::new(a) as ArrayRef, true),
            ("b", Arc::new(b) as ArrayRef, false),
        ])
        .unwrap();
        let props = WriterProperties::into_builder(props)
            .set_max_row_group_size(50)
            .build();
        let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props)).unwrap();
        writer.write(&batch).unwrap();
        Bytes::from(writer.into_inner().unwrap())
    }

    /// One chunk of `values` in the one column of `message`, by a new `TextPages`.
    fn one_chunk(
        message: &str,
        props: &WriterProperties,
        values: &[Option<&str>],
    ) -> Result<(Bytes, ColumnCloseResult), ParquetError> {
        let schema = parse_message_type(message).unwrap();
        let leaf = parquet::schema::types::SchemaDescriptor::new(Arc::new(schema)).column(0);
        let mut pages = TextPages::new(zstd()).unwrap();
        let chunks = pages.chunks(&[leaf], props, values.len(), |r, _| values[r])?;
        Ok(chunks.into_iter().next().unwrap())
    }

    /// A file of one row group: `values` in the one column of `message`, zstd, parquet's
    /// default properties otherwise.
    fn one_chunk_file(message: &str, values: &[Option<&str>]) -> Bytes {
        let schema = Arc::new(parse_message_type(message).unwrap());
        let props = Arc::new(WriterProperties::builder().set_compression(zstd()).build());
        let mut writer = SerializedFileWriter::new(Vec::new(), schema, props.clone()).unwrap();
        let mut group = writer.next_row_group().unwrap();
        let (bytes, close) = one_chunk(message, &props, values).unwrap();
        group.append_column(&bytes, close).unwrap();
        group.close().unwrap();
        Bytes::from(writer.into_inner().unwrap())
    }

    fn read(file: Bytes) -> (ParquetMetaData, Vec<Option<String>>, Vec<String>) {
        let options = ArrowReaderOptions::new().with_page_index(true);
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options).unwrap();
        let metadata = reader.metadata().as_ref().clone();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for batch in reader.build().unwrap().map(Result::unwrap) {
            let text = |i: usize| batch.column(i).as_string::<i32>().clone();
            a.extend(text(0).iter().map(|v| v.map(str::to_owned)));
            b.extend(text(1).iter().map(|v| v.unwrap().to_owned()));
        }
        (metadata, a, b)
    }

    /// Under each variant: the values, nulls and empty strings read back exact through
    /// parquet's reader with the page index; pages end where the limits end them and follow each
    /// other; each chunk's statistics (min, max, exactness after truncation, null count) are
    /// the ones parquet's own writer gives the same rows.
    #[test]
    fn chunks_read_back_with_the_statistics_parquet_writes() {
        let rows: Vec<usize> = (0..100).collect();
        for (variant, props) in variants() {
            let (metadata, a, b) = read(write_file(&rows, props.clone()));
            let expected: Vec<Option<String>> = rows.iter().map(|&i| optional_value(i)).collect();
            assert_eq!(a, expected, "{variant}");
            assert_eq!(
                b,
                rows.iter().map(|&i| required_value(i)).collect::<Vec<_>>()
            );
            let (theirs, _, _) = read(arrow_file(&rows, props));
            assert_eq!(metadata.num_row_groups(), 2);
            for (group, their_group) in metadata.row_groups().iter().zip(theirs.row_groups()) {
                for (column, their_column) in group.columns().iter().zip(their_group.columns()) {
                    let name = column.column_path().string();
                    assert_eq!(
                        column.compression(),
                        their_column.compression(),
                        "{variant} {name}"
                    );
                    assert_eq!(column.num_values(), 50);
                    assert_eq!(
                        column.statistics(),
                        their_column.statistics(),
                        "{variant} {name}"
                    );
                    assert_eq!(
                        column.dictionary_page_offset().is_some(),
                        variant != "plain",
                        "{variant} {name}"
                    );
                }
            }
            let a_pages = &metadata.offset_index().unwrap()[0][0].page_locations;
            assert!(a_pages.len() >= 8, "{variant}: 50 rows at most 7 a page");
            assert_eq!(a_pages[0].first_row_index, 0);
            assert!(a_pages.windows(2).all(|w| {
                w[1].first_row_index - w[0].first_row_index <= 7
                    && w[0].offset + w[0].compressed_page_size as i64 == w[1].offset
            }));
        }
    }

    /// The column index (dictionary variant): each page's min and max bound its values (and
    /// are the values themselves unless over 64 bytes), null counts and all-null pages are
    /// exact; a page whose values are over 64 bytes has them truncated.
    #[test]
    fn the_column_index_bounds_every_page() {
        let rows: Vec<usize> = (0..100).collect();
        let (metadata, a, _) = read(write_file(&rows, variants().remove(0).1));
        let column_index = metadata.column_index().unwrap();
        let offset_index = metadata.offset_index().unwrap();
        let mut truncated = 0;
        for group in 0..metadata.num_row_groups() {
            let ColumnIndexMetaData::BYTE_ARRAY(index) = &column_index[group][0] else {
                panic!("column a has a byte array column index");
            };
            let pages = &offset_index[group][0].page_locations;
            for (page, location) in pages.iter().enumerate() {
                let start = group * 50 + location.first_row_index as usize;
                let end = match pages.get(page + 1) {
                    Some(next) => group * 50 + next.first_row_index as usize,
                    None => (group + 1) * 50,
                };
                let values: Vec<&str> =
                    a[start..end].iter().flatten().map(String::as_str).collect();
                let nulls = (end - start - values.len()) as i64;
                assert_eq!(index.null_count(page), Some(nulls));
                assert_eq!(index.is_null_page(page), values.is_empty());
                if values.is_empty() {
                    continue;
                }
                let min = std::str::from_utf8(index.min_value(page).unwrap()).unwrap();
                let max = std::str::from_utf8(index.max_value(page).unwrap()).unwrap();
                let (least, most) = (values.iter().min().unwrap(), values.iter().max().unwrap());
                assert!(min <= *least && *most <= max, "page {page}: {min} .. {max}");
                assert!(min.len() <= 64 && max.len() <= 64);
                if least.len() <= 64 && most.len() <= 64 {
                    assert_eq!((min, max), (*least, *most));
                } else {
                    truncated += 1;
                }
            }
        }
        assert!(truncated > 0, "the long values' pages are truncated");
    }

    /// One large page of indices in every shape the RLE / bit-packing hybrid has: long runs,
    /// values that change every row for more than 63 groups, widths from 0 to 9 bits; read
    /// back exact.
    #[test]
    fn dictionary_indices_read_back_in_every_run_shape() {
        let shapes: [&dyn Fn(usize) -> String; 4] = [
            &|_| "one".to_owned(),
            &|i| format!("{}", i / 37 % 3),
            &|i| format!("{}", i * 7919 % 301),
            &|i| match i % 1000 < 600 {
                true => format!("{}", i % 5),
                false => "long run".to_owned(),
            },
        ];
        for shape in shapes {
            let values: Vec<String> = (0..5000).map(shape).collect();
            let chunk: Vec<Option<&str>> = values.iter().map(|v| Some(v.as_str())).collect();
            let file = one_chunk_file("message m { required binary b (STRING); }", &chunk);
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
            let mut got = Vec::new();
            for batch in reader.build().unwrap().map(Result::unwrap) {
                got.extend(
                    batch
                        .column(0)
                        .as_string::<i32>()
                        .iter()
                        .map(|v| v.unwrap().to_owned()),
                );
            }
            assert_eq!(got, values);
        }
    }

    /// A chunk of nulls only, dictionary on: it reads back as nulls, with an empty dictionary
    /// page before its pages, no min or max, and every page of the column index a null page.
    #[test]
    fn a_chunk_of_nulls_reads_back() {
        let file = one_chunk_file("message m { optional binary a (STRING); }", &[None; 30]);
        let options = ArrowReaderOptions::new().with_page_index(true);
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options).unwrap();
        let column = reader.metadata().row_group(0).column(0).clone();
        let statistics = column.statistics().unwrap();
        assert_eq!(
            (statistics.min_bytes_opt(), statistics.null_count_opt()),
            (None, Some(30))
        );
        let ColumnIndexMetaData::BYTE_ARRAY(index) =
            &reader.metadata().column_index().unwrap()[0][0]
        else {
            panic!("a byte array column index");
        };
        assert!(index.is_null_page(0));
        let batches: Vec<RecordBatch> = reader.build().unwrap().map(Result::unwrap).collect();
        assert_eq!(
            batches
                .iter()
                .map(|b| b.column(0).null_count())
                .sum::<usize>(),
            30
        );
    }

    #[test]
    fn a_required_column_with_a_null_is_an_error_and_other_codecs_are_refused() {
        let required = "message m { required binary b (STRING); }";
        let props = WriterProperties::builder().build();
        let error = one_chunk(required, &props, &[Some("x"), None]).unwrap_err();
        assert!(error.to_string().contains("b is required"), "{error}");
        let refused = TextPages::new(Compression::SNAPPY).err().unwrap();
        assert!(
            refused.to_string().contains("zstd, not SNAPPY"),
            "{refused}"
        );
        let snappy = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let error = one_chunk(required, &snappy, &[Some("x")]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("zstd or uncompressed, not SNAPPY"),
            "{error}"
        );
    }
}
