"""The model registry: versions, the production pointer, promotion."""

import asyncio

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.auth import require
from gateway.errors import NoProductionModelYet
from gateway.parsing import parse_optional_body
from gateway.schemas import ModelList, PromoteRequest
from gateway.services import services

PROMOTE_REQUEST = TypeAdapter(PromoteRequest)


async def list_models(request: Request) -> JSONResponse:
    require(request, "read")
    registry = services(request).registry
    versions, production = await asyncio.gather(
        asyncio.to_thread(registry.versions), asyncio.to_thread(registry.production)
    )
    return JSONResponse(ModelList(models=versions, production=production).model_dump(mode="json"))


async def production_model(request: Request) -> JSONResponse:
    require(request, "read")
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


routes = [
    Route("/models", list_models, methods=["GET"]),
    Route("/models/production", production_model, methods=["GET"]),
    Route("/models/{version}/promote", promote_model, methods=["POST"]),
]
