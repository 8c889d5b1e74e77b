from collections.abc import Iterator

import httpx
import pytest

from shared.contracts.errors import ErrorInfo
from shared.contracts.jobs import JobStatus, JobType
from shared.contracts.results import PredictResult
from shared.jobstore import JobStore
from shared.settings import Settings
from testkit.gateway import FakeWorker, serve

RESULT_BODY = {
    "model_version": "2026-11-26T10-31-07-3f9c",
    "form": "torch-int8",
    "predictions": [
        {
            "label": "Business",
            "label_id": 2,
            "scores": {"World": 0.01, "Sports": 0.0, "Business": 0.97, "Sci/Tech": 0.02},
            "truncated": False,
        }
    ],
}


@pytest.fixture
def limited(settings: Settings) -> Settings:
    return settings.replace(predict_wait_s=30, max_texts=3, max_text_chars=40)


@pytest.fixture
def client(limited: Settings) -> Iterator[httpx.Client]:
    with serve(limited) as gateway, httpx.Client(base_url=gateway.url, timeout=30) as http:
        yield http


def succeed(store: JobStore, job_id: str) -> None:
    store.start(job_id)
    store.succeed(job_id, PredictResult.model_validate(RESULT_BODY))


def no_model(store: JobStore, job_id: str) -> None:
    store.start(job_id)
    store.fail(job_id, ErrorInfo(code="no_production_model", message="no model in production"))


def test_a_finished_prediction_answers_200_with_the_result(
    client: httpx.Client, limited: Settings
) -> None:
    with FakeWorker(limited, "predict", succeed):
        response = client.post("/v1/predict", json={"text": "Stocks rally as rates fall"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {**RESULT_BODY, "job_id": body["job_id"]}
    store = JobStore.from_settings(limited)
    job = store.get(body["job_id"])
    # Answered, it keeps its answer, not its text, and expires with the predict retention.
    assert (job.params, job.texts) == (None, 1)
    assert job.status is JobStatus.succeeded
    assert job.result == PredictResult.model_validate(RESULT_BODY)
    ttl = store.redis.ttl(store.keys.job(job.id))
    assert 0 < ttl <= limited.jobs.predict_ttl_s


def test_a_prediction_still_queued_falls_back_to_202(limited: Settings) -> None:
    impatient = limited.replace(predict_wait_s=0.2)
    with serve(impatient) as gateway:
        response = httpx.post(f"{gateway.url}/v1/predict", json={"texts": ["a", "b"]})
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "queued"
    assert job["type"] == "predict"
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"


def test_a_failed_prediction_answers_with_its_error(
    client: httpx.Client, limited: Settings
) -> None:
    with FakeWorker(limited, "predict", no_model):
        response = client.post("/v1/predict", json={"texts": ["a"]})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "no_production_model"
    assert error["message"] == "no model in production"
    assert (
        JobStore.from_settings(limited).get(error["details"]["job_id"]).status is JobStatus.failed
    )


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"texts": ["a", "b", "c", "d"]}, "texts", "limit is 3"),
        ({"texts": ["short", "x" * 41]}, "texts[1]", "limit is 40"),
        ({"texts": ["a", ""]}, "texts[1]", "at least 1 character"),
        ({"texts": []}, "body", "'text'"),
        ({"text": 5}, "text", "string"),
        ({"texts": ["a"], "lang": "en"}, "lang", "Extra inputs"),
    ],
)
def test_bad_predictions_are_refused_naming_the_field(
    client: httpx.Client, limited: Settings, body: dict[str, object], field: str, words: str
) -> None:
    response = client.post("/v1/predict", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"]["fields"] == [field]
    assert field in error["message"]
    assert words in error["message"]
    assert JobStore.from_settings(limited).recent(type_=JobType.predict) == []


def test_job_requests_for_predictions_obey_the_same_limits(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json={"type": "predict", "texts": ["x" * 41]})
    assert response.status_code == 422
    assert response.json()["error"]["details"]["fields"] == ["texts[0]"]
