"""`make bench` (org-trail part): guardlake's org-trail path against DuckDB on the same corpus,
one thread each, at 1x and 10x; appends the numbers to bench/results.txt.

DuckDB's side: read_json_objects over the same .json.gz objects → the same cloudtrail_events columns →
zstd Parquet partitioned by dt, `SET threads = 1`. (Structured `read_json` — Records unnested as
structs, union_by_name, sample_size=-1 — ran out of memory at a 4 GB limit on the 1x corpus with one
thread: each object is one JSON document holding all its records.)
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 200_000

COLUMNS = """
    r->>'eventID' AS event_id, CAST(r->>'eventTime' AS TIMESTAMPTZ) AS event_time, r->>'eventVersion' AS event_version,
    r->>'eventSource' AS event_source, r->>'eventName' AS event_name, r->>'eventType' AS event_type,
    r->>'eventCategory' AS event_category, coalesce(r->>'recipientAccountId', r->'userIdentity'->>'accountId') AS account_id,
    r->>'awsRegion' AS region, r->>'sourceIPAddress' AS source_ip, r->>'userAgent' AS user_agent,
    r->'userIdentity'->>'type' AS identity_type, r->'userIdentity'->>'arn' AS identity_arn,
    r->'userIdentity'->>'principalId' AS principal_id, r->'userIdentity'->>'accessKeyId' AS access_key_id,
    r->'userIdentity'->>'userName' AS user_name, r->'userIdentity'->'sessionContext'->'sessionIssuer'->>'arn' AS session_issuer_arn,
    TRY_CAST(r->'userIdentity'->'sessionContext'->'attributes'->>'mfaAuthenticated' AS BOOLEAN) AS mfa_authenticated,
    r->'userIdentity'->>'invokedBy' AS invoked_by, r->>'errorCode' AS error_code, r->>'errorMessage' AS error_message,
    TRY_CAST(r->>'readOnly' AS BOOLEAN) AS read_only, TRY_CAST(r->>'managementEvent' AS BOOLEAN) AS management_event,
    list_transform(CAST(r->'resources' AS JSON[]), lambda x: concat_ws('|', x->>'type', x->>'ARN', x->>'accountId')) AS resources,
    CAST(r->'requestParameters' AS VARCHAR) AS request_parameters, CAST(r->'responseElements' AS VARCHAR) AS response_elements,
    CAST(r->'additionalEventData' AS VARCHAR) AS additional_event_data, r->'tlsDetails'->>'tlsVersion' AS tls_version,
    r->>'vpcEndpointId' AS vpc_endpoint_id, CAST(r AS VARCHAR) AS raw, now() AS collected_at, 'bench' AS run_id
"""


def corpus(size: int, copies: int) -> Path:
    path = ROOT / "bench" / f".corpus-{copies}x"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([sys.executable, str(ROOT / "tests/corpus/orgtrail.py"), "--records", str(size), "--seed", "7", "--copies", str(copies), "--out", str(tmp)], check=True)
        tmp.rename(path)
    return path


def guardlake(path: Path, stages: bool) -> dict:
    extra = ["--stages"] if stages else []
    done = subprocess.run(["cargo", "bench", "--quiet", "--bench", "orgtrail", "--", "--corpus", str(path), *extra], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def duck(path: Path, records: int, threads: int = 1) -> dict:
    out = Path(tempfile.mkdtemp(prefix="duckdb-orgtrail-"))
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET enable_progress_bar = false")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET memory_limit = '4GB'")
    started = time.perf_counter()
    con.execute(f"""
        COPY (
            SELECT *, strftime(event_time AT TIME ZONE 'UTC', '%Y-%m-%d') AS dt FROM (
                SELECT {COLUMNS} FROM (
                    SELECT unnest(CAST(json->'Records' AS JSON[])) AS r
                    FROM read_json_objects('{path}/**/*.json.gz', format = 'unstructured', compression = 'gzip',
                                           maximum_object_size = 67108864)
                )
            )
        ) TO '{out}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (dt))
    """)
    seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": round(seconds, 3), "records_per_sec": round(records / seconds), "peak_rss_mib_python_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    lines = ["", "guardlake bench: org-trail path vs DuckDB (one thread each, same corpus)"]
    for copies in (1, 10):
        path = corpus(RECORDS, copies)
        ours = guardlake(path, stages=copies == 1)
        theirs = duck(path, ours["records"])
        ratio = ours["records_per_sec"] / theirs["records_per_sec"]
        lines.append(f"{copies:>2}x corpus: {ours['records']} records in {ours['objects']} objects ({ours['compressed_mib']} MiB gzip)")
        lines.append(f"    guardlake: {ours['records_per_sec']:.0f} records/s ({ours['seconds']} s), peak RSS {ours['peak_rss_mib']} MiB, {ours['parquet_mib']} MiB Parquet in {ours['files']} files")
        lines.append(f"    duckdb:    {theirs['records_per_sec']} records/s ({theirs['seconds']} s)")
        lines.append(f"    ratio:     {ratio:.2f}x DuckDB's rate")
        shown = 4
        if "stage_inflate_split_seconds" in ours:
            split, parsed = ours["stage_inflate_split_seconds"], ours["stage_inflate_split_parse_seconds"]
            zstd = ours["stage_inflate_split_parse_zstd_seconds"]
            lines.append(f"    guardlake stages (separate passes): gunzip + split {split} s, + JSON parse and normalize {parsed} s "
                         f"(+ zstd of the JSON columns alone: {zstd} s); "
                         f"the rest of the {ours['seconds']} s (buffer, sort, Arrow, Parquet encode, zstd) {ours['seconds'] - parsed:.3f} s")
            shown += 1
        print("\n".join(lines[-shown:]), flush=True)
    with open(ROOT / "bench" / "results.txt", "a") as results:
        results.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
