"""Liveness, readiness (Redis and S3 reachable) and Prometheus metrics."""

import asyncio
from collections.abc import Awaitable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.metrics import update_serving
from gateway.services import Services, services
from shared.contracts.errors import ServiceUnavailable


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _check(probe: Awaitable[object], timeout_s: float) -> str:
    try:
        async with asyncio.timeout(timeout_s):
            await probe
    except TimeoutError:
        return f"unavailable: no answer within {timeout_s}s"
    except Exception as exc:
        return f"unavailable: {str(exc) or type(exc).__name__}"
    return "ok"


async def _head_bucket(state: Services) -> None:
    await asyncio.to_thread(state.s3_probe.head_bucket, Bucket=state.settings.storage.bucket)


async def readyz(request: Request) -> JSONResponse:
    state = services(request)
    timeout = state.settings.gateway.probe_timeout_s
    redis_state, s3_state = await asyncio.gather(
        _check(state.store.redis.ping(), timeout), _check(_head_bucket(state), timeout)
    )
    checks = {"redis": redis_state, "s3": s3_state}
    failed = [name for name, value in checks.items() if value != "ok"]
    if failed:
        raise ServiceUnavailable(
            "not ready: " + "; ".join(f"{name} {checks[name]}" for name in failed),
            details=checks,
        )
    return JSONResponse(checks)


async def metrics(request: Request) -> Response:
    state = services(request)
    await asyncio.gather(
        state.queues.update(state.metrics),
        update_serving(state.metrics, state.store.redis, state.settings),
        state.monitor.refresh(),
    )
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
