"""`make bench-scale`: one process against a distributed run, with latency on every GuardDuty and
STS call, on the local backend. Writes bench/scale.txt.

The organization: BENCH_ACCOUNTS member accounts (default 200) x 4 regions, 2 findings per target.
The latency: LATENCY_MS (default 100) on AssumeRole, ListDetectors, ListFindings and GetFindings.
Each configuration runs into a fresh lake twice, without and with the latency:

- `guardlake run`, one process at the default concurrency (8 targets at once);
- `guardlake plan`, then the shards spread over 1, 2 and 4 worker processes (each runs its
  shards one after another, as a Map with that MaxConcurrency would), then `guardlake commit`.

The lower bound of a configuration is latency-bearing calls x latency / (processes x targets
at once in a process). A shard in member mode is one account with its 4 regions, so at most 4 of
its chains run at once. The goal: wall time with latency <= 1.25 x (zero-latency time + bound).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "py"))

from conftest import control  # noqa: E402
from seed import create_org, findings_for, seed_findings  # noqa: E402

# The debug build by default (the latency-bound parts do not depend on it); BENCH_PROFILE=release
# builds and uses the release one.
PROFILE = os.environ.get("BENCH_PROFILE", "debug")
# Where the `cargo build` below puts it: $CARGO_TARGET_DIR (relative to ROOT, its cwd) or ./target.
BINARY = ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / PROFILE / "guardlake"
ACCOUNTS = int(os.environ.get("BENCH_ACCOUNTS", "200"))
LATENCY_MS = int(os.environ.get("LATENCY_MS", "100"))
REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2", "eu-central-1")
LATENT = ("AssumeRole", "ListDetectors", "ListFindings", "GetFindings")
CONCURRENCY = 8
OPTIONS = ["--regions", ",".join(REGIONS), "--lookback-days", "10", "--concurrency", str(CONCURRENCY)]


def seed() -> list[str]:
    control("POST", "/moto-api/reset")
    accounts = create_org([f"bench-{i}" for i in range(ACCOUNTS)])
    base = datetime.now(timezone.utc) - timedelta(days=2)
    for i, account in enumerate(accounts):
        for j, region in enumerate(REGIONS):
            seed_findings(account, region, findings_for(account, region, 2, base, offset=(i * len(REGIONS) + j) * 2))
    return accounts


def latent_calls() -> int:
    return sum(r["count"] for r in control("GET", "/moto-api/ext/stats")["requests"] if r["operation"] in LATENT)


def guardlake(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BINARY), *args], capture_output=True, text=True)
    if done.returncode not in (0, 3):
        raise SystemExit(f"guardlake {args[0]} exited {done.returncode}: {done.stderr[-2000:]}")
    return done


def single(lake: Path) -> None:
    guardlake("run", "--output", str(lake), *OPTIONS)


def distributed(lake: Path, workers: int) -> None:
    plan = json.loads(guardlake("plan", "--output", str(lake), *OPTIONS).stdout)
    numbers = list(range(plan["shards"]))

    def worker(mine: list[int]) -> None:
        for n in mine:
            guardlake("shard", "--run-id", plan["run_id"], "--shard", str(n), "--output", str(lake), *OPTIONS)

    threads = [threading.Thread(target=worker, args=(numbers[w::workers],)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    guardlake("commit", "--run-id", plan["run_id"], "--output", str(lake), *OPTIONS)


def timed(configuration, scratch: Path, latency: bool) -> tuple[float, int]:
    control("DELETE", "/moto-api/ext/faults")
    if latency:
        for operation in LATENT:
            control("POST", "/moto-api/ext/faults", {"operation": operation, "latency_ms": LATENCY_MS})
    before = latent_calls()
    lake = Path(tempfile.mkdtemp(dir=scratch))
    started = time.monotonic()
    configuration(lake)
    wall = time.monotonic() - started
    control("DELETE", "/moto-api/ext/faults")
    return wall, latent_calls() - before


def main() -> None:
    subprocess.run(["cargo", "build", "--bin", "guardlake", *(["--release"] if PROFILE == "release" else [])], cwd=ROOT, check=True)
    accounts = seed()
    configurations = [("run, 1 process", single, CONCURRENCY)]
    configurations += [(f"distributed, {w} process(es)", lambda lake, w=w: distributed(lake, w), w * len(REGIONS)) for w in (1, 2, 4)]
    lines = [f"bench-scale: {len(accounts)} accounts x {len(REGIONS)} regions, {LATENCY_MS} ms on {', '.join(LATENT)}; "
             f"member mode, --concurrency {CONCURRENCY}; {PROFILE} build; {os.cpu_count()} cores"]  # fmt: skip
    lines.append(f"{'configuration':<28} {'zero-latency s':>14} {'with latency s':>14} {'calls':>6} {'bound s':>8} {'ratio':>6} {'speed-up':>8}")
    base = None
    with tempfile.TemporaryDirectory() as scratch:
        for name, configuration, at_once in configurations:
            zero, _ = timed(configuration, Path(scratch), latency=False)
            wall, calls = timed(configuration, Path(scratch), latency=True)
            bound = calls * LATENCY_MS / 1000 / at_once
            ratio = wall / (zero + bound)
            base = base or (wall if name.startswith("distributed, 1") else None)
            speedup = f"{base / wall:.2f}x" if base and name.startswith("distributed") else ""
            lines.append(f"{name:<28} {zero:>14.1f} {wall:>14.1f} {calls:>6} {bound:>8.1f} {ratio:>6.2f} {speedup:>8}")
            print(lines[-1], flush=True)
    lines.append("ratio = with latency / (zero-latency + bound); goal <= 1.25. speed-up: against 1 distributed process.")
    out = ROOT / "bench" / "scale.txt"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
