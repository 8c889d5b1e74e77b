"""Schemathesis over the gateway's /openapi.json: requests generated from the document, sent to a
live gateway; each answer must not be a 5xx and must match the document (status, content type,
body schema). Shared by tests/test_gateway_fuzz.py (few examples) and bench/api_fuzz.py (many)."""

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import hypothesis
import hypothesis.errors
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Operations that wait on workers (none run here) or stream until their job ends.
SKIPPED = {("GET", "/v1/jobs/{job_id}/events")}


@dataclass
class FuzzReport:
    requests: int = 0
    server_errors: int = 0
    mismatches: int = 0
    operations: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def fuzz(
    base_url: str,
    max_examples: int,
    modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
    seed: int = 12,
) -> FuzzReport:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    report = FuzzReport()
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue
        report.operations += 1
        for mode in modes:
            _run(operation.as_strategy(generation_mode=mode), base_url, max_examples, seed, report)
    return report


def _run(
    strategy: "hypothesis.strategies.SearchStrategy[schemathesis.Case]",
    base_url: str,
    max_examples: int,
    seed: int,
    report: FuzzReport,
) -> None:
    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis.given(strategy)
    def one(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, timeout=30)
        report.requests += 1
        report.statuses[response.status_code] += 1
        if response.status_code >= 500:
            report.server_errors += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, FailureGroup) as failure:
            report.mismatches += 1
            what = f"{case.method} {case.formatted_path} -> {response.status_code}"
            report.failures.append(f"{what}: {str(failure)[:500]}")

    # Unsatisfiable: nothing to negate in an operation without parameters or body.
    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        one()
