"""A TCP proxy on loopback that cuts its first connections after a number of bytes: a dropped
connection, for clients that must resume."""

import contextlib
import socket
import threading
from collections.abc import Iterator

from testkit.servers import free_port


class FlakyProxy:
    def __init__(self, target_port: int, cut_after_bytes: int, cuts: int = 1) -> None:
        self.target_port = target_port
        self.cut_after_bytes = cut_after_bytes
        self.cuts_left = cuts
        self.connections = 0
        self.port = free_port()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="flaky-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                downstream, _ = self._server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            limit = None
            if self.cuts_left > 0:
                self.cuts_left -= 1
                limit = self.cut_after_bytes
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink, budget in (
                (downstream, upstream, None),
                (upstream, downstream, limit),
            ):
                threading.Thread(
                    target=_pipe, args=(source, sink, budget, (downstream, upstream)), daemon=True
                ).start()

    def __enter__(self) -> "FlakyProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()


def _pipe(
    source: socket.socket,
    sink: socket.socket,
    budget: int | None,
    both: tuple[socket.socket, socket.socket],
) -> None:
    """Copy bytes until either side closes, or until `budget` bytes have gone: then cut both."""
    sent = 0
    with contextlib.suppress(OSError):
        while budget is None or sent < budget:
            chunk = source.recv(65536 if budget is None else min(65536, budget - sent))
            if not chunk:
                break
            sink.sendall(chunk)
            sent += len(chunk)
    for side in both:
        with contextlib.suppress(OSError):
            side.shutdown(socket.SHUT_RDWR)
        side.close()


@contextlib.contextmanager
def flaky_proxy(target_port: int, cut_after_bytes: int, cuts: int = 1) -> Iterator[FlakyProxy]:
    with FlakyProxy(target_port, cut_after_bytes, cuts) as proxy:
        yield proxy
