"""The bucket's lifecycle where the store has none: finished upload tickets and old uploads leave
incoming/, the checkpoints of jobs that ended or expired leave checkpoints/, and batch jobs' files
leave predictions/ past their retention."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from shared.contracts.errors import ErrorInfo
from shared.contracts.jobs import Job, JobType, new_job_id
from shared.settings import Settings
from shared.storage import s3_client, ticket_key
from tests.test_listener_scan import put
from tests.trigger_support import drop_tasks, pipeline_jobs
from workers.listener.janitor import sweep_bucket
from workers.listener.trigger import PipelineTrigger


@pytest.fixture
def trigger(settings: Settings) -> Iterator[PipelineTrigger]:
    made = PipelineTrigger.from_settings(settings)
    yield made
    drop_tasks(settings, {job.id for job in pipeline_jobs(settings)})
    made.redis.close()


def keys(settings: Settings, prefix: str) -> list[str]:
    listed = s3_client(settings.storage).list_objects_v2(
        Bucket=settings.storage.bucket, Prefix=prefix
    )
    return sorted(item["Key"] for item in listed.get("Contents", []))


def test_a_ticket_whose_pipeline_ended_and_uploads_past_their_retention_leave_incoming(
    trigger: PipelineTrigger, settings: Settings
) -> None:
    s3 = s3_client(settings.storage)
    done, waiting = ticket_key(settings.storage), ticket_key(settings.storage)
    for key in (done, waiting):
        trigger.handle(put(settings, key))
    mine = put(settings, "incoming/mine/archive.zip")
    ended = trigger.job_for(done)
    assert ended is not None
    trigger.store.fail(ended, ErrorInfo(code="dataset_invalid", message="no train.csv"))

    swept = sweep_bucket(trigger, s3)
    assert swept.incoming == [done]
    assert keys(settings, "incoming/") == sorted([waiting, mine.key])

    later = datetime.now(UTC) + timedelta(seconds=settings.listener.incoming_retention_s + 60)
    assert sorted(sweep_bucket(trigger, s3, later).incoming) == sorted([waiting, mine.key])
    assert keys(settings, "incoming/") == []


def test_checkpoints_leave_once_their_job_has_ended_or_expired(
    trigger: PipelineTrigger, settings: Settings
) -> None:
    s3, store, prefix = (
        s3_client(settings.storage),
        trigger.store,
        settings.storage.checkpoints_prefix,
    )
    params = {"dataset": "s3://agnews/incoming/a/archive.zip"}
    running, failed = (
        store.create(Job(id=new_job_id(), type=JobType.pipeline, params=params)) for _ in range(2)
    )
    store.fail(failed.id, ErrorInfo(code="worker_lost", message="worker lost 3 times"))
    for job_id in (running.id, failed.id, "expired-job"):
        for name in ("step-000000010/model.safetensors", "latest.json"):
            s3.put_object(Bucket=settings.storage.bucket, Key=f"{prefix}{job_id}/{name}", Body=b"x")

    swept = sweep_bucket(trigger, s3)
    assert sorted(swept.checkpoints) == sorted([failed.id, "expired-job"])
    assert {key.split("/")[1] for key in keys(settings, prefix)} == {running.id}


def test_batch_outputs_and_left_parts_leave_predictions_past_their_retention(
    trigger: PipelineTrigger, settings: Settings
) -> None:
    s3, bucket = s3_client(settings.storage), settings.storage.bucket
    prefix = settings.storage.predictions_prefix
    written = [
        f"{prefix}{new_job_id()}/predictions.csv",
        f"{prefix}{new_job_id()}/parts/000000.csv",  # a failed job's
    ]
    kept = ["datasets/a/archive.zip", "models/v1/manifest.json"]
    for key in (*written, *kept):
        s3.put_object(Bucket=bucket, Key=key, Body=b"row,label\n")

    retention = timedelta(seconds=settings.listener.predictions_retention_s)
    within = datetime.now(UTC) + retention - timedelta(minutes=5)
    assert sweep_bucket(trigger, s3, within).predictions == []
    assert keys(settings, prefix) == sorted(written)

    past = datetime.now(UTC) + retention + timedelta(minutes=1)
    assert sorted(sweep_bucket(trigger, s3, past).predictions) == sorted(written)
    assert keys(settings, prefix) == []
    assert keys(settings, "datasets/") + keys(settings, "models/") == kept
