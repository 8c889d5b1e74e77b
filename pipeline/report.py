"""How long-running stages tell the outside world what they are doing, and learn they must stop."""

import math
import sys
import time
from collections.abc import Mapping
from typing import Any, Protocol

from tqdm import tqdm

from shared.errors import JobCancelled
from shared.jobs import EventType


class Reporter(Protocol):
    def progress(self, data: Mapping[str, Any]) -> None:
        """{"stage", "step", "total", "fraction", "eta_s"}, and in training also "loss", "lr",
        "samples_per_s", "epoch"."""

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


class TqdmReporter:
    """Progress bars on stderr for the CLI, one per stage; stdout stays for results."""

    _SHOWN = ("loss", "lr", "samples_per_s", "epoch")

    def __init__(self) -> None:
        self._bar: tqdm[Any] | None = None
        self._stage: str | None = None

    def progress(self, data: Mapping[str, Any]) -> None:
        stage, total = str(data.get("stage", "")), data.get("total")
        if self._bar is None or stage != self._stage:
            self.close()
            self._bar = tqdm(total=total, desc=stage, unit="step", file=sys.stderr, leave=True)
            self._stage = stage
        self._bar.update(int(data.get("step", 0)) - self._bar.n)
        shown = {name: _short(data[name]) for name in self._SHOWN if name in data}
        self._bar.set_postfix(shown, refresh=False)
        self._bar.refresh()

    def event(self, type_: EventType, data: Mapping[str, Any]) -> None:
        if type_ is EventType.log:
            tqdm.write(str(data.get("message", data)), file=sys.stderr)

    def cancelled(self) -> bool:
        return False

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
