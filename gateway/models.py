"""The model registry: versions, the production pointer, promotion."""

import asyncio

from pydantic import TypeAdapter
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import ratelimit
from gateway.auth import require
from gateway.errors import NoProductionModelYet
from gateway.parsing import parse_optional_body, parse_query
from gateway.schemas import ChallengeRequest, ModelList, ModelQuery, PromoteRequest
from gateway.services import services
from shared.contracts.errors import ChallengerNotFound

PROMOTE_REQUEST = TypeAdapter(PromoteRequest)
CHALLENGE_REQUEST = TypeAdapter(ChallengeRequest)
MODEL_QUERY = TypeAdapter(ModelQuery)


async def list_models(request: Request) -> JSONResponse:
    """Newest first, a page at a time: `before` is the `next` of the previous page."""
    require(request, "read")
    ratelimit.check(request, services(request).limits.reads)
    query = parse_query(request.query_params, MODEL_QUERY)
    registry = services(request).registry
    versions, production = await asyncio.gather(
        asyncio.to_thread(registry.versions), asyncio.to_thread(registry.production)
    )
    if query.before is not None:
        versions = [info for info in versions if info.version < query.before]
    page = versions[: query.limit]
    more = len(versions) > query.limit
    listing = ModelList(models=page, production=production, next=page[-1].version if more else None)
    return JSONResponse(listing.model_dump(mode="json"))


async def one_model(request: Request) -> JSONResponse:
    require(request, "read")
    ratelimit.check(request, services(request).limits.reads)
    registry = services(request).registry
    record = await asyncio.to_thread(registry.record, request.path_params["version"])
    return JSONResponse(record.model_dump(mode="json"))


async def monitor_model(request: Request) -> JSONResponse:
    """The version's live window against its holdout: label mix, confidence, margin, length,
    each signal's drift score, and its forward passes by form."""
    require(request, "read")
    ratelimit.check(request, services(request).limits.reads)
    report = await services(request).monitor.report(request.path_params["version"])
    return JSONResponse(report.model_dump(mode="json"))


async def production_model(request: Request) -> JSONResponse:
    require(request, "read")
    ratelimit.check(request, services(request).limits.reads)
    pointer = await asyncio.to_thread(services(request).registry.production)
    if pointer is None:
        raise NoProductionModelYet(
            "no model is in production yet: upload an archive.zip (POST /v1/uploads) or run "
            'training (POST /v1/jobs {"type": "pipeline", "dataset": ...}) to make one'
        )
    return JSONResponse(pointer.model_dump(mode="json"))


async def promote_model(request: Request) -> JSONResponse:
    require(request, "admin")
    body = await parse_optional_body(request, PROMOTE_REQUEST, PromoteRequest())
    registry = services(request).registry
    pointer = await asyncio.to_thread(registry.promote, request.path_params["version"], body.reason)
    return JSONResponse(pointer.model_dump(mode="json"))


async def challenge_model(request: Request) -> JSONResponse:
    require(request, "admin")
    body = await parse_optional_body(request, CHALLENGE_REQUEST, ChallengeRequest())
    registry = services(request).registry
    pointer = await asyncio.to_thread(
        registry.name_challenger, request.path_params["version"], body.share, body.reason
    )
    return JSONResponse(pointer.model_dump(mode="json"))


async def challenger_model(request: Request) -> JSONResponse:
    require(request, "read")
    ratelimit.check(request, services(request).limits.reads)
    pointer = await asyncio.to_thread(services(request).registry.challenger)
    if pointer is None:
        raise ChallengerNotFound(
            "no challenger is named: POST /v1/models/{version}/challenge names one"
        )
    return JSONResponse(pointer.model_dump(mode="json"))


async def dismiss_challenger(request: Request) -> JSONResponse:
    require(request, "admin")
    pointer = await asyncio.to_thread(services(request).registry.dismiss_challenger)
    return JSONResponse(pointer.model_dump(mode="json"))


class Challenger(HTTPEndpoint):
    """One route for both methods, so that a 405 names them both in its Allow header."""

    async def get(self, request: Request) -> JSONResponse:
        return await challenger_model(request)

    async def delete(self, request: Request) -> JSONResponse:
        return await dismiss_challenger(request)


routes = [
    Route("/models", list_models, methods=["GET"]),
    Route("/models/production", production_model, methods=["GET"]),
    Route("/models/challenger", Challenger),
    Route("/models/{version}", one_model, methods=["GET"]),
    Route("/models/{version}/monitor", monitor_model, methods=["GET"]),
    Route("/models/{version}/promote", promote_model, methods=["POST"]),
    Route("/models/{version}/challenge", challenge_model, methods=["POST"]),
]
