"""An ASGI app served for real on 127.0.0.1 (port chosen by the OS), by uvicorn in a thread of the
test process: for stand-ins and proxies a test drives from its own thread.

    with serve_in_thread(app) as url:       # "http://127.0.0.1:PORT"
        ...
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

READY_TIMEOUT_S = 10.0
POLL_S = 0.01


class ThreadedServer:
    """The socket is bound at construction, so `url` is known before `start()`."""

    def __init__(self, app: ASGIApp, *, name: str = "asgi-server") -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name=name, daemon=True
        )

    def start(self) -> None:
        """Start serving and return once uvicorn says it is up (polled, with a deadline)."""
        self._thread.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self._thread.name} did not start")
            time.sleep(POLL_S)

    def request_stop(self) -> None:
        """Begin the shutdown; requests still running may finish (for `stop`)."""
        self._server.should_exit = True

    def stop(self) -> None:
        self.request_stop()
        self._thread.join(READY_TIMEOUT_S)
        self._sock.close()

    def __enter__(self) -> ThreadedServer:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextmanager
def serve_in_thread(app: ASGIApp, *, name: str = "asgi-server") -> Iterator[str]:
    """Serve `app` until the block ends; its base URL."""
    with ThreadedServer(app, name=name) as server:
        yield server.url
