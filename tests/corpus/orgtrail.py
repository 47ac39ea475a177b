"""Deterministic organization-trail corpus: realistic CloudTrail records delivered as
`AWSLogs/<org>/<account>/CloudTrail/<region>/YYYY/MM/DD/*.json.gz` objects of `{"Records":[...]}`.

Identity types IAMUser, AssumedRole, Root, AWSService and FederatedUser; about 5% denied calls
(AccessDenied, UnauthorizedOperation); some large requestParameters (policy documents); unicode
user agents; a few watch-list events; late deliveries (path date the day after the event); about
0.5% of records delivered twice. Used by the tests at small size and by `make bench` at full size.

    python tests/corpus/orgtrail.py --records 200000 --seed 7 --out /tmp/corpus
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator

ORG_ID = "o-guardlake01"
EVENTS = [
    ("ec2.amazonaws.com", "DescribeInstances", True), ("ec2.amazonaws.com", "RunInstances", False),
    ("s3.amazonaws.com", "ListBuckets", True), ("s3.amazonaws.com", "GetBucketPolicy", True),
    ("iam.amazonaws.com", "ListUsers", True), ("iam.amazonaws.com", "GetRole", True),
    ("sts.amazonaws.com", "AssumeRole", True), ("kms.amazonaws.com", "Decrypt", True),
    ("lambda.amazonaws.com", "ListFunctions20150331", True), ("rds.amazonaws.com", "DescribeDBInstances", True),
    ("cloudtrail.amazonaws.com", "LookupEvents", True), ("guardduty.amazonaws.com", "ListFindings", True),
]  # fmt: skip
WATCHED = [
    ("cloudtrail.amazonaws.com", "StopLogging"), ("iam.amazonaws.com", "CreateAccessKey"), ("iam.amazonaws.com", "PutUserPolicy"),
    ("s3.amazonaws.com", "PutBucketPolicy"), ("signin.amazonaws.com", "ConsoleLogin"), ("ec2.amazonaws.com", "AuthorizeSecurityGroupIngress"),
]  # fmt: skip
AGENTS = ["aws-cli/2.15.0 Python/3.11.6 Linux/6.1 exe/x86_64", "Boto3/1.34.0 Python/3.12.1 Darwin/23.1.0", "aws-sdk-go-v2/1.24.0 os/linux lang/go#1.21",
          "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/121.0", "terraform/1.6.6 (+https://www.terraform.io) ñandú/日本語 ✓", "console.amazonaws.com"]  # fmt: skip


def _identity(rng: random.Random, account: str, key: str | None = None) -> dict:
    kind = rng.choices(["IAMUser", "AssumedRole", "Root", "AWSService", "FederatedUser"], [35, 50, 2, 10, 3])[0]
    if key:
        kind = "IAMUser"
    if kind == "IAMUser":
        user = f"user-{rng.randrange(40)}"
        return {"type": kind, "principalId": f"AIDA{rng.randrange(10**16):016d}", "arn": f"arn:aws:iam::{account}:user/{user}",
                "accountId": account, "accessKeyId": key or f"AKIA{rng.randrange(10**16):016d}", "userName": user}  # fmt: skip
    if kind == "AssumedRole":
        role, session = f"role-{rng.randrange(12)}", f"session-{rng.randrange(500)}"
        return {"type": kind, "principalId": f"AROA{rng.randrange(10**16):016d}:{session}", "arn": f"arn:aws:sts::{account}:assumed-role/{role}/{session}",
                "accountId": account, "accessKeyId": f"ASIA{rng.randrange(10**16):016d}",
                "sessionContext": {"sessionIssuer": {"type": "Role", "principalId": f"AROA{rng.randrange(10**16):016d}", "arn": f"arn:aws:iam::{account}:role/{role}",
                                                     "accountId": account, "userName": role},
                                   "attributes": {"creationDate": "2026-11-20T09:00:00Z", "mfaAuthenticated": rng.choice(["true", "false"])}}}  # fmt: skip
    if kind == "Root":
        return {"type": kind, "principalId": account, "arn": f"arn:aws:iam::{account}:root", "accountId": account}
    if kind == "AWSService":
        return {"type": kind, "invokedBy": rng.choice(["lambda.amazonaws.com", "ec2.amazonaws.com", "config.amazonaws.com"])}
    return {"type": kind, "principalId": f"{account}:fed-{rng.randrange(30)}", "arn": f"arn:aws:sts::{account}:federated-user/fed-{rng.randrange(30)}",
            "accountId": account, "accessKeyId": f"ASIA{rng.randrange(10**16):016d}"}  # fmt: skip


def records(count: int, seed: int, accounts: list[str], regions: list[str], start: datetime, end: datetime,
            compromised: tuple[str, str, str, datetime, datetime, int] | None = None) -> Iterator[dict]:  # fmt: skip
    """`count` records spread over accounts, regions and [start, end); with `compromised` =
    (account, region, access key, first, last, n), n more records by that key in that window."""
    rng = random.Random(seed)
    span = (end - start).total_seconds()

    def one(account: str, region: str, when: datetime, key: str | None = None) -> dict:
        roll = rng.random()
        if roll < 0.02:
            source, name = rng.choice(WATCHED)
            read_only = False
        else:
            source, name, read_only = rng.choice(EVENTS)
        record = {
            "eventVersion": "1.09", "userIdentity": _identity(rng, account, key), "eventTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "eventSource": source, "eventName": name, "awsRegion": "us-east-1" if source in ("iam.amazonaws.com", "signin.amazonaws.com") else region,
            "sourceIPAddress": f"203.0.113.{rng.randrange(1, 255)}", "userAgent": rng.choice(AGENTS),
            "requestParameters": {"maxResults": rng.randrange(1, 100)} if rng.random() < 0.7 else None,
            "responseElements": None, "requestID": str(uuid.UUID(int=rng.getrandbits(128))), "eventID": str(uuid.UUID(int=rng.getrandbits(128))),
            "readOnly": read_only, "eventType": "AwsApiCall", "managementEvent": True, "recipientAccountId": account, "eventCategory": "Management",
            "tlsDetails": {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256", "clientProvidedHostHeader": f"{source.split('.')[0]}.{region}.amazonaws.com"},
        }  # fmt: skip
        if rng.random() < 0.05:
            record["errorCode"] = rng.choice(["AccessDenied", "Client.UnauthorizedOperation", "ThrottlingException"])
            record["errorMessage"] = "User is not authorized to perform this operation"
        if rng.random() < 0.01:
            statements = [{"Effect": "Allow", "Action": [f"s3:Get{'x' * rng.randrange(5, 40)}"], "Resource": f"arn:aws:s3:::bucket-{i}/*"} for i in range(40)]
            record["requestParameters"] = {"policyDocument": json.dumps({"Version": "2012-10-17", "Statement": statements})}
        if rng.random() < 0.01:
            record["resources"] = [{"ARN": f"arn:aws:s3:::bucket-{rng.randrange(9)}", "accountId": account, "type": "AWS::S3::Bucket"}]
        return record

    for _ in range(count):
        when = start + timedelta(seconds=rng.random() * span)
        yield one(rng.choice(accounts), rng.choice(regions), when)
    if compromised:
        account, region, key, first, last, n = compromised
        for _ in range(n):
            when = first + (last - first) * rng.random()
            record = one(account, region, when, key)
            record["awsRegion"] = region if record["eventSource"] not in ("iam.amazonaws.com", "signin.amazonaws.com") else "us-east-1"
            yield record


def write_objects(stream: Iterator[dict], put: Callable[[str, bytes], None], seed: int = 7, per_object: int = 400, org_id: str = ORG_ID) -> int:
    """Groups records into delivery objects and hands each (key, gzip bytes) to `put`."""
    rng = random.Random(seed + 1)
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for record in stream:
        when = datetime.strptime(record["eventTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        delivered = when + timedelta(minutes=rng.randrange(5, 15))  # late near midnight: next day's path
        key = (record["recipientAccountId"], record["awsRegion"], delivered.strftime("%Y/%m/%d"))
        copies = 2 if rng.random() < 0.005 else 1
        for _ in range(copies):
            groups.setdefault(key, []).append(record)
    objects = 0
    for (account, region, day), items in sorted(groups.items()):
        for i in range(0, len(items), per_object):
            name = f"{account}_CloudTrail_{region}_{day.replace('/', '')}T{i:06d}Z_{rng.getrandbits(64):016x}.json.gz"
            body = gzip.compress(json.dumps({"Records": items[i : i + per_object]}, ensure_ascii=False).encode(), compresslevel=6)
            put(f"AWSLogs/{org_id}/{account}/CloudTrail/{region}/{day}/{name}", body)
            objects += 1
    return objects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--copies", type=int, default=1, help="write each object N times with distinct event ids (a corpus N times larger, quickly)")
    args = parser.parse_args()
    accounts = [f"{100000000000 + i * 7919:012d}" for i in range(args.accounts)]
    end = datetime(2026, 11, 20, tzinfo=timezone.utc)
    start = end - timedelta(days=args.days)

    def put(key: str, body: bytes) -> None:
        path = args.out / key
        path.parent.mkdir(parents=True, exist_ok=True)
        if args.copies == 1:
            path.write_bytes(body)
            return
        text = gzip.decompress(body).decode()
        for copy in range(args.copies):
            variant = text.replace('"eventID": "', f'"eventID": "c{copy}-')
            path.with_name(path.name.replace(".json.gz", f"-c{copy}.json.gz")).write_bytes(gzip.compress(variant.encode(), compresslevel=6))

    objects = write_objects(records(args.records, args.seed, accounts, ["us-east-1", "eu-west-1", "ap-southeast-2"], start, end), put, args.seed)
    print(f"wrote {objects * args.copies} objects, {args.records * args.copies} records, under {args.out}")


if __name__ == "__main__":
    main()
