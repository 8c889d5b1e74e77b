"""Starting, watching and stopping the stack's processes."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis


@dataclass
class Service:
    """One long-running process, its log file and a readiness probe."""

    name: str
    argv: Sequence[str]
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    start_timeout_s: float = 60.0
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    def start(self, log_dir: Path, base_env: dict[str, str]) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = (log_dir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            list(self.argv),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**base_env, **self.env},
            cwd=self.cwd,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while not self.ready():
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} was not ready after {self.start_timeout_s:.0f}s")
            time.sleep(0.1)

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        if self.log is not None:
            self.log.close()


def http_ok(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(200 <= response.status < 500)
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:
            return False

    return probe


def redis_ok(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    return probe


def log_says(path: Path, text: str) -> Callable[[], bool]:
    def probe() -> bool:
        return path.exists() and text in path.read_text(errors="replace")

    return probe


def executable(name: str) -> str:
    """A program from the virtual environment beside this interpreter, else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed: run `make up`, which installs it")
    return found


class Supervisor:
    """Starts services in order, waiting for each; stops them in reverse order."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.services: list[Service] = []

    def start(self, service: Service) -> Service:
        service.start(self.log_dir, self.env)
        self.services.append(service)
        service.wait_ready()
        return service

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.services.clear()

    def failed(self) -> Iterator[Service]:
        for service in self.services:
            if service.process is not None and service.process.poll() is not None:
                yield service
