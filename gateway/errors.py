"""Every exception the gateway meets becomes one shape: {"error": {code, message, details}}."""

import logging
from typing import Any

import redis.exceptions
from botocore.exceptions import BotoCoreError, ClientError
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from gateway.asgi import HttpMiddleware
from shared.contracts import errors as shared_errors
from shared.contracts.errors import (
    HTTP_ERRORS,
    AgNewsError,
    ErrorInfo,
    InvalidRequest,
    NoProductionModel,
    NotFound,
    ServiceUnavailable,
)

log = logging.getLogger("gateway")

# The status of each error code a job can end with: the codes shared/errors.py defines.
_JOB_ERROR_STATUS: dict[str, int] = {
    value.code: value.status_code
    for value in vars(shared_errors).values()
    if isinstance(value, type) and issubclass(value, AgNewsError)
}


class NoProductionModelYet(NotFound, code=NoProductionModel.code):
    """The registry has no production pointer: a question about it is a 404, not an outage."""


class JobFailed(AgNewsError):
    """A job the request waited for ended with an error; the response carries that error."""

    def __init__(self, info: ErrorInfo, job_id: str) -> None:
        super().__init__(info.message, details={**info.details, "job_id": job_id})
        self.code = info.code
        self.status_code = _JOB_ERROR_STATUS.get(info.code, 500)


def error_response(exc: AgNewsError, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": exc.info().model_dump(mode="json")}
    return JSONResponse(
        body, status_code=exc.status_code, headers={**exc.headers(), **(headers or {})}
    )


def _field(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "body"


def invalid(exc: ValidationError, *, tags: frozenset[str] = frozenset()) -> InvalidRequest:
    """A 422 that names every offending field; `tags` are a tagged union's tags to drop."""
    problems: list[dict[str, Any]] = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = tuple(error["loc"])
        if loc and loc[0] in tags:
            loc = loc[1:]
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = ("type",)
        problems.append({"field": _field(loc), "message": error["msg"], "type": error["type"]})
    message = "; ".join(f"{problem['field']}: {problem['message']}" for problem in problems)
    return InvalidRequest(
        message, details={"fields": [problem["field"] for problem in problems], "errors": problems}
    )


def translate(exc: BaseException) -> AgNewsError | None:
    """The typed error an exception stands for; None when it is a bug."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return translate(exc.exceptions[0])
    if isinstance(exc, AgNewsError):
        return exc
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return ServiceUnavailable(f"job store unavailable: {exc}")
    if isinstance(exc, OperationalError):
        return ServiceUnavailable(f"task broker unavailable: {exc}")
    if isinstance(exc, BotoCoreError | ClientError):
        return ServiceUnavailable(f"object store unavailable: {exc}")
    return None


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404s and 405s (and any HTTPException), in the error shape."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 404:
        message = f"no such resource: {request.method} {request.url.path}"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = exc.detail
    error = HTTP_ERRORS.get(status, AgNewsError)(message)
    if status not in HTTP_ERRORS:
        error.status_code, error.code = status, "http_error"
    return error_response(error, headers=dict(exc.headers or {}))


class ErrorMiddleware(HttpMiddleware):
    """Turns every exception escaping an endpoint into the error shape; a 500 is logged as a bug."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except ClientDisconnect:
            log.debug("%s %s: the client went away", scope["method"], scope["path"])
        except Exception as exc:
            typed = translate(exc)
            where = f"{scope['method']} {scope['path']}"
            if typed is None:
                log.error("internal error in %s", where, exc_info=exc)
                typed = AgNewsError(f"internal error ({type(exc).__name__}); see the gateway log")
            elif typed.status_code >= 500 and typed.code != "overloaded":
                log.warning("%s: %s", where, typed.message)  # admission tells of its own
            if started:
                log.warning("%s ended mid-response: %s", where, typed.message)
                return
            await error_response(typed)(scope, receive, send)
