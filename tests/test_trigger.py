"""One uploaded archive.zip version starts one pipeline job, on a real Redis and broker."""

import time
from collections.abc import Callable, Iterator

import pytest
from celery import Celery

import workers.listener.trigger
from shared.broker import dispatch
from shared.contracts.jobs import EventType, Job, JobStatus
from shared.contracts.stages import INGEST
from shared.jobstore import JobStore
from shared.settings import Settings
from shared.storage import is_ticket_key, ticket_key
from tests.trigger_support import drop_tasks, pipeline_jobs, sent_tasks
from workers.listener.events import ObjectEvent
from workers.listener.trigger import Outcome, PipelineTrigger


@pytest.fixture
def trigger(settings: Settings) -> Iterator[PipelineTrigger]:
    made = PipelineTrigger.from_settings(settings)
    yield made
    drop_tasks(settings, {job.id for job in pipeline_jobs(settings)})
    made.redis.close()


def upload(
    settings: Settings, key: str = "incoming/u1/archive.zip", **fields: object
) -> ObjectEvent:
    values: dict[str, object] = {
        "name": "ObjectCreated:Put",
        "bucket": settings.storage.bucket,
        "key": key,
        "size": 51153,
        "etag": "202b3840d24ff001061372ab171da160",
        "sequencer": "0055AED6DCD90281E5",
        **fields,
    }
    return ObjectEvent.model_validate(values)


def test_an_upload_starts_one_pipeline_job_that_records_its_source(
    settings: Settings, trigger: PipelineTrigger
) -> None:
    event = upload(settings, version_id="v1")
    handled = trigger.handle(event)

    assert handled.outcome is Outcome.started
    [job] = pipeline_jobs(settings)
    assert job.id == handled.job_id
    assert job.status is JobStatus.queued
    assert job.params.model_dump(mode="json", exclude_none=True) == {
        "type": "pipeline",
        "dataset": f"s3://{settings.storage.bucket}/incoming/u1/archive.zip",
        "with_feedback": False,
        "source": {
            "bucket": settings.storage.bucket,
            "key": "incoming/u1/archive.zip",
            "version_id": "v1",
            "etag": "202b3840d24ff001061372ab171da160",
            "size": 51153,
            "sequencer": "0055AED6DCD90281E5",
        },
    }
    assert sent_tasks(settings, job.id) == [INGEST]


def test_the_same_event_three_times_starts_one_job(
    settings: Settings, trigger: PipelineTrigger
) -> None:
    event = upload(settings)
    outcomes = [trigger.handle(event) for _ in range(3)]

    assert [handled.outcome for handled in outcomes] == [
        Outcome.started,
        Outcome.duplicate,
        Outcome.duplicate,
    ]
    [job] = pipeline_jobs(settings)
    assert {handled.job_id for handled in outcomes} == {job.id}
    assert sent_tasks(settings, job.id) == [INGEST]


def test_each_new_version_of_the_object_starts_its_own_job(
    settings: Settings, trigger: PipelineTrigger
) -> None:
    first = trigger.handle(upload(settings, sequencer="01"))
    second = trigger.handle(upload(settings, sequencer="02"))
    assert (first.outcome, second.outcome) == (Outcome.started, Outcome.started)
    assert first.job_id != second.job_id
    assert len(pipeline_jobs(settings)) == 2


def test_an_upload_ticket_starts_one_job_however_often_it_is_used(
    settings: Settings, trigger: PipelineTrigger
) -> None:
    key = ticket_key(settings.storage)
    assert is_ticket_key(key, settings.storage)
    first = trigger.handle(upload(settings, key=key, sequencer="01"))
    again = trigger.handle(upload(settings, key=key, sequencer="02", etag="0" * 32))
    assert (first.outcome, again.outcome) == (Outcome.started, Outcome.duplicate)
    assert again.job_id == first.job_id
    assert len(pipeline_jobs(settings)) == 1
    for other in ("incoming/u1/archive.zip", key.replace("tickets/", "tickets/x/"), key + "x"):
        assert not is_ticket_key(other, settings.storage), other


@pytest.mark.parametrize(
    ("key", "fields"),
    [
        ("datasets/abc/archive.zip", {}),
        ("incoming/u1/report.json", {}),
        ("incoming/u1/archive.zip.part", {}),
        ("other/incoming/archive.zip", {}),
        ("incoming/u1/archive.zip", {"name": "ObjectRemoved:Delete"}),
        ("incoming/u1/archive.zip", {"bucket": "someone-elses"}),
    ],
)
def test_other_objects_and_events_start_nothing(
    settings: Settings, trigger: PipelineTrigger, key: str, fields: dict[str, object]
) -> None:
    handled = trigger.handle(upload(settings, key, **fields))
    assert handled.outcome is Outcome.ignored
    assert handled.job_id is None
    assert pipeline_jobs(settings) == []


def failing_once(error: BaseException) -> Callable[[Celery, Job], None]:
    calls = 0

    def send(app: Celery, job: Job) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        dispatch(app, job)

    return send


def test_a_delivery_that_failed_before_dispatch_is_finished_by_the_next(
    settings: Settings, trigger: PipelineTrigger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        workers.listener.trigger, "dispatch", failing_once(ConnectionError("broker away"))
    )
    event = upload(settings)

    with pytest.raises(ConnectionError):
        trigger.handle(event)
    [created] = pipeline_jobs(settings)
    assert sent_tasks(settings, created.id) == []

    handled = trigger.handle(event)
    assert handled.outcome is Outcome.resumed
    assert handled.job_id == created.id
    assert trigger.handle(event).outcome is Outcome.duplicate

    [job] = pipeline_jobs(settings)
    assert job.id == created.id
    assert sent_tasks(settings, job.id) == [INGEST]
    store = JobStore(trigger.redis, settings.redis.key_prefix, settings.jobs)
    assert [event.type for event in store.events(job.id)] == [EventType.status]


class Died(BaseException):
    """Stands for the process being killed: nothing after it runs, no clean-up either."""


def test_a_listener_that_died_half_way_leaves_the_version_to_the_next_delivery(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.replace(trigger_lease_s=0.2)
    monkeypatch.setattr(workers.listener.trigger, "dispatch", failing_once(Died()))
    dead, alive = PipelineTrigger.from_settings(settings), PipelineTrigger.from_settings(settings)
    event = upload(settings)
    try:
        with pytest.raises(Died):
            dead.handle(event)
        # While the dead one's lease lasts, the version is taken; the delivery must come again.
        busy = alive.handle(event)
        assert busy.outcome is Outcome.busy
        assert not busy.outcome.acknowledged
        time.sleep(0.3)
        handled = alive.handle(event)
        assert handled.outcome is Outcome.resumed

        [job] = pipeline_jobs(settings)
        assert handled.job_id == busy.job_id == job.id
        assert sent_tasks(settings, job.id) == [INGEST]
    finally:
        drop_tasks(settings, {job.id for job in pipeline_jobs(settings)})
