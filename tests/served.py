"""A gateway app on a real uvicorn server in a thread, configured as `python -m gateway` serves it
(proxy headers, forwarded addresses): what the tests of the transport need."""

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from gateway.__main__ import server_config
from shared.settings import Settings
from testkit.servers import free_port


@contextlib.contextmanager
def served_app(app: ASGIApp, settings: Settings) -> Iterator[str]:
    """The app's base URL on 127.0.0.1, served with `server_config`."""
    port = free_port()
    local = settings.replace(http_host="127.0.0.1", http_port=port, http_shutdown_grace_s=1)
    server = uvicorn.Server(server_config(app, local))
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
