"""The local adapter: the S3 store's (SeaweedFS filer's) webhook, and the listener's /healthz.

The store retries a delivery that is not answered with a 2xx, so an event that meets Redis away
or another delivery of the same upload in progress is answered 503 and comes again.
"""

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ExceptionHandler

from shared.contracts.errors import AgNewsError, ServiceUnavailable, Unauthorized
from shared.settings import Settings
from shared.storage import WEBHOOK_PATH
from workers.listener.events import parse_seaweedfs
from workers.listener.trigger import TRANSIENT_ERRORS, PipelineTrigger


def webhook_app(settings: Settings, trigger: PipelineTrigger) -> Starlette:
    """/healthz always; the webhook only where a token is set, as nothing else may call it."""
    routes = [Route("/healthz", _healthz)]
    if settings.listener.token is not None:
        token = settings.listener.token.get_secret_value()
        routes.append(Route(WEBHOOK_PATH, _webhook(token, trigger), methods=["POST"]))
    handlers: dict[Any, ExceptionHandler] = {AgNewsError: _error}
    handlers.update(dict.fromkeys(TRANSIENT_ERRORS, _unavailable))
    return Starlette(routes=routes, exception_handlers=handlers)


def _webhook(token: str, trigger: PipelineTrigger) -> Callable[[Request], Awaitable[JSONResponse]]:
    expected = f"Bearer {token}".encode()

    async def receive(request: Request) -> JSONResponse:
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, expected):
            raise Unauthorized("a valid bearer token is required")
        event = parse_seaweedfs(await request.body())
        if event is None:
            return JSONResponse({"outcome": "ignored"})
        handled = await run_in_threadpool(trigger.handle, event)
        return JSONResponse(
            {"outcome": handled.outcome.value, "job_id": handled.job_id},
            status_code=200 if handled.outcome.acknowledged else 503,
        )

    return receive


async def _healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _error(request: Request, exc: Exception) -> JSONResponse:
    error = exc if isinstance(exc, AgNewsError) else AgNewsError(str(exc))
    return JSONResponse({"error": error.info().model_dump()}, status_code=error.status_code)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    return await _error(request, ServiceUnavailable(f"{type(exc).__name__}: {exc}"))
