"""Starting, watching and stopping the stack's processes."""

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from shared.redis_clients import sync_client
from shared.settings import RedisSettings
from stack.logfiles import LogLimits, RotatingLog, pump

log = logging.getLogger(__name__)
DEFAULT_LIMITS = LogLimits()


@dataclass
class Service:
    """One long-running process, its log file and a readiness probe."""

    name: str
    argv: Sequence[str]
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 15.0
    process: subprocess.Popen[bytes] | None = None
    log: RotatingLog | None = None
    _pump: threading.Thread | None = None

    def start(
        self, log_dir: Path, base_env: dict[str, str], limits: LogLimits = DEFAULT_LIMITS
    ) -> None:
        """Start the process on a fresh log: the previous run's (or the instance that died) is
        kept as `NAME.log.1`, so that a readiness probe reading the log sees this run only."""
        self._close_log()
        self.log = RotatingLog(log_dir / f"{self.name}.log", limits).open()
        self.process = subprocess.Popen(
            list(self.argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**base_env, **self.env},
            cwd=self.cwd,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self._pump = pump(self.process.stdout, self.log, self.name)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while not self.ready():
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} was not ready after {self.start_timeout_s:.0f}s")
            time.sleep(0.1)

    def signal_stop(self) -> None:
        """Ask the process to exit (SIGTERM to its group), without waiting."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)

    def wait_stopped(self) -> None:
        """Wait for the process to exit, SIGKILLing its group after `stop_timeout_s`."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._close_log()

    def _close_log(self) -> None:
        """The output copied to its end (a child the process left behind may hold it open)."""
        if self._pump is not None:
            self._pump.join(timeout=2)
            self._pump = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def stop(self) -> None:
        self.signal_stop()
        self.wait_stopped()

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None


@dataclass(frozen=True)
class RestartPolicy:
    """Compose's `restart: on-failure` with a limit: a process that exits is started again
    after a backoff that doubles with each recent exit, unless it has exited `max_restarts`
    times within `window_s`, when the stack gives up on it."""

    max_restarts: int = 5
    window_s: float = 60.0
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0

    def delay(self, exits: Sequence[float], now: float) -> float | None:
        """Seconds to wait before the next start, or None to give up; `exits` are the times the
        service exited (monotonic seconds), the latest included."""
        recent = [t for t in exits if now - t <= self.window_s]
        if len(recent) >= self.max_restarts:
            return None
        backoff: float = self.backoff_s * 2.0 ** max(len(recent) - 1, 0)
        return min(backoff, self.backoff_max_s)


class GaveUp(RuntimeError):
    """A service kept dying; the stack stops."""


@dataclass
class _Restart:
    exits: list[float] = field(default_factory=list)
    due: float | None = None


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
            return bool(sync_client(RedisSettings(url=url, timeout_s=1, retries=0)).ping())
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
    """Starts services in order, waiting for each (or for a group started together); restarts
    one that dies (see RestartPolicy); stops them all, the first last."""

    def __init__(
        self,
        log_dir: Path,
        env: dict[str, str],
        policy: RestartPolicy | None = None,
        limits: LogLimits | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.env = env
        self.policy = policy or RestartPolicy()
        self.limits = limits or LogLimits()
        self.services: list[Service] = []
        self.restarts: dict[str, _Restart] = {}
        self._lock = threading.Lock()

    def start(self, service: Service) -> Service:
        self.start_together([service])
        return service

    def start_together(self, services: Sequence[Service]) -> None:
        """Start services that do not need each other all at once, then wait until every one is
        ready: their start-up work (a worker's imports, a model's load) overlaps."""
        for service in services:
            service.start(self.log_dir, self.env, self.limits)
            self.services.append(service)
        for service in services:
            service.wait_ready()

    def stop(self) -> None:
        """Stop every service. The first started (the stack's Redis) goes once the rest have
        exited, so that none loses its broker while it shuts down; the rest are signalled
        together, so that their shutdowns (a worker finishing its task, the S3 store draining
        its streams) overlap instead of adding up."""
        with self._lock:
            first, rest = self.services[:1], self.services[1:]
            for stage in (rest, first):
                for service in stage:
                    service.signal_stop()
                for service in stage:
                    service.wait_stopped()
            self.services.clear()

    def tick(self, now: float | None = None) -> None:
        """Restart services that exited and whose backoff has passed; raises GaveUp when one has
        exited too often."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for service in self.services:
                state = self.restarts.setdefault(service.name, _Restart())
                if state.due is None and service.exited():
                    state.exits.append(now)
                    code = service.process.returncode if service.process else None
                    delay = self.policy.delay(state.exits, now)
                    if delay is None:
                        raise GaveUp(
                            f"{service.name} exited {len(state.exits)} times within "
                            f"{self.policy.window_s:.0f}s (last code {code}); giving up; see "
                            f"{self.log_dir / service.name}.log"
                        )
                    log.warning(
                        "%s exited with code %s; restart %d in %.1fs; its log is kept as %s",
                        service.name,
                        code,
                        len(state.exits),
                        delay,
                        self.log_dir / f"{service.name}.log.1",
                    )
                    state.due = now + delay
                if state.due is not None and now >= state.due:
                    state.due = None
                    service.start(self.log_dir, self.env, self.limits)
                    log.warning("%s restarted (pid %s)", service.name, _pid(service))

    def watch(self, stopping: Callable[[], bool], interval_s: float = 0.5) -> None:
        """Keep the services up until `stopping()` says so; raises GaveUp."""
        while not stopping():
            self.tick()
            time.sleep(interval_s)

    def failed(self) -> Iterator[Service]:
        for service in self.services:
            if service.exited():
                yield service


def _pid(service: Service) -> int | None:
    return service.process.pid if service.process is not None else None
