import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.jobstore import JobStore
from shared.settings import Settings
from testkit.archives import ROOT
from testkit.gateway import events_only, read_frames, serve, wait_until
from testkit.servers import free_port, redis_server, wait_for_port


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    with serve(settings) as gateway, httpx.Client(base_url=gateway.url) as http:
        yield http


def test_healthz_and_readyz(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"redis": "ok", "s3": "ok"}


def test_readyz_names_a_missing_bucket(settings: Settings) -> None:
    elsewhere = settings.replace(bucket="no-such-bucket")
    with serve(elsewhere) as gateway:
        response = httpx.get(f"{gateway.url}/readyz")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["details"]["redis"] == "ok"
    assert error["details"]["s3"].startswith("unavailable")
    assert "s3" in error["message"]


def test_metrics_count_requests_by_route_template(client: httpx.Client) -> None:
    client.get("/v1/jobs/one")
    client.get("/v1/jobs/two")
    client.get("/v1/nowhere")
    text = client.get("/metrics").text
    assert (
        'agnews_gateway_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"} 2.0'
        in text
    )
    assert 'route="unmatched",status="404"' in text
    assert "agnews_gateway_request_duration_seconds_bucket" in text
    assert "agnews_gateway_sse_clients 0.0" in text
    assert "agnews_queue_depth_up 1.0" in text
    for queue in ("predict", "train", "evaluate"):
        assert re.search(rf'agnews_queue_depth{{queue="{queue}"}} \d', text)


def test_the_gateway_rides_out_a_redis_outage(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    with contextlib.ExitStack() as stack:
        first_redis = contextlib.ExitStack()
        url = first_redis.enter_context(redis_server(tmp_path / "redis", port))
        # One retry, not six: each request made while Redis is away would wait out ~5 s of them.
        own = settings.replace(redis_url=url, probe_timeout_s=0.5, redis_retries=1)
        gateway = stack.enter_context(serve(own))
        client = stack.enter_context(httpx.Client(base_url=gateway.url, timeout=30))
        assert client.get("/readyz").status_code == 200

        first_redis.close()
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["details"]["redis"].startswith("unavailable")
        created = client.post("/v1/jobs", json={"type": "train", "dataset": "incoming/a.zip"})
        assert created.status_code == 503
        error = created.json()["error"]
        assert error["code"] == "service_unavailable"
        assert error["message"].startswith("job store unavailable")
        assert client.get("/v1/jobs/x").status_code == 503
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert "agnews_queue_depth_up 0.0" in metrics.text

        stack.enter_context(redis_server(tmp_path / "redis", port))
        wait_until(lambda: client.get("/readyz").status_code == 200)
        created = client.post("/v1/jobs", json={"type": "train", "dataset": "incoming/a.zip"})
        assert created.status_code == 202
        job_id = created.json()["id"]
        store = JobStore.from_settings(own)
        # The event hub found Redis again by itself.
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            frames = events_only(read_frames(response.iter_lines()))
            assert next(frames).event == "status"
            threading.Thread(target=store.cancel, args=(job_id,)).start()
            assert [frame.event for frame in frames] == ["status", "error"]


def test_python_m_gateway_serves_without_the_ml_stack(settings: Settings, tmp_path: Path) -> None:
    """The real command, with -X importtime listing every module it ever imports."""
    port = free_port()
    env = {
        **os.environ,
        "AGNEWS_REDIS_URL": settings.redis.url,
        "AGNEWS_KEY_PREFIX": settings.redis.key_prefix,
        "AGNEWS_S3_ENDPOINT_URL": settings.storage.endpoint_url or "",
        "AGNEWS_BUCKET": settings.storage.bucket,
        "AGNEWS_HTTP_HOST": "127.0.0.1",
        "AGNEWS_HTTP_PORT": str(port),
        "AGNEWS_PREDICT_WAIT_S": "0.1",
        "AGNEWS_LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr_file:
        process = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "gateway"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
        )
    try:
        wait_for_port(port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_until(lambda: client.get("/healthz").status_code == 200)
            assert client.get("/readyz").status_code == 200
            job = client.post("/v1/predict", json={"text": "Stocks rally"})
            assert job.status_code == 202
            events = f"/v1/jobs/{job.json()['id']}/events"
            with client.stream("GET", events) as response:
                assert next(events_only(read_frames(response.iter_lines()))).event == "status"
            assert client.get("/openapi.json").status_code == 200
            assert client.get("/metrics").status_code == 200
            status = Path(f"/proc/{process.pid}/status").read_text()
            rss_kb = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
            assert rss_kb < 150 * 1024
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    stderr = log.read_text()
    # uvicorn shuts down cleanly, then re-raises the signal it caught.
    assert process.returncode in (0, -signal.SIGTERM), stderr[-2000:]
    assert "Traceback" not in stderr
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert "gateway.app" in modules
    assert "celery" in modules
    heavy = {
        name for name in modules if name.split(".")[0] in ("torch", "transformers", "pipeline")
    }
    assert heavy == set()
