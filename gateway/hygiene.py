"""Request hygiene: trusted Host headers, JSON-only mutations, same-origin unsafe requests,
internal-only operational paths, and security headers on every response (HSTS over https)."""

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.endpoints import HTTPEndpoint
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.asgi import HttpMiddleware
from shared.contracts.errors import BadRequest, Forbidden, UnsupportedMediaType
from shared.settings import Settings, StorageSettings

MUTATIONS = {"POST", "PUT", "PATCH", "DELETE"}
# Methods whose requests must say they are JSON even when they carry no body: a cross-site page
# can send those (a form, or fetch in no-cors mode) without a CORS preflight.
BODY_METHODS = {"POST", "PUT", "PATCH"}


def content_security_policy(storage: StorageSettings) -> str:
    """`default-src 'self'`; the page's only other destinations are the object store it uploads
    to (connect-src) and its data: favicon."""
    store = storage.public_endpoint_url or storage.endpoint_url
    if store:
        parts = urlsplit(store)
        uploads = f"{parts.scheme}://{parts.netloc}"
    else:
        uploads = "https://*.amazonaws.com"
    return "; ".join(
        (
            "default-src 'self'",
            f"connect-src 'self' {uploads}",
            "img-src 'self' data:",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


class SecurityHeadersMiddleware(HttpMiddleware):
    """Every response's security headers; over https (the scheme uvicorn took from a trusted
    proxy's X-Forwarded-Proto, or TLS of its own) Strict-Transport-Security too."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        super().__init__(app)
        self.headers = {
            "Content-Security-Policy": content_security_policy(settings.storage),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
            "Cross-Origin-Opener-Policy": "same-origin",
        }
        max_age = settings.gateway.hsts_max_age_s
        self.https_headers = {"Strict-Transport-Security": f"max-age={max_age}"} if max_age else {}

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        https = scope.get("scheme") == "https"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
                if https:
                    for name, value in self.https_headers.items():
                        headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


def host_name(host: str) -> str:
    """The Host header without its port: `[::1]:8080` -> `[::1]`, `localhost:80` -> `localhost`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class TrustedHostMiddleware(HttpMiddleware):
    """A Host header outside AGNEWS_TRUSTED_HOSTS gets a 400: no DNS rebinding."""

    def __init__(self, app: ASGIApp, hosts: list[str]) -> None:
        super().__init__(app)
        self.any = "*" in hosts
        self.hosts = {host.lower() for host in hosts}

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.any:
            host = host_name(Headers(scope=scope).get("host", ""))
            if host not in self.hosts:
                raise BadRequest(
                    f"the Host header {host!r} is not one this gateway serves "
                    "(AGNEWS_TRUSTED_HOSTS)",
                    details={"host": host},
                )
        await self.app(scope, receive, send)


def _same_origin(origin: str, headers: Headers) -> bool:
    """Whether Origin names this host. Hosts only, not schemes: behind a load balancer that ends
    TLS the gateway sees http while the browser's origin is https."""
    return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()


def _routed(scope: Scope) -> bool:
    """Whether a route of the app takes this method at this path (through its mounts)."""
    app = scope.get("app")
    routes: list[BaseRoute] = list(getattr(getattr(app, "router", None), "routes", []))
    while routes:
        for route in routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                break
        else:
            return False
        if not isinstance(route, Mount):
            endpoint = getattr(route, "endpoint", None)
            if isinstance(endpoint, type) and issubclass(endpoint, HTTPEndpoint):
                return hasattr(endpoint, scope["method"].lower())
            return True
        scope = {**scope, **child}
        routes = list(route.routes)
    return False


class RequestHygieneMiddleware(HttpMiddleware):
    """/v1 mutations: JSON bodies only (415), and no cross-origin requests save from
    AGNEWS_CORS_ORIGINS (403). A method its path does not take gets 405 before any 415."""

    def __init__(self, app: ASGIApp, cors_origins: list[str]) -> None:
        super().__init__(app)
        self.cors_origins = set(cors_origins)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if scope["path"].startswith("/v1/") and method in MUTATIONS:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin and not _same_origin(origin, headers) and origin not in self.cors_origins:
                raise Forbidden(
                    f"cross-origin {method} from {origin} is not allowed (AGNEWS_CORS_ORIGINS)",
                    details={"origin": origin},
                )
            if not _routed(scope):
                # A method the path does not take: the router's 405 (or 404), whatever the body.
                await self.app(scope, receive, send)
                return
            has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
            declared = headers.get("content-type")
            media = (declared or "").split(";", 1)[0].strip().lower()
            if (method in BODY_METHODS or has_body or declared) and media != "application/json":
                raise UnsupportedMediaType(
                    f"{method} {scope['path']} takes application/json; got "
                    f"{declared or 'no Content-Type'}",
                    details={"content_type": declared, "accepted": ["application/json"]},
                )
        await self.app(scope, receive, send)


INTERNAL_PATHS = frozenset({"/metrics", "/readyz"})


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class InternalPathsMiddleware(HttpMiddleware):
    """/metrics and /readyz answer clients in AGNEWS_INTERNAL_CIDRS only (others: 403). Behind a
    load balancer the client is the address uvicorn took from a trusted proxy's X-Forwarded-For
    (AGNEWS_FORWARDED_ALLOW_IPS)."""

    def __init__(self, app: ASGIApp, cidrs: list[str]) -> None:
        super().__init__(app)
        self.networks = [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]

    def internal(self, host: str) -> bool:
        address = _address(host)
        return address is not None and any(address in network for network in self.networks)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"].rstrip("/")
        if path in INTERNAL_PATHS:
            client = scope.get("client")
            host = str(client[0]) if client else ""
            if not self.internal(host):
                raise Forbidden(
                    f"{path} is served to internal addresses only (AGNEWS_INTERNAL_CIDRS)",
                    details={"client": host},
                )
        await self.app(scope, receive, send)
