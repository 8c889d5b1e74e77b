"""A batch job on the real local stack: submitted through the API, classified by the predict fleet,
and through a SIGKILLed predict worker and a SIGKILLed evaluate worker, every row answered once,
in order, its accuracy the model's own on the same rows."""

import csv
import io
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.cli import EXIT_OK, main
from pipeline.batch import HEADER
from pipeline.batch_input import read_batch_input
from pipeline.predictor import load_version
from pipeline.registry import publish
from shared.registry import ModelRegistry
from shared.storage import s3_client
from testkit.archives import csv_bytes, mini_records
from testkit.models import tiny_model
from testkit.stack import LiveStack, live_stack, restarting

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    root = tmp_path_factory.mktemp("batch")
    with live_stack(
        root,
        queues=("predict", "evaluate"),
        predict_workers=2,
        restart_backoff_s=0.5,
        model_poll_s=0.5,
        heartbeat_interval_s=1.0,
        heartbeat_timeout_s=6.0,
        reaper_interval_s=1.0,
        batch_chunk_texts=8,
        batch_in_flight=2,
    ) as running:
        registry = ModelRegistry.from_settings(running.settings.storage)
        version = publish(registry, tiny_model(root / "tiny")).version
        registry.promote(version, "test")
        with restarting(running):
            yield running


def _job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    return dict(http.get(f"/v1/jobs/{job_id}").json())


def _kill(stack: LiveStack, name: str) -> int:
    service = next(s for s in stack.supervisor.services if s.name == name)
    assert service.process is not None
    pid = service.process.pid
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_batch_job_survives_killed_workers_with_every_row_once_and_in_order(
    stack: LiveStack,
) -> None:
    records = mini_records("train.csv") + mini_records("test.csv")
    records = [
        [label, f"({copy}) {title}", text] for copy in range(3) for label, title, text in records
    ]
    data = csv_bytes(records)
    settings = stack.settings
    key = "incoming/batches/news.csv"
    s3 = s3_client(settings.storage)
    s3.put_object(Bucket=settings.storage.bucket, Key=key, Body=data)
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        refused = http.post("/v1/jobs", json={"type": "batch_predict", "dataset": "incoming/x.zip"})
        assert refused.status_code == 422
        created = http.post("/v1/jobs", json={"type": "batch_predict", "dataset": key})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]

        def fraction() -> float:
            progress = _job(http, job_id).get("progress") or {}
            return float(progress.get("fraction", 0.0))

        deadline = time.monotonic() + 180
        while fraction() < 0.15:
            assert time.monotonic() < deadline, _job(http, job_id)
            time.sleep(0.2)
        _kill(stack, "worker-predict-2")
        time.sleep(1.0)
        _kill(stack, "worker-evaluate")
        while (job := _job(http, job_id))["status"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline + 180, job
            time.sleep(0.5)
        assert job["status"] == "succeeded", job
        result = job["result"]

    rows = read_batch_input(io.BytesIO(data), key, 1 << 24, 10_000)
    body = s3.get_object(
        Bucket=settings.storage.bucket, Key=f"predictions/{job_id}/predictions.csv"
    )
    lines = list(csv.reader(io.StringIO(body["Body"].read().decode())))[1:]
    assert [int(line[0]) for line in lines] == list(range(1, len(rows) + 1))
    (version,) = {line[-2] for line in lines}
    model = load_version(version, settings, settings.run.data_dir / "check")
    expected = model.predict([row.text for row in rows])
    agreeing = sum(line[1] == answer.label for line, answer in zip(lines, expected, strict=True))
    assert agreeing >= 0.99 * len(rows)  # the workers may serve another form (int8, ONNX)
    correct = sum(int(line[2]) == row.label for line, row in zip(lines, rows, strict=True))
    assert result["rows"] == result["labelled"] == len(rows)
    assert result["accuracy"] == round(correct / len(rows), 6)
    assert result["model_versions"] == {version: len(rows)}
    listed = s3.list_objects_v2(Bucket=settings.storage.bucket, Prefix=f"predictions/{job_id}/")
    assert [item["Key"] for item in listed["Contents"]] == [f"predictions/{job_id}/predictions.csv"]


def test_the_terminal_uploads_a_file_follows_its_batch_and_downloads_the_output(
    stack: LiveStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = [record[1] for record in mini_records("test.csv")[:40]]
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    url = ["--url", stack.url]
    code = main(["jobs", "submit", "batch-predict", str(source), "--follow", "--json", *url])
    assert code == EXIT_OK
    job, *events = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    job_id = job["id"]
    assert job["type"] == "batch_predict"
    progress = [e["data"] for e in events if e["type"] == "progress"]
    assert progress
    assert progress[-1]["step"] == progress[-1]["total"] == len(texts)
    assert "rows_per_s" in progress[-1]
    target = tmp_path / "out.csv"
    assert main(["jobs", "output", job_id, "--to", str(target), *url]) == EXIT_OK
    lines = list(csv.reader(io.StringIO(target.read_text())))
    assert tuple(lines[0]) == HEADER
    assert [int(line[0]) for line in lines[1:]] == list(range(1, len(texts) + 1))
    with httpx.Client(base_url=stack.url) as http:
        other = http.post("/v1/predict", json={"text": texts[0]}).json()
        assert http.get(f"/v1/jobs/{other['job_id']}/output").status_code == 404
