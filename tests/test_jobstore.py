import asyncio
import json
from datetime import timedelta

import pytest

from shared.contracts.errors import ErrorInfo, JobCancelled, NotFound
from shared.contracts.jobs import EventType, Job, JobStatus, JobType, new_job_id
from shared.contracts.times import utcnow
from shared.jobstore import AsyncJobStore, JobStore, PredictLoad
from shared.settings import Settings
from testkit.job_results import predict_result, train_result

TRAIN = {"dataset": "s3://b/a.zip"}


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
    assert store.redis.zscore(store.keys.index(), jobs[0].id) is None


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


def test_an_answered_prediction_keeps_its_answer_not_its_texts_and_expires(
    store: JobStore, settings: Settings
) -> None:
    texts = ["first text", "second text"]
    job = store.create(Job(id=new_job_id(), type=JobType.predict, params={"texts": texts}))
    key = store.keys.job(job.id)
    assert 0 < store.redis.ttl(key) <= settings.jobs.predict_ttl_s
    assert not store.redis.exists(store.keys.events(job.id))
    assert store.predict_load().pending == 2

    [claim] = store.claim_many([job.id], "agnews.predict")
    assert claim.refused is None
    assert json.loads(claim.params)["texts"] == texts
    store.finish_many([(job.id, predict_result(labels=("Sports", "World")))])

    answered = store.get(job.id)
    assert answered.status is JobStatus.succeeded
    assert (answered.params, answered.texts) == (None, 2)
    assert answered.result == predict_result(labels=("Sports", "World"))
    assert "params" not in store.redis.hkeys(key)
    assert 0 < store.redis.ttl(key) <= settings.jobs.predict_ttl_s  # not extended at the end
    assert not store.redis.exists(store.keys.events(job.id))
    [(_, fields)] = store.redis.xrange(store.keys.answers)
    assert fields == {"job": job.id, "type": "result"}
    assert store.predict_load() == PredictLoad(pending=0, answered=2)
    assert not store.redis.zscore(store.keys.active, key)


def test_predict_jobs_leave_their_index_once_their_retention_has_passed(
    store: JobStore, settings: Settings
) -> None:
    old = Job(
        id=new_job_id(),
        type=JobType.predict,
        params={"texts": ["old"]},
        created_at=utcnow() - timedelta(seconds=settings.jobs.predict_ttl_s + 1),
    )
    store.create(old)
    assert store.redis.zscore(store.keys.predict_index, old.id) is not None
    fresh = make_job(store, JobType.predict)
    assert store.redis.zscore(store.keys.predict_index, old.id) is None
    assert [job.id for job in store.recent(type_=JobType.predict)] == [fresh.id]


def test_owners_list_their_own_jobs_from_their_own_index(store: JobStore) -> None:
    mine = store.create(Job(id=new_job_id(), type=JobType.train, params=TRAIN, owner="ci"))
    theirs = store.create(Job(id=new_job_id(), type=JobType.train, params=TRAIN, owner="ops"))
    guess = store.create(
        Job(id=new_job_id(), type=JobType.predict, params={"texts": ["t"]}, owner="ci")
    )
    assert store.redis.zcard(store.keys.index("ci")) == 1
    assert [job.id for job in store.recent(owner="ci")] == [guess.id, mine.id]
    assert [job.id for job in store.recent(owner="ops")] == [theirs.id]
    assert {job.id for job in store.recent()} == {mine.id, theirs.id, guess.id}


def test_the_sweep_drops_index_entries_of_jobs_that_expired(store: JobStore) -> None:
    jobs = [
        store.create(Job(id=new_job_id(), type=JobType.train, params=TRAIN, owner="ci"))
        for _ in range(3)
    ]
    store.redis.delete(store.keys.job(jobs[0].id), store.keys.job(jobs[2].id))
    assert store.sweep_indexes(budget=10) == 4  # two jobs, each in two indexes
    assert store.redis.zrange(store.keys.index(), 0, -1) == [jobs[1].id]
    assert store.redis.zrange(store.keys.index("ci"), 0, -1) == [jobs[1].id]
