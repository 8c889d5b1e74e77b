"""`fit` behaves as it did before its training loop was rewritten: the same events in the same
order, plans, checkpoints, resumed states, records and weights as the traces recorded then
(tests/fit_trace.py). Floats may differ by 1e-4 of themselves: CPUs with other kernels sum in
another order."""

import json
from pathlib import Path

import pytest

from tests.fit_trace import SCENARIOS, TRACES, differences, record_all


@pytest.fixture(scope="module")
def recorded() -> dict[str, object]:
    traces: dict[str, object] = json.loads(TRACES.read_text())
    return traces


def test_every_scenario_recorded_is_run(recorded: dict[str, object]) -> None:
    assert list(recorded) == list(SCENARIOS)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_fit_behaves_as_recorded(
    scenario: str, recorded: dict[str, object], tmp_path: Path
) -> None:
    actual = json.loads(json.dumps(record_all(tmp_path, [scenario])[scenario]))
    changed = list(differences(recorded[scenario], actual))
    assert changed == [], "\n".join(changed[:20])
