import asyncio

import pytest

from shared.contracts.errors import ErrorInfo, JobCancelled, NotFound
from shared.contracts.jobs import EventType, Job, JobStatus, JobType, new_job_id
from shared.jobstore import AsyncJobStore, JobStore
from shared.settings import Settings
from tests.job_results import train_result


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore.from_settings(settings)


def make_job(store: JobStore, type_: JobType = JobType.train) -> Job:
    params = {"texts": ["a text"]} if type_ is JobType.predict else {"dataset": "s3://b/a.zip"}
    return store.create(Job(id=new_job_id(), type=type_, params=params))


def test_a_job_lives_through_its_events(store: JobStore) -> None:
    job = make_job(store)
    store.start(job.id)
    store.progress(job.id, {"stage": "train", "step": 1, "total": 10})
    store.succeed(job.id, train_result())

    ended = store.get(job.id)
    assert ended.status is JobStatus.succeeded
    assert ended.result == train_result()
    assert ended.progress == {"stage": "train", "step": 1, "total": 10}
    assert ended.started_at is not None
    assert ended.finished_at is not None
    events = store.events(job.id)
    assert [event.type for event in events] == [
        EventType.status,
        EventType.status,
        EventType.progress,
        EventType.status,
        EventType.result,
    ]
    assert [event.data.get("status") for event in events if event.type is EventType.status] == [
        "queued",
        "running",
        "succeeded",
    ]
    assert store.redis.ttl(store.keys.job(job.id)) > 0
    assert store.redis.ttl(store.keys.events(job.id)) > 0


def test_nothing_is_written_after_the_terminal_event(store: JobStore) -> None:
    job = make_job(store)
    store.cancel(job.id)
    with pytest.raises(JobCancelled):
        store.start(job.id)
    with pytest.raises(JobCancelled):
        store.succeed(job.id, train_result())
    events = store.events(job.id)
    assert events[-1].type is EventType.error
    assert events[-1].data["code"] == "cancelled"
    assert store.get(job.id).status is JobStatus.cancelled


def test_failure_keeps_its_message(store: JobStore) -> None:
    job = make_job(store)
    store.start(job.id)
    store.fail(job.id, ErrorInfo(code="dataset_invalid", message="train.csv line 3: bad"))
    assert store.get(job.id).error == ErrorInfo(
        code="dataset_invalid", message="train.csv line 3: bad"
    )
    assert store.events(job.id)[-1].data["message"] == "train.csv line 3: bad"


def test_unknown_jobs_are_not_found(store: JobStore) -> None:
    with pytest.raises(NotFound):
        store.get("nope")
    with pytest.raises(NotFound):
        store.progress("nope", {})


def test_list_filters_newest_first_and_forgets_expired(store: JobStore) -> None:
    jobs = [make_job(store, JobType.train), make_job(store, JobType.predict), make_job(store)]
    store.redis.delete(store.keys.job(jobs[0].id))
    assert [job.id for job in store.recent()] == [jobs[2].id, jobs[1].id]
    assert [job.id for job in store.recent(type_=JobType.predict)] == [jobs[1].id]
    assert store.redis.zscore(store.keys.index, jobs[0].id) is None


def test_async_store_reads_what_the_sync_store_wrote(store: JobStore, settings: Settings) -> None:
    job = make_job(store)

    async def scenario() -> None:
        astore = AsyncJobStore.from_settings(settings)
        first = await astore.events(job.id)
        assert [event.data for event in first] == [{"status": "queued"}]
        assert await astore.events(job.id, first[-1].id) == []
        store.start(job.id)
        later = await astore.events(job.id, first[-1].id)
        assert [event.data for event in later] == [{"status": "running"}]
        assert (await astore.get(job.id)).params == job.params
        cancelled = await astore.cancel(job.id)
        assert cancelled.status is JobStatus.cancelled
        await astore.redis.aclose()

    asyncio.run(scenario())
