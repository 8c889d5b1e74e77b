"""Batched serving without Celery: serve_batch over the real job store and a real model."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.predictor import Predictor
from pipeline.registry import publish
from pipeline.serving import load_serving
from shared.contracts.errors import ModelIntegrityError
from shared.contracts.jobs import Job, JobStatus, JobType, new_job_id
from shared.contracts.results import PredictResult
from shared.jobstore import JobStore
from shared.registry import ModelRegistry
from shared.settings import Settings
from testkit.models import copy_as_new_version, tiny_model
from workers.models import ServingModel
from workers.predict import serve_batch

TEXTS = [
    ["Stocks rally as the central bank holds rates"],
    ["The striker scored twice in the cup final", "New chip doubles battery life"],
    ["Rebels seize the capital after talks fail"],
    ["Quarterly profit beats forecasts", "Astronomers find water on a distant moon", "Elections"],
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore.from_settings(settings)


def production(settings: Settings, model_dir: Path) -> str:
    registry = ModelRegistry.from_settings(settings.storage)
    version = publish(registry, model_dir).version
    registry.promote(version, "test")
    return version


def predict_job(store: JobStore, texts: list[str]) -> str:
    job = Job(id=new_job_id(), type=JobType.predict, params={"texts": texts})
    return store.create(job).id


def test_every_job_in_a_batch_gets_the_answers_to_its_own_texts(
    settings: Settings, store: JobStore, model_dir: Path
) -> None:
    version = production(settings, model_dir)
    model = ServingModel(settings)
    job_ids = [predict_job(store, texts) for texts in TEXTS]
    serve_batch(store, model, job_ids)

    alone = load_serving(version, settings, settings.run.data_dir / "alone")
    for job_id, texts in zip(job_ids, TEXTS, strict=True):
        job = store.get(job_id)
        assert job.status is JobStatus.succeeded
        assert job.result is not None
        assert isinstance(job.result, PredictResult)
        assert job.result.model_version == version
        assert job.result.form == alone.form
        answers = job.result.predictions
        assert len(answers) == len(texts)
        for answer, expected in zip(answers, alone.predict(texts), strict=True):
            assert answer.label == expected.label
            assert answer.label_id == expected.label_id
            assert answer.truncated is False
            assert np.allclose(
                list(answer.scores.values()), list(expected.scores.values()), atol=1e-3
            )
        # A prediction has no stream of its own: its end is on the one the gateways follow.
        assert store.events(job_id) == []
        assert answer_of(store, job_id) == "result"


def answer_of(store: JobStore, job_id: str) -> str | None:
    """The kind of a job's end on the answers stream (result or error), if it is there."""
    entries = store.redis.xrange(store.keys.answers)
    return next((fields["type"] for _, fields in entries if fields["job"] == job_id), None)


def test_a_text_longer_than_the_model_takes_is_cut_and_flagged(
    settings: Settings, store: JobStore, model_dir: Path
) -> None:
    production(settings, model_dir)
    long_text = " ".join(["markets"] * 2000)
    job_id = predict_job(store, ["short news", long_text])
    serve_batch(store, ServingModel(settings), [job_id])
    result = store.get(job_id).result
    assert isinstance(result, PredictResult)
    assert [answer.truncated for answer in result.predictions] == [False, True]


def test_without_a_production_model_each_job_fails_saying_how_to_get_one(
    settings: Settings, store: JobStore
) -> None:
    job_ids = [predict_job(store, ["a"]), predict_job(store, ["b", "c"])]
    serve_batch(store, ServingModel(settings), job_ids)
    for job_id in job_ids:
        job = store.get(job_id)
        assert job.status is JobStatus.failed
        assert job.error is not None
        assert job.error.code == "no_production_model"
        assert "archive.zip" in job.error.message


def test_cancelled_and_expired_jobs_are_skipped_and_the_rest_answered(
    settings: Settings, store: JobStore, model_dir: Path
) -> None:
    production(settings, model_dir)
    cancelled, kept = predict_job(store, ["a"]), predict_job(store, ["b"])
    store.cancel(cancelled)
    serve_batch(store, ServingModel(settings), [cancelled, "expired-job", kept])
    assert store.get(cancelled).status is JobStatus.cancelled
    assert answer_of(store, cancelled) == "error"
    assert store.get(kept).status is JobStatus.succeeded


def test_the_model_is_released_for_the_next_batch_even_when_serving_fails(
    settings: Settings, store: JobStore
) -> None:
    released: list[bool] = []
    serve_batch(
        store, ServingModel(settings), [predict_job(store, ["a"])], lambda: released.append(True)
    )
    assert released == [True]


def test_a_new_production_version_is_swapped_in_while_the_old_one_answers(
    settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    fast = settings.replace(model_poll_s=0.1)
    first = production(fast, model_dir)
    model = ServingModel(fast).start()
    try:
        serving = model.current()
        assert serving.version == first
        second = copy_as_new_version(model_dir, tmp_path / "second").version
        registry = ModelRegistry.from_settings(fast.storage)
        publish(registry, tmp_path / "second")
        registry.promote(second, "test")
        # The model a batch holds keeps answering while the watcher loads the next one.
        deadline = time.monotonic() + 60
        while model.current().version != second:
            assert time.monotonic() < deadline, "the new version was never swapped in"
            assert serving.predict(["still here"])[0].label
            time.sleep(0.05)
        assert serving.version == first
    finally:
        model.stop()


def test_a_new_version_that_will_not_load_leaves_the_old_one_serving(
    settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    first = production(settings, model_dir)
    attempts: list[str] = []

    def load(version: str, settings: Settings, cache: Path) -> Predictor:
        attempts.append(version)
        if version != first:
            raise ModelIntegrityError(f"model {version} is damaged")
        return load_serving(version, settings, cache)

    model = ServingModel(settings, load=load)
    assert model.current().version == first
    second = copy_as_new_version(model_dir, tmp_path / "second").version
    registry = ModelRegistry.from_settings(settings.storage)
    publish(registry, tmp_path / "second")
    registry.promote(second, "test")
    model.refresh()
    model.refresh()  # within model_retry_s: not tried again
    assert model.current().version == first
    assert attempts == [first, second]


def test_only_one_thread_loads_the_first_model_and_all_get_it(
    settings: Settings, model_dir: Path
) -> None:
    version = production(settings, model_dir)
    loads: list[str] = []

    def load(version: str, settings: Settings, cache: Path) -> Predictor:
        loads.append(version)
        return load_serving(version, settings, cache)

    model = ServingModel(settings, load=load)
    seen: list[str] = []
    threads = [
        threading.Thread(target=lambda: seen.append(model.current().version)) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [version] * 4
    assert loads == [version]


def test_a_starting_worker_waits_for_its_first_model_before_it_takes_requests(
    settings: Settings, model_dir: Path
) -> None:
    version = production(settings, model_dir)
    may_load = threading.Event()

    def load(version: str, settings: Settings, cache: Path) -> Predictor:
        may_load.wait(30)
        return load_serving(version, settings, cache)

    model = ServingModel(settings, load=load).start()
    try:
        assert model.first_look(0.5) is False  # still loading: no request taken yet
        assert model.first_look(5, stopping=lambda: True) is False  # a stop ends the wait
        may_load.set()
        assert model.first_look(30) is True
        assert model.current().version == version
    finally:
        model.stop()


def test_without_a_model_or_with_a_broken_one_a_starting_worker_takes_requests_at_once(
    settings: Settings, model_dir: Path
) -> None:
    missing = ServingModel(settings).start()
    try:
        assert missing.first_look(30) is True
    finally:
        missing.stop()
    production(settings, model_dir)

    def load(version: str, settings: Settings, cache: Path) -> Predictor:
        raise ModelIntegrityError(f"model {version} is damaged")

    broken = ServingModel(settings, load=load).start()
    try:
        assert broken.first_look(30) is True
        with pytest.raises(ModelIntegrityError, match="damaged"):
            broken.current()
    finally:
        broken.stop()
