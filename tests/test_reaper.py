"""No job stuck: heartbeats, delivery counts, the reaper's verdicts and stale deliveries."""

import time
from datetime import timedelta

import pytest

from shared.contracts.errors import ErrorInfo
from shared.contracts.jobs import Job, JobStatus, JobType, TaskCall, new_job_id
from shared.contracts.results import JobResult
from shared.contracts.stages import INGEST, PREDICT, TRAIN
from shared.contracts.times import utcnow
from shared.jobstore import JobStore
from shared.reaper import JOB_TIMEOUT, WORKER_LOST, reap_once, verdict
from shared.settings import ReaperSettings, Settings
from testkit.job_results import train_result
from workers.predict import serve_batch
from workers.reporting import JobReporter, run_step, stale_delivery

RULES = ReaperSettings(
    heartbeat_timeout_s=60, max_deliveries=3, queued_timeout_s=3600, predict_job_timeout_s=300
)
NOW = utcnow()


def _job(type_: JobType = JobType.pipeline, **fields: object) -> Job:
    params = {"texts": ["a"]} if type_ is JobType.predict else {"dataset": "s3://b/a.zip"}
    values: dict[str, object] = {"id": new_job_id(), "type": type_, "params": params}
    return Job.model_validate({**values, **fields})


def _ago(seconds: float) -> object:
    return NOW - timedelta(seconds=seconds)


TRAINING = TaskCall(name=TRAIN, arguments={"dataset_sha256": "abc"})


def test_a_running_job_whose_worker_stopped_beating_gets_its_task_sent_again() -> None:
    job = _job(status="running", task=TRAINING, deliveries={TRAIN: 1}, heartbeat_at=_ago(61))
    found = verdict(job, NOW, RULES)
    assert found is not None
    assert found.action == "resend"
    assert found.task is not None
    assert (found.task.name, found.task.arguments) == (TRAIN, {"dataset_sha256": "abc"})
    assert found.task.id != TRAINING.id  # a new call: the copy the broker restores is stale
    assert "vanished" in found.reason


def test_a_job_beating_or_waiting_for_its_next_stage_is_left_alone() -> None:
    beating = _job(status="running", task=TRAINING, deliveries={TRAIN: 1}, heartbeat_at=_ago(5))
    waiting = _job(status="running", task=TRAINING, deliveries={INGEST: 1}, heartbeat_at=_ago(600))
    assert verdict(beating, NOW, RULES) is None
    assert verdict(waiting, NOW, RULES) is None


def test_a_task_delivered_max_times_fails_its_job_saying_the_worker_was_lost() -> None:
    job = _job(status="running", task=TRAINING, deliveries={TRAIN: 3}, heartbeat_at=_ago(61))
    found = verdict(job, NOW, RULES)
    assert found is not None
    assert found.action == "fail"
    assert found.error is not None
    assert found.error.code == WORKER_LOST
    assert found.error.message.startswith("worker lost 3 times running agnews.train")


def test_queued_and_predict_jobs_expire_naming_what_they_waited_for() -> None:
    queued = verdict(_job(created_at=_ago(3601)), NOW, RULES)
    assert queued is not None
    assert queued.error is not None
    assert queued.error.code == JOB_TIMEOUT
    assert "no worker took agnews.ingest from the evaluate queue" in queued.error.message
    predict = verdict(_job(JobType.predict, status="running", created_at=_ago(301)), NOW, RULES)
    assert predict is not None
    assert predict.action == "fail"
    assert verdict(_job(JobType.predict, created_at=_ago(10)), NOW, RULES) is None
    assert verdict(_job(created_at=_ago(30)), NOW, RULES) is None


def test_a_copy_of_an_earlier_call_is_stale() -> None:
    job = _job(status="running", task=TRAINING, deliveries={TRAIN: 1}, heartbeat_at=_ago(600))
    assert stale_delivery(job, TRAIN, TRAINING.id, NOW, 60) is None  # its worker died: run again
    assert stale_delivery(job, TRAIN, "another-call", NOW, 60) is not None
    assert stale_delivery(job, INGEST, None, NOW, 60) is not None  # the job moved on
    alive = job.model_copy(update={"heartbeat_at": _ago(5), "running_call": TRAINING.id})
    assert stale_delivery(alive, TRAIN, TRAINING.id, NOW, 60) == "running on a live worker"
    assert stale_delivery(alive, TRAIN, None, NOW, 60) == "running on a live worker"
    # The reaper just sent the task again (a fresh beat, but no worker runs the new call yet).
    resent = job.model_copy(update={"heartbeat_at": _ago(1), "running_call": "the-dead-call"})
    assert stale_delivery(resent, TRAIN, TRAINING.id, NOW, 60) is None
    assert stale_delivery(_job(), INGEST, None, NOW, 60) is None  # a job's first task


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore.from_settings(settings)


def _create(store: JobStore, type_: JobType = JobType.pipeline) -> Job:
    return store.create(_job(type_))


def test_a_step_beats_while_it_runs_and_counts_its_deliveries(store: JobStore) -> None:
    job = _create(store)
    policy = ReaperSettings(max_deliveries=3, heartbeat_interval_s=0.05, heartbeat_timeout_s=60)
    call = TaskCall(name=INGEST)
    beats: list[object] = []

    def step(job: Job, reporter: JobReporter) -> JobResult | None:
        for _ in range(3):
            time.sleep(0.1)
            beats.append(store.get(job.id).heartbeat_at)
        return None

    run_step(store, job.id, step, call, policy)
    seen = store.get(job.id)
    assert seen.status is JobStatus.running
    assert seen.deliveries == {INGEST: 1}
    assert seen.task == call
    assert len(set(beats)) == 3  # a new beat every interval


def test_a_task_that_keeps_killing_its_worker_ends_its_job_after_max_deliveries(
    store: JobStore,
) -> None:
    job = _create(store)
    policy = ReaperSettings(max_deliveries=3, heartbeat_interval_s=10, heartbeat_timeout_s=0.01)
    call = TaskCall(name=INGEST)
    runs = 0

    def dies(job: Job, reporter: JobReporter) -> JobResult | None:
        nonlocal runs
        runs += 1
        return None  # as if the worker died here: nothing ends the job

    for _ in range(5):
        time.sleep(0.02)  # the dead worker's beat goes stale
        run_step(store, job.id, dies, call, policy, call.id)
    ended = store.get(job.id)
    assert runs == 3
    assert ended.status is JobStatus.failed
    assert ended.error is not None
    assert ended.error.message.startswith("worker lost 3 times")


def test_reap_once_resends_a_vanished_workers_task_and_fails_an_old_queued_job(
    store: JobStore, settings: Settings
) -> None:
    vanished = _create(store)
    store.start(vanished.id)
    store.count_delivery(vanished.id, TRAIN)
    store.heartbeat(vanished.id, TRAINING)
    store.redis.hset(store.keys.job(vanished.id), "heartbeat_at", _ago(120).isoformat())  # type: ignore[attr-defined]
    forgotten = _create(store)
    store.redis.hset(store.keys.job(forgotten.id), "created_at", _ago(7200).isoformat())  # type: ignore[attr-defined]
    sent: list[tuple[str, TaskCall]] = []

    reap_once(
        store,
        lambda job_id, call: sent.append((job_id, call)),
        RULES,
    )

    assert [(job_id, call.name) for job_id, call in sent] == [(vanished.id, TRAIN)]
    again = store.get(vanished.id)
    assert again.task is not None
    assert again.task.id == sent[0][1].id != TRAINING.id
    # The task sent again runs on the next worker (the reaper's fresh beat is no live worker's),
    # and the dead worker's copy, restored by the broker later, does nothing.
    runs: list[str] = []

    def step(job: Job, reporter: JobReporter) -> JobResult | None:
        runs.append(job.id)
        return None

    policy = ReaperSettings(heartbeat_interval_s=10, heartbeat_timeout_s=60)
    run_step(store, vanished.id, step, sent[0][1], policy, sent[0][1].id)
    run_step(store, vanished.id, step, TRAINING, policy, TRAINING.id)
    assert runs == [vanished.id]
    failed = store.get(forgotten.id)
    assert failed.status is JobStatus.failed
    assert failed.error is not None
    assert failed.error.code == JOB_TIMEOUT


def test_heartbeats_and_delivery_counts_never_touch_an_ended_job(store: JobStore) -> None:
    job = _create(store)
    store.fail(job.id, ErrorInfo(code="x", message="x"))
    assert store.count_delivery(job.id, TRAIN) == -1
    assert store.heartbeat(job.id, TRAINING) is False
    assert store.get(job.id).task is None
    assert store.count_delivery("gone", TRAIN) == -1
    assert not store.redis.exists(store.keys.job("gone"))


class _NoModel:
    def current(self) -> object:
        raise AssertionError("a job delivered too often never reaches the model")


def test_a_predict_job_delivered_too_often_fails_instead_of_killing_another_worker(
    store: JobStore,
) -> None:
    job = _create(store, JobType.predict)
    for _ in range(3):
        store.count_delivery(job.id, PREDICT)
    serve_batch(store, _NoModel(), [job.id], max_deliveries=3)  # type: ignore[arg-type]
    ended = store.get(job.id)
    assert ended.status is JobStatus.failed
    assert ended.error is not None
    assert ended.error.code == WORKER_LOST


def test_an_unanswered_predict_job_is_sent_again_after_the_redelivery_delay() -> None:
    rules = RULES.model_copy(update={"predict_redeliver_s": 20})
    fresh = _job(JobType.predict, created_at=_ago(5))
    late = _job(JobType.predict, created_at=_ago(21))
    resent = _job(JobType.predict, created_at=_ago(30), heartbeat_at=_ago(3))
    assert verdict(fresh, NOW, rules) is None
    found = verdict(late, NOW, rules)
    assert found is not None
    assert found.action == "resend"
    assert found.task is not None
    assert found.task.name == PREDICT
    assert verdict(resent, NOW, rules) is None  # sent again 3 s ago: not yet


def test_the_active_set_holds_jobs_until_they_end(store: JobStore) -> None:
    running = _create(store)
    ended = _create(store)
    store.start(running.id)
    store.succeed(ended.id, train_result())
    assert [job.id for job in store.active()] == [running.id]
