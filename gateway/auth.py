"""Who is asking: an API key (`Authorization: Bearer KEY` or `X-API-Key`), a session cookie, or
anyone at all when no keys are configured. Endpoints then ask for the scope they need; a request
the middleware did not identify is no one (401), never open."""

from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.asgi import HttpMiddleware
from gateway.cookies import COOKIE, SessionSigner
from gateway.epochs import SessionEpochs
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
    """The caller. `name` is the key's name (jobs record it as their owner); None when open.
    `expires_at`: a session's end."""

    name: str | None
    scopes: frozenset[KeyScope]
    via: str  # "open", "key" or "session"
    expires_at: int | None = None

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


def principal_of(key: ApiKey, via: str, expires_at: int | None = None) -> Principal:
    return Principal(name=key.name, scopes=frozenset(key.scopes), via=via, expires_at=expires_at)


def principal(connection: HTTPConnection) -> Principal:
    """The caller the auth middleware found; 401 where it found none (a route it does not guard,
    sign-in without credentials): OPEN only where it said the gateway is open."""
    found = connection.scope.get("state", {}).get("principal")
    if isinstance(found, Principal):
        return found
    raise Unauthorized(f"no credentials were checked for {connection.scope['path']}")


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
    """Sets the request's principal: OPEN on every path when no keys are configured; otherwise,
    for /v1/*, the key's or the session's, and 401 when none (or no valid session) comes with
    the request."""

    def __init__(
        self, app: ASGIApp, keyring: Keyring, sessions: SessionSigner, epochs: SessionEpochs
    ) -> None:
        super().__init__(app)
        self.keyring = keyring
        self.sessions = sessions
        self.epochs = epochs

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.keyring:
            scope.setdefault("state", {})["principal"] = OPEN
        elif scope["path"].startswith(PROTECTED_PREFIX):
            scope.setdefault("state", {})["principal"] = await self.identify(scope)
        await self.app(scope, receive, send)

    async def session(self, cookie: str) -> Principal | None:
        """The cookie's principal while its key's epoch is the one it was issued under."""
        found = self.sessions.verify(cookie, self.keyring)
        if found is None or not await self.epochs.admits(found.key.name, found.epoch):
            return None
        return principal_of(found.key, "session", found.expires)

    async def identify(self, scope: Scope) -> Principal | None:
        connection = HTTPConnection(scope)
        presented = presented_key(connection.headers)
        if presented is not None:
            key = self.keyring.find(presented)
            if key is None:
                raise Unauthorized("the API key is not valid")
            return principal_of(key, "key")
        cookie = connection.cookies.get(COOKIE)
        session = await self.session(cookie) if cookie else None
        if session is not None:
            return session
        if (scope["method"], scope["path"]) in OPEN_PATHS:
            return None
        raise Unauthorized(
            "an API key is required: send `Authorization: Bearer KEY` or `X-API-Key: KEY`, "
            "or sign in (POST /v1/session)"
            + (" again: the session has expired, was revoked or is not valid" if cookie else "")
        )
