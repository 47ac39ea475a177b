//! `make bench`: findings/s of the product's CPU path on 100k+ findings, at 1 and 2 threads,
//! and peak RSS.
//!
//! Findings arrive as GetFindings pages would (JSON text, 50 per page), built from the
//! fixtures with varied ids, accounts, regions and timestamps; building them is not timed.
//! Timed: split each page into findings, normalize each in one pass over its text, check it for
//! drift (`sources::guardduty::read_page`, as a run does), buffer, sort, encode (zstd), close.
//! Usage: cargo bench --bench normalize_encode -- [--findings N] [--out FILE]

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use guardlake::config::DEFAULT_FLUSH_BYTES;
use guardlake::normalize::drift::check_text;
use guardlake::normalize::finding_text::normalize_str;
use guardlake::normalize::guardduty::{FindingVersion, RunStamp};
use guardlake::pipeline::writer;
use guardlake::sink::parquet::{FindingsWriter, StagedFile};
use guardlake::sources::guardduty::{read_page, split_findings};

mod common;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| common::arg(&args, name);
    // `cargo bench` passes --bench; under `cargo test` this runs as a quick smoke test instead.
    let benchmarking = args.iter().any(|a| a == "--bench");
    let total: usize = if benchmarking {
        arg("--findings")
            .and_then(|n| n.parse().ok())
            .unwrap_or(120_000)
    } else {
        2_000
    };
    let out = arg("--out").unwrap_or_else(|| "bench/results.txt".into());

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/guardduty/examples");
    let mut templates: Vec<serde_json::Value> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap()
        })
        .collect();
    templates.sort_by_key(|t| t["type"].as_str().unwrap_or_default().to_owned());
    let regions = ["us-east-1", "eu-west-1", "ap-southeast-2", "us-west-2"];
    let base_ms = 1_764_000_000_000_i64;

    // Build the GetFindings pages (not timed): held in memory, so they count in the RSS
    // before the pipeline.
    let mut pages = Vec::with_capacity(total.div_ceil(50));
    for page_start in (0..total).step_by(50) {
        let mut page = Vec::with_capacity(50);
        for n in page_start..(page_start + 50).min(total) {
            let mut finding = templates[n % templates.len()].clone();
            let updated = base_ms + (n as i64 * 37_000) % (5 * 86_400_000);
            let iso = chrono::DateTime::from_timestamp_millis(updated)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            finding["id"] = format!("{n:032x}").into();
            finding["accountId"] = format!("{:012}", 100_000_000_000u64 + (n % 500) as u64).into();
            finding["region"] = regions[n % regions.len()].into();
            finding["updatedAt"] = iso.into();
            finding["service"]["count"] = (n % 1000).into();
            page.push(finding);
        }
        pages.push(serde_json::to_vec(&serde_json::json!({ "findings": page })).unwrap());
    }
    let raw_bytes: usize = pages.iter().map(Vec::len).sum();
    let rss_before = common::peak_rss_kib();

    let mut report = format!(
        "guardlake bench: GetFindings pages → split, normalize (one pass over the text), drift check, \
         sort, Parquet encode (zstd), as `guardlake run` does\n\
         findings:          {total} in {} pages, {:.1} MiB of JSON (held in memory: RSS before the pipeline {:.1} MiB)\n\
         flush_bytes:       {} MiB, target_file_bytes: 128 MiB\n",
        pages.len(),
        raw_bytes as f64 / f64::from(1 << 20),
        rss_before as f64 / 1024.0,
        DEFAULT_FLUSH_BYTES >> 20,
    );
    // Stage rates on one thread: what the reading costs before anything is encoded.
    let stage = |f: &dyn Fn(&[u8]) -> usize| {
        let started = Instant::now();
        let n: usize = pages.iter().map(|p| f(p)).sum();
        assert_eq!(n, total);
        total as f64 / started.elapsed().as_secs_f64()
    };
    let split = stage(&|p| split_findings(p).unwrap().len());
    let normalized = stage(&|p| {
        split_findings(p)
            .unwrap()
            .iter()
            .map(|f| normalize_str(&f.raw).map(|_| 1).unwrap())
            .sum()
    });
    let drift = stage(&|p| {
        split_findings(p)
            .unwrap()
            .iter()
            .map(|f| usize::from(check_text(&f.raw).is_empty()))
            .sum()
    });
    report += &format!(
        "stages (1 thread): split {split:.0} findings/s; split + normalize {normalized:.0}/s; split + drift check {drift:.0}/s\n"
    );
    for threads in [1, 2] {
        common::reset_peak_rss();
        let work =
            std::env::temp_dir().join(format!("guardlake-bench-{}-{threads}", std::process::id()));
        std::fs::create_dir_all(&work).unwrap();
        let stamp = RunStamp {
            run_id: "bench".into(),
            collected_at_ms: base_ms,
        };
        let writer = |k: usize| {
            FindingsWriter::new(work.clone(), stamp.clone(), DEFAULT_FLUSH_BYTES, 128 << 20)
                .named(&format!("bench-{k}"))
        };
        let started = Instant::now();
        let files = if threads == 1 {
            one_thread(&pages, writer(0))
        } else {
            workers(&pages, (0..threads).map(writer).collect(), threads)
        };
        let seconds = started.elapsed().as_secs_f64();
        let parquet_bytes: u64 = files
            .iter()
            .map(|f| std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0))
            .sum();
        let rows: usize = files.iter().map(|f| f.rows).sum();
        assert_eq!(rows, total, "every finding encoded once");
        std::fs::remove_dir_all(&work).ok();
        let shape = if threads == 1 {
            "one thread does everything".to_owned()
        } else {
            format!("{threads} threads read pages, {threads} encoder threads encode")
        };
        report += &format!(
            "{threads} thread(s):       {:.0} findings/s ({seconds:.2} s; {shape}); {:.1} MiB Parquet in {} files; peak RSS {:.1} MiB\n",
            total as f64 / seconds,
            parquet_bytes as f64 / f64::from(1 << 20),
            files.len(),
            common::peak_rss_kib() as f64 / 1024.0,
        );
    }
    print!("{report}");
    if !benchmarking {
        return;
    }
    if let Some(parent) = Path::new(&out).parent() {
        std::fs::create_dir_all(parent).ok();
    }
    let mut file = std::fs::File::create(&out).unwrap();
    file.write_all(report.as_bytes()).unwrap();
    println!("written to {out}");
}

/// One page as the product reads it: split, then each finding normalized and checked for drift.
fn rows(page: &[u8]) -> impl Iterator<Item = FindingVersion> {
    read_page(split_findings(page).unwrap())
        .into_iter()
        .map(|read| FindingVersion {
            raw: read.finding.raw,
            ..read.row.unwrap()
        })
}

fn one_thread(pages: &[Vec<u8>], mut writer: FindingsWriter) -> Vec<StagedFile> {
    for page in pages {
        for row in rows(page) {
            writer.push(row).unwrap();
        }
    }
    writer.finish().unwrap()
}

/// `threads` readers take pages in turn and send each page's rows to the table's writer, as a
/// run's chains send theirs (`pipeline::writer::spawn`: one encoder per thread, fed batches of an
/// equal share of the flush size; 32 pages or 16 MiB in flight, and these pages, about 100 KiB
/// each, stay under the bytes).
fn workers(pages: &[Vec<u8>], writers: Vec<FindingsWriter>, threads: usize) -> Vec<StagedFile> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let next = AtomicUsize::new(0);
    let (sink, writer) = {
        let _entered = runtime.enter();
        writer::spawn(writers, DEFAULT_FLUSH_BYTES / threads as u64)
    };
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (sink, next, runtime) = (sink.clone(), &next, &runtime);
            scope.spawn(move || {
                while let Some(page) = pages.get(next.fetch_add(1, Ordering::Relaxed)) {
                    runtime.block_on(sink.send(rows(page).collect())).unwrap();
                }
            });
        }
    });
    drop(sink);
    runtime.block_on(writer.finish()).unwrap()
}
