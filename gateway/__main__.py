"""`python -m gateway`: serve the gateway with uvicorn on settings.http_host:settings.http_port."""

import uvicorn

from gateway.app import create_app
from shared.logs import configure_logging
from shared.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging(settings, "gateway")
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        log_config=None,
        timeout_graceful_shutdown=settings.http_shutdown_grace_s,
    )


if __name__ == "__main__":
    main()
