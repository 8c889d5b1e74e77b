"""The gateway's Starlette application: routes, middleware and the lifespan of its clients."""

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from gateway import events, feedback, health, jobs, models, openapi, predict, session, uploads
from gateway.auth import AuthMiddleware
from gateway.errors import ErrorMiddleware, http_exception
from gateway.hygiene import (
    InternalPathsMiddleware,
    RequestHygieneMiddleware,
    SecurityHeadersMiddleware,
    TrustedHostMiddleware,
)
from gateway.limits import BodyLimitMiddleware
from gateway.metrics import MetricsMiddleware
from gateway.services import Services
from shared.settings import Settings, get_settings


def _routes(settings: Settings) -> list[BaseRoute]:
    api = [
        *jobs.routes,
        *events.routes,
        *predict.routes,
        *feedback.routes,
        *models.routes,
        *uploads.routes,
        *session.routes,
    ]
    routes: list[BaseRoute] = [*health.routes, *openapi.routes, Mount("/v1", routes=api)]
    if settings.gateway.frontend_dir.is_dir():
        static = StaticFiles(directory=settings.gateway.frontend_dir, html=True)
        routes.append(Mount("/", app=static, name="frontend"))
    return routes


def _middleware(settings: Settings, state: Services) -> list[Middleware]:
    # Outermost first: metrics see the final status of every response, errors included, and
    # every response, errors included, carries the security headers.
    stack = [
        Middleware(MetricsMiddleware, metrics=state.metrics),
        Middleware(SecurityHeadersMiddleware, settings=settings),
        Middleware(ErrorMiddleware),
        Middleware(TrustedHostMiddleware, hosts=settings.gateway.trusted_hosts),
        Middleware(InternalPathsMiddleware, cidrs=settings.gateway.internal_cidrs),
    ]
    if settings.gateway.cors_origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.gateway.cors_origins,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "X-API-Key", "Content-Type", "Last-Event-ID"],
                expose_headers=["Location", "Retry-After"],
            )
        )
    stack += [
        Middleware(RequestHygieneMiddleware, cors_origins=settings.gateway.cors_origins),
        Middleware(
            AuthMiddleware, keyring=state.keyring, sessions=state.sessions, epochs=state.epochs
        ),
        Middleware(BodyLimitMiddleware, max_body_bytes=settings.limits.max_body_bytes),
    ]
    return stack


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    state = Services.from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.hub.start()
        state.answers.start()
        state.admission.start()
        state.monitor.start()
        state.reaper.start()
        try:
            yield
        finally:
            state.reaper.stop()
            await state.close()

    app = Starlette(
        routes=_routes(settings),
        middleware=_middleware(settings, state),
        exception_handlers={HTTPException: http_exception},
        lifespan=lifespan,
    )
    app.state.services = state
    return app
