"""Serving a Prometheus registry at /metrics over HTTP, from a daemon thread, for the coordinator
and the worker alike.

Always the classic text format (0.0.4): the coordinator's `postroom_jobs_total` counter and
`postroom_jobs` gauge share the stem `postroom_jobs`, which the OpenMetrics exposition cannot
express (see coordinator/metrics.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

import prometheus_client
from prometheus_client import CollectorRegistry, make_wsgi_app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood stderr."""


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """A running /metrics endpoint. `port` is the bound port (useful when asked for port 0)."""

    host: str
    port: int
    _httpd: _Server
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    async def aclose(self) -> None:
        """`close` off the event loop: shutdown() waits for the serve loop's next poll."""
        await asyncio.to_thread(self.close)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Serve `registry` at http://host:port/metrics from a daemon thread; port 0 picks one."""
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    inner = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # Classic text format only (see the module docstring): drop any OpenMetrics Accept.
        environ.pop("HTTP_ACCEPT", None)
        body: Iterable[bytes] = inner(environ, start_response)
        return body

    httpd = make_server(host, port, app, _Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(host=host, port=int(httpd.server_port), _httpd=httpd, _thread=thread)
