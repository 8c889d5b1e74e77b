"""The local adapter: the S3 store's webhook, on a real Redis and broker."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from shared.contracts.stages import INGEST
from shared.settings import Settings
from shared.storage import WEBHOOK_PATH
from testkit.servers import free_port
from tests.test_s3events import SEAWEEDFS_CREATE
from tests.trigger_support import drop_tasks, pipeline_jobs, sent_tasks
from workers.listener.trigger import PipelineTrigger
from workers.listener.webhook import webhook_app

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def upload_hook(settings: Settings, key: str = "incoming/x/archive.zip") -> dict[str, Any]:
    body: dict[str, Any] = json.loads(json.dumps(SEAWEEDFS_CREATE))
    body["key"] = f"/buckets/{settings.storage.bucket}/{key}"
    return body


def client_for(settings: Settings) -> TestClient:
    trigger = PipelineTrigger.from_settings(settings)
    return TestClient(webhook_app(settings, trigger), raise_server_exceptions=False)


@pytest.fixture
def hooked(settings: Settings) -> Iterator[Settings]:
    yield settings.replace(listener_token=SecretStr(TOKEN))
    drop_tasks(settings, {job.id for job in pipeline_jobs(settings)})


def test_an_upload_hook_starts_one_job_however_often_it_comes(hooked: Settings) -> None:
    with client_for(hooked) as client:
        answers = [
            client.post(WEBHOOK_PATH, json=upload_hook(hooked), headers=AUTH) for _ in range(3)
        ]

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert [answer.json()["outcome"] for answer in answers] == ["started", "duplicate", "duplicate"]
    [job] = pipeline_jobs(hooked)
    assert job.params.dataset == f"s3://{hooked.storage.bucket}/incoming/x/archive.zip"
    assert job.params.source.etag == "202b3840d24ff001061372ab171da160"
    assert sent_tasks(hooked, job.id) == [INGEST]


def test_directories_and_other_files_are_answered_and_start_nothing(hooked: Settings) -> None:
    directory = {
        "event_type": "create",
        "key": f"/buckets/{hooked.storage.bucket}/incoming",
        "message": {"new_entry": {"name": "incoming", "is_directory": True}},
    }
    with client_for(hooked) as client:
        for body in (directory, upload_hook(hooked, "incoming/x/notes.txt")):
            answer = client.post(WEBHOOK_PATH, json=body, headers=AUTH)
            assert answer.status_code == 200
            assert answer.json()["outcome"] == "ignored"
    assert pipeline_jobs(hooked) == []


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
def test_the_webhook_wants_its_token(hooked: Settings, headers: dict[str, str]) -> None:
    with client_for(hooked) as client:
        answer = client.post(WEBHOOK_PATH, json=upload_hook(hooked), headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    assert pipeline_jobs(hooked) == []


def test_a_malformed_hook_is_a_422(hooked: Settings) -> None:
    with client_for(hooked) as client:
        answer = client.post(WEBHOOK_PATH, content=b"{not json", headers=AUTH)
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "malformed_event"


def test_while_redis_is_away_the_store_is_told_to_retry(hooked: Settings) -> None:
    away = hooked.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5)
    with client_for(away) as client:
        answer = client.post(WEBHOOK_PATH, json=upload_hook(away), headers=AUTH)
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "service_unavailable"


def test_without_a_token_there_is_no_webhook_but_there_is_health(settings: Settings) -> None:
    with client_for(settings) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.post(WEBHOOK_PATH, json=upload_hook(settings)).status_code == 404
