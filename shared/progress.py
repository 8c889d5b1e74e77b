"""Progress bars on stderr, one per stage, drawn from a job's events; stdout stays for results.

The local CLI feeds them as its stages run, the terminal client from a job's event stream."""

import sys
from collections.abc import Mapping
from typing import Any

from tqdm import tqdm

from shared.contracts.jobs import Event, EventType

_SHOWN = ("loss", "lr", "samples_per_s", "epoch")


class ProgressBars:
    def __init__(self) -> None:
        self._bar: tqdm[Any] | None = None
        self._stage: str | None = None

    def progress(self, data: Mapping[str, Any]) -> None:
        stage, total = str(data.get("stage", "")), data.get("total")
        if phase := data.get("phase"):
            stage = f"{stage} ({phase})"  # a bar of its own: training's adaptation first
        if self._bar is None or stage != self._stage:
            self.close()
            self._bar = tqdm(total=total, desc=stage, unit="step", file=sys.stderr, leave=True)
            self._stage = stage
        if total is not None and total != self._bar.total:
            self._bar.total = total  # a budgeted plan, set or re-planned
        self._bar.update(int(data.get("step", 0)) - self._bar.n)
        shown = {name: _short(data[name]) for name in _SHOWN if name in data}
        self._bar.set_postfix(shown, refresh=False)
        self._bar.refresh()

    def event(self, type_: EventType, data: Mapping[str, Any]) -> None:
        if type_ is EventType.log:
            tqdm.write(_log_line(data), file=sys.stderr)
        elif type_ is EventType.error:
            tqdm.write(f"error {data.get('code')}: {data.get('message')}", file=sys.stderr)

    def show(self, event: Event) -> None:
        if event.type is EventType.progress:
            self.progress(event.data)
        else:
            self.event(event.type, event.data)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _log_line(data: Mapping[str, Any]) -> str:
    if "message" in data:
        return str(data["message"])
    if "stage" in data:
        return f"{data['stage']} {data.get('state', '')}".strip()
    return str(dict(data))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
