//! `make bench`: normalize + Parquet encode throughput on 100k+ findings, and peak RSS.
//!
//! Findings arrive as GetFindings pages would (JSON text, 50 per page), built from the
//! fixtures with varied ids, accounts, regions and timestamps; building them is not timed.
//! Timed: split the page into findings, parse, normalize, buffer, sort, encode (zstd), close.
//! Usage: cargo bench --bench normalize_encode -- [--findings N] [--out FILE]

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use guardlake::config::DEFAULT_FLUSH_BYTES;
use guardlake::normalize::guardduty::{normalize, RunStamp};
use guardlake::sink::parquet::FindingsWriter;
use guardlake::sources::guardduty::split_findings;

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

    let work = std::env::temp_dir().join(format!("guardlake-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let stamp = RunStamp {
        run_id: "bench".into(),
        collected_at_ms: base_ms,
    };
    let mut writer = FindingsWriter::new(work.clone(), stamp, DEFAULT_FLUSH_BYTES, 128 << 20);
    let rss_before = common::peak_rss_kib();
    let mut timed = Duration::ZERO;
    let mut raw_bytes = 0usize;
    let mut written = 0usize;
    for page_start in (0..total).step_by(50) {
        // Build one GetFindings page (not timed).
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
        let body = serde_json::to_vec(&serde_json::json!({ "findings": page })).unwrap();
        raw_bytes += body.len();

        let started = Instant::now();
        for finding in split_findings(&body).unwrap() {
            let value = finding.value.unwrap();
            let row = normalize(&value, finding.raw).unwrap();
            writer.push(row).unwrap();
            written += 1;
        }
        timed += started.elapsed();
    }
    let started = Instant::now();
    let files = writer.finish().unwrap();
    timed += started.elapsed();
    let parquet_bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0))
        .sum();
    let rows: usize = files.iter().map(|f| f.rows).sum();
    assert_eq!(rows, written, "every finding encoded once");
    std::fs::remove_dir_all(&work).ok();

    let rate = written as f64 / timed.as_secs_f64();
    let report = format!(
        "guardlake bench: normalize + encode\n\
         findings:          {written}\n\
         input JSON:        {:.1} MiB\n\
         parquet written:   {:.1} MiB in {} files ({} dt partitions)\n\
         time (timed part): {:.2} s\n\
         throughput:        {rate:.0} findings/s\n\
         peak RSS:          {:.1} MiB (before the pipeline: {:.1} MiB)\n\
         flush_bytes:       32 MiB, target_file_bytes: 128 MiB\n",
        raw_bytes as f64 / f64::from(1 << 20),
        parquet_bytes as f64 / f64::from(1 << 20),
        files.len(),
        files
            .iter()
            .map(|f| f.dt)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        timed.as_secs_f64(),
        common::peak_rss_kib() as f64 / 1024.0,
        rss_before as f64 / 1024.0,
    );
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
