"""Shared fixtures: the running backend (`make test` starts it) and boto3 clients for it."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ENDPOINT = os.environ.get("GUARDLAKE_TEST_ENDPOINT", "http://127.0.0.1:4599")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "guardduty" / "examples"


def control(method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{ENDPOINT}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request) as response:
        raw = response.read()
    return json.loads(raw) if raw.strip().startswith(b"{") else {}


@pytest.fixture(autouse=True)
def reset_backend():
    control("POST", "/moto-api/reset")
    yield


def client(service: str, region: str = "us-east-1", credentials: dict | None = None, retries: int = 1):
    creds = credentials or {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=ENDPOINT,
        config=Config(retries={"total_max_attempts": retries, "mode": "standard"}),
        **creds,
    )


def assume(account_id: str, role: str = "GuardlakeReadOnly", region: str = "us-east-1") -> dict:
    creds = client("sts", region).assume_role(
        RoleArn=f"arn:aws:iam::{account_id}:role/{role}", RoleSessionName="pytest"
    )["Credentials"]
    return {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }


def guardduty_fixtures() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.json"))}


def cloudtrail_fixtures() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((FIXTURES / "cloudtrail").glob("*.json"))}
