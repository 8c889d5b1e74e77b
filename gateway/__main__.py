"""`python -m gateway`: serve the gateway with uvicorn on AGNEWS_HTTP_HOST:AGNEWS_HTTP_PORT.

With no API keys the gateway is open to whoever reaches it, so it serves loopback only, unless
AGNEWS_ALLOW_OPEN=true says out loud that it should listen on another address anyway. Plain
comma-separated keys (each an admin key) are refused unless AGNEWS_ALLOW_PLAIN_KEYS=true.
X-Forwarded-Proto and X-Forwarded-For count only from AGNEWS_FORWARDED_ALLOW_IPS."""

import ipaddress
import sys

import uvicorn
from starlette.types import ASGIApp

from gateway.app import create_app
from shared.logs import configure_logging
from shared.settings import Settings, get_settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def open_refusal(settings: Settings) -> str | None:
    """Why the gateway must not start with these settings; None when it may."""
    if settings.access.api_keys or settings.access.allow_open or is_loopback(settings.gateway.host):
        return None
    return (
        f"refusing to serve {settings.gateway.host}:{settings.gateway.port} with no API keys: "
        "anyone "
        "who reaches that address could classify, retrain and promote models. Set AGNEWS_API_KEYS "
        "(see `python -m gateway.keys new NAME`), or serve loopback only "
        "(AGNEWS_HTTP_HOST=127.0.0.1), or set AGNEWS_ALLOW_OPEN=true to serve it open anyway."
    )


def plain_keys_refusal(settings: Settings) -> str | None:
    """Why plain keys must not be served; None when there are none or they are allowed."""
    plain = [key.name for key in settings.access.api_keys if key.plain]
    if not plain or settings.access.allow_plain_keys:
        return None
    return (
        f"refusing plain AGNEWS_API_KEYS ({len(plain)} of them): a plain key is an admin key "
        "that can do everything and is held in the clear wherever the setting is. Make a scoped "
        "key for each user with `python -m gateway.keys new NAME --scopes predict,read` (admin "
        "only where needed) and set AGNEWS_API_KEYS to the JSON list of the entries it prints, "
        "or set AGNEWS_ALLOW_PLAIN_KEYS=true to serve plain keys anyway."
    )


def start_refusal(settings: Settings) -> str | None:
    """Why the gateway must not start with these settings; None when it may."""
    return open_refusal(settings) or plain_keys_refusal(settings)


def server_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration: the scheme and client address are a trusted proxy's only."""
    return uvicorn.Config(
        app,
        host=settings.gateway.host,
        port=settings.gateway.port,
        proxy_headers=True,
        forwarded_allow_ips=settings.gateway.forwarded_allow_ips,
        log_level=settings.run.log_level.lower(),
        log_config=None,
        timeout_graceful_shutdown=settings.gateway.shutdown_grace_s,
        timeout_keep_alive=settings.gateway.keep_alive_s,
    )


def main() -> None:
    settings = get_settings()
    refusal = start_refusal(settings)
    if refusal is not None:
        sys.exit(f"gateway: {refusal}")
    configure_logging(settings.run, "gateway")
    server = uvicorn.Server(server_config(create_app(settings), settings))
    server.run()
    if not server.started:
        sys.exit("gateway: the server did not start (see the log above)")


if __name__ == "__main__":
    main()
