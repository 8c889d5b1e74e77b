"""API keys: with settings.api_keys set, /v1/* needs `Authorization: Bearer KEY` or `X-API-Key`."""

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.asgi import HttpMiddleware
from gateway.errors import error_response
from shared.errors import Forbidden, Unauthorized

PROTECTED_PREFIX = "/v1/"


def presented_key(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


def key_is_valid(key: str, keys: list[str]) -> bool:
    # Compare with every key, always: the time taken says nothing about which one nearly matched.
    valid = False
    for candidate in keys:
        valid |= hmac.compare_digest(candidate.encode(), key.encode())
    return valid


class ApiKeyMiddleware(HttpMiddleware):
    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        super().__init__(app)
        self.keys = keys

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        key = presented_key(Headers(scope=scope))
        if key is None:
            error = Unauthorized(
                "an API key is required: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"
            )
            response = error_response(error, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
        elif not key_is_valid(key, self.keys):
            await error_response(Forbidden("the API key is not valid"))(scope, receive, send)
        else:
            await self.app(scope, receive, send)
