"""Helpers for the gateway's tests: a real uvicorn server, an SSE reader, a stand-in worker."""

import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import redis
import uvicorn

from gateway.app import create_app
from gateway.services import Services
from shared.jobstore import JobStore
from shared.settings import Settings
from testkit.servers import free_port


@dataclass
class Gateway:
    url: str
    services: Services


@contextlib.contextmanager
def running(server: uvicorn.Server) -> Iterator[None]:
    """`server` run in a thread of this process, from when it has started until the block ends."""
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(15)


@contextlib.contextmanager
def serve(settings: Settings) -> Iterator[Gateway]:
    """The gateway app on a real uvicorn server in a thread of this process."""
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    with running(uvicorn.Server(config)):
        yield Gateway(f"http://127.0.0.1:{port}", app.state.services)


@dataclass
class Frame:
    """One server-sent event, or a comment (heartbeat) when `comment` is set."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    comment: str | None = None

    def json(self) -> dict[str, object]:
        assert self.data is not None
        value = json.loads(self.data)
        assert isinstance(value, dict)
        return value


def read_frames(lines: Iterator[str]) -> Iterator[Frame]:
    frame = Frame()
    seen = False
    for line in lines:
        if not line:
            if seen:
                yield frame
            frame, seen = Frame(), False
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "":
            frame.comment, seen = value, True
        elif field in ("id", "event", "data"):
            setattr(frame, field, value)
            seen = True
    if seen:
        yield frame


def events_only(frames: Iterator[Frame]) -> Iterator[Frame]:
    return (frame for frame in frames if frame.comment is None and frame.event is not None)


def broker_messages(settings: Settings, queue: str) -> list[tuple[str, list[object]]]:
    """(task name, args) of every message waiting in a Celery queue on the broker."""
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    messages = []
    for item in raw:
        message = json.loads(item)
        args = json.loads(base64.b64decode(message["body"]))[0]
        messages.append((message["headers"]["task"], args))
    return messages


class FakeWorker:
    """Plays a Celery worker: takes task messages off a queue and reports through JobStore,
    the code path real workers use."""

    def __init__(
        self, settings: Settings, queue: str, handle: Callable[[JobStore, str], None]
    ) -> None:
        self.store = JobStore.from_settings(settings)
        self.queue = queue
        self.handle = handle
        self.handled: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-worker", daemon=True)

    def __enter__(self) -> "FakeWorker":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.store.redis.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            popped = self.store.redis.brpop([self.queue], timeout=0.1)
            if popped is None:
                continue
            message = json.loads(popped[1])
            job_id = json.loads(base64.b64decode(message["body"]))[0][0]
            if not self.store.redis.exists(self.store.keys.job(job_id)):
                continue  # a job of an earlier test
            self.handle(self.store, job_id)
            self.handled.append(job_id)


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.02)


def sse_clients(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("agnews_gateway_sse_clients "):
            return float(line.split()[1])
    raise AssertionError("no agnews_gateway_sse_clients metric")
