from collections.abc import Iterator

import httpx
import pytest

from gateway.services import gateway_celery
from shared.contracts.errors import ErrorInfo
from shared.contracts.jobs import JobStatus
from shared.jobstore import JobStore
from shared.settings import Settings
from testkit.gateway import Gateway, broker_messages, serve
from testkit.job_results import train_result

TRAIN = {"type": "train", "dataset": "incoming/x/archive.zip", "max_steps": 5}


@pytest.fixture
def gateway(settings: Settings) -> Iterator[Gateway]:
    with serve(settings) as running:
        yield running


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url) as http:
        yield http


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore.from_settings(settings)


def create(client: httpx.Client, body: dict[str, object]) -> dict[str, object]:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job: dict[str, object] = response.json()
    return job


def test_create_answers_202_with_the_job_and_sends_its_first_task(
    client: httpx.Client, settings: Settings, store: JobStore
) -> None:
    response = client.post("/v1/jobs", json=TRAIN)

    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["type"] == "train"
    assert job["status"] == "queued"
    assert job["params"] == {
        "type": "train",
        "dataset": f"s3://{settings.storage.bucket}/incoming/x/archive.zip",
        "max_steps": 5,
        "promote": False,
    }
    assert job["links"] == {
        "self": f"/v1/jobs/{job['id']}",
        "events": f"/v1/jobs/{job['id']}/events",
    }
    assert store.get(job["id"]).status is JobStatus.queued
    assert ("agnews.ingest", [job["id"]]) in broker_messages(settings, "evaluate")


def test_list_filters_by_type_and_status_newest_first(
    client: httpx.Client, store: JobStore
) -> None:
    train = create(client, TRAIN)
    evaluate = create(client, {"type": "evaluate", "dataset": "incoming/a/archive.zip"})
    predict = create(client, {"type": "predict", "texts": ["Stocks rally"]})
    store.cancel(str(evaluate["id"]))

    def ids(**query: str | int) -> list[object]:
        response = client.get("/v1/jobs", params=query)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["jobs"]]

    assert ids() == [predict["id"], evaluate["id"], train["id"]]
    assert ids(type="train") == [train["id"]]
    assert ids(status="cancelled") == [evaluate["id"]]
    assert ids(status="queued", type="predict") == [predict["id"]]
    assert ids(limit=2) == [predict["id"], evaluate["id"]]


@pytest.mark.parametrize(
    ("query", "field"),
    [({"limit": 201}, "limit"), ({"limit": 0}, "limit"), ({"type": "x"}, "type")],
)
def test_list_rejects_bad_queries(
    client: httpx.Client, query: dict[str, str | int], field: str
) -> None:
    response = client.get("/v1/jobs", params=query)
    assert response.status_code == 422
    assert response.json()["error"]["details"]["fields"] == [field]


def test_get_reads_a_job_and_404s_an_unknown_one(client: httpx.Client, store: JobStore) -> None:
    job = create(client, TRAIN)
    store.start(str(job["id"]))

    response = client.get(f"/v1/jobs/{job['id']}")
    assert response.status_code == 200
    assert response.json()["status"] == "running"
    assert response.json()["started_at"] is not None

    missing = client.get("/v1/jobs/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert "nope" in missing.json()["error"]["message"]


def test_cancel_then_409_once_ended(client: httpx.Client, store: JobStore) -> None:
    job = create(client, TRAIN)

    cancelled = client.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["error"]["code"] == "cancelled"

    again = client.delete(f"/v1/jobs/{job['id']}")
    assert again.status_code == 409
    assert again.json()["error"]["details"] == {"status": "cancelled"}

    done = create(client, TRAIN)
    store.start(str(done["id"]))
    store.succeed(str(done["id"]), train_result())
    late = client.delete(f"/v1/jobs/{done['id']}")
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "job_ended"
    assert late.json()["error"]["details"] == {"status": "succeeded"}

    assert client.delete("/v1/jobs/nope").status_code == 404


def test_a_job_that_cannot_be_queued_fails_and_answers_503(
    gateway: Gateway, client: httpx.Client, settings: Settings, store: JobStore
) -> None:
    nowhere = settings.replace(redis_url="redis://127.0.0.1:1/0")
    gateway.services.celery = gateway_celery(nowhere)

    # tried again with the Redis clients' backoff (about 5 s in all), then failed
    response = client.post("/v1/jobs", json=TRAIN, timeout=30)

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "service_unavailable"
    assert "broker" in error["message"]
    job = store.get(error["details"]["job_id"])
    assert job.status is JobStatus.failed
    assert job.error is not None
    assert job.error.code == "service_unavailable"
    assert store.events(job.id)[-1].type.terminal


def test_job_errors_keep_their_message(client: httpx.Client, store: JobStore) -> None:
    job = create(client, TRAIN)
    store.fail(str(job["id"]), ErrorInfo(code="dataset_invalid", message="train.csv line 3: bad"))
    body = client.get(f"/v1/jobs/{job['id']}").json()
    assert body["status"] == "failed"
    assert body["error"] == {
        "code": "dataset_invalid",
        "message": "train.csv line 3: bad",
        "details": {},
    }


def test_a_pipeline_with_feedback_needs_no_dataset(
    client: httpx.Client, settings: Settings, store: JobStore
) -> None:
    job = create(client, {"type": "pipeline", "with_feedback": True})

    assert job["params"] == {"type": "pipeline", "with_feedback": True}
    assert ("agnews.ingest", [job["id"]]) in broker_messages(settings, "evaluate")
    named = create(
        client, {"type": "pipeline", "with_feedback": True, "dataset": "incoming/x/archive.zip"}
    )
    assert named["params"] == {
        "type": "pipeline",
        "with_feedback": True,
        "dataset": f"s3://{settings.storage.bucket}/incoming/x/archive.zip",
    }
    refused = client.post("/v1/jobs", json={"type": "pipeline"})
    assert refused.status_code == 422
    assert (
        "give dataset (an archive.zip), or with_feedback: true"
        in refused.json()["error"]["message"]
    )
