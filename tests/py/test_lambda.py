"""The binary as a Lambda function, against a local Lambda Runtime API: an invocation runs the
job (payload overrides applied), returns the summary and prints a CloudWatch EMF line; a bad
payload is reported as the invocation's error."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import ENDPOINT
from seed import create_org, findings_for, seed_findings
from test_collect import BINARY, query


class Runtime:
    """A minimal Lambda Runtime API: hands out the queued events, records the answers."""

    def __init__(self, events: list[dict], script=None):
        self.events = list(events)
        # Called with the answers so far when the queue is empty: the next events (a state machine).
        self.script = script
        self.answers: dict[str, tuple[str, dict]] = {}
        self.done = threading.Event()
        runtime = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path != "/2018-06-01/runtime/invocation/next":
                    self.send_error(404)
                    return
                if not runtime.events and runtime.script:
                    runtime.events.extend(runtime.script(runtime.answers))
                if not runtime.events:
                    runtime.done.set()
                    time.sleep(30)  # no more work: the test stops the process
                    return
                request_id, event = runtime.events.pop(0)
                body = json.dumps(event).encode()
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 900_000))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:123456789012:function:guardlake")
                self.send_header("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                parts = self.path.strip("/").split("/")
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                runtime.answers[parts[3]] = (parts[4], body)
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"


def lambda_env(runtime_api: str, **config: str) -> dict:
    """The environment Lambda gives the function: the runtime API, the function's names, and its
    configuration (`GUARDLAKE_*`), with the backend as every AWS endpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDLAKE_") and not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=ENDPOINT, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
        AWS_LAMBDA_RUNTIME_API=runtime_api, AWS_LAMBDA_FUNCTION_NAME="guardlake", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1024",
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST", AWS_LAMBDA_LOG_STREAM_NAME="s", AWS_LAMBDA_LOG_GROUP_NAME="/guardlake/job", **config,
    )  # fmt: skip
    return env


def serve(runtime: Runtime, seconds: int, **config: str) -> tuple[str, str]:
    """Runs the binary as Lambda starts it (no arguments, the runtime API and the function's
    environment) until it has asked for an event after the last one; its stdout and stderr."""
    env = lambda_env(runtime.address, **config)
    # Files, not pipes: nobody reads a pipe while the function runs, and one it filled (64 KiB)
    # would block the function mid-invocation.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen([str(BINARY)], env=env, stdout=out, stderr=err, text=True)
        try:
            assert runtime.done.wait(seconds), "the function asked for its next event after the last one"
        finally:
            process.kill()
            process.wait(timeout=30)
        out.seek(0)
        err.seek(0)
        return out.read(), err.read()


def test_binary_serves_lambda_invocations(tmp_path):
    [account] = create_org(["lambda"])
    seed_findings(account, "eu-west-1", findings_for(account, "eu-west-1", 5, datetime.now(timezone.utc) - timedelta(hours=2)))
    runtime = Runtime([("req-1", {"regions": ["eu-west-1"]}), ("req-2", {"region": "typo"}),
                       ("req-3", {"accounts": ["999999999999"]}), ("req-4", {"regions": ["ap-south-1"]})])  # fmt: skip
    lake = tmp_path / "lake"
    stdout, stderr = serve(runtime, 120, GUARDLAKE_OUTPUT=str(lake), GUARDLAKE_ACCOUNTS=account, GUARDLAKE_REGIONS="us-east-1,eu-west-1")
    kind, summary = runtime.answers["req-1"]
    assert kind == "response", (summary, stderr[-2000:])
    assert summary["findings_written"] == 5 and summary["targets"] == 1 and summary["targets_ok"] == 1, summary
    assert query(lake, "runs", "select distinct region from runs") == [("eu-west-1",)], "the payload's regions won"
    emf = [json.loads(line) for line in stdout.splitlines() if line.startswith("{") and '"_aws"' in line]
    assert len(emf) == len(stdout.splitlines()), "stdout holds only EMF lines"
    assert emf and emf[0]["FindingsWritten"] == 5, stdout[-2000:]
    assert emf[0]["FindingsWritten"] == 5 and emf[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "guardlake"
    kind, error = runtime.answers["req-2"]
    assert kind == "error" and "region" in error["errorMessage"], error
    assert error["errorType"] == "InvalidPayload", "a stable name, not a Rust type name"
    # A payload may narrow the configured accounts and regions, never add one.
    for request, named in (("req-3", "999999999999"), ("req-4", "ap-south-1")):
        kind, error = runtime.answers[request]
        assert kind == "error" and error["errorType"] == "InvalidPayload", error
        assert named in error["errorMessage"] and "narrow" in error["errorMessage"], error
    assert query(lake, "runs", "select count(distinct account_id) from runs") == [(1,)], "nothing ran for them"
    assert all(line.startswith("{") for line in stderr.splitlines() if line.strip()), "logs are JSON lines"


def test_the_function_runs_the_steps_of_a_distributed_run(tmp_path):
    """What the Step Functions state machine sends: plan, one shard per shard file (the
    Distributed Map item's S3 key), commit."""
    accounts = create_org(["one", "two"])
    for account in accounts:
        seed_findings(account, "eu-west-1", findings_for(account, "eu-west-1", 3, datetime.now(timezone.utc) - timedelta(hours=2)))

    def state_machine(answers: dict) -> list:
        plan = answers.get("plan", (None, None))[1]
        if plan is None or "commit" in answers:
            return []
        if not any(name.startswith("shard-") for name in answers):
            return [(f"shard-{n}", {"step": "shard", "run_id": plan["run_id"], "key": f"{plan['prefix']}{n:05}.json"}) for n in range(plan["shards"])]
        return [("commit", {"step": "commit", "run_id": plan["run_id"]})]

    runtime = Runtime([("plan", {"step": "plan"}), ("bad", {"step": "shard", "run_id": "../x", "shard": 0})], script=state_machine)
    lake = tmp_path / "lake"
    stdout, stderr = serve(runtime, 180, GUARDLAKE_OUTPUT=str(lake), GUARDLAKE_ACCOUNTS=",".join(accounts), GUARDLAKE_REGIONS="eu-west-1")
    kind, plan = runtime.answers["plan"]
    assert kind == "response" and plan["shards"] == 2, (plan, stderr[-2000:])
    kind, error = runtime.answers["bad"]
    assert kind == "error" and error["errorType"] == "InvalidPayload", error
    for n in range(2):
        kind, shard = runtime.answers[f"shard-{n}"]
        assert kind == "response" and shard["shard"] == n and shard["files"] >= 1, shard
    kind, summary = runtime.answers["commit"]
    assert kind == "response" and summary["findings_written"] == 6 and summary["targets_ok"] == 2, summary
    assert query(lake, "findings", "select count(*), count(distinct id) from findings") == [(6, 6)]

