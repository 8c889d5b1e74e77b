"""Transient Redis and S3 errors: a progress write or a checkpoint upload that fails for a while
is retried or skipped, never the end of a training."""

from pathlib import Path
from typing import Any

import pytest
import redis
from botocore.exceptions import ClientError, EndpointConnectionError
from tenacity import stop_after_attempt, wait_none

from pipeline.checkpoints import S3Checkpoints
from shared.jobstore import JobStore
from shared.storage import transient_s3_error
from workers.reporting import JobReporter


class _AwayStore:
    def progress(self, job_id: str, data: Any) -> None:
        raise redis.ConnectionError("Redis restarting")


def test_a_progress_write_that_fails_is_logged_and_training_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reporter = JobReporter(_AwayStore(), "job-1")  # type: ignore[arg-type]
    reporter.progress({"step": 1})
    assert "progress of job job-1 not written" in caplog.text


class _FlakyS3:
    """Away for its first `outages` calls, then an S3 that records what it was given."""

    def __init__(self, outages: int) -> None:
        self.outages = outages
        self.uploaded: list[str] = []
        self.put: list[str] = []

    def _maybe_fail(self) -> None:
        if self.outages > 0:
            self.outages -= 1
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:8333")

    def upload_file(self, path: str, bucket: str, key: str) -> None:
        self._maybe_fail()
        self.uploaded.append(key)

    def put_object(self, **kwargs: Any) -> None:
        self._maybe_fail()
        self.put.append(kwargs["Key"])

    def get_paginator(self, name: str) -> Any:
        class _Pages:
            def paginate(self, **kwargs: Any) -> list[dict[str, Any]]:
                return [{"Contents": []}]

        return _Pages()


def test_a_checkpoint_upload_is_retried_while_s3_is_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(S3Checkpoints.save.retry, "wait", wait_none())  # type: ignore[attr-defined]
    (tmp_path / "weights.safetensors").write_bytes(b"w")
    s3 = _FlakyS3(outages=3)
    S3Checkpoints(s3, "bucket", "checkpoints/job/").save(7, tmp_path)  # type: ignore[arg-type]
    assert s3.uploaded == ["checkpoints/job/step-000000007/weights.safetensors"]
    assert s3.put == ["checkpoints/job/latest.json"]


def test_a_checkpoint_upload_gives_up_after_its_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(S3Checkpoints.save.retry, "wait", wait_none())  # type: ignore[attr-defined]
    monkeypatch.setattr(S3Checkpoints.save.retry, "stop", stop_after_attempt(5))  # type: ignore[attr-defined]
    (tmp_path / "weights.safetensors").write_bytes(b"w")
    with pytest.raises(EndpointConnectionError):
        S3Checkpoints(_FlakyS3(outages=99), "b", "c/").save(1, tmp_path)  # type: ignore[arg-type]


def test_job_store_clients_retry_a_lost_connection(redis_url: str) -> None:
    from shared.settings import Settings

    store = JobStore.from_settings(Settings(redis_url=redis_url, redis_retries=6))
    pool: Any = store.redis.connection_pool
    options = pool.connection_kwargs
    assert options["retry"].get_retries() == 6
    assert options["health_check_interval"] == Settings().redis_health_check_s


def _client_error(status: int, code: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


def test_only_transient_s3_errors_are_retried() -> None:
    assert transient_s3_error(EndpointConnectionError(endpoint_url="http://x"))
    assert transient_s3_error(_client_error(503, "ServiceUnavailable"))
    assert transient_s3_error(_client_error(400, "SlowDown"))
    assert not transient_s3_error(_client_error(404, "NoSuchKey"))
    assert not transient_s3_error(_client_error(403, "AccessDenied"))
    assert not transient_s3_error(ValueError("a bug"))
