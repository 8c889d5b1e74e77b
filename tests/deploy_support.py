"""What the deployment tests share: the files, the validators' paths and a ministack server."""

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

from testkit.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "deploy" / "cloudformation"
DOCKERFILES = sorted((ROOT / "deploy" / "docker").glob("*.Dockerfile"))
COMPOSE = ROOT / "docker-compose.yml"
CIRCLECI = ROOT / ".circleci" / "config.yml"
# ministack pins a botocore other than the project's: scripts/bootstrap.sh gives it a venv of its
# own, from deploy/requirements-ministack.txt.
MINISTACK_PYTHON = ROOT / ".venv" / "ministack" / "bin" / "python"
REGION = "us-east-1"


def tool(name: str) -> str:
    """A validator installed beside this interpreter (the dev extra's console scripts)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise RuntimeError(
            f"{name} is not installed: run `make test`, which installs the dev extra"
        )
    return str(path)


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def template(name: str) -> dict[str, Any]:
    """A CloudFormation template with its short-form functions as their long forms."""
    loaded: dict[str, Any] = cfn_yaml.load(str(TEMPLATES / name))
    return loaded


def resources(document: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in document["Resources"].items()
        if resource["Type"] == kind
    }


@contextlib.contextmanager
def ministack_server(workdir: Path) -> Iterator[str]:
    """ministack (S3, SQS, CloudFormation and the rest) on loopback, without persistence."""
    if not MINISTACK_PYTHON.exists():
        raise RuntimeError(
            f"{MINISTACK_PYTHON} is missing: run scripts/bootstrap.sh test (or `make test`)"
        )
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "GATEWAY_PORT": str(port),
        "BIND_HOST": "127.0.0.1",
        "MINISTACK_HOST": "127.0.0.1",
        "MINISTACK_REGION": REGION,
        "PERSIST_STATE": "0",
        "LOG_LEVEL": "WARNING",
    }
    log = (workdir / "ministack.log").open("w")
    process = subprocess.Popen(
        [str(MINISTACK_PYTHON), "-m", "ministack"],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()
