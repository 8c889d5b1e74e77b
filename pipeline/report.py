"""How long-running stages tell the outside world what they are doing, and learn they must stop."""

import math
import time
from collections.abc import Mapping
from typing import Any, Protocol

from shared.contracts.errors import JobCancelled
from shared.contracts.jobs import EventType
from shared.progress import ProgressBars


class Reporter(Protocol):
    def progress(self, data: Mapping[str, Any]) -> None:
        """{"stage", "step", "total", "fraction", "eta_s"}, and in training also "loss", "lr",
        "samples_per_s", "epoch", and "phase": "adapt" while it adapts the encoder first."""

    def event(self, type_: EventType, data: Mapping[str, Any]) -> None:
        """A `metric` or `log` event."""

    def cancelled(self) -> bool:
        """True once the job is cancelled; loops then raise JobCancelled."""


def check_cancelled(reporter: Reporter, stage: str) -> None:
    """Raise JobCancelled once the job is cancelled: a long loop calls it at every step."""
    if reporter.cancelled():
        raise JobCancelled(f"the job was cancelled during {stage}")


class NullReporter:
    def progress(self, data: Mapping[str, Any]) -> None:
        pass

    def event(self, type_: EventType, data: Mapping[str, Any]) -> None:
        pass

    def cancelled(self) -> bool:
        return False


class Ticker:
    """One stage's progress, sent at most every interval_s and at its last step, with an ETA."""

    def __init__(
        self, reporter: Reporter, stage: str, total: int, interval_s: float, start: int = 0
    ) -> None:
        self.reporter = reporter
        self.stage = stage
        self.total = total
        self.interval_s = interval_s
        self._start_step = start
        self._start_time = time.monotonic()
        self._last_sent = -math.inf

    def due(self, step: int) -> bool:
        return step >= self.total or time.monotonic() - self._last_sent >= self.interval_s

    def send(self, step: int, **extra: Any) -> None:
        now = self._last_sent = time.monotonic()
        done, elapsed = step - self._start_step, now - self._start_time
        eta = (self.total - step) * elapsed / done if done > 0 else None
        self.reporter.progress(
            {
                "stage": self.stage,
                "step": step,
                "total": self.total,
                "fraction": round(step / self.total, 4) if self.total else 1.0,
                "eta_s": None if eta is None else round(eta, 1),
                **extra,
            }
        )

    def __call__(self, step: int, **extra: Any) -> None:
        if self.due(step):
            self.send(step, **extra)


class TqdmReporter(ProgressBars):
    """Progress bars for the local CLI; nothing cancels a local run but Ctrl-C."""

    def cancelled(self) -> bool:
        return False
