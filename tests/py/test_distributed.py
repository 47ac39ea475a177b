"""A run split across processes: `plan` → `shard` ×N in parallel → `commit` publishes exactly what
one `run` publishes, once, whatever happens to the shards in between."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import duckdb

from conftest import ENDPOINT
from seed import seed_org
from test_collect import BINARY, REGIONS, guardlake, query

OPTIONS = ("--regions", ",".join(REGIONS), "--lookback-days", "10", "--cloudtrail", "lookup", "--watchlist", "StopLogging")


def env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDLAKE_") and not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=ENDPOINT, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    return env


def plan(lake: Path, *options: str) -> dict:
    return json.loads(guardlake("plan", "--output", str(lake), *OPTIONS, *options, check_codes=(0,)).stdout)


def shards(lake: Path, run_id: str, numbers, *extra: str) -> list[subprocess.CompletedProcess]:
    """Runs the shards in parallel, as a Distributed Map does."""
    procs = [subprocess.Popen([str(BINARY), "shard", "--run-id", run_id, "--shard", str(n), "--output", str(lake), *OPTIONS, *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()) for n in numbers]  # fmt: skip
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def shard_accounts(lake: Path, run_id: str) -> dict[int, set[str]]:
    files = sorted((lake / "_state" / "plans" / run_id / "shards").glob("*.json"))
    return {int(f.stem): {c["account_id"] for c in json.loads(f.read_text())["chains"]} for f in files}


def table(lake: Path, name: str, columns: str) -> Counter:
    if not (lake / name).exists():
        return Counter()
    con = duckdb.connect()
    con.execute(f"create view t as select * from read_parquet('{lake}/{name}/*/*.parquet', hive_partitioning=true)")
    return Counter(tuple(freeze(v) for v in row) for row in con.execute(f"select {columns} from t").fetchall())


def freeze(value):
    """A hashable form of a DuckDB value (lists and structs included)."""
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value


TABLES = {
    "findings": "* exclude (run_id, collected_at)",
    "cloudtrail_events": "* exclude (run_id, collected_at)",
    "finding_events": "* exclude (run_id)",
    "runs": "account_id, region, source, mode, status, error_class, findings_read, findings_written, findings_quarantined",
    "schema_drift": "finding_type, path, kind",
}


def checkpoints(lake: Path) -> dict[str, dict]:
    """Every checkpoint, with the run's start (the end of every window) taken out."""
    start = query(lake, "runs", "select epoch_ms(max(window_end)) from runs")[0][0]
    found = {}
    for path in (lake / "_state").rglob("*.json"):
        key = str(path.relative_to(lake))
        if key.startswith(("_state/plans/", "_state/lock")):
            continue
        body = json.loads(path.read_text())
        if isinstance(body, dict):
            if body.get("watermark_ms") == start:
                body["watermark_ms"] = "run start"
            body["watermarks"] = {r: ("run start" if t == start else t) for r, t in body.get("watermarks", {}).items()}
        found[key] = body
    return found


def test_shards_and_one_commit_publish_what_one_run_publishes(tmp_path):
    seed_org(members=3, regions=REGIONS, per_target=6)
    single, split = tmp_path / "single", tmp_path / "split"
    guardlake("run", "--output", str(single), *OPTIONS)
    planned = plan(split)
    assert planned["shards"] == len(shard_accounts(split, planned["run_id"])) >= 4, planned
    assert planned["prefix"].endswith(f"_state/plans/{planned['run_id']}/shards/")
    for done in shards(split, planned["run_id"], range(planned["shards"])):
        assert done.returncode in (0, 3), done.stderr[-2000:]
    guardlake("commit", "--run-id", planned["run_id"], "--output", str(split), *OPTIONS)

    for name, columns in TABLES.items():
        assert table(split, name, columns) == table(single, name, columns), name
    assert table(split, "findings", "id")
    assert checkpoints(split) == checkpoints(single)
    assert not [p for p in (split / "_staging").rglob("*") if p.is_file()], "no attempt left behind"
    assert not [p for p in (split / "_state" / "plans").rglob("*") if p.is_file()], "the plan is removed once committed"
    assert not (split / "_state" / "lock.json").exists(), "the lock is released"
    # The next run (single or split) finds nothing new.
    again = plan(split)
    shards(split, again["run_id"], range(again["shards"]))
    guardlake("commit", "--run-id", again["run_id"], "--output", str(split), *OPTIONS)
    assert sum(table(split, "findings", "id, updated_at").values()) == sum(table(single, "findings", "id, updated_at").values())


def test_a_killed_retried_and_doubled_shard_still_publishes_every_version_once(tmp_path):
    org = seed_org(members=3, regions=REGIONS, per_target=6, with_trouble=False)
    lake = tmp_path / "lake"
    planned = plan(lake)
    run_id = planned["run_id"]
    # Shards of accounts with findings first (the management account has no detector).
    numbers = sorted(shard_accounts(lake, run_id).items(), key=lambda item: not item[1] <= set(org.members[1:]))
    numbers = [n for n, _ in numbers]
    killed = shards(lake, run_id, [numbers[0]], "--crash-at", "mid_page")[0]
    assert killed.returncode == -9, killed.stderr[-2000:]
    # The retry, the second shard twice at once, and the rest.
    for done in shards(lake, run_id, [numbers[0], numbers[1], numbers[1], *numbers[2:]]):
        assert done.returncode in (0, 3), done.stderr[-2000:]
    guardlake("commit", "--run-id", run_id, "--output", str(lake), *OPTIONS)
    expected = Counter((f["id"], f["updatedAt"][:19]) for fs in org.findings.values() for f in fs)
    got = table(lake, "findings", "id, strftime(updated_at, '%Y-%m-%dT%H:%M:%S')")
    assert got == expected, "every version exactly once"
    assert not [p for p in (lake / "_staging").rglob("*") if p.is_file()], "the orphan attempts are deleted"


def test_a_shard_that_never_finishes_fails_its_targets_and_the_next_run_collects_them(tmp_path):
    org = seed_org(members=3, regions=REGIONS, per_target=4, with_trouble=False)
    lake = tmp_path / "lake"
    planned = plan(lake)
    run_id = planned["run_id"]
    lost, accounts = next((n, a) for n, a in shard_accounts(lake, run_id).items() if a <= set(org.members[1:]))
    lost_account = next(iter(accounts))
    shards(lake, run_id, [n for n in range(planned["shards"]) if n != lost])
    done = guardlake("commit", "--run-id", run_id, "--output", str(lake), *OPTIONS, check_codes=(3,))
    assert "ShardFailed" in done.stdout
    failed = query(lake, "runs", f"select distinct source, status, error_class from runs where account_id = '{lost_account}'")
    assert sorted(failed) == [("cloudtrail", "error", "ShardFailed"), ("guardduty", "error", "ShardFailed")]
    assert query(lake, "findings", f"select count(*) from findings where account_id = '{lost_account}'") == [(0,)]
    assert not (lake / "_state" / "guardduty" / lost_account).exists(), "its checkpoints are held"
    others = [a for a in org.members[1:] if a != lost_account]
    assert query(lake, "findings", f"select count(distinct account_id) from findings where account_id in {tuple(others)}") == [(len(others),)]
    guardlake("run", "--output", str(lake), *OPTIONS)
    expected = sum(len(f) for (account, _), f in org.findings.items() if account == lost_account)
    assert query(lake, "findings", f"select count(*), count(distinct (id, updated_at)) from findings where account_id = '{lost_account}'") == [(expected, expected)]


def test_a_run_whose_lock_was_taken_over_neither_shards_nor_commits(tmp_path):
    seed_org(members=2, regions=REGIONS[:1], per_target=3, with_trouble=False)
    lake = tmp_path / "lake"
    planned = plan(lake, "--lock-lease-secs", "1")
    time.sleep(2)
    guardlake("run", "--output", str(lake), *OPTIONS)  # takes the expired lock over
    before = table(lake, "runs", "*")
    refused = shards(lake, planned["run_id"], [0])[0]
    assert refused.returncode == 5 and planned["run_id"] in refused.stderr, refused.stderr[-2000:]
    done = guardlake("commit", "--run-id", planned["run_id"], "--output", str(lake), *OPTIONS, check_codes=(5,))
    assert "lock" in done.stderr
    assert table(lake, "runs", "*") == before, "nothing published"
    assert query(lake, "runs", f"select count(*) from runs where run_id = '{planned['run_id']}'") == [(0,)]


def test_step_arguments_are_checked(tmp_path):
    bad = guardlake("shard", "--run-id", "../x", "--shard", "0", "--output", str(tmp_path), check_codes=(2,))
    assert "not a run id" in bad.stderr
    refused = guardlake("plan", "--output", str(tmp_path / "lake"), "--since", "2026-01-01", "--until", "2026-01-02", check_codes=(2,))
    assert "guardlake run" in refused.stderr
