"""Traces of `fit`: what a rewrite of the training loop must keep, recorded scenario by scenario.

A trace holds every progress report and event in their order, the steps checkpointed, how each
run ended, the training record and state, and a fingerprint of the final weights; whatever a
clock decides (ETAs, rates, seconds, predicted minutes) is taken out. The runs train a tiny BERT
(testkit.families, kept in tests/data/fit_bases) on archive_mini in one thread, so that they
take seconds and sum in one order.

    PYTHONPATH=. .venv/bin/python -m tests.fit_trace   # rewrites tests/data/fit_traces.json
"""

import contextlib
import dataclasses
import json
import math
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

import pipeline
from pipeline.checkpoints import LocalCheckpoints
from pipeline.plan import Rate
from pipeline.train import FitResult, fit
from shared.contracts.errors import JobCancelled
from shared.contracts.jobs import EventType
from shared.contracts.training import TrainConfig
from shared.settings import Settings
from testkit.families import tiny_family_model
from testkit.models import Recorder, mini_dataset

TRACES = Path(__file__).resolve().parent / "data" / "fit_traces.json"
BASES = TRACES.parent / "fit_bases"
BASE = "<base>"
# Fields a clock decides: progress rates and ETAs, plans' predictions and measured rates, times.
TIMED_FIELDS = frozenset(
    {
        "eta_s",
        "samples_per_s",
        "tokens_per_s",
        "pace_tokens_per_s",
        "predicted_s",
        "fine_tuning_s",
        "seconds",
        "loop_seconds",
        "train_seconds",
    }
)
# The same in words, and the losses a message rounds (the plan's fields keep them unrounded).
TIMED_TEXT = [
    (
        re.compile(
            r"[\d.]+ of ([\d.]+) minutes predicted from [\d.]+ samples/s \([\d.]+ tokens/s\)"
        ),
        r"# of \1 minutes predicted from # samples/s (# tokens/s)",
    ),
    (re.compile(r"at the pace so far, [\w.]+ tokens/s"), "at the pace so far, # tokens/s"),
    (re.compile(r"(masked-LM on \d+ texts(?:, cut [^)]*\))?), [\d.]+ minutes"), r"\1, # minutes"),
    (re.compile(r"loss [\d.]+ to [\d.]+"), "loss # to #"),
    (re.compile(r"\([\d.]+ minutes predicted\)"), "(# minutes predicted)"),
    (re.compile(r"fine-tuning afresh \([\d.]+ minutes\)"), "fine-tuning afresh (# minutes)"),
    (re.compile(r"at its pace, \d+ tokens/s"), "at its pace, # tokens/s"),
    (re.compile(r"would end at [\d.]+ minutes"), "would end at # minutes"),
]


def scrub(value: Any, base: str) -> Any:
    """The value without what a clock decides, the base model's folder named BASE."""
    if isinstance(value, Mapping):
        return {
            str(key): scrub(item, base) for key, item in value.items() if key not in TIMED_FIELDS
        }
    if isinstance(value, list | tuple):
        return [scrub(item, base) for item in value]
    if isinstance(value, str):
        value = value.replace(base, BASE)
        for pattern, replacement in TIMED_TEXT:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, EventType):
        return value.value
    return value


class TraceRecorder(Recorder):
    """A Recorder that also keeps progress and events in one sequence, as they came."""

    def __init__(self, **failing: Any) -> None:
        super().__init__(**failing)
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def progress(self, data: Mapping[str, Any]) -> None:
        self.entries.append(("progress", dict(data)))
        super().progress(data)

    def event(self, type_: EventType, data: Mapping[str, Any]) -> None:
        self.entries.append((type_.value, dict(data)))
        super().event(type_, data)


class SavedSteps(LocalCheckpoints):
    """Local checkpoints that remember the steps saved."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.saved: list[int] = []

    def save(self, step: int, directory: Path) -> None:
        self.saved.append(step)
        super().save(step, directory)


class SlowedRate(Rate):
    """Adaptation's pace, as if each step took an hour more: longer than any budget here."""

    def add(self, tokens: int, seconds: float) -> None:
        super().add(tokens, seconds + 3600.0)


@contextlib.contextmanager
def slowed_adaptation() -> Iterator[None]:
    """Adaptation's pace made SlowedRate, wherever the training loop's modules take Rate from
    (the planner's fine-tuning pace is made in pipeline.plan, and stays)."""
    modules = [
        module
        for name, module in sys.modules.items()
        if name.startswith("pipeline.") and name != "pipeline.plan" and hasattr(module, "Rate")
    ]
    for module in modules:
        module.Rate = SlowedRate  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in modules:
            module.Rate = Rate  # type: ignore[attr-defined]


def weights(model: torch.nn.Module) -> dict[str, list[float]]:
    """Per tensor: its L1 and L2 norms, least and greatest, first and last values (no sums,
    whose noise grows with the tensor while a sum may lie near zero)."""
    prints = {}
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().to("cpu", torch.float64).flatten()
        prints[name] = [
            float(flat.abs().sum()),
            float(flat.norm()),
            float(flat.min()),
            float(flat.max()),
            float(flat[0]),
            float(flat[-1]),
        ]
    return prints


def checkpointed(checkpoints: LocalCheckpoints, base: str) -> dict[str, Any] | None:
    """The state that the latest checkpoint holds, whichever its layout: what a resumed run
    starts from."""
    latest = checkpoints.latest()
    if latest is None:
        return None
    [state_file] = checkpoints.fetch(latest, checkpoints.root).glob("*.pt")
    saved = torch.load(state_file, map_location="cpu", weights_only=True)
    state: dict[str, Any] = scrub(saved["state"], base)
    return state


def outcome(result: FitResult, base: str) -> dict[str, Any]:
    state = dataclasses.asdict(result.state)
    return {
        "record": scrub(result.record().model_dump(mode="json"), base),
        "state": scrub(state, base),
        "resumed_from": result.resumed_from,
        "rows_trained": result.rows_trained,
        "config": scrub(result.config.model_dump(mode="json"), base),
        "validation": result.validation.model_dump(mode="json"),
        "linear_weight": None if result.linear is None else result.linear.weight,
        "weights": weights(result.model),
    }


@dataclasses.dataclass(frozen=True)
class Step:
    """One call of fit in a scenario: its config changes, and how its reporter fails."""

    changes: Mapping[str, Any]
    failing: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    slowed: bool = False


COMMON: dict[str, Any] = {
    "batch_size": 16,
    "train_rows": 96,  # 6 steps an epoch
    "val_fraction": 0.1,
    "val_max_rows": 24,
    "max_length": 48,
    "bucket_pool": 2,
    "epochs": 2.0,
    "evals_per_epoch": 2,
    "lr": 1e-2,  # a tiny BERT at chance level: its losses differ from evaluation to evaluation
    "adapt_lr": 1e-3,
    "warmup": 0.1,
    "bf16": False,
    "linear_member": False,
    "probe_steps": 2,
}
BUDGET: dict[str, Any] = {"budget_s": 600.0, "max_epochs": 2.0}
ADAPT: dict[str, Any] = {"adapt_epochs": 1.0}
LONG_ADAPT: dict[str, Any] = {"adapt_epochs": 2.0}
SCENARIOS: dict[str, list[Step]] = {
    "plain": [Step({"linear_member": True, "patience": 1})],
    "cancelled": [Step({}, {"cancel_after": 5})],
    "adapted": [Step(ADAPT)],
    "unadaptable": [Step({"base": "gpt2", **ADAPT})],
    "budgeted_adapted": [Step(BUDGET | ADAPT)],
    "budgeted_resumed": [
        Step(BUDGET | {"ema_decay": 0.9}, {"fail_at": 8}),
        Step(BUDGET | {"ema_decay": 0.9}),
    ],
    "adaptation_resumed": [
        Step(LONG_ADAPT, {"fail_at": 6, "fail_phase": "adapt"}),
        Step(LONG_ADAPT, {"fail_at": 2}),
        Step(LONG_ADAPT),
    ],
    "budgeted_adaptation_resumed": [
        Step(BUDGET | LONG_ADAPT, {"fail_at": 8, "fail_phase": "adapt"}),
        Step(BUDGET | LONG_ADAPT),
    ],
    "adaptation_cut": [Step(BUDGET | LONG_ADAPT, slowed=True)],
}


def base_model(family: str) -> str:
    """The family's tiny model, built once and kept: a vocabulary trained again would differ."""
    folder = BASES / family
    if not folder.exists():
        torch.manual_seed(0)
        tiny_family_model(family, folder)
    return str(folder)


def run_scenario(steps: list[Step], root: Path) -> list[dict[str, Any]]:
    """Each call of fit in turn, over one checkpoint folder: its trace."""
    settings = Settings(
        progress_interval_s=0.0,
        data_dir=root / "data",
        torch_threads=1,
        checkpoint_every_steps=3,
        checkpoint_interval_s=3600.0,
    )
    rows = mini_dataset(settings).train.rows
    checkpoints = SavedSteps(root / "checkpoints")
    checkpoints.clear()
    traces = []
    for step in steps:
        changes = dict(step.changes)
        base = base_model(changes.pop("base", "bert"))
        config = TrainConfig(base_model=base, **(COMMON | changes))
        recorder = TraceRecorder(**step.failing)
        checkpoints.saved = []
        with slowed_adaptation() if step.slowed else contextlib.nullcontext():
            try:
                result = fit(config, rows, settings, recorder, checkpoints)
                ended: dict[str, Any] = {"finished": outcome(result, base)}
            except (RuntimeError, JobCancelled) as error:
                ended = {"raised": f"{type(error).__name__}: {error}"}
        traces.append(
            {
                "entries": scrub(recorder.entries, base),
                "saved": checkpoints.saved,
                "latest": checkpoints.latest(),
                "checkpointed": checkpointed(checkpoints, base),
                "cancel_asked": recorder.asked,
                **ended,
            }
        )
    return traces


def record_all(root: Path, names: list[str] | None = None) -> dict[str, Any]:
    """The traces of the scenarios named (all by default), torch's threads as they were after."""
    threads = torch.get_num_threads()
    try:
        return {
            name: run_scenario(SCENARIOS[name], root / name) for name in names or list(SCENARIOS)
        }
    finally:
        torch.set_num_threads(threads)


def differences(
    expected: Any, actual: Any, where: str = "", rel: float = 1e-4, abs_: float = 1e-6
) -> Iterator[str]:
    """Where two traces differ: exactly in types, structure, order, integers and text; beyond
    `rel` (or `abs_` near zero) in floats."""
    if type(expected) is not type(actual):
        yield f"{where}: {expected!r} became {actual!r}"
    elif isinstance(expected, dict):
        if list(expected) != list(actual):
            yield f"{where}: keys {list(expected)} became {list(actual)}"
        else:
            for key in expected:
                yield from differences(expected[key], actual[key], f"{where}.{key}", rel, abs_)
    elif isinstance(expected, list):
        if len(expected) != len(actual):
            yield f"{where}: {len(expected)} items became {len(actual)}"
        for index, (old, new) in enumerate(zip(expected, actual, strict=False)):
            yield from differences(old, new, f"{where}[{index}]", rel, abs_)
    elif isinstance(expected, float):
        if not math.isclose(expected, actual, rel_tol=rel, abs_tol=abs_):
            yield f"{where}: {expected!r} became {actual!r}"
    elif expected != actual:
        yield f"{where}: {expected!r} became {actual!r}"


def cpu_kernels() -> str:
    """The CPU's vendor and widest vector extension: what picks torch's fp32 kernels, and so the
    order their sums run in."""
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    widest = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "older"
    return f"{fields.get('vendor_id', 'unknown')}/{widest}"


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        traces = record_all(Path(scratch))
    TRACES.parent.mkdir(parents=True, exist_ok=True)
    recorded = {"cpu": cpu_kernels(), "scenarios": traces}
    TRACES.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"wrote {TRACES} ({TRACES.stat().st_size // 1024} KiB) from {pipeline.__file__}")


if __name__ == "__main__":
    main()
