"""`python -m gateway`: serve the gateway with uvicorn on AGNEWS_HTTP_HOST:AGNEWS_HTTP_PORT.

With no API keys the gateway is open to whoever reaches it, so it serves loopback only, unless
AGNEWS_ALLOW_OPEN=true says out loud that it should listen on another address anyway."""

import ipaddress
import sys

import uvicorn

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


def main() -> None:
    settings = get_settings()
    refusal = open_refusal(settings)
    if refusal is not None:
        sys.exit(f"gateway: {refusal}")
    configure_logging(settings.run, "gateway")
    uvicorn.run(
        create_app(settings),
        host=settings.gateway.host,
        port=settings.gateway.port,
        log_level=settings.run.log_level.lower(),
        log_config=None,
        timeout_graceful_shutdown=settings.gateway.shutdown_grace_s,
    )


if __name__ == "__main__":
    main()
