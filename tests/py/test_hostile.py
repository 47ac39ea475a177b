"""Hostile input from the wire and the command line: a finding the body cannot carry, findings
that are not their target's, huge findings and trail objects under a memory limit, keys XML
cannot hold, inputs that point outside where they should, and secrets in logs."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import client, control
from seed import create_org, findings_for, seed_findings
from test_collect import BINARY, guardlake, query
from test_orgtrail import ORG, deliver, events, object_key, org_with_detectors, record, run_args

REGION = "eu-west-1"
# The limit the README states for a run with default settings.
RSS_LIMIT_MIB = 256


def args(lake: Path, accounts: list[str], *extra: str) -> tuple[str, ...]:
    return ("run", "--output", str(lake), "--regions", REGION, "--accounts", ",".join(accounts), "--lookback-days", "7", *extra)


def quarantined(lake: Path, kind: str = "findings") -> list[dict]:
    return [json.loads(line) for path in sorted((lake / "_quarantine" / kind).rglob("*.jsonl")) for line in path.read_text().splitlines()]


def peak_rss_mib(*argv: str) -> tuple[int, float, str]:
    """Runs guardlake; returns its exit code, the peak resident memory its summary reports
    (the process's own VmHWM: getrusage of a child would count the forked test process), and
    its output."""
    done = guardlake(*argv, check_codes=None)
    found = re.search(r"memory: +([\d.]+) MiB peak resident", done.stdout)
    assert found, done.stdout
    return done.returncode, float(found.group(1)), done.stdout + done.stderr[-3000:]


def test_bad_findings_are_quarantined_and_the_rest_of_their_page_kept(tmp_path):
    [account] = create_org(["hostile"])
    [outsider] = ["999999999999"]
    found = findings_for(account, REGION, 8, datetime.now(timezone.utc) - timedelta(days=1))
    bad_utf8, raw_nul, evil_region, foreign, *good = found
    # Invalid UTF-8 and a raw NUL inside a string: the whole body is no longer valid JSON.
    raw = {
        bad_utf8["id"]: json.dumps(bad_utf8).encode().replace(b'"title": "', b'"title": "\xff\xfe', 1),
        raw_nul["id"]: json.dumps(raw_nul).encode().replace(b'"title": "', b'"title": "\x00', 1),
    }
    # Fields from the wire that do not match the target: where LookupEvents would be called,
    # and whose finding it is.
    evil_region["region"] = "evil.example.com"
    evil_region["resource"]["accessKeyDetails"] = {"accessKeyId": "AKIAEVILEVILEVIL0001", "userName": "mallory", "userType": "IAMUser"}
    foreign["accountId"] = outsider
    control("POST", "/moto-api/ext/guardduty/findings", {
        "account_id": account, "region": REGION, "findings": found,
        "raw_text_b64": {k: base64.b64encode(v).decode() for k, v in raw.items()},
    })  # fmt: skip
    lake = tmp_path / "lake"

    for attempt in range(2):
        done = guardlake(*args(lake, [account], "--cloudtrail", "lookup", "--watchlist", "StopLogging"))
        assert done.returncode == 0, (attempt, done.stdout, done.stderr[-3000:])
    ids = {row[0] for row in query(lake, "findings", "select id from findings")}
    assert ids == {f["id"] for f in good}, "every good finding of the page, each once"
    assert query(lake, "findings", "select count(*) from findings") == [(len(good),)]
    counts = query(lake, "runs", "select status, findings_read, findings_written, findings_quarantined from runs where source = 'guardduty' order by run_id")
    assert counts[0] == ("ok", 8, 4, 4), counts
    assert counts[1][0] == "ok", "the target does not fail forever"

    first = quarantined(lake)
    assert len(first) == 4, first
    by_id = {q["finding_id"]: q["reason"] for q in first if q["finding_id"]}
    assert "evil.example.com" in by_id[evil_region["id"]] and "region" in by_id[evil_region["id"]]
    assert outsider in by_id[foreign["id"]]
    unparsed = [q for q in first if not q["finding_id"]]
    assert any("not UTF-8" in q["reason"] and q["raw"].startswith('{"') for q in unparsed), unparsed
    [nul] = [q for q in unparsed if "control character" in q["reason"]]
    assert nul["raw"] == raw[raw_nul["id"]].decode(), "the text is kept exactly as received"
    assert all(q["account_id"] == account and q["region"] == REGION for q in first)
    stats = control("GET", "/moto-api/ext/stats")["requests"]
    assert not [s for s in stats if s["region"] == "evil.example.com"], "no call went to a region named by a finding"


def test_huge_findings_are_quarantined_by_size_under_the_memory_limit(tmp_path):
    [account] = create_org(["huge"])
    found = findings_for(account, REGION, 60, datetime.now(timezone.utc) - timedelta(days=1))
    huge = found[:20]
    # 20 findings of 5 MB each: a page of them would be 100 MB; each alone is over the 1 MiB
    # finding limit.
    raw = {}
    for finding in huge:
        text = json.dumps(finding).encode()
        raw[finding["id"]] = text[:-1] + b', "padding": "' + b"x" * (5 << 20) + b'"}'
    control("POST", "/moto-api/ext/guardduty/findings", {
        "account_id": account, "region": REGION, "findings": found,
        "raw_text_b64": {k: base64.b64encode(v).decode() for k, v in raw.items()},
    })  # fmt: skip
    lake = tmp_path / "lake"
    code, peak, stderr = peak_rss_mib(*args(lake, [account]))
    assert code == 0, stderr[-3000:]
    assert peak <= RSS_LIMIT_MIB, f"peak RSS {peak:.0f} MiB"
    assert query(lake, "findings", "select count(*) from findings") == [(40,)]
    bad = quarantined(lake)
    assert sorted(q["finding_id"] for q in bad) == sorted(raw)
    assert all(q["raw"] == "" and q["raw_bytes"] > 5 << 20 for q in bad), "the size is kept, the text is not"
    assert all("MAX_FINDING_BYTES" in q["reason"] or "MAX_BODY_BYTES" in q["reason"] for q in bad)
    assert query(lake, "runs", "select findings_read, findings_written, findings_quarantined from runs where source = 'guardduty'") == [(60, 40, 20)]


def test_a_million_tiny_denied_records_stay_under_the_memory_limit(tmp_path):
    [account] = org_with_detectors(["tiny"], [REGION])
    trail, lake = tmp_path / "trail", tmp_path / "lake"
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    template = record("x", account, now - timedelta(hours=1), "GetObject", errorCode="AccessDenied")
    template.pop("requestParameters", None)
    template.pop("responseElements", None)
    total = 400_000
    path = trail / object_key(account, now - timedelta(hours=1), "big")
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt", compresslevel=1) as out:
        out.write('{"Records":[')
        for i in range(total):
            template["eventID"] = f"tiny-{i}"
            out.write(("," if i else "") + json.dumps(template))
        out.write("]}")
    code, peak, stderr = peak_rss_mib(*run_args(lake, [account], trail))
    assert code == 0, stderr[-3000:]
    assert peak <= RSS_LIMIT_MIB, f"peak RSS {peak:.0f} MiB"
    assert query(lake, "cloudtrail_events", "select count(*), count(distinct event_id) from cloudtrail_events") == [(total, total)]
    state = lake / "_state" / "orgtrail" / f"{account}.json"
    assert state.stat().st_size < 4096, "the cursor remembers objects, not every event"
    # Read once: a second run reads nothing again.
    assert guardlake(*run_args(lake, [account], trail)).returncode == 0
    assert query(lake, "cloudtrail_events", "select count(*) from cloudtrail_events") == [(total,)]


def test_a_300_mb_trail_record_is_quarantined_by_size_under_the_memory_limit(tmp_path):
    [account] = org_with_detectors(["bomb"], [REGION])
    trail, lake = tmp_path / "trail", tmp_path / "lake"
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    path = trail / object_key(account, now - timedelta(hours=1), "bomb")
    path.parent.mkdir(parents=True)
    kept = json.dumps(record("after-the-bomb", account, now - timedelta(hours=1), "StopLogging"))
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(b'{"Records":[{"eventID":"bomb","padding":"')
        chunk = b"x" * (1 << 20)
        for _ in range(300):
            out.write(chunk)
        out.write(b'"},' + kept.encode() + b"]}")
    assert path.stat().st_size < 2 << 20, "a small object"
    code, peak, output = peak_rss_mib(*run_args(lake, [account], trail))
    assert code == 0, output
    assert peak <= RSS_LIMIT_MIB, f"peak RSS {peak:.0f} MiB"
    assert events(lake) == {"after-the-bomb": 1}
    [bad] = quarantined(lake, "cloudtrail")
    size = re.search(r"is (\d+) bytes", bad["reason"])
    assert "MAX_RECORD_BYTES" in bad["reason"] and size and int(size.group(1)) > 300 << 20, bad["reason"]
    assert query(lake, "runs", "select findings_quarantined from runs where source = 'cloudtrail'") == [(1,)]


def test_keys_xml_cannot_carry_are_listed_encoded_and_passed_over(tmp_path):
    [account] = org_with_detectors(["nul"], [REGION])
    s3 = client("s3", REGION)
    bucket = "hostile-trail"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    good = object_key(account, now - timedelta(hours=1), "good")
    body = gzip.compress(json.dumps({"Records": [record("listed-ok", account, now - timedelta(hours=1), "StopLogging")]}).encode())
    s3.put_object(Bucket=bucket, Key=good, Body=body)
    s3.put_object(Bucket=bucket, Key=good.replace("_good.json.gz", "_bad\x00name.json.gz"), Body=body)
    s3.put_object(Bucket=bucket, Key=good.replace("_good.json.gz", "_spaced name+plus.json.gz"), Body=gzip.compress(json.dumps({"Records": [record("spaced", account, now - timedelta(hours=1), "StopLogging")]}).encode()))
    lake = tmp_path / "lake"
    done = guardlake("run", "--output", str(lake), "--regions", REGION, "--accounts", account, "--lookback-days", "3",
                     "--cloudtrail", "org-trail", "--trail-bucket", bucket, "--trail-org-id", ORG, "--watchlist", "StopLogging")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert events(lake) == {"listed-ok": 1, "spaced": 1}, "the day is read; the NUL key is passed over"


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--output", "s3://bucket/../x", "--output"),
        ("--output", "s3://bucket/a//b", "--output"),
        ("--trail-bucket", "../../x", "--trail-bucket"),
        ("--trail-prefix", "logs/../../x", "--trail-prefix"),
        ("--role-name", "../../admin", "--role-name"),
        ("--flush-bytes", "0", "--flush-bytes"),
        ("--trail-org-id", "o-../x", "--trail-org-id"),
    ],
)
def test_inputs_that_point_elsewhere_are_refused(tmp_path, flag, value, named):
    extra = ("--cloudtrail", "org-trail") + (() if flag == "--trail-bucket" else ("--trail-bucket", "trail-bucket"))
    base = ["run", "--accounts", "123456789012", "--regions", REGION, *extra]
    if flag != "--output":
        base += ["--output", str(tmp_path / "lake")]
    done = guardlake(*base, flag, value, check_codes=None)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert named in done.stderr and "\n" == done.stderr[-1], done.stderr
    assert not (tmp_path / "lake").exists()


def test_file_url_to_a_directory_that_is_not_a_lake_is_refused(tmp_path):
    done = guardlake("run", "--accounts", "123456789012", "--regions", REGION, "--output", "file:///etc", check_codes=None)
    assert done.returncode == 2, done.stderr
    assert "/etc" in done.stderr and "not a guardlake lake" in done.stderr


def test_connection_resets_are_named_and_error_messages_are_one_short_line(tmp_path):
    [account] = create_org(["reset"])
    seed_findings(account, REGION, findings_for(account, REGION, 3, datetime.now(timezone.utc) - timedelta(days=1)))
    lake = tmp_path / "lake"
    control("POST", "/moto-api/ext/faults", {"operation": "ListFindings", "error": "reset"})
    done = guardlake(*args(lake, [account], "--max-attempts", "1"))
    control("DELETE", "/moto-api/ext/faults")
    assert done.returncode == 3, done.stderr[-2000:]
    [(status, cls, message)] = query(lake, "runs", "select status, error_class, error_message from runs where source = 'guardduty'")
    assert (status, cls) == ("error", "ConnectionError"), (status, cls, message)
    assert message.startswith("guardduty:ListFindings: ") and len(message) > len("guardduty:ListFindings: ")
    assert "\n" not in message and len(message.encode()) <= 1024, message
    assert "ConnectorError {" not in message and "source:" not in message, "causes by Display, not a Debug dump"


def test_the_external_id_never_reaches_the_logs(tmp_path):
    [account] = create_org(["secret"])
    seed_findings(account, REGION, findings_for(account, REGION, 2, datetime.now(timezone.utc) - timedelta(days=1)))
    secret = "Sup3r-Secret/External+Id=42"
    env = {**os.environ, "GUARDLAKE_LOG": "trace"}
    done = subprocess.run([str(BINARY), *args(tmp_path / "lake", [account], "--external-id", secret)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "AssumeRole" in done.stderr, "trace logs show the STS call"
    encoded = "Sup3r-Secret%2FExternal%2BId%3D42"
    assert secret not in done.stderr and encoded not in done.stderr and secret not in done.stdout
    assert 'external_id: Some(\\"***\\")' in done.stderr, "the SDK's trace shows the input, the id hidden"


def test_the_external_id_is_read_from_a_secret_and_never_logged(tmp_path):
    [account] = create_org(["vault"])
    seed_findings(account, REGION, findings_for(account, REGION, 2, datetime.now(timezone.utc) - timedelta(days=1)))
    secret = "From-The-Vault/42+x"
    arn = client("secretsmanager").create_secret(Name="guardlake/external-id", SecretString=secret)["ARN"]
    env = {**os.environ, "GUARDLAKE_LOG": "trace", "GUARDLAKE_EXTERNAL_ID_SECRET": arn}
    done = subprocess.run([str(BINARY), *args(tmp_path / "lake", [account])], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "GetSecretValue" in done.stderr and "AssumeRole" in done.stderr
    assert secret not in done.stderr and "From-The-Vault%2F42%2Bx" not in done.stderr and secret not in done.stdout
    assert 'external_id: Some(\\"***\\")' in done.stderr, "the id from the secret was given to STS, and hidden"

    missing = subprocess.run([str(BINARY), *args(tmp_path / "lake", [account]), "--external-id-secret", arn + "-gone"],
                             capture_output=True, text=True, env={**os.environ}, timeout=300)  # fmt: skip
    assert missing.returncode == 4 and "secretsmanager:GetSecretValue" in missing.stderr, missing.stderr[-2000:]
    both = guardlake(*args(tmp_path / "lake", [account]), "--external-id", "abc", "--external-id-secret", arn, check_codes=None)
    assert both.returncode == 2 and "external-id" in both.stderr
