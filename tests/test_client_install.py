"""The terminal client installs on its own (the package's base install, as `pip install agnews`
does elsewhere) and talks to a gateway with no torch, Celery or boto3 to import."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.contracts.jobs import Job, JobType, TrainParams, new_job_id
from shared.jobstore import JobStore
from shared.settings import Settings
from testkit.gateway import serve

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "shared", "gateway", "workers", "pipeline", "stack")
SERVER_ONLY = ("torch", "celery", "kombu", "boto3", "botocore", "redis", "starlette", "structlog")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the package's base install, built from a copy of the
    sources (pip builds in the tree it is given)."""
    work = tmp_path_factory.mktemp("client-install")
    source = work / "source"
    for name in (*SOURCES, "client", "deploy"):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(path, source / name)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(source)],
        check=True,
        timeout=600,
    )
    return venv


def test_the_base_install_leaves_out_the_services_stack(client_venv: Path) -> None:
    for module in SERVER_ONLY:
        found = subprocess.run(
            [str(client_venv / "bin" / "python"), "-c", f"import {module}"],
            capture_output=True,
            text=True,
        )
        assert found.returncode != 0, f"{module} is importable in the client's install"


def test_the_installed_client_lists_jobs_from_a_gateway(
    client_venv: Path, settings: Settings
) -> None:
    store = JobStore.from_settings(settings)
    params = TrainParams(dataset="s3://agnews/incoming/a/archive.zip")
    job = store.create(Job(id=new_job_id(), type=JobType.train, params=params))
    with serve(settings) as gateway:
        listed = subprocess.run(
            [str(client_venv / "bin" / "agnews"), "jobs", "list", "--json", "--url", gateway.url],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=client_venv,
        )
    assert listed.returncode == 0, listed.stderr
    assert job.id in [entry["id"] for entry in json.loads(listed.stdout)]
