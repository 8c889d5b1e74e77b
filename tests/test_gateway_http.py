import inspect
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.endpoints import HTTPEndpoint
from starlette.routing import BaseRoute, Mount, Route

from gateway.app import create_app
from shared.contracts.keys import api_keys_from
from shared.settings import Settings
from testkit.gateway import Gateway, serve


@pytest.fixture
def gateway(settings: Settings, tmp_path: Path) -> Iterator[Gateway]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>front end</h1>")
    with serve(settings.replace(max_body_bytes=2000, frontend_dir=site)) as running:
        yield running


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url) as http:
        yield http


JSON = {"content-type": "application/json"}


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("content", "fields", "words"),
    [
        (b"{bad json", ["body"], "Invalid JSON"),
        (b"", ["body"], "empty"),
        (b"[1, 2]", ["body"], "object"),
        (b'"train"', ["body"], "object"),
        (b'{"dataset": "a.zip"}', ["type"], "discriminator"),
        (b'{"type": "sing", "dataset": "a.zip"}', ["type"], "'sing'"),
        (b'{"type": "train"}', ["dataset"], "Field required"),
        (b'{"type": "train", "dataset": "a.zip", "max_steps": "many"}', ["max_steps"], "integer"),
        (b'{"type": "train", "dataset": "a.csv"}', ["dataset"], ".zip"),
        (b'{"type": "train", "dataset": "a.zip", "colour": "red"}', ["colour"], "Extra inputs"),
        (b'{"type": "evaluate", "dataset": 3, "x": 1}', ["dataset", "x"], "dataset: "),
    ],
)
def test_bad_job_requests_are_422_naming_the_fields(
    client: httpx.Client, content: bytes, fields: list[str], words: str
) -> None:
    response = client.post(
        "/v1/jobs", content=content, headers={"content-type": "application/json"}
    )
    error = error_of(response, 422)
    assert error["code"] == "invalid_request"
    assert error["details"]["fields"] == fields
    assert words in error["message"]
    for field in fields:
        assert field in error["message"]


def test_bodies_over_the_limit_are_413_declared_or_streamed(client: httpx.Client) -> None:
    declared = client.post("/v1/jobs", content=b"{" + b" " * 3000 + b"}", headers=JSON)
    assert error_of(declared, 413)["details"] == {"max_body_bytes": 2000}

    def chunks() -> Iterator[bytes]:
        yield b'{"type": "predict", "texts": ["'
        for _ in range(10):
            yield b"x" * 300
        yield b'"]}'

    streamed = client.post("/v1/predict", content=chunks(), headers=JSON)
    assert "content-length" not in streamed.request.headers
    assert error_of(streamed, 413)["code"] == "payload_too_large"


def test_unknown_routes_are_404_and_wrong_methods_405(client: httpx.Client) -> None:
    assert error_of(client.get("/v1/nothing/here"), 404)["code"] == "not_found"
    assert error_of(client.get("/nothing.html"), 404)["code"] == "not_found"
    wrong = client.put("/v1/jobs", headers=JSON)
    assert error_of(wrong, 405)["code"] == "method_not_allowed"
    assert set(wrong.headers["allow"].split(", ")) >= {"GET", "POST"}
    assert error_of(client.get("/v1/predict"), 405)["message"] == (
        "GET is not allowed on /v1/predict"
    )
    assert error_of(client.post("/v1/jobs/abc", headers=JSON), 405)["code"] == (
        "method_not_allowed"
    )


def test_the_front_end_is_served_at_the_root(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.text == "<h1>front end</h1>"


def test_a_bug_is_a_logged_500_in_the_error_shape(
    gateway: Gateway, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(job_id: str) -> None:
        raise RuntimeError("a bug")

    gateway.services.store.get = broken  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.ERROR, logger="gateway"):
        response = client.get("/v1/jobs/abc")
    error = error_of(response, 500)
    assert error["code"] == "internal_error"
    assert "RuntimeError" in error["message"]
    assert "a bug" not in error["message"]
    [record] = [record for record in caplog.records if record.name == "gateway"]
    assert record.exc_info is not None
    assert "GET /v1/jobs/abc" in record.getMessage()


@pytest.fixture
def guarded(settings: Settings) -> Iterator[httpx.Client]:
    keys = settings.replace(api_keys=api_keys_from("key-one,key-two"))
    with serve(keys) as running, httpx.Client(base_url=running.url) as http:
        yield http


def test_api_keys_guard_the_api_only(guarded: httpx.Client) -> None:
    missing = guarded.get("/v1/jobs")
    assert error_of(missing, 401)["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = guarded.get("/v1/jobs", headers={"Authorization": "Bearer key-three"})
    assert error_of(wrong, 401)["code"] == "unauthorized"
    assert error_of(guarded.get("/v1/jobs", headers={"X-API-Key": "key-"}), 401)
    assert error_of(guarded.post("/v1/jobs", json={}), 401)

    assert guarded.get("/v1/jobs", headers={"Authorization": "Bearer key-two"}).status_code == 200
    assert guarded.get("/v1/jobs", headers={"X-API-Key": "key-one"}).status_code == 200
    for open_path in ("/healthz", "/metrics", "/openapi.json", "/"):
        assert guarded.get(open_path).status_code == 200, open_path


JOB_RESULTS = ("PredictResult", "EvaluateResult", "TrainResult", "BatchPredictResult")


def served_operations(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route the app serves, endpoints' methods included; static files
    are not operations."""
    for route in routes:
        if isinstance(route, Mount) and route.routes:
            yield from served_operations(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            endpoint = route.endpoint
            if inspect.isclass(endpoint) and issubclass(endpoint, HTTPEndpoint):
                methods = {name.upper() for name in ("get", "post", "delete", "put", "patch")}
                methods = {method for method in methods if hasattr(endpoint, method.lower())}
            else:
                methods = set(route.methods or ()) - {"HEAD"}
            yield from ((method, prefix + route.path) for method in methods)


def test_the_openapi_document_covers_every_endpoint(
    client: httpx.Client, settings: Settings
) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on any breach of the OpenAPI 3.1 schema
    operations = {
        (method.upper(), path) for path, methods in document["paths"].items() for method in methods
    }
    assert operations == set(served_operations(create_app(settings).routes))
    assert ("POST", "/v1/jobs") in operations
    schemas = document["components"]["schemas"]

    def refs(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    names = {ref.removeprefix("#/components/schemas/") for ref in refs(document)}
    assert names <= set(schemas)
    assert {"JobRequest", "JobResource", "PredictParams", "ErrorBody", "ModelInfo"} <= names
    results = {ref for ref in refs(schemas["JobResource"]["properties"]["result"])}
    assert results == {f"#/components/schemas/{name}" for name in JOB_RESULTS}
    assert schemas["ModelInfo"]["properties"]["metrics"] == {"$ref": "#/components/schemas/Metrics"}
    job_request = schemas["JobRequest"]
    assert job_request["discriminator"]["propertyName"] == "type"
    create = document["paths"]["/v1/jobs"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobRequest"
    }


def test_cors_preflights_pass_before_the_api_key_check(settings: Settings) -> None:
    config = settings.replace(
        api_keys=api_keys_from("key-one"), cors_origins=["https://app.example"]
    )
    with serve(config) as running, httpx.Client(base_url=running.url) as http:
        preflight = http.options(
            "/v1/jobs",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        listed = http.get(
            "/v1/jobs", headers={"Origin": "https://app.example", "X-API-Key": "key-one"}
        )
        assert listed.headers["access-control-allow-origin"] == "https://app.example"


def test_the_document_names_the_session_cookie_and_the_security_answers(
    client: httpx.Client,
) -> None:
    document = client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["session"] == {"type": "apiKey", "in": "cookie", "name": "agnews_session"}
    paths = document["paths"]
    promote = paths["/v1/models/{version}/promote"]["post"]
    assert {"bearer": []} in promote["security"]
    assert {"session": []} in promote["security"]
    assert {"401", "403", "415"} <= set(promote["responses"])
    assert paths["/v1/session"]["post"]["security"] == [{}]
    assert "429" in paths["/v1/predict"]["post"]["responses"]
    assert "429" in paths["/v1/jobs"]["post"]["responses"]
    assert paths["/v1/session"]["get"]["responses"]["200"]["content"]["application/json"] == {
        "schema": {"$ref": "#/components/schemas/SessionInfo"}
    }
