"""Seeds an organization into the running backend: accounts, detectors, findings, trouble.

Used by `make demo` (python tests/seed.py --demo) and by the end-to-end tests. The management
account is moto's default (123456789012, the caller of the fake credentials).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emulator import shapes  # noqa: E402

ENDPOINT = os.environ.get("GUARDLAKE_TEST_ENDPOINT", "http://127.0.0.1:4599")
MANAGEMENT = "123456789012"


def control(method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{ENDPOINT}{path}", data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        raw = response.read()
    return json.loads(raw) if raw.strip().startswith(b"{") else {}


def client(service: str, region: str = "us-east-1"):
    return boto3.client(service, region_name=region, endpoint_url=ENDPOINT,
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip


@dataclass
class Org:
    members: list[str] = field(default_factory=list)
    denied: str | None = None
    suspended: str | None = None
    disabled: tuple[str, str] | None = None
    findings: dict[tuple[str, str], list[dict]] = field(default_factory=dict)
    admin: str | None = None


def create_org(names: list[str]) -> list[str]:
    org = client("organizations")
    org.create_organization(FeatureSet="ALL")
    return [org.create_account(AccountName=n, Email=f"{n}@example.com")["CreateAccountStatus"]["AccountId"] for n in names]


def findings_for(account: str, region: str, total: int, base: datetime, offset: int = 0) -> list[dict]:
    types = list(shapes.TYPE_SHAPES)
    out = []
    for n in range(offset, offset + total):
        created = base + timedelta(minutes=7 * n)
        out.append(shapes.build_finding(types[n % len(types)], account, region, "0" * 32, n,
                                        created_at=created, updated_at=created + timedelta(minutes=n % 50),
                                        count=1 + n % 9))  # fmt: skip
    return out


def seed_findings(account: str, region: str, findings: list[dict]) -> None:
    control("POST", "/moto-api/ext/guardduty/findings", {"account_id": account, "region": region, "findings": findings})


def seed_org(members: int = 5, regions: tuple[str, ...] = ("us-east-1", "eu-west-1", "ap-southeast-2"),
             per_target: int = 12, with_trouble: bool = True, admin: bool = True) -> Org:  # fmt: skip
    """An organization with `members` member accounts with findings in every region, plus (with
    trouble) one denied account, one disabled region in one account and one suspended account."""
    names = ["security"] + [f"workload-{i}" for i in range(members)]
    if with_trouble:
        names += ["denied", "suspended"]
    ids = create_org(names)
    result = Org(admin=ids[0] if admin else None)
    result.members = ids[: 1 + members]
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=3)
    for i, account in enumerate(result.members[1:]):
        for j, region in enumerate(regions):
            found = findings_for(account, region, per_target, base, offset=(i * len(regions) + j) * per_target)
            seed_findings(account, region, found)
            result.findings[(account, region)] = found
    if with_trouble:
        denied, suspended = ids[1 + members], ids[2 + members]
        result.members.append(denied)
        control("POST", "/moto-api/ext/deny-assume", {"account_id": denied})
        seed_findings(denied, regions[0], findings_for(denied, regions[0], 3, base, offset=9000))
        result.denied = denied
        client("organizations").close_account(AccountId=suspended)
        result.suspended = suspended
        disabled_account = result.members[2]
        control("POST", "/moto-api/ext/regions", {"account_id": disabled_account, "region": regions[-1], "status": "DISABLED"})
        result.disabled = (disabled_account, regions[-1])
    if admin:
        for region in regions:
            client("guardduty", region).enable_organization_admin_account(AdminAccountId=result.admin)
            # The administrator's own detector, through which it reads its members.
            control("POST", "/moto-api/ext/guardduty/findings", {"account_id": result.admin, "region": region, "findings": []})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--demo", action="store_true", help="seed the demo organization and print it")
    parser.parse_args()
    control("POST", "/moto-api/reset")
    org = seed_org(members=6, per_target=15)
    total = sum(len(v) for v in org.findings.values())
    print(f"Seeded organization {MANAGEMENT} (management) with {len(org.members)} accounts:")
    for account in org.members:
        notes = []
        if account == org.admin:
            notes.append("GuardDuty delegated administrator")
        if account == org.denied:
            notes.append("role denied")
        if org.disabled and account == org.disabled[0]:
            notes.append(f"region {org.disabled[1]} disabled")
        print(f"  {account}  {', '.join(notes)}")
    print(f"  {org.suspended}  SUSPENDED (closed)")
    print(f"{total} findings of {len(shapes.TYPE_SHAPES)} types across {len(org.findings)} account-regions")


if __name__ == "__main__":
    main()
