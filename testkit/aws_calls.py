"""The AWS calls a process really makes, recorded by botocore's event hooks; no product code knows.

Every botocore session made after `install` (boto3's and aiobotocore's alike) carries two
handlers: `before-parameter-build` sees each API call and each presigned URL with its parameters,
and `before-sign` sees a presigned POST's key. A call is recorded once however often it is retried.

In this process: `with recording() as calls: calls.acting_as("evaluate"); ...`. In the processes
the local stack starts: `site_environment(folder)` puts `testkit/aws_calls_site` (a
sitecustomize) on their PYTHONPATH, and each process appends its calls to a file of its own in
`folder`, named by what it runs; `read_calls(folder)` reads them back.
"""

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore import handlers

FOLDER_ENV = "TESTKIT_AWS_CALLS"
SITE_DIR = Path(__file__).resolve().parent / "aws_calls_site"

# The parameters that say what a call touches: the rest (bodies, metadata) is not kept.
KEPT = (
    "Bucket",
    "Key",
    "VersionId",
    "Prefix",
    "Delimiter",
    "MaxKeys",
    "CopySource",
    "QueueUrl",
    "QueueName",
    "Namespace",
    "Name",
    "Names",
    "SecretId",
    "AutoScalingGroupName",
    "AutoScalingGroupNames",
    "LogGroupName",
    "LogStreamName",
    "repositoryName",
)
_POST_BUCKET = "testkit-presign-post-bucket"


@dataclass(frozen=True)
class AwsCall:
    process: str  # gateway, listener, exporter, or a worker's queue
    service: str  # botocore's name: s3, sqs, cloudwatch, autoscaling, ...
    operation: str  # the API's: GetObject, DeleteMessageBatch, ...
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    presigned: bool = False

    def describe(self) -> str:
        shown = ", ".join(f"{name}={value}" for name, value in sorted(self.params.items()))
        kind = " (presigned)" if self.presigned else ""
        return f"{self.service}:{self.operation}{kind} [{shown}] by {self.process}"

    def to_json(self) -> str:
        return json.dumps(
            {
                "process": self.process,
                "service": self.service,
                "operation": self.operation,
                "params": self.params,
                "presigned": self.presigned,
            }
        )

    @classmethod
    def from_json(cls, line: str) -> "AwsCall":
        data = json.loads(line)
        return cls(
            data["process"], data["service"], data["operation"], data["params"], data["presigned"]
        )


def kept_params(params: dict[str, Any]) -> dict[str, Any]:
    kept = {name: params[name] for name in KEPT if name in params}
    delete = params.get("Delete")
    if isinstance(delete, dict):
        kept["Objects"] = [
            {name: item[name] for name in ("Key", "VersionId") if name in item}
            for item in delete.get("Objects", [])
        ]
    return json.loads(json.dumps(kept, default=str))  # type: ignore[no-any-return]


Sink = Callable[[str, str, dict[str, Any], bool], None]
_sinks: list[Sink] = []


def _before_parameter_build(params: dict[str, Any], model: Any, context: Any, **_: Any) -> None:
    presigned = bool(context.get("is_presign_request")) if isinstance(context, dict) else False
    if presigned and model.name == "CreateBucket":
        # A presigned POST builds its URL as CreateBucket's; before-sign names its key.
        context[_POST_BUCKET] = params.get("Bucket")
        return
    for sink in _sinks:
        sink(model.service_model.service_name, model.name, kept_params(params), presigned)


def _before_sign(request: Any, **_: Any) -> None:
    fields = request.context.get("s3-presign-post-fields")
    if fields is None:
        return
    params = {"Bucket": request.context.get(_POST_BUCKET), "Key": fields.get("key")}
    for sink in _sinks:
        sink("s3", "PutObject", params, True)


_HANDLERS = (
    ("before-parameter-build", _before_parameter_build),
    ("before-sign.s3.PutObject", _before_sign),
)


def _hook_sessions() -> None:
    """Sessions made from now on carry the handlers (botocore registers BUILTIN_HANDLERS on each
    new one, aiobotocore's too); so does boto3's default session if it exists already."""
    for spec in _HANDLERS:
        if spec not in handlers.BUILTIN_HANDLERS:
            handlers.BUILTIN_HANDLERS.append(spec)
    if boto3.DEFAULT_SESSION is not None:
        events = boto3.DEFAULT_SESSION.events
        for event, handler in _HANDLERS:
            events.register(event, handler, unique_id=f"testkit-aws-calls-{event}")


class Calls(list[AwsCall]):
    """The calls recorded in this process, each under the process named by `acting_as`."""

    def __init__(self) -> None:
        super().__init__()
        self.process = "test"

    def acting_as(self, process: str) -> None:
        self.process = process

    def sink(self, service: str, operation: str, params: dict[str, Any], presigned: bool) -> None:
        self.append(AwsCall(self.process, service, operation, params, presigned))


@contextmanager
def recording() -> Iterator[Calls]:
    """Records this process's calls, from clients made from now on (and boto3.client's)."""
    calls = Calls()
    _hook_sessions()
    _sinks.append(calls.sink)
    try:
        yield calls
    finally:
        _sinks.remove(calls.sink)


def process_name() -> str:
    """What this process runs, as the fleet names it: a worker's queue, or the module it runs."""
    queue = os.environ.get("AGNEWS_WORKER_QUEUE")
    if queue:
        return queue
    argv: list[str] = list(getattr(sys, "orig_argv", sys.argv))
    if "-m" in argv[:-1]:
        module = argv[argv.index("-m") + 1]
        return {
            "gateway": "gateway",
            "workers.listener": "listener",
            "deploy.backlog_exporter": "exporter",
        }.get(module, module)
    return Path(argv[1] if len(argv) > 1 else argv[0]).name


def record_to_folder(folder: Path) -> None:
    """This process appends each call, a JSON line, to `folder`/NAME-PID.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)

    def sink(service: str, operation: str, params: dict[str, Any], presigned: bool) -> None:
        name = process_name()
        line = AwsCall(name, service, operation, params, presigned).to_json() + "\n"
        path = folder / f"{name}-{os.getpid()}.jsonl"
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, line.encode())
        finally:
            os.close(descriptor)

    _hook_sessions()
    _sinks.append(sink)


def site_environment(folder: Path) -> dict[str, str]:
    """The environment under which a Python process records its calls into `folder`."""
    paths = [str(SITE_DIR), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(path for path in paths if path), FOLDER_ENV: str(folder)}


def read_calls(folder: Path) -> list[AwsCall]:
    return [
        AwsCall.from_json(line)
        for path in sorted(folder.glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line
    ]
