"""`fit` behaves as it did before its training loop was rewritten: the same events in the same
order, plans, checkpoints, resumed states, records and weights as the traces recorded then
(tests/fit_trace.py). Floats may differ by 1e-4 of themselves: CPUs with other kernels sum in
another order."""

import json
from pathlib import Path

import pytest

from tests.fit_trace import SCENARIOS, TRACES, cpu_kernels, differences, record_all


@pytest.fixture(scope="module")
def recorded() -> dict[str, object]:
    """The traces, where they were recorded on a CPU whose kernels this one shares; on another,
    a chance-level tiny model's ties in validation may break the other way and the traces part:
    there `python -m tests.fit_trace` records them afresh from the code as it stands."""
    traces = json.loads(TRACES.read_text())
    if traces["cpu"] != cpu_kernels():
        pytest.skip(f"traces recorded on {traces['cpu']}, not {cpu_kernels()}")
    scenarios: dict[str, object] = traces["scenarios"]
    return scenarios


def test_every_scenario_recorded_is_run(recorded: dict[str, object]) -> None:
    assert list(recorded) == list(SCENARIOS)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_fit_behaves_as_recorded(
    scenario: str, recorded: dict[str, object], tmp_path: Path
) -> None:
    actual = json.loads(json.dumps(record_all(tmp_path, [scenario])[scenario]))
    changed = list(differences(recorded[scenario], actual))
    assert changed == [], "\n".join(changed[:20])
