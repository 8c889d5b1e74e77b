"""The API document tells the truth: schemathesis' own command line, every check (`-c all`) and
every phase, against the open local gateway finds no mismatch.

Aside: ignored_auth, which open mode answers by design (it takes every request, with or without
credentials), and use_after_free: DELETE /v1/jobs/{job_id} cancels a job, which stays readable
with status `cancelled`, as the document says. A body over the size limit is refused with 413,
which negative_data_rejection is told to take for a refusal."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import Settings
from testkit.gateway import Gateway, serve

SKIPPED_CHECKS = ("ignored_auth", "use_after_free")
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
"""


@pytest.fixture
def gateway(settings: Settings) -> Iterator[Gateway]:
    # No predict workers run here: predictions wait (202) rather than being shed (503).
    open_local = settings.replace(
        predict_wait_s=0.05,
        shed_predictions=False,
        rate_predict_burst=100_000,
        rate_jobs_burst=100_000,
    )
    with serve(open_local) as running:
        yield running


def _failures(report: Path) -> list[str]:
    found = []
    for line in report.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished or finished["status"] not in ("failure", "error"):
            continue
        recorder = finished["recorder"]
        for case_id, checks in recorder.get("checks", {}).items():
            case = recorder["cases"][case_id]["value"]
            for check in checks:
                if check["status"] == "failure":
                    what = f"{check['name']}: {case['method']} {case['path']}"
                    found.append(f"{what} {json.dumps(case.get('body'))[:200]}")
    return sorted(set(found))


def test_schemathesis_with_every_check_finds_no_mismatch(gateway: Gateway, tmp_path: Path) -> None:
    # From a scratch folder: schemathesis reads ./schemathesis.toml and keeps its crash cache
    # under ./.schemathesis.
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{gateway.url}/openapi.json",
            "--checks=all",
            f"--exclude-checks={','.join(SKIPPED_CHECKS)}",
            "--max-examples=5",
            "--seed=7",
            "--generation-deterministic",
            "--request-timeout=2",
            "--workers=1",
            "--no-color",
            "--report=ndjson",
            "--report-ndjson-path=report.ndjson",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    report = tmp_path / "report.ndjson"
    assert report.exists(), run.stdout[-4000:] + run.stderr[-4000:]
    assert _failures(report) == []
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
