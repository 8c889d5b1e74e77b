"""/v1/session: a browser exchanges an API key for a signed session cookie, asks who it is, and
signs out."""

from pydantic import TypeAdapter
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.auth import Principal, principal
from gateway.cookies import COOKIE
from gateway.parsing import parse_body
from gateway.schemas import SessionInfo, SessionRequest
from gateway.services import services
from shared.contracts.errors import Unauthorized
from shared.contracts.keys import ALL_SCOPES
from shared.settings import Settings

SESSION_REQUEST = TypeAdapter(SessionRequest)


def _secure(request: Request, settings: Settings) -> bool:
    return settings.access.cookie_secure or request.url.scheme == "https"


def _info(who: Principal, expires_at: int | None = None) -> SessionInfo:
    if who.via == "open":
        return SessionInfo(signed_in=False, open=True, scopes=list(ALL_SCOPES))
    order = [scope for scope in ALL_SCOPES if scope in who.scopes]
    return SessionInfo(
        signed_in=True, open=False, name=who.name, scopes=order, expires_at=expires_at
    )


def _json(info: SessionInfo) -> JSONResponse:
    return JSONResponse(info.model_dump(mode="json"))


class Session(HTTPEndpoint):
    async def get(self, request: Request) -> JSONResponse:
        """Who the caller is; 401 (from the auth middleware) when keys are on and it is no one."""
        who = principal(request)
        return _json(_info(who, who.expires_at))

    async def post(self, request: Request) -> JSONResponse:
        """Sign in: the key's session as an HttpOnly, SameSite=Strict cookie."""
        state = services(request)
        body = await parse_body(request, SESSION_REQUEST)
        if not state.keyring:
            return _json(_info(principal(request)))
        key = state.keyring.find(body.key)
        if key is None:
            raise Unauthorized("the API key is not valid")
        # Read afresh: a cookie signed just after a revocation must hold here at once.
        epoch = await state.epochs.current(key.name, fresh=True)
        value, expires = state.sessions.issue(key, epoch=epoch)
        response = _json(
            SessionInfo(
                signed_in=True,
                open=False,
                name=key.name,
                scopes=[scope for scope in ALL_SCOPES if scope in key.scopes],
                expires_at=expires,
            )
        )
        response.set_cookie(
            COOKIE,
            value,
            max_age=state.sessions.ttl_s,
            path="/",
            secure=_secure(request, state.settings),
            httponly=True,
            samesite="strict",
        )
        return response

    async def delete(self, request: Request) -> JSONResponse:
        """Sign out: this browser's cookie is cleared. A copy stays valid until it expires or
        the key's sessions are revoked (`python -m gateway.keys revoke NAME`)."""
        state = services(request)
        response = _json(SessionInfo(signed_in=False, open=not state.keyring))
        response.delete_cookie(
            COOKIE,
            path="/",
            secure=_secure(request, state.settings),
            httponly=True,
            samesite="strict",
        )
        return response


routes = [Route("/session", Session)]
