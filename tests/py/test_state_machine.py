"""The deployed state machine, executed by the backend's Step Functions interpreter (moto's
`stepfunctions/parser`): its Lambda tasks invoke the guardlake binary itself, running as a Lambda
function against a local Runtime API (moto runs no function without Docker; the backend's
stand-in hands each invocation to it). Plan → Distributed Map over the shard files in S3 →
PlanTrail → Distributed Map over the CloudTrail batches → Commit, as AWS would run them."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from conftest import ENDPOINT, client, control
from seed import seed_org
from test_collect import BINARY, REGIONS
from test_distributed import ORG_ID, TABLES, seed_trail, table
from test_infra import state_machine_definition
from test_lambda import lambda_env

FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:guardlake"


class Function:
    """The Lambda service for one function: invocations (from the backend's stand-in) wait in a
    queue for the binary's Runtime API polls, and each returns the binary's answer."""

    def __init__(self) -> None:
        self.pending: queue.Queue = queue.Queue()
        self.answers: dict[str, tuple[str, bytes]] = {}
        self.finished: dict[str, threading.Event] = {}
        self.calls: list[dict] = []
        function = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # the binary asks for its next invocation
                try:
                    request_id, payload = function.pending.get(timeout=600)
                except queue.Empty:
                    self._reply(500, b"")
                    return
                self._reply(200, payload, {
                    "Lambda-Runtime-Aws-Request-Id": request_id,
                    "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + 900_000),
                    "Lambda-Runtime-Invoked-Function-Arn": FUNCTION_ARN,
                    "Lambda-Runtime-Trace-Id": "Root=1-00000000-000000000000000000000000",
                })  # fmt: skip

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.path == "/invoke":  # the backend's stand-in: one invocation
                    request_id = str(uuid.uuid4())
                    function.finished[request_id] = threading.Event()
                    function.calls.append(json.loads(body))
                    function.pending.put((request_id, body))
                    function.finished[request_id].wait(900)
                    kind, answer = function.answers[request_id]
                    self._reply(200 if kind == "response" else 500, answer)
                    return
                # The Runtime API: /2018-06-01/runtime/invocation/<id>/response|error
                parts = self.path.strip("/").split("/")
                function.answers[parts[3]] = (parts[4], body)
                function.finished[parts[3]].set()
                self._reply(202, b"")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"


def start_instances(function: Function, count: int, logs: Path, **config: str) -> list[subprocess.Popen]:
    """`count` warm instances of the binary, as Lambda starts them. Each one's log goes to a file
    in `logs` (Lambda's log stream), never to a pipe: an instance logs about 50 KiB in this test,
    and one that filled a 64 KiB pipe nobody reads would block mid-invocation and hang the run."""
    env = lambda_env(function.address, **config)
    logs.mkdir(parents=True, exist_ok=True)
    instances = []
    for n in range(count):
        with open(logs / f"instance-{n}.log", "w") as log:
            instances.append(subprocess.Popen([str(BINARY)], env=env, stdout=subprocess.DEVNULL, stderr=log))
    return instances


def execute(definition: dict, timeout: float = 300) -> dict:
    """Creates the state machine, starts it as the schedule does, waits for its end. One still
    running after `timeout` seconds (a run takes seconds) is returned as it stands, status
    RUNNING and its last history events added, for the caller to report beside the logs."""
    sfn = client("stepfunctions")
    machine = sfn.create_state_machine(name=f"guardlake-run-{uuid.uuid4().hex[:8]}", definition=json.dumps(definition),
                                       roleArn="arn:aws:iam::123456789012:role/guardlake-states")["stateMachineArn"]  # fmt: skip
    execution = sfn.start_execution(stateMachineArn=machine, input="{}")["executionArn"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        described = sfn.describe_execution(executionArn=execution)
        if described["status"] != "RUNNING":
            return described
        time.sleep(0.5)
    described = sfn.describe_execution(executionArn=execution)
    described["lastEvents"] = [e["type"] for e in sfn.get_execution_history(executionArn=execution)["events"][-10:]]
    return described


def without_tolerance(definition: dict) -> dict:
    """The definition without the Maps' ToleratedFailurePercentage, which moto 5.2.5's parser does
    not know (it rejects the definition); everything else is run as deployed."""
    states = definition["States"]
    for name in ("Shards", "TrailBatches"):
        assert states[name].pop("ToleratedFailurePercentage") == 100
    return definition


def test_the_deployed_state_machine_runs_plan_shards_trail_batches_and_commit(tmp_path):
    org = seed_org(members=2, regions=REGIONS[:2], per_target=6, with_trouble=False)
    trail = tmp_path / "trail"
    seed_trail(trail, org, days=3)
    client("s3").create_bucket(Bucket="guardlake-lake")
    function = Function()
    control("POST", "/moto-api/ext/lambda/stand-in", {"function_name": "guardlake", "url": f"http://{function.address}/invoke"})
    control("POST", "/moto-api/config", {"stepfunctions": {"execute_state_machine": True}})
    config = dict(GUARDLAKE_OUTPUT="s3://guardlake-lake/guardlake", GUARDLAKE_REGIONS=",".join(REGIONS[:2]),
                  GUARDLAKE_LOOKBACK_DAYS="5", GUARDLAKE_CLOUDTRAIL="org-trail", GUARDLAKE_TRAIL_DIR=str(trail),
                  GUARDLAKE_TRAIL_ORG_ID=ORG_ID, GUARDLAKE_WATCHLIST="StopLogging", GUARDLAKE_TRAIL_SHARD_OBJECTS="288")  # fmt: skip
    logs = tmp_path / "logs"
    instances = start_instances(function, 2, logs, **config)
    try:
        ended = execute(without_tolerance(state_machine_definition()))
    finally:
        control("POST", "/moto-api/config", {"stepfunctions": {"execute_state_machine": False}})
        for instance in instances:
            instance.kill()
        for instance in instances:
            instance.wait(timeout=30)
    exits = [instance.returncode for instance in instances]  # -9 where killed above, as expected
    tails = [log.read_text(errors="replace")[-2000:] for log in sorted(logs.glob("*.log"))]
    unanswered = len(function.calls) - len(function.answers)
    assert ended["status"] == "SUCCEEDED", (ended, f"{unanswered} invocation(s) unanswered", exits, tails)

    steps = [call.get("step") for call in function.calls]
    shards = [call for call in function.calls if call.get("step") == "shard"]
    assert steps[0] == "plan" and steps[-1] == "commit" and steps.count("plan-trail") == 1, steps
    assert all(call["key"].startswith("guardlake/_state/plans/") for call in shards), "Map items are the listed shard files"
    findings_shards = [c for c in shards if "/shards/" in c["key"]]
    batches = [c for c in shards if "/trail/" in c["key"]]
    # One findings shard per account of the organization (its management account included), and
    # a 5-day backlog split into day batches.
    assert len(findings_shards) == len(org.members) + 1 and len(batches) > 2 * 5, (len(findings_shards), len(batches))
    assert len({c["key"] for c in shards}) == len(shards), "every shard file once"
    assert steps.index("plan-trail") > max(i for i, s in enumerate(function.calls) if "/shards/" in s.get("key", "")), "CloudTrail after every findings shard"
    summary = json.loads(ended["output"])["summary"]
    seeded = sum(len(f) for f in org.findings.values())
    assert summary["published"] and summary["findings_written"] == seeded, summary

    # The lake equals one single-process run's.
    lake = tmp_path / "lake"
    s3 = client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="guardlake-lake", Prefix="guardlake/"):
        for item in page.get("Contents", []):
            path = lake / item["Key"].removeprefix("guardlake/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(s3.get_object(Bucket="guardlake-lake", Key=item["Key"])["Body"].read())
    single = tmp_path / "single"
    options = [f"--{k.removeprefix('GUARDLAKE_').lower().replace('_', '-')}={v}" for k, v in config.items() if k != "GUARDLAKE_OUTPUT"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDLAKE_") and not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=ENDPOINT, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1")
    # A second collection of the same organization: its checkpoints are fresh, the trail unchanged.
    subprocess.run([str(BINARY), "run", "--output", str(single), *options], env=env, check=False, capture_output=True, timeout=300)
    for name, columns in TABLES.items():
        assert table(lake, name, columns) == table(single, name, columns), name
    assert sum(table(lake, "cloudtrail_events", "event_id").values()) == summary["events_written"] > 0
    assert not [k for k in (lake / "_staging").rglob("*") if k.is_file()], "no attempt left behind"
