"""Batched serving without Celery: serve_batch over the real job store and a real model."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.predictor import Predictor
from pipeline.registry import publish, verify
from pipeline.serving import choose_precision, load_serving, serving_note
from shared.errors import ModelIntegrityError
from shared.jobs import Job, JobStatus, JobType, new_job_id
from shared.jobstore import JobStore
from shared.registry import ModelRegistry
from shared.results import FormScore, PredictResult, ServingCheck
from shared.settings import Settings
from tests.job_results import metrics
from tests.pipeline_support import copy_as_new_version, tiny_model
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
    registry = ModelRegistry.from_settings(settings)
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

    alone = load_serving(version, settings, settings.data_dir / "alone")
    for job_id, texts in zip(job_ids, TEXTS, strict=True):
        job = store.get(job_id)
        assert job.status is JobStatus.succeeded
        assert job.result is not None
        assert isinstance(job.result, PredictResult)
        assert job.result.model_version == version
        assert job.result.precision == alone.precision
        answers = job.result.predictions
        assert len(answers) == len(texts)
        for answer, expected in zip(answers, alone.predict(texts), strict=True):
            assert answer.label == expected.label
            assert answer.label_id == expected.label_id
            assert answer.truncated is False
            assert np.allclose(
                list(answer.scores.values()), list(expected.scores.values()), atol=1e-3
            )
        assert [event.type.value for event in store.events(job_id)] == [
            "status",
            "status",
            "status",
            "result",
        ]


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
    assert store.events(cancelled)[-1].type.value == "error"
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
    fast = settings.model_copy(update={"model_poll_s": 0.1})
    first = production(fast, model_dir)
    model = ServingModel(fast).start()
    try:
        serving = model.current()
        assert serving.version == first
        second = copy_as_new_version(model_dir, tmp_path / "second").version
        registry = ModelRegistry.from_settings(fast)
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
    registry = ModelRegistry.from_settings(settings)
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


def test_the_int8_check_is_stored_with_the_model_and_decides_auto(model_dir: Path) -> None:
    metrics = verify(model_dir).metrics
    check = metrics.serving
    assert check is not None
    assert check.n == metrics.n
    assert check.fp32.accuracy == metrics.accuracy
    assert 0.0 <= check.int8.accuracy <= 1.0
    assert check.int8_accuracy_drop_pts == pytest.approx(
        (check.fp32.accuracy - check.int8.accuracy) * 100, abs=1e-3
    )
    assert check.int8_allowed is (check.int8_accuracy_drop_pts <= 0.3)

    auto = Settings()
    allowed = metrics.model_copy(
        update={"serving": check.model_copy(update={"int8_allowed": True})}
    )
    refused = metrics.model_copy(
        update={"serving": check.model_copy(update={"int8_allowed": False})}
    )
    unchecked = metrics.model_copy(update={"serving": None})
    assert choose_precision(auto, allowed) == "int8"
    assert choose_precision(auto, refused) == "fp32"
    assert choose_precision(auto, unchecked) == "fp32"
    assert choose_precision(Settings(serving_precision="int8"), unchecked) == "int8"
    assert choose_precision(Settings(serving_precision="fp32"), allowed) == "fp32"


def test_the_promotion_reason_says_which_form_serves_and_why() -> None:
    form = FormScore(accuracy=0.9, texts_per_s=100.0)
    check = ServingCheck(
        n=40,
        fp32=form,
        int8=form,
        int8_accuracy_drop_pts=0.07,
        int8_speedup=2.1,
        max_accuracy_drop_pts=0.3,
        int8_allowed=True,
    )
    passed = serving_note(Settings(), metrics().model_copy(update={"serving": check}))
    assert passed.startswith("It serves in int8, 2.1x as fast as fp32 and 0.07 points below")
    failed = check.model_copy(update={"int8_accuracy_drop_pts": 0.45, "int8_allowed": False})
    assert serving_note(Settings(), metrics().model_copy(update={"serving": failed})) == (
        "It serves in fp32: int8 was 0.45 points below it, over the 0.3 allowed."
    )
    assert serving_note(Settings(serving_precision="fp32"), metrics()) == "It serves in fp32."
