import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.settings import Settings
from shared.storage import s3_client
from testkit.gateway import serve

ARCHIVE = b"PK\x05\x06" + b"\x00" * 18  # an empty zip archive


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    limited = settings.replace(upload_max_bytes=10_000, presign_expiry_s=60)
    with serve(limited) as gateway, httpx.Client(base_url=gateway.url) as http:
        yield http


def ticket(client: httpx.Client, size: int = len(ARCHIVE)) -> dict[str, Any]:
    response = client.post("/v1/uploads", json={"filename": "archive.zip", "size": size})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_ticket_names_a_fresh_incoming_key_and_limits_the_size(client: httpx.Client) -> None:
    first, second = ticket(client), ticket(client)
    assert first["key"] != second["key"]
    assert first["key"].startswith("incoming/tickets/")
    assert first["key"].endswith("/archive.zip")
    assert first["expires_in"] == 60
    assert first["max_bytes"] == 10_000
    assert first["fields"]["key"] == first["key"]
    policy = json.loads(base64.b64decode(first["fields"]["policy"]))
    assert ["content-length-range", 1, 10_000] in policy["conditions"]
    assert {"key": first["key"]} in policy["conditions"]


def test_the_browser_can_post_or_put_the_archive(client: httpx.Client, settings: Settings) -> None:
    s3 = s3_client(settings.storage)

    posted = ticket(client)
    form = httpx.post(
        posted["url"], data=posted["fields"], files={"file": ("archive.zip", ARCHIVE)}
    )
    assert form.status_code in (200, 201, 204), form.text
    assert (
        s3.get_object(Bucket=settings.storage.bucket, Key=posted["key"])["Body"].read() == ARCHIVE
    )

    put = ticket(client)
    # The URL signs Content-Length: S3 takes exactly the declared size, never more.
    signed = httpx.URL(put["put_url"]).params["X-Amz-SignedHeaders"].split(";")
    assert "content-length" in signed
    assert httpx.put(put["put_url"], content=ARCHIVE).status_code == 200
    assert s3.get_object(Bucket=settings.storage.bucket, Key=put["key"])["Body"].read() == ARCHIVE


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"filename": "archive.tar", "size": 10}, 422, "filename"),
        ({"filename": "archive.zip"}, 422, "size"),
        ({"filename": "archive.zip", "size": 0}, 422, "size"),
        ({"filename": "archive.zip", "size": 10, "acl": "public"}, 422, "acl"),
        ({"filename": "archive.zip", "size": 10_001}, 413, "size"),
    ],
)
def test_bad_upload_requests_are_refused(
    client: httpx.Client, body: dict[str, object], status: int, field: str
) -> None:
    response = client.post("/v1/uploads", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["details"]["fields"] == [field]
    assert field in error["message"]
