"""Real platform software run locally: the Bluesky reference PDS (with an in-memory PLC) and
mastodon-mock, as processes on 127.0.0.1. The tests publish to them, and `postroom demo
--platforms bluesky,mastodon` runs the demo against them. Each is started and stopped by PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import httpx

T = TypeVar("T")
POLL_S = 0.05
STOP_TIMEOUT_S = 10.0
_LOG_TAIL_CHARS = 2000


class LocalServerError(RuntimeError):
    """A local server is not installed, would not start, or answered wrongly."""


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float) -> T:
    """Poll `probe` until it returns something truthy; LocalServerError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LocalServerError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(POLL_S)


def free_port() -> int:
    """A port free on 127.0.0.1 now (for servers that cannot report a port 0 back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalProcess:
    """One server process: its output in `log_path`, an HTTP client to it, stopped by its PID
    (SIGTERM, then SIGKILL). A subclass's `start` calls `spawn`; `with server:` starts and stops."""

    name = "the server"  # for messages: "<name> exited 1: ..."

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=10.0)

    def start(self) -> None:
        raise NotImplementedError

    def spawn(
        self, argv: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=None if env is None else dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def check_running(self) -> None:
        """LocalServerError with the log's tail when the process has exited."""
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise LocalServerError(
                f"{self.name} exited {self._proc.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT_S)
        self._http.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
