"""Missed upload events: the listener's scan of incoming/ starts the pipeline of an archive that
has none, and never a second one for an upload an event started (or will start)."""

import hashlib
from collections.abc import Iterator

import pytest

from shared.settings import Settings
from shared.storage import s3_client
from tests.trigger_support import drop_tasks, pipeline_jobs
from workers.listener.events import ObjectEvent
from workers.listener.trigger import Outcome, PipelineTrigger, scan_incoming

BODY = b"PK\x05\x06" + b"\x00" * 18  # an empty zip: the scan never reads it
WEEK = 7 * 24 * 3600.0


@pytest.fixture
def trigger(settings: Settings) -> Iterator[PipelineTrigger]:
    made = PipelineTrigger.from_settings(settings)
    yield made
    drop_tasks(settings, {job.id for job in pipeline_jobs(settings)})
    made.redis.close()


def put(settings: Settings, key: str) -> ObjectEvent:
    """Upload an object; the event the store would have sent for it."""
    s3_client(settings.storage).put_object(Bucket=settings.storage.bucket, Key=key, Body=BODY)
    return ObjectEvent(
        name="ObjectCreated:Put",
        bucket=settings.storage.bucket,
        key=key,
        size=len(BODY),
        etag=hashlib.md5(BODY).hexdigest(),
        sequencer="0000018F00000001",
    )


def test_an_upload_whose_event_was_missed_is_started_by_the_scan_once(
    settings: Settings, trigger: PipelineTrigger
) -> None:
    put(settings, "incoming/missed/archive.zip")
    put(settings, "incoming/missed/notes.txt")
    s3 = s3_client(settings.storage)

    first = scan_incoming(trigger, s3, WEEK)
    again = scan_incoming(trigger, s3, WEEK)

    assert [handled.outcome for handled in first] == [Outcome.started]
    assert again == []
    [job] = pipeline_jobs(settings)
    assert job.params.dataset == f"s3://{settings.storage.bucket}/incoming/missed/archive.zip"  # type: ignore[union-attr]


def test_an_upload_its_event_started_is_left_alone_by_the_scan(
    settings: Settings, trigger: PipelineTrigger
) -> None:
    event = put(settings, "incoming/heard/archive.zip")
    assert trigger.handle(event).outcome is Outcome.started
    assert scan_incoming(trigger, s3_client(settings.storage), WEEK) == []
    assert len(pipeline_jobs(settings)) == 1


def test_an_event_that_comes_after_the_scan_started_its_upload_is_a_duplicate(
    settings: Settings, trigger: PipelineTrigger
) -> None:
    event = put(settings, "incoming/late/archive.zip")
    [scanned] = scan_incoming(trigger, s3_client(settings.storage), WEEK)
    late = trigger.handle(event)  # the store's webhook, retried until the listener is back
    assert late.outcome is Outcome.duplicate
    assert late.job_id == scanned.job_id
    assert len(pipeline_jobs(settings)) == 1


def test_objects_older_than_the_scan_window_are_left_alone(
    settings: Settings, trigger: PipelineTrigger
) -> None:
    put(settings, "incoming/old/archive.zip")
    assert scan_incoming(trigger, s3_client(settings.storage), max_age_s=-60) == []
    assert pipeline_jobs(settings) == []
