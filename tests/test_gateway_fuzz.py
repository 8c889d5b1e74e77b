"""Schemathesis over /openapi.json against a live gateway, a bounded number of examples per
operation: no 5xx, and every answer matches the document."""

from collections.abc import Iterator

import pytest

from shared.settings import Settings
from testkit.fuzz import fuzz
from testkit.gateway import Gateway, serve


@pytest.fixture
def gateway(settings: Settings) -> Iterator[Gateway]:
    generous = settings.replace(
        predict_wait_s=0.05, rate_predict_burst=100_000, rate_jobs_burst=100_000
    )
    with serve(generous) as running:
        yield running


def test_generated_requests_get_no_5xx_and_documented_answers(gateway: Gateway) -> None:
    report = fuzz(gateway.url, max_examples=8)
    assert report.operations >= 15
    assert report.requests >= 100
    assert report.server_errors == 0, report.failures
    assert report.mismatches == 0, report.failures
    assert any(400 <= status < 500 for status in report.statuses)
    assert any(status < 300 for status in report.statuses)
