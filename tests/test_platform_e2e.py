"""The real system end to end: gateway, Redis, Celery workers on their queues, S3, real model."""

import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.contracts.stages import EVALUATE, INGEST, PROMOTE, TRAIN
from shared.storage import s3_client
from stack.logs import log_files, read_lines
from testkit.archives import MINI_ARCHIVE
from testkit.stack import LiveStack, live_stack
from tests.sse import SseEvent, read_events

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    with live_stack(tmp_path_factory.mktemp("stack"), training_profile="quick") as running:
        yield running


@pytest.fixture(scope="module")
def client(stack: LiveStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        yield http


def upload(stack: LiveStack, source: Path, key: str) -> str:
    s3_client(stack.settings.storage).upload_file(str(source), stack.settings.storage.bucket, key)
    return f"s3://{stack.settings.storage.bucket}/{key}"


def events_of(
    client: httpx.Client,
    job_id: str,
    last_event_id: str | None = None,
    stop_after: int | None = None,
) -> list[SseEvent]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    received: list[SseEvent] = []
    with client.stream(
        "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=600
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in read_events(response):
            received.append(event)
            if stop_after is not None and len(received) >= stop_after:
                break
    return received


def wait_for_end(client: httpx.Client, job_id: str, timeout_s: float = 600) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, object] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not end in {timeout_s}s")


def test_pipeline_job_travels_through_every_queue_and_serves_its_model(
    stack: LiveStack, client: httpx.Client
) -> None:
    dataset = upload(stack, MINI_ARCHIVE, "datasets/manual-e2e/archive.zip")
    created = client.post("/v1/jobs", json={"type": "pipeline", "dataset": dataset, "max_steps": 6})
    assert created.status_code == 202
    job_id = created.json()["id"]

    # A client reads a few events, goes away, and comes back with Last-Event-ID.
    first = events_of(client, job_id, stop_after=3)
    rest = events_of(client, job_id, last_event_id=first[-1].id)
    replay = events_of(client, job_id)

    assert [e.id for e in first + rest] == [e.id for e in replay]
    assert len({e.id for e in replay}) == len(replay)
    assert replay[-1].event == "result"
    assert [e.event for e in replay].count("result") == 1
    stages = [
        e.data["stage"] for e in replay if e.event == "log" and e.data.get("state") == "started"
    ]
    assert stages == ["ingest", "train", "evaluate", "promote"]
    assert any(e.event == "progress" and e.data.get("stage") == "train" for e in replay)

    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    result = job["result"]
    assert result["promotion"]["promoted"] is True
    version = result["version"]
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    timed = result["stage_seconds"]
    assert [name for name, seconds in timed.items() if seconds is None] == [], timed
    [plan] = [
        e.data["plan"]
        for e in replay
        if e.event == "log" and "message" in e.data and "plan" in e.data
    ]
    assert plan["steps"] == 6

    assert client.get("/v1/models/production").json()["version"] == version
    answer = client.post("/v1/predict", json={"texts": ["Stocks rally as oil prices fall", "x"]})
    assert answer.status_code == 200
    body = answer.json()
    assert body["model_version"] == version
    assert len(body["predictions"]) == 2
    for prediction in body["predictions"]:
        assert set(prediction["scores"]) == {"World", "Sports", "Business", "Sci/Tech"}
        assert abs(sum(prediction["scores"].values()) - 1) < 1e-4

    # One job, followed across the processes it crossed, by the job id on their log records.
    log_dir = (stack.settings.run.data_dir / "logs").resolve()
    records = [line for line in read_lines(log_files(log_dir, [])) if line.about(job_id)]
    crossed = {line.process for line in records}
    assert {"gateway", "worker-evaluate", "worker-train"} <= crossed, crossed
    tasks = {str(line.record["task"]) for line in records if line.record and "task" in line.record}
    assert {INGEST, TRAIN, EVALUATE, PROMOTE} <= tasks
    assert any(line.record and line.record.get("version") == version for line in records)


def test_a_failing_task_is_a_failed_job_with_its_message(
    stack: LiveStack, client: httpx.Client
) -> None:
    missing = f"s3://{stack.settings.storage.bucket}/incoming/nowhere/archive.zip"
    job_id = client.post("/v1/jobs", json={"type": "pipeline", "dataset": missing}).json()["id"]
    job = wait_for_end(client, job_id, 120)
    assert job["status"] == "failed"
    error = job["error"]
    assert isinstance(error, dict)
    assert "incoming/nowhere/archive.zip" in error["message"]
    events = events_of(client, job_id)
    assert events[-1].event == "error"
    assert events[-1].data["message"] == error["message"]


def test_an_invalid_archive_fails_with_the_rule_it_broke(
    stack: LiveStack, client: httpx.Client, tmp_path: Path
) -> None:
    broken = tmp_path / "archive.zip"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("train.csv", '"7","Title","Body"\n' * 50)
        archive.writestr("test.csv", '"1","Title","Body"\n')
    production_before = client.get("/v1/models/production")
    dataset = upload(stack, broken, "datasets/manual-broken/archive.zip")
    job_id = client.post("/v1/jobs", json={"type": "pipeline", "dataset": dataset}).json()["id"]
    job = wait_for_end(client, job_id, 120)
    assert job["status"] == "failed"
    error = job["error"]
    assert isinstance(error, dict)
    assert error["code"] == "dataset_invalid"
    assert "train.csv line 1" in error["message"]
    assert client.get("/v1/models/production").json() == production_before.json()
