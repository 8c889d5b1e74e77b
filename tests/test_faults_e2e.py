"""Faults on the real local stack: a predict worker SIGKILLed under load loses no request, and
the supervisor starts it again. With half the fleet gone the gateway may shed load: a refusal
is a 503 with Retry-After before anything was taken, which the test's callers honour, as the
terminal client does."""

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.registry import publish
from shared.registry import ModelRegistry
from testkit.models import tiny_model
from testkit.stack import LiveStack, live_stack, restarting

pytestmark = pytest.mark.slow

TEXTS = [
    "Stocks rally as the central bank holds rates",
    "The striker scored twice in the cup final",
    "New chip doubles battery life of phones",
    "Rebels seize the capital after peace talks fail",
    "Quarterly profit beats forecasts at the carmaker",
    "Astronomers find water on a distant moon",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    root = tmp_path_factory.mktemp("faults")
    with live_stack(
        root, queues=("predict",), predict_workers=2, restart_backoff_s=0.5, model_poll_s=0.5
    ) as running:
        registry = ModelRegistry.from_settings(running.settings.storage)
        version = publish(registry, tiny_model(root / "tiny")).version
        registry.promote(version, "test")
        with restarting(running):
            yield running


class Client(threading.Thread):
    def __init__(self, url: str, text: str, stop: threading.Event) -> None:
        super().__init__()
        self.url, self.text, self.stop = url, text, stop
        self.answers: list[tuple[int, dict[str, Any]]] = []
        self.refusals: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.is_set():
                response = http.post("/v1/predict", json={"text": self.text})
                self.answers.append((response.status_code, response.json()))
                if response.status_code == 503:
                    self.refusals.append(response.headers.get("Retry-After", ""))
                    self.stop.wait(float(response.headers.get("Retry-After", "1")))


def _served(stack: LiveStack) -> None:
    deadline = time.monotonic() + 90
    while True:
        response = httpx.post(f"{stack.url}/v1/predict", json={"text": "warm up"}, timeout=30)
        if response.status_code == 200:
            return
        assert time.monotonic() < deadline, response.text
        time.sleep(0.5)


def _job_answer(url: str, job_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return dict(job)
        time.sleep(0.5)


def test_a_predict_worker_killed_under_load_loses_no_request_and_is_restarted(
    stack: LiveStack, caplog: pytest.LogCaptureFixture
) -> None:
    _served(stack)
    victim = next(s for s in stack.supervisor.services if s.name == "worker-predict-2")
    assert victim.process is not None
    killed_pid = victim.process.pid
    stop = threading.Event()
    clients = [Client(stack.url, text, stop) for text in TEXTS * 2]
    for client in clients:
        client.start()
    time.sleep(4)
    os.kill(killed_pid, signal.SIGKILL)
    time.sleep(8)
    stop.set()
    for client in clients:
        client.join()

    answers = [answer for client in clients for answer in client.answers]
    assert len([status for status, _ in answers if status == 200]) > 50
    assert {status for status, _ in answers} <= {200, 202, 503}, answers
    refused = [body for status, body in answers if status == 503]
    assert all(body["error"]["code"] == "overloaded" for body in refused), refused
    retry_afters = [value for client in clients for value in client.refusals]
    assert all(value.isdigit() and int(value) >= 1 for value in retry_afters), retry_afters
    late = [body["id"] for status, body in answers if status == 202]
    # The victim held requests when it died: their callers got 202 after the wait, ...
    assert late
    for job_id in late:
        # ... and another worker served them: the broker restores what the victim held after
        # 15 s (plus a 2 s sweep); the reaper sends again what it had popped unrecorded (20 s).
        job = _job_answer(stack.url, job_id, timeout_s=40)
        assert job["status"] == "succeeded", job
        assert job["result"]["predictions"]
    # The supervisor started the killed worker again, and it serves.
    assert victim.process.pid != killed_pid
    assert victim.process.poll() is None
    assert "worker-predict-2 exited with code -9; restart 1" in caplog.text
    assert (Path(stack.settings.run.data_dir) / "logs" / "worker-predict-2.log.1").exists()
    # It loaded its model before it took any request: Celery's " ready." follows the load.
    log = Path(stack.settings.run.data_dir) / "logs" / "worker-predict-2.log"
    deadline = time.monotonic() + 60
    while " ready." not in (text := log.read_text()):
        assert time.monotonic() < deadline, text
        time.sleep(0.5)
    assert "now serving model" in text.split(" ready.")[0], text


def test_redis_killed_is_restarted_from_its_aof_and_every_process_reconnects(
    stack: LiveStack, caplog: pytest.LogCaptureFixture
) -> None:
    _served(stack)
    before = httpx.post(f"{stack.url}/v1/predict", json={"text": "Oil prices slide"}, timeout=30)
    assert before.status_code == 200
    job_id = before.json()["job_id"]
    time.sleep(1.5)  # appendfsync everysec: the answer is on disk
    redis = next(s for s in stack.supervisor.services if s.name == "redis")
    assert redis.process is not None
    os.kill(redis.process.pid, signal.SIGKILL)

    deadline = time.monotonic() + 60
    while True:
        try:
            after = httpx.post(f"{stack.url}/v1/predict", json={"text": "Cup final"}, timeout=30)
            if after.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "no answer 60 s after Redis was killed"
        time.sleep(0.5)
    assert "redis exited with code -9; restart 1" in caplog.text
    kept = httpx.get(f"{stack.url}/v1/jobs/{job_id}", timeout=10).json()
    assert kept["status"] == "succeeded"  # the job store came back from the AOF
    assert httpx.get(f"{stack.url}/readyz", timeout=10).status_code == 200
