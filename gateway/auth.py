"""Who is asking: an API key (`Authorization: Bearer KEY` or `X-API-Key`), a session cookie, or
anyone at all when no keys are configured. Endpoints then ask for the scope they need."""

from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.asgi import HttpMiddleware
from gateway.cookies import COOKIE, SessionSigner
from gateway.keyring import Keyring
from shared.contracts.errors import Forbidden, Unauthorized
from shared.contracts.jobs import Job
from shared.contracts.keys import ALL_SCOPES, ApiKey, KeyScope

PROTECTED_PREFIX = "/v1/"
# Signing in and out needs no credentials of its own.
OPEN_PATHS = {("POST", "/v1/session"), ("DELETE", "/v1/session")}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass(frozen=True)
class Principal:
    """The caller. `name` is the key's name (jobs record it as their owner); None when open."""

    name: str | None
    scopes: frozenset[KeyScope]
    via: str  # "open", "key" or "session"

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def can(self, scope: KeyScope) -> bool:
        return self.admin or scope in self.scopes

    def owns(self, job: Job) -> bool:
        return self.admin or (self.name is not None and job.owner == self.name)


OPEN = Principal(name=None, scopes=frozenset(ALL_SCOPES), via="open")


def presented_key(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


def principal_of(key: ApiKey, via: str) -> Principal:
    return Principal(name=key.name, scopes=frozenset(key.scopes), via=via)


def principal(connection: HTTPConnection) -> Principal:
    found = connection.scope.get("state", {}).get("principal")
    return found if isinstance(found, Principal) else OPEN


def require(connection: HTTPConnection, scope: KeyScope) -> Principal:
    """The caller, if it holds `scope`; 403 otherwise."""
    caller = principal(connection)
    if not caller.can(scope):
        raise Forbidden(
            f"the key {caller.name!r} lacks the {scope!r} scope",
            details={"scope": scope, "scopes": sorted(caller.scopes)},
        )
    return caller


class AuthMiddleware(HttpMiddleware):
    """Sets the request's principal for /v1/*; 401 when keys are configured and none (or no
    valid session) comes with the request."""

    def __init__(self, app: ASGIApp, keyring: Keyring, sessions: SessionSigner) -> None:
        super().__init__(app)
        self.keyring = keyring
        self.sessions = sessions

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"].startswith(PROTECTED_PREFIX):
            scope.setdefault("state", {})["principal"] = self.identify(scope)
        await self.app(scope, receive, send)

    def identify(self, scope: Scope) -> Principal | None:
        if not self.keyring:
            return OPEN
        connection = HTTPConnection(scope)
        presented = presented_key(connection.headers)
        if presented is not None:
            key = self.keyring.find(presented)
            if key is None:
                raise Unauthorized("the API key is not valid")
            return principal_of(key, "key")
        cookie = connection.cookies.get(COOKIE)
        key = self.sessions.verify(cookie, self.keyring) if cookie else None
        if key is not None:
            return principal_of(key, "session")
        if (scope["method"], scope["path"]) in OPEN_PATHS:
            return None
        raise Unauthorized(
            "an API key is required: send `Authorization: Bearer KEY` or `X-API-Key: KEY`, "
            "or sign in (POST /v1/session)"
            + (" again: the session has expired or is not valid" if cookie else "")
        )
