"""A run split across processes: `plan` → `shard` ×N in parallel → `commit` publishes exactly what
one `run` publishes, once, whatever happens to the shards in between."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from conftest import ENDPOINT
from seed import findings_for, seed_findings, seed_org
from test_collect import BINARY, REGIONS, guardlake, query
from test_orgtrail import deliver, object_key, record

OPTIONS = ("--regions", ",".join(REGIONS), "--lookback-days", "10", "--cloudtrail", "lookup", "--watchlist", "StopLogging")


def env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDLAKE_") and not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=ENDPOINT, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    return env


def plan(lake: Path, *options: str) -> dict:
    return json.loads(guardlake("plan", "--output", str(lake), *OPTIONS, *options, check_codes=(0,)).stdout)


def shards(lake: Path, run_id: str, numbers, *extra: str, options: tuple[str, ...] = OPTIONS) -> list[subprocess.CompletedProcess]:
    """Runs the shards in parallel, as a Distributed Map does."""
    procs = [subprocess.Popen([str(BINARY), "shard", "--run-id", run_id, "--shard", str(n), "--output", str(lake), *options, *extra],
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
    windows = planned["windows"]
    assert windows["first_runs"] == planned["targets"] and windows["unreadable"] == 0, windows
    end = datetime.fromisoformat(windows["end"].replace("Z", "+00:00"))
    assert windows["earliest_start"] == windows["latest_start"] == f"{end - timedelta(days=10):%Y-%m-%dT%H:%M:%SZ}", "the lookback"
    first = json.loads((split / "_state" / "plans" / planned["run_id"] / "shards" / "00000.json").read_text())
    assert all(chain["window_start"] == windows["earliest_start"] for chain in first["chains"]), first
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
    # The next run (single or split) finds nothing new; its windows start at the watermarks.
    again = plan(split)
    assert again["windows"]["first_runs"] < again["targets"], again["windows"]
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


ORG_ID = "o-distributed1"


def trail_options(trail: Path, *extra: str) -> tuple[str, ...]:
    return ("--regions", ",".join(REGIONS[:2]), "--lookback-days", "10", "--cloudtrail", "org-trail", "--trail-dir", str(trail),
            "--trail-org-id", ORG_ID, "--watchlist", "StopLogging", *extra)  # fmt: skip


def seed_trail(trail: Path, org, days: int = 6) -> None:
    """Objects over `days` delivery days in every member account and region: a watched call, a
    denied one and noise in each, and the calls of one access-key finding per account-region."""
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    for (account, region), found in org.findings.items():
        if region not in REGIONS[:2]:
            continue
        for day in range(days):
            for n in range(3):
                delivered = now - timedelta(days=day, hours=2 * n, minutes=7)
                tag = f"{account}-{region}-{day}-{n}"
                deliver(trail, object_key(account, delivered, tag, region=region, org=ORG_ID), [
                    record(f"watched-{tag}", account, delivered - timedelta(minutes=6), "StopLogging", region=region),
                    record(f"denied-{tag}", account, delivered - timedelta(minutes=5), "GetObject", region=region, errorCode="AccessDenied"),
                    record(f"noise-{tag}", account, delivered - timedelta(minutes=4), region=region),
                ])  # fmt: skip
        keyed = next((f for f in found if "accessKeyDetails" in f["resource"]), None)
        if keyed is None:
            continue
        seen = datetime.fromisoformat(keyed["service"]["eventLastSeen"].replace("Z", "+00:00"))
        deliver(trail, object_key(account, seen + timedelta(minutes=9), f"key-{account}", region=region, org=ORG_ID), [
            record(f"by-key-{account}-{region}", account, seen, "ListBuckets", region=region,
                   userIdentity={"type": "IAMUser", "accessKeyId": keyed["resource"]["accessKeyDetails"]["accessKeyId"]}),
        ])  # fmt: skip


def distributed(lake: Path, options: tuple[str, ...], lose: set[int] = frozenset()) -> tuple[dict, dict]:
    """plan → findings shards → plan-trail → CloudTrail batches (but `lose`) → commit."""
    planned = json.loads(guardlake("plan", "--output", str(lake), *options, check_codes=(0,)).stdout)
    run_id = planned["run_id"]
    for done in shards(lake, run_id, range(planned["shards"]), options=options):
        assert done.returncode in (0, 3), done.stderr[-2000:]
    batches = json.loads(guardlake("plan-trail", "--run-id", run_id, "--output", str(lake), *options, check_codes=(0,)).stdout)
    first = planned["shards"]
    numbers = [n for n in range(first, first + batches["shards"]) if n not in lose]
    for done in shards(lake, run_id, numbers, options=options):
        assert done.returncode in (0, 3), done.stderr[-2000:]
    guardlake("commit", "--run-id", run_id, "--output", str(lake), *options, check_codes=(0, 3))
    return planned, batches


def test_org_trail_day_batches_publish_what_one_run_publishes(tmp_path):
    org = seed_org(members=2, regions=REGIONS[:2], per_target=12, with_trouble=False)
    trail, single, split = tmp_path / "trail", tmp_path / "single", tmp_path / "split"
    seed_trail(trail, org)
    options = trail_options(trail)
    guardlake("run", "--output", str(single), *options)
    # The smallest bound: a 10-day backlog is one batch per region and delivery day.
    planned, batches = distributed(split, (*options, "--trail-shard-objects", "288"))
    assert batches["prefix"].endswith(f"_state/plans/{planned['run_id']}/trail/")
    assert batches["shards"] >= 10 * 2 * len(org.members), batches
    assert not list((split / "_state" / "plans").rglob("*.json")), "the plan is removed once committed"

    for name, columns in TABLES.items():
        assert table(split, name, columns) == table(single, name, columns), name
    assert table(split, "finding_events", "finding_id"), "findings are linked to their calls"
    assert checkpoints(split) == checkpoints(single)
    assert not [p for p in (split / "_staging").rglob("*") if p.is_file()], "no attempt left behind"
    # Nothing is read again by the next run, split or not.
    distributed(split, options)
    assert table(split, "cloudtrail_events", "event_id") == table(single, "cloudtrail_events", "event_id")


def test_a_lost_day_batch_holds_its_region_back_and_the_next_run_reads_it_once(tmp_path):
    org = seed_org(members=1, regions=REGIONS[:2], per_target=4, with_trouble=False)
    trail, single, split = tmp_path / "trail", tmp_path / "single", tmp_path / "split"
    seed_trail(trail, org)
    options = trail_options(trail, "--trail-shard-objects", "288")
    guardlake("run", "--output", str(single), *trail_options(trail))
    # Lose the day before yesterday of the member's first region (its parts are in day order).
    member = org.members[1]
    planned = json.loads(guardlake("plan", "--output", str(split), *options, check_codes=(0,)).stdout)
    run_id = planned["run_id"]
    shards(split, run_id, range(planned["shards"]), options=options)
    batches = json.loads(guardlake("plan-trail", "--run-id", run_id, "--output", str(split), *options).stdout)
    folder = split / "_state" / "plans" / run_id / "trail"
    parts = sorted((json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda f: f["shard"])
    region = REGIONS[0]
    mine = [p for p in parts if p["trail"]["account_id"] == member and region in p["trail"]["regions"]]
    assert len(mine) >= 10 and all(p["trail"]["split"] for p in mine), mine
    lost = mine[-3]["shard"]
    numbers = [p["shard"] for p in parts if p["shard"] != lost]
    for done in shards(split, run_id, numbers, options=options):
        assert done.returncode in (0, 3), done.stderr[-2000:]
    done = guardlake("commit", "--run-id", run_id, "--output", str(split), *options, check_codes=(3,))
    rows = query(split, "runs", f"select region, status, error_class from runs where source = 'cloudtrail' and account_id = '{member}'")
    assert sorted(rows) == sorted([(REGIONS[0], "error", "ShardFailed"), (REGIONS[1], "ok", None)]), rows
    held = {e for e, in query(split, "cloudtrail_events", f"select event_id from cloudtrail_events where region = '{region}' and account_id = '{member}'")}
    every = {e for e, in query(single, "cloudtrail_events", f"select event_id from cloudtrail_events where region = '{region}' and account_id = '{member}'")}
    assert held and held < every, "the parts before the lost one are published, the rest held back"
    # The next run reads from where the published parts end: every event once.
    distributed(split, options)
    assert table(split, "cloudtrail_events", "event_id") == table(single, "cloudtrail_events", "event_id")
    assert checkpoints(split) == checkpoints(single)


def test_delegated_admin_with_lookup_shards_by_region_then_by_account(tmp_path):
    org = seed_org(members=2, regions=REGIONS, per_target=4, with_trouble=False)
    single, split = tmp_path / "single", tmp_path / "split"
    options = (*OPTIONS, "--mode", "delegated-admin", "--admin-account", org.admin)
    guardlake("run", "--output", str(single), *options)
    planned, batches = distributed(split, options)
    assert planned["shards"] == len(REGIONS), "one findings shard per region"
    covered = query(single, "runs", "select count(distinct account_id) from runs where source = 'cloudtrail'")
    assert [(batches["shards"],)] == covered, "one CloudTrail batch per account"
    for name, columns in TABLES.items():
        assert table(split, name, columns) == table(single, name, columns), name
    looked_up = query(split, "runs", "select count(*) from runs where source = 'cloudtrail' and status = 'ok'")
    assert looked_up[0][0] >= 2 * len(REGIONS), "each member's regions were looked up"
    assert checkpoints(split) == checkpoints(single)


def test_the_commit_publishes_the_findings_attempts_the_cloudtrail_phase_used(tmp_path):
    """An attempt that finishes after plan-trail (a Lambda that outlived its Map state) loses to
    the attempt whose new finding versions the CloudTrail phase correlated, even when its id sorts
    first."""
    org = seed_org(members=1, regions=REGIONS[:1], per_target=3, with_trouble=False)
    member = org.members[1]
    trail, lake = tmp_path / "trail", tmp_path / "lake"
    seed_trail(trail, org, days=1)
    options = trail_options(trail, "--regions", REGIONS[0])
    planned = json.loads(guardlake("plan", "--output", str(lake), *options, check_codes=(0,)).stdout)
    run_id = planned["run_id"]
    mine = next(n for n, accounts in shard_accounts(lake, run_id).items() if member in accounts)
    [early] = shards(lake, run_id, [mine], options=options)
    attempts = lake / "_staging" / run_id / "shards" / f"{mine:05}"
    [early_attempt] = list(attempts.iterdir())
    hidden = tmp_path / "hidden-done.json"
    (early_attempt / "done.json").rename(hidden)  # not finished yet, as far as anyone can see
    # Created inside the run's window (findings_for spaces findings 7 minutes apart by offset).
    later = findings_for(member, REGIONS[0], 1, datetime.now(timezone.utc) - timedelta(days=3), offset=500)
    seed_findings(member, REGIONS[0], later)
    shards(lake, run_id, range(planned["shards"]), options=options)
    batches = json.loads(guardlake("plan-trail", "--run-id", run_id, "--output", str(lake), *options, check_codes=(0,)).stdout)
    hidden.rename(early_attempt / "done.json")  # the early attempt finishes late
    assert early.returncode in (0, 3)
    shards(lake, run_id, range(planned["shards"], planned["shards"] + batches["shards"]), options=options)
    guardlake("commit", "--run-id", run_id, "--output", str(lake), *options)
    ids = {i for i, in query(lake, "findings", f"select id from findings where account_id = '{member}'")}
    assert later[0]["id"] in ids, "the attempt plan-trail read is the one published"
    assert len(ids) == len(org.findings[(member, REGIONS[0])]) + 1
