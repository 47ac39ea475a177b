"""Exactly once, proven by crashing it: guardlake is SIGKILLed at named points (the test-only
GUARDLAKE_CRASH_AT), re-run, and every seeded finding version must then be in the lake exactly
once, with nothing partial under a table location. On the local store and on moto's S3."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ENDPOINT, client, control
from seed import findings_for, seed_findings
from test_collect import BINARY, guardlake, query

ACCOUNTS = ["210987654321", "310987654321"]
REGIONS = ["us-east-1", "eu-west-1"]

RUN_POINTS = [
    "after_lock", "after_recovery", "after_discovery", "mid_page", "after_collect", "after_encode",
    "mid_stage_upload", "after_stage_upload", "before_journal", "after_journal", "mid_copy", "after_copy",
    "before_checkpoint", "mid_checkpoint", "after_checkpoint", "after_journal_delete", "mid_staging_cleanup",
    "after_staging_cleanup", "before_lock_release",
]  # fmt: skip
COMPACT_POINTS = ["compact_after_stage", "compact_after_journal", "compact_mid_copy", "compact_mid_delete", "compact_after_journal_delete"]
# More compactions killed, each sequence on a lake of its own; the last rolls a compaction's
# journal forward (it deletes the files it merged) and is killed between two deletes.
COMPACT_SEQUENCES = [["compact_after_copy"], ["compact_before_checkpoint"], ["compact_after_checkpoint"],
                     ["compact_mid_staging_cleanup"], ["compact_after_staging_cleanup"],
                     ["compact_after_journal", "recovery_mid_delete"]]  # fmt: skip
# Rolling forward a committed journal, killed again at each step. Each sequence starts from a run
# killed right after its commit; after `recovery_after_journal_delete` no journal is left, so the
# steps after it come in sequences of their own.
RECOVERY_SEQUENCES = [
    ["recovery_mid_copy", "recovery_after_copy", "recovery_before_checkpoint", "recovery_mid_checkpoint",
     "recovery_after_checkpoint", "recovery_mid_staging_cleanup"],
    ["recovery_after_journal_delete"],
    ["recovery_after_staging_cleanup"],
]  # fmt: skip
RECOVERY_POINTS = [point for sequence in RECOVERY_SEQUENCES for point in sequence]
MORE_COMPACT_POINTS = [point for sequence in COMPACT_SEQUENCES for point in sequence]
# A run that also collects CloudTrail, and an S3 upload large enough to go multipart.
CLOUDTRAIL_POINTS = ["after_cloudtrail"]
MULTIPART_POINTS = ["mid_multipart"]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def seed(days_ago: float = 1.0, per_target: int = 12, offset: int = 0) -> list[dict]:
    seeded = []
    for i, account in enumerate(ACCOUNTS):
        for j, region in enumerate(REGIONS):
            first = offset + (i * 2 + j) * per_target
            # findings_for spaces finding n by 7n minutes from base: start them `days_ago` back.
            base = datetime.now(timezone.utc) - timedelta(days=days_ago, minutes=7 * first)
            found = findings_for(account, region, per_target, base, offset=first)
            seed_findings(account, region, found)
            seeded += found
    return seeded


def update(finding: dict) -> dict:
    """A new version of a finding: count grows, updatedAt moves."""
    newer = copy.deepcopy(finding)
    newer["service"]["count"] += 25
    newer["updatedAt"] = iso(datetime.now(timezone.utc))
    seed_findings(newer["accountId"], newer["region"], [newer])
    return newer


class Lake:
    """A lake on the local store or on moto's S3, readable as local files."""

    def __init__(self, kind: str, tmp: Path):
        self.kind, self.tmp = kind, tmp
        if kind == "local":
            self.output, self.path = str(tmp / "lake"), tmp / "lake"
        else:
            self.bucket = f"lake-{int(time.time() * 1000) % 10**9}"
            client("s3").create_bucket(Bucket=self.bucket)
            self.output, self.path = f"s3://{self.bucket}/guardlake", tmp / "s3-copy"

    def sync(self) -> Path:
        if self.kind == "s3":
            import shutil

            shutil.rmtree(self.path, ignore_errors=True)
            s3 = client("s3")
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix="guardlake/"):
                for obj in page.get("Contents", []):
                    target = self.path / obj["Key"].removeprefix("guardlake/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    s3.download_file(self.bucket, obj["Key"], str(target))
        return self.path

    def run(self, *extra: str, crash: str | None = None, codes=(0, 3)) -> subprocess.CompletedProcess:
        args = ["run", "--output", self.output, "--regions", ",".join(REGIONS), "--accounts", ",".join(ACCOUNTS),
                "--lock-lease-secs", "1", "--lookback-days", "10", *extra]  # fmt: skip
        return invoke(args, crash, codes)

    def compact(self, *extra: str, crash: str | None = None) -> subprocess.CompletedProcess:
        return invoke(["compact", "--output", self.output, "--lock-lease-secs", "1", *extra], crash, (0,))


def invoke(args: list[str], crash: str | None, codes) -> subprocess.CompletedProcess:
    if crash is None:
        return guardlake(*args, check_codes=codes)
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDLAKE_") and not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=ENDPOINT, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_REGION="us-east-1", GUARDLAKE_CRASH_AT=crash)  # fmt: skip
    done = subprocess.run([str(BINARY), *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == -signal.SIGKILL, f"expected SIGKILL at {crash}, got {done.returncode}\n{done.stderr[-2000:]}"
    time.sleep(1.1)  # let the dead run's 1-second lease expire
    return done


def key(f: dict) -> tuple:
    return (f["accountId"], f["region"], f["id"], f["updatedAt"][:23])


def assert_exactly_once(lake: Path, versions: list[dict], optional: list[dict] = ()) -> None:
    """Every version in `versions` exactly once; those in `optional` (superseded before any run
    could see them) at most once; nothing else."""
    rows = query(lake, "findings", """
        select account_id, region, id, strftime(updated_at at time zone 'UTC', '%Y-%m-%dT%H:%M:%S.%g'), count(*)
        from findings group by all order by all
    """)  # fmt: skip
    duplicated = [r for r in rows if r[4] != 1]
    assert duplicated == [], f"versions written more than once: {duplicated[:5]}"
    found = {r[:4] for r in rows}
    required = {key(f) for f in versions}
    assert required - found == set(), "lost versions"
    assert found - required - {key(f) for f in optional} == set(), "unexpected rows"


TABLES = ("findings", "runs", "cloudtrail_events", "finding_events", "schema_drift")


def assert_nothing_partial(lake: Path) -> None:
    for table in TABLES:
        for path in (lake / table).rglob("*"):
            if path.is_file():
                assert not path.name.startswith((".", "_")), f"stray file under a table location: {path}"
                pq.read_metadata(path)  # a partial file has no footer and fails here
    assert not list((lake / "_state" / "journals").glob("*")), "no journal left behind"
    assert not [p for p in (lake / "_staging").rglob("*") if p.is_file()], "no staged file left behind"


@pytest.mark.parametrize("store", ["local", "s3"])
@pytest.mark.parametrize("point", RUN_POINTS)
def test_killed_run_then_rerun_publishes_every_version_once(tmp_path, store, point):
    lake = Lake(store, tmp_path)
    versions = seed()
    lake.run(crash=point)
    # Meanwhile a finding changes and a new one appears. GuardDuty serves only the latest
    # version: the superseded one is in the lake only if the killed run had committed.
    superseded = versions.pop(3)
    versions.append(update(superseded))
    committed = RUN_POINTS.index(point) >= RUN_POINTS.index("after_journal")
    optional = [] if committed else [superseded]
    if committed:
        versions.append(superseded)
    versions += seed(days_ago=0.01, per_target=1, offset=900)
    lake.run()
    path = lake.sync()
    assert_exactly_once(path, versions, optional)
    assert_nothing_partial(path)
    # And one more run adds nothing.
    lake.run()
    assert_exactly_once(lake.sync(), versions, optional)


@pytest.mark.parametrize("store", ["local", "s3"])
@pytest.mark.parametrize("sequence", RECOVERY_SEQUENCES, ids=lambda s: s[0])
def test_crashes_during_recovery_are_recovered_too(tmp_path, store, sequence):
    lake = Lake(store, tmp_path)
    versions = seed()
    lake.run(crash="after_journal")
    for point in sequence:
        lake.run(crash=point)
    lake.run()
    path = lake.sync()
    assert_exactly_once(path, versions)
    assert_nothing_partial(path)


def test_a_run_killed_after_collecting_cloudtrail_publishes_findings_and_events_once(tmp_path):
    from test_cloudtrail import event, seed_events

    from conftest import cloudtrail_fixtures

    lake = Lake("local", tmp_path)
    versions = seed()
    now = datetime.now(timezone.utc)
    events = {}
    for account in ACCOUNTS:
        for region in REGIONS:
            event_id = f"stop-{account}-{region}"
            seed_events(account, region, [event(cloudtrail_fixtures()["iam_user"], event_id, account, region, "StopLogging",
                                                "cloudtrail.amazonaws.com", now - timedelta(hours=2), None)])  # fmt: skip
            events[event_id] = 1
    trail = ("--cloudtrail", "lookup", "--watchlist", "StopLogging")
    for point in CLOUDTRAIL_POINTS:
        lake.run(*trail, crash=point)
    lake.run(*trail)
    lake.run(*trail)
    path = lake.sync()
    assert_exactly_once(path, versions)
    assert dict(query(path, "cloudtrail_events", "select event_id, count(*) from cloudtrail_events group by 1")) == events
    assert_nothing_partial(path)


def test_a_run_killed_between_multipart_parts_publishes_every_version_once(tmp_path):
    import base64
    import os

    lake = Lake("s3", tmp_path)
    # 130 findings of ~200 KB that hardly compress: one findings file over the 16 MiB part size
    # (MULTIPART_PART_BYTES).
    big = findings_for(ACCOUNTS[0], REGIONS[0], 130, datetime.now(timezone.utc) - timedelta(days=2))
    noon = datetime.now(timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
    for n, finding in enumerate(big):
        # One day, so one partition and one file.
        finding["createdAt"] = finding["updatedAt"] = iso(noon + timedelta(seconds=n))
        finding["service"]["additionalInfo"] = {"padding": base64.b64encode(os.urandom(150_000)).decode(), "type": "default"}
    seed_findings(ACCOUNTS[0], REGIONS[0], big)
    # One thread, so one encoder: with more, the day's rows are shared among encoders' files.
    for point in MULTIPART_POINTS:
        lake.run("--threads", "1", crash=point)
    lake.run("--threads", "1")
    path = lake.sync()
    assert_exactly_once(path, big)
    assert max(p.stat().st_size for p in (path / "findings").rglob("*.parquet")) > 16 << 20, "the file went multipart"
    assert_nothing_partial(path)


@pytest.mark.parametrize("sequence", COMPACT_SEQUENCES, ids=lambda s: s[-1])
def test_a_compaction_killed_at_any_step_keeps_every_row(tmp_path, sequence):
    lake = Lake("local", tmp_path)
    for day in (3, 4):
        seed(days_ago=day, per_target=2, offset=100 * day)
    lake.run()
    for day in (3, 4):
        seed(days_ago=day + 0.1, per_target=1, offset=1000 + 100 * day)
    lake.run("--since", iso(datetime.now(timezone.utc) - timedelta(days=6)), "--until", iso(datetime.now(timezone.utc)))
    path = lake.sync()
    before, files_before = lake_rows(path), len(list((path / "findings").rglob("*.parquet")))
    for point in sequence:
        lake.compact(crash=point)
    lake.compact()
    path = lake.sync()
    assert lake_rows(path) == before, "compaction preserves the multiset of rows"
    assert len(list((path / "findings").rglob("*.parquet"))) < files_before
    assert_nothing_partial(path)


def test_two_runs_started_together_one_publishes(tmp_path):
    import os

    versions = seed()
    control("POST", "/moto-api/ext/faults", {"operation": "ListFindings", "latency_ms": 300})
    lake = tmp_path / "lake"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDLAKE_") and not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=ENDPOINT, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1")
    args = [str(BINARY), "run", "--output", str(lake), "--regions", ",".join(REGIONS), "--accounts", ",".join(ACCOUNTS), "--lookback-days", "10"]
    runs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    # communicate() reads both pipes while it waits: a run that filled one would otherwise block.
    results = []
    for p in runs:
        out, err = p.communicate(timeout=120)
        results.append((p.returncode, out, err))
    control("DELETE", "/moto-api/ext/faults")
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 5], results
    loser = next(err for code, _, err in results if code == 5)
    assert "holds the lock" in loser
    assert_exactly_once(lake, versions)
    assert query(lake, "runs", "select count(distinct run_id) from runs") == [(1,)]


def test_lock_of_a_crashed_run_expires_after_its_lease(tmp_path):
    lake = Lake("local", tmp_path)
    versions = seed(per_target=2)
    args = ["run", "--output", lake.output, "--regions", "us-east-1", "--accounts", ACCOUNTS[0], "--lock-lease-secs", "3"]
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDLAKE_") and not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=ENDPOINT, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1", GUARDLAKE_CRASH_AT="after_discovery")
    assert subprocess.run([str(BINARY), *args], env=env, capture_output=True).returncode == -signal.SIGKILL
    blocked = guardlake(*args, check_codes=(5,))
    assert "holds the lock" in blocked.stderr
    time.sleep(3.1)
    guardlake(*args)
    assert query(lake.path, "findings", "select count(*) from findings") == [(len([v for v in versions if v["accountId"] == ACCOUNTS[0] and v["region"] == "us-east-1"]),)]


def test_the_next_run_removes_a_killed_runs_scratch_directory_and_keeps_a_live_ones(tmp_path):
    """A run killed after encoding cannot remove its scratch directory (its Parquet not yet
    staged); the next run on the host removes it. A live run's directory (its lock held, here
    by this test) is left alone."""
    import fcntl
    import uuid

    lake = Lake("local", tmp_path)
    versions = seed(per_target=2)
    work = tmp_path / "work"
    lake.run("--work-dir", str(work), crash="after_encode")
    killed = list(work.glob("guardlake-*"))
    assert len(killed) == 1 and list(killed[0].rglob("*.parquet")), "the killed run left its encoded files"
    live = work / f"guardlake-{uuid.uuid4()}"
    live.mkdir()
    with open(live / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = lake.run("--work-dir", str(work))
        assert sorted(p.name for p in work.iterdir()) == [live.name]
    assert '"removed":1' in done.stderr and "Removed the scratch directories of runs that were killed." in done.stderr
    assert_exactly_once(lake.sync(), versions)


def lake_rows(lake: Path) -> list[tuple]:
    return sorted(query(lake, "findings", "select * from findings"), key=repr)


@pytest.mark.parametrize("store", ["local", "s3"])
def test_backfill_adds_only_missing_versions_and_compaction_keeps_every_row(tmp_path, store):
    lake = Lake(store, tmp_path)
    # Closed partitions (days 3-7 ago), each about to get two files: a run's and a backfill's.
    old = [f for day in range(3, 8) for f in seed(days_ago=day, per_target=2, offset=100 * day)]
    lake.run()
    # Findings that the next incremental run cannot see: updated before its watermark.
    missed = [f for day in range(3, 8) for f in seed(days_ago=day + 0.1, per_target=1, offset=1000 + 100 * day)]
    lake.run()
    assert query(lake.sync(), "findings", "select count(*) from findings") == [(len(old),)]
    def checkpoints() -> dict[str, dict]:
        state = lake.sync() / "_state" / "guardduty"
        return {str(p.relative_to(state)): json.loads(p.read_text()) for p in state.rglob("*.json")}

    before_backfill = checkpoints()
    since = iso(datetime.now(timezone.utc) - timedelta(days=8))
    until = iso(datetime.now(timezone.utc))
    lake.run("--since", since, "--until", until)
    path = lake.sync()
    assert_exactly_once(path, old + missed)
    assert checkpoints() == before_backfill, "a backfill leaves checkpoints alone"
    assert len(before_backfill) == len(ACCOUNTS) * len(REGIONS)

    before = lake_rows(path)
    files_before = len(list((path / "findings").rglob("*.parquet")))
    for point in COMPACT_POINTS:
        lake.compact(crash=point)
    done = lake.compact()
    path = lake.sync()
    after = lake_rows(path)
    files_after = len(list((path / "findings").rglob("*.parquet")))
    assert after == before, "compaction preserves the multiset of rows"
    assert files_after < files_before, (files_before, files_after, done.stdout)
    assert_nothing_partial(path)
