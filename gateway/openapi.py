"""GET /openapi.json: an OpenAPI 3.1 document built from the pydantic models' JSON schemas."""

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.cookies import COOKIE
from gateway.feedback import FeedbackQuery, ReviewQuery
from gateway.schemas import (
    ChallengeRequest,
    ErrorBody,
    Health,
    JobList,
    JobOutput,
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
from gateway.services import services
from shared.contracts.feedback import Feedback, FeedbackList, FeedbackRequest, ReviewList
from shared.contracts.jobs import BATCH_INPUT_SUFFIXES, EventType, JobParams, PredictParams
from shared.contracts.models import (
    VERSION_PATTERN,
    ChallengerPointer,
    ModelInfo,
    ModelRecord,
    ProductionPointer,
)
from shared.contracts.monitor import MonitorReport
from shared.contracts.training import PACKAGED_BASE_MODEL
from shared.settings import Settings
from shared.sources import dataset_pattern

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
# Where an event stream resumes: a stream entry id, or nothing (from the start).
EVENT_ID = {"type": "string", "pattern": r"^([0-9]{1,19}(-[0-9]{1,19})?)?$"}
# One server-sent event of a job's stream, as Open API 3.1 has `schema` describe each event.
EVENT = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": r"^[0-9]+-[0-9]+$"},
        "event": {"type": "string", "enum": [event.value for event in EventType]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"type": "object"},
        },
    },
}
# UploadRequest's filename, as its validator takes it: ending in .zip, in any case.
ZIP_NAME = r"\.[zZ][iI][pP]$"

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
        {200: "Event", 404: None},
        (
            JOB_ID,
            {"name": "Last-Event-ID", "in": "header", "schema": EVENT_ID},
            {"name": "last_event_id", "in": "query", "schema": EVENT_ID},
        ),
        "text/event-stream",
    ),
    Operation(
        "get",
        "/v1/jobs/{job_id}/output",
        "A presigned GET of a succeeded batch_predict job's predictions.csv",
        None,
        {200: "JobOutput", 404: None},
        (JOB_ID,),
    ),
    Operation(
        "post",
        "/v1/predict",
        "Classify texts, waiting a bounded time for the answer",
        "PredictRequest",
        {200: "PredictResponse", 202: "JobResource", 422: None, 503: None},
    ),
    Operation(
        "post",
        "/v1/feedback",
        "Give a text's right label (a correction, or a confirmation of the answer); 201 with the "
        "record, once stored in S3",
        "FeedbackRequest",
        {201: "Feedback", 422: None, 503: None},
    ),
    Operation(
        "get",
        "/v1/feedback",
        "The texts given feedback last, newest first, each with its latest",
        None,
        {200: "FeedbackList"},
        query="FeedbackQuery",
    ),
    Operation(
        "get",
        "/v1/feedback/review",
        "A version's newest uncertain answers (production's by default), less the texts already "
        "given feedback",
        None,
        {200: "ReviewList"},
        query="ReviewQuery",
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
        "/v1/models/challenger",
        "The challenger pointer: the version scored beside production on a share of traffic",
        None,
        {200: "ChallengerPointer", 404: None},
    ),
    Operation(
        "delete",
        "/v1/models/challenger",
        "Dismiss the challenger: its scoring stops, its figures are kept",
        None,
        {200: "ChallengerPointer", 404: None},
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
        "get",
        "/v1/models/{version}/monitor",
        "A version's live window against its holdout, each signal's drift score, its forward "
        "passes by form",
        None,
        {200: "MonitorReport", 404: None},
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
        "/v1/models/{version}/challenge",
        "Name a version the challenger: the predict workers score a share of the texts they "
        "answer with it too, after the answer is sent",
        "ChallengeRequest",
        {200: "ChallengerPointer", 404: None, 409: None},
        (_path_param("version"),),
    ),
    Operation(
        "post",
        "/v1/uploads",
        "A presigned POST policy and PUT URL for an archive.zip (admin) or a batch job's file of "
        "texts (predict)",
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
        "ChallengeRequest": TypeAdapter(ChallengeRequest),
        "ChallengerPointer": TypeAdapter(ChallengerPointer),
        "UploadRequest": TypeAdapter(UploadRequest),
        "SessionRequest": TypeAdapter(SessionRequest),
        "SessionInfo": TypeAdapter(SessionInfo),
        "JobQuery": TypeAdapter(JobQuery),
        "JobResource": TypeAdapter(JobResource),
        "JobList": TypeAdapter(JobList),
        "PredictResponse": TypeAdapter(PredictResponse),
        "UploadTicket": TypeAdapter(UploadTicket),
        "JobOutput": TypeAdapter(JobOutput),
        "ModelInfo": TypeAdapter(ModelInfo),
        "ModelList": TypeAdapter(ModelList),
        "ModelQuery": TypeAdapter(ModelQuery),
        "ModelRecord": TypeAdapter(ModelRecord),
        "MonitorReport": TypeAdapter(MonitorReport),
        "FeedbackRequest": TypeAdapter(FeedbackRequest),
        "Feedback": TypeAdapter(Feedback),
        "FeedbackList": TypeAdapter(FeedbackList),
        "FeedbackQuery": TypeAdapter(FeedbackQuery),
        "ReviewQuery": TypeAdapter(ReviewQuery),
        "ReviewList": TypeAdapter(ReviewList),
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
        # Required even where the JSON may be empty (promote): a POST without a JSON Content-Type
        # is refused (415), and a JSON body is what carries it.
        body["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=op.body)}}},
        }
    for status, model in op.responses.items():
        schema = {"$ref": REF.format(model=model or "ErrorBody")}
        if model is None and status < 400:
            content = {op.content_type: {"schema": {"type": "string"}}}
        elif status < 400 and op.content_type != "application/json":
            content = {op.content_type: {"schema": schema}}
        else:
            content = {"application/json": {"schema": schema}}
        body["responses"][str(status)] = {"description": str(status), "content": content}
    body["responses"]["default"] = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}},
    }
    return body


PUBLIC_OPERATIONS = {("post", "/v1/session"), ("delete", "/v1/session")}
RATE_LIMITED = {("post", "/v1/jobs"), ("post", "/v1/predict"), ("post", "/v1/feedback")}


def _error(description: str) -> dict[str, Any]:
    schema = {"$ref": REF.format(model="ErrorBody")}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@dataclass(frozen=True)
class Rules:
    """What the validators read from the settings, for the document to say it."""

    dataset: str
    batch_input: str
    base_models: tuple[str, ...]
    max_texts: int
    max_text_chars: int
    upload_max_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> "Rules":
        return cls(
            dataset_pattern(settings),
            dataset_pattern(settings, BATCH_INPUT_SUFFIXES),
            (PACKAGED_BASE_MODEL, *settings.training.base_model_allowlist),
            settings.limits.max_texts,
            settings.limits.max_text_chars,
            settings.limits.upload_max_bytes,
        )


def document(settings: Settings) -> dict[str, Any]:
    return _document(Rules.of(settings))


@lru_cache(maxsize=4)
def _document(rules: Rules) -> dict[str, Any]:
    adapters = _models()
    modes = {
        "JobRequest",
        "PredictParams",
        "PromoteRequest",
        "UploadRequest",
        "JobQuery",
        "ModelQuery",
        "SessionRequest",
        "FeedbackRequest",
        "FeedbackQuery",
        "ReviewQuery",
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
    _as_validated(schemas, rules)
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


JOB_REQUESTS = {
    "PredictParams": "PredictJob",
    "TrainParams": "TrainJob",
    "EvaluateParams": "EvaluateJob",
    "PipelineParams": "PipelineJob",
    "BatchPredictParams": "BatchPredictJob",
}
JOB_TYPES = {
    "PredictParams": "predict",
    "TrainParams": "train",
    "EvaluateParams": "evaluate",
    "PipelineParams": "pipeline",
    "BatchPredictParams": "batch_predict",
}


def _as_validated(schemas: dict[str, Any], rules: Rules) -> None:
    """What the API's validators take beyond the models' own schemas (gateway.jobs.api_params,
    shared.sources): a job request names its type, the discriminator pydantic reads; the limits
    on texts; datasets of the bucket, base models of the allowlist (or, not listed here, a
    folder under the data directory), registered version names, and no `source`."""
    schemas["PredictRequest"] = {
        "allOf": [{"$ref": REF.format(model="PredictParams")}],
        "properties": {
            "texts": {"maxItems": rules.max_texts, "items": {"maxLength": rules.max_text_chars}},
            "text": {"maxLength": rules.max_text_chars},
        },
    }
    dataset = {"dataset": {"pattern": rules.dataset}}
    checked: dict[str, dict[str, Any]] = {
        "PredictParams": {},
        "TrainParams": dataset | {"base_model": _base_model(rules)},
        "EvaluateParams": dataset | {"model_version": {"pattern": f"^{VERSION_PATTERN.pattern}$"}},
        "PipelineParams": dataset | {"base_model": _base_model(rules), "source": {"type": "null"}},
        "BatchPredictParams": {"dataset": {"pattern": rules.batch_input}},
    }
    for params, job in JOB_REQUESTS.items():
        member = "PredictRequest" if params == "PredictParams" else params
        schemas[job] = {
            "allOf": [{"$ref": REF.format(model=member)}],
            "required": ["type"],
            "properties": checked[params],
        }
    schemas["JobRequest"] = {
        "oneOf": [{"$ref": REF.format(model=job)} for job in JOB_REQUESTS.values()],
        "discriminator": {
            "propertyName": "type",
            "mapping": {
                JOB_TYPES[params]: REF.format(model=job) for params, job in JOB_REQUESTS.items()
            },
        },
    }
    upload = schemas["UploadRequest"]["properties"]
    upload["filename"]["pattern"] = ZIP_NAME
    # A larger archive is refused with 413.
    upload["size"]["maximum"] = rules.upload_max_bytes
    schemas["Event"] = EVENT
    feedback = schemas["FeedbackRequest"]
    feedback["properties"]["text"]["maxLength"] = rules.max_text_chars
    feedback["dependentRequired"] = {"index": ["job_id"]}


def _base_model(rules: Rules) -> dict[str, Any]:
    return {
        "anyOf": [{"enum": list(rules.base_models)}, {"type": "null"}],
        "description": "the packaged model, one of AGNEWS_BASE_MODEL_ALLOWLIST (hub models "
        "pinned to a commit), or a model folder under the data directory",
    }


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(document(services(request).settings))


routes = [Route("/openapi.json", openapi, methods=["GET"])]
