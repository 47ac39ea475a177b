//! `make bench` (org-trail part): the org-trail path on a generated corpus, one thread:
//! stream-decompress each `.json.gz` object, split records, parse, normalize, dedupe on
//! eventID, encode zstd Parquet partitioned by dt. Prints one JSON line with the numbers.
//! Usage: cargo bench --bench orgtrail -- --corpus DIR [--stages]
//! Under `cargo test` (no --bench) it runs on a tiny in-memory object as a smoke test.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use guardlake::config::DEFAULT_FLUSH_BYTES;
use guardlake::normalize::cloudtrail::{normalize_text, EventRow};
use guardlake::normalize::guardduty::RunStamp;
use guardlake::sink::parquet::{writer_properties, PartitionWriter};
use guardlake::sources::orgtrail::{read_object, record_text};
use parquet::basic::Compression;

fn objects(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".json.gz") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn tiny_object() -> Vec<u8> {
    let records: Vec<String> = (0..500)
        .map(|i| format!(r#"{{"eventID":"e{i}","eventTime":"2026-11-20T10:{:02}:00Z","eventName":"ListUsers","eventSource":"iam.amazonaws.com","awsRegion":"us-east-1","recipientAccountId":"111122223333","userIdentity":{{"type":"Root"}}}}"#, i % 60))
        .collect();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = encoder.write_all(format!("{{\"Records\":[{}]}}", records.join(",")).as_bytes());
    encoder.finish().unwrap_or_default()
}

mod common;

#[derive(Clone, Copy, PartialEq)]
enum Stage {
    Split,
    Parse,
    /// Parse, then compress the row's JSON (`raw` and the three JSON columns) as the lake does:
    /// zstd level 1 (`sink::parquet::zstd`), one call per page of the lake's page size, one
    /// reused context. Every other column and all of Parquet's own work are left out.
    ParseZstd,
}

/// One pass of `stage` over the corpus, in seconds.
fn stage(files: &[PathBuf], stage: Stage) -> f64 {
    let level = match guardlake::sink::parquet::zstd() {
        Compression::ZSTD(level) => level.compression_level(),
        _ => unreachable!("the lake's codec is zstd"),
    };
    let page_bytes = writer_properties().data_page_size_limit();
    let mut compressor = zstd::bulk::Compressor::new(level).unwrap();
    // A page per column, as the lake has; it ends with the value that fills it.
    let mut pages: [Vec<u8>; 4] = Default::default();
    let mut compressed = Vec::new();
    let started = Instant::now();
    for file in files {
        let bytes = std::fs::read(file).unwrap();
        let _ = read_object(&bytes, &mut |record| {
            let Ok(raw) = record else { return };
            if stage == Stage::Split {
                std::hint::black_box(raw);
                return;
            }
            let Ok(row) = std::hint::black_box(normalize_text(&record_text(raw))) else {
                return;
            };
            if stage == Stage::ParseZstd {
                let json = [
                    Some(row.raw()),
                    row.request_parameters(),
                    row.response_elements(),
                    row.additional_event_data(),
                ];
                for (page, text) in pages.iter_mut().zip(json) {
                    page.extend_from_slice(text.unwrap_or_default().as_bytes());
                    if page.len() >= page_bytes {
                        compressed.clear();
                        compressed.reserve(zstd::zstd_safe::compress_bound(page.len()));
                        compressor
                            .compress_to_buffer(page, &mut compressed)
                            .unwrap();
                        std::hint::black_box(&compressed);
                        page.clear();
                    }
                }
            }
        });
    }
    started.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| common::arg(&args, name);
    let benchmarking = args.iter().any(|a| a == "--bench");
    let files = match (benchmarking, arg("--corpus")) {
        (true, Some(dir)) => objects(Path::new(&dir)),
        (true, None) => {
            eprintln!("usage: cargo bench --bench orgtrail -- --corpus DIR");
            std::process::exit(2);
        }
        (false, _) => Vec::new(),
    };
    // --stages: time the first stages alone first (inflate + split; then + parse; then + zstd of
    // the JSON the lake keeps), so the report shows where the time goes and what a run can at
    // best reach with its JSON compressed as the lake compresses it. Each is a full pass.
    let stages = if benchmarking && args.iter().any(|a| a == "--stages") {
        format!(
            ",\"stage_inflate_split_seconds\":{:.3},\"stage_inflate_split_parse_seconds\":{:.3},\"stage_inflate_split_parse_zstd_seconds\":{:.3}",
            stage(&files, Stage::Split),
            stage(&files, Stage::Parse),
            stage(&files, Stage::ParseZstd)
        )
    } else {
        String::new()
    };
    let work =
        std::env::temp_dir().join(format!("guardlake-orgtrail-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let stamp = RunStamp {
        run_id: "bench".into(),
        collected_at_ms: 0,
    };
    let mut writer: PartitionWriter<EventRow> =
        PartitionWriter::new(work.clone(), stamp, DEFAULT_FLUSH_BYTES, 128 << 20);
    let mut seen: HashSet<u64> = HashSet::new();
    let (mut records, mut written, mut bad, mut compressed) = (0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    let mut process = |bytes: &[u8]| {
        compressed += bytes.len() as u64;
        let outcome = read_object(bytes, &mut |record| {
            records += 1;
            let Ok(raw) = record else {
                bad += 1;
                return;
            };
            match normalize_text(&record_text(raw)) {
                Ok(row) => {
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    row.event_id().hash(&mut hasher);
                    if seen.insert(hasher.finish()) {
                        written += 1;
                        writer.push(row).unwrap();
                    }
                }
                Err(_) => bad += 1,
            }
        });
        if outcome.is_err() {
            bad += 1;
        }
    };
    if benchmarking {
        for file in &files {
            process(&std::fs::read(file).unwrap());
        }
    } else {
        process(&tiny_object());
    }
    let parquet = writer.finish().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let parquet_bytes: u64 = parquet
        .iter()
        .map(|f| std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0))
        .sum();
    std::fs::remove_dir_all(&work).ok();
    assert_eq!(
        parquet.iter().map(|f| f.rows as u64).sum::<u64>(),
        written,
        "every kept record encoded once"
    );
    println!(
        "{{\"objects\":{},\"records\":{records},\"written\":{written},\"bad\":{bad},\"compressed_mib\":{:.1},\"parquet_mib\":{:.1},\"files\":{},\"seconds\":{seconds:.3},\"records_per_sec\":{:.0},\"peak_rss_mib\":{:.1}{stages}}}",
        files.len().max(1),
        compressed as f64 / 1048576.0,
        parquet_bytes as f64 / 1048576.0,
        parquet.len(),
        records as f64 / seconds,
        common::peak_rss_kib() as f64 / 1024.0
    );
}
