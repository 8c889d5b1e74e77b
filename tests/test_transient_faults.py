"""Transient Redis and S3 errors: a progress write or a checkpoint upload that fails for a while
is retried or skipped, never the end of a training."""

import asyncio
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from tenacity import stop_after_attempt, wait_none

from gateway.jobs import send_first_task
from gateway.services import gateway_celery
from pipeline.checkpoints import S3Checkpoints
from shared import registry as registry_module
from shared.contracts.jobs import Job, JobType, new_job_id
from shared.contracts.models import MANIFEST, PRODUCTION, ModelInfo, new_version
from shared.contracts.stages import PREDICT, ROUTES
from shared.contracts.training import TrainingParams
from shared.jobstore import JobStore
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.storage import s3_client, transient_s3_error
from testkit.gateway import broker_messages, wait_until
from testkit.job_results import metrics
from testkit.servers import free_port, redis_server
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
    assert options["health_check_interval"] == Settings().redis.health_check_s


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


def _registered(settings: Settings) -> ModelRegistry:
    """A registry on the real S3 API holding one version (its manifest is what makes it one)."""
    registry = ModelRegistry.from_settings(settings.storage)
    info = ModelInfo(
        version=new_version(),
        created_at=datetime.now(UTC),
        base_model="tiny",
        dataset_sha256="0" * 64,
        metrics=metrics(),
        params=TrainingParams(rows_trained=40, rows_validated=4, steps=1),
    )
    registry.s3.put_object(
        Bucket=settings.storage.bucket,
        Key=registry.key(info.version, MANIFEST),
        Body=info.model_dump_json().encode(),
    )
    return registry


class _PointerWrites:
    """Sits in front of the registry client's writes of production.json: the first `fail` of
    them find the store away; with `land_first`, the first one reaches the store but its answer
    is lost on the way back."""

    def __init__(self, settings: Settings, fail: int, land_first: bool = False) -> None:
        self.fail, self.land_first = fail, land_first
        self.direct = s3_client(settings.storage)
        self.bucket = settings.storage.bucket
        self.calls = 0

    def __call__(self, request: Any, **kwargs: Any) -> None:
        if not request.url.endswith(PRODUCTION):
            return
        self.calls += 1
        if self.land_first and self.calls == 1:
            key = f"{Settings().storage.models_prefix}{PRODUCTION}"
            self.direct.put_object(Bucket=self.bucket, Key=key, Body=request.body)
            raise ReadTimeoutError(endpoint_url=request.url)
        if self.calls <= self.fail:
            raise EndpointConnectionError(endpoint_url=request.url)


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module.put_if.retry, "wait", wait_none())  # type: ignore[attr-defined]


@pytest.mark.usefixtures("no_backoff")
@pytest.mark.parametrize(
    ("fail", "land_first", "calls"),
    [
        # away for longer than the client's own 4 tries of each call: retried with backoff
        (6, False, 7),
        # the write landed but its answer was lost: the next write finds it, not a lost race
        (0, True, 2),
    ],
    ids=["store-away", "answer-lost"],
)
def test_a_promotion_goes_through_transient_s3_failures_of_its_write(
    settings: Settings, fail: int, land_first: bool, calls: int
) -> None:
    registry = _registered(settings)
    version = registry.versions()[0].version
    writes = _PointerWrites(settings, fail=fail, land_first=land_first)
    registry.s3.meta.events.register("before-send.s3.PutObject", writes)
    pointer = registry.promote(version, "better", expected=None)
    assert writes.calls == calls
    assert pointer.version == version
    assert registry.production() == pointer


def test_a_job_sent_while_the_broker_restarts_is_queued_once_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # where Redis is about to come back
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", redis_retries=30)
    job = Job(id=new_job_id(), type=JobType.predict, params={"texts": ["Oil prices slide"]})
    caplog.set_level(logging.INFO, logger="gateway")

    sending = threading.Thread(
        target=asyncio.run, args=(send_first_task(gateway_celery(settings), settings, job),)
    )
    sending.start()
    wait_until(lambda: "the task broker is away" in caplog.text)
    with redis_server(tmp_path, port):
        sending.join()
        assert broker_messages(settings, ROUTES[PREDICT]) == [(PREDICT, [job.id])]
