"""A job's event stream across a Redis restart: redis-server SIGKILLed and started again from its
AOF, as the local stack runs it. A reconnect while Redis is away is answered 503 (the front end
tries again); one after it, with Last-Event-ID, and a client that stayed connected through the
outage each get every persisted event once."""

import os
import signal
import threading
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import httpx
import pytest

from shared.jobstore import JobStore
from shared.settings import Settings
from stack.local import redis_service
from stack.processes import Service
from testkit.gateway import Frame, events_only, read_frames, serve, wait_until
from testkit.servers import free_port
from tests.test_gateway_events import assert_matches, finish, new_job


@pytest.fixture
def aof_settings(settings: Settings) -> Settings:
    return settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0", sse_heartbeat_s=0.05)


@pytest.fixture
def redis(aof_settings: Settings) -> Iterator[Service]:
    service = redis_service(aof_settings)
    start(service, aof_settings)
    yield service
    service.stop()


def on_disk(settings: Settings, entry_id: str) -> bool:
    """Whether the AOF holds the stream entry (appendfsync everysec: within about a second)."""
    files = (settings.run.data_dir / "redis").rglob("*.aof")
    return any(entry_id.encode() in Path(path).read_bytes() for path in files)


def kill(service: Service) -> None:
    assert service.process is not None
    os.kill(service.process.pid, signal.SIGKILL)
    service.process.wait()


def start(service: Service, settings: Settings) -> None:
    service.start(settings.run.data_dir / "logs", dict(os.environ))
    service.wait_ready()


def follow(url: str, frames: list[Frame], started: threading.Event) -> None:
    with (
        httpx.Client(base_url=url, timeout=30) as client,
        client.stream("GET", url) as response,
    ):
        started.set()
        frames.extend(events_only(read_frames(response.iter_lines())))


def test_sse_clients_lose_and_repeat_nothing_across_a_redis_restart(
    aof_settings: Settings, redis: Service
) -> None:
    store = JobStore.from_settings(aof_settings)
    job_id = new_job(store)
    store.start(job_id)
    store.progress(job_id, {"step": 1})
    with serve(aof_settings) as gateway, httpx.Client(base_url=gateway.url, timeout=30) as client:
        url = f"{gateway.url}/v1/jobs/{job_id}/events"
        with client.stream("GET", url) as response:
            before = list(islice(events_only(read_frames(response.iter_lines())), 3))
        last = before[-1].id
        assert last is not None
        stayed: list[Frame] = []
        connected = threading.Event()
        follower = threading.Thread(target=follow, args=(url, stayed, connected))
        follower.start()
        connected.wait()
        wait_until(lambda: on_disk(aof_settings, last))

        kill(redis)
        away = client.get(url, headers={"Last-Event-ID": last})
        assert (away.status_code, away.json()["error"]["code"]) == (503, "service_unavailable")
        start(redis, aof_settings)
        finish(store, job_id, "succeed")
        with client.stream("GET", url, headers={"Last-Event-ID": last}) as response:
            assert response.status_code == 200
            resumed = list(events_only(read_frames(response.iter_lines())))
        follower.join(30)

    persisted = store.events(job_id)
    assert [event.type.value for event in persisted][-3:] == ["progress", "status", "result"]
    assert_matches(before + resumed, persisted)
    assert_matches(stayed, persisted)
