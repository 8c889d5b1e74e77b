"""GET /openapi.json: an OpenAPI 3.1 document built from the pydantic models' JSON schemas."""

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.cookies import COOKIE
from gateway.schemas import (
    ErrorBody,
    Health,
    JobList,
    JobQuery,
    JobResource,
    ModelList,
    ModelQuery,
    PredictResponse,
    PromoteRequest,
    Readiness,
    SessionInfo,
    SessionRequest,
    UploadRequest,
    UploadTicket,
)
from shared.contracts.jobs import JobParams, PredictParams
from shared.contracts.models import ModelInfo, ModelRecord, ProductionPointer

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    body: str | None = None
    responses: dict[int, str | None] = field(default_factory=dict)
    parameters: tuple[dict[str, Any], ...] = ()
    content_type: str = "application/json"
    query: str | None = None


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


JOB_ID = _path_param("job_id")

OPERATIONS = (
    Operation(
        "post",
        "/v1/jobs",
        "Create a job; 202 with the job and links",
        "JobRequest",
        {202: "JobResource", 422: None, 503: None},
    ),
    Operation(
        "get",
        "/v1/jobs",
        "Recent jobs, newest first",
        None,
        {200: "JobList"},
        query="JobQuery",
    ),
    Operation(
        "get", "/v1/jobs/{job_id}", "Read a job", None, {200: "JobResource", 404: None}, (JOB_ID,)
    ),
    Operation(
        "delete",
        "/v1/jobs/{job_id}",
        "Cancel a job; 409 if it has already ended",
        None,
        {200: "JobResource", 404: None, 409: None},
        (JOB_ID,),
    ),
    Operation(
        "get",
        "/v1/jobs/{job_id}/events",
        "Server-sent events: id is the stream entry id, Last-Event-ID resumes; the stream "
        "ends after the terminal `result` or `error` event",
        None,
        {200: None, 404: None},
        (
            JOB_ID,
            {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
            {"name": "last_event_id", "in": "query", "schema": {"type": "string"}},
        ),
        "text/event-stream",
    ),
    Operation(
        "post",
        "/v1/predict",
        "Classify texts, waiting a bounded time for the answer",
        "PredictParams",
        {200: "PredictResponse", 202: "JobResource", 422: None, 503: None},
    ),
    Operation(
        "get",
        "/v1/models",
        "Registered model versions, newest first, a page at a time",
        None,
        {200: "ModelList"},
        query="ModelQuery",
    ),
    Operation(
        "get",
        "/v1/models/production",
        "The production pointer",
        None,
        {200: "ProductionPointer", 404: None},
    ),
    Operation(
        "get",
        "/v1/models/{version}",
        "A version's manifest, model card and training curves",
        None,
        {200: "ModelRecord", 404: None},
        (_path_param("version"),),
    ),
    Operation(
        "post",
        "/v1/models/{version}/promote",
        "Make a version the production model",
        "PromoteRequest",
        {200: "ProductionPointer", 404: None},
        (_path_param("version"),),
    ),
    Operation(
        "post",
        "/v1/uploads",
        "A presigned POST policy and PUT URL for an archive.zip",
        "UploadRequest",
        {200: "UploadTicket", 413: None, 422: None},
    ),
    Operation(
        "post",
        "/v1/session",
        "Sign in: exchange an API key for a signed, expiring, HttpOnly, SameSite=Strict cookie",
        "SessionRequest",
        {200: "SessionInfo", 401: None, 415: None, 422: None},
    ),
    Operation(
        "get", "/v1/session", "Who is signed in, and their scopes", None, {200: "SessionInfo"}
    ),
    Operation(
        "delete", "/v1/session", "Sign out: clear the session cookie", None, {200: "SessionInfo"}
    ),
    Operation("get", "/healthz", "Liveness", None, {200: "Health"}),
    Operation(
        "get", "/readyz", "Readiness: Redis and S3 reachable", None, {200: "Readiness", 503: None}
    ),
    Operation("get", "/metrics", "Prometheus metrics", None, {200: None}, (), "text/plain"),
    Operation("get", "/openapi.json", "This document", None, {200: None}),
)


def _models() -> dict[str, TypeAdapter[Any]]:
    return {
        "JobRequest": TypeAdapter(JobParams),
        "PredictParams": TypeAdapter(PredictParams),
        "PromoteRequest": TypeAdapter(PromoteRequest),
        "UploadRequest": TypeAdapter(UploadRequest),
        "SessionRequest": TypeAdapter(SessionRequest),
        "SessionInfo": TypeAdapter(SessionInfo),
        "JobQuery": TypeAdapter(JobQuery),
        "JobResource": TypeAdapter(JobResource),
        "JobList": TypeAdapter(JobList),
        "PredictResponse": TypeAdapter(PredictResponse),
        "UploadTicket": TypeAdapter(UploadTicket),
        "ModelInfo": TypeAdapter(ModelInfo),
        "ModelList": TypeAdapter(ModelList),
        "ModelQuery": TypeAdapter(ModelQuery),
        "ModelRecord": TypeAdapter(ModelRecord),
        "ProductionPointer": TypeAdapter(ProductionPointer),
        "Health": TypeAdapter(Health),
        "Readiness": TypeAdapter(Readiness),
        "ErrorBody": TypeAdapter(ErrorBody),
    }


def _operation(op: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"summary": op.summary, "responses": {}}
    parameters = list(op.parameters)
    if op.query:
        fields = schemas[op.query]["properties"]
        parameters += [{"name": n, "in": "query", "schema": s} for n, s in fields.items()]
    if parameters:
        body["parameters"] = parameters
    if op.body:
        body["requestBody"] = {
            "required": op.body != "PromoteRequest",
            "content": {"application/json": {"schema": {"$ref": REF.format(model=op.body)}}},
        }
    for status, model in op.responses.items():
        schema = {"$ref": REF.format(model=model or "ErrorBody")}
        if model is None and status < 400:
            content = {op.content_type: {"schema": {"type": "string"}}}
        else:
            content = {"application/json": {"schema": schema}}
        body["responses"][str(status)] = {"description": str(status), "content": content}
    body["responses"]["default"] = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}},
    }
    return body


PUBLIC_OPERATIONS = {("post", "/v1/session"), ("delete", "/v1/session")}
RATE_LIMITED = {("post", "/v1/jobs"), ("post", "/v1/predict")}


def _error(description: str) -> dict[str, Any]:
    schema = {"$ref": REF.format(model="ErrorBody")}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    adapters = _models()
    modes = {
        "JobRequest",
        "PredictParams",
        "PromoteRequest",
        "UploadRequest",
        "JobQuery",
        "ModelQuery",
        "SessionRequest",
    }
    refs, defs = TypeAdapter.json_schemas(
        [
            (name, "validation" if name in modes else "serialization", adapter)
            for name, adapter in adapters.items()
        ],
        ref_template=REF,
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    for (name, _), schema in refs.items():
        if schema.get("$ref") != REF.format(model=name):
            schemas[name] = schema
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, schemas)
    # Every scheme is optional where the gateway has no keys (the local default).
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}, {"session": []}]
    for path, operations in paths.items():
        if path.startswith("/v1/"):
            for method, operation in operations.items():
                if (method, path) in PUBLIC_OPERATIONS:
                    operation["security"] = [{}]
                else:
                    operation["security"] = security
                    operation["responses"].setdefault("401", _error("no key or session"))
                    operation["responses"].setdefault("403", _error("the key lacks the scope"))
                if method in ("post", "delete"):
                    operation["responses"].setdefault("415", _error("not application/json"))
                if (method, path) in RATE_LIMITED:
                    operation["responses"].setdefault("429", _error("rate limited"))
    return {
        "openapi": "3.1.0",
        "info": {"title": "AG News classifier", "version": "1.0.0"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "session": {"type": "apiKey", "in": "cookie", "name": COOKIE},
            },
        },
    }


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(document())


routes = [Route("/openapi.json", openapi, methods=["GET"])]
