"""The whole local stack on free ports, for end-to-end tests and benchmarks."""

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipeline.registry import publish
from shared.registry import ModelRegistry
from shared.settings import Settings
from stack.local import start_stack
from stack.processes import Supervisor
from testkit.aws_calls import site_environment
from testkit.servers import free_port


@dataclass
class LiveStack:
    settings: Settings
    url: str
    supervisor: Supervisor


def free_port_block(size: int) -> int:
    """The first of `size` consecutive free ports, below the ephemeral range."""
    for base in range(21000, 30000, 97):
        if all(_free(port) for port in range(base, base + size)):
            return base
    raise RuntimeError("no block of free ports")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextmanager
def live_stack(
    workdir: Path,
    *,
    queues: tuple[str, ...] = ("predict", "train", "evaluate"),
    predict_workers: int = 1,
    aws_calls: Path | None = None,
    **overrides: object,
) -> Iterator[LiveStack]:
    """`aws_calls`: a folder where each of the stack's Python processes records the AWS calls it
    makes (testkit.aws_calls)."""
    gateway_port = free_port()
    # A worker times its model's forms for serving_timing_s at each load: kept short here, where
    # a test's requests wait on the first load and two workers share the cores with the rest.
    # Its slice sizes are not timed (test_serving_forms times them): one round of five sizes over
    # the kept texts took about 3 s on two busy cores, and brought a first load to about 10 s,
    # past predict_wait_s, so a test's first request after promotion could get 202.
    overrides.setdefault("serving_timing_s", 0.3)
    overrides.setdefault("serving_forward_batch", 8)
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        s3_endpoint_url=f"http://127.0.0.1:{free_port_block(8)}",
        listener_port=free_port(),
        s3_access_key_id="agnews",
        s3_secret_access_key="agnews-test-secret",
        bucket="agnews-e2e",
        data_dir=workdir,
        **overrides,  # type: ignore[arg-type]
    )
    recorder = site_environment(aws_calls) if aws_calls is not None else {}
    saved = {name: os.environ.get(name) for name in recorder}
    os.environ.update(recorder)  # the supervisor hands its environment to every process
    try:
        supervisor = start_stack(
            settings, gateway_port=gateway_port, queues=queues, predict_workers=predict_workers
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        yield LiveStack(settings, f"http://127.0.0.1:{gateway_port}", supervisor)
    finally:
        supervisor.stop()


def serve_model(stack: LiveStack, model_dir: Path, text: str) -> str:
    registry = ModelRegistry.from_settings(stack.settings.storage)
    version = publish(registry, model_dir).version
    registry.promote(version, "served for a test or a benchmark")
    deadline = time.monotonic() + 300
    while True:
        answer = httpx.post(f"{stack.url}/v1/predict", json={"text": text}, timeout=60)
        if answer.status_code == 200 and answer.json()["model_version"] == version:
            return version
        if time.monotonic() > deadline:
            raise RuntimeError(f"the stack never served {version}: {answer.text}")
        time.sleep(0.5)


@contextmanager
def restarting(stack: LiveStack) -> Iterator[LiveStack]:
    """The stack with its supervisor watching: a process that dies is started again."""
    stop = threading.Event()
    watcher = threading.Thread(target=stack.supervisor.watch, args=(stop.is_set,))
    watcher.start()
    try:
        yield stack
    finally:
        stop.set()
        watcher.join()
