"""A gateway app on a real uvicorn server in a thread, configured as `python -m gateway` serves it
(proxy headers, forwarded addresses): what the tests of the transport need."""

import contextlib
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from gateway.__main__ import server_config
from shared.settings import Settings
from testkit.gateway import running
from testkit.servers import free_port


@contextlib.contextmanager
def served_app(app: ASGIApp, settings: Settings) -> Iterator[str]:
    """The app's base URL on 127.0.0.1, served with `server_config`."""
    port = free_port()
    local = settings.replace(http_host="127.0.0.1", http_port=port, http_shutdown_grace_s=1)
    with running(uvicorn.Server(server_config(app, local))):
        yield f"http://127.0.0.1:{port}"
