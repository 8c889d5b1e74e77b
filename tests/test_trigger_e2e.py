"""Drop archive.zip into the local stack's S3 store: it trains, promotes and serves a model.

The real local stack: SeaweedFS posting its webhook to the listener, Redis, every worker, the
gateway and the packaged base model.
"""

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from boto3.s3.transfer import TransferConfig

from shared.storage import s3_client
from testkit.archives import MINI_ARCHIVE
from testkit.stack import LiveStack, live_stack

pytestmark = pytest.mark.slow

TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    workdir = tmp_path_factory.mktemp("trigger-stack")
    with live_stack(workdir, training_profile="quick", pipeline_max_steps=6) as running:
        yield running


@pytest.fixture(scope="module")
def client(stack: LiveStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        yield http


def jobs_for(client: httpx.Client, key: str) -> list[dict[str, Any]]:
    answer = client.get("/v1/jobs", params={"type": "pipeline", "limit": 100})
    assert answer.status_code == 200
    body = answer.json()
    jobs: list[dict[str, Any]] = body["jobs"]
    return [job for job in jobs if (job["params"].get("source") or {}).get("key") == key]


def wait_for_job(client: httpx.Client, key: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = jobs_for(client, key)
        if found:
            return found[0]
        time.sleep(0.2)
    raise TimeoutError(f"no pipeline job for {key} after {timeout_s}s")


def wait_for_end(client: httpx.Client, job_id: str, timeout_s: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(1)
    raise TimeoutError(f"job {job_id} did not end in {timeout_s}s")


def test_an_uploaded_archive_trains_promotes_and_serves_its_model(
    stack: LiveStack, client: httpx.Client
) -> None:
    settings = stack.settings
    key = f"{settings.storage.incoming_prefix}e2e upload/archive.zip"
    s3_client(settings.storage).put_object(
        Bucket=settings.storage.bucket, Key=key, Body=MINI_ARCHIVE.read_bytes()
    )

    job = wait_for_job(client, key)
    assert job["params"]["dataset"] == f"s3://{settings.storage.bucket}/{key}"
    source = job["params"]["source"]
    assert (source["bucket"], source["key"]) == (settings.storage.bucket, key)
    assert source["size"] == MINI_ARCHIVE.stat().st_size
    assert source["etag"]

    ended = wait_for_end(client, job["id"])
    assert ended["status"] == "succeeded", ended.get("error")
    assert ended["result"]["promotion"]["promoted"] is True
    version = ended["result"]["version"]
    assert client.get("/v1/models/production").json()["version"] == version

    answer = client.post("/v1/predict", json={"texts": ["Stocks rally as oil prices fall"]})
    assert answer.status_code == 200
    assert answer.json()["model_version"] == version
    assert len(jobs_for(client, key)) == 1


def test_a_multipart_upload_starts_one_job(stack: LiveStack, client: httpx.Client) -> None:
    settings = stack.settings
    s3 = s3_client(settings.storage)
    key = f"{settings.storage.incoming_prefix}e2e-multipart/archive.zip"
    parts = TransferConfig(multipart_threshold=8 * 1024, multipart_chunksize=5 * 1024 * 1024)
    s3.upload_file(str(MINI_ARCHIVE), settings.storage.bucket, key, Config=parts)
    job = wait_for_job(client, key)
    client.delete(f"/v1/jobs/{job['id']}")

    # Events arrive in order: once a later upload's job exists, any duplicate would have too.
    later = f"{settings.storage.incoming_prefix}e2e-after/archive.zip"
    s3.put_object(Bucket=settings.storage.bucket, Key=later, Body=MINI_ARCHIVE.read_bytes())
    client.delete(f"/v1/jobs/{wait_for_job(client, later)['id']}")

    assert [found["id"] for found in jobs_for(client, key)] == [job["id"]]
    assert job["params"]["source"]["etag"].endswith("-1")


def agnews(stack: LiveStack, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *argv, "--url", stack.url, "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_the_terminal_client_uploads_follows_and_classifies(stack: LiveStack) -> None:
    done = agnews(stack, "jobs", "submit", "pipeline", str(MINI_ARCHIVE), "--follow")
    assert done.returncode == 0, done.stderr
    job, *events = (json.loads(line) for line in done.stdout.splitlines())
    assert job["params"]["source"]["key"].startswith(stack.settings.storage.incoming_prefix)
    assert events[-1]["type"] == "result"
    version = events[-1]["data"]["version"]
    assert [e["data"]["stage"] for e in events if e["data"].get("state") == "started"] == [
        "ingest",
        "train",
        "evaluate",
        "promote",
    ]

    models = json.loads(agnews(stack, "models", "list").stdout)
    assert version in [model["version"] for model in models["models"]]
    answer = agnews(stack, "classify", "Stocks rally as oil prices fall")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["model_version"] == models["production"]["version"]


def test_feedback_from_the_terminal_retrains_through_every_stage(
    stack: LiveStack, client: httpx.Client
) -> None:
    if not client.get("/v1/models").json()["models"]:
        dropped = agnews(stack, "jobs", "submit", "pipeline", str(MINI_ARCHIVE), "--follow")
        assert dropped.returncode == 0, dropped.stderr
    text = "Quorvex Zentrino flumoxes the grebbly yarndrive at Plonkham"
    given = agnews(stack, "feedback", text, "--label", "Sports")
    assert given.returncode == 0, given.stderr

    done = agnews(stack, "jobs", "submit", "pipeline", "--with-feedback", "--follow")
    assert done.returncode == 0, done.stderr
    job, *events = (json.loads(line) for line in done.stdout.splitlines())
    given_params = {name: value for name, value in job["params"].items() if value is not None}
    assert given_params == {"type": "pipeline", "with_feedback": True}
    ingested = next(e["data"] for e in events if e["data"].get("state") == "finished")
    assert (ingested["stage"], ingested["feedback_rows"]) == ("ingest", 1)
    logs = [e["data"].get("message", "") for e in events if e["type"] == "log"]
    assert any("with 1 feedback rows" in message for message in logs), logs
    version = events[-1]["data"]["version"]
    card = client.get(f"/v1/models/{version}").json()["card"]
    assert "1 of the rows are people's corrections (feedback)" in card
    origin = s3_client(stack.settings.storage).get_object(
        Bucket=stack.settings.storage.bucket,
        Key=f"{stack.settings.storage.datasets_prefix}{ingested['dataset_sha256']}/feedback.json",
    )
    assert json.loads(origin["Body"].read())["feedback_rows"] == 1
